//! `webake gc`: retire old images (catalog rows, local files, AMIs) that nothing uses; the plan
//! says why each image is kept. The work is `webake_engine::gc`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use webake_engine::Context;
use webake_engine::gc::{self, GcAws, GcOptions, GcRepository};

use crate::cmd::CmdResult;
use crate::output::Output;

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Image family to collect (repeat) [default: every family in the catalog]
    #[arg(long = "family", value_name = "FAMILY")]
    pub families: Vec<String>,
    /// Keep the newest N images of each family (at least 1)
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub keep: usize,
    /// Keep every image younger than this (30d, 12h, 2w)
    #[arg(long, value_name = "DURATION", value_parser = gc::parse_duration)]
    pub older_than: Option<Duration>,
    /// Cluster repository whose references keep images, read at its default branch and every
    /// webake/* branch (a path or a URL; repeat)
    #[arg(long = "repo", value_name = "PATH|URL")]
    pub repos: Vec<String>,
    /// Rollout targets file: each of its repositories counts as a --repo (with its base branch
    /// and config)
    #[arg(long, value_name = "FILE")]
    pub targets: Option<PathBuf>,
    /// Rollout config inside the repositories (the base branch it names is read too)
    #[arg(long, value_name = "PATH", default_value = webake_rollout::DEFAULT_CONFIG_PATH)]
    pub config: String,
    /// Retire AMIs too (deprecate, deregister, delete snapshots in every region), keeping those
    /// used by instances, launch templates or Auto Scaling groups
    #[arg(long)]
    pub aws: bool,
    /// Regions to ask for AMIs in use besides the images' own (repeat or comma-separate)
    #[arg(
        long = "region",
        value_name = "REGION",
        value_delimiter = ',',
        requires = "aws"
    )]
    pub regions: Vec<String>,
    /// Named AWS profile [default: the standard credential chain]
    #[arg(long, requires = "aws")]
    pub profile: Option<String>,
    /// Only deprecate the AMIs of the images gc would retire; remove nothing
    #[arg(long, requires = "aws")]
    pub deprecate_only: bool,
    /// Deregister an AMI only this long after gc deprecated it (a first run deprecates)
    #[arg(long, value_name = "DURATION", value_parser = gc::parse_duration, requires = "aws")]
    pub grace: Option<Duration>,
    /// Print the plan (what, where, why) and change nothing
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(serde::Serialize)]
struct GcResult {
    dry_run: bool,
    plan: gc::GcPlan,
    #[serde(skip_serializing_if = "Option::is_none")]
    report: Option<gc::GcReport>,
}

impl GcArgs {
    pub fn run(self, ctx: &Context<'_>, out: &Output) -> CmdResult {
        let plan = gc::plan(ctx, &self.options(ctx)?)?;
        if !out.json {
            print!("{}", gc::plan_text(&plan, self.dry_run));
        }
        let report = match self.dry_run || plan.is_empty() {
            true => None,
            false => Some(gc::execute(ctx, &plan)?),
        };
        if let (false, Some(r)) = (out.json, &report) {
            print!("{}", gc::report_text(r));
        }
        let result = GcResult {
            dry_run: self.dry_run,
            plan,
            report,
        };
        if out.json {
            out.result(&result, |_| String::new())?;
        }
        if let Some(r) = &result.report {
            gc::report_result(r)?;
        }
        Ok(ExitCode::SUCCESS)
    }

    fn options(&self, ctx: &Context<'_>) -> Result<GcOptions, webake_engine::Error> {
        let mut repositories: Vec<GcRepository> = self
            .repos
            .iter()
            .map(|r| GcRepository {
                location: r.clone(),
                config: self.config.clone(),
                base_branch: None,
            })
            .collect();
        if let Some(path) = &self.targets {
            let targets = webake_engine::rollout::load_targets(path)?;
            repositories.extend(targets.repositories.into_iter().map(|t| GcRepository {
                location: t.repo,
                config: t.config.unwrap_or_else(|| self.config.clone()),
                base_branch: t.base_branch,
            }));
        }
        let aws = self.aws.then(|| GcAws {
            regions: self.regions.clone(),
            client: webake_aws::ClientSettings {
                profile: self.profile.clone(),
                ..webake_engine::aws::client_settings(ctx)
            },
        });
        Ok(GcOptions {
            families: self.families.clone(),
            keep: self.keep,
            older_than: self.older_than,
            repositories,
            aws,
            deprecate_only: self.deprecate_only,
            grace: self.grace,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;
    use webake_pipeline::render::contract::{self, GcRepos};

    use crate::cli::{Cli, Command};

    /// The command lines of the gc CronJob (`webake pipeline render`) parse with this CLI into
    /// the options they say.
    #[test]
    fn the_pipeline_gc_contract_parses_with_the_real_cli() {
        let settings = webake_pipeline::GcSettings {
            schedule: "0 6 * * 0".into(),
            keep: 4,
            older_than: Some("30d".into()),
            aws: None,
            grace: Some("7d".into()),
            deprecate_only: true,
        };
        for (repos, aws) in [
            (GcRepos::Repo("https://git.example.com/k8s.git"), true),
            (GcRepos::Targets("/etc/webake/rollout/targets.yaml"), false),
        ] {
            let args = contract::gc("k8s-node", &settings, repos, aws);
            let argv = std::iter::once("webake".to_string()).chain(args.iter().cloned());
            let cli = Cli::try_parse_from(argv)
                .unwrap_or_else(|e| panic!("the gc contract {args:?} does not parse: {e}"));
            let Command::Gc(a) = cli.command else {
                panic!("{args:?} is not gc")
            };
            assert_eq!(a.families, ["k8s-node"]);
            assert_eq!(a.keep, 4);
            assert_eq!(
                a.older_than,
                Some(std::time::Duration::from_secs(30 * 86_400))
            );
            assert_eq!(a.aws, aws);
            assert_eq!(a.deprecate_only, aws);
            match repos {
                GcRepos::Repo(url) => assert_eq!(a.repos, [url]),
                GcRepos::Targets(file) => assert_eq!(a.targets.as_deref(), Some(file.as_ref())),
            }
        }
    }
}
