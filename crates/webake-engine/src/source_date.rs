//! A bake's source date (`SOURCE_DATE_EPOCH`): the date of its inputs, not of the build.
//!
//! mmdebstrap and every step see it, every timestamp on the disk is clamped to it, and it is
//! part of the base's key and of the inputs digest. Where it comes from, first that applies:
//!
//! 1. `--source-date-epoch` (or `SOURCE_DATE_EPOCH` in webake's environment);
//! 2. the recipe's `image.source_date_epoch`;
//! 3. the base's:
//!    - a Debian base checked upstream: the newest `Date` of its sources' InRelease files when
//!      this generation of the base was first bootstrapped (kept with the cached base, so a
//!      re-signed InRelease with the same packages does not change it);
//!    - pinned snapshot sources: the snapshot's date in their URIs;
//!    - a catalog image: the parent image's source date;
//!    - anything else (an AMI, sources that are not checked): the date recorded with the
//!      cached base, set when it was first prepared. Such a base cannot be prepared again
//!      from empty caches with the same date: name the date to make it reproducible.

use std::path::Path;

use serde::Serialize;
use webake_spec::LoadedRecipe;

use crate::{Context, Error, Result};

/// A source date and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceDate {
    /// Unix seconds.
    pub epoch: i64,
    pub origin: String,
}

impl SourceDate {
    pub fn new(epoch: i64, origin: impl Into<String>) -> Self {
        Self {
            epoch,
            origin: origin.into(),
        }
    }

    /// The instant, for templates and messages.
    pub fn timestamp(&self) -> jiff::Timestamp {
        jiff::Timestamp::from_second(self.epoch).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
    }

    pub fn record(&self) -> webake_catalog::SourceDateRecord {
        webake_catalog::SourceDateRecord {
            epoch: self.epoch,
            origin: self.origin.clone(),
        }
    }
}

impl std::fmt::Display for SourceDate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}, {})", self.epoch, self.timestamp(), self.origin)
    }
}

/// The source date given outright: the command line or environment, else the recipe.
pub fn explicit(ctx: Option<&Context<'_>>, recipe: &LoadedRecipe) -> Result<Option<SourceDate>> {
    if let Some(t) = ctx.and_then(|c| c.settings.source_date_epoch) {
        webake_spec::check_source_date(t).map_err(|e| {
            Error::Invalid(format!("--source-date-epoch (or SOURCE_DATE_EPOCH): {e}"))
        })?;
        return Ok(Some(SourceDate::new(t, "--source-date-epoch")));
    }
    Ok(recipe
        .recipe
        .image
        .source_date_epoch
        .map(|t| SourceDate::new(t, "the recipe's image.source_date_epoch")))
}

/// The newest `Date` of an upstream state's InRelease files.
pub fn of_state(state: &webake_upstream::UpstreamState) -> Option<i64> {
    state
        .newest_date()
        .and_then(|d| d.parse::<jiff::Timestamp>().ok())
        .map(|t| t.as_second())
}

/// The newest snapshot date in the sources' URIs
/// (`https://snapshot.debian.org/archive/debian/20261125T000000Z/`).
pub fn of_snapshot_uris<'a>(uris: impl IntoIterator<Item = &'a str>) -> Option<i64> {
    uris.into_iter()
        .filter_map(|u| {
            u.split('/').find_map(|seg| {
                jiff::fmt::strtime::parse("%Y%m%dT%H%M%SZ", seg)
                    .ok()
                    .and_then(|p| p.to_datetime().ok())
                    .and_then(|dt| jiff::tz::TimeZone::UTC.to_timestamp(dt).ok())
                    .map(|t| t.as_second())
            })
        })
        .max()
}

/// The date recorded with a cached base (`source_date` in its meta.json).
pub fn recorded(bootstrap_dir: &Path, key: &str) -> Option<i64> {
    let text = std::fs::read(bootstrap_dir.join(key).join("meta.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
    v["source_date"]
        .as_i64()
        .or_else(|| v["plan"]["source_date"].as_i64())
}

/// The source date of a prepared base (an AMI, a catalog image): explicit, the parent image's,
/// the one recorded with the cached base, else now (recorded when the base is prepared).
pub fn for_prepared(ctx: &Context<'_>, recipe: &LoadedRecipe, key: &str) -> Result<SourceDate> {
    if let Some(sd) = explicit(Some(ctx), recipe)? {
        return Ok(sd);
    }
    if let webake_spec::Base::Image(query) = &recipe.recipe.base {
        let parent = crate::base::parent_image(ctx, query)?;
        return Ok(match &parent.provenance.source_date {
            Some(r) => SourceDate::new(r.epoch, format!("the parent image {}'s", parent.id)),
            None => SourceDate::new(
                parent.created_at,
                format!(
                    "the parent image {}'s bake time (it records no source date)",
                    parent.id
                ),
            ),
        });
    }
    let dir = ctx.workspace.bootstrap_dir();
    Ok(match recorded(&dir, key) {
        Some(t) => SourceDate::new(t, "recorded with the cached base when it was prepared"),
        None => SourceDate::new(
            jiff::Timestamp::now().as_second(),
            "now: the base is prepared by this bake (a bake from empty caches gets another date; set image.source_date_epoch to pin it)",
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_uris_give_their_date() {
        assert_eq!(
            of_snapshot_uris([
                "https://snapshot.debian.org/archive/debian/20261125T000000Z/",
                "https://snapshot.debian.org/archive/debian-security/20261125T120000Z",
            ]),
            Some(1_795_564_800 + 12 * 3600)
        );
        assert_eq!(of_snapshot_uris(["http://deb.debian.org/debian"]), None);
    }
}
