//! webake-rollout: roll a new image out by pull request, with no surprises.
//!
//! [`rollout`] clones the cluster repository into a temp dir, finds the image references the
//! [`Rule`]s select (kops `InstanceGroup` `spec.image`, a YAML path, a regex), replaces exactly
//! those bytes, commits on `webake/<family>` (rebuilt from the base branch each time, so a newer
//! image supersedes an older one), pushes it, and creates or updates one pull request (GitHub)
//! or merge request (GitLab) through a [`Forge`]. With `dry_run` it returns the unified diff,
//! the title and the body, and touches nothing.
//!
//! Before anything is written it compares each current reference with the new image (the
//! caller's [`ImageLookup`] says what a reference points at now) and refuses a downgrade or a
//! reference the cluster could not resolve. A pull request a reviewer closed stays closed for
//! that image. [`rollout_targets`] does all of it in several cluster repositories in one run.
//!
//! The library never prints: it returns a [`RolloutOutcome`], reports steps through a
//! [`Reporter`], and logs with `tracing`.

pub mod arch;
mod error;
pub mod forge;
mod git;
mod plan;
mod reference;
mod references;
pub mod review;
mod rules;
mod targets;
mod yaml;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use arch::{architecture_of_machine_type, resolve_architecture};
pub use error::RolloutError;
pub use forge::{
    ClosedPullRequest, Forge, ForgeConfig, ForgeError, GITHUB_API, GITLAB_API, GitHub, GitLab,
    PullRequest, PullRequestAction, PullRequestSpec,
};
pub use git::{GitError, GitIdentity};
pub use plan::{DEFAULT_KOPS_FILES, Edit};
pub use reference::{
    ImageReference, LOCAL_REFERENCE_PREFIX, ReferenceKind, is_local_reference, local_reference,
    region_of_zone,
};
pub use references::{FoundReference, RepositoryReferences, find_references};
pub use review::{
    BeforeAfter, CurrentImage, ImageFacts, ImageLookup, NoLookup, PackageChange, PackageChangeKind,
    PackageNote, ReferenceInfo,
};
pub use rules::{
    DEFAULT_CONFIG_PATH, InstanceGroupRule, RegexRule, RolloutConfig, Rule, YamlPathRule,
};
pub use targets::{
    ForgeFactory, RolloutTargets, Target, TargetOutcome, TargetStatus, default_token_env,
    rollout_targets, rollout_targets_with, summary_table,
};

use git::Git;
use plan::RepoFile;

/// The cluster repository: a local path (working tree or bare) or a URL git can clone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RepoLocation {
    Path(PathBuf),
    Url(String),
}

impl RepoLocation {
    /// `https://…`, `ssh://…`, `file://…` and scp-like `user@host:path` are URLs; the rest paths.
    pub fn parse(text: &str) -> Self {
        let scp_like = text
            .split_once(':')
            .is_some_and(|(host, _)| host.contains('@') && !host.contains('/'));
        if text.contains("://") || scp_like {
            Self::Url(text.to_string())
        } else {
            Self::Path(PathBuf::from(text))
        }
    }

    /// For messages: credentials in URLs are hidden.
    pub fn display(&self) -> String {
        match self {
            Self::Path(p) => p.display().to_string(),
            Self::Url(u) => git::redact_url(u),
        }
    }
}

/// Everything a rollout needs; build with [`RolloutRequest::new`] and adjust fields.
#[derive(Debug, Clone)]
pub struct RolloutRequest {
    /// Image family: names the branch `webake/<family>` and selects family-specific rules.
    pub family: String,
    /// Image name and version for the title and commit message (`debian-12-k8s`, `2026.11.25`).
    pub image_name: String,
    pub version: String,
    pub reference: ImageReference,
    pub repo: RepoLocation,
    /// Branch to start from and target; default: the config's, else the repository's HEAD.
    pub base_branch: Option<String>,
    /// Rules; empty: read them from `config_path` in the repository.
    pub rules: Vec<Rule>,
    /// Rollout config inside the repository.
    pub config_path: String,
    pub dry_run: bool,
    pub forge: ForgeConfig,
    /// Pull request title; default `Roll out <image_name> <version>`.
    pub title: Option<String>,
    /// Markdown at the top of the pull request body; the new image, the before/after of each
    /// changed reference and the table of references follow it.
    pub pr_body_markdown: String,
    pub labels: Vec<String>,
    pub author: GitIdentity,
    pub committer: GitIdentity,
    /// What is known about the image rolled out (for the before/after and the downgrade
    /// guard); `None` for a bare reference (`--to`, `--ami`).
    pub image: Option<ImageFacts>,
    /// Roll out even when a reference points at a newer image of the same family.
    pub allow_downgrade: bool,
    /// Propose again although a reviewer closed the pull request for this image.
    pub reopen: bool,
}

impl RolloutRequest {
    pub fn new(family: impl Into<String>, reference: ImageReference, repo: RepoLocation) -> Self {
        let family = family.into();
        Self {
            image_name: family.clone(),
            family,
            version: String::new(),
            reference,
            repo,
            base_branch: None,
            rules: Vec::new(),
            config_path: DEFAULT_CONFIG_PATH.to_string(),
            dry_run: false,
            forge: ForgeConfig::None,
            title: None,
            pr_body_markdown: String::new(),
            labels: Vec::new(),
            author: GitIdentity::default(),
            committer: GitIdentity::default(),
            image: None,
            allow_downgrade: false,
            reopen: false,
        }
    }

    /// What identifies the image in the pull request (and in a closed one): the catalog id,
    /// else the reference.
    pub fn image_key(&self) -> String {
        match &self.image {
            Some(facts) if !facts.id.is_empty() => facts.id.clone(),
            _ => self.reference.describe(),
        }
    }

    /// The hidden line of the pull request body that names the image.
    fn marker(&self) -> String {
        let key = self.image_key().replace("--", "-");
        format!("<!-- webake-rollout family={} image={key} -->", self.family)
    }

    fn display_name(&self) -> String {
        if self.version.is_empty() {
            self.image_name.clone()
        } else {
            format!("{} {}", self.image_name, self.version)
        }
    }
}

/// What happened to the rollout branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BranchStatus {
    /// `--dry-run`: nothing committed or pushed.
    DryRun,
    /// The base branch already references this image: nothing to propose.
    UpToDate,
    Created,
    /// Force-pushed over an older rollout of the family.
    Updated,
    /// The branch already holds exactly this change: nothing pushed.
    Unchanged,
    /// A reviewer closed the pull request for this very image: nothing pushed, it stays closed
    /// (`reopen` proposes it again; a newer image opens a new one).
    Declined,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PullRequestOutcome {
    pub number: u64,
    pub url: String,
    pub action: PullRequestAction,
}

#[derive(Debug, Clone, Serialize)]
pub struct RolloutOutcome {
    pub branch: String,
    pub base_branch: String,
    pub base_commit: String,
    pub status: BranchStatus,
    /// The commit on the rollout branch (none for dry runs and up-to-date repositories).
    pub commit: Option<String>,
    /// Every matched reference, changed or not.
    pub edits: Vec<Edit>,
    pub changed_files: Vec<String>,
    /// Unified diff (`--- a/path` / `+++ b/path`) of the change.
    pub diff: String,
    /// Pull request title and body (Markdown), as proposed (also for dry runs).
    pub title: String,
    pub body: String,
    /// Each current image against the new one.
    pub before_after: Vec<BeforeAfter>,
    pub pull_request: Option<PullRequestOutcome>,
}

/// Progress of a rollout, for the CLI to show.
#[derive(Debug, Clone, Copy)]
pub enum Step<'a> {
    Cloning { location: &'a str },
    Planning { rules: usize },
    Committing { branch: &'a str },
    Pushing { branch: &'a str },
    PullRequest { branch: &'a str },
}

pub trait Reporter {
    fn step(&self, _step: Step<'_>) {}
}

/// A reporter that ignores everything.
pub struct NoReporter;
impl Reporter for NoReporter {}

/// Files larger than this are not searched (generated blobs, vendored archives).
const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;

/// Roll out: plan the edits, check them, then (unless dry run) commit, push and propose them.
///
/// The forge comes from `req.forge` (its token is read from the environment first of all);
/// `lookup` says which image each current reference points at.
pub fn rollout(
    req: &RolloutRequest,
    lookup: &dyn ImageLookup,
    reporter: &dyn Reporter,
) -> Result<RolloutOutcome, RolloutError> {
    let forge = if req.dry_run {
        None
    } else {
        forge::forge_from_config(&req.forge)?
    };
    rollout_with_forge(req, forge.as_deref(), lookup, reporter)
}

/// [`rollout`] with a given forge (`None`: local mode); `req.forge` is ignored.
pub fn rollout_with_forge(
    req: &RolloutRequest,
    forge: Option<&dyn Forge>,
    lookup: &dyn ImageLookup,
    reporter: &dyn Reporter,
) -> Result<RolloutOutcome, RolloutError> {
    let branch = check_request(req)?;
    let repo = ClonedRepo::open(&req.repo, req.base_branch.as_deref(), reporter)?;
    let config = read_config(&repo.work, &req.config_path)?;
    let rules = select_rules(req, &config)?;
    let base = repo.checkout_base(req.base_branch.clone().or(config.base_branch.clone()))?;

    reporter.step(Step::Planning { rules: rules.len() });
    let planned = Planning {
        rules,
        architectures: &config.architectures,
        branch,
        base,
    };
    let (mut outcome, new_texts) = plan_rollout(req, &repo, planned, lookup)?;
    if req.dry_run {
        return Ok(outcome);
    }
    if outcome.changed_files.is_empty() {
        outcome.status = BranchStatus::UpToDate;
        return Ok(outcome);
    }

    // Ask the forge first: an auth failure must stop us before anything is pushed.
    let existing_pr = match forge {
        Some(f) => f.find_open_pull_request(&outcome.branch)?,
        None => None,
    };
    // A reviewer who closed the pull request for this image has decided: keep it closed.
    if let (Some(f), None, false) = (forge, &existing_pr, req.reopen)
        && let Some(declined) = declined_pull_request(req, f, &outcome.branch)?
    {
        outcome.status = BranchStatus::Declined;
        outcome.pull_request = Some(declined);
        return Ok(outcome);
    }

    let commit = commit_change(req, &repo, &outcome, &new_texts, reporter)?;
    let (status, commit) = push_branch(&repo.git, &outcome, commit, reporter)?;
    outcome.status = status;
    outcome.commit = Some(commit);
    if let Some(forge) = forge {
        let pr = open_pull_request(req, forge, &config, existing_pr, &outcome, reporter)?;
        outcome.pull_request = Some(pr);
    }
    Ok(outcome)
}

/// Check the request's own fields; returns the rollout branch of the family.
fn check_request(req: &RolloutRequest) -> Result<String, RolloutError> {
    let branch = git::branch_for_family(&req.family).map_err(RolloutError::InvalidRequest)?;
    req.reference
        .validate()
        .map_err(RolloutError::InvalidRequest)?;
    if let Some(label) = req.labels.iter().find(|l| l.trim().is_empty()) {
        return Err(RolloutError::InvalidRequest(format!(
            "empty label {label:?}"
        )));
    }
    Ok(branch)
}

/// The cluster repository, cloned into a temporary directory (removed on drop).
struct ClonedRepo {
    /// The working tree.
    work: PathBuf,
    git: Git,
    /// The repository as messages name it (credentials hidden).
    location: String,
    _tmp: tempfile::TempDir,
}

/// The branch the rollout branch starts from, and the commit it was at.
struct Base {
    branch: String,
    commit: String,
}

impl ClonedRepo {
    /// Check the source (a local repository must be clean) and clone it, `base_branch` only
    /// when given.
    fn open(
        repo: &RepoLocation,
        base_branch: Option<&str>,
        reporter: &dyn Reporter,
    ) -> Result<Self, RolloutError> {
        let url = check_source(repo)?;
        let location = repo.display();
        reporter.step(Step::Cloning {
            location: &location,
        });
        let tmp = tempfile::Builder::new()
            .prefix("webake-rollout-")
            .tempdir()
            .map_err(|e| RolloutError::io("create temp dir", std::env::temp_dir(), e))?;
        let work = tmp.path().join("repo");
        clone(&url, &work, base_branch, &location)?;
        Ok(Self {
            git: Git::new(&work),
            work,
            location,
            _tmp: tmp,
        })
    }

    /// Check out the base (`branch`, else the clone's HEAD) detached, fetching it first when
    /// the single-branch clone did not.
    fn checkout_base(&self, branch: Option<String>) -> Result<Base, RolloutError> {
        let branch = match branch {
            Some(b) => b,
            None => self
                .git
                .run(&git::current_branch_args())?
                .trim()
                .to_string(),
        };
        let base_ref = format!("refs/remotes/origin/{branch}^{{commit}}");
        let mut commit = self.git.run_optional(&git::rev_parse_args(&base_ref))?;
        // A base branch from the config that the single-branch clone did not fetch.
        if commit.is_none() && self.git.run(&git::fetch_base_args(&branch)).is_ok() {
            commit = self.git.run_optional(&git::rev_parse_args(&base_ref))?;
        }
        let commit = commit.ok_or_else(|| RolloutError::BaseBranchMissing {
            location: self.location.clone(),
            branch: branch.clone(),
        })?;
        self.git.run(&git::checkout_detached_args(&commit))?;
        Ok(Base { branch, commit })
    }
}

/// The request's rules, else the config's; none at all is an error.
fn select_rules<'a>(
    req: &'a RolloutRequest,
    config: &'a RolloutConfig,
) -> Result<&'a [Rule], RolloutError> {
    let rules: &[Rule] = if req.rules.is_empty() {
        &config.rules
    } else {
        &req.rules
    };
    if rules.is_empty() {
        return Err(RolloutError::NoRules {
            config: req.config_path.clone(),
        });
    }
    Ok(rules)
}

/// What a rollout is planned with: the rules, the config's architecture overrides, the rollout
/// branch and its base.
struct Planning<'a> {
    rules: &'a [Rule],
    architectures: &'a BTreeMap<String, String>,
    branch: String,
    base: Base,
}

/// Find the references the rules select, refuse what must not be rolled out (a reference the
/// cluster could not resolve, a downgrade), and render the change: the outcome of a dry run,
/// and the new text of each file that changes.
fn plan_rollout(
    req: &RolloutRequest,
    repo: &ClonedRepo,
    planning: Planning<'_>,
    lookup: &dyn ImageLookup,
) -> Result<(RolloutOutcome, BTreeMap<String, String>), RolloutError> {
    let Planning {
        rules,
        architectures,
        branch,
        base,
    } = planning;
    let files = read_repo_files(&repo.work)?;
    let edits = plan::plan(&files, rules, &req.reference, &req.family, architectures)?;
    if edits.is_empty() {
        return Err(RolloutError::NoReferenceFound {
            location: repo.location.clone(),
            family: req.family.clone(),
            rules: rules
                .iter()
                .map(Rule::describe)
                .collect::<Vec<_>>()
                .join("; "),
        });
    }
    review::check_resolvable(&edits)?;
    let before_after = review::before_after(&edits, req.image.as_ref(), lookup)?;
    if !req.allow_downgrade {
        review::check_not_downgrade(&before_after, req.image.as_ref())?;
    }
    let (new_texts, diff) = render_changes(&files, &edits)?;
    let outcome = RolloutOutcome {
        branch,
        base_branch: base.branch,
        base_commit: base.commit,
        status: BranchStatus::DryRun,
        commit: None,
        changed_files: new_texts.keys().cloned().collect(),
        diff,
        title: req
            .title
            .clone()
            .unwrap_or_else(|| format!("Roll out {}", req.display_name())),
        body: pr_body(req, &edits, &before_after),
        edits,
        before_after,
        pull_request: None,
    };
    Ok((outcome, new_texts))
}

/// The pull request a reviewer closed (unmerged) for this very image, if any.
fn declined_pull_request(
    req: &RolloutRequest,
    forge: &dyn Forge,
    branch: &str,
) -> Result<Option<PullRequestOutcome>, RolloutError> {
    let marker = req.marker();
    let declined = forge
        .find_closed_pull_requests(branch)?
        .into_iter()
        .find(|pr| !pr.merged && pr.body.contains(&marker));
    Ok(declined.map(|pr| {
        tracing::info!(%branch, number = pr.number, "the pull request for this image was closed; not proposing it again");
        PullRequestOutcome {
            number: pr.number,
            url: pr.url,
            action: PullRequestAction::LeftClosed,
        }
    }))
}

/// Commit the change on the rollout branch, rebuilt from the base; returns the commit.
fn commit_change(
    req: &RolloutRequest,
    repo: &ClonedRepo,
    outcome: &RolloutOutcome,
    new_texts: &BTreeMap<String, String>,
    reporter: &dyn Reporter,
) -> Result<String, RolloutError> {
    let git = &repo.git;
    reporter.step(Step::Committing {
        branch: &outcome.branch,
    });
    git.run(&git::checkout_new_branch_args(&outcome.branch))?;
    for (path, text) in new_texts {
        let full = repo.work.join(path);
        std::fs::write(&full, text).map_err(|e| RolloutError::io("write", full, e))?;
    }
    git.run(&git::add_args(&outcome.changed_files))?;
    let message = commit_message(req, &outcome.edits);
    git.clone()
        .with_env(git::identity_env(&req.author, &req.committer))
        .run(&git::commit_args(&message))?;
    Ok(git.run(&git::rev_parse_args("HEAD"))?.trim().to_string())
}

/// Push `commit`, superseding an older rollout of the family, unless the remote branch already
/// holds this change. Returns what happened to the branch and the commit it holds.
fn push_branch(
    git: &Git,
    outcome: &RolloutOutcome,
    commit: String,
    reporter: &dyn Reporter,
) -> Result<(BranchStatus, String), RolloutError> {
    let branch = outcome.branch.as_str();
    let remote = git::parse_ls_remote(&git.run(&git::ls_remote_branch_args(branch))?, branch);
    match remote {
        Some(old) if same_change(git, branch, &commit, &outcome.base_commit)? => {
            tracing::info!(%branch, commit = %old, "branch already holds this change");
            Ok((BranchStatus::Unchanged, old))
        }
        _ => {
            reporter.step(Step::Pushing { branch });
            git.run(&git::push_args(branch, remote.as_deref()))?;
            let status = if remote.is_some() {
                BranchStatus::Updated
            } else {
                BranchStatus::Created
            };
            Ok((status, commit))
        }
    }
}

/// Create the pull request, or update the open one, with the config's and the request's labels.
fn open_pull_request(
    req: &RolloutRequest,
    forge: &dyn Forge,
    config: &RolloutConfig,
    existing: Option<PullRequest>,
    outcome: &RolloutOutcome,
    reporter: &dyn Reporter,
) -> Result<PullRequestOutcome, RolloutError> {
    reporter.step(Step::PullRequest {
        branch: &outcome.branch,
    });
    let mut labels = config.labels.clone();
    for l in &req.labels {
        if !labels.contains(l) {
            labels.push(l.clone());
        }
    }
    let spec = PullRequestSpec {
        head_branch: outcome.branch.clone(),
        base_branch: outcome.base_branch.clone(),
        title: outcome.title.clone(),
        body: outcome.body.clone(),
        labels,
    };
    let (pr, action) = forge::ensure_pull_request(forge, existing, &spec)?;
    Ok(PullRequestOutcome {
        number: pr.number,
        url: pr.url,
        action,
    })
}

/// Validate a local repository (exists, clean) and return what to clone.
fn check_source(repo: &RepoLocation) -> Result<String, RolloutError> {
    let path = match repo {
        RepoLocation::Url(url) => return Ok(url.clone()),
        RepoLocation::Path(p) => p,
    };
    let not_found = || RolloutError::RepoNotFound { path: path.clone() };
    let abs = std::fs::canonicalize(path).map_err(|_| not_found())?;
    let git = Git::new(&abs);
    let bare = git.run(&git::is_bare_args()).map_err(|_| not_found())?;
    if bare.trim() == "false" {
        let status = git.run(&git::status_args())?;
        if !status.trim().is_empty() {
            return Err(RolloutError::RepoDirty {
                path: path.clone(),
                status: status.trim_end().to_string(),
            });
        }
    }
    Ok(abs.to_string_lossy().into_owned())
}

fn clone(url: &str, dest: &Path, base: Option<&str>, location: &str) -> Result<(), RolloutError> {
    let parent = dest.parent().unwrap_or(dest);
    match Git::new(parent).run(&git::clone_args(url, dest, base)) {
        Ok(_) => Ok(()),
        Err(e) => match base {
            Some(b) if e.stderr().contains("not found in upstream") => {
                Err(RolloutError::BaseBranchMissing {
                    location: location.to_string(),
                    branch: b.to_string(),
                })
            }
            _ => Err(RolloutError::RepoUnreachable {
                location: location.to_string(),
                stderr: e.stderr().to_string(),
            }),
        },
    }
}

fn read_config(work: &Path, config_path: &str) -> Result<RolloutConfig, RolloutError> {
    let path = work.join(config_path);
    match std::fs::read_to_string(&path) {
        Ok(text) => RolloutConfig::from_yaml(&text).map_err(|message| RolloutError::Config {
            file: config_path.to_string(),
            message,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RolloutConfig::default()),
        Err(e) => Err(RolloutError::io("read", path, e)),
    }
}

/// Every UTF-8 text file of the working tree (not `.git`, no symlinks), `/`-separated, sorted.
fn read_repo_files(root: &Path) -> Result<Vec<RepoFile>, RolloutError> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries =
            std::fs::read_dir(&dir).map_err(|e| RolloutError::io("read directory", &dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| RolloutError::io("read directory", &dir, e))?;
            let path = entry.path();
            let meta = entry
                .file_type()
                .map_err(|e| RolloutError::io("stat", &path, e))?;
            if meta.is_dir() {
                if entry.file_name() != ".git" {
                    dirs.push(path);
                }
                continue;
            }
            if !meta.is_file() {
                continue;
            }
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            if size > MAX_FILE_BYTES {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(|e| RolloutError::io("read", &path, e))?;
            let Ok(text) = String::from_utf8(bytes) else {
                continue;
            };
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let rel: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            out.push(RepoFile {
                path: rel.join("/"),
                text,
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// New contents of the files that change, and the unified diff of the whole change.
fn render_changes(
    files: &[RepoFile],
    edits: &[Edit],
) -> Result<(BTreeMap<String, String>, String), RolloutError> {
    let mut by_file: BTreeMap<&str, Vec<&Edit>> = BTreeMap::new();
    for e in edits.iter().filter(|e| e.changes()) {
        by_file.entry(e.file.as_str()).or_default().push(e);
    }
    let mut texts = BTreeMap::new();
    let mut diff = String::new();
    for (path, file_edits) in by_file {
        let Some(file) = files.iter().find(|f| f.path == path) else {
            continue;
        };
        let new = plan::apply(file, &file_edits)?;
        diff.push_str(&unified_diff(path, &file.text, &new));
        texts.insert(path.to_string(), new);
    }
    Ok((texts, diff))
}

/// `diff -u` form with `a/` and `b/` prefixes, three lines of context.
pub fn unified_diff(path: &str, old: &str, new: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(&format!("a/{path}"), &format!("b/{path}"))
        .to_string()
}

/// Whether the remote branch already holds this change on this base (same tree, same parent).
fn same_change(git: &Git, branch: &str, commit: &str, base: &str) -> Result<bool, RolloutError> {
    git.run(&git::fetch_branch_args(branch))?;
    let tree = |rev: &str| git.run_optional(&git::rev_parse_args(&format!("{rev}^{{tree}}")));
    let parent = git.run_optional(&git::rev_parse_args("refs/webake/previous^1"))?;
    Ok(tree("refs/webake/previous")? == tree(commit)? && parent.as_deref() == Some(base))
}

fn commit_message(req: &RolloutRequest, edits: &[Edit]) -> String {
    let mut msg = format!("Roll out {}\n\n", req.display_name());
    msg.push_str(&format!(
        "Image family: {}\nReference: {}\n\n",
        req.family,
        req.reference.describe()
    ));
    for e in edits.iter().filter(|e| e.changes()) {
        let arch = e
            .architecture
            .as_deref()
            .map(|a| format!(" ({a})"))
            .unwrap_or_default();
        msg.push_str(&format!(
            "- {}:{} {}: {} -> {}{arch}\n",
            e.file, e.line, e.what, e.old, e.new
        ));
    }
    msg
}

/// The table of changed references; with an `architecture` column when the image has a build
/// per architecture.
fn references_table(edits: &[Edit]) -> String {
    let changed: Vec<&Edit> = edits.iter().filter(|e| e.changes()).collect();
    let per_arch = changed.iter().any(|e| e.architecture.is_some());
    let mut table = if per_arch {
        "### Image references\n\n| file | what | architecture | from | to |\n|---|---|---|---|---|\n"
    } else {
        "### Image references\n\n| file | what | from | to |\n|---|---|---|---|\n"
    }
    .to_string();
    for e in changed {
        let arch = match (per_arch, &e.architecture) {
            (false, _) => String::new(),
            (true, Some(a)) => format!(" {a} |"),
            (true, None) => " – |".into(),
        };
        table.push_str(&format!(
            "| `{}:{}` | {} |{arch} `{}` | `{}` |\n",
            e.file,
            e.line,
            e.what.replace('|', "\\|"),
            e.old,
            e.new
        ));
    }
    table
}

/// The pull request body: the caller's Markdown, the new image, each current image against it,
/// the table of references, and the hidden marker naming the image.
fn pr_body(req: &RolloutRequest, edits: &[Edit], before_after: &[BeforeAfter]) -> String {
    let mut body = req.pr_body_markdown.trim_end().to_string();
    if !body.is_empty() {
        body.push_str("\n\n");
    }
    if let Some(new) = &req.image {
        body.push_str(&review::new_image_markdown(new));
        body.push('\n');
    }
    if !before_after.is_empty() {
        body.push_str(&review::before_after_markdown(
            before_after,
            req.image.as_ref(),
        ));
        body.push('\n');
    }
    body.push_str(&references_table(edits));
    body.push_str(&format!(
        "\n<sub>Proposed by webake for image family `{}`. Merge to roll the clusters, or close to skip \
         this image (webake will not propose it again); a newer image updates this pull request or \
         opens a new one.</sub>\n{}\n",
        req.family,
        req.marker()
    ));
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_locations() {
        assert_eq!(
            RepoLocation::parse("/srv/git/k8s.git"),
            RepoLocation::Path("/srv/git/k8s.git".into())
        );
        assert_eq!(
            RepoLocation::parse("./k8s"),
            RepoLocation::Path("./k8s".into())
        );
        assert_eq!(
            RepoLocation::parse("git@github.com:acme/k8s.git"),
            RepoLocation::Url("git@github.com:acme/k8s.git".into())
        );
        assert_eq!(
            RepoLocation::parse("https://h/r.git"),
            RepoLocation::Url("https://h/r.git".into())
        );
        assert_eq!(
            RepoLocation::parse("https://u:tok@h/r.git").display(),
            "https://***@h/r.git"
        );
    }

    fn edit(line: usize, architecture: Option<&str>, new: &str) -> Edit {
        Edit {
            file: "clusters/prod/ig.yaml".into(),
            line,
            what: "InstanceGroup nodes (cluster prod) spec.image".into(),
            rule: 0,
            region: Some("eu-west-1".into()),
            architecture: architecture.map(str::to_string),
            old: "ami-0123".into(),
            new: new.into(),
            bytes: 0..0,
            replacement: String::new(),
            yaml_scalar: true,
        }
    }

    #[test]
    fn the_references_table_names_the_architecture_of_each_build() {
        let per_arch = [
            edit(9, Some("x86_64"), "ami-0aaa"),
            edit(47, Some("arm64"), "ami-0bbb"),
            edit(60, Some("arm64"), "ami-0123"),
        ];
        assert_eq!(
            references_table(&per_arch),
            "### Image references\n\n| file | what | architecture | from | to |\n|---|---|---|---|---|\n\
             | `clusters/prod/ig.yaml:9` | InstanceGroup nodes (cluster prod) spec.image | x86_64 | `ami-0123` | `ami-0aaa` |\n\
             | `clusters/prod/ig.yaml:47` | InstanceGroup nodes (cluster prod) spec.image | arm64 | `ami-0123` | `ami-0bbb` |\n"
        );
        // Without per-architecture builds the table is as it always was.
        assert_eq!(
            references_table(&[edit(9, None, "ami-0aaa")]),
            "### Image references\n\n| file | what | from | to |\n|---|---|---|---|\n\
             | `clusters/prod/ig.yaml:9` | InstanceGroup nodes (cluster prod) spec.image | `ami-0123` | `ami-0aaa` |\n"
        );
        let mut req = RolloutRequest::new(
            "k8s-node",
            ImageReference::Single("ami-0aaa".into()),
            RepoLocation::parse("/r"),
        );
        req.version = "2026.12.02".into();
        let msg = commit_message(&req, &per_arch);
        assert!(
            msg.contains(
                "- clusters/prod/ig.yaml:47 InstanceGroup nodes (cluster prod) spec.image: \
                 ami-0123 -> ami-0bbb (arm64)\n"
            ),
            "{msg}"
        );
    }

    #[test]
    fn diff_has_git_headers() {
        let d = unified_diff("a.yaml", "x: 1\ny: 2\n", "x: 1\ny: 3\n");
        assert!(
            d.starts_with("--- a/a.yaml\n+++ b/a.yaml\n@@ -1,2 +1,2 @@\n"),
            "{d}"
        );
        assert!(d.contains("\n-y: 2\n+y: 3\n"), "{d}");
    }
}
