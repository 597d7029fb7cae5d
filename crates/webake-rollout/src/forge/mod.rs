//! Pull requests through a forge API: GitHub (REST v3) and GitLab (REST v4, merge requests),
//! behind one [`Forge`] trait.
//!
//! The token is read from an environment variable when the forge is built, sent only in a
//! request header, and never appears in errors or logs.

mod github;
mod gitlab;
mod http;

use serde::{Deserialize, Serialize};

pub use github::{GITHUB_API, GitHub};
pub use gitlab::{GITLAB_API, GitLab};

/// Where the pull request goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum ForgeConfig {
    /// No forge: branch, commit and push only (the embedded default).
    #[default]
    None,
    #[serde(rename = "github")]
    GitHub {
        /// `https://api.github.com`, or `https://HOST/api/v3` for GitHub Enterprise.
        api_base: String,
        owner: String,
        repo: String,
        /// Name of the environment variable that holds the token (`GITHUB_TOKEN`, ...).
        token_env: String,
    },
    #[serde(rename = "gitlab")]
    GitLab {
        /// `https://gitlab.com/api/v4`, or `https://HOST/api/v4` for a self-managed GitLab.
        api_base: String,
        /// `GROUP/PROJECT` (subgroups allowed: `GROUP/SUB/PROJECT`).
        project: String,
        /// Name of the environment variable that holds the token (`GITLAB_TOKEN`, ...).
        token_env: String,
    },
}

impl ForgeConfig {
    /// `github acme/platform`, `gitlab infra/clusters`, or `none`: for summaries.
    pub fn describe(&self) -> String {
        match self {
            Self::None => "none".into(),
            Self::GitHub { owner, repo, .. } => format!("github {owner}/{repo}"),
            Self::GitLab { project, .. } => format!("gitlab {project}"),
        }
    }
}

/// What a pull request should say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PullRequestSpec {
    pub head_branch: String,
    pub base_branch: String,
    pub title: String,
    /// Markdown.
    pub body: String,
    pub labels: Vec<String>,
}

/// A pull request (GitHub) or merge request (GitLab): its number (`iid` on GitLab) and page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PullRequest {
    pub number: u64,
    pub url: String,
}

/// A pull request that is no longer open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClosedPullRequest {
    pub number: u64,
    pub url: String,
    /// Its description, as the forge holds it now (webake's marker names the image).
    pub body: String,
    /// Merged (as opposed to closed without merging by a reviewer).
    pub merged: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullRequestAction {
    Created,
    Updated,
    /// A reviewer closed the pull request for this image: it stays closed, nothing was pushed.
    LeftClosed,
}

#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    #[error("forge token: environment variable {env} is not set or empty")]
    TokenMissing { env: String },
    #[error(
        "{forge} refused the credentials ({status}) for {method} {path}: check the token in ${env} \
         and its access to the repository"
    )]
    Auth {
        forge: &'static str,
        method: &'static str,
        path: String,
        status: u16,
        env: String,
    },
    #[error("{forge} {method} {path} failed with HTTP {status}: {message}")]
    Http {
        forge: &'static str,
        method: &'static str,
        path: String,
        status: u16,
        message: String,
    },
    #[error("{forge} {method} {path}: {message}")]
    Transport {
        forge: &'static str,
        method: &'static str,
        path: String,
        message: String,
    },
    #[error("{forge} {method} {path}: unexpected response: {message}")]
    Decode {
        forge: &'static str,
        method: &'static str,
        path: String,
        message: String,
    },
}

/// A forge that holds pull requests (GitHub) or merge requests (GitLab).
pub trait Forge {
    /// The open pull request from `head_branch`, if any.
    fn find_open_pull_request(&self, head_branch: &str) -> Result<Option<PullRequest>, ForgeError>;
    /// Pull requests from `head_branch` that are closed or merged, newest first.
    fn find_closed_pull_requests(
        &self,
        head_branch: &str,
    ) -> Result<Vec<ClosedPullRequest>, ForgeError>;
    fn create_pull_request(&self, spec: &PullRequestSpec) -> Result<PullRequest, ForgeError>;
    /// Replace title, body and base of an existing pull request.
    fn update_pull_request(
        &self,
        number: u64,
        spec: &PullRequestSpec,
    ) -> Result<PullRequest, ForgeError>;
    fn add_labels(&self, number: u64, labels: &[String]) -> Result<(), ForgeError>;
}

/// Create the pull request, or update the open one from the same branch (no duplicates).
pub fn ensure_pull_request(
    forge: &dyn Forge,
    existing: Option<PullRequest>,
    spec: &PullRequestSpec,
) -> Result<(PullRequest, PullRequestAction), ForgeError> {
    let (pr, action) = match existing {
        Some(pr) => (
            forge.update_pull_request(pr.number, spec)?,
            PullRequestAction::Updated,
        ),
        None => (forge.create_pull_request(spec)?, PullRequestAction::Created),
    };
    if !spec.labels.is_empty() {
        forge.add_labels(pr.number, &spec.labels)?;
    }
    Ok((pr, action))
}

/// Build the forge of a config (`None`: local mode). Reads the token now, before anything is pushed.
pub fn forge_from_config(config: &ForgeConfig) -> Result<Option<Box<dyn Forge>>, ForgeError> {
    match config {
        ForgeConfig::None => Ok(None),
        ForgeConfig::GitHub {
            api_base,
            owner,
            repo,
            token_env,
        } => Ok(Some(Box::new(GitHub::from_env(
            api_base, owner, repo, token_env,
        )?))),
        ForgeConfig::GitLab {
            api_base,
            project,
            token_env,
        } => Ok(Some(Box::new(GitLab::from_env(
            api_base, project, token_env,
        )?))),
    }
}

/// Read a token from `env` (trimmed; unset or blank is an error naming the variable).
pub(crate) fn token_from_env(env: &str) -> Result<String, ForgeError> {
    std::env::var(env)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ForgeError::TokenMissing {
            env: env.to_string(),
        })
}

/// Percent-encode a path segment or query value (branch names and project paths hold `/`).
pub(crate) fn query_escape(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_escaped() {
        assert_eq!(
            query_escape("acme:webake/debian-12"),
            "acme%3Awebake%2Fdebian-12"
        );
    }

    #[test]
    fn missing_token_names_the_variable() {
        let err = GitHub::from_env(
            "http://127.0.0.1:1",
            "o",
            "r",
            "WEBAKE_TEST_SURELY_UNSET_TOKEN",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("WEBAKE_TEST_SURELY_UNSET_TOKEN"),
            "{err}"
        );
        let err = GitLab::from_env(
            "http://127.0.0.1:1",
            "g/p",
            "WEBAKE_TEST_SURELY_UNSET_TOKEN",
        )
        .unwrap_err();
        assert!(matches!(err, ForgeError::TokenMissing { .. }), "{err:?}");
    }
}
