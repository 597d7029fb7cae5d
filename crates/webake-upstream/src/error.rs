use std::path::PathBuf;

use crate::sources::SourceId;

/// Errors of this crate. Every error about an apt source names it (`uri suite`); every error
/// about a file names its path; every failed command names the program.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The source itself is unusable (empty suite, unsupported URI scheme...).
    #[error("apt source {source_id}: {message}")]
    InvalidSource {
        source_id: SourceId,
        message: String,
    },

    /// No connection, DNS failure, timeout, TLS failure or a broken transfer.
    #[error("apt source {source_id}: mirror unreachable: {url}: {message}")]
    Unreachable {
        source_id: SourceId,
        url: String,
        message: String,
    },

    /// The mirror answered with an HTTP error (404 for a suite it does not carry...).
    #[error("apt source {source_id}: {url}: HTTP {status}")]
    HttpStatus {
        source_id: SourceId,
        url: String,
        status: u16,
    },

    /// A file larger than the limit for its kind (or than the size the Release announced).
    #[error("apt source {source_id}: {url}: larger than {limit} bytes")]
    TooLarge {
        source_id: SourceId,
        url: String,
        limit: u64,
    },

    /// `gpgv` did not find a good signature by a key of the source's keyrings.
    #[error(
        "apt source {source_id}: InRelease signature not valid with keyring(s) {}: {detail}",
        display_paths(keyrings)
    )]
    BadSignature {
        source_id: SourceId,
        keyrings: Vec<PathBuf>,
        detail: String,
    },

    /// A keyring named by the source (or the default keyring) cannot be read.
    #[error("apt source {source_id}: keyring {path}: {source}")]
    Keyring {
        source_id: SourceId,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// `Valid-Until` is in the past: the mirror serves a stale (or replayed) Release.
    #[error(
        "apt source {source_id}: InRelease expired: Valid-Until {valid_until} is before now ({now})"
    )]
    Expired {
        source_id: SourceId,
        valid_until: String,
        now: String,
    },

    /// `Date` is in the future (more than the allowed clock skew).
    #[error("apt source {source_id}: InRelease not valid yet: Date {date} is after now ({now})")]
    NotYetValid {
        source_id: SourceId,
        date: String,
        now: String,
    },

    /// The signed InRelease is for another suite than the one asked for.
    #[error("apt source {source_id}: InRelease is for suite {found:?} (codename {codename:?})")]
    SuiteMismatch {
        source_id: SourceId,
        found: String,
        codename: String,
    },

    /// The InRelease (or a Packages index) is not what its format says.
    #[error("apt source {source_id}: {what}: {message}")]
    Malformed {
        source_id: SourceId,
        what: String,
        message: String,
    },

    /// The Release lists no Packages index for a wanted component and architecture.
    #[error(
        "apt source {source_id}: the Release has no Packages index for {component}/binary-{architecture}"
    )]
    MissingIndex {
        source_id: SourceId,
        component: String,
        architecture: String,
    },

    /// A downloaded file does not have the digest the signed Release gave for it.
    #[error("apt source {source_id}: {url}: sha256 {actual}, the Release says {expected}")]
    DigestMismatch {
        source_id: SourceId,
        url: String,
        expected: String,
        actual: String,
    },

    /// A helper program could not be started (not installed?).
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },

    /// A helper program failed.
    #[error("{program} {context}: {status}: {stderr}")]
    Command {
        program: String,
        context: String,
        status: String,
        stderr: String,
    },

    /// I/O on a local file.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A .deb without the changelog asked for.
    #[error("{deb}: no {wanted} in the package{}", hint.as_deref().map(|h| format!(" ({h})")).unwrap_or_default())]
    NoChangelog {
        deb: PathBuf,
        wanted: String,
        hint: Option<String>,
    },

    /// A changelog (or package field) that cannot be parsed.
    #[error("{path}: {message}")]
    BadPackage { path: PathBuf, message: String },

    /// Not a Debian source package name (so no tracker URL is built from it).
    #[error("{0:?} is not a Debian source package name")]
    InvalidPackageName(String),
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
