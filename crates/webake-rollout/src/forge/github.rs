//! GitHub REST API (v3), also GitHub Enterprise through `api_base`.

use serde::Deserialize;

use super::http::{Auth, Client};
use super::{ClosedPullRequest, Forge, ForgeError, PullRequest, PullRequestSpec, query_escape};

pub const GITHUB_API: &str = "https://api.github.com";

const HEADERS: &[(&str, &str)] = &[
    ("Accept", "application/vnd.github+json"),
    ("X-GitHub-Api-Version", "2022-11-28"),
];

/// Closed pull requests looked at: one page (a family's branch rarely has more).
const CLOSED_PAGE: u32 = 100;

pub struct GitHub {
    owner: String,
    repo: String,
    client: Client,
}

impl std::fmt::Debug for GitHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHub")
            .field("owner", &self.owner)
            .field("repo", &self.repo)
            .field("client", &self.client)
            .finish()
    }
}

#[derive(Deserialize)]
struct PullJson {
    number: u64,
    html_url: String,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    merged_at: Option<String>,
}

impl GitHub {
    /// Build from the config, reading the token from `token_env` now.
    pub fn from_env(
        api_base: &str,
        owner: &str,
        repo: &str,
        token_env: &str,
    ) -> Result<Self, ForgeError> {
        let token = super::token_from_env(token_env)?;
        Ok(Self::with_token(api_base, owner, repo, token_env, token))
    }

    pub fn with_token(
        api_base: &str,
        owner: &str,
        repo: &str,
        token_env: &str,
        token: String,
    ) -> Self {
        Self {
            owner: owner.to_string(),
            repo: repo.to_string(),
            client: Client::new("GitHub", api_base, token_env, token, Auth::Bearer, HEADERS),
        }
    }

    fn repo_path(&self, rest: &str) -> String {
        format!("/repos/{}/{}{rest}", self.owner, self.repo)
    }

    fn list(&self, head_branch: &str, state: &str) -> Result<Vec<PullJson>, ForgeError> {
        let head = query_escape(&format!("{}:{head_branch}", self.owner));
        let mut query = format!("/pulls?head={head}&state={state}");
        if state == "closed" {
            query.push_str(&format!(
                "&sort=updated&direction=desc&per_page={CLOSED_PAGE}"
            ));
        }
        let path = self.repo_path(&query);
        let value = self.client.request("GET", &path, None)?;
        self.client.decode("GET", &path, value)
    }

    fn pull(
        &self,
        method: &'static str,
        path: &str,
        value: serde_json::Value,
    ) -> Result<PullRequest, ForgeError> {
        let pr: PullJson = self.client.decode(method, path, value)?;
        Ok(PullRequest {
            number: pr.number,
            url: pr.html_url,
        })
    }
}

impl Forge for GitHub {
    fn find_open_pull_request(&self, head_branch: &str) -> Result<Option<PullRequest>, ForgeError> {
        Ok(self
            .list(head_branch, "open")?
            .into_iter()
            .next()
            .map(|p| PullRequest {
                number: p.number,
                url: p.html_url,
            }))
    }

    fn find_closed_pull_requests(
        &self,
        head_branch: &str,
    ) -> Result<Vec<ClosedPullRequest>, ForgeError> {
        Ok(self
            .list(head_branch, "closed")?
            .into_iter()
            .map(|p| ClosedPullRequest {
                number: p.number,
                url: p.html_url,
                body: p.body.unwrap_or_default(),
                merged: p.merged_at.is_some(),
            })
            .collect())
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
        let value = self.client.request("POST", &path, Some(body))?;
        self.pull("POST", &path, value)
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
        let value = self.client.request("PATCH", &path, Some(body))?;
        self.pull("PATCH", &path, value)
    }

    fn add_labels(&self, number: u64, labels: &[String]) -> Result<(), ForgeError> {
        let path = self.repo_path(&format!("/issues/{number}/labels"));
        self.client
            .request("POST", &path, Some(serde_json::json!({ "labels": labels })))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_token() {
        let gh = GitHub::with_token("http://127.0.0.1:1", "o", "r", "T", "sekrit-token".into());
        assert!(!format!("{gh:?}").contains("sekrit"));
    }
}
