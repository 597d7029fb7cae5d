//! Idmapped bind mounts (Linux 5.12+; ext4 and tmpfs 6.3+ as overlay layers) through the new
//! mount API: `open_tree(OPEN_TREE_CLONE)`, `mount_setattr(MOUNT_ATTR_IDMAP)`, `move_mount`.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOUNT_ATTR_NOSUID: u64 = 0x0000_0002;
const MOUNT_ATTR_NODEV: u64 = 0x0000_0004;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x0000_0004;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn cpath(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

fn err(what: &str, p: &Path) -> String {
    format!(
        "{what} {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    )
}

/// Bind `source` onto `target` (an existing directory) with the ownership translation of
/// `userns` (ids on disk are read as ids inside that namespace), optionally read-only.
pub fn bind(source: &Path, target: &Path, userns: &OwnedFd, readonly: bool) -> Result<(), String> {
    let src = cpath(source).map_err(|e| format!("{}: {e}", source.display()))?;
    let dst = cpath(target).map_err(|e| format!("{}: {e}", target.display()))?;
    // SAFETY: plain syscalls with NUL-terminated paths and a correctly sized attr struct.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            src.as_ptr(),
            (OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint) as libc::c_uint,
        )
    };
    if tree < 0 {
        return Err(err("open_tree", source));
    }
    // SAFETY: open_tree returned a new file descriptor that we now own.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as i32) };
    let mut attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP | if readonly { MOUNT_ATTR_RDONLY } else { 0 },
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    let empty = c"";
    // SAFETY: see above.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &mut attr as *mut MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(format!(
            "idmapping {} (the filesystem must support idmapped mounts: ext4, xfs, btrfs, tmpfs \
             on Linux 6.3+): {}",
            source.display(),
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: see above.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(err("move_mount onto", target));
    }
    Ok(())
}

/// Make the mount at `target` and every mount below it read-only, nosuid and nodev.
pub fn make_readonly_recursive(target: &Path) -> Result<(), String> {
    let dst = cpath(target).map_err(|e| format!("{}: {e}", target.display()))?;
    let mut attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr with a NUL-terminated path and a correctly sized attr struct.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            dst.as_ptr(),
            AT_RECURSIVE,
            &mut attr as *mut MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(err("making read-only", target));
    }
    Ok(())
}

/// A user namespace with the id mapping `line`, held by a descriptor (the process that made
/// it is gone): what idmapped mounts translate through.
pub fn mapping_namespace(line: &str) -> Result<OwnedFd, String> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fresh fds from pipe2.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: plain getpid.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the child only makes async-signal-safe syscalls and never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: async-signal-safe calls only, then _exit.
        unsafe {
            let ok = libc::unshare(libc::CLONE_NEWUSER) == 0;
            // A fork does not inherit the parent-death signal: without it, this child would
            // pause forever if the helper were killed before it kills the child (a bake
            // SIGKILLed during the sandbox's setup). If the helper is already gone, go too.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() != parent {
                libc::_exit(0);
            }
            libc::write(w.as_raw_fd(), [if ok { 1u8 } else { 0 }].as_ptr().cast(), 1);
            libc::pause();
            libc::_exit(0);
        }
    }
    drop(w);
    let mut b = [0u8; 1];
    // SAFETY: read one byte from our pipe.
    let n = unsafe { libc::read(r.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
    let result = if n == 1 && b[0] == 1 {
        write_maps(pid, line).and_then(|()| {
            std::fs::File::open(format!("/proc/{pid}/ns/user"))
                .map(OwnedFd::from)
                .map_err(|e| format!("opening the mapping namespace: {e}"))
        })
    } else {
        Err("unshare(user) failed: user namespaces are unavailable".into())
    };
    // SAFETY: kill and reap our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
    result
}

/// Write the id maps of process `pid` (which has just entered a new user namespace).
pub fn write_maps(pid: i32, line: &str) -> Result<(), String> {
    for f in ["uid_map", "gid_map"] {
        let p = format!("/proc/{pid}/{f}");
        std::fs::write(&p, line).map_err(|e| format!("writing {p}: {e}"))?;
    }
    Ok(())
}
