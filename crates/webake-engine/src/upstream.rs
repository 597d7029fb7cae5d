//! Upstream freshness of a Debian base: before a cached base (and every layer on it) is
//! reused, the signed `InRelease` files of its apt sources are checked against what the base
//! was built from. A base is a *generation*: its cache key is the configuration plus the
//! digest of the package indexes it was bootstrapped from, so a refreshed base gets a new key
//! and every step above it runs again (layers are diffs against their base).
//!
//! ```text
//! check sources (InRelease + gpgv) -> the current generation cached?  -> reuse (unchanged)
//!   else newest cached generation of this configuration:
//!     nothing moved                        -> reuse it ("up to date with upstream")
//!     moved, none of the image's packages  -> reuse it ("no updates for this image")
//!     moved, some packages newer           -> new generation: bootstrap, rerun the steps
//!   none cached                            -> new generation
//! ```

use std::path::Path;

use serde::Serialize;
use webake_build::bootstrap::BootstrapPlan;
use webake_spec::LoadedRecipe;
use webake_upstream::{Candidate, Client, ClientOptions, Freshness, UpstreamState};

use crate::{Context, Error, Result, ResultExt};

/// What the upstream check found for a plan.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamReport {
    pub status: UpstreamStatus,
    /// One line: "up to date with upstream (...)", "3 packages have updates: ...".
    pub summary: String,
    /// The packages with newer versions, security first (empty unless `updates`).
    pub candidates: Vec<Candidate>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamStatus {
    /// No source moved since the cached base was built.
    UpToDate,
    /// Sources moved, but none of the image's packages has a newer version.
    NoImageUpdates,
    /// Packages of the image have newer versions: a new base.
    Updates,
    /// Every source is a snapshot: upstream never moves.
    Pinned,
    /// No cached base of this configuration yet.
    NewBase,
    /// Not checked: the base's sources are mmdebstrap's default (non-Debian suite without a
    /// mirror).
    Unchecked,
}

/// Decide which generation of the base `bs` the bake uses, checking upstream.
pub fn choose_base(
    ctx: &Context<'_>,
    recipe: &LoadedRecipe,
    bs: BootstrapPlan,
) -> Result<(BootstrapPlan, UpstreamReport)> {
    let report = |status, summary: String| UpstreamReport {
        status,
        summary,
        candidates: Vec::new(),
    };
    if bs.sources.is_empty() {
        let why =
            "not checked: the base uses mmdebstrap's default mirror (name a mirror to check it)";
        return Ok((bs, report(UpstreamStatus::Unchecked, why.into())));
    }
    if bs.pinned() {
        let uris: Vec<&str> = bs.sources.iter().map(|s| s.uri.as_str()).collect();
        let why = format!("pinned to {}: upstream is not checked", uris.join(", "));
        let pinned = bs.for_generation("pinned", serde_json::Value::Null);
        return Ok((pinned, report(UpstreamStatus::Pinned, why)));
    }
    let client = Client::new(ClientOptions::default());
    let current = client
        .check(&bs.sources)
        .map_err(|e| Error::from(e).context("checking the base's apt sources upstream"))?;
    let state = serde_json::to_value(&current).map_err(|e| Error::Failed(e.to_string()))?;
    let fresh = bs.clone().for_generation(&current.fingerprint(), state);
    let bootstrap_dir = ctx.workspace.bootstrap_dir();
    if webake_build::bootstrap::cached_rootfs(&bootstrap_dir, &fresh.key).is_some() {
        let summary = up_to_date_line(&current);
        return Ok((fresh, report(UpstreamStatus::UpToDate, summary)));
    }
    let Some((key, recorded)) = newest_generation(&bootstrap_dir, &bs.config_key) else {
        let why = "no cached base of this configuration: bootstrapping from upstream as it is now";
        return Ok((fresh, report(UpstreamStatus::NewBase, why.into())));
    };
    let packages = image_packages(ctx, recipe, &bootstrap_dir.join(&key))?;
    let verdict = webake_upstream::freshness(&client, &recorded, &current, &packages)
        .context("comparing upstream with the cached base")?;
    let went_back = match &verdict {
        Freshness::UpToDate { comparison }
        | Freshness::NoImageUpdates { comparison }
        | Freshness::Updates { comparison, .. } => comparison.went_back(),
    };
    if !went_back.is_empty() {
        let list: Vec<String> = went_back.iter().map(ToString::to_string).collect();
        return Err(Error::Failed(format!(
            "apt source {} serves an older Release than the cached base was built from (a stale mirror or a replay): refusing to go back",
            list.join(", ")
        )));
    }
    let reuse = |status, summary| {
        let old = bs.clone().with_key(&key, &recorded);
        Ok((old, report(status, summary)))
    };
    match verdict {
        Freshness::UpToDate { .. } => reuse(UpstreamStatus::UpToDate, up_to_date_line(&recorded)),
        Freshness::NoImageUpdates { comparison } => {
            let moved: Vec<String> = comparison.moved().iter().map(|s| s.suite.clone()).collect();
            reuse(
                UpstreamStatus::NoImageUpdates,
                format!(
                    "{} moved upstream, but none of the image's {} packages has a newer version",
                    moved.join(", "),
                    packages.len()
                ),
            )
        }
        Freshness::Updates { mut candidates, .. } => {
            candidates.sort_by(|a, b| b.security.cmp(&a.security).then(a.name.cmp(&b.name)));
            let summary = updates_line(&candidates);
            Ok((
                fresh,
                UpstreamReport {
                    status: UpstreamStatus::Updates,
                    summary,
                    candidates,
                },
            ))
        }
    }
}

/// "up to date with upstream (InRelease of bookworm, bookworm-updates, bookworm-security
/// unchanged since DATE)".
fn up_to_date_line(state: &UpstreamState) -> String {
    let suites: Vec<&str> = state.sources.iter().map(|s| s.suite.as_str()).collect();
    format!(
        "up to date with upstream (InRelease of {} unchanged since {})",
        suites.join(", "),
        state.newest_date().unwrap_or("its recorded date")
    )
}

/// "3 packages have updates: libssl3 3.0.20-1~deb12u2 -> 3.0.22-1~deb12u2 (bookworm-security), ...".
pub(crate) fn updates_line(candidates: &[Candidate]) -> String {
    let shown: Vec<String> = candidates
        .iter()
        .take(8)
        .map(|c| {
            format!(
                "{} {} -> {} ({})",
                c.name, c.installed, c.candidate, c.suite
            )
        })
        .collect();
    let more = candidates.len().saturating_sub(shown.len());
    format!(
        "{} package(s) have updates: {}{}",
        candidates.len(),
        shown.join(", "),
        if more > 0 {
            format!(", and {more} more")
        } else {
            String::new()
        }
    )
}

/// The newest cached generation of a base configuration: its key and recorded state.
fn newest_generation(bootstrap_dir: &Path, config_key: &str) -> Option<(String, UpstreamState)> {
    let mut best: Option<(i64, String, UpstreamState)> = None;
    for e in std::fs::read_dir(bootstrap_dir).ok()?.flatten() {
        let Ok(text) = std::fs::read(e.path().join("meta.json")) else {
            continue;
        };
        let Ok(meta) = serde_json::from_slice::<serde_json::Value>(&text) else {
            continue;
        };
        if meta["plan"]["config_key"] != config_key || !e.path().join("rootfs").is_dir() {
            continue;
        }
        let Ok(state) = serde_json::from_value::<UpstreamState>(meta["plan"]["upstream"].clone())
        else {
            continue;
        };
        let created = meta["created"].as_i64().unwrap_or(0);
        let key = e.file_name().to_string_lossy().into_owned();
        if best.as_ref().is_none_or(|(c, _, _)| created > *c) {
            best = Some((created, key, state));
        }
    }
    best.map(|(_, k, s)| (k, s))
}

/// The packages whose updates matter: those of the family's newest image (its steps installed
/// some), else those of the cached base.
fn image_packages(
    ctx: &Context<'_>,
    recipe: &LoadedRecipe,
    base_entry: &Path,
) -> Result<Vec<webake_inventory::Package>> {
    if ctx.catalog_exists() {
        let newest = ctx
            .catalog()?
            .list_images(Some(recipe.family()))?
            .into_iter()
            .find_map(|i| i.inventory);
        if let Some(inv) = newest {
            return Ok(inv.packages);
        }
    }
    let status = base_entry.join("rootfs/var/lib/dpkg/status");
    let text = std::fs::read_to_string(&status).map_err(|e| Error::io(&status, e))?;
    Ok(webake_inventory::parse_status(&text, &status)?)
}

/// The catalog's record of an upstream check: for updates, each package's old and new version,
/// suite, security mark, the newest changelog entry of the new version (read from its .deb in
/// the package cache, no network) and the security tracker page.
///
/// `rootfs` is the base the bake installed them into: a package whose .deb is not in the
/// package cache has its changelog read from there (resolved inside that tree).
pub fn record(
    ctx: &Context<'_>,
    u: &UpstreamReport,
    rootfs: Option<&Path>,
) -> webake_catalog::UpstreamRecord {
    let status = serde_json::to_value(u.status)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    webake_catalog::UpstreamRecord {
        status,
        summary: u.summary.clone(),
        updates: update_records(ctx, &u.candidates, rootfs),
    }
}

/// One record per candidate: versions, suite, security mark, changelog entry, tracker page.
pub fn update_records(
    ctx: &Context<'_>,
    candidates: &[Candidate],
    rootfs: Option<&Path>,
) -> Vec<webake_catalog::UpdateRecord> {
    let tree = rootfs.and_then(|r| webake_sys::tree::Tree::open(r).ok());
    let packages = ctx.workspace.packages_dir();
    candidates
        .iter()
        .map(|c| webake_catalog::UpdateRecord {
            name: c.name.clone(),
            source: c.source.clone(),
            old: c.installed.clone(),
            new: c.candidate.clone(),
            suite: c.suite.clone(),
            security: c.security,
            changelog: changelog(&packages, c)
                .or_else(|| tree.as_ref().and_then(|t| installed_changelog(t, c))),
            tracker: c
                .security
                .then(|| webake_upstream::security_tracker_url(&c.source).ok())
                .flatten(),
        })
        .collect()
}

/// The newest changelog entry of the candidate's .deb, if the bake downloaded it.
fn changelog(packages: &Path, c: &Candidate) -> Option<String> {
    let file = format!(
        "{}_{}_{}.deb",
        c.name,
        c.candidate.replace(':', "%3a"),
        c.architecture
    );
    let entry = webake_upstream::newest_changelog_entry(&packages.join(file)).ok()?;
    Some(entry_text(&entry))
}

/// The newest changelog entry of the candidate as installed in `tree`, when it is the
/// candidate's version.
fn installed_changelog(tree: &webake_sys::tree::Tree, c: &Candidate) -> Option<String> {
    let path = webake_upstream::changelog_path(&c.name);
    let gz = tree.read(&path).ok()?;
    let entry = webake_upstream::newest_entry_of_changelog_gz(gz, &path).ok()?;
    (entry.version == c.candidate).then(|| entry_text(&entry))
}

fn entry_text(entry: &webake_upstream::ChangelogEntry) -> String {
    format!(
        "{} ({}) {}; {}\n{}",
        entry.source, entry.version, entry.distributions, entry.urgency, entry.changes
    )
}

/// Notes on an image's packages for reviewers (the rollout pull request, `images diff`): the
/// updates its upstream check recorded.
pub fn package_notes(
    img: &webake_catalog::Image,
) -> std::collections::BTreeMap<String, webake_rollout::PackageNote> {
    img.provenance
        .upstream
        .iter()
        .flat_map(|u| &u.updates)
        .map(|r| {
            let mut text = r.changelog.clone().unwrap_or_default();
            if let Some(t) = &r.tracker {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(&format!("Security tracker: {t}"));
            }
            (
                r.name.clone(),
                webake_rollout::PackageNote {
                    security: r.security,
                    changelog: (!text.is_empty()).then_some(text),
                },
            )
        })
        .collect()
}
