//! webake-pipeline: render the Kubernetes and Tekton resources that run webake on a cluster.
//!
//! `webake pipeline render` reads a pipeline config (namespace, image, secrets, ...), an optional
//! service descriptor (`kind: ami` or `kind: docker`, as the onboarding service knew it) and, for
//! the ami kind, the recipe's name and family. It renders:
//!
//! - ami kind: a `batch/v1` Job and CronJob that run `webake run <recipe>`, and a Tekton pipeline
//!   (clone, build the webake image, bake/test/publish, open the rollout pull request); with
//!   `gc:` in the config, a second CronJob that runs `webake gc` for the recipe's family;
//! - docker kind: a Tekton pipeline (clone, build and push, roll the Deployment);
//! - for both: the Tasks, Pipeline, a PipelineRun and a TriggerTemplate/TriggerBinding "on merge".
//!
//! Every resource is a typed struct ([`k8s`], [`tekton`]) that rejects unknown fields when
//! parsed, so [`parse::parse_documents`] can prove rendered output holds only known fields.
//! This crate renders text; it never talks to a cluster and never prints.

pub mod config;
pub mod k8s;
pub mod parse;
pub mod render;
pub mod tekton;

use std::path::PathBuf;

pub use config::{
    ClusterForge, ClusterRepo, GcSettings, PipelineConfig, RecipeRef, ServiceDescriptor,
    ServiceKind,
};
pub use render::{Document, Inputs, Rendered, render};

/// Errors of this crate; each names the file, and the field where there is one.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", parse_message(path, *line, *column, field.as_deref(), message))]
    Parse {
        path: PathBuf,
        /// 1-based; 0 when unknown.
        line: u64,
        column: u64,
        /// Dotted path of the field (`job.backoffLimit`), when known.
        field: Option<String>,
        message: String,
    },
    #[error("{path}: field `{field}`: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("the ami kind renders a bake of a recipe: give the recipe path")]
    RecipeRequired,
    #[error(
        "the {field} gives the object name `{name}`, longer than {max} characters or not a DNS label"
    )]
    Name {
        name: String,
        max: usize,
        field: String,
    },
    #[error("cannot serialize the {kind}: {message}")]
    Serialize { kind: &'static str, message: String },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("document {index} ({kind}): {message}")]
    ParseBack {
        index: usize,
        kind: String,
        message: String,
    },
}

fn parse_message(
    path: &std::path::Path,
    line: u64,
    column: u64,
    field: Option<&str>,
    message: &str,
) -> String {
    let mut out = path.display().to_string();
    if line > 0 {
        out.push_str(&format!(":{line}:{column}"));
    }
    if let Some(field) = field {
        out.push_str(&format!(": field `{field}`"));
    }
    out.push_str(": ");
    out.push_str(message);
    out
}
