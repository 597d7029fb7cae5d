//! Pull requests through a forge API. GitHub first; other forges implement [`Forge`].
//!
//! The token is read from an environment variable when the forge is built, sent only in the
//! `Authorization` header, and never appears in errors or logs.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where the pull request goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum ForgeConfig {
    /// No forge: branch, commit and push only (the embedded default).
    #[default]
    None,
    GitHub {
        /// `https://api.github.com`, or `https://HOST/api/v3` for GitHub Enterprise.
        api_base: String,
        owner: String,
        repo: String,
        /// Name of the environment variable that holds the token (`GITHUB_TOKEN`, ...).
        token_env: String,
    },
}

pub const GITHUB_API: &str = "https://api.github.com";

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

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PullRequest {
    pub number: u64,
    pub url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullRequestAction {
    Created,
    Updated,
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

/// A forge that holds pull requests.
pub trait Forge {
    /// The open pull request from `head_branch`, if any.
    fn find_open_pull_request(&self, head_branch: &str) -> Result<Option<PullRequest>, ForgeError>;
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

/// GitHub REST API (v3), also GitHub Enterprise through `api_base`.
pub struct GitHub {
    api_base: String,
    owner: String,
    repo: String,
    token_env: String,
    token: String,
    agent: ureq::Agent,
}

impl std::fmt::Debug for GitHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHub")
            .field("api_base", &self.api_base)
            .field("owner", &self.owner)
            .field("repo", &self.repo)
            .field("token_env", &self.token_env)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct PullJson {
    number: u64,
    html_url: String,
}

/// GitHub's error body: `{"message": "...", "errors": [...]}`.
#[derive(Deserialize)]
struct ErrorJson {
    message: String,
    #[serde(default)]
    errors: Vec<serde_json::Value>,
}

const FORGE: &str = "GitHub";
/// Generous for one small JSON request; a hung forge must not hang a pipeline forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

impl GitHub {
    /// Build from the config, reading the token from `token_env` now.
    pub fn from_env(
        api_base: &str,
        owner: &str,
        repo: &str,
        token_env: &str,
    ) -> Result<Self, ForgeError> {
        let token = std::env::var(token_env)
            .ok()
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| ForgeError::TokenMissing {
                env: token_env.to_string(),
            })?;
        Ok(Self::with_token(
            api_base,
            owner,
            repo,
            token_env,
            token.trim().to_string(),
        ))
    }

    pub fn with_token(
        api_base: &str,
        owner: &str,
        repo: &str,
        token_env: &str,
        token: String,
    ) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(REQUEST_TIMEOUT))
            .user_agent(concat!("webake/", env!("CARGO_PKG_VERSION")))
            .build();
        Self {
            api_base: api_base.trim_end_matches('/').to_string(),
            owner: owner.to_string(),
            repo: repo.to_string(),
            token_env: token_env.to_string(),
            token,
            agent: config.into(),
        }
    }

    fn repo_path(&self, rest: &str) -> String {
        format!("/repos/{}/{}{rest}", self.owner, self.repo)
    }

    /// Remove the token from any text that could reach an error.
    fn redact(&self, text: &str) -> String {
        if self.token.is_empty() {
            text.to_string()
        } else {
            text.replace(&self.token, "***")
        }
    }

    fn request(
        &self,
        method: &'static str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, ForgeError> {
        let url = format!("{}{path}", self.api_base);
        tracing::debug!(method, %url, "forge request");
        let transport = |e: ureq::Error| ForgeError::Transport {
            forge: FORGE,
            method,
            path: path.to_string(),
            message: self.redact(&e.to_string()),
        };
        macro_rules! with_headers {
            ($req:expr) => {
                $req.header("Authorization", &format!("Bearer {}", self.token))
                    .header("Accept", "application/vnd.github+json")
                    .header("X-GitHub-Api-Version", "2022-11-28")
            };
        }
        let response = match (method, body) {
            ("GET", _) => with_headers!(self.agent.get(&url)).call(),
            ("POST", Some(b)) => with_headers!(self.agent.post(&url)).send_json(&b),
            ("PATCH", Some(b)) => with_headers!(self.agent.patch(&url)).send_json(&b),
            _ => unreachable!("forge requests are GET, or POST/PATCH with a body"),
        };
        let mut response = response.map_err(transport)?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().map_err(transport)?;
        if status == 401 || status == 403 && !text.contains("rate limit") {
            return Err(ForgeError::Auth {
                forge: FORGE,
                method,
                path: path.to_string(),
                status,
                env: self.token_env.clone(),
            });
        }
        if !(200..300).contains(&status) {
            let message = match serde_json::from_str::<ErrorJson>(&text) {
                Ok(e) if e.errors.is_empty() => e.message,
                Ok(e) => format!(
                    "{} ({})",
                    e.message,
                    e.errors
                        .iter()
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
                Err(_) => text.chars().take(500).collect(),
            };
            return Err(ForgeError::Http {
                forge: FORGE,
                method,
                path: path.to_string(),
                status,
                message: self.redact(&message),
            });
        }
        if text.trim().is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| ForgeError::Decode {
            forge: FORGE,
            method,
            path: path.to_string(),
            message: e.to_string(),
        })
    }

    fn pull(
        method: &'static str,
        path: &str,
        value: serde_json::Value,
    ) -> Result<PullRequest, ForgeError> {
        let pr: PullJson = serde_json::from_value(value).map_err(|e| ForgeError::Decode {
            forge: FORGE,
            method,
            path: path.to_string(),
            message: e.to_string(),
        })?;
        Ok(PullRequest {
            number: pr.number,
            url: pr.html_url,
        })
    }
}

/// Percent-encode a query value (branch names hold `/`).
fn query_escape(value: &str) -> String {
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

impl Forge for GitHub {
    fn find_open_pull_request(&self, head_branch: &str) -> Result<Option<PullRequest>, ForgeError> {
        let head = query_escape(&format!("{}:{head_branch}", self.owner));
        let path = self.repo_path(&format!("/pulls?head={head}&state=open"));
        let value = self.request("GET", &path, None)?;
        let list: Vec<PullJson> =
            serde_json::from_value(value).map_err(|e| ForgeError::Decode {
                forge: FORGE,
                method: "GET",
                path: path.clone(),
                message: e.to_string(),
            })?;
        Ok(list.into_iter().next().map(|p| PullRequest {
            number: p.number,
            url: p.html_url,
        }))
    }

    fn create_pull_request(&self, spec: &PullRequestSpec) -> Result<PullRequest, ForgeError> {
        let path = self.repo_path("/pulls");
        let body = serde_json::json!({
            "title": spec.title,
            "head": spec.head_branch,
            "base": spec.base_branch,
            "body": spec.body,
            "maintainer_can_modify": true,
        });
        Self::pull("POST", &path, self.request("POST", &path, Some(body))?)
    }

    fn update_pull_request(
        &self,
        number: u64,
        spec: &PullRequestSpec,
    ) -> Result<PullRequest, ForgeError> {
        let path = self.repo_path(&format!("/pulls/{number}"));
        let body = serde_json::json!({
            "title": spec.title,
            "body": spec.body,
            "base": spec.base_branch,
        });
        Self::pull("PATCH", &path, self.request("PATCH", &path, Some(body))?)
    }

    fn add_labels(&self, number: u64, labels: &[String]) -> Result<(), ForgeError> {
        let path = self.repo_path(&format!("/issues/{number}/labels"));
        self.request("POST", &path, Some(serde_json::json!({ "labels": labels })))?;
        Ok(())
    }
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
    }
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
    fn debug_never_shows_the_token() {
        let gh = GitHub::with_token("http://127.0.0.1:1", "o", "r", "T", "sekrit-token".into());
        assert!(!format!("{gh:?}").contains("sekrit"));
        assert_eq!(gh.redact("x sekrit-token y"), "x *** y");
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
    }
}
