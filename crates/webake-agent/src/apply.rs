//! Applying a hostname: `/etc/hostname`, the `127.0.1.1` line of `/etc/hosts`, and the kernel
//! hostname. File edits are pure functions over bytes; writes go to a temp file in the same
//! directory and are renamed into place, so a crash never leaves a half-written file.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub const HOSTNAME_PATH: &str = "etc/hostname";
pub const HOSTS_PATH: &str = "etc/hosts";
/// Debian's convention for "this host's own name" when it has no fixed address.
pub const SELF_ADDRESS: &str = "127.0.1.1";

/// What a new `/etc/hosts` holds when the image has none.
const DEFAULT_HOSTS: &str = "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n";

#[derive(Debug)]
pub enum ApplyError {
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    Kernel {
        hostname: String,
        source: nix::Error,
    },
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApplyError::Io {
                action,
                path,
                source,
            } => write!(f, "cannot {action} {}: {source}", path.display()),
            ApplyError::Kernel { hostname, source } => {
                write!(
                    f,
                    "cannot set the kernel hostname to {hostname}: sethostname: {source}"
                )
            }
        }
    }
}

impl std::error::Error for ApplyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ApplyError::Io { source, .. } => Some(source),
            ApplyError::Kernel { source, .. } => Some(source),
        }
    }
}

/// The new content of `/etc/hosts` (`None` if the file does not exist): the first line whose
/// address is `127.0.1.1` becomes `127.0.1.1 <hostname>`, keeping its line ending; if there is
/// none, that line is appended. Every other byte is kept as it was.
pub fn edit_hosts(existing: Option<&[u8]>, hostname: &str) -> Vec<u8> {
    let entry = format!("{SELF_ADDRESS} {hostname}");
    let Some(existing) = existing else {
        return format!("{DEFAULT_HOSTS}{entry}\n").into_bytes();
    };
    let mut out = Vec::with_capacity(existing.len() + entry.len() + 1);
    let mut replaced = false;
    for line in existing.split_inclusive(|b| *b == b'\n') {
        if !replaced && first_field(line) == SELF_ADDRESS.as_bytes() {
            let ending_len = if line.ends_with(b"\r\n") {
                2
            } else {
                usize::from(line.ends_with(b"\n"))
            };
            out.extend_from_slice(entry.as_bytes());
            out.extend_from_slice(&line[line.len() - ending_len..]);
            replaced = true;
        } else {
            out.extend_from_slice(line);
        }
    }
    if !replaced {
        if !out.is_empty() && !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        out.extend_from_slice(entry.as_bytes());
        out.push(b'\n');
    }
    out
}

fn first_field(line: &[u8]) -> &[u8] {
    let is_space = |b: &u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    let start = line.iter().position(|b| !is_space(b)).unwrap_or(line.len());
    let rest = &line[start..];
    let end = rest.iter().position(is_space).unwrap_or(rest.len());
    &rest[..end]
}

/// What happened to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileChange {
    Unchanged,
    Created,
    Updated,
}

/// Reads `path`; `None` when it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, ApplyError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ApplyError::Io {
            action: "read",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes `contents` to `path` unless it already holds exactly that. Atomic (temp file +
/// fsync + rename); keeps the old file's permission bits, 0644 for a new file. A symlink at
/// `path` is replaced, never followed, so nothing outside the root is written.
pub fn write_if_changed(path: &Path, contents: &[u8]) -> Result<FileChange, ApplyError> {
    let existing = read_optional(path)?;
    if existing.as_deref() == Some(contents) {
        return Ok(FileChange::Unchanged);
    }
    let io_err = |action, source| ApplyError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    let mode = match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_file() => meta.permissions().mode() & 0o7777,
        _ => 0o644,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.webake-agent.{}", std::process::id()));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(contents)?;
        // `mode()` is filtered by the umask; set the bits we mean.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(source) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io_err("write", source));
    }
    Ok(if existing.is_some() {
        FileChange::Updated
    } else {
        FileChange::Created
    })
}

/// The kernel hostname of this UTS namespace.
pub fn kernel_hostname() -> Option<String> {
    nix::unistd::gethostname()
        .ok()
        .map(|h| h.to_string_lossy().into_owned())
}

/// `sethostname(2)`; needs CAP_SYS_ADMIN in the UTS namespace.
pub fn set_kernel_hostname(hostname: &str) -> Result<(), ApplyError> {
    nix::unistd::sethostname(hostname).map_err(|source| ApplyError::Kernel {
        hostname: hostname.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edit(existing: &str) -> String {
        String::from_utf8(edit_hosts(Some(existing.as_bytes()), "web-1")).unwrap()
    }

    #[test]
    fn hosts_edit_table() {
        for (existing, want) in [
            // Debian default: the line is replaced, the rest kept
            (
                "127.0.0.1\tlocalhost\n127.0.1.1\tdebian\n\n# IPv6\n::1 localhost ip6-localhost\n",
                "127.0.0.1\tlocalhost\n127.0.1.1 web-1\n\n# IPv6\n::1 localhost ip6-localhost\n",
            ),
            // aliases on the old line go with it
            ("127.0.1.1 old.example.com old\n", "127.0.1.1 web-1\n"),
            // indented, CRLF
            (
                "  127.0.1.1 old\r\n::1 x\r\n",
                "127.0.1.1 web-1\r\n::1 x\r\n",
            ),
            // no line: appended
            (
                "127.0.0.1 localhost\n",
                "127.0.0.1 localhost\n127.0.1.1 web-1\n",
            ),
            // no trailing newline: one is added before the new line, nothing else changes
            (
                "127.0.0.1 localhost",
                "127.0.0.1 localhost\n127.0.1.1 web-1\n",
            ),
            // last line without newline is replaced without adding one
            (
                "127.0.0.1 localhost\n127.0.1.1 old",
                "127.0.0.1 localhost\n127.0.1.1 web-1",
            ),
            // comments and look-alikes are not the line
            (
                "#127.0.1.1 old\n127.0.1.10 other\n",
                "#127.0.1.1 old\n127.0.1.10 other\n127.0.1.1 web-1\n",
            ),
            // only the first 127.0.1.1 line is rewritten
            (
                "127.0.1.1 a\n127.0.1.1 b\n",
                "127.0.1.1 web-1\n127.0.1.1 b\n",
            ),
            ("", "127.0.1.1 web-1\n"),
        ] {
            assert_eq!(edit(existing), want, "existing {existing:?}");
        }
    }

    #[test]
    fn hosts_edit_keeps_non_utf8_bytes() {
        let existing = b"# caf\xe9\n127.0.1.1 old\n\xff\xfe\n";
        let got = edit_hosts(Some(existing), "web-1");
        assert_eq!(got, b"# caf\xe9\n127.0.1.1 web-1\n\xff\xfe\n");
    }

    #[test]
    fn missing_hosts_gets_localhost_entries() {
        let got = String::from_utf8(edit_hosts(None, "web-1")).unwrap();
        assert_eq!(
            got,
            "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n127.0.1.1 web-1\n"
        );
    }

    #[test]
    fn writes_atomically_keeps_mode_and_replaces_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        assert_eq!(
            write_if_changed(&path, b"a\n").unwrap(),
            FileChange::Created
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert_eq!(
            write_if_changed(&path, b"a\n").unwrap(),
            FileChange::Unchanged
        );

        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            write_if_changed(&path, b"b\n").unwrap(),
            FileChange::Updated
        );
        assert_eq!(fs::read(&path).unwrap(), b"b\n");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );

        // a symlink pointing outside is replaced, its target untouched
        let outside = dir.path().join("outside");
        fs::write(&outside, b"keep\n").unwrap();
        let link = dir.path().join("hostname");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        write_if_changed(&link, b"web-1\n").unwrap();
        assert_eq!(fs::read(&outside).unwrap(), b"keep\n");
        assert_eq!(fs::read(&link).unwrap(), b"web-1\n");
        assert!(fs::symlink_metadata(&link).unwrap().file_type().is_file());

        // no temp files left behind
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["hostname", "hosts", "outside"]);
    }

    #[test]
    fn write_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("hostname");
        let err = write_if_changed(&path, b"x\n").unwrap_err().to_string();
        assert!(err.starts_with("cannot write "), "{err}");
        assert!(err.contains("missing-dir/hostname"), "{err}");
    }
}
