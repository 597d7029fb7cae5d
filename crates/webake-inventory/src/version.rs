//! Debian package version ordering, as `dpkg --compare-versions` implements it
//! (dpkg `lib/dpkg/version.c`: epoch, then upstream version, then Debian revision).

use std::cmp::Ordering;
use std::fmt;

/// A Debian version `[epoch:]upstream[-revision]`, ordered like dpkg orders it.
///
/// Parsing is lenient (as dpkg is when comparing): a missing or non-numeric epoch counts
/// as 0. Equality follows the ordering, so `0:1.0` equals `1.0`.
#[derive(Debug, Clone)]
pub struct DebVersion {
    epoch: u64,
    upstream: String,
    revision: String,
    original: String,
}

impl DebVersion {
    pub fn parse(s: &str) -> Self {
        let original = s.to_owned();
        let s = s.trim();
        let (epoch, rest) = match s.split_once(':') {
            Some((e, rest)) => (e.parse().unwrap_or(0), rest),
            None => (0, s),
        };
        let (upstream, revision) = match rest.rsplit_once('-') {
            Some((u, r)) => (u, r),
            None => (rest, ""),
        };
        DebVersion {
            epoch,
            upstream: upstream.to_owned(),
            revision: revision.to_owned(),
            original,
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    pub fn revision(&self) -> &str {
        &self.revision
    }

    pub fn as_str(&self) -> &str {
        &self.original
    }
}

impl fmt::Display for DebVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.original)
    }
}

impl Ord for DebVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        self.epoch
            .cmp(&other.epoch)
            .then_with(|| verrevcmp(&self.upstream, &other.upstream))
            .then_with(|| verrevcmp(&self.revision, &other.revision))
    }
}

impl PartialOrd for DebVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for DebVersion {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for DebVersion {}

/// Compare two version strings the way dpkg does.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    DebVersion::parse(a).cmp(&DebVersion::parse(b))
}

/// Sort weight of a character in the non-digit part: `~` sorts before everything, even the
/// end of the part; letters sort before other characters.
fn order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(b'~') => -1,
        Some(c) => i32::from(c) + 256,
    }
}

fn verrevcmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        // Non-digit prefix, compared character by character.
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let ac = order(a.get(i).copied().filter(|c| !c.is_ascii_digit()));
            let bc = order(b.get(j).copied().filter(|c| !c.is_ascii_digit()));
            if ac != bc {
                return ac.cmp(&bc);
            }
            if i < a.len() && !a[i].is_ascii_digit() {
                i += 1;
            }
            if j < b.len() && !b[j].is_ascii_digit() {
                j += 1;
            }
        }
        // Digit run, compared numerically (leading zeros ignored, any length).
        while i < a.len() && a[i] == b'0' {
            i += 1;
        }
        while j < b.len() && b[j] == b'0' {
            j += 1;
        }
        let si = i;
        while i < a.len() && a[i].is_ascii_digit() {
            i += 1;
        }
        let sj = j;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        let (da, db) = (&a[si..i], &b[sj..j]);
        let by_len = da.len().cmp(&db.len());
        if by_len != Ordering::Equal {
            return by_len;
        }
        let by_digits = da.cmp(db);
        if by_digits != Ordering::Equal {
            return by_digits;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    /// (a, b, expected ordering of a relative to b)
    pub(crate) const TABLE: &[(&str, &str, Ordering)] = &[
        ("1.0", "1.0", Equal),
        ("1.0", "1.1", Less),
        ("1.10", "1.9", Greater),
        ("1.0", "1.0-1", Less),
        ("1.0-1", "1.0-2", Less),
        ("1.0-10", "1.0-9", Greater),
        ("0:1.0", "1.0", Equal),
        ("1:1.0", "2.0", Greater),
        ("1:0.1", "0:9.9", Greater),
        ("2:1.0", "10:0.1", Less),
        ("1.0~rc1", "1.0", Less),
        ("1.0~rc1", "1.0~rc2", Less),
        ("1.0~~", "1.0~", Less),
        ("1.0~~a", "1.0~~", Greater),
        ("1.0~", "1.0", Less),
        ("1.0", "1.0a", Less),
        ("1.0a", "1.0+", Less),
        ("1.0+", "1.0.", Less),
        ("1.0+dfsg", "1.0", Greater),
        ("1.0+dfsg-1", "1.0-1", Greater),
        ("2.36-9+deb12u4", "2.36-9+deb12u10", Less),
        ("2.36-9+deb12u4", "2.36-9", Greater),
        ("6.1.0-25", "6.1.0-3", Greater),
        ("6.1.106-3", "6.1.112-1", Less),
        ("1.2.3", "1.2.3.0", Less),
        ("001", "1", Equal),
        ("1.001", "1.1", Equal),
        ("a", "b", Less),
        ("Z", "a", Less),
        ("1:7.4.052-1ubuntu3", "2:7.4.052-1ubuntu3", Less),
        ("7.4.052-1ubuntu3.1", "7.4.052-1ubuntu3", Greater),
        ("1.18.4+ds-1", "1.18.4-1", Greater),
        ("3.0.11-1~deb12u2", "3.0.11-1", Less),
        ("3.0.11-1~deb12u2", "3.0.11-1~deb12u1", Greater),
        ("252.30-1~deb12u2", "252.31-1~deb12u1", Less),
        ("1.0-1-1", "1.0-1", Greater),
        ("1.0-1-1", "1.0-2", Greater),
        ("0.0.0-0", "0", Greater),
        ("20230531", "20230101.1", Greater),
        ("9.2p1-2+deb12u3", "9.2p1-2+deb12u2", Greater),
        ("1:9.18.28-1~deb12u2", "1:9.18.24-1", Greater),
        ("2.7.0~beta1+really2.6.5-1", "2.7.0-1", Less),
        ("1.0~alpha", "1.0~beta", Less),
        ("12345678901234567890", "12345678901234567891", Less),
    ];

    #[test]
    fn table() {
        for (a, b, want) in TABLE {
            assert_eq!(compare_versions(a, b), *want, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn parts() {
        let v = DebVersion::parse("1:2.3-4-5");
        assert_eq!((v.epoch(), v.upstream(), v.revision()), (1, "2.3-4", "5"));
        assert_eq!(v.to_string(), "1:2.3-4-5");
    }

    /// Cross-check the table against `dpkg --compare-versions` on this (Debian) host.
    #[test]
    fn table_agrees_with_dpkg() {
        let status = std::process::Command::new("dpkg").arg("--version").output();
        assert!(
            status.is_ok_and(|o| o.status.success()),
            "dpkg is required for this test (the build host is Debian)"
        );
        for (a, b, want) in TABLE {
            for (op, holds) in [
                ("lt", *want == Less),
                ("eq", *want == Equal),
                ("gt", *want == Greater),
            ] {
                let out = std::process::Command::new("dpkg")
                    .args(["--compare-versions", a, op, b])
                    .status()
                    .unwrap();
                assert_eq!(out.success(), holds, "dpkg --compare-versions {a} {op} {b}");
            }
        }
    }
}
