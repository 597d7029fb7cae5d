//! Read a root tree that is hostile input: every path is resolved as if the tree were `/`
//! (absolute symlink targets restart at the root, `..` stops at the root), so nothing outside
//! the tree is ever read. The tree is assumed not to change while it is read.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// Same limit as the kernel's (`MAXSYMLINKS`).
const MAX_SYMLINK_HOPS: usize = 40;

/// A directory read as the root of an image.
#[derive(Debug, Clone)]
pub(crate) struct Root {
    path: PathBuf,
    dev: u64,
}

/// Metadata of a resolved path, plus the host path it was found at.
pub(crate) struct Found {
    pub(crate) host_path: PathBuf,
    pub(crate) meta: fs::Metadata,
}

impl Root {
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let meta = fs::metadata(path).at(path)?;
        if !meta.is_dir() {
            return Err(Error::NotADirectory {
                root: path.to_owned(),
            });
        }
        Ok(Root {
            path: path.to_owned(),
            dev: meta.dev(),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn dev(&self) -> u64 {
        self.dev
    }

    /// Host path of `rel` without resolving anything (for lstat-style inspection).
    pub(crate) fn host(&self, rel: &str) -> PathBuf {
        self.path.join(rel.trim_start_matches('/'))
    }

    /// `lstat` of `rel` after resolving its parent directories inside the root; the last
    /// component is not followed. `None` when it does not exist.
    pub(crate) fn lstat(&self, rel: &str) -> Result<Option<Found>> {
        let rel = Path::new(rel.trim_start_matches('/'));
        let (parent, name) = match (rel.parent(), rel.file_name()) {
            (Some(p), Some(n)) => (p, n),
            _ => return Ok(None),
        };
        let Some(dir) = self.resolve(parent)? else {
            return Ok(None);
        };
        let host_path = dir.join(name);
        match fs::symlink_metadata(&host_path) {
            Ok(meta) => Ok(Some(Found { host_path, meta })),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(e).at(host_path),
        }
    }

    /// Resolve `rel` (symlinks included, the last component too) inside the root.
    /// `None` when a component is missing, not a directory, or symlinks loop.
    pub(crate) fn resolve(&self, rel: &Path) -> Result<Option<PathBuf>> {
        let mut queue: VecDeque<OsString> = VecDeque::new();
        push_components(&mut queue, rel, false);
        let mut current: Vec<OsString> = Vec::new();
        let mut hops = 0;
        while let Some(name) = queue.pop_front() {
            if name == ".." {
                current.pop();
                continue;
            }
            let mut host = self.path.clone();
            host.extend(&current);
            host.push(&name);
            let meta = match fs::symlink_metadata(&host) {
                Ok(m) => m,
                Err(e) if is_absent(&e) => return Ok(None),
                Err(e) => return Err(e).at(host),
            };
            if meta.file_type().is_symlink() {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Ok(None);
                }
                let target = fs::read_link(&host).at(&host)?;
                if target.is_absolute() {
                    current.clear();
                }
                push_components(&mut queue, &target, true);
            } else {
                if !queue.is_empty() && !meta.is_dir() {
                    return Ok(None);
                }
                current.push(name);
            }
        }
        let mut host = self.path.clone();
        host.extend(&current);
        Ok(Some(host))
    }

    /// Resolve `rel` inside the root and stat the result (a regular file, directory, ...).
    pub(crate) fn stat(&self, rel: &str) -> Result<Option<Found>> {
        let Some(host_path) = self.resolve(Path::new(rel))? else {
            return Ok(None);
        };
        match fs::symlink_metadata(&host_path) {
            Ok(meta) => Ok(Some(Found { host_path, meta })),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(e).at(host_path),
        }
    }

    /// Read at most `limit` bytes of the regular file `rel` (resolved inside the root).
    /// `None` when it is absent or not a regular file.
    pub(crate) fn read(&self, rel: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        match self.stat(rel)? {
            Some(found) if found.meta.is_file() => read_regular(&found.host_path, limit).map(Some),
            _ => Ok(None),
        }
    }

    /// Entries of the directory `rel` (resolved inside the root), sorted by name;
    /// empty when it is absent or not a directory.
    pub(crate) fn list(&self, rel: &str) -> Result<Vec<(OsString, fs::Metadata)>> {
        match self.stat(rel)? {
            Some(found) if found.meta.is_dir() => list_dir(&found.host_path),
            _ => Ok(Vec::new()),
        }
    }
}

/// Read at most `limit` bytes of a host path that was checked to be a regular file; refuses
/// to follow a symlink swapped in meanwhile and never blocks on a FIFO.
pub(crate) fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .at(path)?;
    let mut buf = Vec::new();
    file.take(limit).read_to_end(&mut buf).at(path)?;
    Ok(buf)
}

/// Entries of a host directory with their `lstat` metadata, sorted by name.
pub(crate) fn list_dir(dir: &Path) -> Result<Vec<(OsString, fs::Metadata)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        match entry.metadata() {
            Ok(meta) => out.push((entry.file_name(), meta)),
            Err(e) if is_absent(&e) => {}
            Err(e) => return Err(e).at(entry.path()),
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

fn push_components(queue: &mut VecDeque<OsString>, path: &Path, front: bool) {
    let names: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    if front {
        for n in names.into_iter().rev() {
            queue.push_front(n);
        }
    } else {
        queue.extend(names);
    }
}

/// Path of `host` relative to the root, as an absolute image path (`/etc/hostname`).
pub(crate) fn image_path(root: &Path, host: &Path) -> String {
    let rel = host.strip_prefix(root).unwrap_or(host);
    format!("/{}", rel.to_string_lossy())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn absolute_and_relative_symlinks_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir_all(root.join("usr/lib")).unwrap();
        fs::write(root.join("usr/lib/os-release"), "ID=inside\n").unwrap();
        symlink("../usr/lib/os-release", root.join("etc/os-release")).unwrap();
        symlink("/etc/shadow", root.join("etc/evil")).unwrap();
        symlink("../../../../../../etc/passwd", root.join("etc/evil2")).unwrap();
        symlink("/etc/loop", root.join("etc/loop")).unwrap();
        let r = Root::open(root).unwrap();
        assert_eq!(
            r.read("etc/os-release", 100).unwrap().unwrap(),
            b"ID=inside\n"
        );
        assert!(r.read("etc/evil", 100).unwrap().is_none());
        assert!(r.read("etc/evil2", 100).unwrap().is_none());
        assert!(r.read("etc/loop", 100).unwrap().is_none());
        fs::write(root.join("etc/passwd"), "inside").unwrap();
        assert_eq!(r.read("etc/evil2", 100).unwrap().unwrap(), b"inside");
        assert_eq!(
            r.resolve(Path::new("etc/evil2")).unwrap().unwrap(),
            root.join("etc/passwd")
        );
    }
}
