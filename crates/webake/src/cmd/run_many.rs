//! `webake run A.yaml B.yaml …`, and a recipe of several `architectures`: every recipe's
//! stages in one invocation.
//!
//! Everything is loaded, planned and decided first (invalid input stops the command with
//! exit 2 before anything is baked). Then the images that need a bake are baked together, up
//! to `--jobs` at a time, sharing what they have in common (a base two recipes start from is
//! bootstrapped once), as `bake A B C` does. Then each image's later stages run in command-line
//! order: boot test, publish, and, once per recipe after its last architecture, the rollout,
//! so that one pull request carries every architecture's build of the version. A failure is
//! reported when it happens and in the summary; the other recipes go on (a recipe with a
//! failed architecture is not rolled out). The exit code is that of the first failure in
//! command-line order, 0 if everything succeeded.

use std::process::ExitCode;
use std::time::Instant;

use serde::Serialize;
use webake_engine::bake::BakeOptions;
use webake_engine::run::{RunOptions, RunSummary};
use webake_engine::{Context, Error};
use webake_spec::LoadedRecipe;

use crate::cmd::CmdResult;
use crate::cmd::bake_many::{in_parallel, job_limit, labels};
use crate::cmd::run::RunArgs;
use crate::output::Output;

/// One image's run, labelled as its progress lines are.
#[derive(Serialize)]
struct Labelled {
    label: String,
    #[serde(flatten)]
    summary: RunSummary,
}

/// `groups`: per recipe file of the command line, its variants (one per architecture).
pub fn run(
    args: &RunArgs,
    ctx: &Context<'_>,
    out: &Output,
    groups: &[Vec<LoadedRecipe>],
    opts: &RunOptions,
) -> CmdResult {
    let all: Vec<LoadedRecipe> = groups.iter().flatten().cloned().collect();
    let labels = labels(&all);
    let plans = all
        .iter()
        .map(|v| webake_engine::plan::plan(Some(ctx), v))
        .collect::<Result<Vec<_>, _>>()?;
    let decisions = all
        .iter()
        .zip(&plans)
        .map(|(v, p)| webake_engine::run::decide(ctx, v, p, opts))
        .collect::<Result<Vec<_>, _>>()?;
    let started = Instant::now();
    let to_bake: Vec<usize> = (0..all.len())
        .filter(|&i| decisions[i].image.is_none())
        .collect();
    let mut baked: Vec<Option<Result<_, Error>>> = (0..all.len()).map(|_| None).collect();
    if !to_bake.is_empty() {
        let jobs = job_limit(args.jobs, to_bake.len());
        let names: Vec<String> = to_bake.iter().map(|&i| labels[i].clone()).collect();
        ctx.reporter.note(&format!(
            "run: baking {} of {} image(s), up to {jobs} at a time: {}",
            to_bake.len(),
            all.len(),
            names.join(", ")
        ));
        // `decide` said bake: the bake does not look for an up-to-date image again.
        let bake_opts = BakeOptions {
            force: true,
            ..opts.bake.clone()
        };
        let results = in_parallel(ctx, out, &names, jobs, |k, sub| {
            let i = to_bake[k];
            sub.reporter.note(&decisions[i].reason);
            webake_engine::bake::bake(sub, &all[i], &plans[i], &bake_opts)
        });
        for (k, r) in results.into_iter().enumerate() {
            baked[to_bake[k]] = Some(r);
        }
    }
    let mut runs = Vec::new();
    let mut first_failure = None;
    let mut i = 0;
    for group in groups {
        let mut failed: Option<String> = None;
        for j in 0..group.len() {
            let idx = i + j;
            let mut o = opts.clone();
            if let Some(label) = &failed {
                o.rollout = None;
                o.no_rollout_reason = Some(format!("{label} failed"));
            } else if j + 1 < group.len() {
                o.rollout = None;
                o.no_rollout_reason =
                    Some(format!("rolled out with {}", labels[i + group.len() - 1]));
            }
            let scoped = out.scoped(&labels[idx]);
            let sub = Context::new(ctx.settings.clone(), &scoped, ctx.cancel.clone());
            let bake_failed = matches!(baked[idx], Some(Err(_)));
            let (summary, result) =
                webake_engine::run::run_baked(&sub, &all[idx], &plans[idx], &o, baked[idx].take());
            let result = result.and(args.result_files(&sub, &summary, started.elapsed()));
            if let Err(e) = &result {
                if !bake_failed {
                    scoped.error(e); // a failed bake was reported when it failed
                }
                first_failure.get_or_insert(e.kind());
                failed.get_or_insert_with(|| labels[idx].clone());
            }
            runs.push(Labelled {
                label: labels[idx].clone(),
                summary,
            });
        }
        i += group.len();
    }
    out.result(&runs, |rs| {
        rs.iter()
            .map(|r| format!("[{}]\n{}", r.label, r.summary))
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    Ok(match first_failure {
        None => ExitCode::SUCCESS,
        Some(kind) => ExitCode::from(kind.exit_code()),
    })
}
