//! `webake pipeline render`: the Kubernetes Job/CronJob and Tekton resources that run webake.
//!
//! Parses arguments, reads the inputs through `webake-pipeline`, prints or writes the documents.
//! Input errors (config, service descriptor, recipe) exit with code 2.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use webake_engine::Error;
use webake_pipeline::{Inputs, PipelineConfig, RecipeRef, ServiceDescriptor, ServiceKind};

use crate::cmd::CmdResult;
use crate::output::Output;

/// Every input error of the pipeline crate is the caller's (exit 2).
fn invalid(e: impl std::fmt::Display) -> Error {
    Error::Invalid(e.to_string())
}

#[derive(Debug, Subcommand)]
pub enum PipelineCommand {
    /// Render the Kubernetes Job/CronJob and Tekton pipeline that run webake for a recipe
    Render(RenderArgs),
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// Recipe to bake (required unless the service descriptor has `kind: docker`)
    pub recipe: Option<PathBuf>,
    /// Pipeline config: namespace, image, service account, secrets, resources, repositories
    #[arg(long, short = 'c', value_name = "FILE", env = "WEBAKE_PIPELINE_CONFIG")]
    pub config: PathBuf,
    /// Service descriptor (`kind: ami|docker`, `name`, `repo`) selecting the pipeline
    /// [default: kind ami, named after the recipe's image]
    #[arg(long, value_name = "FILE")]
    pub service: Option<PathBuf>,
    /// The recipe's path inside the recipes repository, as the pod sees it
    /// [default: the recipe's path relative to the root of its git checkout]
    #[arg(long, value_name = "PATH")]
    pub recipe_in_repo: Option<String>,
    /// Write one file per resource into DIR (job.yaml, pipeline.yaml, ...) instead of one
    /// multi-document stream on stdout
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

impl PipelineCommand {
    pub fn run(self, out: &Output) -> CmdResult {
        match self {
            Self::Render(args) => args.run(out),
        }
    }
}

impl RenderArgs {
    pub fn run(self, out: &Output) -> CmdResult {
        let inputs = self.inputs()?;
        let rendered = webake_pipeline::render(&inputs).map_err(invalid)?;
        match &self.out {
            None => {
                use std::io::Write as _;
                let mut stdout = std::io::stdout().lock();
                stdout
                    .write_all(rendered.to_multi_document().as_bytes())
                    .and_then(|()| stdout.flush())
                    .map_err(|e| Error::io("stdout", e))?;
            }
            Some(dir) => {
                let written = rendered
                    .write_to_dir(dir)
                    .map_err(|e| Error::Failed(format!("writing into {}: {e}", dir.display())))?;
                if !out.quiet {
                    for path in written {
                        println!("{}", path.display());
                    }
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    fn inputs(&self) -> Result<Inputs, Error> {
        let config = PipelineConfig::load(&self.config).map_err(invalid)?;
        let service = match &self.service {
            Some(path) => Some(ServiceDescriptor::load(path).map_err(invalid)?),
            None => None,
        };
        let recipe = match &self.recipe {
            Some(path) => {
                let in_repo = match &self.recipe_in_repo {
                    Some(p) => p.clone(),
                    None => RecipeRef::path_in_repo(path).map_err(invalid)?,
                };
                Some(RecipeRef::load(path, &in_repo).map_err(invalid)?)
            }
            None => None,
        };
        let service = match (service, &recipe) {
            (Some(service), _) => service,
            (None, Some(recipe)) => ServiceDescriptor::default_ami(&recipe.name),
            (None, None) => {
                return Err(invalid(
                    "give a recipe, or a --service descriptor of kind docker",
                ));
            }
        };
        if service.kind == ServiceKind::Ami && recipe.is_none() {
            return Err(invalid(
                "the service is of kind ami: give the recipe to bake",
            ));
        }
        Ok(Inputs {
            config,
            config_path: self.config.display().to_string(),
            service,
            service_path: self.service.as_ref().map(|p| p.display().to_string()),
            recipe,
            recipe_path: self.recipe.as_ref().map(|p| p.display().to_string()),
        })
    }
}
