//! Offline system tools: roles written for live hosts run unmodified in a bake.
//!
//! No init system runs in a step and nothing may touch the build host, yet roles start
//! services, set the hostname and time zone, load modules, add firewall rules and mount
//! file systems. A step whose environment has `WEBAKE_OFFLINE_TOOLS=1` (webake's Ansible
//! steps) gets POSIX sh tools in place of the image's own `systemctl`, `service`,
//! `invoke-rc.d`, `deb-systemd-invoke`, `timedatectl`, `localectl`, `hostnamectl`, `hostname`,
//! `modprobe`, `lsmod`, `rmmod`, `iptables` (and `ip6tables`, `-save`, `-restore`), `nft`,
//! `ufw`, `mount` and `umount`, wherever the image has them (`/usr/bin/systemctl`, ...):
//!
//! - they sit in a lower layer of the step's overlay of their own, above the image's layers,
//!   on a tmpfs of PID 1: every caller finds them (PATH, absolute paths, Ansible's
//!   `get_bin_path` with its own directories), in ansible-local and in host mode alike, and
//!   the step's layer never holds them (a package upgrade that replaces a tool writes the
//!   real one into the step's layer, as without them);
//! - unit-file operations go to a copy of the image's own systemctl, offline; runtime actions
//!   start, load and mount nothing and are recorded in `/var/lib/webake/offline-state` (in
//!   the image: the inventory reads it); queries answer from the unit files, the setting
//!   files and that record.
//!
//! PID 1 also names itself `systemd` and creates `/dev/.systemd` (the sandbox's tmpfs `/dev`),
//! the signs Ansible's facts, `service` and `service_facts` read to pick systemd; systemd's
//! own tools still see an offline system (`/run/systemd/system` does not exist). When the
//! command has ended, PID 1 prints what the tools recorded (the bake log).

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use super::SandboxSpec;
use super::helper::{mount_at, safe_mkdir_in_root};
use crate::tree::Tree;

/// The variable (value `1`) of a step's environment that asks for the offline tools.
pub const ENV: &str = "WEBAKE_OFFLINE_TOOLS";
/// Where the tools' library and the copies of the image's own tools are, inside the image.
pub const LIB_DIR: &str = "/usr/lib/webake-offline";
/// Where the tools record runtime state, inside the image (kept in the image).
pub const STATE: &str = "/var/lib/webake/offline-state";
/// What the tools recorded during this command (the sandbox's tmpfs `/run`).
pub const EVENTS: &str = "/run/webake/offline/events";
/// The prefix of each line PID 1 prints after the command.
pub const REPORT_PREFIX: &str = "webake offline: ";

const LIB: &[u8] = include_bytes!("offline/lib.sh");

/// A tool, and whether it needs the image's own (kept as `real/NAME` in [`LIB_DIR`]).
struct Tool {
    name: &'static str,
    body: &'static [u8],
    keeps_real: bool,
}

const fn tool(name: &'static str, body: &'static [u8], keeps_real: bool) -> Tool {
    Tool {
        name,
        body,
        keeps_real,
    }
}

const IPTABLES: &[u8] = include_bytes!("offline/iptables");

const TOOLS: &[Tool] = &[
    tool("systemctl", include_bytes!("offline/systemctl"), true),
    tool("service", include_bytes!("offline/service"), false),
    tool("invoke-rc.d", include_bytes!("offline/invoke-rc.d"), false),
    tool(
        "deb-systemd-invoke",
        include_bytes!("offline/deb-systemd-invoke"),
        false,
    ),
    tool("timedatectl", include_bytes!("offline/timedatectl"), false),
    tool("localectl", include_bytes!("offline/localectl"), false),
    tool("hostnamectl", include_bytes!("offline/hostnamectl"), false),
    tool("hostname", include_bytes!("offline/hostname"), true),
    tool("modprobe", include_bytes!("offline/modprobe"), true),
    tool("lsmod", include_bytes!("offline/lsmod"), false),
    tool("rmmod", include_bytes!("offline/rmmod"), false),
    tool("iptables", IPTABLES, false),
    tool("ip6tables", IPTABLES, false),
    tool("iptables-save", IPTABLES, false),
    tool("ip6tables-save", IPTABLES, false),
    tool("iptables-restore", IPTABLES, false),
    tool("ip6tables-restore", IPTABLES, false),
    tool("nft", include_bytes!("offline/nft"), false),
    tool("ufw", include_bytes!("offline/ufw"), true),
    tool("mount", include_bytes!("offline/mount"), true),
    tool("umount", include_bytes!("offline/umount"), false),
];

/// Where the image's tools are looked for (a directory that is a symlink, as `/bin` with a
/// merged `/usr`, is skipped: its tools are shadowed where it points).
const BIN_DIRS: &[&str] = &["usr/bin", "usr/sbin", "bin", "sbin"];

/// Does this sandbox get the offline tools?
pub fn wanted(spec: &SandboxSpec) -> bool {
    spec.api_filesystems
        && spec.overlay.is_some()
        && spec.env.iter().any(|(k, v)| k == ENV && v == "1")
}

/// Mount a tmpfs at `layer` and fill it as a lower layer to put above the image mounted at
/// `merged`: each tool at the image's path of the tool it replaces, the library and copies
/// of the image's own tools in [`LIB_DIR`]. Directories on the way carry the image's owner,
/// mode and times, so the merged view (and a copy-up into the step's layer) is unchanged.
pub fn build_layer(merged: &Path, layer: &Path) -> Result<(), String> {
    mount_at(
        Some("webake-offline"),
        layer,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755,size=64m"),
    )?;
    fill_layer(&Tree::open(merged).map_err(|e| e.to_string())?, layer)
}

/// The files of [`build_layer`] in `layer`, for the image `image`.
fn fill_layer(image: &Tree, layer: &Path) -> Result<(), String> {
    let mut dirs = Dirs::default();
    let lib = Path::new(LIB_DIR.trim_start_matches('/'));
    for t in TOOLS {
        let mut real: Option<PathBuf> = None;
        for d in BIN_DIRS {
            let dir = Path::new(d);
            let is_dir = image
                .metadata(dir)
                .map_err(|e| e.to_string())?
                .is_some_and(|m| m.is_dir());
            if !is_dir
                || image
                    .metadata(&dir.join(t.name))
                    .map_err(|e| e.to_string())?
                    .is_none()
            {
                continue;
            }
            dirs.mirror(image, layer, dir)?;
            write(&layer.join(dir).join(t.name), t.body, 0o755)?;
            real.get_or_insert_with(|| dir.join(t.name));
        }
        if let (true, Some(from)) = (t.keeps_real, real) {
            let bytes = image.read(&from).map_err(|e| e.to_string())?;
            dirs.mirror(image, layer, &lib.join("real"))?;
            write(&layer.join(lib).join("real").join(t.name), &bytes, 0o755)?;
        }
    }
    dirs.mirror(image, layer, lib)?;
    write(&layer.join(lib).join("lib.sh"), LIB, 0o644)?;
    // Every tool also in the directory [`path_env`] puts first in PATH: a tool a package
    // installs during the step (iptables, ufw) lands in the step's layer above the shadows,
    // but callers that search PATH (Ansible's `get_bin_path`, shell tasks) still find these.
    dirs.mirror(image, layer, &lib.join("bin"))?;
    for t in TOOLS {
        write(&layer.join(lib).join("bin").join(t.name), t.body, 0o755)?;
    }
    dirs.restore_times(layer)
}

/// The command's environment with [`LIB_DIR`]`/bin` first in PATH (the offline tools, also
/// those of packages installed during the step).
pub fn path_env(env: &[(String, String)]) -> Vec<(String, String)> {
    let bin = format!("{LIB_DIR}/bin");
    let mut out: Vec<(String, String)> = env.to_vec();
    match out.iter_mut().find(|(k, _)| k == "PATH") {
        Some((_, v)) => *v = format!("{bin}:{v}"),
        None => out.push((
            "PATH".into(),
            format!("{bin}:/usr/sbin:/usr/bin:/sbin:/bin"),
        )),
    }
    out
}

/// Directories made in the layer, with the image's times to put back once filled.
#[derive(Default)]
struct Dirs {
    made: Vec<(PathBuf, Option<std::fs::Metadata>)>,
}

impl Dirs {
    /// Make `rel` and its parents in `layer` as they are in the image (new ones: 0755).
    fn mirror(&mut self, image: &Tree, layer: &Path, rel: &Path) -> Result<(), String> {
        let mut at = PathBuf::new();
        for c in rel.components() {
            at.push(c);
            if self.made.iter().any(|(p, _)| *p == at) {
                continue;
            }
            let md = image
                .metadata(&at)
                .map_err(|e| e.to_string())?
                .filter(|m| m.is_dir());
            let p = layer.join(&at);
            std::fs::create_dir(&p).map_err(|e| format!("mkdir {}: {e}", p.display()))?;
            let mode = md.as_ref().map_or(0o755, |m| m.mode() & 0o7777);
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
                .map_err(|e| format!("chmod {}: {e}", p.display()))?;
            if let Some(m) = &md {
                std::os::unix::fs::chown(&p, Some(m.uid()), Some(m.gid()))
                    .map_err(|e| format!("chown {}: {e}", p.display()))?;
            }
            self.made.push((at.clone(), md));
        }
        Ok(())
    }

    fn restore_times(&self, layer: &Path) -> Result<(), String> {
        for (rel, md) in self.made.iter().rev() {
            let Some(m) = md else { continue };
            let p = layer.join(rel);
            let times = std::fs::FileTimes::new()
                .set_accessed(m.accessed().map_err(|e| e.to_string())?)
                .set_modified(m.modified().map_err(|e| e.to_string())?);
            std::fs::File::open(&p)
                .and_then(|f| f.set_times(times))
                .map_err(|e| format!("times of {}: {e}", p.display()))?;
        }
        Ok(())
    }
}

fn write(path: &Path, body: &[u8], mode: u32) -> Result<(), String> {
    std::fs::write(path, body).map_err(|e| format!("write {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", path.display()))
}

/// In the sandbox (PID 1, after `pivot_root`, `image` the image's root): name this process
/// `systemd` and create Ansible's systemd sign in `/dev`.
pub fn install(image: &Path) -> Result<(), String> {
    safe_mkdir_in_root(image, Path::new("/dev/.systemd"), true)?;
    // SAFETY: PR_SET_NAME with a NUL-terminated name of at most 16 bytes.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, c"systemd".as_ptr(), 0, 0, 0);
    }
    Ok(())
}

/// Print what the tools recorded during the command to `out`, one line each, prefixed by
/// [`REPORT_PREFIX`]. Nothing is printed when nothing was recorded.
pub fn report(image: &Path, out: &mut dyn Write) {
    let events = image.join(EVENTS.trim_start_matches('/'));
    let Ok(text) = std::fs::read_to_string(events) else {
        return;
    };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let _ = writeln!(out, "{REPORT_PREFIX}{line}");
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// An image with a merged /usr: systemctl, modprobe -> /bin/kmod (absolute link, to be
    /// resolved inside the image), mount in /usr/bin; no iptables.
    fn image() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for dir in ["usr/bin", "usr/sbin", "usr/lib"] {
            std::fs::create_dir_all(r.join(dir)).unwrap();
        }
        symlink("usr/bin", r.join("bin")).unwrap();
        symlink("usr/sbin", r.join("sbin")).unwrap();
        std::fs::write(r.join("usr/bin/systemctl"), b"real systemctl").unwrap();
        std::fs::write(r.join("usr/bin/kmod"), b"real kmod").unwrap();
        std::fs::write(r.join("usr/bin/mount"), b"real mount").unwrap();
        symlink("/bin/kmod", r.join("usr/sbin/modprobe")).unwrap();
        std::fs::set_permissions(r.join("usr/sbin"), std::fs::Permissions::from_mode(0o750))
            .unwrap();
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        for dir in ["usr/bin", "usr/sbin", "usr/lib", "usr"] {
            std::fs::File::open(r.join(dir))
                .unwrap()
                .set_times(std::fs::FileTimes::new().set_modified(old))
                .unwrap();
        }
        d
    }

    #[test]
    fn the_layer_shadows_the_images_tools_where_they_are() {
        let img = image();
        let layer = tempfile::tempdir().unwrap();
        let l = layer.path();
        fill_layer(&Tree::open(img.path()).unwrap(), l).unwrap();
        // The tools the image has, at its paths, executable; not the ones it lacks.
        for p in ["usr/bin/systemctl", "usr/sbin/modprobe", "usr/bin/mount"] {
            let md = std::fs::symlink_metadata(l.join(p)).unwrap();
            assert!(md.is_file(), "{p}");
            assert_eq!(md.permissions().mode() & 0o777, 0o755, "{p}");
            let body = std::fs::read_to_string(l.join(p)).unwrap();
            assert!(body.starts_with("#!/bin/sh\n"), "{p}");
            assert!(body.contains(". /usr/lib/webake-offline/lib.sh"), "{p}");
        }
        for p in ["usr/sbin/iptables", "usr/bin/hostnamectl", "bin", "sbin"] {
            assert!(
                std::fs::symlink_metadata(l.join(p)).is_err(),
                "{p} is in the layer"
            );
        }
        // Copies of the image's own, for the tools that delegate; resolved inside the image.
        let real = l.join("usr/lib/webake-offline/real");
        assert_eq!(
            std::fs::read(real.join("systemctl")).unwrap(),
            b"real systemctl"
        );
        assert_eq!(std::fs::read(real.join("modprobe")).unwrap(), b"real kmod");
        assert_eq!(std::fs::read(real.join("mount")).unwrap(), b"real mount");
        assert!(!real.join("hostname").exists());
        // Every tool in bin/, also those the image lacks (installed during the step).
        for t in TOOLS {
            let p = l.join("usr/lib/webake-offline/bin").join(t.name);
            assert_eq!(std::fs::read(&p).unwrap(), t.body, "{}", p.display());
        }
        assert_eq!(
            std::fs::read(l.join("usr/lib/webake-offline/lib.sh")).unwrap(),
            LIB
        );
        // Directories on the way look like the image's.
        for dir in ["usr", "usr/bin", "usr/sbin", "usr/lib"] {
            let a = std::fs::metadata(img.path().join(dir)).unwrap();
            let b = std::fs::metadata(l.join(dir)).unwrap();
            assert_eq!(a.mode(), b.mode(), "{dir}");
            assert_eq!(a.modified().unwrap(), b.modified().unwrap(), "{dir}");
        }
        // The library names what this module names.
        let lib = std::str::from_utf8(LIB).unwrap();
        assert!(lib.contains(&format!("W_LIB={LIB_DIR}\n")), "{lib}");
        assert!(lib.contains(&format!("W_STATE={STATE}\n")), "{lib}");
        assert!(lib.contains(&format!("W_EVENTS={EVENTS}\n")), "{lib}");
    }

    #[test]
    fn the_tools_are_posix_sh() {
        // dash is Debian's /bin/sh: every tool must parse with it (bash-isms fail at run time).
        let dash = ["/usr/bin/dash", "/bin/dash"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .expect("dash (Debian's /bin/sh) is needed to check the offline tools: apt-get install dash");
        let d = tempfile::tempdir().unwrap();
        let mut all: Vec<(&str, &[u8])> = TOOLS.iter().map(|t| (t.name, t.body)).collect();
        all.push(("lib.sh", LIB));
        for (name, body) in all {
            let p = d.path().join(name);
            std::fs::write(&p, body).unwrap();
            let o = std::process::Command::new(dash)
                .arg("-n")
                .arg(&p)
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "{name} does not parse as POSIX sh: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }

    #[test]
    fn the_tools_come_first_in_path() {
        let env = vec![("PATH".to_string(), "/usr/bin:/bin".to_string())];
        assert_eq!(
            path_env(&env),
            vec![(
                "PATH".to_string(),
                "/usr/lib/webake-offline/bin:/usr/bin:/bin".to_string()
            )]
        );
        assert_eq!(
            path_env(&[])[0].1,
            "/usr/lib/webake-offline/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        );
    }

    #[test]
    fn report_prefixes_each_recorded_event() {
        let d = tempfile::tempdir().unwrap();
        let events = d.path().join("run/webake/offline/events");
        std::fs::create_dir_all(events.parent().unwrap()).unwrap();
        std::fs::write(
            &events,
            "systemctl start a.service: recorded\n\nmodprobe x\n",
        )
        .unwrap();
        let mut out = Vec::new();
        report(d.path(), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "webake offline: systemctl start a.service: recorded\nwebake offline: modprobe x\n"
        );
        let mut none = Vec::new();
        report(&d.path().join("absent"), &mut none);
        assert!(none.is_empty());
    }
}
