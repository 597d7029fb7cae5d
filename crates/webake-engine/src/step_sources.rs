//! The apt sources the steps add (a vendor repository in `sources.list.d`: Docker, Kubernetes,
//! a company mirror) are upstream inputs too: a bake records them, with their keyrings and what
//! they offered; the next plan checks them, and when a package of the image has a newer
//! version there, keys the steps on a new generation of those sources, so every step runs
//! again on the same base (the base's own sources are [`crate::upstream`]'s).

use std::path::{Path, PathBuf};

use serde::Serialize;
use webake_catalog::StepSourcesRecord;
use webake_spec::LoadedRecipe;
use webake_sys::tree::Tree;
use webake_upstream::{AptSource, Candidate, Client, ClientOptions, Freshness, UpstreamState};

use crate::upstream::UpstreamStatus;
use crate::{Context, Error, Result, ResultExt};

/// What the plan found for the sources the family's newest image recorded.
#[derive(Debug, Clone, Serialize)]
pub struct StepSourcesReport {
    pub status: UpstreamStatus,
    pub summary: String,
    /// The image's packages with newer versions there (empty unless `updates`).
    pub candidates: Vec<Candidate>,
    /// The generation the steps are keyed on (empty: the sources never had an update for the
    /// image since they were first recorded).
    pub generation: String,
}

/// Check the sources the steps added, as recorded by the family's newest image. `None` when
/// there is no such image or it recorded none.
pub fn check(ctx: &Context<'_>, recipe: &LoadedRecipe) -> Result<Option<StepSourcesReport>> {
    if !ctx.catalog_exists() {
        return Ok(None);
    }
    let Some(img) = ctx
        .catalog()?
        .list_images(Some(recipe.family()))?
        .into_iter()
        .next()
    else {
        return Ok(None);
    };
    let Some(rec) = img.provenance.step_sources.clone() else {
        return Ok(None);
    };
    let sources: Vec<AptSource> = rec
        .sources
        .iter()
        .filter_map(|v| serde_json::from_value(v.clone()).ok())
        .collect();
    if sources.is_empty() {
        return Ok(None);
    }
    let names = sources
        .iter()
        .map(|s| format!("{} {}", s.uri, s.suite))
        .collect::<Vec<_>>()
        .join(", ");
    let keep = |status, summary: String| {
        Ok(Some(StepSourcesReport {
            status,
            summary,
            candidates: Vec::new(),
            generation: rec.generation.clone(),
        }))
    };
    let recorded = rec
        .state
        .as_ref()
        .and_then(|v| serde_json::from_value::<UpstreamState>(v.clone()).ok());
    let Some(recorded) = recorded else {
        return keep(
            UpstreamStatus::Unchecked,
            format!(
                "apt sources added by the steps ({names}): not checked (the image recorded no state)"
            ),
        );
    };
    let client = Client::new(ClientOptions::default());
    let current = client.check(&sources).map_err(|e| {
        Error::from(e).context("checking the apt sources the steps added, upstream")
    })?;
    let packages = img.inventory.map(|i| i.packages).unwrap_or_default();
    let verdict = webake_upstream::freshness(&client, &recorded, &current, &packages)
        .context("comparing the apt sources the steps added with upstream")?;
    match verdict {
        Freshness::UpToDate { .. } => keep(
            UpstreamStatus::UpToDate,
            format!("apt sources added by the steps up to date with upstream ({names})"),
        ),
        Freshness::NoImageUpdates { comparison } => {
            let went_back = comparison.went_back();
            if !went_back.is_empty() {
                return Err(went_back_error(&went_back));
            }
            let moved: Vec<String> = comparison.moved().iter().map(|s| s.suite.clone()).collect();
            keep(
                UpstreamStatus::NoImageUpdates,
                format!(
                    "{} (added by the steps) moved upstream, but none of the image's packages has a newer version there",
                    moved.join(", ")
                ),
            )
        }
        Freshness::Updates {
            candidates,
            comparison,
        } => {
            let went_back = comparison.went_back();
            if !went_back.is_empty() {
                return Err(went_back_error(&went_back));
            }
            Ok(Some(StepSourcesReport {
                status: UpstreamStatus::Updates,
                summary: format!(
                    "from the apt sources the steps added, {}: every step runs again",
                    crate::upstream::updates_line(&candidates)
                ),
                candidates,
                generation: current.fingerprint(),
            }))
        }
    }
}

fn went_back_error<T: std::fmt::Display>(went_back: &[T]) -> Error {
    let list: Vec<String> = went_back.iter().map(ToString::to_string).collect();
    Error::Failed(format!(
        "apt source {} (added by the steps) serves an older Release than the newest image was baked from (a stale mirror or a replay): refusing to go back",
        list.join(", ")
    ))
}

/// What to record after a bake: the sources of the finished `tree` that its base (`base_root`)
/// did not have, their keyrings copied into the cache, and what they offer now. A source that
/// cannot be checked from here is recorded without a state (and a warning): it is then not
/// checked by later plans.
pub fn record(
    ctx: &Context<'_>,
    tree: &Path,
    base_root: &Path,
    architecture: &str,
    generation: &str,
) -> Option<StepSourcesRecord> {
    let image = Tree::open(tree).ok()?;
    let base = Tree::open(base_root).ok();
    let base_ids: Vec<_> = base
        .as_ref()
        .map(|b| sources_of(b, architecture))
        .unwrap_or_default()
        .iter()
        .map(AptSource::id)
        .collect();
    let mut added: Vec<AptSource> = sources_of(&image, architecture)
        .into_iter()
        .filter(|s| !base_ids.contains(&s.id()))
        .collect();
    if added.is_empty() {
        return None;
    }
    let keyrings = ctx.workspace.cache_dir.join("keyrings");
    for s in &mut added {
        s.signed_by = copy_keyrings(&image, &s.signed_by, &keyrings);
    }
    let state = match Client::new(ClientOptions::default()).check(&added) {
        Ok(st) => serde_json::to_value(st).ok(),
        Err(e) => {
            ctx.reporter.warning(&format!(
                "the apt sources the steps added cannot be checked from the build host ({e}): later runs will not see their updates"
            ));
            None
        }
    };
    Some(StepSourcesRecord {
        sources: added
            .iter()
            .filter_map(|s| serde_json::to_value(s).ok())
            .collect(),
        state,
        generation: generation.to_string(),
    })
}

/// The `deb` sources of a tree's apt configuration.
fn sources_of(tree: &Tree, architecture: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    let mut read = |rel: &Path, deb822: bool| {
        if let Some(text) = small_file(tree, rel) {
            let text = String::from_utf8_lossy(&text).into_owned();
            out.extend(webake_upstream::parse_sources_file(
                &text,
                deb822,
                architecture,
            ));
        }
    };
    read(Path::new("etc/apt/sources.list"), false);
    let dir = Path::new("etc/apt/sources.list.d");
    for name in tree.read_dir(dir).unwrap_or_default() {
        let name = name.to_string_lossy().into_owned();
        if let Some(deb822) = match () {
            _ if name.ends_with(".list") => Some(false),
            _ if name.ends_with(".sources") => Some(true),
            _ => None,
        } {
            read(&dir.join(&name), deb822);
        }
    }
    out
}

/// A regular file of at most 1 MiB in the tree (resolved inside it), else `None`.
fn small_file(tree: &Tree, rel: &Path) -> Option<Vec<u8>> {
    let md = tree.metadata(rel).ok().flatten()?;
    if !md.is_file() || md.len() > 1 << 20 {
        return None;
    }
    tree.read(rel).ok()
}

/// Copy the keyrings a source names (paths in the image; none: the image's trusted.gpg.d and
/// trusted.gpg) into `dir` by content digest; returns their host paths.
fn copy_keyrings(image: &Tree, named: &[PathBuf], dir: &Path) -> Vec<PathBuf> {
    let paths: Vec<PathBuf> = if named.is_empty() {
        let parts = Path::new("etc/apt/trusted.gpg.d");
        image
            .read_dir(parts)
            .unwrap_or_default()
            .into_iter()
            .map(|n| parts.join(n))
            .chain(std::iter::once(PathBuf::from("etc/apt/trusted.gpg")))
            .collect()
    } else {
        named.to_vec()
    };
    let _ = std::fs::create_dir_all(dir);
    paths
        .iter()
        .filter_map(|p| {
            let data = small_file(image, p)?;
            let ext = if data.trim_ascii_start().starts_with(b"-----BEGIN PGP") {
                "asc"
            } else {
                "gpg"
            };
            let digest = webake_build::digest::sha256_hex(&data);
            let to = dir.join(format!("{}.{ext}", &digest[..24]));
            if !to.is_file() {
                webake_sys::fsutil::atomic_write(&to, &data).ok()?;
            }
            Some(to)
        })
        .collect()
}
