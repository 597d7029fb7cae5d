//! `webake bake A.yaml B.yaml C.yaml`: several recipes in one invocation (and a recipe of
//! several `architectures`: one bake per architecture, labelled `NAME/ARCH`).
//!
//! Every recipe is loaded and checked before anything is baked (an invalid one stops the
//! command with exit 2, as for one recipe). Then up to `--jobs` bakes run at a time, each on
//! its own thread with its own context (catalog connection, reporter marking its lines with the
//! image name); they share the cancellation token, so Ctrl-C stops them all. A base or a layer
//! two recipes have in common is built once: the second bake waits for the first's entry. A
//! failure is reported when it happens and in the summary; the other bakes go on and their
//! images are recorded. The exit code is that of the first failed recipe (in command-line
//! order), 0 if all succeeded.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use webake_engine::bake::BakeOutcome;
use webake_engine::{Context, Error};
use webake_spec::LoadedRecipe;

use crate::cmd::CmdResult;
use crate::cmd::bake::BakeArgs;
use crate::output::Output;

/// The result of one recipe of the invocation.
#[derive(Serialize)]
struct RecipeResult {
    recipe: String,
    label: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<BakeOutcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<Failure>,
}

#[derive(Serialize)]
struct Failure {
    kind: webake_engine::ErrorKind,
    exit_code: u8,
    message: String,
}

/// What the command prints.
#[derive(Serialize)]
struct Summary {
    seconds: f64,
    jobs: usize,
    recipes: Vec<RecipeResult>,
}

/// `recipes`: every recipe of the command line, loaded and checked, one per architecture.
pub fn run(
    args: &BakeArgs,
    ctx: &Context<'_>,
    out: &Output,
    recipes: Vec<LoadedRecipe>,
) -> CmdResult {
    let labels = labels(&recipes);
    if args.dry_run {
        return plans(ctx, out, &recipes, &labels);
    }
    let jobs = job_limit(args.jobs, recipes.len());
    let t = Instant::now();
    let opts = args.flags.options(args.test);
    let results = in_parallel(ctx, out, &labels, jobs, |i, sub| {
        let plan = webake_engine::plan::plan(Some(sub), &recipes[i])?;
        if args.explain && !out.quiet {
            let report = webake_engine::plan::report(sub, &recipes[i], &plan);
            let text: String = report
                .to_string()
                .lines()
                .map(|l| format!("[{}] {l}\n", labels[i]))
                .collect();
            eprint!("{text}");
        }
        webake_engine::bake::bake(sub, &recipes[i], &plan, &opts)
    });
    let mut first_failure = None;
    let mut summary = Summary {
        seconds: t.elapsed().as_secs_f64(),
        jobs,
        recipes: Vec::new(),
    };
    for (i, r) in results.into_iter().enumerate() {
        let (outcome, error) = match r {
            Ok(o) => (Some(o), None),
            Err(e) => {
                let kind = e.kind();
                first_failure.get_or_insert(kind);
                let failure = Failure {
                    kind,
                    exit_code: kind.exit_code(),
                    message: webake_engine::error::causes(&e).join(": "),
                };
                (None, Some(failure))
            }
        };
        if let (Some(o), Some(p)) = (&outcome, &args.packer_manifest) {
            webake_engine::manifest::append_packer_manifest(
                p,
                &o.image,
                Duration::from_secs_f64(o.seconds),
            )?;
        }
        summary.recipes.push(RecipeResult {
            recipe: recipes[i].path.display().to_string(),
            label: labels[i].clone(),
            outcome,
            error,
        });
    }
    out.result(&summary, summary_text)?;
    Ok(match first_failure {
        None => ExitCode::SUCCESS,
        Some(kind) => ExitCode::from(kind.exit_code()),
    })
}

/// How many of `n` bakes run at once: `--jobs`, else one per CPU, never more than `n`.
pub(crate) fn job_limit(requested: Option<usize>, n: usize) -> usize {
    requested
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .clamp(1, n.max(1))
}

/// Run `work(i, context)` for each of `labels`, up to `jobs` at a time, each on its own thread
/// with its own context (catalog connection, reporter marking its lines `[label]`); they share
/// the cancellation token, so Ctrl-C stops them all. A failure is reported when it happens;
/// the others go on. The results in the order of `labels` (interrupted: work never started).
pub(crate) fn in_parallel<T: Send>(
    ctx: &Context<'_>,
    out: &Output,
    labels: &[String],
    jobs: usize,
    work: impl Fn(usize, &Context<'_>) -> Result<T, Error> + Sync,
) -> Vec<Result<T, Error>> {
    let queue = Mutex::new((0..labels.len()).collect::<VecDeque<_>>());
    let results: Mutex<Vec<Option<Result<T, Error>>>> =
        Mutex::new((0..labels.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| {
                loop {
                    // Not `while let`: the queue's guard would live through the whole work.
                    let next = queue.lock().expect("queue").pop_front();
                    let Some(i) = next else { break };
                    let scoped = out.scoped(&labels[i]);
                    let sub = Context::new(ctx.settings.clone(), &scoped, ctx.cancel.clone());
                    let r = work(i, &sub);
                    if let Err(e) = &r {
                        scoped.error(e);
                    }
                    results.lock().expect("results")[i] = Some(r);
                }
            });
        }
    });
    results
        .into_inner()
        .expect("results")
        .into_iter()
        .map(|r| r.unwrap_or(Err(Error::Interrupted)))
        .collect()
}

/// The image names (`name/arm64` for a recipe of several architectures), made unique
/// (`name`, `name#2`) when two recipes share one.
pub(crate) fn labels(recipes: &[LoadedRecipe]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in recipes {
        let name = &match r.architecture() {
            Some(a)
                if recipes
                    .iter()
                    .any(|o| o.path == r.path && o.architecture() != Some(a)) =>
            {
                format!("{}/{a}", r.recipe.image.name)
            }
            _ => r.recipe.image.name.clone(),
        };
        let n = out
            .iter()
            .filter(|l| *l == name || l.starts_with(&format!("{name}#")))
            .count();
        out.push(if n == 0 {
            name.clone()
        } else {
            format!("{name}#{}", n + 1)
        });
    }
    out
}

/// `--dry-run` with several recipes: every plan.
fn plans(
    ctx: &Context<'_>,
    out: &Output,
    recipes: &[LoadedRecipe],
    labels: &[String],
) -> CmdResult {
    let mut reports = Vec::new();
    for (r, label) in recipes.iter().zip(labels) {
        let plan = webake_engine::plan::plan(Some(ctx), r)?;
        reports.push((label.clone(), webake_engine::plan::report(ctx, r, &plan)));
    }
    out.result(&reports, |rs| {
        rs.iter()
            .map(|(label, r)| format!("[{label}]\n{r}"))
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    Ok(ExitCode::SUCCESS)
}

fn summary_text(s: &Summary) -> String {
    let ok = s.recipes.iter().filter(|r| r.outcome.is_some()).count();
    let mut text = format!(
        "{ok} of {} recipe(s) baked in {:.1}s ({} at a time)\n",
        s.recipes.len(),
        s.seconds,
        s.jobs
    );
    for r in &s.recipes {
        let _ = writeln!(text, "\n[{}] {}", r.label, r.recipe);
        match (&r.outcome, &r.error) {
            (Some(o), _) => text.push_str(&crate::cmd::bake::outcome_text(o)),
            (None, Some(e)) => {
                let _ = writeln!(text, "FAILED (exit {}): {}", e.exit_code, e.message);
            }
            (None, None) => {}
        }
    }
    text
}
