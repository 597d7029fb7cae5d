//! Export: the merged view of a bake's layers as one plain directory, made of hard links.
//!
//! The bake needs the finished tree as a directory to finalize, inspect and write into the
//! root filesystem (`mkfs.ext4 -d`). Copying the merged overlay (`cp -a`) costs seconds of
//! I/O on every bake, and as much again to delete the copy. The layers are directories on
//! the same filesystem as the scratch directory, so the same view can be built from hard
//! links: the overlay rules applied in user space, bottom layer first —
//!
//! - a character device 0:0 is a whiteout: the path below it is gone;
//! - a directory with `user.overlay.opaque=y` hides everything below it;
//! - a non-directory replaces whatever was there (a directory included);
//! - a directory's attributes (owner, mode, xattrs, times) are those of the topmost layer
//!   that has it, as overlayfs shows them.
//!
//! Every non-directory in the tree is then an inode shared with the cache. The tree must
//! therefore only ever be changed by unlinking and creating entries, never by writing into or
//! changing the attributes of an existing file: finalize and assemble write into it through
//! [`webake_sys::Tree`], whose writes always replace the entry. The export itself walks the
//! layers without following symlinks, and every directory it descends into in the
//! destination is one it created (a symlink from a layer is never a directory here), so a
//! link planted in a layer cannot lead it out of the destination. Layers using overlay features this does not model (redirected directories,
//! metadata-only copy-up) are refused with [`LinkError::Unsupported`], and the caller falls
//! back to copying the mounted overlay.

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::BuildError;

/// What [`link_layers`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LinkStats {
    pub linked: u64,
    pub dirs: u64,
    pub whiteouts: u64,
}

#[derive(Debug)]
pub enum LinkError {
    /// The layers cannot be merged by hard links here (another filesystem, or an overlay
    /// feature not modelled): copy the mounted overlay instead.
    Unsupported(String),
    Build(BuildError),
}

impl From<BuildError> for LinkError {
    fn from(e: BuildError) -> Self {
        LinkError::Build(e)
    }
}

type R<T> = std::result::Result<T, LinkError>;

const OPAQUE: &CStr = c"user.overlay.opaque";
const REDIRECT: &CStr = c"user.overlay.redirect";
const METACOPY: &CStr = c"user.overlay.metacopy";

fn io(p: &Path, e: std::io::Error) -> LinkError {
    LinkError::Build(BuildError::io(p, e))
}

/// Merge `layers` (bottom first) into the empty directory `dest` by hard links.
pub fn link_layers(layers: &[PathBuf], dest: &Path) -> R<LinkStats> {
    let dev = std::fs::metadata(dest).map_err(|e| io(dest, e))?.dev();
    for l in layers {
        let d = std::fs::metadata(l).map_err(|e| io(l, e))?.dev();
        if d != dev {
            return Err(LinkError::Unsupported(format!(
                "{} is on another filesystem than {}",
                l.display(),
                dest.display()
            )));
        }
    }
    let mut stats = LinkStats::default();
    // Relative directory path -> the layer directory whose attributes it takes.
    let mut dirs: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    for l in layers {
        dirs.insert(PathBuf::new(), l.clone());
        merge_dir(l, dest, Path::new(""), &mut dirs, &mut stats)?;
    }
    // Directory attributes last (adding entries changes a directory's times), deepest first.
    let mut ordered: Vec<_> = dirs.into_iter().collect();
    ordered.sort_by_key(|(rel, _)| std::cmp::Reverse(rel.components().count()));
    for (rel, src) in ordered {
        copy_dir_attrs(&src, &dest.join(&rel))?;
        stats.dirs += 1;
    }
    Ok(stats)
}

/// Whether the overlay upper directory `layer` changes the entry `rel` (a relative path) of
/// the layers below it: an entry at `rel` (a file, a whiteout, a metadata copy), or one of its
/// parent directories replaced, removed, renamed or made opaque. Conservative: anything but a
/// plain directory on the way counts.
pub fn layer_changes(layer: &Path, rel: &Path) -> std::io::Result<bool> {
    let mut at = layer.to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    for (i, part) in parts.iter().enumerate() {
        at.push(part);
        let md = match std::fs::symlink_metadata(&at) {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        if i + 1 == parts.len() || !md.is_dir() {
            return Ok(true);
        }
        let attrs = webake_sys::fsutil::xattrs(&at)?;
        if xattr_of(&attrs, OPAQUE).is_some() || xattr_of(&attrs, REDIRECT).is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

fn xattr_of(attrs: &[(std::ffi::CString, Vec<u8>)], name: &CStr) -> Option<Vec<u8>> {
    attrs
        .iter()
        .find(|(n, _)| n.as_c_str() == name)
        .map(|(_, v)| v.clone())
}

fn drop_dirs_under(dirs: &mut BTreeMap<PathBuf, PathBuf>, rel: &Path) {
    dirs.retain(|k, _| !k.starts_with(rel));
}

/// Remove a file, symlink or directory tree of the destination (never following a symlink);
/// absent is `false`.
fn remove_any(p: &Path) -> R<bool> {
    let r = match std::fs::symlink_metadata(p) {
        Err(_) => return Ok(false),
        Ok(md) if md.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
    };
    r.map(|_| true).map_err(|e| io(p, e))
}

fn merge_dir(
    src: &Path,
    dest: &Path,
    rel: &Path,
    dirs: &mut BTreeMap<PathBuf, PathBuf>,
    stats: &mut LinkStats,
) -> R<()> {
    let rd = std::fs::read_dir(src).map_err(|e| io(src, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| io(src, e))?;
        let name = entry.file_name();
        let s = src.join(&name);
        let t = dest.join(&name);
        let r = rel.join(&name);
        let md = std::fs::symlink_metadata(&s).map_err(|e| io(&s, e))?;
        let ft = md.file_type();
        if ft.is_char_device() && md.rdev() == 0 {
            stats.whiteouts += 1;
            remove_any(&t)?;
            drop_dirs_under(dirs, &r);
            continue;
        }
        if ft.is_dir() {
            let attrs = webake_sys::fsutil::xattrs(&s).map_err(|e| io(&s, e))?;
            if xattr_of(&attrs, REDIRECT).is_some() {
                return Err(LinkError::Unsupported(format!(
                    "{} is a redirected overlay directory",
                    s.display()
                )));
            }
            let opaque = xattr_of(&attrs, OPAQUE).is_some_and(|v| v == b"y");
            match std::fs::symlink_metadata(&t) {
                Ok(tm) if tm.is_dir() && !opaque => {}
                Ok(_) => {
                    remove_any(&t)?;
                    drop_dirs_under(dirs, &r);
                    std::fs::create_dir(&t).map_err(|e| io(&t, e))?;
                }
                Err(_) => std::fs::create_dir(&t).map_err(|e| io(&t, e))?,
            }
            dirs.insert(r.clone(), s.clone());
            merge_dir(&s, &t, &r, dirs, stats)?;
            continue;
        }
        if ft.is_file() && md.len() == 0 && md.blocks() == 0 {
            // A metadata-only copy-up is an empty-looking file with the metacopy xattr.
            let attrs = webake_sys::fsutil::xattrs(&s).map_err(|e| io(&s, e))?;
            if xattr_of(&attrs, METACOPY).is_some() {
                return Err(LinkError::Unsupported(format!(
                    "{} is a metadata-only overlay copy-up",
                    s.display()
                )));
            }
        }
        if remove_any(&t)? {
            drop_dirs_under(dirs, &r);
        }
        match std::fs::hard_link(&s, &t) {
            Ok(()) => stats.linked += 1,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::CrossesDevices | std::io::ErrorKind::TooManyLinks
                ) =>
            {
                return Err(LinkError::Unsupported(format!(
                    "cannot hard-link {}: {e}",
                    s.display()
                )));
            }
            Err(e) => return Err(io(&t, e)),
        }
    }
    Ok(())
}

fn copy_dir_attrs(src: &Path, dest: &Path) -> R<()> {
    let md = std::fs::symlink_metadata(src).map_err(|e| io(src, e))?;
    std::os::unix::fs::lchown(dest, Some(md.uid()), Some(md.gid())).map_err(|e| io(dest, e))?;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(md.mode() & 0o7777))
        .map_err(|e| io(dest, e))?;
    for (name, value) in webake_sys::fsutil::xattrs(src).map_err(|e| io(src, e))? {
        if name.to_bytes().starts_with(b"trusted.overlay.")
            || name.to_bytes().starts_with(b"user.overlay.")
        {
            continue;
        }
        webake_sys::fsutil::set_xattr(dest, &name, &value).map_err(|e| io(dest, e))?;
    }
    let times = std::fs::FileTimes::new()
        .set_accessed(md.accessed().map_err(|e| io(src, e))?)
        .set_modified(md.modified().map_err(|e| io(src, e))?);
    std::fs::File::open(dest)
        .and_then(|f| f.set_times(times))
        .map_err(|e| io(dest, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn w(p: &Path, s: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, s).unwrap();
    }

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap()
    }

    #[test]
    fn later_layers_win_and_files_are_shared_inodes() {
        let t = tempfile::tempdir().unwrap();
        let (a, b, d) = (t.path().join("a"), t.path().join("b"), t.path().join("d"));
        w(&a.join("etc/one"), "a1");
        w(&a.join("etc/two"), "a2");
        w(&a.join("usr/bin/tool"), "tool");
        symlink("tool", a.join("usr/bin/alias")).unwrap();
        w(&b.join("etc/two"), "b2");
        w(&b.join("etc/new"), "new");
        std::fs::create_dir_all(&d).unwrap();
        let st = link_layers(&[a.clone(), b.clone()], &d).unwrap();
        assert_eq!(read(&d.join("etc/one")), "a1");
        assert_eq!(read(&d.join("etc/two")), "b2");
        assert_eq!(read(&d.join("etc/new")), "new");
        assert_eq!(
            std::fs::read_link(d.join("usr/bin/alias")).unwrap(),
            Path::new("tool")
        );
        assert_eq!(
            std::fs::metadata(d.join("etc/one")).unwrap().ino(),
            std::fs::metadata(a.join("etc/one")).unwrap().ino()
        );
        assert_eq!(st.linked, 6, "4 entries of a, 2 of b");
    }

    #[test]
    fn a_layer_changes_a_path_by_an_entry_there_or_by_any_parent_but_a_plain_directory() {
        let t = tempfile::tempdir().unwrap();
        let rel = Path::new("boot/initrd.img-6.1");
        let layer = |name: &str| {
            let l = t.path().join(name);
            std::fs::create_dir_all(&l).unwrap();
            l
        };
        let untouched = layer("untouched");
        w(&untouched.join("etc/motd"), "hi");
        assert!(!layer_changes(&untouched, rel).unwrap(), "no boot/ at all");
        let beside = layer("beside");
        w(&beside.join("boot/config-6.1"), "x");
        assert!(
            !layer_changes(&beside, rel).unwrap(),
            "another file in boot/"
        );
        let replaced = layer("replaced");
        w(&replaced.join("boot/initrd.img-6.1"), "new");
        assert!(layer_changes(&replaced, rel).unwrap(), "the file itself");
        let not_a_dir = layer("not-a-dir");
        symlink("/elsewhere", not_a_dir.join("boot")).unwrap();
        assert!(
            layer_changes(&not_a_dir, rel).unwrap(),
            "boot replaced by a symlink"
        );
        let opaque = layer("opaque");
        std::fs::create_dir_all(opaque.join("boot")).unwrap();
        webake_sys::fsutil::set_xattr(&opaque.join("boot"), OPAQUE, b"y")
            .expect("user xattrs on the test's temp dir");
        assert!(layer_changes(&opaque, rel).unwrap(), "boot/ made opaque");
    }

    #[test]
    fn dir_attributes_come_from_the_topmost_layer() {
        let t = tempfile::tempdir().unwrap();
        let (a, b, d) = (t.path().join("a"), t.path().join("b"), t.path().join("d"));
        std::fs::create_dir_all(a.join("srv/data")).unwrap();
        std::fs::create_dir_all(b.join("srv")).unwrap();
        std::fs::set_permissions(a.join("srv"), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(b.join("srv"), std::fs::Permissions::from_mode(0o751)).unwrap();
        std::fs::set_permissions(a.join("srv/data"), std::fs::Permissions::from_mode(0o2750))
            .unwrap();
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        std::fs::File::open(a.join("srv/data"))
            .unwrap()
            .set_times(std::fs::FileTimes::new().set_modified(old))
            .unwrap();
        std::fs::create_dir_all(&d).unwrap();
        link_layers(&[a, b], &d).unwrap();
        let m = |p: &str| std::fs::metadata(d.join(p)).unwrap();
        assert_eq!(m("srv").mode() & 0o7777, 0o751);
        assert_eq!(m("srv/data").mode() & 0o7777, 0o2750);
        assert_eq!(m("srv/data").modified().unwrap(), old);
    }

    #[test]
    fn non_directory_replaces_directory_and_back() {
        let t = tempfile::tempdir().unwrap();
        let (a, b, d) = (t.path().join("a"), t.path().join("b"), t.path().join("d"));
        w(&a.join("x/inside"), "1");
        w(&a.join("y"), "file");
        w(&b.join("x"), "now a file");
        w(&b.join("y/inside"), "now a dir");
        std::fs::create_dir_all(&d).unwrap();
        link_layers(&[a, b], &d).unwrap();
        assert_eq!(read(&d.join("x")), "now a file");
        assert_eq!(read(&d.join("y/inside")), "now a dir");
    }

    #[test]
    fn another_filesystem_is_unsupported_not_an_error() {
        // /proc is never the tempdir's filesystem.
        let t = tempfile::tempdir().unwrap();
        match link_layers(&[PathBuf::from("/proc/self")], t.path()) {
            Err(LinkError::Unsupported(_)) => {}
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }

    /// The real thing: layers written through kernel overlayfs with `userxattr`, as the
    /// sandbox mounts it (whiteouts, opaque
    /// directories, copy-ups, attribute changes), merged by the kernel and by `link_layers`;
    /// both views must list the same entries with the same type, mode, owner, size, link
    /// target and content. Needs root (mounts in a private mount namespace via unshare).
    #[test]
    fn same_view_as_kernel_overlayfs() {
        assert!(
            nix_is_root(),
            "this test needs root (it mounts overlayfs in a private mount namespace); CI runs as root"
        );
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let script = r#"
set -e
R=$1
mkdir -p $R/l0 $R/l1 $R/l2 $R/w1 $R/w2 $R/m $R/merged
cd $R/l0
mkdir -p etc/ssh usr/bin var/lib/apt/lists var/log opt/keep/sub srv/gone
echo base > etc/hostname; echo cfg > etc/ssh/sshd_config; echo k > etc/ssh/key
echo bin > usr/bin/tool; ln -s tool usr/bin/alias; ln usr/bin/tool usr/bin/hard
echo l > var/lib/apt/lists/Packages; echo x > opt/keep/sub/f; echo g > srv/gone/f
mkfifo var/log/fifo; chmod 0700 opt/keep; chown 1:2 etc/ssh/key
unshare -m sh -ec '
  mount -t overlay o -o lowerdir=$1/l0,upperdir=$1/l1,workdir=$1/w1,userxattr $1/m
  cd $1/m
  rm etc/ssh/key; rm -r var/lib/apt/lists; mkdir var/lib/apt/lists; echo new > var/lib/apt/lists/lock
  echo changed > etc/hostname; chmod 0751 opt/keep; chown 3:4 usr/bin/tool
  rm -r srv/gone; echo now-a-file > srv/gone; mkdir -p new/dir; echo n > new/dir/f
  rm usr/bin/alias; ln -s /etc/hostname usr/bin/alias
' sh $R
unshare -m sh -ec '
  mount -t overlay o -o lowerdir=$1/l1:$1/l0,upperdir=$1/l2,workdir=$1/w2,userxattr $1/m
  cd $1/m
  rm srv/gone; mkdir srv/gone; echo back > srv/gone/g
  rm -r opt/keep/sub; echo top > etc/ssh/top; rm -r new
  setfattr -n user.webake -v yes etc/ssh 2>/dev/null || true
' sh $R
unshare -m sh -ec '
  mount -t overlay o -o lowerdir=$1/l2:$1/l1:$1/l0,userxattr $1/m
  cp -a $1/m/. $1/merged/
' sh $R
"#;
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("sh")
            .arg(r)
            .status()
            .unwrap();
        assert!(st.success(), "building overlay layers failed");
        let linked = r.join("linked");
        std::fs::create_dir(&linked).unwrap();
        let layers = ["l0", "l1", "l2"].map(|l| r.join(l)).to_vec();
        let stats = link_layers(&layers, &linked).unwrap();
        assert_eq!(
            stats.whiteouts, 3,
            "etc/ssh/key, opt/keep/sub, new: {stats:?}"
        );
        let listing = |d: &Path| {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(
                    "cd \"$1\" && find . -printf '%p %y %m %U %G %s %l\\n' | sort && \
                     find . -type f -exec sha256sum {} + | sort",
                )
                .arg("sh")
                .arg(d)
                .output()
                .unwrap();
            assert!(out.status.success());
            String::from_utf8(out.stdout).unwrap()
        };
        let want = listing(&r.join("merged"));
        let got = listing(&linked);
        assert!(want.contains("./srv/gone/g"), "fixture: {want}");
        assert!(!want.contains("./etc/ssh/key"), "fixture: {want}");
        assert!(
            want.contains("./var/lib/apt/lists/lock") && !want.contains("lists/Packages"),
            "fixture (opaque directory): {want}"
        );
        assert_eq!(got, want);
    }

    fn nix_is_root() -> bool {
        std::fs::metadata("/proc/self")
            .map(|m| m.uid())
            .unwrap_or(1)
            == 0
    }
}
