//! `gc`: retire old images safely.
//!
//! [`plan`] decides, per image, keep or retire, and says why: per family the newest N are
//! kept, and so is anything younger than the age limit, anything a cluster repository refers
//! to (its default branch, its base branch, every `webake/*` branch: webake-rollout's
//! [`webake_rollout::find_references`]) and, with AWS, any AMI an instance, a launch template
//! or an Auto Scaling group uses in its region (webake-aws's [`webake_aws::amis_in_use`]).
//! Nothing is changed while planning. [`execute`] carries out exactly that plan: on AWS it
//! deprecates first (an optional grace period keeps the AMI until a later run), then
//! deregisters and deletes the snapshots, region by region; locally it deletes the artifacts
//! and the SBOMs next to them; each step is recorded in the catalog as it completes
//! ([`webake_catalog::Catalog::record_removal`]), so a failure leaves the catalog saying
//! exactly what remains, and an image of which nothing remains becomes a tombstone.
//! The layer and bootstrap caches are not touched (`webake cache gc` trims them).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use webake_aws::{AmiUse, ClientSettings, Session};
use webake_catalog::{ArtifactFormat, Image, ImageId, Publication, Removed};
use webake_rollout::{RepoLocation, RepositoryReferences};

use crate::events::{AwsBridge, RolloutBridge};
use crate::{Context, Error, Result, ResultExt};

/// A cluster repository whose references keep images.
#[derive(Debug, Clone)]
pub struct GcRepository {
    /// A path or a URL git can clone.
    pub location: String,
    /// The rollout config inside it (it may name a base branch).
    pub config: String,
    /// A base branch to read besides the default branch (a rollout target's).
    pub base_branch: Option<String>,
}

/// AWS for `gc --aws`.
#[derive(Debug, Clone)]
pub struct GcAws {
    /// Regions to ask for AMIs in use besides those the images were published to.
    pub regions: Vec<String>,
    pub client: ClientSettings,
}

/// What `gc` may retire (plain options; the CLI builds them).
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Families to collect (empty: every family in the catalog).
    pub families: Vec<String>,
    /// Keep the newest N images of each family (at least 1).
    pub keep: usize,
    /// Keep images younger than this.
    pub older_than: Option<Duration>,
    pub repositories: Vec<GcRepository>,
    /// Retire AMIs too (without it, an image with AMIs is kept).
    pub aws: Option<GcAws>,
    /// Only deprecate AMIs; remove nothing.
    pub deprecate_only: bool,
    /// Deregister an AMI only this long after it was deprecated (a first run deprecates).
    pub grace: Option<Duration>,
}

/// Why an image is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum KeepReason {
    /// One of the newest N of its family (`rank` 1 is the newest).
    Newest { rank: usize, keep: usize },
    /// Younger than the age limit.
    Younger {
        age_seconds: i64,
        limit_seconds: u64,
    },
    /// A cluster repository refers to it.
    Referenced {
        repository: String,
        branch: String,
        commit: String,
        file: String,
        line: usize,
        what: String,
        reference: String,
    },
    /// Something in AWS uses its AMI.
    InUse {
        region: String,
        ami_id: String,
        by: String,
    },
    /// It has AMIs and `--aws` was not given.
    PublishedToAws { regions: Vec<String> },
    /// Its AMI is deprecated and waits for the grace period to end.
    Grace {
        region: String,
        deprecated_at: i64,
        until: i64,
    },
    /// `--deprecate-only`: its AMIs are deprecated, nothing is removed.
    DeprecateOnly,
}

impl std::fmt::Display for KeepReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Newest { rank, keep } => write!(f, "newest {rank} of {keep}"),
            Self::Younger {
                age_seconds,
                limit_seconds,
            } => write!(
                f,
                "younger than {} ({} old)",
                human_duration(*limit_seconds as i64),
                human_duration(*age_seconds)
            ),
            Self::Referenced {
                repository,
                branch,
                file,
                line,
                reference,
                ..
            } => write!(
                f,
                "referenced by {repository} {file}:{line} at branch {branch} ({reference})"
            ),
            Self::InUse { region, ami_id, by } => write!(f, "{ami_id} used by {by} in {region}"),
            Self::PublishedToAws { regions } => write!(
                f,
                "has AMIs in {} (gc --aws retires them)",
                regions.join(", ")
            ),
            Self::Grace { region, until, .. } => {
                write!(f, "deprecated in {region}, grace until {}", time(*until))
            }
            Self::DeprecateOnly => f.write_str("--deprecate-only"),
        }
    }
}

/// One step of retiring an image, in the order they run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    Deprecate {
        region: String,
        ami_id: String,
    },
    /// Deregister, then delete the AMI's snapshots (those it reports, and the catalog's).
    Deregister {
        region: String,
        ami_id: String,
        snapshot_id: Option<String>,
    },
    /// The snapshot of an AMI an earlier run deregistered.
    DeleteSnapshot {
        region: String,
        snapshot_id: String,
    },
    DeleteFile {
        path: PathBuf,
        bytes: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        format: Option<ArtifactFormat>,
    },
    /// Replace the catalog image by its tombstone.
    Tombstone,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Deprecate { region, ami_id } => write!(f, "deprecate {ami_id} in {region}"),
            Self::Deregister {
                region,
                ami_id,
                snapshot_id,
            } => {
                write!(f, "deregister {ami_id} in {region}")?;
                match snapshot_id {
                    Some(s) => write!(f, " and delete {s}"),
                    None => f.write_str(" and delete its snapshots"),
                }
            }
            Self::DeleteSnapshot {
                region,
                snapshot_id,
            } => write!(f, "delete {snapshot_id} in {region}"),
            Self::DeleteFile { path, bytes, .. } => write!(
                f,
                "delete {} ({})",
                path.display(),
                webake_inventory::human_bytes(*bytes)
            ),
            Self::Tombstone => f.write_str("keep a tombstone in the catalog"),
        }
    }
}

/// The decision for one image.
#[derive(Debug, Clone, Serialize)]
pub struct ImagePlan {
    pub id: ImageId,
    pub name: String,
    pub family: String,
    pub version: String,
    pub created_at: i64,
    /// Why it is kept; empty when it is retired.
    pub keep: Vec<KeepReason>,
    /// What `execute` does to it (a kept image may still be deprecated).
    pub actions: Vec<Action>,
}

impl ImagePlan {
    pub fn kept(&self) -> bool {
        !self.keep.is_empty()
    }
}

/// A repository as read for the plan.
#[derive(Debug, Clone, Serialize)]
pub struct RepositoryRead {
    pub location: String,
    /// Each branch read and its commit.
    pub branches: Vec<(String, String)>,
}

/// What `gc` will do, and why; executed as is by [`execute`].
#[derive(Debug, Clone, Serialize)]
pub struct GcPlan {
    /// When the plan was made (Unix seconds): ages count from here.
    pub now: i64,
    pub keep: usize,
    pub older_than_seconds: Option<u64>,
    pub deprecate_only: bool,
    pub repositories: Vec<RepositoryRead>,
    /// Regions asked for AMIs in use (empty without `--aws`).
    pub regions: Vec<String>,
    /// Per family, newest first.
    pub images: Vec<ImagePlan>,
    #[serde(skip)]
    client: Option<ClientSettings>,
}

impl GcPlan {
    /// Bytes of local files the plan deletes.
    pub fn bytes(&self) -> u64 {
        self.images
            .iter()
            .flat_map(|i| &i.actions)
            .map(|a| match a {
                Action::DeleteFile { bytes, .. } => *bytes,
                _ => 0,
            })
            .sum()
    }

    /// Whether the plan changes anything.
    pub fn is_empty(&self) -> bool {
        self.images.iter().all(|i| i.actions.is_empty())
    }
}

/// Parse an age: a number and a unit, `s`, `m`, `h`, `d` or `w` (`30d`, `12h`, `2w`).
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and a unit (30d, 12h, 2w)"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("{text:?}: the unit is one of s, m, h, d, w")),
    };
    Ok(Duration::from_secs(n * secs))
}

fn human_duration(secs: i64) -> String {
    match secs.abs() {
        s if s >= 86_400 => format!("{}d", secs / 86_400),
        s if s >= 3600 => format!("{}h", secs / 3600),
        s if s >= 60 => format!("{}m", secs / 60),
        _ => format!("{secs}s"),
    }
}

fn time(secs: i64) -> String {
    jiff::Timestamp::from_second(secs)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| secs.to_string())
}

// ---------------------------------------------------------------------------------------
// plan

/// Decide what to retire. Reads the catalog, the cluster repositories and (with AWS) what
/// uses AMIs; changes nothing.
pub fn plan(ctx: &Context<'_>, opts: &GcOptions) -> Result<GcPlan> {
    if opts.keep == 0 {
        return Err(Error::Invalid(
            "--keep must be at least 1: gc never removes the newest image of a family".into(),
        ));
    }
    let now = jiff::Timestamp::now().as_second();
    let images = images_in_scope(ctx, opts)?;
    let repos = read_repositories(ctx, opts)?;
    let (regions, uses) = match &opts.aws {
        Some(aws) => amis_in_use(ctx, aws, &images)?,
        None => (Vec::new(), Vec::new()),
    };
    let mut out = GcPlan {
        now,
        keep: opts.keep,
        older_than_seconds: opts.older_than.map(|d| d.as_secs()),
        deprecate_only: opts.deprecate_only,
        repositories: repos
            .iter()
            .map(|r| RepositoryRead {
                location: r.location.clone(),
                branches: r.branches.clone(),
            })
            .collect(),
        regions,
        images: Vec::new(),
        client: opts.aws.as_ref().map(|a| a.client.clone()),
    };
    let mut rank: BTreeMap<&str, usize> = BTreeMap::new();
    for (img, deprecated) in &images {
        let r = rank.entry(img.family.as_str()).or_default();
        *r += 1;
        let mut keep = protections(img, *r, now, opts, &repos, &uses);
        let actions = decide(img, deprecated, &mut keep, opts, now, ctx);
        out.images.push(ImagePlan {
            id: img.id.clone(),
            name: img.name.clone(),
            family: img.family.clone(),
            version: img.version.clone(),
            created_at: img.created_at,
            keep,
            actions,
        });
    }
    Ok(out)
}

/// The images of the chosen families, newest first per family, with their deprecations.
fn images_in_scope(
    ctx: &Context<'_>,
    opts: &GcOptions,
) -> Result<Vec<(Image, BTreeMap<String, i64>)>> {
    if !ctx.catalog_exists() {
        return Ok(Vec::new());
    }
    let catalog = ctx.catalog()?;
    let mut images = catalog.list_images(None)?;
    images.retain(|i| opts.families.is_empty() || opts.families.contains(&i.family));
    // list_images is newest first; a stable sort by family keeps that order within one.
    images.sort_by(|a, b| a.family.cmp(&b.family));
    images
        .into_iter()
        .map(|i| {
            let d = catalog.deprecations(&i.id)?;
            Ok((i, d))
        })
        .collect()
}

fn read_repositories(ctx: &Context<'_>, opts: &GcOptions) -> Result<Vec<RepositoryReferences>> {
    let bridge = RolloutBridge(ctx.reporter);
    let mut out = Vec::new();
    for repo in &opts.repositories {
        ctx.check_cancel()?;
        let found = webake_rollout::find_references(
            &RepoLocation::parse(&repo.location),
            &repo.config,
            repo.base_branch.as_deref(),
            &bridge,
        )
        .with_context(|| format!("finding image references in {}", repo.location))?;
        out.push(found);
    }
    Ok(out)
}

/// The regions to ask (every region an image has an AMI in, and the options') and the uses
/// of AMIs found there.
fn amis_in_use(
    ctx: &Context<'_>,
    aws: &GcAws,
    images: &[(Image, BTreeMap<String, i64>)],
) -> Result<(Vec<String>, Vec<AmiUse>)> {
    let mut regions: Vec<String> = aws.regions.clone();
    for (img, _) in images {
        regions.extend(img.publications.iter().filter_map(|p| match p {
            Publication::Aws { region, .. } => Some(region.clone()),
            Publication::Local { .. } => None,
        }));
    }
    regions.sort();
    regions.dedup();
    let Some(home) = regions.first().cloned() else {
        return Ok((regions, Vec::new()));
    };
    let bridge = AwsBridge(ctx.reporter);
    let uses = crate::aws::block_on(ctx, async {
        let session = Session::new(&home, &aws.client).await;
        webake_aws::amis_in_use(&session, &regions, &bridge).await
    })
    .context("listing the AMIs in use")?;
    Ok((regions, uses))
}

/// Every reason to keep `img` (the `rank`-th newest of its family).
fn protections(
    img: &Image,
    rank: usize,
    now: i64,
    opts: &GcOptions,
    repos: &[RepositoryReferences],
    uses: &[AmiUse],
) -> Vec<KeepReason> {
    let mut keep = Vec::new();
    if rank <= opts.keep {
        keep.push(KeepReason::Newest {
            rank,
            keep: opts.keep,
        });
    }
    let age = now - img.created_at;
    if let Some(limit) = opts.older_than
        && age < limit.as_secs() as i64
    {
        keep.push(KeepReason::Younger {
            age_seconds: age,
            limit_seconds: limit.as_secs(),
        });
    }
    for repo in repos {
        for r in repo
            .references
            .iter()
            .filter(|r| refers_to(&r.reference, img))
        {
            keep.push(KeepReason::Referenced {
                repository: repo.location.clone(),
                branch: r.branch.clone(),
                commit: r.commit.clone(),
                file: r.file.clone(),
                line: r.line,
                what: r.what.clone(),
                reference: r.reference.clone(),
            });
        }
    }
    for u in uses {
        if img
            .publications
            .iter()
            .any(|p| p.ami() == Some((&u.region, &u.ami_id)))
        {
            keep.push(KeepReason::InUse {
                region: u.region.clone(),
                ami_id: u.ami_id.clone(),
                by: u.user.to_string(),
            });
        }
    }
    keep
}

/// Does `reference` name `img`: its local name, one of its AMI ids, or `OWNER/NAME` of one of
/// its AMIs' names?
fn refers_to(reference: &str, img: &Image) -> bool {
    if reference == webake_rollout::local_reference(&img.name, &img.version)
        || reference
            == webake_rollout::local_reference(&img.name, &format!("{}@{}", img.version, img.arch))
    {
        return true;
    }
    img.publications.iter().any(|p| match p {
        Publication::Aws { ami_id, name, .. } => {
            (!ami_id.is_empty() && reference == ami_id)
                || reference.split_once('/').is_some_and(|(_, n)| n == name)
        }
        Publication::Local { .. } => false,
    })
}

/// The actions for `img` given what protects it (`keep`, to which the grace period and the
/// options may add): AWS steps per region, then the local files and the tombstone once every
/// region is done.
fn decide(
    img: &Image,
    deprecated: &BTreeMap<String, i64>,
    keep: &mut Vec<KeepReason>,
    opts: &GcOptions,
    now: i64,
    ctx: &Context<'_>,
) -> Vec<Action> {
    let aws: Vec<(&str, &str, Option<&str>)> = img
        .publications
        .iter()
        .filter_map(|p| match p {
            Publication::Aws {
                region,
                ami_id,
                snapshot_id,
                ..
            } => Some((region.as_str(), ami_id.as_str(), snapshot_id.as_deref())),
            Publication::Local { .. } => None,
        })
        .collect();
    if !keep.is_empty() {
        return Vec::new();
    }
    if !aws.is_empty() && opts.aws.is_none() {
        let regions = aws.iter().map(|(r, _, _)| r.to_string()).collect();
        keep.push(KeepReason::PublishedToAws { regions });
        return Vec::new();
    }
    let (mut actions, ready) = aws_actions(&aws, deprecated, keep, opts, now);
    if opts.deprecate_only {
        keep.push(KeepReason::DeprecateOnly);
        return actions;
    }
    if ready {
        actions.extend(local_files(img, ctx));
        actions.push(Action::Tombstone);
    }
    actions
}

/// The AWS actions of an unprotected image, and whether every region can be finished now.
fn aws_actions(
    aws: &[(&str, &str, Option<&str>)],
    deprecated: &BTreeMap<String, i64>,
    keep: &mut Vec<KeepReason>,
    opts: &GcOptions,
    now: i64,
) -> (Vec<Action>, bool) {
    let mut actions = Vec::new();
    let mut ready = true;
    for &(region, ami, snapshot) in aws {
        if ami.is_empty() {
            if let (Some(s), false) = (snapshot, opts.deprecate_only) {
                actions.push(Action::DeleteSnapshot {
                    region: region.into(),
                    snapshot_id: s.into(),
                });
            }
            continue;
        }
        let since = deprecated.get(region).copied();
        if since.is_none() {
            actions.push(Action::Deprecate {
                region: region.into(),
                ami_id: ami.into(),
            });
        }
        if opts.deprecate_only {
            ready = false;
            continue;
        }
        let since = since.unwrap_or(now);
        if let Some(grace) = opts.grace
            && since + grace.as_secs() as i64 > now
        {
            keep.push(KeepReason::Grace {
                region: region.into(),
                deprecated_at: since,
                until: since + grace.as_secs() as i64,
            });
            ready = false;
            continue;
        }
        actions.push(Action::Deregister {
            region: region.into(),
            ami_id: ami.into(),
            snapshot_id: snapshot.map(str::to_string),
        });
    }
    (actions, ready)
}

/// The image's artifacts, then the SBOMs the bake wrote next to them (`NAME-VERSION.spdx.json`
/// and `.cdx.json`, in the artifacts' directories and the image's own).
fn local_files(img: &Image, ctx: &Context<'_>) -> Vec<Action> {
    let mut actions: Vec<Action> = img
        .artifacts
        .iter()
        .map(|a| Action::DeleteFile {
            path: a.path.clone(),
            bytes: std::fs::metadata(&a.path).map(|m| m.len()).unwrap_or(0),
            format: Some(a.format),
        })
        .collect();
    let mut dirs: Vec<PathBuf> = img
        .artifacts
        .iter()
        .filter_map(|a| a.path.parent().map(Path::to_path_buf))
        .collect();
    dirs.push(ctx.workspace.image_dir(&img.id));
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        for ext in ["spdx.json", "cdx.json"] {
            let path = dir.join(format!("{}-{}.{ext}", img.name, img.version));
            let Ok(m) = std::fs::metadata(&path) else {
                continue;
            };
            if !actions
                .iter()
                .any(|a| matches!(a, Action::DeleteFile { path: p, .. } if p == &path))
            {
                actions.push(Action::DeleteFile {
                    path,
                    bytes: m.len(),
                    format: None,
                });
            }
        }
    }
    actions
}

// ---------------------------------------------------------------------------------------
// execute

/// An AMI `execute` deprecated.
#[derive(Debug, Clone, Serialize)]
pub struct Deprecated {
    pub image: ImageId,
    pub region: String,
    pub ami_id: String,
}

/// One thing `execute` removed.
#[derive(Debug, Clone, Serialize)]
pub struct RemovedItem {
    pub image: ImageId,
    pub removed: Removed,
}

/// A step that failed; the rest of its region (AWS) or of its image (local) was not run.
#[derive(Debug, Clone, Serialize)]
pub struct GcFailure {
    pub image: ImageId,
    pub step: String,
    pub error: String,
}

/// What remains of an image `execute` could not finish, as the catalog says now.
#[derive(Debug, Clone, Serialize)]
pub struct Remains {
    pub image: ImageId,
    pub remains: Vec<String>,
}

/// What `execute` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    pub deprecated: Vec<Deprecated>,
    /// In the order removed.
    pub removed: Vec<RemovedItem>,
    /// Images replaced by their tombstone.
    pub tombstones: Vec<ImageId>,
    /// Bytes of local files deleted.
    pub freed_bytes: u64,
    pub failures: Vec<GcFailure>,
    pub remains: Vec<Remains>,
}

/// Why a failed step stops: the cloud refused (recorded, the next region goes on), or the
/// command cannot go on (cancelled, the catalog cannot record what was done).
enum StepError {
    Step(String),
    Fatal(Error),
}

impl From<Error> for StepError {
    fn from(e: Error) -> Self {
        Self::Fatal(e)
    }
}

/// Carry out `plan` (made by [`plan`]): per image, the AWS steps region by region (a failure
/// stops that region and keeps the image's files), then the local files and the tombstone.
/// Each step is recorded in the catalog as it completes. Failed steps are in the report
/// ([`report_result`] turns them into an error); an error here means the command could not go
/// on (cancelled, or the catalog could not record a completed step).
pub fn execute(ctx: &Context<'_>, plan: &GcPlan) -> Result<GcReport> {
    let mut report = GcReport::default();
    for img in plan.images.iter().filter(|i| !i.actions.is_empty()) {
        ctx.check_cancel()?;
        let reason = retire_reason(plan, img);
        let failed_before = report.failures.len();
        run_aws(ctx, plan, img, &reason, &mut report)?;
        if report.failures.len() == failed_before {
            run_local(ctx, img, &reason, &mut report)?;
        }
        if report.failures.len() > failed_before {
            let catalog = ctx.catalog()?;
            if let Some(now) = catalog.get_image(&img.id)? {
                report.remains.push(Remains {
                    image: img.id.clone(),
                    remains: catalog.remains(&now)?,
                });
            }
        }
    }
    Ok(report)
}

/// The plan's failures as an error naming each step and what remains.
pub fn report_result(report: &GcReport) -> Result<()> {
    if report.failures.is_empty() {
        return Ok(());
    }
    let mut msg = format!("gc could not finish {} step(s):", report.failures.len());
    for f in &report.failures {
        let _ = write!(msg, "\n  {} {}: {}", f.image, f.step, f.error);
    }
    for r in &report.remains {
        let _ = write!(msg, "\n  {} still has: {}", r.image, r.remains.join(", "));
    }
    Err(Error::Failed(msg))
}

fn retire_reason(plan: &GcPlan, img: &ImagePlan) -> String {
    let mut why = format!(
        "webake gc: not among the newest {} of {}",
        plan.keep, img.family
    );
    if let Some(limit) = plan.older_than_seconds {
        let _ = write!(why, ", older than {}", human_duration(limit as i64));
    }
    let n = plan.repositories.len();
    let _ = write!(
        why,
        ", not referenced in the {n} cluster {} read",
        if n == 1 { "repository" } else { "repositories" }
    );
    if !plan.regions.is_empty() {
        let _ = write!(why, ", its AMIs unused in {}", plan.regions.join(", "));
    }
    why
}

fn region_of(a: &Action) -> Option<&str> {
    match a {
        Action::Deprecate { region, .. }
        | Action::Deregister { region, .. }
        | Action::DeleteSnapshot { region, .. } => Some(region),
        Action::DeleteFile { .. } | Action::Tombstone => None,
    }
}

/// The image's AWS steps, region by region, on one runtime and one session.
fn run_aws(
    ctx: &Context<'_>,
    plan: &GcPlan,
    img: &ImagePlan,
    reason: &str,
    report: &mut GcReport,
) -> Result<()> {
    let mut regions: Vec<&str> = img.actions.iter().filter_map(region_of).collect();
    regions.dedup();
    let Some(home) = regions.first().copied() else {
        return Ok(());
    };
    let client = plan.client.clone().ok_or_else(|| {
        Error::Invalid("the gc plan has AWS steps but no AWS settings (--aws)".into())
    })?;
    let bridge = AwsBridge(ctx.reporter);
    crate::aws::block_on(ctx, async {
        let session = Session::new(home, &client).await;
        for region in &regions {
            for step in img.actions.iter().filter(|a| region_of(a) == Some(region)) {
                match aws_step(ctx, &session, &bridge, img, step, reason, report).await {
                    Ok(()) => {}
                    Err(StepError::Step(error)) => {
                        report.failures.push(GcFailure {
                            image: img.id.clone(),
                            step: step.to_string(),
                            error,
                        });
                        break;
                    }
                    Err(StepError::Fatal(e)) => return Err(e),
                }
            }
        }
        Ok::<(), Error>(())
    })
}

async fn aws_step(
    ctx: &Context<'_>,
    session: &Session,
    bridge: &AwsBridge<'_>,
    img: &ImagePlan,
    step: &Action,
    reason: &str,
    report: &mut GcReport,
) -> std::result::Result<(), StepError> {
    let failed = |e: webake_aws::Error| StepError::Step(crate::error::chain(&e));
    match step {
        Action::Deprecate { region, ami_id } => {
            let now = jiff::Timestamp::now();
            webake_aws::deprecate_image(session, region, ami_id, now, bridge)
                .await
                .map_err(failed)?;
            ctx.catalog()?
                .mark_deprecated(&img.id, region, ami_id, now.as_second())
                .map_err(Error::from)?;
            report.deprecated.push(Deprecated {
                image: img.id.clone(),
                region: region.clone(),
                ami_id: ami_id.clone(),
            });
        }
        Action::Deregister {
            region,
            ami_id,
            snapshot_id,
        } => {
            let mut snapshots = webake_aws::deregister_image(session, region, ami_id, bridge)
                .await
                .map_err(failed)?;
            if let Some(s) = snapshot_id
                && !snapshots.contains(s)
            {
                snapshots.push(s.clone());
            }
            let ami = Removed::Ami {
                region: region.clone(),
                ami_id: ami_id.clone(),
                snapshots: snapshots.clone(),
            };
            record(ctx, img, ami, reason, report)?;
            for s in &snapshots {
                delete_snapshot(ctx, session, bridge, img, region, s, reason, report).await?;
            }
        }
        Action::DeleteSnapshot {
            region,
            snapshot_id,
        } => {
            delete_snapshot(
                ctx,
                session,
                bridge,
                img,
                region,
                snapshot_id,
                reason,
                report,
            )
            .await?
        }
        Action::DeleteFile { .. } | Action::Tombstone => {}
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn delete_snapshot(
    ctx: &Context<'_>,
    session: &Session,
    bridge: &AwsBridge<'_>,
    img: &ImagePlan,
    region: &str,
    snapshot_id: &str,
    reason: &str,
    report: &mut GcReport,
) -> std::result::Result<(), StepError> {
    webake_aws::delete_snapshot(session, region, snapshot_id, bridge)
        .await
        .map_err(|e| {
            StepError::Step(format!(
                "deleting {snapshot_id} in {region}: {}",
                crate::error::chain(&e)
            ))
        })?;
    let removed = Removed::Snapshot {
        region: region.to_string(),
        snapshot_id: snapshot_id.to_string(),
    };
    record(ctx, img, removed, reason, report)?;
    Ok(())
}

/// Record a completed removal in the catalog at once (and in the report).
fn record(
    ctx: &Context<'_>,
    img: &ImagePlan,
    removed: Removed,
    reason: &str,
    report: &mut GcReport,
) -> Result<()> {
    ctx.catalog()?
        .record_removal(
            &img.id,
            &removed,
            reason,
            jiff::Timestamp::now().as_second(),
        )
        .with_context(|| {
            format!(
                "{removed} of image {} is gone, but the catalog could not record it",
                img.id
            )
        })?;
    ctx.reporter
        .note(&format!("removed {removed} ({})", img.id));
    report.removed.push(RemovedItem {
        image: img.id.clone(),
        removed,
    });
    Ok(())
}

/// The image's files, then its tombstone; a file that cannot be deleted stops both.
fn run_local(
    ctx: &Context<'_>,
    img: &ImagePlan,
    reason: &str,
    report: &mut GcReport,
) -> Result<()> {
    for step in &img.actions {
        ctx.check_cancel()?;
        match step {
            Action::DeleteFile {
                path,
                bytes,
                format,
            } => {
                let freed = match std::fs::remove_file(path) {
                    Ok(()) => *bytes,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
                    Err(e) => {
                        report.failures.push(GcFailure {
                            image: img.id.clone(),
                            step: step.to_string(),
                            error: format!("{}: {e}", path.display()),
                        });
                        return Ok(());
                    }
                };
                report.freed_bytes += freed;
                let file = Removed::File {
                    path: path.clone(),
                    bytes: *bytes,
                    format: *format,
                };
                record(ctx, img, file, reason, report)?;
            }
            Action::Tombstone => {
                // The image's own directory, if the bake's files were all it held.
                let _ = std::fs::remove_dir(ctx.workspace.image_dir(&img.id));
                ctx.catalog()?
                    .bury(&img.id, reason, jiff::Timestamp::now().as_second())?;
                ctx.reporter
                    .note(&format!("image {} is now a tombstone", img.id));
                report.tombstones.push(img.id.clone());
            }
            _ => {}
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// text

/// The plan as text: per image, kept (and why) or retired (and how), then the totals.
pub fn plan_text(plan: &GcPlan, dry_run: bool) -> String {
    let mut out = String::new();
    let mut family = "";
    for img in &plan.images {
        if img.family != family {
            family = &img.family;
            let _ = writeln!(out, "{family}:");
        }
        let what = format!("{} {} {}", img.id, img.name, img.version);
        if img.kept() {
            let why: Vec<String> = img.keep.iter().map(ToString::to_string).collect();
            let _ = writeln!(out, "  keep    {what}: {}", why.join("; "));
        } else {
            let _ = writeln!(out, "  retire  {what}:");
        }
        for a in &img.actions {
            let _ = writeln!(out, "            {a}");
        }
    }
    let retired = plan.images.iter().filter(|i| !i.kept()).count();
    let verb = if dry_run { "would retire" } else { "retiring" };
    let _ = write!(
        out,
        "{verb} {retired} of {} image(s), {} of files",
        plan.images.len(),
        webake_inventory::human_bytes(plan.bytes())
    );
    out.push_str(if dry_run {
        " (dry run: nothing changed)\n"
    } else {
        "\n"
    });
    out
}

/// What `execute` did, as text.
pub fn report_text(report: &GcReport) -> String {
    let mut out = String::new();
    for d in &report.deprecated {
        let _ = writeln!(out, "deprecated {} in {} ({})", d.ami_id, d.region, d.image);
    }
    for r in &report.removed {
        let _ = writeln!(out, "removed {} ({})", r.removed, r.image);
    }
    for t in &report.tombstones {
        let _ = writeln!(out, "tombstone {t}");
    }
    for f in &report.failures {
        let _ = writeln!(out, "FAILED {} {}: {}", f.image, f.step, f.error);
    }
    for r in &report.remains {
        let _ = writeln!(out, "{} still has: {}", r.image, r.remains.join(", "));
    }
    let _ = writeln!(
        out,
        "freed {} locally, {} image(s) retired",
        webake_inventory::human_bytes(report.freed_bytes),
        report.tombstones.len()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(30 * 86_400)
        );
        assert_eq!(
            parse_duration("12h").unwrap(),
            Duration::from_secs(12 * 3600)
        );
        assert_eq!(
            parse_duration("2w").unwrap(),
            Duration::from_secs(14 * 86_400)
        );
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("3y").is_err());
    }

    #[test]
    fn references_name_images_by_ami_name_and_local_name() {
        let img = Image {
            publications: vec![Publication::Aws {
                region: "eu-west-1".into(),
                ami_id: "ami-0123".into(),
                snapshot_id: None,
                name: "k8s-node-2026.11.18-x86_64".into(),
                created_at: 0,
                run_id: None,
            }],
            ..Image::bare("img-1", "k8s-node", "k8s-node", "2026.11.18", "x86_64", 0)
        };
        assert!(refers_to("ami-0123", &img));
        assert!(refers_to("123456789012/k8s-node-2026.11.18-x86_64", &img));
        assert!(refers_to("webake/k8s-node:2026.11.18", &img));
        assert!(!refers_to("ami-01234", &img));
        assert!(!refers_to("webake/k8s-node:2026.11.25", &img));
    }
}
