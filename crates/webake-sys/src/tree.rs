//! Path-safe access to an image tree from the build host.
//!
//! An image tree is written by untrusted code (package scripts, roles), so any of its path
//! components may be a symlink planted to lead the baker elsewhere. Every operation here takes
//! a path *inside* the tree and resolves it with `openat2(RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS)` against a descriptor of the tree's root: symlinks are followed the
//! way the image itself would see them (an absolute `/boot/grub -> /efi/grub` stays in the
//! tree), `..` cannot climb out, and `/proc/self/...` tricks do not work. The last component
//! is never followed when writing: a write replaces what is there (a symlink, a hard link
//! shared with the layer cache) with a new inode, it never writes through it.
//!
//! Linux 5.6+ (openat2). There is deliberately no fallback: a kernel without it cannot run the
//! sandbox either.

use std::ffi::{CStr, CString, OsString};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

/// An error of a tree operation, naming the path inside the tree.
#[derive(Debug, thiserror::Error)]
#[error("{op} {inner} in {root}: {source}")]
pub struct TreeError {
    pub op: &'static str,
    /// The path inside the tree (`/etc/hosts`).
    pub inner: String,
    pub root: String,
    #[source]
    pub source: std::io::Error,
}

impl TreeError {
    pub fn kind(&self) -> std::io::ErrorKind {
        self.source.kind()
    }
}

pub type Result<T> = std::result::Result<T, TreeError>;

/// A directory tree accessed only through paths resolved inside it.
#[derive(Debug)]
pub struct Tree {
    root: OwnedFd,
    path: PathBuf,
}

/// `struct open_how` of openat2(2).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

fn cstr(b: &[u8]) -> std::io::Result<CString> {
    CString::new(b).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

fn last_err() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// `inner` as a relative path with no `.` components; `..` stays (resolved inside the root).
fn relative(inner: &Path) -> PathBuf {
    inner
        .components()
        .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
        .collect()
}

impl Tree {
    /// Open the tree at `path` (a directory webake created or chose: the root itself is
    /// trusted, nothing below it is).
    pub fn open(path: &Path) -> Result<Self> {
        let c = cstr(path.as_os_str().as_bytes()).map_err(|e| TreeError {
            op: "open",
            inner: "/".into(),
            root: path.display().to_string(),
            source: e,
        })?;
        // SAFETY: open with a NUL-terminated path; we own the returned fd.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(TreeError {
                op: "open",
                inner: "/".into(),
                root: path.display().to_string(),
                source: last_err(),
            });
        }
        Ok(Self {
            // SAFETY: fresh fd.
            root: unsafe { OwnedFd::from_raw_fd(fd) },
            path: path.to_path_buf(),
        })
    }

    /// The host path of the tree's root (for messages and for tools that take a directory).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, op: &'static str, inner: &Path, source: std::io::Error) -> TreeError {
        TreeError {
            op,
            inner: Path::new("/").join(relative(inner)).display().to_string(),
            root: self.path.display().to_string(),
            source,
        }
    }

    /// openat2 relative to the root, resolved inside it.
    fn resolve(&self, rel: &Path, flags: i32, mode: u32) -> std::io::Result<OwnedFd> {
        let p = if rel.as_os_str().is_empty() {
            cstr(b".")?
        } else {
            cstr(rel.as_os_str().as_bytes())?
        };
        let how = OpenHow {
            flags: (flags | libc::O_CLOEXEC) as u64,
            mode: mode as u64,
            resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
        };
        // A concurrent rename can make the kernel refuse with EAGAIN: retry a few times.
        for _ in 0..16 {
            // SAFETY: openat2 with a valid dirfd, NUL-terminated path and open_how.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_openat2,
                    self.root.as_raw_fd(),
                    p.as_ptr(),
                    &how as *const OpenHow,
                    std::mem::size_of::<OpenHow>(),
                )
            };
            if fd >= 0 {
                // SAFETY: fresh fd.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) });
            }
            let e = last_err();
            if e.raw_os_error() != Some(libc::EAGAIN) {
                return Err(e);
            }
        }
        Err(std::io::Error::from_raw_os_error(libc::EAGAIN))
    }

    /// The directory that holds `inner` (resolved inside the tree) and the last component.
    fn parent(&self, inner: &Path) -> std::io::Result<(OwnedFd, CString)> {
        let rel = relative(inner);
        let name = match rel.components().next_back() {
            Some(Component::Normal(n)) => n.to_owned(),
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "needs a file name as the last component",
                ));
            }
        };
        let dir = rel.parent().unwrap_or(Path::new(""));
        let fd = self.resolve(dir, libc::O_PATH | libc::O_DIRECTORY, 0)?;
        Ok((fd, cstr(name.as_bytes())?))
    }

    /// Create `inner` and every missing directory above it (mode for new ones).
    pub fn create_dir_all(&self, inner: &Path, mode: u32) -> Result<()> {
        let rel = relative(inner);
        let mut prefix = PathBuf::new();
        for c in rel.components() {
            prefix.push(c);
            match self.resolve(&prefix, libc::O_PATH | libc::O_DIRECTORY, 0) {
                Ok(_) => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(self.err("mkdir", &prefix, e)),
            }
            let (dir, name) = self
                .parent(&prefix)
                .map_err(|e| self.err("mkdir", &prefix, e))?;
            // SAFETY: mkdirat relative to an fd we hold.
            if unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) } != 0 {
                // EEXIST here: a symlink whose target is missing inside the tree (`mkdir -p`
                // in the image would fail the same way).
                return Err(self.err("mkdir", &prefix, last_err()));
            }
        }
        Ok(())
    }

    /// Remove whatever is at `inner` (not following a final symlink; directories recursively).
    /// Returns whether something was there.
    pub fn remove(&self, inner: &Path) -> Result<bool> {
        let (dir, name) = match self.parent(inner) {
            Ok(x) => x,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(false),
            Err(e) => return Err(self.err("remove", inner, e)),
        };
        remove_at(dir.as_fd(), &name).map_err(|e| self.err("remove", inner, e))
    }

    /// Write `content` to a new file at `inner` with `mode`, replacing what was there (a
    /// file, a symlink, a hard link shared with a cache: never written through).
    pub fn write(&self, inner: &Path, content: &[u8], mode: u32) -> Result<()> {
        self.write_with(inner, mode, |f| f.write_all(content))
    }

    /// Like [`Tree::write`], with the content produced by `fill`.
    pub fn write_with(
        &self,
        inner: &Path,
        mode: u32,
        fill: impl FnOnce(&mut File) -> std::io::Result<()>,
    ) -> Result<()> {
        let (dir, name) = self
            .parent(inner)
            .map_err(|e| self.err("write", inner, e))?;
        unlink_file(dir.as_fd(), &name).map_err(|e| self.err("write", inner, e))?;
        // SAFETY: openat relative to our fd; O_EXCL|O_NOFOLLOW creates a new inode only.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                mode,
            )
        };
        if fd < 0 {
            return Err(self.err("write", inner, last_err()));
        }
        // SAFETY: fresh fd.
        let mut f = unsafe { File::from_raw_fd(fd) };
        fill(&mut f).map_err(|e| self.err("write", inner, e))?;
        // SAFETY: fchmod on our fd (the umask must not narrow the mode).
        if unsafe { libc::fchmod(f.as_raw_fd(), mode) } != 0 {
            return Err(self.err("chmod", inner, last_err()));
        }
        Ok(())
    }

    /// A symlink at `inner` pointing to `target`, replacing what was there.
    pub fn symlink(&self, target: &Path, inner: &Path) -> Result<()> {
        let (dir, name) = self
            .parent(inner)
            .map_err(|e| self.err("symlink", inner, e))?;
        unlink_file(dir.as_fd(), &name).map_err(|e| self.err("symlink", inner, e))?;
        let t = cstr(target.as_os_str().as_bytes()).map_err(|e| self.err("symlink", inner, e))?;
        // SAFETY: symlinkat relative to our fd.
        if unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), name.as_ptr()) } != 0 {
            return Err(self.err("symlink", inner, last_err()));
        }
        Ok(())
    }

    /// A device node, fifo or socket at `inner` (`mode` includes the file type bits).
    pub fn mknod(&self, inner: &Path, mode: u32, dev: u64) -> Result<()> {
        let (dir, name) = self
            .parent(inner)
            .map_err(|e| self.err("mknod", inner, e))?;
        unlink_file(dir.as_fd(), &name).map_err(|e| self.err("mknod", inner, e))?;
        // SAFETY: mknodat relative to our fd.
        if unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, dev) } != 0 {
            return Err(self.err("mknod", inner, last_err()));
        }
        Ok(())
    }

    /// A hard link at `new` to the existing `existing` (neither followed if a symlink).
    pub fn hard_link(&self, existing: &Path, new: &Path) -> Result<()> {
        let (d1, n1) = self
            .parent(existing)
            .map_err(|e| self.err("link", existing, e))?;
        let (d2, n2) = self.parent(new).map_err(|e| self.err("link", new, e))?;
        // SAFETY: linkat between fds we hold, no AT_SYMLINK_FOLLOW.
        if unsafe { libc::linkat(d1.as_raw_fd(), n1.as_ptr(), d2.as_raw_fd(), n2.as_ptr(), 0) } != 0
        {
            return Err(self.err("link", new, last_err()));
        }
        Ok(())
    }

    /// A new hard link at `inner` to the host file `src`, a path outside the tree that the
    /// caller controls (a symlink at `src` is linked itself, never followed). Nothing at
    /// `inner` is replaced: an existing entry is an error (`AlreadyExists`). This is how a
    /// file staged by webake enters a tree without copying its data.
    pub fn link_in(&self, src: &Path, inner: &Path) -> Result<()> {
        let (dir, name) = self.parent(inner).map_err(|e| self.err("link", inner, e))?;
        let s = cstr(src.as_os_str().as_bytes()).map_err(|e| self.err("link", inner, e))?;
        // SAFETY: linkat from a NUL-terminated host path into a directory fd we hold; no
        // AT_SYMLINK_FOLLOW.
        if unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                s.as_ptr(),
                dir.as_raw_fd(),
                name.as_ptr(),
                0,
            )
        } != 0
        {
            return Err(self.err("link", inner, last_err()));
        }
        Ok(())
    }

    /// An `O_PATH` descriptor of `inner` itself (a final symlink is not followed).
    fn handle(&self, inner: &Path) -> std::io::Result<OwnedFd> {
        let (dir, name) = self.parent(inner)?;
        // SAFETY: openat relative to our fd.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(last_err());
        }
        // SAFETY: fresh fd.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Metadata of `inner` itself (like `symlink_metadata`); `None` if absent.
    pub fn metadata(&self, inner: &Path) -> Result<Option<std::fs::Metadata>> {
        match self.handle(inner) {
            Ok(fd) => File::from(fd)
                .metadata()
                .map(Some)
                .map_err(|e| self.err("stat", inner, e)),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => {
                Ok(None)
            }
            Err(e) => Err(self.err("stat", inner, e)),
        }
    }

    /// Set the mode of `inner` (a symlink is left alone).
    pub fn chmod(&self, inner: &Path, mode: u32) -> Result<()> {
        let fd = self
            .handle(inner)
            .map_err(|e| self.err("chmod", inner, e))?;
        let f = File::from(fd);
        let md = f.metadata().map_err(|e| self.err("chmod", inner, e))?;
        if md.file_type().is_symlink() {
            return Ok(());
        }
        let p = proc_fd(&f);
        // SAFETY: chmod of the inode behind our O_PATH fd (the magic link is not re-resolved).
        if unsafe { libc::chmod(p.as_ptr(), mode) } != 0 {
            return Err(self.err("chmod", inner, last_err()));
        }
        Ok(())
    }

    /// Set the owner of `inner` itself (not following a final symlink).
    pub fn chown(&self, inner: &Path, uid: u32, gid: u32) -> Result<()> {
        let (dir, name) = self
            .parent(inner)
            .map_err(|e| self.err("chown", inner, e))?;
        // SAFETY: fchownat relative to our fd, no follow.
        if unsafe {
            libc::fchownat(
                dir.as_raw_fd(),
                name.as_ptr(),
                uid,
                gid,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        } != 0
        {
            return Err(self.err("chown", inner, last_err()));
        }
        Ok(())
    }

    /// Set access and modification times of `inner` itself (seconds, nanoseconds).
    pub fn set_times(&self, inner: &Path, atime: (i64, i64), mtime: (i64, i64)) -> Result<()> {
        let (dir, name) = self
            .parent(inner)
            .map_err(|e| self.err("utimens", inner, e))?;
        let ts = [
            libc::timespec {
                tv_sec: atime.0,
                tv_nsec: atime.1,
            },
            libc::timespec {
                tv_sec: mtime.0,
                tv_nsec: mtime.1,
            },
        ];
        // SAFETY: utimensat relative to our fd, no follow.
        if unsafe {
            libc::utimensat(
                dir.as_raw_fd(),
                name.as_ptr(),
                ts.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        } != 0
        {
            return Err(self.err("utimens", inner, last_err()));
        }
        Ok(())
    }

    /// Set an extended attribute on `inner` (not on symlinks: refused with an error).
    pub fn set_xattr(&self, inner: &Path, name: &CStr, value: &[u8]) -> Result<()> {
        let fd = self
            .handle(inner)
            .map_err(|e| self.err("setxattr", inner, e))?;
        let f = File::from(fd);
        let md = f.metadata().map_err(|e| self.err("setxattr", inner, e))?;
        if md.file_type().is_symlink() {
            return Err(self.err(
                "setxattr",
                inner,
                std::io::Error::new(std::io::ErrorKind::Unsupported, "on a symlink"),
            ));
        }
        let p = proc_fd(&f);
        // SAFETY: setxattr on the inode behind our O_PATH fd.
        if unsafe {
            libc::setxattr(
                p.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        } != 0
        {
            return Err(self.err("setxattr", inner, last_err()));
        }
        Ok(())
    }

    /// Open `inner` for reading, symlinks followed inside the tree.
    pub fn open_read(&self, inner: &Path) -> Result<File> {
        self.resolve(&relative(inner), libc::O_RDONLY, 0)
            .map(File::from)
            .map_err(|e| self.err("open", inner, e))
    }

    /// Read `inner` whole, symlinks followed inside the tree.
    pub fn read(&self, inner: &Path) -> Result<Vec<u8>> {
        let mut f = self.open_read(inner)?;
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut v).map_err(|e| self.err("read", inner, e))?;
        Ok(v)
    }

    /// Does `inner` exist (symlinks followed inside the tree)?
    pub fn exists(&self, inner: &Path) -> bool {
        self.resolve(&relative(inner), libc::O_PATH, 0).is_ok()
    }

    /// Is `inner` a directory (symlinks followed inside the tree)?
    pub fn is_dir(&self, inner: &Path) -> bool {
        self.resolve(&relative(inner), libc::O_PATH | libc::O_DIRECTORY, 0)
            .is_ok()
    }

    /// The target of the symlink at `inner`.
    pub fn read_link(&self, inner: &Path) -> Result<PathBuf> {
        let (dir, name) = self
            .parent(inner)
            .map_err(|e| self.err("readlink", inner, e))?;
        let mut buf = vec![0u8; 4096];
        // SAFETY: readlinkat into our buffer.
        let n = unsafe {
            libc::readlinkat(
                dir.as_raw_fd(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(self.err("readlink", inner, last_err()));
        }
        buf.truncate(n as usize);
        Ok(PathBuf::from(OsString::from_vec(buf)))
    }

    /// The names in directory `inner` (symlinks followed inside the tree), sorted.
    pub fn read_dir(&self, inner: &Path) -> Result<Vec<OsString>> {
        let fd = self
            .resolve(&relative(inner), libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .map_err(|e| self.err("readdir", inner, e))?;
        let mut names: Vec<OsString> = std::fs::read_dir(proc_path(fd.as_raw_fd()))
            .map_err(|e| self.err("readdir", inner, e))?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        names.sort();
        Ok(names)
    }
}

fn proc_path(fd: i32) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{fd}"))
}

fn proc_fd(f: &File) -> CString {
    // A path of digits never contains NUL.
    CString::new(format!("/proc/self/fd/{}", f.as_raw_fd())).unwrap_or_default()
}

/// Remove a non-directory entry; absent is fine; a directory is an error.
fn unlink_file(dir: BorrowedFd<'_>, name: &CStr) -> std::io::Result<()> {
    // SAFETY: unlinkat relative to our fd.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) } != 0 {
        let e = last_err();
        match e.raw_os_error() {
            Some(libc::ENOENT) => {}
            Some(libc::EISDIR) | Some(libc::EPERM) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::IsADirectory,
                    "a directory is in the way",
                ));
            }
            _ => return Err(e),
        }
    }
    Ok(())
}

/// Remove `name` in `dir`, recursively for directories, never following symlinks.
fn remove_at(dir: BorrowedFd<'_>, name: &CStr) -> std::io::Result<bool> {
    // SAFETY: unlinkat relative to our fd.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) } == 0 {
        return Ok(true);
    }
    let e = last_err();
    match e.raw_os_error() {
        Some(libc::ENOENT) => return Ok(false),
        Some(libc::EISDIR) | Some(libc::EPERM) => {}
        _ => return Err(e),
    }
    // SAFETY: open the directory itself, refusing a symlink.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(last_err());
    }
    // SAFETY: fresh fd.
    let sub = unsafe { OwnedFd::from_raw_fd(fd) };
    let names: Vec<OsString> = std::fs::read_dir(proc_path(sub.as_raw_fd()))?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    for n in names {
        remove_at(sub.as_fd(), &cstr(n.as_bytes())?)?;
    }
    // SAFETY: unlinkat relative to our fd.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) } != 0 {
        return Err(last_err());
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, symlink};

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let host = t.path().join("host");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(host.join("victim"), "host").unwrap();
        (t, root, host)
    }

    #[test]
    fn a_planted_absolute_symlink_stays_inside_the_tree() {
        let (_t, root, host) = setup();
        // /boot/grub -> <host dir> (absolute, as a step could plant it): resolved inside the
        // tree, where that directory does not exist, so the write is refused.
        std::fs::create_dir_all(root.join("boot")).unwrap();
        symlink(&host, root.join("boot/grub")).unwrap();
        let tree = Tree::open(&root).unwrap();
        assert!(tree.create_dir_all(Path::new("/boot/grub"), 0o755).is_err());
        assert!(
            tree.write(Path::new("/boot/grub/grub.cfg"), b"cfg", 0o644)
                .is_err()
        );
        assert!(!host.join("grub.cfg").exists());
        assert_eq!(
            std::fs::read_to_string(host.join("victim")).unwrap(),
            "host"
        );
        // A legitimate absolute link (/boot/efi -> /efi) is followed inside the tree.
        std::fs::create_dir_all(root.join("efi")).unwrap();
        symlink("/efi", root.join("boot/efi")).unwrap();
        tree.write(Path::new("/boot/efi/x"), b"y", 0o644).unwrap();
        assert_eq!(std::fs::read_to_string(root.join("efi/x")).unwrap(), "y");
    }

    #[test]
    fn dotdot_cannot_climb_out() {
        let (_t, root, host) = setup();
        let tree = Tree::open(&root).unwrap();
        let rel = format!("/../../../../{}/victim", host.display());
        let r = tree.write(Path::new(&rel), b"x", 0o644);
        // ".." is clamped at the root: the parent is looked up inside the tree, where it
        // does not exist.
        assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::NotFound);
        assert_eq!(
            std::fs::read_to_string(host.join("victim")).unwrap(),
            "host"
        );
    }

    #[test]
    fn a_final_symlink_is_replaced_not_written_through() {
        let (_t, root, host) = setup();
        symlink(host.join("victim"), root.join("etc/hosts")).unwrap();
        let tree = Tree::open(&root).unwrap();
        tree.write(Path::new("/etc/hosts"), b"127.0.0.1 localhost\n", 0o644)
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(host.join("victim")).unwrap(),
            "host"
        );
        let md = std::fs::symlink_metadata(root.join("etc/hosts")).unwrap();
        assert!(md.is_file());
        assert_eq!(md.mode() & 0o7777, 0o644);
    }

    #[test]
    fn a_shared_hard_link_is_replaced_not_written_through() {
        let (_t, root, host) = setup();
        std::fs::hard_link(host.join("victim"), root.join("etc/fstab")).unwrap();
        let tree = Tree::open(&root).unwrap();
        tree.write(Path::new("etc/fstab"), b"new", 0o644).unwrap();
        assert_eq!(
            std::fs::read_to_string(host.join("victim")).unwrap(),
            "host"
        );
        assert_eq!(
            std::fs::read_to_string(root.join("etc/fstab")).unwrap(),
            "new"
        );
    }

    #[test]
    fn reads_follow_symlinks_inside_only() {
        let (_t, root, host) = setup();
        std::fs::write(root.join("etc/real"), "inside").unwrap();
        symlink("/etc/real", root.join("etc/abs")).unwrap();
        symlink(host.join("victim"), root.join("etc/out")).unwrap();
        let tree = Tree::open(&root).unwrap();
        assert_eq!(tree.read(Path::new("/etc/abs")).unwrap(), b"inside");
        // The absolute link to the host's file resolves inside the tree, where it is absent.
        assert!(tree.read(Path::new("/etc/out")).is_err());
    }

    #[test]
    fn link_in_shares_the_inode_stays_inside_and_never_replaces() {
        let (t, root, host) = setup();
        let staged = t.path().join("staged");
        std::fs::write(&staged, "data").unwrap();
        let tree = Tree::open(&root).unwrap();
        tree.link_in(&staged, Path::new("/etc/file")).unwrap();
        let a = std::fs::metadata(&staged).unwrap();
        let b = std::fs::symlink_metadata(root.join("etc/file")).unwrap();
        assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()));
        // Something already there is an error, not replaced.
        let e = tree.link_in(&staged, Path::new("/etc/file")).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        // A planted parent symlink to a host directory resolves inside the tree (absent).
        symlink(&host, root.join("etc/out")).unwrap();
        assert!(tree.link_in(&staged, Path::new("/etc/out/x")).is_err());
        assert!(!host.join("x").exists());
        // A symlink at the source is linked itself, not its target.
        symlink(host.join("victim"), t.path().join("srclink")).unwrap();
        tree.link_in(&t.path().join("srclink"), Path::new("/etc/l"))
            .unwrap();
        assert!(
            std::fs::symlink_metadata(root.join("etc/l"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn create_dir_all_through_an_in_tree_symlink_and_remove_never_follows() {
        let (_t, root, host) = setup();
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        symlink("usr/lib", root.join("lib")).unwrap();
        symlink(&host, root.join("etc/evil")).unwrap();
        let tree = Tree::open(&root).unwrap();
        tree.create_dir_all(Path::new("/lib/systemd/system"), 0o755)
            .unwrap();
        assert!(root.join("usr/lib/systemd/system").is_dir());
        assert!(tree.remove(Path::new("/etc/evil")).unwrap());
        assert!(
            host.join("victim").exists(),
            "the target of a removed link stays"
        );
        assert!(!tree.remove(Path::new("/etc/absent")).unwrap());
        assert!(tree.remove(Path::new("/usr")).unwrap());
        assert!(!root.join("usr").exists());
    }
}
