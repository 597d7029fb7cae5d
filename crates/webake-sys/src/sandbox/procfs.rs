//! /proc inside the sandbox: masked paths and a private, writable view of kernel parameters.
//!
//! Root in the sandbox is an unprivileged host user, so the kernel already refuses its writes to
//! the host's sysctls; but roles written for live hosts *expect* `sysctl -w` to work. So
//! `/proc/sys` is replaced by a tmpfs holding a copy of every readable value: writes succeed and
//! read back, reach no kernel, and vanish with the sandbox. What persists in the image is what
//! a role writes under /etc/sysctl.d.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use super::helper::mount_at;

/// Files hidden behind /dev/null (kernel memory, the sysrq trigger, keys, timer internals).
const MASKED_FILES: &[&str] = &[
    "kcore",
    "sysrq-trigger",
    "keys",
    "timer_list",
    "latency_stats",
    "sched_debug",
    "kallsyms",
    "kmsg",
];
/// Directories hidden behind an empty read-only tmpfs.
const MASKED_DIRS: &[&str] = &["acpi", "scsi", "asound"];
/// Directories made read-only.
const READONLY_DIRS: &[&str] = &["bus", "fs", "irq"];

pub fn mask(proc_dir: &Path) -> Result<(), String> {
    for f in MASKED_FILES {
        let p = proc_dir.join(f);
        if p.exists() {
            mount_at(Some("/dev/null"), &p, None, MsFlags::MS_BIND, None)?;
        }
    }
    for d in MASKED_DIRS {
        let p = proc_dir.join(d);
        if p.is_dir() {
            mount_at(
                Some("tmpfs"),
                &p,
                Some("tmpfs"),
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("size=0,mode=0555"),
            )?;
        }
    }
    for d in READONLY_DIRS {
        let p = proc_dir.join(d);
        if p.is_dir() {
            let s = p.to_string_lossy().into_owned();
            mount_at(Some(&s), &p, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
            mount_at(
                None,
                &p,
                None,
                MsFlags::MS_BIND
                    | MsFlags::MS_REMOUNT
                    | MsFlags::MS_RDONLY
                    | MsFlags::MS_NOSUID
                    | MsFlags::MS_NODEV
                    | MsFlags::MS_NOEXEC,
                None,
            )?;
        }
    }
    Ok(())
}

struct Entry {
    rel: PathBuf,
    mode: u32,
    /// `None`: a directory.
    content: Option<Vec<u8>>,
}

fn collect(base: &Path, rel: &Path, out: &mut Vec<Entry>) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(rd) = std::fs::read_dir(base.join(rel)) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let r = rel.join(&name);
        // binfmt_misc is a filesystem of its own, not a parameter: an empty directory here,
        // where the sandbox mounts its own instance when it emulates (binfmt.rs).
        if r == Path::new("fs/binfmt_misc") {
            out.push(Entry {
                rel: r,
                mode: 0o755,
                content: None,
            });
            continue;
        }
        let Ok(md) = e.metadata() else { continue };
        let mode = md.permissions().mode() & 0o7777;
        if md.is_dir() {
            out.push(Entry {
                rel: r.clone(),
                mode,
                content: None,
            });
            collect(base, &r, out);
        } else if md.is_file()
            && let Ok(bytes) = std::fs::read(e.path())
        {
            out.push(Entry {
                rel: r,
                mode,
                content: Some(bytes),
            });
        }
    }
}

/// Replace `proc_dir/sys` by a writable copy of its readable values, owned by `owner` (the
/// host id of the sandbox's root).
pub fn private_sysctl(proc_dir: &Path, owner: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let sys = proc_dir.join("sys");
    let mut entries = Vec::with_capacity(1500);
    collect(&sys, Path::new(""), &mut entries);
    mount_at(
        Some("tmpfs"),
        &sys,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(&format!("size=16m,mode=0555,uid={owner},gid={owner}")),
    )?;
    for e in &entries {
        let p = sys.join(&e.rel);
        match &e.content {
            None => std::fs::create_dir(&p),
            Some(bytes) => std::fs::write(&p, bytes),
        }
        .map_err(|err| format!("private sysctl {}: {err}", e.rel.display()))?;
        std::os::unix::fs::lchown(&p, Some(owner), Some(owner))
            .and_then(|()| std::fs::set_permissions(&p, std::fs::Permissions::from_mode(e.mode)))
            .map_err(|err| format!("private sysctl {}: {err}", e.rel.display()))?;
    }
    Ok(())
}
