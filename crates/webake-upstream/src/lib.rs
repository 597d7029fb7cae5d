//! Has upstream moved for an image, and which of its packages have updates? Answered without
//! baking anything:
//!
//! - [`sources`]: the apt sources of an image ([`AptSource`]), and the default Debian ones
//!   ([`debian_sources`]: `SUITE`, `SUITE-updates`, `SUITE-security`); snapshot URLs are pinned.
//! - [`Client::check`]: fetch each source's `InRelease`, verify it with `gpgv` and the source's
//!   keyrings, check `Date` and `Valid-Until`, and record an [`UpstreamState`] (serializable:
//!   it goes into cache metadata and provenance). [`compare`] two states.
//! - [`Client::candidates`]: the installed packages with a newer version in the Packages
//!   indexes of a state (digest-verified), marking security suites; [`freshness`] puts
//!   comparison and candidates together for the skip rule.
//! - [`newest_changelog_entry`] of a `.deb` and the [`security_tracker_url`] of a source
//!   package, for the reviewer.
//!
//! Nothing here prints; errors name the source (`uri suite`), file or program. Helper
//! programs: `gpgv`, `xz`, `gzip`, `dpkg-deb`.

mod candidates;
mod changelog;
mod error;
mod gpg;
mod http;
mod release;
pub mod sources;
mod state;
#[cfg(feature = "test-support")]
pub mod testrepo;
mod tool;

pub use candidates::{Candidate, Freshness, freshness};
pub use changelog::{
    ChangelogEntry, changelog_path, deb_field, newest_changelog_entry,
    newest_entry_of_changelog_gz, parse_first_entry, security_tracker_url,
};
pub use error::{Error, Result};
pub use http::Timeouts;
pub use sources::{
    AptSource, DEBIAN_ARCHIVE_KEYRING, DEBIAN_SECURITY_MIRROR, DebianSuites, SourceId,
    debian_sources, is_security_suite, is_snapshot_uri, parse_sources_file,
};
pub use state::{
    Client, ClientOptions, Comparison, IndexState, MAX_FUTURE_SKEW, ReleaseState, STATE_FORMAT,
    SourceChange, SourceComparison, SourceState, UpstreamState, compare,
};
