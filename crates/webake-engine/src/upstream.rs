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

use crate::source_date::SourceDate;
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

/// Decide which generation of the base `bs` the bake uses, checking upstream, and its source
/// date ([`crate::source_date`]).
pub fn choose_base(
    ctx: &Context<'_>,
    recipe: &LoadedRecipe,
    bs: BootstrapPlan,
) -> Result<(BootstrapPlan, UpstreamReport, SourceDate)> {
    let report = |status, summary: String| UpstreamReport {
        status,
        summary,
        candidates: Vec::new(),
    };
    let explicit = crate::source_date::explicit(Some(ctx), recipe)?;
    let bootstrap_dir = ctx.workspace.bootstrap_dir();
    // The cached bases of this configuration (with the explicit date, when one is given).
    let cached: Vec<CachedBase> = cached_bases(&bootstrap_dir, &bs.config_key)
        .into_iter()
        .filter(|c| explicit.as_ref().is_none_or(|e| c.source_date == e.epoch))
        .collect();
    if bs.sources.is_empty() || bs.pinned() {
        return Ok(unchecked_base(bs, explicit, &cached));
    }
    let client = Client::new(ClientOptions::default());
    let current = client
        .check(&bs.sources)
        .map_err(|e| Error::from(e).context("checking the base's apt sources upstream"))?;
    let state = serde_json::to_value(&current).map_err(|e| Error::Failed(e.to_string()))?;
    let fresh = bs.clone().for_generation(&current.fingerprint(), state);
    let fresh_date = || {
        explicit.clone().unwrap_or_else(|| {
            SourceDate::new(
                crate::source_date::of_state(&current).unwrap_or(0),
                "the newest InRelease Date of the base's sources when this base generation was bootstrapped",
            )
        })
    };
    if let Some(c) = newest(&cached, |c| c.generation == fresh.generation) {
        let sd = explicit.clone().unwrap_or_else(|| {
            SourceDate::new(
                c.source_date,
                "the newest InRelease Date of the base's sources when this base generation was bootstrapped",
            )
        });
        let summary = up_to_date_line(&current);
        let fresh = fresh.with_source_date(sd.epoch);
        return Ok((fresh, report(UpstreamStatus::UpToDate, summary), sd));
    }
    let Some(newest) = newest(&cached, |c| c.upstream.is_some()) else {
        let why = "no cached base of this configuration: bootstrapping from upstream as it is now";
        let sd = fresh_date();
        let fresh = fresh.with_source_date(sd.epoch);
        return Ok((fresh, report(UpstreamStatus::NewBase, why.into()), sd));
    };
    let recorded = newest
        .upstream
        .clone()
        .expect("kept for its recorded state");
    let packages = image_packages(ctx, recipe, &bootstrap_dir.join(&newest.key))?;
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
        let sd = SourceDate::new(
            newest.source_date,
            "the newest InRelease Date of the base's sources when this base generation was bootstrapped",
        );
        let old = bs
            .clone()
            .for_generation(
                &newest.generation,
                serde_json::to_value(&recorded).unwrap_or_default(),
            )
            .with_source_date(sd.epoch);
        debug_assert_eq!(old.key, newest.key);
        Ok((old, report(status, summary), explicit.clone().unwrap_or(sd)))
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
            let sd = fresh_date();
            Ok((
                fresh.with_source_date(sd.epoch),
                UpstreamReport {
                    status: UpstreamStatus::Updates,
                    summary,
                    candidates,
                },
                sd,
            ))
        }
    }
}

/// A base whose sources are not checked upstream (mmdebstrap's default mirror) or pinned:
/// its generation is fixed, its source date explicit, the snapshot's, or the cached base's.
fn unchecked_base(
    bs: BootstrapPlan,
    explicit: Option<SourceDate>,
    cached: &[CachedBase],
) -> (BootstrapPlan, UpstreamReport, SourceDate) {
    let report = |status, summary: String| UpstreamReport {
        status,
        summary,
        candidates: Vec::new(),
    };
    let (bs, status, why) = if bs.sources.is_empty() {
        let why =
            "not checked: the base uses mmdebstrap's default mirror (name a mirror to check it)";
        (bs, UpstreamStatus::Unchecked, why.to_string())
    } else {
        let uris: Vec<&str> = bs.sources.iter().map(|s| s.uri.as_str()).collect();
        let why = format!("pinned to {}: upstream is not checked", uris.join(", "));
        let pinned = bs.for_generation("pinned", serde_json::Value::Null);
        (pinned, UpstreamStatus::Pinned, why)
    };
    let sd = explicit
        .or_else(|| {
            crate::source_date::of_snapshot_uris(bs.sources.iter().map(|s| s.uri.as_str()))
                .map(|t| SourceDate::new(t, "the snapshot date of the base's sources"))
        })
        .or_else(|| {
            newest(cached, |c| c.generation == bs.generation).map(|c| {
                SourceDate::new(
                    c.source_date,
                    "recorded with the cached base when it was bootstrapped (its sources are not checked upstream)",
                )
            })
        })
        .unwrap_or_else(|| {
            SourceDate::new(
                jiff::Timestamp::now().as_second(),
                "now: this bake bootstraps the base, and its sources are not checked upstream (a bake from empty caches gets another date; set image.source_date_epoch to pin it)",
            )
        });
    (bs.with_source_date(sd.epoch), report(status, why), sd)
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

/// A cached base of a configuration, as its meta.json records it.
#[derive(Debug, Clone)]
struct CachedBase {
    key: String,
    created: i64,
    generation: String,
    source_date: i64,
    upstream: Option<UpstreamState>,
}

/// The cached bases of a configuration (complete entries whose plan records a source date).
fn cached_bases(bootstrap_dir: &Path, config_key: &str) -> Vec<CachedBase> {
    let Ok(entries) = std::fs::read_dir(bootstrap_dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let text = std::fs::read(e.path().join("meta.json")).ok()?;
            let meta = serde_json::from_slice::<serde_json::Value>(&text).ok()?;
            let plan = &meta["plan"];
            if plan["config_key"] != config_key || !e.path().join("rootfs").is_dir() {
                return None;
            }
            Some(CachedBase {
                key: e.file_name().to_string_lossy().into_owned(),
                created: meta["created"]
                    .as_i64()
                    .or_else(|| meta["created"].as_str().and_then(|s| s.parse().ok()))
                    .unwrap_or(0),
                generation: plan["generation"].as_str().unwrap_or_default().to_string(),
                source_date: plan["source_date"].as_i64()?,
                upstream: serde_json::from_value(plan["upstream"].clone()).ok(),
            })
        })
        .collect()
}

/// The most recently built of the cached bases that `keep` keeps.
fn newest(cached: &[CachedBase], keep: impl Fn(&CachedBase) -> bool) -> Option<&CachedBase> {
    cached
        .iter()
        .filter(|c| keep(c))
        .max_by(|a, b| a.created.cmp(&b.created).then(a.key.cmp(&b.key)))
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
