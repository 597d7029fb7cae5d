//! Parse rendered YAML back into the typed resources (which reject unknown fields).
//!
//! Used by the tests to prove the output holds only modelled fields, and usable by anyone who
//! wants to check a hand-edited manifest against what webake knows.

use serde::Deserialize;

use crate::Error;
use crate::k8s::{ConfigMap, CronJob, Job};
use crate::tekton::{Pipeline, PipelineRun, Task, TriggerBinding, TriggerTemplate};

/// One parsed resource (boxed: the variants differ a lot in size).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    ConfigMap(Box<ConfigMap>),
    Job(Box<Job>),
    CronJob(Box<CronJob>),
    Task(Box<Task>),
    Pipeline(Box<Pipeline>),
    PipelineRun(Box<PipelineRun>),
    TriggerTemplate(Box<TriggerTemplate>),
    TriggerBinding(Box<TriggerBinding>),
}

impl Resource {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ConfigMap(_) => "ConfigMap",
            Self::Job(_) => "Job",
            Self::CronJob(_) => "CronJob",
            Self::Task(_) => "Task",
            Self::Pipeline(_) => "Pipeline",
            Self::PipelineRun(_) => "PipelineRun",
            Self::TriggerTemplate(_) => "TriggerTemplate",
            Self::TriggerBinding(_) => "TriggerBinding",
        }
    }
}

#[derive(Deserialize)]
struct Head {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
}

/// Split a multi-document stream on `---` lines; documents holding only comments are dropped.
pub fn split_documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line == "---" || line.starts_with("--- ") {
            docs.push(String::new());
        } else if let Some(last) = docs.last_mut() {
            last.push_str(line);
            last.push('\n');
        }
    }
    docs.retain(|d| {
        d.lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
    });
    docs
}

/// Parse every document of a stream by its `apiVersion` and `kind`.
pub fn parse_documents(text: &str) -> Result<Vec<Resource>, Error> {
    split_documents(text)
        .iter()
        .enumerate()
        .map(|(index, doc)| parse_document(index, doc))
        .collect()
}

fn parse_document(index: usize, doc: &str) -> Result<Resource, Error> {
    let fail = |kind: &str, message: String| Error::ParseBack {
        index,
        kind: kind.to_owned(),
        message,
    };
    let head: Head = serde_saphyr::from_str(doc).map_err(|e| fail("?", e.to_string()))?;
    let of = |e: serde_saphyr::Error| fail(&head.kind, e.to_string());
    let resource = match (head.api_version.as_str(), head.kind.as_str()) {
        ("v1", "ConfigMap") => Resource::ConfigMap(serde_saphyr::from_str(doc).map_err(of)?),
        ("batch/v1", "Job") => Resource::Job(serde_saphyr::from_str(doc).map_err(of)?),
        ("batch/v1", "CronJob") => Resource::CronJob(serde_saphyr::from_str(doc).map_err(of)?),
        ("tekton.dev/v1", "Task") => Resource::Task(serde_saphyr::from_str(doc).map_err(of)?),
        ("tekton.dev/v1", "Pipeline") => {
            Resource::Pipeline(serde_saphyr::from_str(doc).map_err(of)?)
        }
        ("tekton.dev/v1", "PipelineRun") => {
            Resource::PipelineRun(serde_saphyr::from_str(doc).map_err(of)?)
        }
        ("triggers.tekton.dev/v1beta1", "TriggerTemplate") => {
            Resource::TriggerTemplate(serde_saphyr::from_str(doc).map_err(of)?)
        }
        ("triggers.tekton.dev/v1beta1", "TriggerBinding") => {
            Resource::TriggerBinding(serde_saphyr::from_str(doc).map_err(of)?)
        }
        (api, kind) => return Err(fail(kind, format!("unknown apiVersion/kind {api}/{kind}"))),
    };
    Ok(resource)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_drops_comment_only_documents() {
        let docs =
            split_documents("# header\n---\na: 1\n---\n# only a comment\n---\nb: |\n  ---x\n");
        assert_eq!(docs, ["a: 1\n", "b: |\n  ---x\n"]);
    }
}
