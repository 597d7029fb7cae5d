//! Upstream state: what the signed InRelease of every source said, and how two states compare.

use std::collections::BTreeMap;
use std::path::PathBuf;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::gpg;
use crate::http::{Fetcher, Timeouts};
use crate::release::{self, FileDigest, Release};
use crate::sources::{AptSource, DEBIAN_ARCHIVE_KEYRING, SourceId};
use crate::tool::Codec;

/// Version of the serialized [`UpstreamState`], bumped on incompatible changes.
pub const STATE_FORMAT: u32 = 1;

/// How far in the future a Release `Date` may be before it is refused: build machines' clocks
/// drift a little; a Release from tomorrow is a broken mirror or a broken clock.
pub const MAX_FUTURE_SKEW: SignedDuration = SignedDuration::from_secs(300);

/// What upstream looked like at one check: one entry per source, in the order given.
/// Serialized into cache metadata and image provenance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamState {
    pub format: u32,
    /// When the check ran (RFC 3339, UTC).
    pub checked_at: String,
    pub sources: Vec<SourceState>,
}

/// One source at one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceState {
    pub uri: String,
    pub suite: String,
    /// A `-security` suite: its updates are security updates.
    pub security: bool,
    /// A pinned (snapshot) source: not fetched, `release` is `None`.
    pub pinned: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<ReleaseState>,
}

/// What the verified InRelease of a source said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseState {
    /// `Date` (RFC 3339, UTC).
    pub date: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<String>,
    /// sha256 of the InRelease file as fetched (changes with every re-signing).
    pub inrelease_sha256: String,
    /// `Acquire-By-Hash: yes`: indexes can be fetched by digest even after the mirror moved.
    pub acquire_by_hash: bool,
    /// One per wanted component and architecture, in the source's order.
    pub indexes: Vec<IndexState>,
}

/// The Packages index of one component and architecture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexState {
    pub component: String,
    pub architecture: String,
    /// Digest of the content: the uncompressed `Packages` when the Release lists it, else the
    /// file below. Two states compare on this.
    pub sha256: String,
    /// The file to download (the smallest the Release offers), relative to `dists/SUITE/`.
    pub file: String,
    pub file_sha256: String,
    pub file_size: u64,
}

impl SourceState {
    pub fn id(&self) -> SourceId {
        SourceId {
            uri: self.uri.clone(),
            suite: self.suite.clone(),
        }
    }

    pub(crate) fn dists_url(&self) -> String {
        format!("{}/dists/{}", self.uri.trim_end_matches('/'), self.suite)
    }
}

impl UpstreamState {
    /// A digest of what the sources offer (URI, suite, index contents), without dates,
    /// signatures or the check time: the same whenever nothing was published. For cache keys.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        for s in &self.sources {
            h.update(format!("{}\n{}\n{}\n", s.uri, s.suite, s.pinned));
            for i in s.release.iter().flat_map(|r| &r.indexes) {
                h.update(format!("{}/{} {}\n", i.component, i.architecture, i.sha256));
            }
            h.update("\n");
        }
        format!("sha256:{}", hex::encode(h.finalize()))
    }

    /// The same state restricted to the given sources (to compute candidates from the sources
    /// that moved only).
    pub fn only(&self, ids: &[SourceId]) -> UpstreamState {
        UpstreamState {
            sources: self
                .sources
                .iter()
                .filter(|s| ids.contains(&s.id()))
                .cloned()
                .collect(),
            ..self.clone()
        }
    }

    /// The newest `Date` of the fetched sources (RFC 3339), for "unchanged since".
    pub fn newest_date(&self) -> Option<&str> {
        self.sources
            .iter()
            .filter_map(|s| s.release.as_ref().map(|r| r.date.as_str()))
            .max()
    }
}

/// Settings of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub timeouts: Timeouts,
    /// Keyring for sources without `signed_by`.
    pub default_keyring: PathBuf,
    /// The time to check `Date` and `Valid-Until` against (tests); `None`: the clock.
    pub now: Option<Timestamp>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeouts: Timeouts::default(),
            default_keyring: PathBuf::from(DEBIAN_ARCHIVE_KEYRING),
            now: None,
        }
    }
}

/// Checks upstream: one HTTP agent, shared by every source and index.
#[derive(Debug)]
pub struct Client {
    pub(crate) fetcher: Fetcher,
    pub(crate) options: ClientOptions,
}

impl Client {
    pub fn new(options: ClientOptions) -> Self {
        Client {
            fetcher: Fetcher::new(options.timeouts),
            options,
        }
    }

    fn now(&self) -> Timestamp {
        self.options.now.unwrap_or_else(Timestamp::now)
    }

    /// Fetch and verify the InRelease of every source that is not pinned (concurrently), and
    /// record its state. The first failing source, in the order given, is the error: there is
    /// no partial state.
    pub fn check(&self, sources: &[AptSource]) -> Result<UpstreamState> {
        for s in sources {
            s.validate()?;
        }
        let now = self.now();
        let results: Vec<Result<SourceState>> = std::thread::scope(|scope| {
            let handles: Vec<_> = sources
                .iter()
                .map(|s| scope.spawn(move || self.check_source(s, now)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        Ok(UpstreamState {
            format: STATE_FORMAT,
            checked_at: release::rfc3339(now),
            sources: results.into_iter().collect::<Result<_>>()?,
        })
    }

    fn check_source(&self, source: &AptSource, now: Timestamp) -> Result<SourceState> {
        let id = source.id();
        let mut state = SourceState {
            uri: source.uri.clone(),
            suite: source.suite.clone(),
            security: source.is_security(),
            pinned: source.pinned,
            release: None,
        };
        if source.pinned {
            return Ok(state);
        }
        let inrelease = self
            .fetcher
            .get(&id, &source.inrelease_url(), gpg::MAX_INRELEASE)?;
        let keyrings = if source.signed_by.is_empty() {
            vec![self.options.default_keyring.clone()]
        } else {
            source.signed_by.clone()
        };
        let text = gpg::verify_inrelease(&id, &inrelease, &keyrings)?;
        let malformed = |message: String| Error::Malformed {
            source_id: id.clone(),
            what: "InRelease".into(),
            message,
        };
        let rel = release::parse_release(&text).map_err(malformed)?;
        check_suite(&id, &rel)?;
        let (date, valid_until) = check_dates(&id, &rel, now)?;
        let mut indexes = Vec::new();
        for component in &source.components {
            for arch in &source.architectures {
                indexes.push(index_state(&id, &rel, component, arch)?);
            }
        }
        state.release = Some(ReleaseState {
            date,
            valid_until,
            inrelease_sha256: hex::encode(Sha256::digest(&inrelease)),
            acquire_by_hash: rel.acquire_by_hash,
            indexes,
        });
        Ok(state)
    }
}

/// The signed Release must be for the suite asked for (by suite or codename), so a mirror
/// cannot answer `bookworm-security` with another suite's validly signed file.
fn check_suite(id: &SourceId, rel: &Release) -> Result<()> {
    let wanted = id.suite.as_str();
    // Debian's pre-bullseye security suite is `buster/updates` but says `Codename: buster`.
    let base = wanted.strip_suffix("/updates").unwrap_or(wanted);
    let matches = [&rel.suite, &rel.codename]
        .iter()
        .any(|v| v.as_deref().is_some_and(|v| v == wanted || v == base));
    if matches {
        return Ok(());
    }
    Err(Error::SuiteMismatch {
        source_id: id.clone(),
        found: rel.suite.clone().unwrap_or_default(),
        codename: rel.codename.clone().unwrap_or_default(),
    })
}

/// `Date` must be present and not in the future; `Valid-Until`, when present, not passed.
fn check_dates(id: &SourceId, rel: &Release, now: Timestamp) -> Result<(String, Option<String>)> {
    let malformed = |message: String| Error::Malformed {
        source_id: id.clone(),
        what: "InRelease".into(),
        message,
    };
    let date_text = rel
        .date
        .as_deref()
        .ok_or_else(|| malformed("no Date field".into()))?;
    let date = release::parse_date(date_text).map_err(malformed)?;
    if date > now + MAX_FUTURE_SKEW {
        return Err(Error::NotYetValid {
            source_id: id.clone(),
            date: release::rfc3339(date),
            now: release::rfc3339(now),
        });
    }
    let valid_until = match rel.valid_until.as_deref() {
        None => None,
        Some(v) => {
            let until = release::parse_date(v).map_err(malformed)?;
            if until < now {
                return Err(Error::Expired {
                    source_id: id.clone(),
                    valid_until: release::rfc3339(until),
                    now: release::rfc3339(now),
                });
            }
            Some(release::rfc3339(until))
        }
    };
    Ok((release::rfc3339(date), valid_until))
}

fn index_state(id: &SourceId, rel: &Release, component: &str, arch: &str) -> Result<IndexState> {
    let base = format!("{component}/binary-{arch}/Packages");
    let variants: Vec<(&FileDigest, Codec)> = rel
        .sha256
        .iter()
        .filter(|f| {
            f.path
                .strip_prefix(&base)
                .is_some_and(|rest| matches!(rest, "" | ".xz" | ".gz"))
        })
        .filter_map(|f| Codec::of(&f.path).map(|c| (f, c)))
        .collect();
    let Some((file, _)) = variants.iter().min_by_key(|(_, c)| c.rank()) else {
        return Err(Error::MissingIndex {
            source_id: id.clone(),
            component: component.to_owned(),
            architecture: arch.to_owned(),
        });
    };
    let content = variants
        .iter()
        .find(|(_, c)| *c == Codec::Plain)
        .map_or(&file.sha256, |(f, _)| &f.sha256);
    Ok(IndexState {
        component: component.to_owned(),
        architecture: arch.to_owned(),
        sha256: content.clone(),
        file: file.path.clone(),
        file_sha256: file.sha256.clone(),
        file_size: file.size,
    })
}

/// How one source changed between a recorded state and a current one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "kebab-case")]
pub enum SourceChange {
    /// Same InRelease.
    Unchanged,
    /// Re-signed (new Date or Valid-Until) but the wanted indexes are the same.
    Resigned { recorded_date: String, date: String },
    /// At least one wanted Packages index changed (`component/architecture` listed).
    Moved {
        recorded_date: String,
        date: String,
        indexes: Vec<String>,
    },
    /// The current Release is older than the recorded one: a stale mirror or a replayed
    /// Release. The caller should refuse to build on it.
    WentBack { recorded_date: String, date: String },
    /// Pinned in the current sources: not checked.
    Pinned,
    /// Not in the recorded state (the sources changed).
    Added,
    /// In the recorded state only.
    Removed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceComparison {
    pub uri: String,
    pub suite: String,
    pub security: bool,
    #[serde(flatten)]
    pub change: SourceChange,
}

impl SourceComparison {
    pub fn id(&self) -> SourceId {
        SourceId {
            uri: self.uri.clone(),
            suite: self.suite.clone(),
        }
    }
}

/// Recorded vs current, per source (current order, then removed sources).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comparison {
    pub sources: Vec<SourceComparison>,
}

impl Comparison {
    /// Nothing was published: every source unchanged, only re-signed, or pinned.
    pub fn is_unchanged(&self) -> bool {
        self.sources.iter().all(|s| {
            matches!(
                s.change,
                SourceChange::Unchanged | SourceChange::Resigned { .. } | SourceChange::Pinned
            )
        })
    }

    /// Sources whose packages may be newer than what was built: moved or added.
    pub fn moved(&self) -> Vec<SourceId> {
        self.sources
            .iter()
            .filter(|s| matches!(s.change, SourceChange::Moved { .. } | SourceChange::Added))
            .map(SourceComparison::id)
            .collect()
    }

    /// Sources whose Release went back in time (see [`SourceChange::WentBack`]).
    pub fn went_back(&self) -> Vec<SourceId> {
        self.sources
            .iter()
            .filter(|s| matches!(s.change, SourceChange::WentBack { .. }))
            .map(SourceComparison::id)
            .collect()
    }
}

/// Compare the state a base or layer was built from with the current one.
pub fn compare(recorded: &UpstreamState, current: &UpstreamState) -> Comparison {
    let old: BTreeMap<SourceId, &SourceState> =
        recorded.sources.iter().map(|s| (s.id(), s)).collect();
    let mut sources: Vec<SourceComparison> = current
        .sources
        .iter()
        .map(|cur| {
            let change = match (cur.pinned, old.get(&cur.id()), &cur.release) {
                (true, _, _) => SourceChange::Pinned,
                (false, None, _) => SourceChange::Added,
                (false, Some(prev), Some(now)) => match &prev.release {
                    Some(then) => release_change(then, now),
                    // Was pinned, now followed: everything may be newer.
                    None => SourceChange::Added,
                },
                // Not pinned but no release: not a state `check` produces; treat as moved.
                (false, Some(_), None) => SourceChange::Added,
            };
            SourceComparison {
                uri: cur.uri.clone(),
                suite: cur.suite.clone(),
                security: cur.security,
                change,
            }
        })
        .collect();
    let current_ids: Vec<SourceId> = current.sources.iter().map(SourceState::id).collect();
    sources.extend(
        recorded
            .sources
            .iter()
            .filter(|s| !current_ids.contains(&s.id()))
            .map(|s| SourceComparison {
                uri: s.uri.clone(),
                suite: s.suite.clone(),
                security: s.security,
                change: SourceChange::Removed,
            }),
    );
    Comparison { sources }
}

fn release_change(then: &ReleaseState, now: &ReleaseState) -> SourceChange {
    if then.inrelease_sha256 == now.inrelease_sha256 {
        return SourceChange::Unchanged;
    }
    let (recorded_date, date) = (then.date.clone(), now.date.clone());
    // RFC 3339 UTC strings of one format order like the times they name.
    if now.date < then.date {
        return SourceChange::WentBack {
            recorded_date,
            date,
        };
    }
    let before: BTreeMap<(&str, &str), &str> = then
        .indexes
        .iter()
        .map(|i| {
            (
                (i.component.as_str(), i.architecture.as_str()),
                i.sha256.as_str(),
            )
        })
        .collect();
    let indexes: Vec<String> = now
        .indexes
        .iter()
        .filter(|i| {
            before.get(&(i.component.as_str(), i.architecture.as_str())) != Some(&i.sha256.as_str())
        })
        .map(|i| format!("{}/{}", i.component, i.architecture))
        .collect();
    if indexes.is_empty() {
        SourceChange::Resigned {
            recorded_date,
            date,
        }
    } else {
        SourceChange::Moved {
            recorded_date,
            date,
            indexes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(date: &str, inrelease: &str, packages: &str) -> UpstreamState {
        UpstreamState {
            format: STATE_FORMAT,
            checked_at: "2026-11-30T00:00:00Z".into(),
            sources: vec![SourceState {
                uri: "http://deb.debian.org/debian-security".into(),
                suite: "bookworm-security".into(),
                security: true,
                pinned: false,
                release: Some(ReleaseState {
                    date: date.into(),
                    valid_until: None,
                    inrelease_sha256: inrelease.into(),
                    acquire_by_hash: true,
                    indexes: vec![IndexState {
                        component: "main".into(),
                        architecture: "amd64".into(),
                        sha256: packages.into(),
                        file: "main/binary-amd64/Packages.xz".into(),
                        file_sha256: format!("xz-{packages}"),
                        file_size: 1,
                    }],
                }),
            }],
        }
    }

    #[test]
    fn comparisons() {
        let a = state("2026-11-23T00:00:00Z", "i1", "p1");
        let c = compare(&a, &a);
        assert!(c.is_unchanged());
        assert_eq!(c.sources[0].change, SourceChange::Unchanged);

        let resigned = state("2026-11-24T00:00:00Z", "i2", "p1");
        let c = compare(&a, &resigned);
        assert!(c.is_unchanged());
        assert!(matches!(c.sources[0].change, SourceChange::Resigned { .. }));
        assert_eq!(a.fingerprint(), resigned.fingerprint());

        let moved = state("2026-11-25T00:00:00Z", "i3", "p2");
        let c = compare(&a, &moved);
        assert!(!c.is_unchanged());
        assert_eq!(c.moved().len(), 1);
        assert_eq!(
            c.sources[0].change,
            SourceChange::Moved {
                recorded_date: "2026-11-23T00:00:00Z".into(),
                date: "2026-11-25T00:00:00Z".into(),
                indexes: vec!["main/amd64".into()],
            }
        );
        assert_ne!(a.fingerprint(), moved.fingerprint());

        let c = compare(&moved, &a);
        assert_eq!(c.went_back().len(), 1);
        assert!(!c.is_unchanged() && c.moved().is_empty());

        let mut pinned = a.clone();
        pinned.sources[0].pinned = true;
        pinned.sources[0].release = None;
        assert_eq!(compare(&a, &pinned).sources[0].change, SourceChange::Pinned);
        assert_eq!(compare(&pinned, &a).sources[0].change, SourceChange::Added);

        let empty = UpstreamState {
            sources: vec![],
            ..a.clone()
        };
        let c = compare(&a, &empty);
        assert_eq!(c.sources[0].change, SourceChange::Removed);
        assert!(!c.is_unchanged());
        assert_eq!(compare(&empty, &a).moved().len(), 1);
    }

    #[test]
    fn state_serializes() {
        let a = state("2026-11-23T00:00:00Z", "i1", "p1");
        let json = serde_json::to_string(&a).unwrap();
        let back: UpstreamState = serde_json::from_str(&json).unwrap();
        assert_eq!(a, back);
        let c = compare(&a, &state("2026-11-25T00:00:00Z", "i3", "p2"));
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["sources"][0]["change"], "moved");
        assert_eq!(v["sources"][0]["indexes"][0], "main/amd64");
    }

    #[test]
    fn dates_and_suites() {
        let id = SourceId {
            uri: "http://m/debian".into(),
            suite: "bookworm-security".into(),
        };
        let rel = |date: Option<&str>, until: Option<&str>| Release {
            suite: Some("oldstable-security".into()),
            codename: Some("bookworm-security".into()),
            date: date.map(Into::into),
            valid_until: until.map(Into::into),
            acquire_by_hash: true,
            sha256: vec![],
        };
        let now: Timestamp = "2026-11-30T12:00:00Z".parse().unwrap();
        let (d, v) = check_dates(
            &id,
            &rel(
                Some("Sun, 29 Nov 2026 00:53:13 UTC"),
                Some("Sun, 06 Dec 2026 00:53:13 UTC"),
            ),
            now,
        )
        .unwrap();
        assert_eq!(
            (d.as_str(), v.as_deref()),
            ("2026-11-29T00:53:13Z", Some("2026-12-06T00:53:13Z"))
        );
        let e = check_dates(
            &id,
            &rel(
                Some("Sun, 22 Nov 2026 00:53:13 UTC"),
                Some("Sun, 29 Nov 2026 00:53:13 UTC"),
            ),
            now,
        )
        .unwrap_err();
        assert!(matches!(e, Error::Expired { .. }), "{e}");
        let e =
            check_dates(&id, &rel(Some("Tue, 01 Dec 2026 00:00:00 UTC"), None), now).unwrap_err();
        assert!(matches!(e, Error::NotYetValid { .. }), "{e}");
        let e = check_dates(&id, &rel(None, None), now).unwrap_err();
        assert!(e.to_string().contains("no Date field"), "{e}");

        check_suite(&id, &rel(None, None)).unwrap();
        let other = SourceId {
            suite: "bookworm".into(),
            ..id.clone()
        };
        let e = check_suite(&other, &rel(None, None)).unwrap_err();
        assert!(matches!(e, Error::SuiteMismatch { .. }), "{e}");
        let buster = SourceId {
            suite: "buster/updates".into(),
            ..id
        };
        let old = Release {
            suite: Some("oldoldstable".into()),
            codename: Some("buster".into()),
            ..rel(None, None)
        };
        check_suite(&buster, &old).unwrap();
    }

    #[test]
    fn index_selection_prefers_xz_and_compares_content() {
        let id = SourceId {
            uri: "u".into(),
            suite: "s".into(),
        };
        let d = |path: &str, sha: char| FileDigest {
            sha256: sha.to_string().repeat(64),
            size: 1,
            path: path.into(),
        };
        let rel = Release {
            suite: None,
            codename: None,
            date: None,
            valid_until: None,
            acquire_by_hash: false,
            sha256: vec![
                d("main/binary-amd64/Packages", 'a'),
                d("main/binary-amd64/Packages.gz", 'b'),
                d("main/binary-amd64/Packages.xz", 'c'),
                d("main/binary-amd64/Packages.diff/Index", 'd'),
                d("main/binary-amd64/PackagesX", 'e'),
                d("main/binary-i386/Packages.gz", 'f'),
            ],
        };
        let i = index_state(&id, &rel, "main", "amd64").unwrap();
        assert_eq!(i.file, "main/binary-amd64/Packages.xz");
        assert_eq!(i.sha256, "a".repeat(64));
        assert_eq!(i.file_sha256, "c".repeat(64));
        let i = index_state(&id, &rel, "main", "i386").unwrap();
        assert_eq!(
            (i.file.as_str(), i.sha256.as_str()),
            ("main/binary-i386/Packages.gz", "f".repeat(64).as_str())
        );
        let e = index_state(&id, &rel, "contrib", "amd64").unwrap_err();
        assert!(matches!(e, Error::MissingIndex { .. }), "{e}");
    }
}
