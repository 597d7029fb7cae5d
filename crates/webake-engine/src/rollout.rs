//! The rollout stage: propose an image in cluster repositories (webake-rollout), with the
//! catalog answering "which image does this reference point at now" for the before/after.

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::path::Path;

use webake_catalog::{CatalogError, Image, Publication};
use webake_rollout::{
    BranchStatus, ForgeConfig, GitIdentity, ImageFacts, ImageLookup, ImageReference, NoLookup,
    PullRequestAction, ReferenceKind, RepoLocation, RolloutOutcome, RolloutRequest, RolloutTargets,
    Rule, TargetOutcome,
};

use crate::events::RolloutBridge;
use crate::{Context, Error, Result};

/// How to roll out, once the image is known (shared by `rollout` and `run`).
#[derive(Debug, Clone)]
pub struct RolloutOptions {
    /// Branch to start from and propose to (None: the config's, else the repository HEAD).
    pub base: Option<String>,
    /// The rollout config inside the repository.
    pub config: String,
    /// Rules from the command line (empty: the repository config's).
    pub rules: Vec<Rule>,
    pub forge: ForgeConfig,
    pub allow_downgrade: bool,
    pub reopen: bool,
    pub labels: Vec<String>,
    pub title: Option<String>,
    /// Markdown put at the top of the pull request body.
    pub body_markdown: Option<String>,
    pub author: GitIdentity,
    pub committer: Option<GitIdentity>,
}

/// An image to roll out.
#[derive(Debug, Clone)]
pub enum ImageChoice {
    /// A catalog image: an id, `family:FAMILY` or `NAME:VERSION`; `version` overrides the
    /// version shown in the title and commit message.
    Catalog {
        query: String,
        version: Option<String>,
    },
    /// A bare reference (`--to`, `--ami`) with its family.
    Reference {
        reference: ImageReference,
        family: String,
        version: String,
    },
}

/// The image to roll out, resolved.
#[derive(Debug, Clone)]
pub struct RolloutImage {
    pub family: String,
    pub image_name: String,
    pub version: String,
    pub reference: ImageReference,
    /// Markdown before the generated before/after (provenance of a catalog image).
    pub body: String,
    /// What the catalog knows about it (None for a bare reference).
    pub facts: Option<ImageFacts>,
}

/// Resolve the image: a catalog image's AMIs per region (else its local name) and facts.
pub fn resolve(ctx: &Context<'_>, choice: &ImageChoice) -> Result<RolloutImage> {
    match choice {
        ImageChoice::Reference {
            reference,
            family,
            version,
        } => Ok(RolloutImage {
            family: family.clone(),
            image_name: family.clone(),
            version: version.clone(),
            reference: reference.clone(),
            body: String::new(),
            facts: None,
        }),
        ImageChoice::Catalog { query, version } => {
            if !ctx.catalog_exists() {
                return Err(Error::Invalid(format!(
                    "no catalog at {}: nothing to roll out as {query}",
                    ctx.settings.catalog.display()
                )));
            }
            let catalog = ctx.catalog()?;
            let img = catalog
                .find_image(query)
                .map_err(|e| Error::Invalid(e.to_string()))?;
            let family = catalog.list_images(Some(&img.family))?;
            let builds = builds_of(&family, &img);
            drop(catalog);
            let mut image = from_catalog(&img);
            if per_architecture(&family, &img) {
                image.reference = ImageReference::PerArchitecture(
                    builds
                        .iter()
                        .map(|b| (b.arch.clone(), reference_of(b, true)))
                        .collect(),
                );
            }
            if let Some(v) = version {
                image.version = v.clone();
            }
            Ok(image)
        }
    }
}

/// The builds of `img`'s version, one per architecture: the images of its family with its
/// version, the newest of each architecture (only `img` when its architecture is unknown).
pub fn builds_of(family: &[Image], img: &Image) -> Vec<Image> {
    if img.arch.is_empty() {
        return vec![img.clone()];
    }
    let mut by_arch: BTreeMap<String, Image> = BTreeMap::new();
    by_arch.insert(img.arch.clone(), img.clone());
    // `family` is newest first: the first of each architecture wins.
    for other in family {
        if other.version == img.version && !other.arch.is_empty() {
            by_arch
                .entry(other.arch.clone())
                .or_insert_with(|| other.clone());
        }
    }
    by_arch.into_values().collect()
}

/// Route by architecture (each InstanceGroup gets the build of its machine type's, an
/// architecture without a build is an error, never another's image) when the family has
/// images of more than one architecture, or the image is not x86-64. Otherwise the one
/// reference goes to every match, as for images recorded before architectures.
pub fn per_architecture(family: &[Image], img: &Image) -> bool {
    let other = |i: &Image| !i.arch.is_empty() && i.arch != img.arch;
    family.iter().any(other) || !matches!(img.arch.as_str(), "" | "x86_64")
}

/// Where a build is: its AMIs per region, else its local name (`webake/NAME:VERSION`, with
/// `@ARCH` when the version has builds of several architectures).
fn reference_of(img: &Image, several: bool) -> ImageReference {
    let amis: BTreeMap<String, String> = img
        .publications
        .iter()
        .filter_map(|p| p.ami().map(|(r, a)| (r.to_string(), a.to_string())))
        .collect();
    if !amis.is_empty() {
        return ImageReference::PerRegion(amis);
    }
    let version = if several {
        format!("{}@{}", img.version, img.arch)
    } else {
        img.version.clone()
    };
    ImageReference::Single(webake_rollout::local_reference(&img.name, &version))
}

fn from_catalog(img: &Image) -> RolloutImage {
    let reference = reference_of(img, false);
    RolloutImage {
        family: img.family.clone(),
        image_name: img.name.clone(),
        version: img.version.clone(),
        reference,
        body: provenance_markdown(img),
        facts: Some(facts_of(img)),
    }
}

/// What the pull request says of where the image comes from: the bake, and the parent image
/// a derived image was built on.
fn provenance_markdown(img: &Image) -> String {
    let mut s = format!(
        "Baked by webake: bake `{}`, inputs digest `{}`.\n",
        img.bake_id, img.inputs_digest
    );
    if let Some(p) = &img.provenance.parent {
        s.push_str(&format!(
            "Built on catalog image `{}` ({} {}, family `{}`).\n",
            p.id, p.name, p.version, p.family
        ));
    }
    s
}

/// The library request for `image` into `repo` (pure).
pub fn request(
    image: RolloutImage,
    repo: &str,
    opts: &RolloutOptions,
    dry_run: bool,
) -> RolloutRequest {
    let mut req = RolloutRequest::new(image.family, image.reference, RepoLocation::parse(repo));
    req.image_name = image.image_name;
    req.version = image.version;
    req.pr_body_markdown = opts.body_markdown.clone().unwrap_or(image.body);
    req.image = image.facts;
    req.allow_downgrade = opts.allow_downgrade;
    req.reopen = opts.reopen;
    req.base_branch = opts.base.clone();
    req.config_path = opts.config.clone();
    req.dry_run = dry_run;
    req.title = opts.title.clone();
    req.labels = opts.labels.clone();
    req.author = opts.author.clone();
    req.committer = opts
        .committer
        .clone()
        .unwrap_or_else(|| opts.author.clone());
    req.rules = opts.rules.clone();
    req.forge = opts.forge.clone();
    req
}

/// Roll out into one repository.
pub fn rollout(ctx: &Context<'_>, req: &RolloutRequest) -> Result<RolloutOutcome> {
    let lookup = lookup(ctx)?;
    Ok(webake_rollout::rollout(
        req,
        lookup.as_ref(),
        &RolloutBridge(ctx.reporter),
    )?)
}

/// Roll out into every repository of a targets file (one failure does not stop the others).
pub fn rollout_targets(
    ctx: &Context<'_>,
    req: &RolloutRequest,
    targets: &RolloutTargets,
) -> Result<Vec<TargetOutcome>> {
    let lookup = lookup(ctx)?;
    Ok(webake_rollout::rollout_targets(
        req,
        targets,
        lookup.as_ref(),
        &RolloutBridge(ctx.reporter),
    ))
}

/// Read and parse a targets file.
pub fn load_targets(path: &Path) -> Result<RolloutTargets> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(RolloutTargets::from_yaml(
        &text,
        &path.display().to_string(),
    )?)
}

/// The outcome of a targets run as one result: failed when any repository failed (invalid
/// input when every failure is the caller's input).
pub fn targets_result(outcomes: &[TargetOutcome]) -> Result<()> {
    let failed: Vec<&TargetOutcome> = outcomes.iter().filter(|o| o.failure.is_some()).collect();
    if failed.is_empty() {
        return Ok(());
    }
    let detail: Vec<String> = failed
        .iter()
        .map(|o| format!("{}: {}", o.repo, o.error.as_deref().unwrap_or("")))
        .collect();
    let message = format!(
        "the rollout failed in {} of {} repositories:\n  {}",
        failed.len(),
        outcomes.len(),
        detail.join("\n  ")
    );
    if failed
        .iter()
        .all(|o| o.failure.as_ref().is_some_and(|e| e.is_invalid_input()))
    {
        Err(Error::Invalid(message))
    } else {
        Err(Error::Stage {
            stage: crate::Stage::Rollout,
            source: Box::new(Error::Failed(message)),
        })
    }
}

/// The lookup of a rollout: the catalog when it exists (a bare reference needs none).
fn lookup<'c>(ctx: &'c Context<'_>) -> Result<Box<dyn ImageLookup + 'c>> {
    if ctx.catalog_exists() {
        Ok(Box::new(CatalogLookup {
            ctx,
            images: OnceCell::new(),
        }))
    } else {
        Ok(Box::new(NoLookup))
    }
}

/// The library's view of a catalog image.
pub fn facts_of(img: &Image) -> ImageFacts {
    ImageFacts {
        id: img.id.to_string(),
        name: img.name.clone(),
        family: img.family.clone(),
        version: img.version.clone(),
        created_at: img.created_at,
        kernel: img.kernel.clone(),
        size_bytes: (img.tree_size > 0).then_some(img.tree_size),
        boot_test: img.test_result.map(|t| t.to_string()),
        sbom_paths: sbom_paths(img),
        inventory: img.inventory.clone(),
        package_notes: crate::upstream::package_notes(img),
    }
}

/// The SBOMs the bake writes next to the artifacts: `NAME-VERSION.spdx.json` and `.cdx.json`.
fn sbom_paths(img: &Image) -> Vec<String> {
    let mut out = Vec::new();
    for a in &img.artifacts {
        let Some(dir) = a.path.parent() else {
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
struct CatalogLookup<'c> {
    ctx: &'c Context<'c>,
    images: OnceCell<Vec<Image>>,
}

impl CatalogLookup<'_> {
    fn images(&self) -> std::result::Result<&[Image], String> {
        if self.images.get().is_none() {
            let all = self
                .ctx
                .catalog()
                .and_then(|c| Ok(c.list_images(None)?))
                .map_err(|e| e.to_string())?;
            let _ = self.images.set(all);
        }
        Ok(self.images.get().map(Vec::as_slice).unwrap_or_default())
    }
}

impl ImageLookup for CatalogLookup<'_> {
    fn image_for(
        &self,
        reference: &str,
        region: Option<&str>,
    ) -> std::result::Result<Option<ImageFacts>, String> {
        if webake_rollout::is_local_reference(reference) {
            let query = reference.trim_start_matches(webake_rollout::LOCAL_REFERENCE_PREFIX);
            let found = self
                .ctx
                .catalog()
                .map_err(|e| e.to_string())?
                .find_image(query);
            return match found {
                Ok(img) => Ok(Some(facts_of(&img))),
                Err(CatalogError::NotFound(_)) => Ok(None),
                Err(e) => Err(e.to_string()),
            };
        }
        let kind = ReferenceKind::of(reference);
        let matches = |p: &Publication| match (&kind, p) {
            (Ok(ReferenceKind::AmiId), Publication::Aws { ami_id, .. }) => ami_id == reference,
            (Ok(ReferenceKind::Named), Publication::Aws { name, .. }) => {
                reference.split_once('/').is_some_and(|(_, n)| name == n)
            }
            _ => false,
        };
        let in_region = |p: &Publication| {
            matches(p) && region.is_none_or(|r| p.ami().is_some_and(|(pr, _)| pr == r))
        };
        let images = self.images()?;
        let found = images
            .iter()
            .find(|i| i.publications.iter().any(in_region))
            .or_else(|| images.iter().find(|i| i.publications.iter().any(&matches)));
        Ok(found.map(facts_of))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn image(id: &str, version: &str, arch: &str, created_at: i64, ami: Option<&str>) -> Image {
        Image {
            publications: ami
                .map(|a| Publication::Aws {
                    region: "eu-west-1".into(),
                    ami_id: a.into(),
                    snapshot_id: None,
                    name: format!("n-{a}"),
                    created_at,
                    run_id: None,
                })
                .into_iter()
                .collect(),
            ..Image::bare(
                id,
                "bastion",
                "debian-12-bastion",
                version,
                arch,
                created_at,
            )
        }
    }

    #[test]
    fn a_version_with_builds_of_two_architectures_rolls_out_per_architecture() {
        // Newest first, as the catalog lists a family.
        let family = vec![
            image("img-a2", "2", "arm64", 20, Some("ami-0a2")),
            image("img-x2", "2", "x86_64", 20, Some("ami-0b2")),
            image("img-x1", "1", "x86_64", 10, Some("ami-0b1")),
            image("img-a1", "1", "arm64", 10, None),
        ];
        let builds = builds_of(&family, &family[1]);
        assert_eq!(
            builds.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(),
            ["img-a2", "img-x2"]
        );
        let old = builds_of(&family, &family[2]);
        let refs: BTreeMap<String, ImageReference> = old
            .iter()
            .map(|b| (b.arch.clone(), reference_of(b, old.len() > 1)))
            .collect();
        assert_eq!(
            refs["arm64"],
            ImageReference::Single("webake/bastion:1@arm64".into())
        );
        assert_eq!(
            refs["x86_64"],
            ImageReference::PerRegion([("eu-west-1".into(), "ami-0b1".into())].into())
        );
        assert!(per_architecture(&family, &family[2]));
        assert!(!per_architecture(&family[2..3], &family[2]));
        assert!(
            per_architecture(&family[..1], &family[0]),
            "arm64 alone still routes"
        );
        // An image whose architecture is unknown is a build of its own.
        let mut legacy = family[2].clone();
        legacy.arch.clear();
        assert_eq!(builds_of(&family, &legacy).len(), 1);
    }
}
