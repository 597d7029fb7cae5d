//! `webake run RECIPE…`: bake, boot test, publish, rollout in one process, each stage optional,
//! with a summary (text, or `--json` on stdout, also when a stage fails) and one exit code per
//! failing stage. Several recipes (or architectures): `run_many`. See docs/run.md.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, ValueEnum};
use serde::Serialize;
use webake_engine::publish::Target;
use webake_engine::run::{RolloutTarget, RunOptions, RunSummary};
use webake_engine::{Context, Error};
use webake_spec::LoadedRecipe;

use crate::args::{BakeFlags, RolloutFlags, TrailingAws, VarArgs, write_result_file};
use crate::cmd::CmdResult;
use crate::output::Output;

const AFTER_HELP: &str = "\
Stages: bake -> test -> publish -> rollout. Several recipes (or a recipe of several
architectures): every image that needs a bake is baked first, up to --jobs at a time, then
each is tested and published, and each recipe rolled out once, in command-line order. The
bake is skipped when the catalog holds an image
baked from the same inputs (and, with --publish aws, published to AWS in every target region);
--force bakes anyway. AWS options go after `--`, as after `publish --to aws`:
  webake run recipe.yaml --publish aws --cluster-repo URL --github OWNER/REPO -- --region eu-west-1 --copy-to us-east-1

Exit codes: 0 ok, 1 bake failed, 2 invalid input, 3 boot test failed, 4 publish failed,
5 rollout failed, 130 interrupted.";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishTo {
    /// Record the local artifacts as published
    Local,
    /// Upload through the EBS direct APIs and register an AMI (options after `--`)
    Aws,
    /// Do not publish
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Progress {
    /// `==> stage` lines
    Text,
    /// One JSON object per line (`{"stage":"bake","event":"started",...}`), as --log-format json
    Json,
}

#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct RunArgs {
    /// The recipe file(s) (YAML); several are baked at once, then each is tested, published
    /// and rolled out in turn
    #[arg(value_name = "RECIPE", required = true)]
    pub recipes: Vec<PathBuf>,
    /// With several recipes or architectures: how many bake at a time [default: the number
    /// of CPUs]
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
    #[command(flatten)]
    pub vars: VarArgs,
    #[command(flatten)]
    pub flags: BakeFlags,
    /// Skip the boot test (a recipe with `test.gate: true` is still tested during the bake)
    #[arg(long)]
    pub no_test: bool,
    /// Where to publish; AWS options follow `--` (those of `publish --to aws`)
    #[arg(long, value_enum, default_value_t = PublishTo::Local)]
    pub publish: PublishTo,
    /// Skip the rollout
    #[arg(long)]
    pub no_rollout: bool,
    /// Cluster repository to roll out to: a local path or a URL git can clone and push to
    #[arg(long, value_name = "PATH|URL", required_unless_present = "no_rollout")]
    pub cluster_repo: Option<String>,
    /// Print the plan and what each stage would do (bake or skip, and why), and do nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Stage progress on stderr: text lines, or JSON lines for log collectors
    #[arg(long, value_enum, default_value_t = Progress::Text)]
    pub progress: Progress,
    /// Write the catalog id of the image to this file
    #[arg(long, value_name = "FILE", help_heading = "Result files")]
    pub image_id_file: Option<PathBuf>,
    /// Write the published AMIs to this file: a JSON object region -> AMI id (`{}` unless
    /// --publish aws)
    #[arg(long, value_name = "FILE", help_heading = "Result files")]
    pub ami_ids_file: Option<PathBuf>,
    /// Append the image to a Packer-compatible manifest.json (artifact_id `region:ami-…,…`
    /// once published to AWS)
    #[arg(long, value_name = "FILE", help_heading = "Result files")]
    pub manifest: Option<PathBuf>,
    #[command(flatten)]
    pub rollout: RolloutFlags,
    /// AWS options for --publish aws (after `--`): --region, --copy-to, --share-with, --tag, …
    #[arg(last = true, value_name = "AWS OPTIONS", help_heading = "AWS options")]
    pub aws: Vec<String>,
}

/// What `run --dry-run` prints.
#[derive(Serialize)]
struct Preview {
    label: String,
    plan: webake_engine::plan::PlanReport,
    bake: webake_engine::run::BakeDecision,
    test: bool,
    publish: String,
    rollout: Option<String>,
}

impl RunArgs {
    pub fn run(self, ctx: &Context<'_>, out: &Output) -> CmdResult {
        // Everything that can be checked before a long bake is checked first (exit code 2).
        let loaded: Vec<LoadedRecipe> = self
            .recipes
            .iter()
            .map(|p| self.vars.load(p, ctx.reporter))
            .collect::<Result<_, _>>()?;
        let opts = self.options()?;
        let groups: Vec<Vec<LoadedRecipe>> = loaded.iter().map(LoadedRecipe::variants).collect();
        if groups.len() > 1
            && let Some(flag) = self.single_result_flag()
        {
            return Err(Error::Invalid(format!(
                "{flag} holds the result of one recipe: run the recipes one per invocation to use it"
            )));
        }
        if self.dry_run {
            return self.preview(ctx, out, &groups.concat(), &opts);
        }
        if groups.len() > 1 || groups[0].len() > 1 {
            return crate::cmd::run_many::run(&self, ctx, out, &groups, &opts);
        }
        let recipe = &groups[0][0];
        let plan = webake_engine::plan::plan(Some(ctx), recipe)?;
        let started = std::time::Instant::now();
        let (summary, result) = webake_engine::run::run(ctx, recipe, &plan, &opts);
        let files = self.result_files(ctx, &summary, started.elapsed());
        let result = result.and(files);
        if out.json {
            out.result(&summary, |_| String::new())?;
        } else if !out.quiet || result.is_ok() {
            print!("{summary}");
        }
        result.map(|()| ExitCode::SUCCESS)
    }

    /// The result-file option that holds one recipe's result, if given.
    fn single_result_flag(&self) -> Option<&'static str> {
        [
            (self.image_id_file.is_some(), "--image-id-file"),
            (self.ami_ids_file.is_some(), "--ami-ids-file"),
            (self.rollout.pr_url_file.is_some(), "--pr-url-file"),
        ]
        .into_iter()
        .find_map(|(given, flag)| given.then_some(flag))
    }

    /// `--dry-run`: the plan and what each stage would do, for each recipe and architecture.
    fn preview(
        &self,
        ctx: &Context<'_>,
        out: &Output,
        variants: &[LoadedRecipe],
        opts: &RunOptions,
    ) -> CmdResult {
        let labels = crate::cmd::bake_many::labels(variants);
        let mut previews = Vec::new();
        for (recipe, label) in variants.iter().zip(labels) {
            let plan = webake_engine::plan::plan(Some(ctx), recipe)?;
            previews.push(Preview {
                label,
                plan: webake_engine::plan::report(ctx, recipe, &plan),
                bake: webake_engine::run::decide(ctx, recipe, &plan, opts)?,
                test: opts.test,
                publish: match &opts.publish {
                    None => "none".into(),
                    Some(Target::Local) => "local".into(),
                    Some(Target::Aws(t)) => {
                        format!("aws: {}", t.regions().collect::<Vec<_>>().join(", "))
                    }
                },
                rollout: opts.rollout.as_ref().map(|r| r.repo.clone()),
            });
        }
        let text = |p: &Preview| {
            format!(
                "{}bake:    {} ({})\ntest:    {}\npublish: {}\nrollout: {}\n",
                p.plan,
                if p.bake.image.is_some() {
                    "skip"
                } else {
                    "bake"
                },
                p.bake.reason,
                if p.test {
                    "boot test (unless the image passed it)"
                } else {
                    "no"
                },
                p.publish,
                p.rollout.as_deref().unwrap_or("no")
            )
        };
        match previews.as_slice() {
            [one] => out.result(one, text)?,
            many => out.result(&many, |ps| {
                ps.iter()
                    .map(|p| format!("[{}]\n{}", p.label, text(p)))
                    .collect::<Vec<_>>()
                    .join("\n")
            })?,
        }
        Ok(ExitCode::SUCCESS)
    }

    /// The engine's options, every one checked.
    pub fn options(&self) -> Result<RunOptions, Error> {
        let publish = match self.publish {
            PublishTo::Aws => {
                let t = TrailingAws::try_parse_from(&self.aws).map_err(|e| {
                    let text = e.to_string();
                    let first = text.lines().next().unwrap_or_default();
                    Error::Invalid(format!(
                        "AWS options after `--`: {}",
                        first.trim_start_matches("error: ")
                    ))
                })?;
                Some(Target::Aws(Box::new(t.target.target()?)))
            }
            _ if !self.aws.is_empty() => {
                return Err(Error::Invalid(format!(
                    "options after `--` are AWS options for --publish aws, got {:?} with --publish {}",
                    self.aws,
                    if self.publish == PublishTo::Local {
                        "local"
                    } else {
                        "none"
                    }
                )));
            }
            PublishTo::Local => Some(Target::Local),
            PublishTo::None => None,
        };
        let rollout = match (&self.cluster_repo, self.no_rollout) {
            (Some(repo), false) => Some(RolloutTarget {
                repo: repo.clone(),
                options: self.rollout.options()?,
            }),
            _ => None,
        };
        Ok(RunOptions {
            bake: self.flags.options(false),
            test: !self.no_test,
            publish,
            rollout,
            no_rollout_reason: None,
            image_id_file: self.image_id_file.clone(),
            ami_ids_file: self.ami_ids_file.clone(),
        })
    }

    /// `--pr-url-file` and `--manifest`, once the stages they need went through.
    pub(crate) fn result_files(
        &self,
        ctx: &Context<'_>,
        s: &RunSummary,
        elapsed: std::time::Duration,
    ) -> Result<(), Error> {
        if let (Some(path), Some(r)) = (&self.rollout.pr_url_file, &s.rollout) {
            write_result_file(path, r.pull_request_url.as_deref().unwrap_or("").as_bytes())?;
        }
        if let (Some(path), Some(img), true) = (&self.manifest, &s.image, s.ok) {
            let img = ctx.catalog()?.find_image(&img.id)?;
            webake_engine::manifest::append_packer_manifest(path, &img, elapsed)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::Parser as _;
    use webake_engine::ErrorKind;
    use webake_pipeline::render::contract::{self, Targets};

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: Vec<String>) -> Command {
        let argv = std::iter::once("webake".to_string()).chain(args.iter().cloned());
        match Cli::try_parse_from(argv) {
            Ok(cli) => cli.command,
            Err(e) => panic!("the pipeline contract {args:?} does not parse: {e}"),
        }
    }

    fn aws_region(o: &RunOptions) -> Option<(String, Vec<String>)> {
        match &o.publish {
            Some(Target::Aws(t)) => Some((t.region.clone(), t.copy_to.clone())),
            _ => None,
        }
    }

    /// The command lines `webake pipeline render` puts in the pods are accepted by this CLI.
    #[test]
    fn the_pipeline_contract_parses_with_the_real_cli() {
        let copy_to = vec!["us-east-1".to_string(), "eu-central-1".to_string()];
        let aws = Targets {
            publish: "aws",
            region: Some("eu-west-1"),
            copy_to: &copy_to,
            github: Some("example/platform"),
            token_env: "FORGE_TOKEN",
        };
        let local = Targets {
            publish: "local",
            region: None,
            copy_to: &[],
            github: None,
            token_env: "GITHUB_TOKEN",
        };
        let repo = "https://github.com/example/platform.git";

        let Command::Run(a) = parse(contract::run("recipes/x.yaml", repo, &aws)) else {
            panic!("not run")
        };
        assert_eq!(a.recipes, vec![PathBuf::from("recipes/x.yaml")]);
        assert_eq!(a.publish, PublishTo::Aws);
        assert_eq!(a.cluster_repo.as_deref(), Some(repo));
        assert!(!a.no_rollout);
        assert_eq!(a.rollout.github.as_deref(), Some("example/platform"));
        assert_eq!(a.rollout.token_env.as_deref(), Some("FORGE_TOKEN"));
        let o = a.options().unwrap();
        assert_eq!(aws_region(&o), Some(("eu-west-1".into(), copy_to.clone())));
        assert!(o.rollout.is_some());

        let Command::Run(a) = parse(contract::run("recipes/x.yaml", repo, &local)) else {
            panic!("not run")
        };
        assert_eq!(a.publish, PublishTo::Local);
        assert!(a.rollout.github.is_none() && a.aws.is_empty());
        assert!(matches!(a.options().unwrap().publish, Some(Target::Local)));

        for targets in [&aws, &local] {
            let Command::Run(a) = parse(contract::run_no_rollout(
                "$(params.recipe)",
                "/tekton/results/image-id",
                "/tekton/results/ami-ids",
                targets,
            )) else {
                panic!("not run")
            };
            assert!(a.no_rollout && a.cluster_repo.is_none());
            assert_eq!(
                a.image_id_file.as_deref(),
                Some(Path::new("/tekton/results/image-id"))
            );
            assert_eq!(
                a.ami_ids_file.as_deref(),
                Some(Path::new("/tekton/results/ami-ids"))
            );
            assert!(a.options().unwrap().rollout.is_none());
        }

        let Command::Rollout(a) = parse(contract::rollout(
            "img-0123456789ab",
            repo,
            "/tekton/results/pull-request",
            &aws,
        )) else {
            panic!("not rollout")
        };
        assert_eq!(a.image.as_deref(), Some("img-0123456789ab"));
        assert_eq!(a.repo, repo);
        assert_eq!(a.options.github.as_deref(), Some("example/platform"));
        assert_eq!(
            a.options.pr_url_file.as_deref(),
            Some(Path::new("/tekton/results/pull-request"))
        );
        a.options.options().unwrap();
    }

    #[test]
    fn options_that_cannot_work_are_invalid_input() {
        let run = |args: &[&str]| {
            let argv: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            let Command::Run(a) = parse(argv) else {
                panic!("not run")
            };
            a.options()
        };
        let e = run(&[
            "run",
            "r.yaml",
            "--no-rollout",
            "--",
            "--region",
            "eu-west-1",
        ])
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");

        let e = run(&[
            "run",
            "r.yaml",
            "--publish",
            "aws",
            "--no-rollout",
            "--",
            "--region",
            "eu-west-1",
            "--name",
            "x",
        ])
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
        assert!(e.to_string().contains("--name"), "{e}");
        assert!(!e.to_string().contains("Usage"), "{e}");

        let e = run(&[
            "run",
            "r.yaml",
            "--publish",
            "aws",
            "--no-rollout",
            "--",
            "--region",
            "eu-west-1",
            "--name-template",
            "{nope}",
        ])
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");

        assert!(
            Cli::try_parse_from(["webake", "run", "r.yaml"]).is_err(),
            "--cluster-repo or --no-rollout is required"
        );
    }
}
