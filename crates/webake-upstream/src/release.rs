//! The fields of a (verified) Release file that the freshness check needs.

use jiff::Timestamp;

/// One `SHA256:` line: digest, size, path relative to `dists/SUITE/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileDigest {
    pub sha256: String,
    pub size: u64,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Release {
    pub suite: Option<String>,
    pub codename: Option<String>,
    pub date: Option<String>,
    pub valid_until: Option<String>,
    pub acquire_by_hash: bool,
    pub sha256: Vec<FileDigest>,
}

/// Parse the single deb822 paragraph of a Release file. Unknown fields are ignored; a
/// malformed `SHA256` line is an error (the caller names the source).
pub(crate) fn parse_release(text: &str) -> Result<Release, String> {
    let mut r = Release {
        suite: None,
        codename: None,
        date: None,
        valid_until: None,
        acquire_by_hash: false,
        sha256: Vec::new(),
    };
    let mut field = String::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            // One paragraph only; anything after a blank line is not part of the Release.
            if r.sha256.is_empty() && field.is_empty() {
                continue;
            }
            break;
        }
        if let Some(cont) = line.strip_prefix([' ', '\t']) {
            if field.eq_ignore_ascii_case("SHA256") {
                r.sha256.push(
                    parse_digest_line(cont)
                        .ok_or_else(|| format!("line {}: bad SHA256 entry {cont:?}", i + 1))?,
                );
            }
            continue;
        }
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| format!("line {}: expected `Field: value`", i + 1))?;
        field = k.trim().to_owned();
        let v = v.trim().to_owned();
        match field.to_ascii_lowercase().as_str() {
            "suite" => r.suite = Some(v),
            "codename" => r.codename = Some(v),
            "date" => r.date = Some(v),
            "valid-until" => r.valid_until = Some(v),
            "acquire-by-hash" => r.acquire_by_hash = v.eq_ignore_ascii_case("yes"),
            _ => {}
        }
    }
    if r.sha256.is_empty() {
        return Err("no SHA256 file list".to_owned());
    }
    Ok(r)
}

fn parse_digest_line(line: &str) -> Option<FileDigest> {
    let mut it = line.split_whitespace();
    let (sha256, size, path) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some()
        || sha256.len() != 64
        || !sha256.bytes().all(|b| b.is_ascii_hexdigit())
        || path
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
    {
        return None;
    }
    Some(FileDigest {
        sha256: sha256.to_ascii_lowercase(),
        size: size.parse().ok()?,
        path: path.to_owned(),
    })
}

/// Parse a Release date (`Sat, 28 Nov 2026 14:09:31 UTC`, RFC 2822 with a zone name or an
/// offset).
pub(crate) fn parse_date(s: &str) -> Result<Timestamp, String> {
    jiff::fmt::rfc2822::DateTimeParser::new()
        .parse_timestamp(s.trim())
        .map_err(|e| format!("bad date {s:?}: {e}"))
}

/// RFC 3339 in UTC, whole seconds: how dates are stored in an `UpstreamState`.
pub(crate) fn rfc3339(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECURITY: &str = "\
Origin: Debian
Label: Debian-Security
Suite: oldstable-security
Version: 12
Codename: bookworm-security
Date: Sun, 29 Nov 2026 00:53:13 UTC
Valid-Until: Sun, 06 Dec 2026 00:53:13 UTC
Acquire-By-Hash: yes
Architectures: amd64 arm64 armel armhf i386 ppc64el s390x
Components: updates/main updates/contrib updates/non-free updates/non-free-firmware
Description: Debian 12 - Security Updates
MD5Sum:
 0d9cb8a0dd3fcbb1a53c3fe2ad25bc69  2560365 main/binary-amd64/Packages
SHA256:
 838af9c803e0c9688cb614537a6e65ec0eaa3e2bf33a0bfa84f78a6c883385cc  2560365 main/binary-amd64/Packages
 f9556704820a471d41f399a81a2c38c3675d61979d7262c6f3231353a0871ac2   383424 main/binary-amd64/Packages.xz
";

    #[test]
    fn parses_a_security_release() {
        let r = parse_release(SECURITY).unwrap();
        assert_eq!(r.suite.as_deref(), Some("oldstable-security"));
        assert_eq!(r.codename.as_deref(), Some("bookworm-security"));
        assert!(r.acquire_by_hash);
        assert_eq!(r.sha256.len(), 2, "MD5Sum lines are not SHA256 lines");
        assert_eq!(r.sha256[1].path, "main/binary-amd64/Packages.xz");
        assert_eq!(r.sha256[1].size, 383424);
        let d = parse_date(r.date.as_deref().unwrap()).unwrap();
        assert_eq!(rfc3339(d), "2026-11-29T00:53:13Z");
        let v = parse_date(r.valid_until.as_deref().unwrap()).unwrap();
        assert_eq!(rfc3339(v), "2026-12-06T00:53:13Z");
        assert_eq!(
            rfc3339(parse_date("Mon, 30 Nov 2026 01:02:03 +0100").unwrap()),
            "2026-11-30T00:02:03Z"
        );
    }

    #[test]
    fn rejects_bad_digest_lines_and_paths() {
        let bad = SECURITY.replace("main/binary-amd64/Packages.xz", "../../etc/passwd");
        assert!(parse_release(&bad).unwrap_err().contains("bad SHA256"));
        let bad = SECURITY.replace(" 838af9c8", " zz8af9c8");
        assert!(parse_release(&bad).is_err());
        assert!(
            parse_release("Suite: x\n")
                .unwrap_err()
                .contains("no SHA256")
        );
        assert!(parse_date("yesterday").is_err());
    }
}
