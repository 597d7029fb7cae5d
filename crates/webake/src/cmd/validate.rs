//! `webake validate [--var NAME=VALUE]... [--var-file FILE]... RECIPE...`

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde::Serialize;
use webake_engine::{Context, ErrorKind};

use crate::args::VarArgs;
use crate::cmd::CmdResult;
use crate::output::Output;

#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub vars: VarArgs,
    /// Recipe files
    #[arg(required = true)]
    pub recipes: Vec<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Checked {
    recipe: String,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    family: Option<String>,
    steps: usize,
    /// name -> (value, where it came from); secrets shown as `(secret)`.
    variables: Vec<Variable>,
    warnings: Vec<String>,
    /// The errors, each located (file:line:col, field).
    errors: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Variable {
    name: String,
    value: String,
    origin: String,
}

impl ValidateArgs {
    pub fn run(self, ctx: &Context<'_>, out: &Output) -> CmdResult {
        let options = self.vars.load_options();
        let mut results = Vec::new();
        for r in &self.recipes {
            let mut c = Checked {
                recipe: r.display().to_string(),
                ok: false,
                name: None,
                family: None,
                steps: 0,
                variables: vec![],
                warnings: vec![],
                errors: vec![],
            };
            match webake_spec::load_with(r, &options) {
                Ok(l) => {
                    c.warnings = l.warnings.iter().map(ToString::to_string).collect();
                    for w in &c.warnings {
                        ctx.reporter.warning(w);
                    }
                    // Every architecture's variant plans (a mistake in one names it).
                    let planned = l
                        .variants()
                        .iter()
                        .try_for_each(|v| webake_engine::plan::plan(None, v).map(|_| ()));
                    match planned {
                        Ok(()) => {
                            c.ok = true;
                            c.name = Some(l.recipe.image.name.clone());
                            c.family = Some(l.family().to_string());
                            c.steps = l.recipe.provisioners.len();
                            c.variables = l
                                .variables
                                .iter()
                                .map(|v| Variable {
                                    name: v.name.clone(),
                                    value: v.display_value().to_string(),
                                    origin: v.origin.to_string(),
                                })
                                .collect();
                        }
                        Err(e) => c.errors.push(format!(
                            "{}: {}",
                            r.display(),
                            webake_engine::error::chain(&e)
                        )),
                    }
                }
                Err(e) => c.errors.push(e.to_string()),
            }
            if !out.json {
                for e in &c.errors {
                    eprintln!("{e}");
                }
            }
            results.push(c);
        }
        out.result(&results, |results| {
            let mut s = String::new();
            for c in results.iter().filter(|c| c.ok) {
                s.push_str(&format!(
                    "{}: ok ({} {}, {} step(s))\n",
                    c.recipe,
                    c.name.as_deref().unwrap_or_default(),
                    c.family.as_deref().unwrap_or_default(),
                    c.steps
                ));
                for v in &c.variables {
                    s.push_str(&format!("  var {} = {} ({})\n", v.name, v.value, v.origin));
                }
            }
            s
        })?;
        Ok(if results.iter().all(|c| c.ok) {
            ExitCode::SUCCESS
        } else {
            crate::output::exit(ErrorKind::Invalid)
        })
    }
}
