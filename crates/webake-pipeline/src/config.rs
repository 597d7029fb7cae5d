//! The inputs of `webake pipeline render`: the pipeline config file, the service descriptor and
//! the few recipe fields the manifests name.
//!
//! The config and the service descriptor reject unknown fields; every error names the file and,
//! where it can, the field. The recipe is read leniently (only `name` and `family`): this crate
//! does not depend on the recipe model, and the bake validates the recipe itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::Error;
use crate::k8s::{ResourceRequirements, Toleration};

/// Default CronJob schedule: Mondays 04:00 (in `timeZone`).
pub const DEFAULT_SCHEDULE: &str = "0 4 * * 1";
pub const DEFAULT_TIME_ZONE: &str = "Etc/UTC";
pub const DEFAULT_REVISION: &str = "main";
pub const DEFAULT_FORGE_TOKEN_ENV: &str = "GITHUB_TOKEN";
pub const DEFAULT_GIT_IMAGE: &str = "docker.io/alpine/git:v2.47.2";
pub const DEFAULT_KANIKO_IMAGE: &str = "gcr.io/kaniko-project/executor:v1.23.2";
pub const DEFAULT_KUBECTL_IMAGE: &str = "docker.io/bitnami/kubectl:1.30";

/// The pipeline config file (YAML, camelCase keys). See docs/kubernetes.md for an example.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PipelineConfig {
    /// Namespace of every rendered object.
    pub namespace: String,
    /// The webake container image reference (repository:tag); the Tekton pipeline pushes here.
    pub image: String,
    /// ServiceAccount of the bake pods and of the Tekton task runs.
    pub service_account: String,
    /// CronJob schedule (cron syntax, five fields).
    #[serde(default = "default_schedule")]
    pub schedule: String,
    /// IANA time zone of the schedule.
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
    pub secrets: SecretNames,
    /// Requests and limits of the bake container (`cpu`, `memory`, `ephemeral-storage`).
    #[serde(default)]
    pub resources: ResourceRequirements,
    /// Git URL of the cluster repository that rollout pull requests target (one repository;
    /// `clusterRepos` lists several).
    #[serde(default)]
    pub cluster_repo: Option<String>,
    /// `OWNER/REPO` of the cluster repository on GitHub, where the rollout opens its pull
    /// request. Default: taken from `clusterRepo` when that is a github.com URL; otherwise the
    /// rollout pushes its branch and opens no pull request.
    #[serde(default)]
    pub github: Option<String>,
    /// Several cluster repositories (GitHub or GitLab): one run proposes in each, one pull
    /// request or merge request each. Instead of `clusterRepo` and `github`.
    #[serde(default)]
    pub cluster_repos: Vec<ClusterRepo>,
    /// Where `webake run` publishes the image.
    #[serde(default)]
    pub publish: PublishSettings,
    /// Git repository holding the recipes (and the Dockerfile the pipeline builds).
    pub source: GitSource,
    /// PersistentVolumeClaim holding the catalog (`data/`) and the layer cache (`cache/`).
    pub cache_pvc: String,
    /// `sizeLimit` of the emptyDir scratch volume the bake works in, e.g. `40Gi`.
    #[serde(default)]
    pub work_dir_size_limit: Option<String>,
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
    #[serde(default)]
    pub job: JobSettings,
    #[serde(default)]
    pub tool_images: ToolImages,
    /// A CronJob that retires old images of the recipe's family (`webake gc`); none without it.
    #[serde(default)]
    pub gc: Option<GcSettings>,
}

/// Default gc schedule: Sundays 06:00 (in `timeZone`), away from the Monday bake.
pub const DEFAULT_GC_SCHEDULE: &str = "0 6 * * 0";
/// Default of `gc.keep`.
pub const DEFAULT_GC_KEEP: u32 = 3;

/// The gc CronJob (`webake gc --family <the recipe's family>`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GcSettings {
    /// Cron schedule of the gc.
    #[serde(default = "default_gc_schedule")]
    pub schedule: String,
    /// Keep the newest N images of the family (at least 1).
    #[serde(default = "default_gc_keep")]
    pub keep: u32,
    /// Keep every image younger than this (`30d`, `12h`, `2w`).
    #[serde(default)]
    pub older_than: Option<String>,
    /// Retire AMIs too. Default: when `publish.to` is `aws`.
    #[serde(default)]
    pub aws: Option<bool>,
    /// Deregister an AMI only this long after gc deprecated it (needs AWS).
    #[serde(default)]
    pub grace: Option<String>,
    /// Only deprecate AMIs, remove nothing (needs AWS).
    #[serde(default)]
    pub deprecate_only: bool,
}

impl GcSettings {
    /// Whether the gc retires AMIs.
    pub fn aws(&self, config: &PipelineConfig) -> bool {
        self.aws.unwrap_or(config.publish.to == PublishTarget::Aws)
    }

    fn validate(&self, config: &PipelineConfig, check: &Checker<'_>) -> Result<(), Error> {
        check.schedule("gc.schedule", &self.schedule)?;
        check.at_least("gc.keep", i64::from(self.keep), 1)?;
        if let Some(age) = &self.older_than {
            check.duration("gc.olderThan", age)?;
        }
        if let Some(grace) = &self.grace {
            check.duration("gc.grace", grace)?;
        }
        if !self.aws(config) {
            for (field, set) in [
                ("gc.grace", self.grace.is_some()),
                ("gc.deprecateOnly", self.deprecate_only),
            ] {
                if set {
                    return Err(check.invalid(
                        field,
                        "applies to AMIs: needs `gc.aws` (or `publish.to: aws`)",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Where the bake publishes (`webake run --publish`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct PublishSettings {
    /// `aws` (an AMI through the EBS direct APIs) or `local` (the catalog on the PVC only).
    pub to: PublishTarget,
    /// Region to upload and register the AMI in. Default: `$AWS_REGION` in the pod (set by
    /// IRSA and EKS Pod Identity).
    pub region: Option<String>,
    /// Regions to copy the AMI to.
    pub copy_to: Vec<String>,
}

impl Default for PublishSettings {
    fn default() -> Self {
        Self {
            to: PublishTarget::Aws,
            region: None,
            copy_to: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishTarget {
    Aws,
    Local,
}

impl PublishTarget {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Aws => "aws",
            Self::Local => "local",
        }
    }
}

impl PipelineConfig {
    /// `OWNER/REPO` for the rollout's pull request: `github`, else derived from a github.com
    /// `clusterRepo`.
    pub fn github_repo(&self) -> Option<String> {
        self.github
            .clone()
            .or_else(|| self.cluster_repo.as_deref().and_then(github_slug_of))
    }
}

/// One cluster repository of `clusterRepos`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterRepo {
    /// Git URL of the repository.
    pub repo: String,
    /// `OWNER/REPO` on GitHub. Default: taken from a github.com `repo` (unless `gitlab` is set).
    #[serde(default)]
    pub github: Option<String>,
    /// GitHub API base (GitHub Enterprise: `https://HOST/api/v3`).
    #[serde(default)]
    pub github_api: Option<String>,
    /// `GROUP/PROJECT` on GitLab: the rollout opens a merge request there.
    #[serde(default)]
    pub gitlab: Option<String>,
    /// GitLab API base (self-managed: `https://HOST/api/v4`).
    #[serde(default)]
    pub gitlab_api: Option<String>,
    /// Secret (key `token`) holding this forge's token. Default: `secrets.forge`.
    #[serde(default)]
    pub token_secret: Option<String>,
    /// Environment variable the token is given in. Default: `secrets.forgeTokenEnv`.
    #[serde(default)]
    pub token_env: Option<String>,
    /// Branch to propose to. Default: the repository's rollout config, else its HEAD.
    #[serde(default)]
    pub base_branch: Option<String>,
    /// Rollout config (the rules) inside the repository. Default: `.webake/rollout.yaml`.
    #[serde(default)]
    pub config: Option<String>,
    /// Labels of this repository's pull request, in addition to the config's.
    #[serde(default)]
    pub labels: Vec<String>,
}

/// Where a cluster repository's pull request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterForge {
    /// Push the branch only.
    None,
    /// `OWNER/REPO` on GitHub.
    GitHub(String),
    /// `GROUP/PROJECT` on GitLab.
    GitLab(String),
}

impl ClusterRepo {
    /// The forge: `gitlab`, else `github`, else GitHub when `repo` is a github.com URL.
    pub fn forge(&self) -> ClusterForge {
        match (&self.gitlab, &self.github) {
            (Some(p), _) => ClusterForge::GitLab(p.clone()),
            (None, Some(s)) => ClusterForge::GitHub(s.clone()),
            (None, None) => match github_slug_of(&self.repo) {
                Some(slug) => ClusterForge::GitHub(slug),
                None => ClusterForge::None,
            },
        }
    }

    /// Whether a forge opens a pull request.
    pub fn has_forge(&self) -> bool {
        self.forge() != ClusterForge::None
    }

    pub fn token_env<'a>(&'a self, config: &'a PipelineConfig) -> &'a str {
        self.token_env
            .as_deref()
            .unwrap_or(&config.secrets.forge_token_env)
    }

    pub fn token_secret<'a>(&'a self, config: &'a PipelineConfig) -> &'a str {
        self.token_secret
            .as_deref()
            .unwrap_or(&config.secrets.forge)
    }
}

/// `OWNER/REPO` of a github.com git URL (`https://github.com/O/R(.git)`, `git@github.com:O/R`,
/// `ssh://git@github.com/O/R`).
pub fn github_slug_of(url: &str) -> Option<String> {
    let rest = [
        "https://github.com/",
        "http://github.com/",
        "ssh://git@github.com/",
        "git@github.com:",
    ]
    .iter()
    .find_map(|p| url.strip_prefix(p))?;
    let rest = rest.trim_end_matches('/');
    let rest = rest.strip_suffix(".git").unwrap_or(rest);
    let (owner, repo) = rest.split_once('/')?;
    (is_slug_part(owner) && is_slug_part(repo)).then(|| format!("{owner}/{repo}"))
}

fn is_slug_part(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Names of Secrets in `namespace`; values never appear in rendered output.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretNames {
    /// Secret with keys `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and optionally
    /// `AWS_SESSION_TOKEN`. Leave out when the service account gets AWS credentials from IRSA or
    /// EKS Pod Identity.
    #[serde(default)]
    pub aws: Option<String>,
    /// Secret with key `token`: the forge (GitHub/Gitea/GitLab) token that opens pull requests.
    pub forge: String,
    /// Environment variable the token is given in: the `token_env` of the rollout's forge.
    #[serde(default = "default_forge_token_env")]
    pub forge_token_env: String,
    /// Secret of type `kubernetes.io/dockerconfigjson` used to push images from the pipeline.
    #[serde(default)]
    pub registry: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GitSource {
    pub repo: String,
    /// Branch or tag (the Job clones with `--branch`).
    #[serde(default = "default_revision")]
    pub revision: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct JobSettings {
    /// Retries of a failed bake pod. A retry reuses the layer cache on the PVC.
    pub backoff_limit: i32,
    /// Wall-clock limit of one bake (Job) or one pipeline run (Tekton).
    pub active_deadline_seconds: i64,
    /// Finished Jobs are deleted after this long.
    pub ttl_seconds_after_finished: i32,
    /// A CronJob run missed by more than this is skipped.
    pub starting_deadline_seconds: i64,
    pub successful_jobs_history_limit: i32,
    pub failed_jobs_history_limit: i32,
    /// Seconds between SIGTERM and SIGKILL: webake cancels and rolls back cloud resources.
    pub termination_grace_period_seconds: i64,
}

impl Default for JobSettings {
    fn default() -> Self {
        Self {
            backoff_limit: 1,
            active_deadline_seconds: 3 * 3600,
            ttl_seconds_after_finished: 24 * 3600,
            starting_deadline_seconds: 3600,
            successful_jobs_history_limit: 3,
            failed_jobs_history_limit: 3,
            termination_grace_period_seconds: 300,
        }
    }
}

/// Images of the helper steps in the Tekton pipelines (pin them by digest in production).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct ToolImages {
    pub git: String,
    pub kaniko: String,
    pub kubectl: String,
}

impl Default for ToolImages {
    fn default() -> Self {
        Self {
            git: DEFAULT_GIT_IMAGE.to_owned(),
            kaniko: DEFAULT_KANIKO_IMAGE.to_owned(),
            kubectl: DEFAULT_KUBECTL_IMAGE.to_owned(),
        }
    }
}

fn default_forge_token_env() -> String {
    DEFAULT_FORGE_TOKEN_ENV.to_owned()
}

fn default_schedule() -> String {
    DEFAULT_SCHEDULE.to_owned()
}

fn default_time_zone() -> String {
    DEFAULT_TIME_ZONE.to_owned()
}

fn default_gc_schedule() -> String {
    DEFAULT_GC_SCHEDULE.to_owned()
}

fn default_gc_keep() -> u32 {
    DEFAULT_GC_KEEP
}

fn default_revision() -> String {
    DEFAULT_REVISION.to_owned()
}

impl PipelineConfig {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = read(path)?;
        Self::from_yaml(&text, path)
    }

    /// Parse and validate config text; `path` names the file in errors.
    pub fn from_yaml(text: &str, path: &Path) -> Result<Self, Error> {
        let config: Self = parse(text, path)?;
        config.validate(path)?;
        Ok(config)
    }

    /// Every field check, in the order of the file; the first problem is the error.
    fn validate(&self, path: &Path) -> Result<(), Error> {
        let check = Checker { path };
        check.dns_label("namespace", &self.namespace)?;
        check.image("image", &self.image)?;
        check.dns_subdomain("serviceAccount", &self.service_account)?;
        check.schedule("schedule", &self.schedule)?;
        check.non_blank("timeZone", &self.time_zone)?;
        self.secrets.validate(&check)?;
        validate_resources(&check, &self.resources)?;
        self.validate_cluster_repo_choice(&check)?;
        if let Some(slug) = &self.github {
            check.slug("github", slug, 2, 2, "OWNER/REPO")?;
        }
        self.publish.validate(&check)?;
        check.git_url("source.repo", &self.source.repo)?;
        check.git_ref("source.revision", &self.source.revision)?;
        check.dns_subdomain("cachePvc", &self.cache_pvc)?;
        if let Some(limit) = &self.work_dir_size_limit {
            check.quantity("workDirSizeLimit", limit)?;
        }
        validate_tolerations(&check, &self.tolerations)?;
        self.job.validate(&check)?;
        self.tool_images.validate(&check)?;
        match &self.gc {
            Some(gc) => gc.validate(self, &check),
            None => Ok(()),
        }
    }

    /// Exactly one of `clusterRepo` and `clusterRepos`; `github` goes with `clusterRepo`.
    fn validate_cluster_repo_choice(&self, check: &Checker<'_>) -> Result<(), Error> {
        match (&self.cluster_repo, self.cluster_repos.is_empty()) {
            (Some(repo), true) => check.git_url("clusterRepo", repo),
            (None, false) => {
                if self.github.is_some() {
                    return Err(check.invalid(
                        "github",
                        "set `github` on each entry of `clusterRepos` instead",
                    ));
                }
                self.validate_cluster_repos(check)
            }
            (Some(_), false) => Err(check.invalid(
                "clusterRepos",
                "give `clusterRepo` (one repository) or `clusterRepos` (several), not both",
            )),
            (None, true) => Err(check.invalid(
                "clusterRepo",
                "missing: the cluster repository the rollout proposes in (or `clusterRepos`)",
            )),
        }
    }
}

impl SecretNames {
    fn validate(&self, check: &Checker<'_>) -> Result<(), Error> {
        if let Some(aws) = &self.aws {
            check.dns_subdomain("secrets.aws", aws)?;
        }
        check.dns_subdomain("secrets.forge", &self.forge)?;
        check.env_name("secrets.forgeTokenEnv", &self.forge_token_env)?;
        if let Some(registry) = &self.registry {
            check.dns_subdomain("secrets.registry", registry)?;
        }
        Ok(())
    }
}

/// Only `cpu`, `memory` and `ephemeral-storage`, each a quantity.
fn validate_resources(check: &Checker<'_>, resources: &ResourceRequirements) -> Result<(), Error> {
    for (section, map) in [
        ("requests", &resources.requests),
        ("limits", &resources.limits),
    ] {
        for (name, quantity) in map {
            let field = format!("resources.{section}.{name}");
            if !["cpu", "memory", "ephemeral-storage"].contains(&name.as_str()) {
                return Err(check.invalid(&field, "expected cpu, memory or ephemeral-storage"));
            }
            check.quantity(&field, quantity)?;
        }
    }
    Ok(())
}

impl PublishSettings {
    fn validate(&self, check: &Checker<'_>) -> Result<(), Error> {
        if self.to == PublishTarget::Local && (self.region.is_some() || !self.copy_to.is_empty()) {
            return Err(check.invalid("publish.to", "region and copyTo apply to `to: aws` only"));
        }
        if let Some(region) = &self.region {
            check.region("publish.region", region)?;
        }
        for (i, region) in self.copy_to.iter().enumerate() {
            check.region(&format!("publish.copyTo[{i}]"), region)?;
        }
        Ok(())
    }
}

/// The operators and effects Kubernetes knows.
fn validate_tolerations(check: &Checker<'_>, tolerations: &[Toleration]) -> Result<(), Error> {
    for (i, t) in tolerations.iter().enumerate() {
        if let Some(op) = &t.operator
            && !["Exists", "Equal"].contains(&op.as_str())
        {
            return Err(check.invalid(
                &format!("tolerations[{i}].operator"),
                "expected Exists or Equal",
            ));
        }
        if let Some(effect) = &t.effect
            && !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect.as_str())
        {
            return Err(check.invalid(
                &format!("tolerations[{i}].effect"),
                "expected NoSchedule, PreferNoSchedule or NoExecute",
            ));
        }
    }
    Ok(())
}

impl JobSettings {
    fn validate(&self, check: &Checker<'_>) -> Result<(), Error> {
        for (field, value, min) in [
            ("job.backoffLimit", i64::from(self.backoff_limit), 0),
            ("job.activeDeadlineSeconds", self.active_deadline_seconds, 1),
            (
                "job.ttlSecondsAfterFinished",
                i64::from(self.ttl_seconds_after_finished),
                0,
            ),
            (
                "job.startingDeadlineSeconds",
                self.starting_deadline_seconds,
                1,
            ),
            (
                "job.successfulJobsHistoryLimit",
                i64::from(self.successful_jobs_history_limit),
                0,
            ),
            (
                "job.failedJobsHistoryLimit",
                i64::from(self.failed_jobs_history_limit),
                0,
            ),
            (
                "job.terminationGracePeriodSeconds",
                self.termination_grace_period_seconds,
                0,
            ),
        ] {
            check.at_least(field, value, min)?;
        }
        Ok(())
    }
}

impl ToolImages {
    fn validate(&self, check: &Checker<'_>) -> Result<(), Error> {
        check.image("toolImages.git", &self.git)?;
        check.image("toolImages.kaniko", &self.kaniko)?;
        check.image("toolImages.kubectl", &self.kubectl)
    }
}

impl PipelineConfig {
    fn validate_cluster_repos(&self, check: &Checker<'_>) -> Result<(), Error> {
        let mut token_secrets: BTreeMap<&str, (&str, usize)> = BTreeMap::new();
        for (i, r) in self.cluster_repos.iter().enumerate() {
            let field = |name: &str| format!("clusterRepos[{i}].{name}");
            check.git_url(&field("repo"), &r.repo)?;
            if let Some(j) = self.cluster_repos[..i]
                .iter()
                .position(|o| o.repo == r.repo)
            {
                return Err(check.invalid(
                    &field("repo"),
                    format!(
                        "`{}` is also clusterRepos[{j}]: both would push the same branch",
                        r.repo
                    ),
                ));
            }
            if r.github.is_some() && r.gitlab.is_some() {
                return Err(check.invalid(&field("gitlab"), "give `github` or `gitlab`, not both"));
            }
            if let Some(slug) = &r.github {
                check.slug(&field("github"), slug, 2, 2, "OWNER/REPO")?;
            }
            if let Some(slug) = &r.gitlab {
                check.slug(&field("gitlab"), slug, 2, 20, "GROUP/PROJECT")?;
            }
            if r.github_api.is_some() && !matches!(r.forge(), ClusterForge::GitHub(_)) {
                return Err(check.invalid(&field("githubApi"), "set `github` as well"));
            }
            if r.gitlab_api.is_some() && r.gitlab.is_none() {
                return Err(check.invalid(&field("gitlabApi"), "set `gitlab` as well"));
            }
            for (name, api) in [("githubApi", &r.github_api), ("gitlabApi", &r.gitlab_api)] {
                if let Some(api) = api {
                    let ok = (api.starts_with("https://") || api.starts_with("http://"))
                        && !api.chars().any(char::is_whitespace);
                    if !ok {
                        return Err(
                            check.invalid(&field(name), format!("`{api}` is not an http(s) URL"))
                        );
                    }
                }
            }
            if let Some(secret) = &r.token_secret {
                check.dns_subdomain(&field("tokenSecret"), secret)?;
            }
            if let Some(env) = &r.token_env {
                check.env_name(&field("tokenEnv"), env)?;
            }
            if let Some(branch) = &r.base_branch {
                check.git_ref(&field("baseBranch"), branch)?;
            }
            if let Some(path) = &r.config {
                check.relative_path(&field("config"), path)?;
            }
            for (j, l) in r.labels.iter().enumerate() {
                check.non_blank(&format!("clusterRepos[{i}].labels[{j}]"), l)?;
            }
            if r.has_forge() {
                let (env, secret) = (r.token_env(self), r.token_secret(self));
                match token_secrets.get(env) {
                    Some((other, j)) if *other != secret => {
                        return Err(check.invalid(
                            &field("tokenEnv"),
                            format!(
                                "`{env}` is given from Secret `{other}` for clusterRepos[{j}] and `{secret}` here: use another tokenEnv"
                            ),
                        ));
                    }
                    _ => {
                        token_secrets.insert(env, (secret, i));
                    }
                }
            }
        }
        Ok(())
    }
}

/// What a service is, as the onboarding service's `kind` said: it selects the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceKind {
    /// A container service: build and push the image, then roll the Deployment.
    Docker,
    /// An image baked by webake: build webake's image, bake, test, publish, open the rollout PR.
    Ami,
}

impl ServiceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Ami => "ami",
        }
    }
}

/// The service descriptor (`service.yaml`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceDescriptor {
    pub kind: ServiceKind,
    pub name: String,
    /// Git URL of the service's repository; defaults to the config's `source.repo`.
    #[serde(default)]
    pub repo: Option<String>,
    /// Image to build and push (docker kind; the ami kind builds the config's `image`).
    #[serde(default)]
    pub image: Option<String>,
    /// Dockerfile path inside the repository.
    #[serde(default = "default_dockerfile")]
    pub dockerfile: String,
    /// Build context directory inside the repository.
    #[serde(default = "default_context")]
    pub context: String,
    /// Deployment (and container) rolled by the docker kind; defaults to `name`.
    #[serde(default)]
    pub deployment: Option<String>,
}

fn default_dockerfile() -> String {
    "Dockerfile".to_owned()
}

fn default_context() -> String {
    ".".to_owned()
}

impl ServiceDescriptor {
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = read(path)?;
        Self::from_yaml(&text, path)
    }

    pub fn from_yaml(text: &str, path: &Path) -> Result<Self, Error> {
        let service: Self = parse(text, path)?;
        let check = Checker { path };
        check.dns_label("name", &service.name)?;
        if let Some(repo) = &service.repo {
            check.git_url("repo", repo)?;
        }
        match (service.kind, &service.image) {
            (ServiceKind::Docker, None) => {
                return Err(check.invalid(
                    "image",
                    "required for kind docker (the image to build and push)",
                ));
            }
            (ServiceKind::Ami, Some(_)) => {
                return Err(check.invalid(
                    "image",
                    "not used by kind ami (it builds the config's `image`)",
                ));
            }
            (_, Some(image)) => check.image("image", image)?,
            (ServiceKind::Ami, None) => {}
        }
        check.relative_path("dockerfile", &service.dockerfile)?;
        check.relative_path("context", &service.context)?;
        if let Some(d) = &service.deployment {
            check.dns_label("deployment", d)?;
        }
        Ok(service)
    }

    /// The descriptor used when none is given: the ami kind for the recipe's name.
    pub fn default_ami(name: &str) -> Self {
        Self {
            kind: ServiceKind::Ami,
            name: name.to_owned(),
            repo: None,
            image: None,
            dockerfile: default_dockerfile(),
            context: default_context(),
            deployment: None,
        }
    }
}

/// The recipe fields the manifests need, and where the recipe lives inside the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipeRef {
    /// Path of the recipe relative to the repository root, as `webake run` is given it.
    pub path_in_repo: String,
    pub name: String,
    pub family: String,
}

/// Only the fields read from a recipe (`image.name`, `image.family`); everything else is
/// ignored here and checked by the bake.
#[derive(Deserialize)]
struct RecipeHead {
    image: Option<RecipeImage>,
}

#[derive(Deserialize)]
struct RecipeImage {
    name: Option<String>,
    family: Option<String>,
}

impl RecipeRef {
    /// The recipe's path relative to the root of the git checkout that holds it (the pod
    /// clones that repository and runs `webake run <this path>` from its root).
    pub fn path_in_repo(recipe: &Path) -> Result<String, Error> {
        let invalid = |message: String| Error::Invalid {
            path: recipe.to_owned(),
            field: "recipe path".into(),
            message,
        };
        let absolute = std::fs::canonicalize(recipe).map_err(|source| Error::Read {
            path: recipe.to_owned(),
            source,
        })?;
        let root = absolute
            .ancestors()
            .skip(1)
            .find(|dir| dir.join(".git").exists())
            .ok_or_else(|| {
                invalid(
                    "not inside a git checkout: say where it lives in the recipes repository \
                     with --recipe-in-repo"
                        .into(),
                )
            })?;
        let relative = absolute.strip_prefix(root).unwrap_or(&absolute);
        let parts: Vec<String> = relative
            .components()
            .map(|c| match c {
                std::path::Component::Normal(part) => part.to_str().map(str::to_owned),
                _ => None,
            })
            .collect::<Option<_>>()
            .ok_or_else(|| invalid("not valid UTF-8".into()))?;
        Ok(parts.join("/"))
    }

    /// Read `image.name` (required) and `image.family` (defaults to the name) from the recipe.
    pub fn load(path: &Path, path_in_repo: &str) -> Result<Self, Error> {
        let text = read(path)?;
        Self::from_yaml(&text, path, path_in_repo)
    }

    pub fn from_yaml(text: &str, path: &Path, path_in_repo: &str) -> Result<Self, Error> {
        let head: RecipeHead = parse(text, path)?;
        let check = Checker { path };
        let image = head.image.unwrap_or(RecipeImage {
            name: None,
            family: None,
        });
        let name = image.name.ok_or_else(|| {
            check.invalid("image.name", "missing: the recipe must name its image")
        })?;
        check.label_value("image.name", &name)?;
        let family = image.family.unwrap_or_else(|| name.clone());
        check.label_value("image.family", &family)?;
        check.relative_path("recipe path in the repository", path_in_repo)?;
        Ok(Self {
            path_in_repo: path_in_repo.to_owned(),
            name,
            family,
        })
    }
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

/// Parse YAML, keeping the position and the field path of an error (`job.backoffLimit`).
fn parse<T: serde::de::DeserializeOwned>(text: &str, path: &Path) -> Result<T, Error> {
    let mut field = String::new();
    serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            field = e.path().to_string();
            e.into_inner()
        })
    })
    .map_err(|source| parse_error(path, &field, &source))
}

pub(crate) fn parse_error(path: &Path, field: &str, source: &serde_saphyr::Error) -> Error {
    let (line, column) = source.location().map_or((0, 0), |l| (l.line(), l.column()));
    // The bare message ends with " at line L, column C"; the position is kept separately.
    let bare = source.without_snippet().to_string();
    let message = match bare.rfind(" at line ") {
        Some(i) if line > 0 => bare[..i].to_owned(),
        _ => bare,
    };
    let field = (!field.is_empty() && field != ".").then(|| field.to_owned());
    Error::Parse {
        path: path.to_owned(),
        line,
        column,
        field,
        message,
    }
}

/// Field checks that name the file and the field.
struct Checker<'a> {
    path: &'a Path,
}

impl Checker<'_> {
    fn invalid(&self, field: &str, message: impl Into<String>) -> Error {
        Error::Invalid {
            path: PathBuf::from(self.path),
            field: field.to_owned(),
            message: message.into(),
        }
    }

    fn non_blank(&self, field: &str, value: &str) -> Result<(), Error> {
        if value.trim().is_empty() {
            return Err(self.invalid(field, "must not be empty"));
        }
        Ok(())
    }

    /// RFC 1123 label: namespaces, container and Deployment names.
    fn dns_label(&self, field: &str, value: &str) -> Result<(), Error> {
        if !is_dns_label(value) {
            return Err(self.invalid(
                field,
                format!(
                    "`{value}` is not a DNS label (lower-case letters, digits, '-'; at most 63)"
                ),
            ));
        }
        Ok(())
    }

    /// RFC 1123 subdomain: names of Secrets, ServiceAccounts, PVCs.
    fn dns_subdomain(&self, field: &str, value: &str) -> Result<(), Error> {
        let ok = !value.is_empty() && value.len() <= 253 && value.split('.').all(is_dns_label);
        if !ok {
            return Err(self.invalid(
                field,
                format!(
                    "`{value}` is not a DNS subdomain name (lower-case letters, digits, '-', '.')"
                ),
            ));
        }
        Ok(())
    }

    /// A Kubernetes label value (recipe name and family become labels).
    fn label_value(&self, field: &str, value: &str) -> Result<(), Error> {
        let bytes = value.as_bytes();
        let ok = !value.is_empty()
            && value.len() <= 63
            && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
            && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(b));
        if !ok {
            return Err(self.invalid(
                field,
                format!("`{value}` is not usable as a label (letters, digits, '-', '_', '.'; at most 63)"),
            ));
        }
        Ok(())
    }

    fn image(&self, field: &str, value: &str) -> Result<(), Error> {
        if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(self.invalid(field, format!("`{value}` is not an image reference")));
        }
        Ok(())
    }

    fn schedule(&self, field: &str, value: &str) -> Result<(), Error> {
        let macros = [
            "@yearly",
            "@annually",
            "@monthly",
            "@weekly",
            "@daily",
            "@midnight",
            "@hourly",
        ];
        if !(value.split_whitespace().count() == 5 || macros.contains(&value)) {
            return Err(self.invalid(
                field,
                format!("`{value}` is not a five-field cron schedule"),
            ));
        }
        Ok(())
    }

    /// A resource quantity: a decimal number with an optional suffix (`500m`, `4Gi`, `1.5`).
    fn quantity(&self, field: &str, value: &str) -> Result<(), Error> {
        let suffixes = [
            "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
        ];
        let digits_end = value
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(value.len());
        let (number, suffix) = value.split_at(digits_end);
        let ok = !number.is_empty()
            && number.matches('.').count() <= 1
            && number.chars().any(|c| c.is_ascii_digit())
            && suffixes.contains(&suffix);
        if !ok {
            return Err(self.invalid(
                field,
                format!("`{value}` is not a quantity (e.g. 500m, 2, 4Gi)"),
            ));
        }
        Ok(())
    }

    fn git_url(&self, field: &str, value: &str) -> Result<(), Error> {
        let schemes = ["https://", "http://", "ssh://", "git://", "file://"];
        let scp_like = value
            .split_once(':')
            .is_some_and(|(host, _)| host.contains('@'));
        let ok = (schemes.iter().any(|s| value.starts_with(s)) || scp_like)
            && !value.chars().any(|c| c.is_whitespace() || c.is_control());
        if !ok {
            return Err(self.invalid(
                field,
                format!("`{value}` is not a git URL (https://, ssh:// or user@host:path)"),
            ));
        }
        Ok(())
    }

    fn git_ref(&self, field: &str, value: &str) -> Result<(), Error> {
        let ok = !value.is_empty()
            && !value.starts_with('-')
            && !value
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || "~^:?*[\\".contains(c));
        if !ok {
            return Err(self.invalid(field, format!("`{value}` is not a branch or tag name")));
        }
        Ok(())
    }

    fn relative_path(&self, field: &str, value: &str) -> Result<(), Error> {
        let ok = !value.is_empty()
            && !value.starts_with('/')
            && !value.starts_with('-')
            && !value.split('/').any(|c| c == "..")
            && !value.chars().any(|c| c.is_control());
        if !ok {
            return Err(self.invalid(
                field,
                format!("`{value}` must be a relative path inside the repository"),
            ));
        }
        Ok(())
    }

    /// `A/B` (GitHub `OWNER/REPO`) or `A/B/C…` (GitLab `GROUP/SUBGROUP/PROJECT`).
    fn slug(
        &self,
        field: &str,
        value: &str,
        min: usize,
        max: usize,
        what: &str,
    ) -> Result<(), Error> {
        let parts: Vec<&str> = value.split('/').collect();
        if !(min..=max).contains(&parts.len()) || !parts.iter().all(|p| is_slug_part(p)) {
            return Err(self.invalid(field, format!("`{value}` is not {what}")));
        }
        Ok(())
    }

    fn env_name(&self, field: &str, value: &str) -> Result<(), Error> {
        let ok = value
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(self.invalid(
                field,
                format!("`{value}` is not an environment variable name"),
            ));
        }
        Ok(())
    }

    /// An age as `webake gc` takes it: a number and a unit, `s`, `m`, `h`, `d` or `w`.
    fn duration(&self, field: &str, value: &str) -> Result<(), Error> {
        let digits = value.trim_end_matches(['s', 'm', 'h', 'd', 'w']);
        let ok = !digits.is_empty()
            && value.len() == digits.len() + 1
            && digits.chars().all(|c| c.is_ascii_digit());
        if !ok {
            return Err(self.invalid(
                field,
                format!("`{value}` is not a duration (a number and s, m, h, d or w: 30d, 12h)"),
            ));
        }
        Ok(())
    }

    /// An AWS region name (`eu-west-1`, `us-gov-west-1`).
    fn region(&self, field: &str, value: &str) -> Result<(), Error> {
        let parts: Vec<&str> = value.split('-').collect();
        let ok = parts.len() >= 3
            && parts.iter().all(|p| {
                !p.is_empty()
                    && p.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            })
            && parts
                .last()
                .is_some_and(|p| p.chars().all(|c| c.is_ascii_digit()));
        if !ok {
            return Err(self.invalid(field, format!("`{value}` is not an AWS region name")));
        }
        Ok(())
    }

    fn at_least(&self, field: &str, value: i64, min: i64) -> Result<(), Error> {
        if value < min {
            return Err(self.invalid(field, format!("{value} is below the minimum {min}")));
        }
        Ok(())
    }
}

pub(crate) fn is_dns_label(value: &str) -> bool {
    let bytes = value.as_bytes();
    !value.is_empty()
        && value.len() <= 63
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

#[cfg(test)]
mod path_tests {
    use super::*;

    #[test]
    fn path_in_repo_is_relative_to_the_checkout_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".git")).unwrap();
        std::fs::create_dir_all(dir.path().join("recipes/base")).unwrap();
        let recipe = dir.path().join("recipes/base/debian.yaml");
        std::fs::write(&recipe, "image:\n  name: debian\n").unwrap();
        assert_eq!(
            RecipeRef::path_in_repo(&recipe).unwrap(),
            "recipes/base/debian.yaml"
        );
    }

    #[test]
    fn path_in_repo_outside_a_checkout_asks_for_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let recipe = dir.path().join("debian.yaml");
        std::fs::write(&recipe, "image:\n  name: debian\n").unwrap();
        // A temp dir may itself sit inside a checkout; only check the message when it does not.
        if let Err(err) = RecipeRef::path_in_repo(&recipe) {
            assert!(err.to_string().contains("--recipe-in-repo"), "{err}");
        }
    }
}
