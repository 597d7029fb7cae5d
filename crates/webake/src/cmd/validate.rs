//! `webake validate RECIPE...`

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::settings::Settings;

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Recipe files
    #[arg(required = true)]
    pub recipes: Vec<PathBuf>,
}

impl ValidateArgs {
    pub fn run(self, _settings: &Settings) -> anyhow::Result<ExitCode> {
        let mut bad = 0;
        for r in &self.recipes {
            match webake_spec::load(r) {
                Ok(l) => {
                    let plan = crate::cmd::bake::make_plan(&l, None);
                    match plan {
                        Ok(_) => println!(
                            "{}: ok ({} {}, {} step(s))",
                            r.display(),
                            l.recipe.image.name,
                            l.family(),
                            l.recipe.provisioners.len()
                        ),
                        Err(e) => {
                            eprintln!("{}: {e:#}", r.display());
                            bad += 1;
                        }
                    }
                }
                Err(e) => {
                    eprintln!("{e}");
                    bad += 1;
                }
            }
        }
        Ok(if bad == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(crate::exit::INVALID_INPUT)
        })
    }
}
