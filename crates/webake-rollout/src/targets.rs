//! Several cluster repositories in one run: a rollout targets file lists them (with their forge,
//! base branch, config path and rules); [`rollout_targets`] proposes in each, one pull request
//! each, and [`summary_table`] shows what happened where.
//!
//! ```yaml
//! repositories:
//!   - repo: git@github.com:acme/platform-kubernetes.git
//!     github: acme/platform-kubernetes
//!   - repo: https://gitlab.example.com/infra/edge-clusters.git
//!     gitlab: infra/edge-clusters
//!     gitlab-api: https://gitlab.example.com/api/v4
//!     token-env: EDGE_GITLAB_TOKEN
//!     base-branch: production
//!     config: ops/webake-rollout.yaml
//!     labels: [edge]
//!     rules:
//!       - kind: instance-group
//!         roles: [Node]
//! ```

use serde::{Deserialize, Serialize};

use crate::error::RolloutError;
use crate::forge::{self, Forge, ForgeConfig, ForgeError, GITHUB_API, GITLAB_API};
use crate::review::ImageLookup;
use crate::rules::Rule;
use crate::{
    BranchStatus, RepoLocation, Reporter, RolloutOutcome, RolloutRequest, rollout_with_forge,
};

/// The cluster repositories a run proposes in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RolloutTargets {
    pub repositories: Vec<Target>,
}

/// One cluster repository and how to propose in it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Target {
    /// A local path or a URL git can clone and push to.
    pub repo: String,
    /// `OWNER/REPO`: open a GitHub pull request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github: Option<String>,
    /// GitHub API base (GitHub Enterprise: `https://HOST/api/v3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github_api: Option<String>,
    /// `GROUP/PROJECT`: open a GitLab merge request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gitlab: Option<String>,
    /// GitLab API base (self-managed: `https://HOST/api/v4`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gitlab_api: Option<String>,
    /// Environment variable holding this forge's token (default: `WEBAKE_FORGE_TOKEN` when set,
    /// else `GITHUB_TOKEN` / `GITLAB_TOKEN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// Branch to start from and propose to (default: the run's, else the repository config's,
    /// else the repository HEAD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_branch: Option<String>,
    /// Rollout config inside this repository (default: the run's, `.webake/rollout.yaml`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// Labels for this repository's pull request, in addition to the run's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Rules for this repository, replacing its rollout config's rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
}

impl RolloutTargets {
    /// Parse and check a targets file; `file` names it in errors.
    pub fn from_yaml(text: &str, file: &str) -> Result<Self, RolloutError> {
        let err = |message: String| RolloutError::Targets {
            file: file.to_string(),
            message,
        };
        let targets: Self = serde_saphyr::from_str(text).map_err(|e| err(e.to_string()))?;
        targets.validate().map_err(err)?;
        Ok(targets)
    }

    /// Every entry names a repository once, one forge at most, valid rules and names.
    pub fn validate(&self) -> Result<(), String> {
        if self.repositories.is_empty() {
            return Err("`repositories` lists no repository".into());
        }
        for (i, t) in self.repositories.iter().enumerate() {
            let at = |m: String| format!("repositories[{i}] ({}): {m}", t.repo);
            t.validate().map_err(at)?;
            if let Some(j) = self.repositories[..i].iter().position(|o| o.repo == t.repo) {
                return Err(at(format!(
                    "the same repository as repositories[{j}]: both would push webake/<family>"
                )));
            }
        }
        Ok(())
    }
}

fn slug_ok(slug: &str, min_parts: usize, max_parts: usize) -> bool {
    let parts: Vec<&str> = slug.split('/').collect();
    (min_parts..=max_parts).contains(&parts.len())
        && parts.iter().all(|p| {
            !p.is_empty()
                && !p.starts_with(['-', '.'])
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

fn env_name_ok(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The token variable when none is named: `WEBAKE_FORGE_TOKEN` when it is set, else the
/// forge's usual one (`GITHUB_TOKEN`, `GITLAB_TOKEN`).
pub fn default_token_env(gitlab: bool) -> String {
    let set = std::env::var_os("WEBAKE_FORGE_TOKEN").is_some_and(|t| !t.is_empty());
    match (set, gitlab) {
        (true, _) => "WEBAKE_FORGE_TOKEN",
        (false, true) => "GITLAB_TOKEN",
        (false, false) => "GITHUB_TOKEN",
    }
    .to_string()
}

impl Target {
    pub fn validate(&self) -> Result<(), String> {
        if self.repo.trim().is_empty() {
            return Err("`repo` is empty".into());
        }
        if self.github.is_some() && self.gitlab.is_some() {
            return Err("give `github` or `gitlab`, not both".into());
        }
        if let Some(s) = &self.github
            && !slug_ok(s, 2, 2)
        {
            return Err(format!("github {s:?} is not OWNER/REPO"));
        }
        if let Some(s) = &self.gitlab
            && !slug_ok(s, 2, 20)
        {
            return Err(format!("gitlab {s:?} is not GROUP/PROJECT"));
        }
        if self.github_api.is_some() && self.github.is_none() {
            return Err("`github-api` without `github`".into());
        }
        if self.gitlab_api.is_some() && self.gitlab.is_none() {
            return Err("`gitlab-api` without `gitlab`".into());
        }
        for api in [&self.github_api, &self.gitlab_api].into_iter().flatten() {
            if !(api.starts_with("https://") || api.starts_with("http://")) {
                return Err(format!("API base {api:?} is not an http(s) URL"));
            }
        }
        if let Some(env) = &self.token_env
            && !env_name_ok(env)
        {
            return Err(format!(
                "token-env {env:?} is not an environment variable name"
            ));
        }
        if self.token_env.is_some() && self.github.is_none() && self.gitlab.is_none() {
            return Err("`token-env` without `github` or `gitlab`".into());
        }
        if let Some(l) = self.labels.iter().find(|l| l.trim().is_empty()) {
            return Err(format!("empty label {l:?}"));
        }
        for (i, rule) in self.rules.iter().enumerate() {
            rule.validate().map_err(|e| format!("rules[{i}]: {e}"))?;
        }
        Ok(())
    }

    /// Where this target's pull request goes.
    pub fn forge_config(&self) -> ForgeConfig {
        match (&self.github, &self.gitlab) {
            (Some(slug), _) => {
                let (owner, repo) = slug.split_once('/').unwrap_or((slug, ""));
                ForgeConfig::GitHub {
                    api_base: self.github_api.clone().unwrap_or_else(|| GITHUB_API.into()),
                    owner: owner.to_string(),
                    repo: repo.to_string(),
                    token_env: self
                        .token_env
                        .clone()
                        .unwrap_or_else(|| default_token_env(false)),
                }
            }
            (None, Some(project)) => ForgeConfig::GitLab {
                api_base: self.gitlab_api.clone().unwrap_or_else(|| GITLAB_API.into()),
                project: project.clone(),
                token_env: self
                    .token_env
                    .clone()
                    .unwrap_or_else(|| default_token_env(true)),
            },
            (None, None) => ForgeConfig::None,
        }
    }

    /// The run's request, for this repository.
    pub fn request(&self, run: &RolloutRequest) -> RolloutRequest {
        let mut req = run.clone();
        req.repo = RepoLocation::parse(&self.repo);
        req.forge = self.forge_config();
        if self.base_branch.is_some() {
            req.base_branch = self.base_branch.clone();
        }
        if let Some(config) = &self.config {
            req.config_path = config.clone();
        }
        if !self.rules.is_empty() {
            req.rules = self.rules.clone();
        }
        for l in &self.labels {
            if !req.labels.contains(l) {
                req.labels.push(l.clone());
            }
        }
        req
    }
}

/// Builds the forge of a target (tests give forges with their own tokens).
pub type ForgeFactory<'a> = &'a dyn Fn(&ForgeConfig) -> Result<Option<Box<dyn Forge>>, ForgeError>;

/// What happened in one repository.
#[derive(Debug, Serialize)]
pub struct TargetOutcome {
    /// The repository, credentials hidden.
    pub repo: String,
    /// `github OWNER/REPO`, `gitlab GROUP/PROJECT` or `none`.
    pub forge: String,
    pub status: TargetStatus,
    pub outcome: Option<RolloutOutcome>,
    /// The error, when the rollout failed in this repository.
    pub error: Option<String>,
    #[serde(skip)]
    pub failure: Option<RolloutError>,
}

/// One word per repository for the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetStatus {
    DryRun,
    UpToDate,
    Created,
    Updated,
    Unchanged,
    /// A reviewer closed the pull request for this image: left closed.
    Declined,
    Failed,
}

impl TargetStatus {
    fn of(status: BranchStatus) -> Self {
        match status {
            BranchStatus::DryRun => Self::DryRun,
            BranchStatus::UpToDate => Self::UpToDate,
            BranchStatus::Created => Self::Created,
            BranchStatus::Updated => Self::Updated,
            BranchStatus::Unchanged => Self::Unchanged,
            BranchStatus::Declined => Self::Declined,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::DryRun => "dry run",
            Self::UpToDate => "up to date",
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Unchanged => "unchanged",
            Self::Declined => "closed by a reviewer, left closed",
            Self::Failed => "failed",
        }
    }
}

/// Roll out in every repository of `targets` (forges built from each target's config, tokens
/// read from the environment). A failure in one repository does not stop the others; each
/// outcome says what happened.
pub fn rollout_targets(
    run: &RolloutRequest,
    targets: &RolloutTargets,
    lookup: &dyn ImageLookup,
    reporter: &dyn Reporter,
) -> Vec<TargetOutcome> {
    rollout_targets_with(run, targets, &forge::forge_from_config, lookup, reporter)
}

/// [`rollout_targets`] with the caller's way of building forges.
pub fn rollout_targets_with(
    run: &RolloutRequest,
    targets: &RolloutTargets,
    make_forge: ForgeFactory<'_>,
    lookup: &dyn ImageLookup,
    reporter: &dyn Reporter,
) -> Vec<TargetOutcome> {
    targets
        .repositories
        .iter()
        .map(|target| {
            let req = target.request(run);
            let result = if req.dry_run {
                Ok(None)
            } else {
                make_forge(&req.forge).map_err(RolloutError::from)
            }
            .and_then(|f| rollout_with_forge(&req, f.as_deref(), lookup, reporter));
            let repo = req.repo.display();
            let forge = req.forge.describe();
            match result {
                Ok(outcome) => TargetOutcome {
                    repo,
                    forge,
                    status: TargetStatus::of(outcome.status),
                    outcome: Some(outcome),
                    error: None,
                    failure: None,
                },
                Err(e) => {
                    tracing::warn!(%repo, error = %e, "rollout failed in this repository");
                    TargetOutcome {
                        repo,
                        forge,
                        status: TargetStatus::Failed,
                        outcome: None,
                        error: Some(e.to_string()),
                        failure: Some(e),
                    }
                }
            }
        })
        .collect()
}

/// A plain-text table: repository, pull request URL, references changed, status.
pub fn summary_table(outcomes: &[TargetOutcome]) -> String {
    let header = ["REPOSITORY", "PULL REQUEST", "REFERENCES", "STATUS"].map(String::from);
    let mut rows = vec![header];
    for o in outcomes {
        let pr = o
            .outcome
            .as_ref()
            .and_then(|x| x.pull_request.as_ref())
            .map(|p| p.url.clone())
            .unwrap_or_else(|| "-".into());
        let refs = o
            .outcome
            .as_ref()
            .map(|x| x.edits.iter().filter(|e| e.changes()).count().to_string())
            .unwrap_or_else(|| "-".into());
        let status = match &o.error {
            Some(e) => format!("failed: {}", e.lines().next().unwrap_or("")),
            None => o.status.as_str().to_string(),
        };
        rows.push([o.repo.clone(), pr, refs, status]);
    }
    let widths: Vec<usize> = (0..3)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        for (c, w) in widths.iter().enumerate() {
            out.push_str(&r[c]);
            out.push_str(&" ".repeat(w - r[c].chars().count() + 2));
        }
        out.push_str(&r[3]);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_reject_mistakes() {
        let text = r#"
repositories:
  - repo: git@github.com:acme/platform.git
    github: acme/platform
  - repo: https://gitlab.example.com/infra/edge.git
    gitlab: infra/k8s/edge
    gitlab-api: https://gitlab.example.com/api/v4
    token-env: EDGE_TOKEN
    base-branch: production
    config: ops/rollout.yaml
    labels: [edge]
    rules:
      - kind: instance-group
        roles: [Node]
"#;
        let t = RolloutTargets::from_yaml(text, "targets.yaml").unwrap();
        assert_eq!(t.repositories.len(), 2);
        assert_eq!(
            t.repositories[1].forge_config(),
            ForgeConfig::GitLab {
                api_base: "https://gitlab.example.com/api/v4".into(),
                project: "infra/k8s/edge".into(),
                token_env: "EDGE_TOKEN".into()
            }
        );
        let mut run = RolloutRequest::new(
            "k8s-node",
            crate::ImageReference::Single("ami-1".into()),
            RepoLocation::Path("/nowhere".into()),
        );
        run.labels = vec!["automated".into()];
        let req = t.repositories[1].request(&run);
        assert_eq!(req.base_branch.as_deref(), Some("production"));
        assert_eq!(req.config_path, "ops/rollout.yaml");
        assert_eq!(req.labels, ["automated", "edge"]);
        assert_eq!(req.rules.len(), 1);
        assert_eq!(
            req.repo,
            RepoLocation::Url("https://gitlab.example.com/infra/edge.git".into())
        );

        for (bad, needle) in [
            ("repositories: []\n", "no repository"),
            (
                "repositories:\n  - repo: a\n    github: x/y\n    gitlab: x/y\n",
                "not both",
            ),
            (
                "repositories:\n  - repo: a\n    github: acme\n",
                "OWNER/REPO",
            ),
            (
                "repositories:\n  - repo: a\n    gitlab-api: https://h/api/v4\n",
                "without `gitlab`",
            ),
            (
                "repositories:\n  - repo: a\n  - repo: a\n",
                "same repository",
            ),
            (
                "repositories:\n  - repo: a\n    github: o/r\n    token-env: A-B\n",
                "token-env",
            ),
            (
                "repositories:\n  - repo: a\n    rules:\n      - kind: instance-group\n",
                "rules[0]",
            ),
            ("repositories:\n  - repo: a\n    forge: github\n", "forge"),
        ] {
            let err = RolloutTargets::from_yaml(bad, "t.yaml").unwrap_err();
            assert!(err.is_invalid_input(), "{err:?}");
            let text = err.to_string();
            assert!(text.starts_with("rollout targets t.yaml"), "{text}");
            assert!(text.contains(needle), "{bad}: {text}");
        }
    }
}
