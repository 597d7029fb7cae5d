//! `webake lint IMAGE|DISK|DIR`: environment-agnostic and hygiene checks (exit 1 on errors).

use std::fmt::Write as _;
use std::process::ExitCode;

use clap::Args;
use webake_engine::{Context, ErrorKind};
use webake_inventory::Severity;

use crate::cmd::CmdResult;
use crate::output::Output;

#[derive(Debug, Args)]
pub struct LintArgs {
    /// A directory tree, a raw/qcow2 disk file, or a catalog image
    pub target: String,
    /// Rules to allow (repeatable)
    #[arg(long, value_name = "RULE")]
    pub allow: Vec<String>,
}

impl LintArgs {
    pub fn run(self, ctx: &Context<'_>, out: &Output) -> CmdResult {
        let findings = webake_engine::lint::lint_target(ctx, &self.target, &self.allow)?;
        out.result(&findings, |findings| {
            if findings.is_empty() {
                return format!("{}: clean\n", self.target);
            }
            let mut s = String::new();
            for f in findings {
                let _ = writeln!(
                    s,
                    "{:<8} {:<22} {}: {}",
                    format!("{:?}", f.severity).to_lowercase(),
                    f.rule.id(),
                    f.path,
                    f.message
                );
            }
            s
        })?;
        Ok(if findings.iter().any(|f| f.severity == Severity::Error) {
            crate::output::exit(ErrorKind::Failure)
        } else {
            ExitCode::SUCCESS
        })
    }
}
