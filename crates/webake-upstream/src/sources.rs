//! The apt sources of an image: what to check, and how they are derived for a Debian base.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Where Debian's security updates come from by default. It is another archive than the main
/// one (`debian-security`, not `debian`), and often another host.
pub const DEBIAN_SECURITY_MIRROR: &str = "http://deb.debian.org/debian-security";

/// The keyring of the Debian archive signing keys (package `debian-archive-keyring`).
pub const DEBIAN_ARCHIVE_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// One apt source: one suite of one archive, as a `deb` line or a deb822 stanza names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AptSource {
    /// Archive root, without `dists/` (`http://deb.debian.org/debian`). `http:`, `https:` and
    /// `file:` are supported.
    pub uri: String,
    /// Suite or codename (`bookworm`, `bookworm-security`). Flat repositories (`./`) are not
    /// supported.
    pub suite: String,
    /// `main`, `contrib`...
    pub components: Vec<String>,
    /// Debian architectures whose Packages indexes matter (`amd64`); `all` packages are listed
    /// in every architecture's index.
    pub architectures: Vec<String>,
    /// Keyrings the InRelease must be signed with (apt's `Signed-By`). Empty: the checker's
    /// default keyring.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signed_by: Vec<PathBuf>,
    /// A fixed snapshot: never fetched for the freshness check, never moves.
    #[serde(default)]
    pub pinned: bool,
}

/// The `deb` sources of an apt sources file: one-line (`sources.list`, `*.list`) when `deb822`
/// is false, else deb822 stanzas (`*.sources`). `deb-src`, disabled stanzas, flat
/// repositories (`./`) and inline `Signed-By` key blocks are left out; `signed_by` holds the
/// paths as the file names them (inside the image it came from). Architectures default to
/// `default_arch`.
pub fn parse_sources_file(text: &str, deb822: bool, default_arch: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    let mut push =
        |uri: &str, suite: &str, comps: Vec<String>, arch: Vec<String>, keys: Vec<PathBuf>| {
            if suite.ends_with('/') || uri.is_empty() || suite.is_empty() {
                return;
            }
            let mut s = AptSource::new(uri.trim_end_matches('/'), suite);
            s.components = comps;
            s.architectures = if arch.is_empty() {
                vec![default_arch.to_owned()]
            } else {
                arch
            };
            s.signed_by = keys;
            out.push(s);
        };
    let list = |v: &str, sep: &[char]| -> Vec<String> {
        v.split(sep)
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(String::from)
            .collect()
    };
    if !deb822 {
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or_default().trim();
            let Some(rest) = line
                .strip_prefix("deb ")
                .or_else(|| line.strip_prefix("deb\t"))
            else {
                continue;
            };
            let rest = rest.trim_start();
            let (opts, rest) = match rest.strip_prefix('[') {
                Some(r) => r.split_once(']').unwrap_or((r, "")),
                None => ("", rest),
            };
            let (mut arch, mut keys) = (Vec::new(), Vec::new());
            for o in opts.split_whitespace() {
                match o.split_once('=') {
                    Some(("arch", v)) => arch = list(v, &[',']),
                    Some(("signed-by", v)) => {
                        keys = list(v, &[',']).into_iter().map(PathBuf::from).collect()
                    }
                    _ => {}
                }
            }
            let w: Vec<&str> = rest.split_whitespace().collect();
            if w.len() >= 2 {
                push(
                    w[0],
                    w[1],
                    w[2..].iter().map(|c| c.to_string()).collect(),
                    arch,
                    keys,
                );
            }
        }
        return out;
    }
    for stanza in text.split("\n\n") {
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in stanza.lines() {
            if line.starts_with('#') {
                continue;
            }
            if line.starts_with([' ', '\t']) {
                if let Some((_, v)) = fields.last_mut() {
                    v.push('\n');
                    v.push_str(line.trim());
                }
            } else if let Some((k, v)) = line.split_once(':') {
                fields.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let get = |k: &str| {
            fields
                .iter()
                .find(|(f, _)| f == k)
                .map(|(_, v)| v.as_str())
                .unwrap_or_default()
        };
        if !list(get("types"), &[' ', '\n']).iter().any(|t| t == "deb")
            || get("enabled").eq_ignore_ascii_case("no")
        {
            continue;
        }
        let keys: Vec<PathBuf> = if get("signed-by").contains("BEGIN PGP") {
            continue; // an inline key: not supported here
        } else {
            list(get("signed-by"), &[' ', '\n', ','])
                .into_iter()
                .map(PathBuf::from)
                .collect()
        };
        let comps = list(get("components"), &[' ', '\n']);
        let arch = list(get("architectures"), &[' ', '\n']);
        for uri in list(get("uris"), &[' ', '\n']) {
            for suite in list(get("suites"), &[' ', '\n']) {
                push(&uri, &suite, comps.clone(), arch.clone(), keys.clone());
            }
        }
    }
    out
}

/// Names a source in errors, states and comparisons: `uri suite`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SourceId {
    pub uri: String,
    pub suite: String,
}

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.uri, self.suite)
    }
}

impl AptSource {
    /// A source for `main` on `amd64`, pinned when `uri` is a snapshot URL.
    pub fn new(uri: impl Into<String>, suite: impl Into<String>) -> Self {
        let uri = uri.into();
        AptSource {
            pinned: is_snapshot_uri(&uri),
            uri,
            suite: suite.into(),
            components: vec!["main".to_owned()],
            architectures: vec!["amd64".to_owned()],
            signed_by: Vec::new(),
        }
    }

    pub fn id(&self) -> SourceId {
        SourceId {
            uri: self.uri.clone(),
            suite: self.suite.clone(),
        }
    }

    /// Whether this is a security suite (`bookworm-security`, Ubuntu's `jammy-security`, or the
    /// pre-bullseye Debian `buster/updates`).
    pub fn is_security(&self) -> bool {
        is_security_suite(&self.suite)
    }

    /// `URI/dists/SUITE/InRelease`.
    pub fn inrelease_url(&self) -> String {
        format!("{}/InRelease", self.dists_url())
    }

    /// `URI/dists/SUITE`.
    pub fn dists_url(&self) -> String {
        format!("{}/dists/{}", self.uri.trim_end_matches('/'), self.suite)
    }

    /// The one-line form for `sources.list` (and mmdebstrap's mirror arguments):
    /// `deb [signed-by=K check-valid-until=no] URI SUITE COMPONENTS`. Pinned sources get
    /// `check-valid-until=no`: a snapshot's Release expires but its content never changes.
    pub fn one_line(&self) -> String {
        let mut options = Vec::new();
        if !self.signed_by.is_empty() {
            let keys: Vec<String> = self
                .signed_by
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            options.push(format!("signed-by={}", keys.join(",")));
        }
        if !self.architectures.is_empty() {
            options.push(format!("arch={}", self.architectures.join(",")));
        }
        if self.pinned {
            options.push("check-valid-until=no".to_owned());
        }
        let options = if options.is_empty() {
            String::new()
        } else {
            format!("[{}] ", options.join(" "))
        };
        format!(
            "deb {options}{} {} {}",
            self.uri,
            self.suite,
            self.components.join(" ")
        )
    }

    /// The deb822 stanza for `/etc/apt/sources.list.d/*.sources` (apt >= 1.1).
    pub fn deb822(&self) -> String {
        let mut out = format!(
            "Types: deb\nURIs: {}\nSuites: {}\nComponents: {}\nArchitectures: {}\n",
            self.uri,
            self.suite,
            self.components.join(" "),
            self.architectures.join(" ")
        );
        if !self.signed_by.is_empty() {
            let keys: Vec<String> = self
                .signed_by
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            out.push_str(&format!("Signed-By: {}\n", keys.join(" ")));
        }
        if self.pinned {
            out.push_str("Check-Valid-Until: no\n");
        }
        out
    }

    /// Reject what the checker cannot check: empty fields, flat repositories, other schemes.
    pub fn validate(&self) -> Result<()> {
        let bad = |message: &str| {
            Err(Error::InvalidSource {
                source_id: self.id(),
                message: message.to_owned(),
            })
        };
        let scheme_ok = ["http://", "https://", "file:/"]
            .iter()
            .any(|s| self.uri.starts_with(s));
        if !scheme_ok {
            return bad("the URI must be http://, https:// or file:/");
        }
        if self.suite.is_empty() || self.suite.ends_with('/') || self.suite.starts_with('.') {
            return bad("flat repositories (a suite ending in `/`) are not supported");
        }
        let word = |s: &String| {
            !s.is_empty()
                && !s.starts_with('.')
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b))
        };
        if !self.suite.split('/').all(|p| word(&p.to_owned())) {
            return bad("the suite must be a plain name");
        }
        if self.components.is_empty() || !self.components.iter().all(word) {
            return bad("components must be plain names, at least one");
        }
        if self.architectures.is_empty() || !self.architectures.iter().all(word) {
            return bad("architectures must be plain names, at least one");
        }
        Ok(())
    }
}

/// Whether `suite` is a security suite (name ends in `-security`, or Debian's old
/// `CODENAME/updates`).
pub fn is_security_suite(suite: &str) -> bool {
    suite.ends_with("-security") || suite.ends_with("/updates")
}

/// Whether `uri` is a fixed point in time: `snapshot.debian.org/archive/ARCHIVE/TIMESTAMP` or
/// `snapshot.ubuntu.com/ARCHIVE/TIMESTAMP` (timestamps like `20261123T000000Z`).
pub fn is_snapshot_uri(uri: &str) -> bool {
    snapshot_parts(uri).is_some()
}

/// (URI up to the archive name, archive, timestamp) of a snapshot URI.
fn snapshot_parts(uri: &str) -> Option<(String, &str, &str)> {
    let (scheme, rest) = if let Some(rest) = uri.strip_prefix("http://") {
        ("http://", rest)
    } else {
        ("https://", uri.strip_prefix("https://")?)
    };
    let (host, path) = rest.split_once('/')?;
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let (prefix, archive, stamp) = match (host, parts.as_slice()) {
        ("snapshot.debian.org", ["archive", archive, stamp]) => {
            (format!("{scheme}{host}/archive/"), *archive, *stamp)
        }
        ("snapshot.ubuntu.com", [archive, stamp]) => (format!("{scheme}{host}/"), *archive, *stamp),
        _ => return None,
    };
    let timestamp_like = stamp.len() >= 8
        && stamp.as_bytes()[..8].iter().all(u8::is_ascii_digit)
        && stamp
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'T' || b == b'Z');
    timestamp_like.then_some((prefix, archive, stamp))
}

/// The default sources of a Debian base: `SUITE`, `SUITE-updates` and `SUITE-security`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebianSuites {
    /// Main archive (`http://deb.debian.org/debian` or a snapshot of it).
    pub mirror: String,
    /// Security archive. `None`: [`DEBIAN_SECURITY_MIRROR`], or for a snapshot of the main
    /// archive, the snapshot of `debian-security` at the same timestamp.
    pub security_mirror: Option<String>,
    pub suite: String,
    pub components: Vec<String>,
    pub architectures: Vec<String>,
    /// Keyrings for all three; empty: [`DEBIAN_ARCHIVE_KEYRING`].
    pub signed_by: Vec<PathBuf>,
    /// Add `SUITE-updates` (default true).
    pub updates: bool,
    /// Add `SUITE-security` (default true).
    pub security: bool,
}

impl DebianSuites {
    /// `mirror`, `suite`, `main`, `amd64`, with -updates and -security.
    pub fn new(mirror: impl Into<String>, suite: impl Into<String>) -> Self {
        DebianSuites {
            mirror: mirror.into(),
            security_mirror: None,
            suite: suite.into(),
            components: vec!["main".to_owned()],
            architectures: vec!["amd64".to_owned()],
            signed_by: Vec::new(),
            updates: true,
            security: true,
        }
    }
}

/// Suites without `-updates` and `-security` pockets.
const ROLLING: &[&str] = &["sid", "unstable", "experimental", "rc-buggy"];

/// Derive the sources of a Debian base. `sid`/`unstable`/`experimental` have no `-updates` or
/// `-security` pockets and get only the suite. A snapshot mirror pins every derived source
/// (the derived security snapshot too); an explicit `security_mirror` is pinned only if it is
/// a snapshot itself.
pub fn debian_sources(d: &DebianSuites) -> Vec<AptSource> {
    let signed_by = if d.signed_by.is_empty() {
        vec![PathBuf::from(DEBIAN_ARCHIVE_KEYRING)]
    } else {
        d.signed_by.clone()
    };
    let source = |uri: &str, suite: String| AptSource {
        uri: uri.to_owned(),
        suite,
        components: d.components.clone(),
        architectures: d.architectures.clone(),
        signed_by: signed_by.clone(),
        pinned: is_snapshot_uri(uri),
    };
    let mut out = vec![source(&d.mirror, d.suite.clone())];
    if ROLLING.contains(&d.suite.as_str()) {
        return out;
    }
    if d.updates {
        out.push(source(&d.mirror, format!("{}-updates", d.suite)));
    }
    if d.security {
        let security = match (&d.security_mirror, snapshot_parts(&d.mirror)) {
            (Some(m), _) => m.clone(),
            (None, Some((prefix, "debian", stamp))) => {
                format!("{prefix}debian-security/{stamp}")
            }
            (None, _) => DEBIAN_SECURITY_MIRROR.to_owned(),
        };
        out.push(source(&security, format!("{}-security", d.suite)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_files_one_line_and_deb822() {
        let one = "# comment\ndeb http://deb.debian.org/debian bookworm main contrib\ndeb-src http://x y main\n\
                   deb [arch=amd64 signed-by=/usr/share/keyrings/docker.gpg] https://download.docker.com/linux/debian/ bookworm stable # trailing\n\
                   deb http://flat ./\n";
        let s = parse_sources_file(one, false, "amd64");
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(s[0].uri, "http://deb.debian.org/debian");
        assert_eq!(s[0].components, ["main", "contrib"]);
        assert_eq!(s[1].uri, "https://download.docker.com/linux/debian");
        assert_eq!(s[1].suite, "bookworm");
        assert_eq!(
            s[1].signed_by,
            [PathBuf::from("/usr/share/keyrings/docker.gpg")]
        );
        let d = "Types: deb deb-src\nURIs: https://pkgs.k8s.io/core:/stable:/v1.30/deb/\nSuites: /\n\n\
                 Types: deb\nURIs: http://a http://b\nSuites: s1 s2\nComponents: main\nSigned-By: /etc/apt/keyrings/a.asc\n\n\
                 Types: deb\nEnabled: no\nURIs: http://off\nSuites: x\n";
        let s = parse_sources_file(d, true, "arm64");
        let names: Vec<String> = s.iter().map(|x| format!("{} {}", x.uri, x.suite)).collect();
        assert_eq!(
            names,
            ["http://a s1", "http://a s2", "http://b s1", "http://b s2"]
        );
        assert_eq!(s[0].architectures, ["arm64"]);
        assert_eq!(s[0].signed_by, [PathBuf::from("/etc/apt/keyrings/a.asc")]);
    }

    #[test]
    fn default_debian_sources() {
        let s = debian_sources(&DebianSuites::new(
            "http://deb.debian.org/debian",
            "bookworm",
        ));
        let ids: Vec<String> = s.iter().map(|s| s.id().to_string()).collect();
        assert_eq!(
            ids,
            [
                "http://deb.debian.org/debian bookworm",
                "http://deb.debian.org/debian bookworm-updates",
                "http://deb.debian.org/debian-security bookworm-security",
            ]
        );
        assert!(s.iter().all(|s| !s.pinned));
        assert_eq!(
            s.iter().map(AptSource::is_security).collect::<Vec<_>>(),
            [false, false, true]
        );
        assert!(
            s.iter()
                .all(|s| s.signed_by == [PathBuf::from(DEBIAN_ARCHIVE_KEYRING)])
        );
        assert_eq!(
            s[2].inrelease_url(),
            "http://deb.debian.org/debian-security/dists/bookworm-security/InRelease"
        );
    }

    #[test]
    fn security_from_another_host() {
        let mut d = DebianSuites::new("http://mirror.example/debian/", "trixie");
        d.security_mirror = Some("https://security.example/debian-security".into());
        d.updates = false;
        let s = debian_sources(&d);
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[0].dists_url(),
            "http://mirror.example/debian/dists/trixie"
        );
        assert_eq!(s[1].uri, "https://security.example/debian-security");
        assert_eq!(s[1].suite, "trixie-security");
    }

    #[test]
    fn snapshots_are_pinned_and_security_follows_the_timestamp() {
        let m = "https://snapshot.debian.org/archive/debian/20261123T000000Z";
        assert!(is_snapshot_uri(m));
        assert!(is_snapshot_uri(
            "http://snapshot.ubuntu.com/ubuntu/20240301T000000Z/"
        ));
        assert!(!is_snapshot_uri("http://deb.debian.org/debian"));
        assert!(!is_snapshot_uri(
            "https://snapshot.debian.org/archive/debian/"
        ));
        assert!(!is_snapshot_uri(
            "https://snapshot.debian.org/archive/debian/latest"
        ));
        let s = debian_sources(&DebianSuites::new(m, "bookworm"));
        assert!(s.iter().all(|s| s.pinned));
        assert_eq!(
            s[2].uri,
            "https://snapshot.debian.org/archive/debian-security/20261123T000000Z"
        );
        assert_eq!(s[1].uri, m);
    }

    #[test]
    fn rendered_for_apt() {
        let s = debian_sources(&DebianSuites::new(
            "http://deb.debian.org/debian",
            "bookworm",
        ));
        assert_eq!(
            s[2].one_line(),
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg arch=amd64] \
             http://deb.debian.org/debian-security bookworm-security main"
        );
        assert_eq!(
            s[0].deb822(),
            "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\n\
             Architectures: amd64\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        );
        let mut p = AptSource::new(
            "https://snapshot.debian.org/archive/debian/20261123T000000Z",
            "bookworm",
        );
        p.components.push("contrib".into());
        assert_eq!(
            p.one_line(),
            "deb [arch=amd64 check-valid-until=no] \
             https://snapshot.debian.org/archive/debian/20261123T000000Z bookworm main contrib"
        );
        assert!(p.deb822().ends_with("Check-Valid-Until: no\n"));
    }

    #[test]
    fn rolling_suites_have_no_pockets() {
        let s = debian_sources(&DebianSuites::new("http://deb.debian.org/debian", "sid"));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn validation() {
        let ok = AptSource::new("http://127.0.0.1:1/debian", "stable");
        ok.validate().unwrap();
        assert!(ok.clone().pinned.eq(&false));
        for bad in [
            AptSource::new("ftp://x/debian", "stable"),
            AptSource::new("http://x/debian", "./"),
            AptSource::new("http://x/debian", ""),
            AptSource::new("http://x/debian", "stable/../../etc"),
            AptSource {
                components: vec![],
                ..ok.clone()
            },
            AptSource {
                architectures: vec!["amd64 i386".into()],
                ..ok.clone()
            },
        ] {
            let e = bad.validate().unwrap_err();
            assert!(matches!(e, Error::InvalidSource { .. }), "{e}");
        }
        assert!(is_security_suite("buster/updates"));
        assert!(is_security_suite("jammy-security"));
        assert!(!is_security_suite("bookworm-updates"));
    }
}
