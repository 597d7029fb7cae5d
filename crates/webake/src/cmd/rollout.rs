//! `webake rollout`: propose an image in a cluster repository (branch, commit, push, pull request).
//!
//! Parses and resolves; the work is `webake_rollout::rollout`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use webake_rollout::{
    BranchStatus, ForgeConfig, GitIdentity, ImageReference, InstanceGroupRule, PullRequestAction,
    RepoLocation, RolloutOutcome, RolloutRequest, Rule, Step,
};

use crate::exit::{INVALID_INPUT, ROLLOUT_FAILED, coded};
use crate::settings::Settings;

#[derive(Debug, clap::Args)]
pub struct RolloutArgs {
    /// Catalog image to roll out: an id, `family:FAMILY` (its latest image) or `NAME:VERSION`
    #[arg(required_unless_present_any = ["to", "ami"], conflicts_with_all = ["to", "ami"])]
    pub image: Option<String>,

    /// Cluster repository: a local path or a URL git can clone and push to
    #[arg(long, value_name = "PATH|URL")]
    pub repo: String,

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

    /// Print the unified diff of the repository and change nothing
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

    /// Open the pull request on GitHub (OWNER/REPO); without it: branch, commit and push only
    #[arg(long, value_name = "OWNER/REPO")]
    pub github: Option<String>,

    /// GitHub API base URL (GitHub Enterprise: https://HOST/api/v3)
    #[arg(long, value_name = "URL", env = "WEBAKE_GITHUB_API", default_value = webake_rollout::GITHUB_API)]
    pub github_api: String,

    /// Environment variable holding the forge token [default: WEBAKE_FORGE_TOKEN if set, else GITHUB_TOKEN]
    #[arg(long, value_name = "VAR")]
    pub token_env: Option<String>,

    /// Label for the pull request (repeat)
    #[arg(long)]
    pub label: Vec<String>,

    /// Pull request title [default: Roll out IMAGE VERSION]
    #[arg(long)]
    pub title: Option<String>,

    /// Markdown file for the pull request body [default: the catalog's image diff]
    #[arg(long, value_name = "PATH")]
    pub body_file: Option<PathBuf>,

    /// Commit author, "Name <email>"
    #[arg(long, value_name = "NAME <EMAIL>", default_value = "webake <webake@localhost>", value_parser = parse_identity)]
    pub author: GitIdentity,

    /// Commit committer, "Name <email>" [default: the author]
    #[arg(long, value_name = "NAME <EMAIL>", value_parser = parse_identity)]
    pub committer: Option<GitIdentity>,

    /// Write the pull request URL to this file (empty when no pull request was opened)
    #[arg(long, value_name = "FILE")]
    pub pr_url_file: Option<PathBuf>,
}

/// The reference of an image that is not on AWS (for local clusters, or repositories that name
/// images by name and version): `webake/NAME:VERSION`, the catalog's `NAME:VERSION` in the
/// `owner/name` form a kops `spec.image` needs.
pub fn local_reference(name: &str, version: &str) -> String {
    format!("webake/{name}:{version}")
}

/// An image resolved from the catalog.
pub struct CatalogImage {
    pub family: String,
    pub image_name: String,
    pub version: String,
    pub reference: ImageReference,
    /// The image diff against the previous image of the family (packages, kernel, size, provenance).
    pub pr_body_markdown: String,
}

/// LEAD: look IMAGE up in the catalog at `settings.catalog` and fill [`CatalogImage`]. Sketch:
/// `webake_catalog::Catalog::open(&settings.catalog)?.find_image(image)?` gives the `Image`;
/// `reference`: its publications with an `ami_id` as `ImageReference::PerRegion(region -> ami)`
/// (none published: an error telling to publish first, or to use --to);
/// `pr_body_markdown`: the inventory diff against `previous_in_family(&img)` (webake-inventory
/// `diff(..).to_markdown(..)`) plus kernel, size and provenance lines.
fn resolve_catalog_image(settings: &Settings, image: &str) -> anyhow::Result<CatalogImage> {
    let catalog = webake_catalog::Catalog::open(&settings.catalog)?;
    let img = catalog.find_image(image)?;
    let amis: std::collections::BTreeMap<String, String> = img
        .publications
        .iter()
        .filter(|p| p.target == "aws")
        .filter_map(|p| p.ami_id.clone().map(|a| (p.region.clone(), a)))
        .collect();
    let reference = if amis.is_empty() {
        ImageReference::Single(local_reference(&img.name, &img.version))
    } else {
        ImageReference::PerRegion(amis)
    };
    let mut body = format!(
        "webake baked **{} {}** (`{}`, family `{}`).\n\n- kernel: {}\n- inputs digest: `{}`\n- bake: `{}`\n\n",
        img.name,
        img.version,
        img.id,
        img.family,
        img.kernel.as_deref().unwrap_or("?"),
        img.inputs_digest,
        img.bake_id
    );
    match catalog.previous_in_family(&img)? {
        Some(prev) => match crate::cmd::images::render_diff(
            &prev,
            &img,
            crate::cmd::images::DiffFormat::Markdown,
        ) {
            Ok(md) => body.push_str(&md),
            Err(e) => body.push_str(&format!("_No image diff: {e:#}_\n")),
        },
        None => body.push_str("_First image of this family: nothing to compare with._\n"),
    }
    Ok(CatalogImage {
        family: img.family.clone(),
        image_name: img.name.clone(),
        version: img.version.clone(),
        reference,
        pr_body_markdown: body,
    })
}

impl RolloutArgs {
    pub fn run(self, settings: &Settings) -> anyhow::Result<ExitCode> {
        let image = self
            .image_to_roll_out(settings)
            .map_err(|e| coded(INVALID_INPUT, e))?;
        let req = self
            .options
            .request(image, &self.repo, self.dry_run)
            .map_err(|e| coded(INVALID_INPUT, e))?;
        let outcome = self.options.execute(&req, settings.quiet || self.json)?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&outcome)?);
            return Ok(ExitCode::SUCCESS);
        }
        if self.dry_run {
            print!("{}", outcome.diff);
            return Ok(ExitCode::SUCCESS);
        }
        for line in summary_lines(&outcome) {
            println!("{line}");
        }
        Ok(ExitCode::SUCCESS)
    }

    /// The image named on the command line: `--to`/`--ami` with `--family`, or a catalog image.
    fn image_to_roll_out(&self, settings: &Settings) -> anyhow::Result<CatalogImage> {
        let explicit = match (&self.to, self.ami.is_empty()) {
            (Some(r), _) => Some(ImageReference::Single(r.clone())),
            (None, false) => Some(ImageReference::PerRegion(
                self.ami.iter().cloned().collect::<BTreeMap<_, _>>(),
            )),
            (None, true) => None,
        };
        let mut image = match (explicit, &self.image) {
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
                }
            }
            (None, Some(image)) => resolve_catalog_image(settings, image)?,
            (None, None) => bail!("give an IMAGE from the catalog, or --to/--ami with --family"),
        };
        if let Some(v) = &self.version {
            image.version = v.clone();
        }
        Ok(image)
    }
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
    options.execute(&req, quiet)
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
            let token_env = self.token_env.clone().unwrap_or_else(|| {
                let set = |v: &str| std::env::var_os(v).is_some_and(|t| !t.is_empty());
                if set("WEBAKE_FORGE_TOKEN") {
                    "WEBAKE_FORGE_TOKEN"
                } else {
                    "GITHUB_TOKEN"
                }
                .to_string()
            });
            req.forge = ForgeConfig::GitHub {
                api_base: self.github_api.clone(),
                owner: owner.to_string(),
                repo: repo.to_string(),
                token_env,
            };
        }
        Ok(req)
    }

    /// Run the rollout (steps on stderr unless `quiet`) and write `--pr-url-file`.
    fn execute(&self, req: &RolloutRequest, quiet: bool) -> anyhow::Result<RolloutOutcome> {
        let reporter = StepPrinter { quiet };
        let outcome = webake_rollout::rollout(req, &reporter).map_err(|e| {
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
