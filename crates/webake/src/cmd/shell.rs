//! `webake shell RECIPE [--after STEP]` / `webake shell IMAGE`: an interactive shell in the
//! step sandbox. Its exit code is webake's.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use webake_engine::shell::{ShellTarget, steps_for};
use webake_engine::{Context, Error};

use crate::args::VarArgs;
use crate::cmd::CmdResult;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  webake shell recipes/debian-minimal.yaml --after 1     the tree after step 1
  webake shell recipes/debian-minimal.yaml --after base  the base alone
  webake shell family:debian-12-minimal                  the newest image of a family

The shell runs as root of the image in the same sandbox as a step (no access to the host's
files, kernel parameters, network or credentials). What it changes is discarded on exit.")]
pub struct ShellArgs {
    /// A recipe file, or a catalog image (id, family:NAME, NAME:VERSION)
    #[arg(value_name = "RECIPE|IMAGE")]
    pub target: String,
    /// With a recipe: open the shell after this step (its number from 1, its name, or
    /// `base`); the steps up to it come from the cache or run as in a bake. Default: after
    /// the last step
    #[arg(long, value_name = "STEP")]
    pub after: Option<String>,
    #[command(flatten)]
    pub vars: VarArgs,
}

impl ShellArgs {
    pub fn run(self, ctx: &Context<'_>) -> CmdResult {
        let path = PathBuf::from(&self.target);
        let code = if path.is_file() {
            let recipe = self.vars.load(&path, ctx.reporter)?;
            let steps = steps_for(&recipe, self.after.as_deref())?;
            webake_engine::shell::shell(
                ctx,
                ShellTarget::Recipe {
                    recipe: &recipe,
                    steps,
                },
            )?
        } else {
            if self.after.is_some() {
                return Err(Error::Invalid(format!(
                    "--after needs a recipe; {} is not a file (an image is shelled into as baked)",
                    self.target
                )));
            }
            webake_engine::shell::shell(ctx, ShellTarget::Image(&self.target))?
        };
        Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
    }
}
