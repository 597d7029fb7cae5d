//! GitLab REST API (v4): merge requests, on gitlab.com or a self-managed instance.
//!
//! Endpoints (all under `/projects/:id`, `:id` the URL-encoded `GROUP/PROJECT`):
//! `GET merge_requests?source_branch=B&state=opened|closed`, `POST merge_requests`,
//! `PUT merge_requests/:iid` (title, description, target branch; `add_labels`). The token goes
//! in the `PRIVATE-TOKEN` header (personal, project or group access token with `api` scope).

use serde::Deserialize;

use super::http::{Auth, Client};
use super::{ClosedPullRequest, Forge, ForgeError, PullRequest, PullRequestSpec, query_escape};

pub const GITLAB_API: &str = "https://gitlab.com/api/v4";

/// Closed merge requests looked at: one page (a family's branch rarely has more).
const CLOSED_PAGE: u32 = 100;

pub struct GitLab {
    project: String,
    client: Client,
}

impl std::fmt::Debug for GitLab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitLab")
            .field("project", &self.project)
            .field("client", &self.client)
            .finish()
    }
}

#[derive(Deserialize)]
struct MergeRequestJson {
    iid: u64,
    web_url: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    state: String,
}

impl GitLab {
    /// Build from the config, reading the token from `token_env` now.
    pub fn from_env(api_base: &str, project: &str, token_env: &str) -> Result<Self, ForgeError> {
        let token = super::token_from_env(token_env)?;
        Ok(Self::with_token(api_base, project, token_env, token))
    }

    pub fn with_token(api_base: &str, project: &str, token_env: &str, token: String) -> Self {
        Self {
            project: project.to_string(),
            client: Client::new(
                "GitLab",
                api_base,
                token_env,
                token,
                Auth::PrivateToken,
                &[],
            ),
        }
    }

    fn project_path(&self, rest: &str) -> String {
        format!("/projects/{}{rest}", query_escape(&self.project))
    }

    fn list(&self, source_branch: &str, state: &str) -> Result<Vec<MergeRequestJson>, ForgeError> {
        let mut query = format!(
            "/merge_requests?source_branch={}&state={state}",
            query_escape(source_branch)
        );
        if state == "closed" {
            query.push_str(&format!(
                "&order_by=updated_at&sort=desc&per_page={CLOSED_PAGE}"
            ));
        }
        let path = self.project_path(&query);
        let value = self.client.request("GET", &path, None)?;
        self.client.decode("GET", &path, value)
    }

    fn merge_request(
        &self,
        method: &'static str,
        path: &str,
        value: serde_json::Value,
    ) -> Result<PullRequest, ForgeError> {
        let mr: MergeRequestJson = self.client.decode(method, path, value)?;
        Ok(PullRequest {
            number: mr.iid,
            url: mr.web_url,
        })
    }
}

impl Forge for GitLab {
    fn find_open_pull_request(&self, head_branch: &str) -> Result<Option<PullRequest>, ForgeError> {
        Ok(self
            .list(head_branch, "opened")?
            .into_iter()
            .next()
            .map(|m| PullRequest {
                number: m.iid,
                url: m.web_url,
            }))
    }

    fn find_closed_pull_requests(
        &self,
        head_branch: &str,
    ) -> Result<Vec<ClosedPullRequest>, ForgeError> {
        Ok(self
            .list(head_branch, "closed")?
            .into_iter()
            .map(|m| ClosedPullRequest {
                number: m.iid,
                url: m.web_url,
                body: m.description.unwrap_or_default(),
                merged: m.state == "merged",
            })
            .collect())
    }

    fn create_pull_request(&self, spec: &PullRequestSpec) -> Result<PullRequest, ForgeError> {
        let path = self.project_path("/merge_requests");
        let body = serde_json::json!({
            "source_branch": spec.head_branch,
            "target_branch": spec.base_branch,
            "title": spec.title,
            "description": spec.body,
        });
        let value = self.client.request("POST", &path, Some(body))?;
        self.merge_request("POST", &path, value)
    }

    fn update_pull_request(
        &self,
        number: u64,
        spec: &PullRequestSpec,
    ) -> Result<PullRequest, ForgeError> {
        let path = self.project_path(&format!("/merge_requests/{number}"));
        let body = serde_json::json!({
            "title": spec.title,
            "description": spec.body,
            "target_branch": spec.base_branch,
        });
        let value = self.client.request("PUT", &path, Some(body))?;
        self.merge_request("PUT", &path, value)
    }

    fn add_labels(&self, number: u64, labels: &[String]) -> Result<(), ForgeError> {
        let path = self.project_path(&format!("/merge_requests/{number}"));
        let body = serde_json::json!({ "add_labels": labels.join(",") });
        self.client.request("PUT", &path, Some(body))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_paths_are_encoded() {
        let gl = GitLab::with_token(
            "http://127.0.0.1:1/api/v4",
            "infra/k8s/clusters",
            "T",
            "x".into(),
        );
        assert_eq!(
            gl.project_path("/merge_requests"),
            "/projects/infra%2Fk8s%2Fclusters/merge_requests"
        );
        assert!(!format!("{gl:?}").contains("\"x\""));
    }
}
