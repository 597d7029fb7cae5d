//! `webake validate [--var NAME=VALUE]... [--var-file FILE]... RECIPE...`

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::settings::Settings;

#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub vars: VarArgs,
    /// Recipe files
    #[arg(required = true)]
    pub recipes: Vec<PathBuf>,
}

/// Values for a recipe's `variables:`. Precedence: --var, then --var-file (a later file wins),
/// then the environment (WEBAKE_VAR_NAME), then the recipe's default.
#[derive(Debug, Clone, Default, Args)]
pub struct VarArgs {
    /// Set a recipe variable (repeatable; the last one for a name wins)
    #[arg(long = "var", value_name = "NAME=VALUE", value_parser = parse_var)]
    pub vars: Vec<(String, String)>,
    /// Read recipe variables from a YAML file of `NAME: VALUE` (repeatable; a later file wins)
    #[arg(long = "var-file", value_name = "FILE")]
    pub var_files: Vec<PathBuf>,
}

fn parse_var(s: &str) -> Result<(String, String), String> {
    webake_spec::parse_var_arg(s)
}

/// The operator's allowlist of host variables recipes may read as secrets.
pub const SECRET_ENV: &str = "WEBAKE_SECRET_ENV";

/// Load a recipe with the command line's variables and print its warnings.
pub fn load_recipe(
    path: &std::path::Path,
    vars: &VarArgs,
) -> anyhow::Result<webake_spec::LoadedRecipe> {
    let r = webake_spec::load_with(path, &vars.load_options())?;
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    Ok(r)
}

impl VarArgs {
    /// The recipe load options: these flags, the process's `WEBAKE_VAR_*` variables, and the
    /// operator's allowlist of secret environment variables (`WEBAKE_SECRET_ENV`, comma
    /// separated names or `PREFIX*`; empty: recipes may read no host variable as a secret).
    pub fn load_options(&self) -> webake_spec::LoadOptions {
        let env = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter(|(k, _)| k.starts_with(webake_spec::ENV_PREFIX))
            .collect();
        webake_spec::LoadOptions {
            vars: webake_spec::VarInputs {
                cli: self.vars.clone(),
                files: self.var_files.clone(),
                env,
            },
            secret_env_allow: Some(
                std::env::var(SECRET_ENV)
                    .unwrap_or_default()
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect(),
            ),
        }
    }
}

impl ValidateArgs {
    pub fn run(self, _settings: &Settings) -> anyhow::Result<ExitCode> {
        let options = self.vars.load_options();
        let mut bad = 0;
        for r in &self.recipes {
            match webake_spec::load_with(r, &options) {
                Ok(l) => {
                    for w in &l.warnings {
                        eprintln!("warning: {w}");
                    }
                    let plan = crate::cmd::bake::make_plan(&l, None);
                    match plan {
                        Ok(_) => {
                            println!(
                                "{}: ok ({} {}, {} step(s))",
                                r.display(),
                                l.recipe.image.name,
                                l.family(),
                                l.recipe.provisioners.len()
                            );
                            for v in &l.variables {
                                println!("  var {} = {} ({})", v.name, v.display_value(), v.origin);
                            }
                        }
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
