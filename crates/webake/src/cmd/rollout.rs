//! `webake rollout`: propose an image in one cluster repository, or in each repository of a
//! targets file (branch, commit, push, pull request or merge request).
//!
//! Parses and resolves; the work is `webake_rollout::rollout` / `rollout_targets`. The catalog
//! answers the library's "which image does this reference point at now" ([`CatalogLookup`]).

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use webake_catalog::{Catalog, CatalogError, Image};
use webake_rollout::{
    BranchStatus, ForgeConfig, GitIdentity, ImageFacts, ImageLookup, ImageReference,
    InstanceGroupRule, NoLookup, PullRequestAction, ReferenceKind, RepoLocation, RolloutOutcome,
    RolloutRequest, RolloutTargets, Rule, Step, TargetOutcome,
};

use crate::exit::{INVALID_INPUT, ROLLOUT_FAILED, coded};
use crate::settings::Settings;

#[derive(Debug, clap::Args)]
pub struct RolloutArgs {
    /// Catalog image to roll out: an id, `family:FAMILY` (its latest image) or `NAME:VERSION`
    #[arg(
        required_unless_present_any = ["to", "ami", "image_file"],
        conflicts_with_all = ["to", "ami", "image_file"]
    )]
    pub image: Option<String>,

    /// Read IMAGE from this file (as `webake run --no-rollout --image-id-file` writes it)
    #[arg(long, value_name = "FILE", conflicts_with_all = ["to", "ami"])]
    pub image_file: Option<PathBuf>,

    /// Cluster repository: a local path or a URL git can clone and push to (or --targets)
    #[arg(
        long,
        value_name = "PATH|URL",
        default_value = "",
        hide_default_value = true
    )]
    pub repo: String,

    /// Rollout targets file: several cluster repositories (each with its forge, base branch,
    /// config and rules), one pull request each, and a summary table
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = ["repo", "github", "gitlab", "token_env"]
    )]
    pub targets: Option<PathBuf>,

    /// Roll out this reference instead of a catalog image (ami-…, owner/name, alias/name, ssm:…)
    #[arg(
        long,
        value_name = "REFERENCE",
        requires = "family",
        conflicts_with = "ami"
    )]
    pub to: Option<String>,

    /// Roll out per-region AMIs instead of a catalog image (repeat: --ami eu-west-1=ami-…)
    #[arg(long, value_name = "REGION=AMI", requires = "family", value_parser = parse_region_ami)]
    pub ami: Vec<(String, String)>,

    /// Image family (names the branch webake/FAMILY); required with --to and --ami
    #[arg(long)]
    pub family: Option<String>,

    /// Image version, for the title and commit message
    #[arg(long)]
    pub version: Option<String>,

    #[command(flatten)]
    pub options: RolloutOptions,

    /// Print the unified diff, then the pull request title and body, and change nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Print the outcome as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

/// How to roll out, once the image is known: shared by `webake rollout` and `webake run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RolloutOptions {
    /// Branch to start from and propose to [default: the config's, else the repository HEAD]
    #[arg(long, value_name = "BRANCH")]
    pub base: Option<String>,

    /// Rollout config inside the repository
    #[arg(long, value_name = "PATH", default_value = webake_rollout::DEFAULT_CONFIG_PATH)]
    pub config: String,

    /// Select InstanceGroups by role instead of the config's rules (repeat; Node, Master, Bastion, …)
    #[arg(long, value_name = "ROLE")]
    pub role: Vec<String>,

    /// Select InstanceGroups by name (glob; repeat)
    #[arg(long = "instance-group", value_name = "NAME")]
    pub instance_group: Vec<String>,

    /// Select every InstanceGroup
    #[arg(long, conflicts_with_all = ["role", "instance_group"])]
    pub all_instance_groups: bool,

    /// Only InstanceGroups of this cluster (glob on the kops.k8s.io/cluster label)
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,

    /// Region of the selected InstanceGroups, when their zones and subnets do not tell it
    #[arg(long)]
    pub region: Option<String>,

    /// Open the pull request on GitHub (OWNER/REPO); without a forge: branch, commit and push only
    #[arg(long, value_name = "OWNER/REPO")]
    pub github: Option<String>,

    /// GitHub API base URL (GitHub Enterprise: https://HOST/api/v3)
    #[arg(long, value_name = "URL", env = "WEBAKE_GITHUB_API", default_value = webake_rollout::GITHUB_API)]
    pub github_api: String,

    /// Open a merge request on GitLab (GROUP/PROJECT, subgroups allowed)
    #[arg(long, value_name = "GROUP/PROJECT", conflicts_with = "github")]
    pub gitlab: Option<String>,

    /// GitLab API base URL (self-managed: https://HOST/api/v4)
    #[arg(long, value_name = "URL", env = "WEBAKE_GITLAB_API", default_value = webake_rollout::GITLAB_API)]
    pub gitlab_api: String,

    /// Environment variable holding the forge token [default: WEBAKE_FORGE_TOKEN if set, else GITHUB_TOKEN or GITLAB_TOKEN]
    #[arg(long, value_name = "VAR")]
    pub token_env: Option<String>,

    /// Roll out even when a reference points at a newer image of the same family
    #[arg(long)]
    pub allow_downgrade: bool,

    /// Propose the image again although a reviewer closed its pull request (a new one is opened)
    #[arg(long)]
    pub reopen: bool,

    /// Label for the pull request (repeat)
    #[arg(long)]
    pub label: Vec<String>,

    /// Pull request title [default: Roll out IMAGE VERSION]
    #[arg(long)]
    pub title: Option<String>,

    /// Markdown file put at the top of the pull request body (the before/after and the table of
    /// references follow)
    #[arg(long, value_name = "PATH")]
    pub body_file: Option<PathBuf>,

    /// Commit author, "Name <email>"
    #[arg(long, value_name = "NAME <EMAIL>", default_value = "webake <webake@localhost>", value_parser = parse_identity)]
    pub author: GitIdentity,

    /// Commit committer, "Name <email>" [default: the author]
    #[arg(long, value_name = "NAME <EMAIL>", value_parser = parse_identity)]
    pub committer: Option<GitIdentity>,

    /// Write the pull request URL to this file (empty when no pull request was opened; with
    /// --targets, one URL per line)
    #[arg(long, value_name = "FILE")]
    pub pr_url_file: Option<PathBuf>,
}

/// An image to roll out, resolved from the catalog or given as a bare reference.
pub struct CatalogImage {
    pub family: String,
    pub image_name: String,
    pub version: String,
    pub reference: ImageReference,
    /// Markdown before the generated before/after (provenance of a catalog image).
    pub pr_body_markdown: String,
    /// What the catalog knows about it (`None` for `--to` / `--ami`).
    pub facts: Option<ImageFacts>,
}

/// Look IMAGE up in the catalog: its AMIs per region (else its local name), its facts.
fn resolve_catalog_image(settings: &Settings, image: &str) -> anyhow::Result<CatalogImage> {
    let catalog = Catalog::open(&settings.catalog)?;
    let img = catalog.find_image(image)?;
    let amis: BTreeMap<String, String> = img
        .publications
        .iter()
        .filter(|p| p.target == "aws")
        .filter_map(|p| p.ami_id.clone().map(|a| (p.region.clone(), a)))
        .collect();
    let reference = if amis.is_empty() {
        ImageReference::Single(webake_rollout::local_reference(&img.name, &img.version))
    } else {
        ImageReference::PerRegion(amis)
    };
    let body = format!(
        "Baked by webake: bake `{}`, inputs digest `{}`.\n",
        img.bake_id, img.inputs_digest
    );
    Ok(CatalogImage {
        family: img.family.clone(),
        image_name: img.name.clone(),
        version: img.version.clone(),
        reference,
        pr_body_markdown: body,
        facts: Some(facts_of(&img)),
    })
}

/// The library's view of a catalog image.
fn facts_of(img: &Image) -> ImageFacts {
    let inventory = img
        .inventory
        .clone()
        .and_then(|v| match serde_json::from_value(v) {
            Ok(inv) => Some(inv),
            Err(e) => {
                tracing::warn!(image = %img.id, error = %e, "unreadable inventory: no package changes");
                None
            }
        });
    ImageFacts {
        id: img.id.clone(),
        name: img.name.clone(),
        family: img.family.clone(),
        version: img.version.clone(),
        created_at: img.created_at,
        kernel: img.kernel.clone(),
        size_bytes: (img.tree_size > 0).then_some(img.tree_size),
        boot_test: img.test_result.clone(),
        sbom_paths: sbom_paths(img),
        inventory,
        package_notes: BTreeMap::new(),
    }
}

/// The SBOMs the bake writes next to the artifacts: `NAME-VERSION.spdx.json` and `.cdx.json`.
fn sbom_paths(img: &Image) -> Vec<String> {
    let mut out = Vec::new();
    for a in &img.artifacts {
        let Some(dir) = Path::new(&a.path).parent() else {
            continue;
        };
        for ext in ["spdx.json", "cdx.json"] {
            let path = dir.join(format!("{}-{}.{ext}", img.name, img.version));
            let text = path.display().to_string();
            if path.is_file() && !out.contains(&text) {
                out.push(text);
            }
        }
    }
    out
}

/// "Which image does this reference point at now", answered from the catalog: an AMI id of any
/// publication (its region first), an AMI name of a publication (`owner/name`), or a local
/// name (`webake/NAME:VERSION`). SSM parameters and other names are unknown to it.
pub struct CatalogLookup {
    catalog: Catalog,
    images: OnceCell<Vec<Image>>,
}

impl CatalogLookup {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            catalog: Catalog::open(path)?,
            images: OnceCell::new(),
        })
    }

    fn images(&self) -> Result<&[Image], String> {
        if self.images.get().is_none() {
            let all = self.catalog.list_images(None).map_err(|e| e.to_string())?;
            let _ = self.images.set(all);
        }
        Ok(self.images.get().map(Vec::as_slice).unwrap_or_default())
    }
}

impl ImageLookup for CatalogLookup {
    fn image_for(
        &self,
        reference: &str,
        region: Option<&str>,
    ) -> Result<Option<ImageFacts>, String> {
        if webake_rollout::is_local_reference(reference) {
            let query = reference.trim_start_matches(webake_rollout::LOCAL_REFERENCE_PREFIX);
            return match self.catalog.find_image(query) {
                Ok(img) => Ok(Some(facts_of(&img))),
                Err(CatalogError::NotFound(_)) => Ok(None),
                Err(e) => Err(e.to_string()),
            };
        }
        let matches = |p: &webake_catalog::Publication| match ReferenceKind::of(reference) {
            Ok(ReferenceKind::AmiId) => p.ami_id.as_deref() == Some(reference),
            Ok(ReferenceKind::Named) => reference
                .split_once('/')
                .is_some_and(|(_, name)| p.name == name),
            _ => false,
        };
        let images = self.images()?;
        let in_region = images.iter().find(|i| {
            i.publications
                .iter()
                .any(|p| matches(p) && region.is_none_or(|r| p.region == r))
        });
        let anywhere = || images.iter().find(|i| i.publications.iter().any(&matches));
        Ok(in_region.or_else(anywhere).map(facts_of))
    }
}

/// The lookup of a run: the catalog when it exists (a bare `--to` needs none).
fn lookup_for(settings: &Settings) -> anyhow::Result<Box<dyn ImageLookup>> {
    if settings.catalog.exists() {
        Ok(Box::new(CatalogLookup::open(&settings.catalog)?))
    } else {
        Ok(Box::new(NoLookup))
    }
}

impl RolloutArgs {
    pub fn run(self, settings: &Settings) -> anyhow::Result<ExitCode> {
        if self.repo.is_empty() && self.targets.is_none() {
            return Err(coded(
                INVALID_INPUT,
                anyhow::anyhow!(
                    "give the cluster repository (--repo) or a targets file (--targets)"
                ),
            ));
        }
        let image = self
            .image_to_roll_out(settings)
            .map_err(|e| coded(INVALID_INPUT, e))?;
        if let Some(path) = &self.targets {
            return self.run_targets(settings, image, path);
        }
        let req = self
            .options
            .request(image, &self.repo, self.dry_run)
            .map_err(|e| coded(INVALID_INPUT, e))?;
        let lookup = lookup_for(settings).map_err(|e| coded(ROLLOUT_FAILED, e))?;
        let outcome = self
            .options
            .execute(&req, lookup.as_ref(), settings.quiet || self.json)?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&outcome)?);
            return Ok(ExitCode::SUCCESS);
        }
        if self.dry_run {
            print!("{}", dry_run_text(&outcome));
            return Ok(ExitCode::SUCCESS);
        }
        for line in summary_lines(&outcome) {
            println!("{line}");
        }
        Ok(ExitCode::SUCCESS)
    }

    /// `--targets FILE`: every repository of the file, then the summary table.
    fn run_targets(
        &self,
        settings: &Settings,
        image: CatalogImage,
        path: &Path,
    ) -> anyhow::Result<ExitCode> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading {}", path.display()))
            .map_err(|e| coded(INVALID_INPUT, e))?;
        let targets = RolloutTargets::from_yaml(&text, &path.display().to_string())
            .map_err(|e| coded(INVALID_INPUT, e))?;
        let run = self
            .options
            .request(image, "", self.dry_run)
            .map_err(|e| coded(INVALID_INPUT, e))?;
        let lookup = lookup_for(settings).map_err(|e| coded(ROLLOUT_FAILED, e))?;
        let reporter = StepPrinter {
            quiet: settings.quiet || self.json,
        };
        let outcomes = webake_rollout::rollout_targets(&run, &targets, lookup.as_ref(), &reporter);
        if let Some(file) = &self.options.pr_url_file {
            let urls: Vec<&str> = outcomes
                .iter()
                .filter_map(|o| o.outcome.as_ref()?.pull_request.as_ref())
                .map(|p| p.url.as_str())
                .collect();
            let mut text = urls.join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            webake_sys::fsutil::atomic_write(file, text.as_bytes())
                .with_context(|| format!("writing {}", file.display()))
                .map_err(|e| coded(ROLLOUT_FAILED, e))?;
        }
        if self.json {
            println!("{}", serde_json::to_string_pretty(&outcomes)?);
        } else {
            if self.dry_run {
                for o in outcomes.iter() {
                    if let Some(outcome) = &o.outcome {
                        println!("==> {}", o.repo);
                        print!("{}", dry_run_text(outcome));
                        println!();
                    }
                }
            }
            print!("{}", webake_rollout::summary_table(&outcomes));
        }
        targets_result(&outcomes)
    }

    /// The image named on the command line: `--to`/`--ami` with `--family`, or a catalog image
    /// (IMAGE, or the id in `--image-file`).
    fn image_to_roll_out(&self, settings: &Settings) -> anyhow::Result<CatalogImage> {
        let explicit = match (&self.to, self.ami.is_empty()) {
            (Some(r), _) => Some(ImageReference::Single(r.clone())),
            (None, false) => Some(ImageReference::PerRegion(
                self.ami.iter().cloned().collect::<BTreeMap<_, _>>(),
            )),
            (None, true) => None,
        };
        let from_file = match &self.image_file {
            Some(path) => {
                let id = std::fs::read_to_string(path)
                    .with_context(|| format!("reading the image id from {}", path.display()))?;
                let id = id.trim().to_string();
                if id.is_empty() {
                    bail!("{} holds no image id", path.display());
                }
                Some(id)
            }
            None => None,
        };
        let mut image = match (explicit, self.image.clone().or(from_file)) {
            (Some(reference), _) => {
                let family = self
                    .family
                    .clone()
                    .context("--family is required with --to and --ami")?;
                CatalogImage {
                    image_name: family.clone(),
                    family,
                    version: String::new(),
                    reference,
                    pr_body_markdown: String::new(),
                    facts: None,
                }
            }
            (None, Some(image)) => resolve_catalog_image(settings, &image)?,
            (None, None) => bail!("give an IMAGE from the catalog, or --to/--ami with --family"),
        };
        if let Some(v) = &self.version {
            image.version = v.clone();
        }
        Ok(image)
    }
}

/// Exit 0 when every repository went through; else 5 (2 when every failure is invalid input).
fn targets_result(outcomes: &[TargetOutcome]) -> anyhow::Result<ExitCode> {
    let failed: Vec<&TargetOutcome> = outcomes.iter().filter(|o| o.failure.is_some()).collect();
    if failed.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let invalid = failed
        .iter()
        .all(|o| o.failure.as_ref().is_some_and(|e| e.is_invalid_input()));
    let code = if invalid {
        INVALID_INPUT
    } else {
        ROLLOUT_FAILED
    };
    let detail: Vec<String> = failed
        .iter()
        .map(|o| format!("{}: {}", o.repo, o.error.as_deref().unwrap_or("")))
        .collect();
    Err(coded(
        code,
        anyhow::anyhow!(
            "the rollout failed in {} of {} repositories:\n  {}",
            failed.len(),
            outcomes.len(),
            detail.join("\n  ")
        ),
    ))
}

/// What `--dry-run` prints: the diff, then the pull request title and body.
pub fn dry_run_text(outcome: &RolloutOutcome) -> String {
    let mut out = outcome.diff.clone();
    if outcome.diff.is_empty() {
        out.push_str(&format!(
            "{} already references this image: nothing to propose\n",
            outcome.base_branch
        ));
    }
    out.push_str(&format!(
        "\n==> pull request title\n{}\n\n==> pull request body\n{}",
        outcome.title, outcome.body
    ));
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// Roll out a catalog image (an id, `family:FAMILY` or `NAME:VERSION`) to the cluster
/// repository `repo` (a local path or a URL): the work of `webake rollout IMAGE --repo REPO`,
/// for `webake run`. Errors carry exit code 2 (invalid input) or 5 (rollout failed).
pub fn rollout_image(
    settings: &Settings,
    image: &str,
    repo: &str,
    options: &RolloutOptions,
    quiet: bool,
) -> anyhow::Result<RolloutOutcome> {
    let image = resolve_catalog_image(settings, image).map_err(|e| coded(INVALID_INPUT, e))?;
    let req = options
        .request(image, repo, false)
        .map_err(|e| coded(INVALID_INPUT, e))?;
    let lookup = lookup_for(settings).map_err(|e| coded(ROLLOUT_FAILED, e))?;
    options.execute(&req, lookup.as_ref(), quiet)
}

impl RolloutOptions {
    /// Check the options without an image (bad `--github`, `--region` without a selector, an
    /// unreadable `--body-file`), before a long bake.
    pub fn validate(&self, repo: &str) -> anyhow::Result<()> {
        let placeholder = CatalogImage {
            family: "family".into(),
            image_name: "image".into(),
            version: String::new(),
            reference: ImageReference::Single("image:version".into()),
            pr_body_markdown: String::new(),
            facts: None,
        };
        self.request(placeholder, repo, true).map(drop)
    }

    /// The library request for `image` into `repo`.
    fn request(
        &self,
        image: CatalogImage,
        repo: &str,
        dry_run: bool,
    ) -> anyhow::Result<RolloutRequest> {
        let mut req = RolloutRequest::new(image.family, image.reference, RepoLocation::parse(repo));
        req.image_name = image.image_name;
        req.version = image.version;
        req.pr_body_markdown = image.pr_body_markdown;
        req.image = image.facts;
        req.allow_downgrade = self.allow_downgrade;
        req.reopen = self.reopen;
        if let Some(path) = &self.body_file {
            req.pr_body_markdown = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
        }
        req.base_branch = self.base.clone();
        req.config_path = self.config.clone();
        req.dry_run = dry_run;
        req.title = self.title.clone();
        req.labels = self.label.clone();
        req.author = self.author.clone();
        req.committer = self
            .committer
            .clone()
            .unwrap_or_else(|| self.author.clone());
        req.rules = self.command_line_rules();
        if self.region.is_some() && req.rules.is_empty() {
            bail!(
                "--region applies to --role, --instance-group, --cluster or --all-instance-groups"
            );
        }
        if let Some(slug) = &self.github {
            let (owner, repo) = slug
                .split_once('/')
                .filter(|(o, r)| !o.is_empty() && !r.is_empty() && !r.contains('/'))
                .with_context(|| format!("--github {slug:?}: expected OWNER/REPO"))?;
            let token_env = self
                .token_env
                .clone()
                .unwrap_or_else(|| webake_rollout::default_token_env(false));
            req.forge = ForgeConfig::GitHub {
                api_base: self.github_api.clone(),
                owner: owner.to_string(),
                repo: repo.to_string(),
                token_env,
            };
        }
        if let Some(project) = &self.gitlab {
            let parts: Vec<&str> = project.split('/').collect();
            if parts.len() < 2 || parts.iter().any(|p| p.is_empty()) {
                bail!("--gitlab {project:?}: expected GROUP/PROJECT");
            }
            let token_env = self
                .token_env
                .clone()
                .unwrap_or_else(|| webake_rollout::default_token_env(true));
            req.forge = ForgeConfig::GitLab {
                api_base: self.gitlab_api.clone(),
                project: project.clone(),
                token_env,
            };
        }
        Ok(req)
    }

    /// Run the rollout (steps on stderr unless `quiet`) and write `--pr-url-file`.
    fn execute(
        &self,
        req: &RolloutRequest,
        lookup: &dyn ImageLookup,
        quiet: bool,
    ) -> anyhow::Result<RolloutOutcome> {
        let reporter = StepPrinter { quiet };
        let outcome = webake_rollout::rollout(req, lookup, &reporter).map_err(|e| {
            let code = if e.is_invalid_input() {
                INVALID_INPUT
            } else {
                ROLLOUT_FAILED
            };
            coded(code, e)
        })?;
        if let Some(path) = &self.pr_url_file {
            let url = outcome
                .pull_request
                .as_ref()
                .map(|pr| pr.url.as_str())
                .unwrap_or("");
            webake_sys::fsutil::atomic_write(path, url.as_bytes())
                .with_context(|| format!("writing {}", path.display()))
                .map_err(|e| coded(ROLLOUT_FAILED, e))?;
        }
        Ok(outcome)
    }

    /// One instance-group rule from the selection flags; none when no flag is given (the
    /// repository config's rules apply then).
    fn command_line_rules(&self) -> Vec<Rule> {
        let selects = self.all_instance_groups
            || !self.role.is_empty()
            || !self.instance_group.is_empty()
            || self.cluster.is_some();
        if !selects {
            return Vec::new();
        }
        vec![Rule::InstanceGroup(InstanceGroupRule {
            cluster: self.cluster.clone(),
            names: self.instance_group.clone(),
            roles: self.role.clone(),
            all: self.all_instance_groups,
            region: self.region.clone(),
            ..Default::default()
        })]
    }
}

/// The human summary of a rollout: the branch, each changed reference, the pull request.
pub fn summary_lines(outcome: &RolloutOutcome) -> Vec<String> {
    let mut lines = Vec::new();
    let changed = outcome.edits.iter().filter(|e| e.changes()).count();
    let commit = outcome
        .commit
        .as_deref()
        .map(|c| &c[..c.len().min(12)])
        .unwrap_or("-");
    match outcome.status {
        BranchStatus::UpToDate => lines.push(format!(
            "{} already references this image: nothing to propose",
            outcome.base_branch
        )),
        BranchStatus::Declined => lines.push(
            "a reviewer closed the pull request for this image: left closed, nothing pushed \
             (--reopen proposes it again)"
                .to_string(),
        ),
        status => {
            let what = match status {
                BranchStatus::Created => "created",
                BranchStatus::Updated => "updated (supersedes the previous image)",
                _ => "unchanged",
            };
            lines.push(format!(
                "branch {} {what} at {commit} on {}: {changed} reference(s) in {} file(s)",
                outcome.branch,
                outcome.base_branch,
                outcome.changed_files.len()
            ));
            for e in outcome.edits.iter().filter(|e| e.changes()) {
                lines.push(format!(
                    "  {}:{} {}: {} -> {}",
                    e.file, e.line, e.what, e.old, e.new
                ));
            }
        }
    }
    if let Some(pr) = &outcome.pull_request {
        let action = match pr.action {
            PullRequestAction::Created => "opened",
            PullRequestAction::Updated => "updated",
            PullRequestAction::LeftClosed => "closed by a reviewer",
        };
        lines.push(format!("pull request #{} {action}: {}", pr.number, pr.url));
    }
    lines
}

fn parse_region_ami(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((region, ami)) if !region.is_empty() && !ami.is_empty() => {
            Ok((region.to_string(), ami.to_string()))
        }
        _ => Err(format!("expected REGION=AMI, got {s:?}")),
    }
}

fn parse_identity(s: &str) -> Result<GitIdentity, String> {
    let (name, rest) = s
        .split_once('<')
        .ok_or_else(|| format!("expected \"Name <email>\", got {s:?}"))?;
    let email = rest
        .strip_suffix('>')
        .ok_or_else(|| format!("expected \"Name <email>\", got {s:?}"))?;
    let (name, email) = (name.trim(), email.trim());
    if name.is_empty() || email.is_empty() {
        return Err(format!("expected \"Name <email>\", got {s:?}"));
    }
    Ok(GitIdentity {
        name: name.to_string(),
        email: email.to_string(),
    })
}

/// Steps on stderr, one line each.
struct StepPrinter {
    quiet: bool,
}

impl webake_rollout::Reporter for StepPrinter {
    fn step(&self, step: Step<'_>) {
        if self.quiet {
            return;
        }
        match step {
            Step::Cloning { location } => eprintln!("cloning {location}"),
            Step::Planning { rules } => eprintln!("finding image references ({rules} rule(s))"),
            Step::Committing { branch } => eprintln!("committing on {branch}"),
            Step::Pushing { branch } => eprintln!("pushing {branch}"),
            Step::PullRequest { branch } => eprintln!("proposing {branch}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_and_region_amis_parse() {
        assert_eq!(
            parse_identity("Platform Bot <bot@example.com>").unwrap(),
            GitIdentity {
                name: "Platform Bot".into(),
                email: "bot@example.com".into()
            }
        );
        assert!(parse_identity("bot@example.com").is_err());
        assert!(parse_identity("<bot@example.com>").is_err());
        assert_eq!(
            parse_region_ami("eu-west-1=ami-1").unwrap(),
            ("eu-west-1".into(), "ami-1".into())
        );
        assert!(parse_region_ami("eu-west-1").is_err());
    }
}
