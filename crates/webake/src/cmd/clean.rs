//! `webake clean`: remove what a crash can still leave behind, and say what was removed.

use std::process::ExitCode;

use clap::Args;
use webake_engine::Context;

use crate::cmd::CmdResult;
use crate::output::Output;

#[derive(Debug, Args)]
pub struct CleanArgs {
    /// Only print what would be removed
    #[arg(long)]
    pub dry_run: bool,
    /// Also delete the AMIs and snapshots of this catalog's bakes (tag webake:bake-id) that
    /// no publication in the catalog accounts for, whatever the bake's status; prints the
    /// plan first
    #[arg(long)]
    pub aws: bool,
    /// Regions to sweep with --aws (repeat or comma-separate)
    #[arg(
        long = "region",
        value_name = "REGION",
        value_delimiter = ',',
        env = "AWS_REGION"
    )]
    pub regions: Vec<String>,
}

#[derive(Debug, serde::Serialize)]
struct Cleaned {
    dry_run: bool,
    removed: Vec<webake_engine::clean::Removed>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aws: Option<AwsSwept>,
}

#[derive(Debug, serde::Serialize)]
struct AwsSwept {
    regions: Vec<String>,
    plan: webake_aws::SweepPlan,
    deleted: Vec<String>,
}

impl CleanArgs {
    pub fn run(self, ctx: &Context<'_>, out: &Output) -> CmdResult {
        let removed = webake_engine::clean::clean(ctx, self.dry_run)?;
        let verb = if self.dry_run {
            "would remove"
        } else {
            "removed"
        };
        if !out.json {
            if removed.is_empty() {
                println!("nothing to clean");
            }
            for r in &removed {
                println!("{verb}: {r}");
            }
        }
        let mut result = Cleaned {
            dry_run: self.dry_run,
            removed,
            aws: None,
        };
        if self.aws {
            let plan = webake_engine::clean::plan_aws_sweep(ctx, &self.regions)?;
            if !out.json {
                if plan.is_empty() {
                    println!("AWS: nothing to sweep in {}", self.regions.join(", "));
                }
                let verb = if self.dry_run {
                    "would delete"
                } else {
                    "will delete"
                };
                for item in &plan.items {
                    println!("{verb}: {item}");
                }
            }
            let mut deleted = Vec::new();
            if !self.dry_run && !plan.is_empty() {
                let report = webake_engine::clean::execute_aws_sweep(ctx, &plan)?;
                deleted = report.removed.iter().map(ToString::to_string).collect();
                if !out.json {
                    for d in &deleted {
                        println!("deleted: {d}");
                    }
                }
            }
            result.aws = Some(AwsSwept {
                regions: self.regions.clone(),
                plan,
                deleted,
            });
        }
        if out.json {
            out.result(&result, |_| String::new())?;
        }
        Ok(ExitCode::SUCCESS)
    }
}
