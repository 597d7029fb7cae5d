//! `var/lib/dpkg/status` parsing.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One installed Debian package.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// Source package name (the binary name when the stanza has no `Source:`).
    pub source: String,
    /// Source version (the binary version unless `Source: name (version)` says otherwise).
    pub source_version: String,
    /// `Installed-Size`, in KiB, when the stanza has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_size_kib: Option<u64>,
}

/// Parse a dpkg status database. Keeps packages whose status is `installed` with the `ok`
/// error flag, whatever the selection: `install ok installed`, but also `hold ok installed`
/// and `deinstall ok installed`, whose files are still on disk. Sorted by name, architecture.
pub fn parse_status(text: &str, path: &Path) -> Result<Vec<Package>> {
    let mut out = Vec::new();
    let mut stanza: Vec<(&str, String)> = Vec::new();
    let mut start_line = 1;
    for (idx, line) in text.lines().chain(std::iter::once("")).enumerate() {
        let line_no = idx + 1;
        if line.trim().is_empty() {
            if !stanza.is_empty() {
                if let Some(p) = package_of(&stanza, path, start_line)? {
                    out.push(p);
                }
                stanza.clear();
            }
            start_line = line_no + 1;
            continue;
        }
        if line.starts_with([' ', '\t']) {
            // Continuation of a multi-line field (Description, Conffiles): not needed.
            if stanza.is_empty() {
                return Err(Error::Parse {
                    path: path.to_owned(),
                    line: line_no,
                    message: "continuation line outside of a field".into(),
                });
            }
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(Error::Parse {
                path: path.to_owned(),
                line: line_no,
                message: format!("expected `Field: value`, found {line:?}"),
            });
        };
        stanza.push((key.trim(), value.trim().to_owned()));
    }
    out.sort();
    Ok(out)
}

fn package_of(stanza: &[(&str, String)], path: &Path, line: usize) -> Result<Option<Package>> {
    let field = |name: &str| {
        stanza
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let missing = |name: &str| Error::Parse {
        path: path.to_owned(),
        line,
        message: format!("stanza has no {name} field"),
    };
    let name = field("Package").ok_or_else(|| missing("Package"))?;
    let status = field("Status").ok_or_else(|| missing("Status"))?;
    let mut words = status.split_whitespace();
    let (_want, flag, state) = (words.next(), words.next(), words.next());
    if flag != Some("ok") || state != Some("installed") {
        return Ok(None);
    }
    let version = field("Version").ok_or_else(|| missing("Version"))?;
    let architecture = field("Architecture").ok_or_else(|| missing("Architecture"))?;
    let (source, source_version) = match field("Source") {
        None | Some("") => (name.to_owned(), version.to_owned()),
        Some(src) => match src.split_once('(') {
            Some((n, v)) => (
                n.trim().to_owned(),
                v.trim_end_matches(')').trim().to_owned(),
            ),
            None => (src.to_owned(), version.to_owned()),
        },
    };
    Ok(Some(Package {
        name: name.to_owned(),
        version: version.to_owned(),
        architecture: architecture.to_owned(),
        source,
        source_version,
        installed_size_kib: field("Installed-Size").and_then(|s| s.parse().ok()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stanzas() {
        let text = "\
Package: libc6
Status: install ok installed
Architecture: amd64
Source: glibc
Version: 2.36-9+deb12u4
Installed-Size: 12000
Description: GNU C Library
 multi-line description
 .

Package: removed
Status: deinstall ok config-files
Version: 1.0
Architecture: all

Package: libpcre2-8-0
Status: hold ok installed
Architecture: amd64
Source: pcre2 (10.42-1)
Version: 10.42-1+b1
";
        let pkgs = parse_status(text, Path::new("status")).unwrap();
        assert_eq!(pkgs.len(), 2);
        assert_eq!(pkgs[0].name, "libc6");
        assert_eq!(pkgs[0].source, "glibc");
        assert_eq!(pkgs[0].source_version, "2.36-9+deb12u4");
        assert_eq!(pkgs[0].installed_size_kib, Some(12000));
        assert_eq!(pkgs[1].source, "pcre2");
        assert_eq!(pkgs[1].source_version, "10.42-1");
        assert_eq!(pkgs[1].version, "10.42-1+b1");
    }

    #[test]
    fn errors_name_the_path_and_line() {
        let err = parse_status("Package: a\nnonsense\n", Path::new("/x/status")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/x/status:2: expected `Field: value`, found \"nonsense\""
        );
    }
}
