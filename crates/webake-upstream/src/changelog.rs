//! What changed in a package, for the reviewer: the newest entry of the Debian changelog a
//! `.deb` ships (no network), and the Debian security tracker page of its source package.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tool::{self, Codec};

/// A changelog.Debian.gz is a few KiB to a few MiB; the text of one is bounded here.
const MAX_CHANGELOG: u64 = 64 * 1024 * 1024;

/// The newest entry of a Debian changelog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangelogEntry {
    /// Source package (`openssl`).
    pub source: String,
    pub version: String,
    /// `bookworm-security`, `unstable`...
    pub distributions: String,
    /// `urgency=high` and other keywords after the `;`.
    pub urgency: String,
    /// The change lines, as written (indented `  * ...`), without the header and trailer.
    pub changes: String,
    /// `Name <email>` from the trailer line.
    pub maintainer: String,
    /// The trailer date, as written (RFC 2822).
    pub date: String,
}

/// The newest entry of `usr/share/doc/PACKAGE/changelog.Debian.gz` in the `.deb` at `deb`,
/// where PACKAGE is the binary package's name. Runs `dpkg-deb` (to read the name and stream
/// the data tarball) and `gzip -dc`; reads nothing from the network.
///
/// A package whose doc directory is a symlink to another package's (common for library
/// packages built from one source) ships no changelog: [`Error::NoChangelog`] says where the
/// link points, so the caller can read that package's `.deb` instead.
pub fn newest_changelog_entry(deb: &Path) -> Result<ChangelogEntry> {
    let name = deb_field(deb, "Package")?;
    let doc = format!("usr/share/doc/{name}");
    let wanted = format!("{doc}/changelog.Debian.gz");
    let gz = match find_in_data_tar(deb, &doc, &wanted)? {
        Found::File(bytes) => bytes,
        Found::Symlink(target) => {
            return Err(Error::NoChangelog {
                deb: deb.to_owned(),
                wanted,
                hint: Some(format!("{doc} is a symlink to {target}")),
            });
        }
        Found::Nothing => {
            return Err(Error::NoChangelog {
                deb: deb.to_owned(),
                wanted,
                hint: None,
            });
        }
    };
    let text = tool::decompress(Codec::Gzip, gz, MAX_CHANGELOG, &wanted)?;
    parse_first_entry(&String::from_utf8_lossy(&text)).map_err(|message| Error::BadPackage {
        path: deb.join(&wanted),
        message,
    })
}

/// The Debian security tracker page of a source package.
pub fn security_tracker_url(source: &str) -> Result<String> {
    // Debian Policy 5.6.1: lowercase letters, digits, `+ - .`, at least two characters,
    // starting with an alphanumeric.
    let valid = source.len() >= 2
        && source.as_bytes()[0].is_ascii_alphanumeric()
        && source
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
    if !valid {
        return Err(Error::InvalidPackageName(source.to_owned()));
    }
    Ok(format!(
        "https://security-tracker.debian.org/tracker/{source}"
    ))
}

/// One control field of a .deb (`dpkg-deb --field`).
pub fn deb_field(deb: &Path, field: &str) -> Result<String> {
    let out = tool::run_ok(
        Command::new("dpkg-deb").arg("--field").arg(deb).arg(field),
        b"",
        1024 * 1024,
        &format!("--field {}", deb.display()),
    )?;
    let value = String::from_utf8_lossy(&out).trim().to_owned();
    if value.is_empty() {
        return Err(Error::BadPackage {
            path: deb.to_owned(),
            message: format!("no {field} field"),
        });
    }
    Ok(value)
}

enum Found {
    File(Vec<u8>),
    Symlink(String),
    Nothing,
}

/// Stream `dpkg-deb --fsys-tarfile DEB` and pick `wanted` out of it; stop early when found.
fn find_in_data_tar(deb: &Path, doc_dir: &str, wanted: &str) -> Result<Found> {
    let program = "dpkg-deb";
    let context = format!("--fsys-tarfile {}", deb.display());
    let mut child = Command::new(program)
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            program: program.into(),
            source,
        })?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let (found, err) = std::thread::scope(|s| {
        let err = s.spawn(move || {
            let mut buf = String::new();
            let _ = (&mut stderr).take(64 * 1024).read_to_string(&mut buf);
            let _ = std::io::copy(&mut stderr, &mut std::io::sink());
            buf
        });
        let found = scan_tar(&mut stdout, doc_dir, wanted);
        // Stop the stream early: dpkg-deb gets EPIPE and exits.
        drop(stdout);
        (found, err.join().unwrap_or_default())
    });
    let status = child.wait().map_err(|source| Error::Spawn {
        program: program.into(),
        source,
    })?;
    match found {
        Ok(f @ (Found::File(_) | Found::Symlink(_))) => Ok(f),
        // Only a complete, successful stream proves the file is absent.
        _ if !status.success() => Err(Error::Command {
            program: program.into(),
            context,
            status: status.to_string(),
            stderr: err.trim().to_owned(),
        }),
        Ok(Found::Nothing) => Ok(Found::Nothing),
        Err(message) => Err(Error::BadPackage {
            path: deb.to_owned(),
            message,
        }),
    }
}

/// Read a tar stream (ustar, with GNU long names and pax `path`) up to `wanted`.
fn scan_tar(r: &mut impl Read, doc_dir: &str, wanted: &str) -> Result<Found, String> {
    let mut long_name: Option<String> = None;
    loop {
        let mut header = [0u8; 512];
        if !read_block(r, &mut header)? || header.iter().all(|&b| b == 0) {
            return Ok(Found::Nothing);
        }
        let size = octal(&header[124..136]).ok_or("bad tar header size")?;
        let kind = header[156];
        let padded = size.div_ceil(512) * 512;
        let mut name = long_name.take().unwrap_or_else(|| {
            let prefix = cstr(&header[345..500]);
            let base = cstr(&header[0..100]);
            if prefix.is_empty() {
                base
            } else {
                format!("{prefix}/{base}")
            }
        });
        match kind {
            b'L' | b'x' => {
                let data = read_exact_vec(r, size, padded)?;
                long_name = if kind == b'L' {
                    Some(cstr(&data))
                } else {
                    pax_path(&data)
                };
                continue;
            }
            _ => {}
        }
        name = normalize(&name);
        if name == wanted && matches!(kind, b'0' | 0 | b'7') {
            return Ok(Found::File(read_exact_vec(r, size, padded)?));
        }
        if (name == wanted || name == doc_dir) && kind == b'2' {
            return Ok(Found::Symlink(cstr(&header[157..257])));
        }
        skip(r, padded)?;
    }
}

fn normalize(name: &str) -> String {
    name.trim_start_matches("./")
        .trim_start_matches('/')
        .trim_end_matches('/')
        .to_owned()
}

fn read_block(r: &mut impl Read, buf: &mut [u8]) -> Result<bool, String> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err("truncated tar stream".into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the tar stream: {e}")),
        }
    }
    Ok(true)
}

fn read_exact_vec(r: &mut impl Read, size: u64, padded: u64) -> Result<Vec<u8>, String> {
    if size > MAX_CHANGELOG {
        return Err(format!("tar member of {size} bytes is too large"));
    }
    let mut data = vec![0u8; padded as usize];
    if !read_block(r, &mut data)? && padded > 0 {
        return Err("truncated tar stream".into());
    }
    data.truncate(size as usize);
    Ok(data)
}

fn skip(r: &mut impl Read, n: u64) -> Result<(), String> {
    let copied = std::io::copy(&mut r.take(n), &mut std::io::sink())
        .map_err(|e| format!("reading the tar stream: {e}"))?;
    if copied != n {
        return Err("truncated tar stream".into());
    }
    Ok(())
}

fn octal(field: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(field).ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c == ' ');
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

fn cstr(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// The `path` record of a pax extended header (`LEN path=VALUE\n` records).
fn pax_path(data: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(data);
    text.lines().find_map(|rec| {
        let (_, kv) = rec.split_once(' ')?;
        kv.strip_prefix("path=").map(str::to_owned)
    })
}

/// The first entry of a Debian changelog:
/// `SOURCE (VERSION) DISTRIBUTIONS; urgency=U`, change lines, ` -- NAME <EMAIL>  DATE`.
pub fn parse_first_entry(text: &str) -> Result<ChangelogEntry, String> {
    let mut lines = text.lines().skip_while(|l| l.trim().is_empty());
    let header = lines.next().ok_or("empty changelog")?;
    let (source, rest) = header
        .split_once(" (")
        .ok_or_else(|| format!("bad changelog header {header:?}"))?;
    let (version, rest) = rest
        .split_once(')')
        .ok_or_else(|| format!("bad changelog header {header:?}"))?;
    let (distributions, urgency) = rest.split_once(';').unwrap_or((rest, ""));
    let mut changes = Vec::new();
    for line in lines {
        if let Some(trailer) = line.strip_prefix(" -- ") {
            let (maintainer, date) = trailer
                .split_once("  ")
                .ok_or_else(|| format!("bad changelog trailer {line:?}"))?;
            while changes.last().is_some_and(|l: &&str| l.trim().is_empty()) {
                changes.pop();
            }
            let first = changes
                .iter()
                .position(|l| !l.trim().is_empty())
                .unwrap_or(changes.len());
            return Ok(ChangelogEntry {
                source: source.trim().to_owned(),
                version: version.trim().to_owned(),
                distributions: distributions.trim().to_owned(),
                urgency: urgency.trim().to_owned(),
                changes: changes[first..].join("\n"),
                maintainer: maintainer.trim().to_owned(),
                date: date.trim().to_owned(),
            });
        }
        if !line.is_empty() && !line.starts_with([' ', '\t']) {
            return Err(format!("changelog entry without a trailer before {line:?}"));
        }
        changes.push(line);
    }
    Err("changelog entry without a trailer line".into())
}

/// The newest entry of an installed package's `changelog.Debian.gz` (its bytes, read by the
/// caller from a tree; `path` names it in errors).
pub fn newest_entry_of_changelog_gz(gz: Vec<u8>, path: &Path) -> Result<ChangelogEntry> {
    let what = path.display().to_string();
    let text = tool::decompress(Codec::Gzip, gz, MAX_CHANGELOG, &what)?;
    parse_first_entry(&String::from_utf8_lossy(&text)).map_err(|message| Error::BadPackage {
        path: path.to_owned(),
        message,
    })
}

/// Where a binary package's Debian changelog lives (for callers that read trees, not .debs).
pub fn changelog_path(package: &str) -> PathBuf {
    Path::new("usr/share/doc")
        .join(package)
        .join("changelog.Debian.gz")
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENSSL: &str = "openssl (3.0.17-1~deb12u3) bookworm-security; urgency=medium

  * Fix CVE-2025-9230 (Out-of-bounds read & write in RFC 3211 KEK Unwrap).
  * Fix CVE-2025-9232.

 -- Sebastian Andrzej Siewior <sebastian@breakpoint.cc>  Tue, 30 Sep 2025 21:45:03 +0200

openssl (3.0.17-1~deb12u2) bookworm; urgency=medium

  * Older.

 -- Sebastian Andrzej Siewior <sebastian@breakpoint.cc>  Sat, 26 Jul 2025 10:00:00 +0200
";

    #[test]
    fn first_entry() {
        let e = parse_first_entry(OPENSSL).unwrap();
        assert_eq!(e.source, "openssl");
        assert_eq!(e.version, "3.0.17-1~deb12u3");
        assert_eq!(e.distributions, "bookworm-security");
        assert_eq!(e.urgency, "urgency=medium");
        assert_eq!(
            e.changes,
            "  * Fix CVE-2025-9230 (Out-of-bounds read & write in RFC 3211 KEK Unwrap).\n  * Fix CVE-2025-9232."
        );
        assert_eq!(
            e.maintainer,
            "Sebastian Andrzej Siewior <sebastian@breakpoint.cc>"
        );
        assert_eq!(e.date, "Tue, 30 Sep 2025 21:45:03 +0200");
        assert!(parse_first_entry("").is_err());
        assert!(parse_first_entry("x (1) y; urgency=low\n\n  * a\n").is_err());
        assert!(parse_first_entry("no header here\n").is_err());
    }

    #[test]
    fn tracker_urls() {
        assert_eq!(
            security_tracker_url("openssl").unwrap(),
            "https://security-tracker.debian.org/tracker/openssl"
        );
        security_tracker_url("libxml2").unwrap();
        security_tracker_url("gcc-12+x.y").unwrap();
        for bad in ["", "a", "Openssl", "a b", "x)](javascript:", "-x", "a/b"] {
            assert!(security_tracker_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tar_scanning() {
        // A tar built by the system tar: a symlinked doc dir and a regular changelog.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let doc = root.join("usr/share/doc");
        std::fs::create_dir_all(doc.join("libfoo1")).unwrap();
        std::fs::write(doc.join("libfoo1/changelog.Debian.gz"), b"GZDATA").unwrap();
        std::os::unix::fs::symlink("libfoo1", doc.join("libfoo-dev")).unwrap();
        let long = "d".repeat(120);
        std::fs::create_dir_all(doc.join(&long)).unwrap();
        std::fs::write(doc.join(&long).join("changelog.Debian.gz"), b"LONG").unwrap();
        let tar = dir.path().join("t.tar");
        let st = Command::new("tar")
            .arg("-cf")
            .arg(&tar)
            .arg("-C")
            .arg(&root)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success());
        let data = std::fs::read(&tar).unwrap();
        let scan = |d: &str| {
            scan_tar(
                &mut data.as_slice(),
                &format!("usr/share/doc/{d}"),
                &format!("usr/share/doc/{d}/changelog.Debian.gz"),
            )
            .unwrap()
        };
        assert!(matches!(scan("libfoo1"), Found::File(b) if b == b"GZDATA"));
        assert!(matches!(scan("libfoo-dev"), Found::Symlink(t) if t == "libfoo1"));
        assert!(matches!(scan(&long), Found::File(b) if b == b"LONG"));
        assert!(matches!(scan("absent"), Found::Nothing));
        let truncated = &data[..700];
        let r = scan_tar(
            &mut &truncated[..],
            "usr/share/doc/absent",
            "usr/share/doc/absent/x",
        );
        assert!(r.is_err());
    }
}
