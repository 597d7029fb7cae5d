//! `webake pipeline render`: the Kubernetes Job/CronJob and Tekton resources that run webake.
//!
//! Parses arguments, reads the inputs through `webake-pipeline`, prints or writes the documents.
//! Input errors (config, service descriptor, recipe) exit with code 2.

use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use webake_pipeline::{Inputs, PipelineConfig, RecipeRef, ServiceDescriptor, ServiceKind};

use crate::exit::{INVALID_INPUT, coded};

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
    pub fn run(self, settings: &crate::settings::Settings) -> anyhow::Result<ExitCode> {
        match self {
            Self::Render(args) => args.run(settings),
        }
    }
}

impl RenderArgs {
    pub fn run(self, settings: &crate::settings::Settings) -> anyhow::Result<ExitCode> {
        let inputs = self.inputs().map_err(|e| coded(INVALID_INPUT, e))?;
        let rendered = webake_pipeline::render(&inputs).map_err(|e| coded(INVALID_INPUT, e))?;
        match &self.out {
            None => {
                use std::io::Write as _;
                let mut stdout = std::io::stdout().lock();
                stdout
                    .write_all(rendered.to_multi_document().as_bytes())
                    .and_then(|()| stdout.flush())
                    .context("cannot write to stdout")?;
            }
            Some(dir) => {
                let written = rendered.write_to_dir(dir)?;
                if !settings.quiet {
                    for path in written {
                        println!("{}", path.display());
                    }
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    fn inputs(&self) -> anyhow::Result<Inputs> {
        let config = PipelineConfig::load(&self.config)?;
        let service = match &self.service {
            Some(path) => Some(ServiceDescriptor::load(path)?),
            None => None,
        };
        let recipe = match &self.recipe {
            Some(path) => {
                let in_repo = match &self.recipe_in_repo {
                    Some(p) => p.clone(),
                    None => path_in_repo(path)?,
                };
                Some(RecipeRef::load(path, &in_repo)?)
            }
            None => None,
        };
        let service = match (service, &recipe) {
            (Some(service), _) => service,
            (None, Some(recipe)) => ServiceDescriptor::default_ami(&recipe.name),
            (None, None) => {
                anyhow::bail!("give a recipe, or a --service descriptor of kind docker")
            }
        };
        if service.kind == ServiceKind::Ami && recipe.is_none() {
            anyhow::bail!("the service is of kind ami: give the recipe to bake");
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

/// The recipe's path relative to the root of the git checkout that holds it (the pod clones
/// that repository and runs `webake run <this path>` from its root).
fn path_in_repo(recipe: &Path) -> anyhow::Result<String> {
    let absolute = std::fs::canonicalize(recipe)
        .with_context(|| format!("cannot resolve the recipe path {}", recipe.display()))?;
    let root = absolute
        .ancestors()
        .skip(1)
        .find(|dir| dir.join(".git").exists())
        .with_context(|| {
            format!(
                "{} is not inside a git checkout: say where it lives in the recipes repository \
                 with --recipe-in-repo",
                recipe.display()
            )
        })?;
    let relative = absolute
        .strip_prefix(root)
        .expect("an ancestor is a prefix");
    let parts: Vec<String> = relative
        .components()
        .map(|c| match c {
            Component::Normal(part) => part.to_str().map(str::to_owned),
            _ => None,
        })
        .collect::<Option<_>>()
        .with_context(|| format!("the recipe path {} is not valid UTF-8", recipe.display()))?;
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_in_repo_is_relative_to_the_checkout_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".git")).unwrap();
        std::fs::create_dir_all(dir.path().join("recipes/base")).unwrap();
        let recipe = dir.path().join("recipes/base/debian.yaml");
        std::fs::write(&recipe, "image:\n  name: debian\n").unwrap();
        assert_eq!(path_in_repo(&recipe).unwrap(), "recipes/base/debian.yaml");
    }

    #[test]
    fn path_in_repo_outside_a_checkout_asks_for_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let recipe = dir.path().join("debian.yaml");
        std::fs::write(&recipe, "image:\n  name: debian\n").unwrap();
        // A temp dir may itself sit inside a checkout; only check the message when it does not.
        if let Err(err) = path_in_repo(&recipe) {
            assert!(err.to_string().contains("--recipe-in-repo"), "{err}");
        }
    }
}
