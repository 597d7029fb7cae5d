//! Which installed packages have a newer version upstream, from the Packages indexes a state
//! names (each verified against the digest the signed Release gave).

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use webake_inventory::{DebVersion, Package};

use crate::error::{Error, Result};
use crate::state::{Client, Comparison, IndexState, SourceState, UpstreamState, compare};
use crate::tool::{self, Codec};

/// Uncompressed Packages indexes are ~50 MB for Debian main on one architecture.
const MAX_PACKAGES_TEXT: u64 = 1024 * 1024 * 1024;

/// An installed package with a newer version upstream.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Candidate {
    pub name: String,
    pub architecture: String,
    /// Version installed in the image.
    pub installed: String,
    /// The newest version upstream.
    pub candidate: String,
    /// Source package of the candidate (for changelogs and the security tracker).
    pub source: String,
    /// Suite and archive offering it (the first in source order when several do).
    pub suite: String,
    pub uri: String,
    /// Offered by a security suite.
    pub security: bool,
}

/// One binary package version from an index.
#[derive(Debug, Clone)]
struct Offer {
    version: DebVersion,
    source: String,
    /// Index of the source in the state.
    from: usize,
}

impl Client {
    /// The installed packages that have a newer version in the sources of `state` (pinned
    /// sources are skipped: they never move). Sorted by name and architecture.
    ///
    /// Indexes are downloaded by hash when the Release allows it (so the files are the ones the
    /// state recorded, even if the mirror moved since), concurrently, and rejected unless their
    /// sha256 matches the state.
    pub fn candidates(
        &self,
        installed: &[Package],
        state: &UpstreamState,
    ) -> Result<Vec<Candidate>> {
        let wanted: HashMap<&str, Vec<&Package>> =
            installed.iter().fold(HashMap::new(), |mut m, p| {
                m.entry(p.name.as_str()).or_default().push(p);
                m
            });
        let jobs: Vec<(usize, &SourceState, &IndexState)> = state
            .sources
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.pinned)
            .flat_map(|(n, s)| {
                s.release
                    .iter()
                    .flat_map(move |r| r.indexes.iter().map(move |i| (n, s, i)))
            })
            .collect();
        let per_index: Vec<Result<Vec<(String, String, Offer)>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = jobs
                .iter()
                .map(|&(n, s, i)| {
                    let wanted = &wanted;
                    scope.spawn(move || {
                        let text = self.packages_text(s, i)?;
                        Ok(offers(&text, n, wanted))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        // Newest offer per (name, architecture); ties go to the first source.
        let mut best: BTreeMap<(String, String), Offer> = BTreeMap::new();
        for offers in per_index {
            for (name, arch, offer) in offers? {
                match best.entry((name, arch)) {
                    std::collections::btree_map::Entry::Vacant(e) => {
                        e.insert(offer);
                    }
                    std::collections::btree_map::Entry::Occupied(mut e) => {
                        let cur = e.get();
                        let newer = offer.version.cmp(&cur.version) == Ordering::Greater
                            || (offer.version == cur.version && offer.from < cur.from);
                        if newer {
                            e.insert(offer);
                        }
                    }
                }
            }
        }
        let mut out = Vec::new();
        for p in installed {
            let Some(offer) = best.get(&(p.name.clone(), p.architecture.clone())) else {
                continue;
            };
            if offer.version > DebVersion::parse(&p.version) {
                let src = &state.sources[offer.from];
                out.push(Candidate {
                    name: p.name.clone(),
                    architecture: p.architecture.clone(),
                    installed: p.version.clone(),
                    candidate: offer.version.to_string(),
                    source: offer.source.clone(),
                    suite: src.suite.clone(),
                    uri: src.uri.clone(),
                    security: src.security,
                });
            }
        }
        out.sort();
        Ok(out)
    }

    /// Download, verify and decompress one Packages index.
    fn packages_text(&self, source: &SourceState, index: &IndexState) -> Result<Vec<u8>> {
        let id = source.id();
        let by_hash = source.release.as_ref().is_some_and(|r| r.acquire_by_hash);
        let plain_url = format!("{}/{}", source.dists_url(), index.file);
        let mut url = plain_url.clone();
        if by_hash {
            let dir = index.file.rsplit_once('/').map_or("", |(d, _)| d);
            url = format!(
                "{}/{dir}/by-hash/SHA256/{}",
                source.dists_url(),
                index.file_sha256
            );
        }
        let data = match self.fetcher.get(&id, &url, index.file_size) {
            // Like apt: a mirror that announces by-hash but lacks the file gets the plain path.
            Err(Error::HttpStatus { status: 404, .. }) if by_hash => {
                url = plain_url;
                self.fetcher.get(&id, &url, index.file_size)?
            }
            other => other?,
        };
        let actual = hex::encode(Sha256::digest(&data));
        if actual != index.file_sha256 {
            return Err(Error::DigestMismatch {
                source_id: id,
                url,
                expected: index.file_sha256.clone(),
                actual,
            });
        }
        let codec = Codec::of(&index.file).unwrap_or(Codec::Plain);
        tool::decompress(codec, data, MAX_PACKAGES_TEXT, &url)
    }
}

/// The stanzas of a Packages index whose `Package` is installed, as (name, arch, offer).
fn offers(
    text: &[u8],
    from: usize,
    wanted: &HashMap<&str, Vec<&Package>>,
) -> Vec<(String, String, Offer)> {
    let mut out = Vec::new();
    let (mut name, mut version, mut arch, mut source) = (None, None, None, None);
    let mut flush = |name: &mut Option<&str>,
                     version: &mut Option<&str>,
                     arch: &mut Option<&str>,
                     source: &mut Option<&str>| {
        if let (Some(n), Some(v), Some(a)) = (name.take(), version.take(), arch.take())
            && wanted
                .get(n)
                .is_some_and(|ps| ps.iter().any(|p| p.architecture == a))
        {
            // `Source: name` or `Source: name (version)`.
            let src = source
                .take()
                .and_then(|s| s.split_whitespace().next())
                .unwrap_or(n);
            out.push((
                n.to_owned(),
                a.to_owned(),
                Offer {
                    version: DebVersion::parse(v),
                    source: src.to_owned(),
                    from,
                },
            ));
        }
        *source = None;
    };
    for line in text.split(|&b| b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            flush(&mut name, &mut version, &mut arch, &mut source);
            continue;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let value = || std::str::from_utf8(&line[colon + 1..]).ok().map(str::trim);
        match &line[..colon] {
            b"Package" => name = value(),
            b"Version" => version = value(),
            b"Architecture" => arch = value(),
            b"Source" => source = value(),
            _ => {}
        }
    }
    flush(&mut name, &mut version, &mut arch, &mut source);
    out
}

/// The freshness verdict for an image built from `recorded` (see [`freshness`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Freshness {
    /// No source moved (or all are pinned): nothing to do.
    UpToDate { comparison: Comparison },
    /// Sources moved, but none of the image's packages has a newer version.
    NoImageUpdates { comparison: Comparison },
    /// These installed packages have newer versions.
    Updates {
        comparison: Comparison,
        candidates: Vec<Candidate>,
    },
}

impl Freshness {
    pub fn comparison(&self) -> &Comparison {
        match self {
            Freshness::UpToDate { comparison }
            | Freshness::NoImageUpdates { comparison }
            | Freshness::Updates { comparison, .. } => comparison,
        }
    }
}

/// Compare `recorded` (what the image was built from) with `current` and, when sources moved,
/// look for newer versions of the `installed` packages in the moved sources only (a package
/// newer than the installed one in a source that did not move would have been installed).
///
/// A source whose Release went back in time ([`Comparison::went_back`]) does not count as
/// moved; the caller decides whether to refuse.
pub fn freshness(
    client: &Client,
    recorded: &UpstreamState,
    current: &UpstreamState,
    installed: &[Package],
) -> Result<Freshness> {
    let comparison = compare(recorded, current);
    let moved = comparison.moved();
    if moved.is_empty() {
        return Ok(if comparison.is_unchanged() {
            Freshness::UpToDate { comparison }
        } else {
            Freshness::NoImageUpdates { comparison }
        });
    }
    let candidates = client.candidates(installed, &current.only(&moved))?;
    Ok(if candidates.is_empty() {
        Freshness::NoImageUpdates { comparison }
    } else {
        Freshness::Updates {
            comparison,
            candidates,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(name: &str, version: &str, arch: &str) -> Package {
        Package {
            name: name.into(),
            version: version.into(),
            architecture: arch.into(),
            source: name.into(),
            source_version: version.into(),
            installed_size_kib: None,
        }
    }

    #[test]
    fn offers_reads_only_installed_packages() {
        let text = b"Package: libssl3\nSource: openssl (3.0.22-1~deb12u2)\nVersion: 3.0.22-1~deb12u2\n\
Architecture: amd64\nDescription: x\n continuation\n\nPackage: tzdata\nVersion: 2025b-0+deb12u2\n\
Architecture: all\n\nPackage: libssl3\nVersion: 9\nArchitecture: i386\n\nPackage: other\nVersion: 1\nArchitecture: amd64\n";
        let installed = [
            pkg("libssl3", "3.0.20-1~deb12u2", "amd64"),
            pkg("tzdata", "2025a", "all"),
        ];
        let wanted: HashMap<&str, Vec<&Package>> = installed
            .iter()
            .map(|p| (p.name.as_str(), vec![p]))
            .collect();
        let o = offers(text, 2, &wanted);
        let got: Vec<(String, String, String, String)> = o
            .into_iter()
            .map(|(n, a, o)| (n, a, o.version.to_string(), o.source))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "libssl3".into(),
                    "amd64".into(),
                    "3.0.22-1~deb12u2".into(),
                    "openssl".into()
                ),
                (
                    "tzdata".into(),
                    "all".into(),
                    "2025b-0+deb12u2".into(),
                    "tzdata".into()
                ),
            ]
        );
    }
}
