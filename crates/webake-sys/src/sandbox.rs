//! Running commands against an image tree inside fresh namespaces.
//!
//! `webake` re-executes itself as a small helper (`__webake-sandbox <json>`). The helper
//! unshares mount, PID, UTS and IPC namespaces and forks; the child is PID 1 of the new PID
//! namespace. It makes every mount private, mounts the overlay (if any), the API filesystems
//! (proc, sys read-only, a minimal /dev with devpts, tmpfs /run and /tmp), chroots, and runs
//! the command. Every mount lives only in that mount namespace: when the helper exits, or is
//! killed (SIGKILL included: the helper and PID 1 carry a parent-death signal), the kernel
//! tears the namespace down and nothing is left mounted on the host.

use std::ffi::CString;
use std::os::unix::fs::symlink;
use std::path::{Component, Path, PathBuf};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, chdir, chroot, fork};
use serde::{Deserialize, Serialize};

use crate::process::Cmd;

/// argv[1] that selects the helper.
pub const HELPER_ARG: &str = "__webake-sandbox";

/// An overlay mount: `lowers` (top first), an `upper` receiving changes, and a `work` dir on
/// the same filesystem as `upper`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Overlay {
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    /// Where the merged view is mounted (inside the namespace only).
    pub merged: PathBuf,
}

/// A bind mount of a host path into the root.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bind {
    pub source: PathBuf,
    /// Absolute path inside the root. Created if missing; symlinks on the way are refused.
    pub target: PathBuf,
    pub readonly: bool,
}

fn yes() -> bool {
    true
}

/// What to run and where.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// The tree to chroot into (the overlay's `merged` when an overlay is given). `None`: do
    /// not chroot (the command sees the host tree plus the overlay mount).
    pub root: Option<PathBuf>,
    /// chroot into `root` (false: mount the API filesystems in `root` but stay on the host,
    /// e.g. for ansible's chroot connection run from the build host).
    #[serde(default = "yes")]
    pub chroot: bool,
    pub overlay: Option<Overlay>,
    /// Mount proc, sys, dev, devpts, run and tmp in the root.
    pub api_filesystems: bool,
    pub binds: Vec<Bind>,
    /// While the command runs: the host's resolv.conf is copied into the root and the image's
    /// own restored afterwards.
    pub host_resolv_conf: bool,
    /// While the command runs: a policy-rc.d that stops services from starting.
    pub policy_rc_d: bool,
    pub hostname: String,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
    pub argv: Vec<String>,
}

impl SandboxSpec {
    /// A spec that chroots into `root` with the API filesystems, resolv.conf and policy-rc.d.
    pub fn chroot(root: impl Into<PathBuf>, argv: Vec<String>) -> Self {
        Self {
            root: Some(root.into()),
            chroot: true,
            overlay: None,
            api_filesystems: true,
            binds: Vec::new(),
            host_resolv_conf: true,
            policy_rc_d: true,
            hostname: "webake-build".into(),
            cwd: "/".into(),
            env: default_env(),
            argv,
        }
    }

    /// A spec that only isolates mounts and processes (no chroot), e.g. for mmdebstrap.
    pub fn host(argv: Vec<String>) -> Self {
        Self {
            root: None,
            chroot: false,
            overlay: None,
            api_filesystems: false,
            binds: Vec::new(),
            host_resolv_conf: false,
            policy_rc_d: false,
            hostname: "webake-build".into(),
            cwd: "/".into(),
            env: std::env::vars()
                .filter(|(k, _)| {
                    k == "PATH"
                        || k == "HOME"
                        || k.starts_with("LC_")
                        || k == "LANG"
                        || k == "TMPDIR"
                })
                .collect(),
            argv,
        }
    }

    /// The command that runs this spec through the helper in `exe` (normally the webake binary).
    pub fn command(&self, exe: &Path) -> Cmd {
        let json = serde_json::to_string(self).expect("sandbox spec serializes");
        let mut shown = String::from("[sandbox");
        if let Some(r) = &self.root {
            shown.push_str(&format!(" chroot {}", r.display()));
        }
        shown.push_str("] ");
        shown.push_str(&self.argv.join(" "));
        Cmd::new(exe).arg(HELPER_ARG).arg(json).display_as(shown)
    }
}

/// The environment a chroot step starts with (nothing leaks in from the host).
pub fn default_env() -> Vec<(String, String)> {
    vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        ("HOME".into(), "/root".into()),
        ("LANG".into(), "C.UTF-8".into()),
        ("DEBIAN_FRONTEND".into(), "noninteractive".into()),
        ("TERM".into(), "dumb".into()),
    ]
}

/// Call first thing in `main`: if this process is the sandbox helper, run it and return the
/// exit code; otherwise return `None`.
pub fn helper_main_if_requested() -> Option<u8> {
    let mut args = std::env::args_os();
    let _exe = args.next();
    if args.next().as_deref() != Some(std::ffi::OsStr::new(HELPER_ARG)) {
        return None;
    }
    let Some(json) = args.next() else {
        eprintln!("webake sandbox: missing spec");
        return Some(125);
    };
    let spec: SandboxSpec = match serde_json::from_str(&json.to_string_lossy()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("webake sandbox: bad spec: {e}");
            return Some(125);
        }
    };
    Some(helper(&spec))
}

static CHILD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(std::sync::atomic::Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

fn install_forwarding() {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(forward),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only reads an atomic and calls kill(2).
        #[allow(unsafe_code)]
        unsafe {
            let _ = sigaction(sig, &action);
        }
    }
}

fn die_with_parent() {
    // SAFETY: plain prctl.
    #[allow(unsafe_code)]
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
}

fn status_code(ws: WaitStatus) -> Option<u8> {
    match ws {
        WaitStatus::Exited(_, c) => Some(c as u8),
        WaitStatus::Signaled(_, s, _) => Some(128u8.wrapping_add(s as u8)),
        _ => None,
    }
}

fn helper(spec: &SandboxSpec) -> u8 {
    die_with_parent();
    let flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    if let Err(e) = unshare(flags) {
        eprintln!(
            "webake sandbox: unshare(mount, pid, uts, ipc) failed: {e} (webake must run as root)"
        );
        return 125;
    }
    // SAFETY: single-threaded at this point (the helper just started).
    #[allow(unsafe_code)]
    match unsafe { fork() } {
        Err(e) => {
            eprintln!("webake sandbox: fork failed: {e}");
            125
        }
        Ok(ForkResult::Parent { child }) => {
            CHILD.store(child.as_raw(), std::sync::atomic::Ordering::SeqCst);
            install_forwarding();
            loop {
                match waitpid(child, None) {
                    Ok(ws) => {
                        if let Some(c) = status_code(ws) {
                            return c;
                        }
                    }
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        eprintln!("webake sandbox: waitpid failed: {e}");
                        return 125;
                    }
                }
            }
        }
        Ok(ForkResult::Child) => {
            die_with_parent();
            match pid1(spec) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("webake sandbox: {e}");
                    125
                }
            }
        }
    }
}

fn m(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), String> {
    mount(source, target, fstype, flags, data).map_err(|e| {
        format!(
            "mount {} on {} ({}): {e}",
            source.unwrap_or("none"),
            target.display(),
            fstype.unwrap_or("bind")
        )
    })
}

/// PID 1 of the sandbox: set up mounts, chroot, run the command, reap, restore, exit.
fn pid1(spec: &SandboxSpec) -> Result<u8, String> {
    m(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;
    let _ = nix::unistd::sethostname(&spec.hostname);

    if let Some(o) = &spec.overlay {
        for p in o.lowers.iter().chain([&o.upper, &o.work, &o.merged]) {
            let s = p.to_string_lossy();
            if s.contains(':') || s.contains(',') || s.contains('\\') {
                return Err(format!(
                    "overlay path {s:?} must not contain ':' ',' or '\\'"
                ));
            }
        }
        let lowers: Vec<String> = o
            .lowers
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            lowers.join(":"),
            o.upper.display(),
            o.work.display()
        );
        m(
            Some("overlay"),
            &o.merged,
            Some("overlay"),
            MsFlags::empty(),
            Some(&data),
        )?;
    }

    // Host resolv.conf, read before chroot.
    let host_resolv = if spec.host_resolv_conf {
        std::fs::read("/etc/resolv.conf").ok()
    } else {
        None
    };

    if let Some(root) = &spec.root {
        if spec.api_filesystems {
            mount_api_filesystems(root)?;
        }
        for b in &spec.binds {
            let target = safe_mkdir_in_root(root, &b.target, b.source.is_dir())?;
            m(
                Some(&b.source.to_string_lossy()),
                &target,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )?;
            if b.readonly {
                m(
                    None,
                    &target,
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    None,
                )?;
            }
        }
        if spec.chroot {
            chroot(root).map_err(|e| format!("chroot {}: {e}", root.display()))?;
        }
    } else {
        for b in &spec.binds {
            m(
                Some(&b.source.to_string_lossy()),
                &b.target,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )?;
        }
    }
    chdir(&spec.cwd).map_err(|e| format!("chdir {}: {e}", spec.cwd.display()))?;

    let in_root = spec.root.is_some() && spec.chroot;
    let resolv_guard = match (&host_resolv, in_root) {
        (Some(bytes), true) => Some(ReplacedFile::install(
            Path::new("/etc/resolv.conf"),
            bytes,
            0o644,
        )?),
        _ => None,
    };
    // Also without chroot (ansible host mode runs `chroot` itself): the tree still gets one.
    let policy_path = match (&spec.root, spec.chroot) {
        (Some(_), true) => Some(PathBuf::from("/usr/sbin/policy-rc.d")),
        (Some(root), false) => {
            Some(safe_mkdir_in_root(root, Path::new("/usr/sbin"), true)?.join("policy-rc.d"))
        }
        (None, _) => None,
    };
    let policy_guard = match policy_path.filter(|_| spec.policy_rc_d) {
        Some(p) => Some(ReplacedFile::install(
            &p,
            b"#!/bin/sh\n# installed by webake during the bake: no services start\nexit 101\n",
            0o755,
        )?),
        None => None,
    };

    // dpkg without an fsync per file: a step's tree is either committed whole or thrown away.
    // Only while the command runs, like policy-rc.d (the image keeps dpkg's defaults).
    let dpkg_guard = if in_root && spec.policy_rc_d && Path::new("/etc/dpkg/dpkg.cfg.d").is_dir() {
        Some(ReplacedFile::install(
            Path::new(DPKG_UNSAFE_IO),
            b"# installed by webake during the bake\nforce-unsafe-io\n",
            0o644,
        )?)
    } else {
        None
    };

    let argv: Vec<CString> = spec
        .argv
        .iter()
        .map(|a| CString::new(a.as_str()))
        .collect::<Result<_, _>>()
        .map_err(|_| "argument contains NUL")?;
    let env: Vec<CString> = spec
        .env
        .iter()
        .map(|(k, v)| CString::new(format!("{k}={v}")))
        .collect::<Result<_, _>>()
        .map_err(|_| "environment contains NUL")?;
    if argv.is_empty() {
        return Err("empty command".into());
    }

    // SAFETY: PID 1 is single-threaded.
    #[allow(unsafe_code)]
    let code = match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            // Restore default signal dispositions for the command.
            let prog = if argv[0].as_bytes().contains(&b'/') {
                argv[0].clone()
            } else {
                resolve_in_path(&spec.argv[0], &spec.env).unwrap_or_else(|| argv[0].clone())
            };
            let err = nix::unistd::execve(&prog, &argv, &env).unwrap_err();
            eprintln!("webake sandbox: cannot execute {}: {err}", spec.argv[0]);
            // SAFETY: exit the forked child without running parent destructors.
            #[allow(unsafe_code)]
            unsafe {
                libc::_exit(127)
            }
        }
        ForkResult::Parent { child } => {
            CHILD.store(child.as_raw(), std::sync::atomic::Ordering::SeqCst);
            install_forwarding();
            reap_until(child)
        }
    };
    // Everything else still alive in this PID namespace (daemons a step started) dies now.
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    while waitpid(Pid::from_raw(-1), Some(WaitPidFlag::empty())).is_ok() {}
    if let Some(g) = dpkg_guard {
        g.restore()?;
    }
    if let Some(g) = policy_guard {
        g.restore()?;
    }
    if let Some(g) = resolv_guard {
        g.restore()?;
    }
    Ok(code)
}

fn resolve_in_path(prog: &str, env: &[(String, String)]) -> Option<CString> {
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or("/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .map(|d| Path::new(d).join(prog))
        .find(|p| p.is_file())
        .and_then(|p| CString::new(p.to_string_lossy().into_owned()).ok())
}

fn reap_until(child: Pid) -> u8 {
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(ws) => {
                if ws.pid() == Some(child)
                    && let Some(c) = status_code(ws)
                {
                    return c;
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 125,
        }
    }
}

fn mount_api_filesystems(root: &Path) -> Result<(), String> {
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let proc_dir = safe_mkdir_in_root(root, Path::new("/proc"), true)?;
    m(
        Some("proc"),
        &proc_dir,
        Some("proc"),
        nosuid_nodev_noexec,
        None,
    )?;
    let sys = safe_mkdir_in_root(root, Path::new("/sys"), true)?;
    m(
        Some("/sys"),
        &sys,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    m(
        None,
        &sys,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | nosuid_nodev_noexec,
        None,
    )?;

    let dev = safe_mkdir_in_root(root, Path::new("/dev"), true)?;
    m(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=4m"),
    )?;
    for node in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = dev.join(node);
        std::fs::write(&target, b"").map_err(|e| format!("create {}: {e}", target.display()))?;
        let src = format!("/dev/{node}");
        m(Some(&src), &target, None, MsFlags::MS_BIND, None)?;
    }
    for (name, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        symlink(to, dev.join(name)).map_err(|e| format!("symlink /dev/{name}: {e}"))?;
    }
    let pts = dev.join("pts");
    std::fs::create_dir(&pts).map_err(|e| format!("mkdir /dev/pts: {e}"))?;
    m(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=620,gid=5"),
    )?;
    let shm = dev.join("shm");
    std::fs::create_dir(&shm).map_err(|e| format!("mkdir /dev/shm: {e}"))?;
    m(
        Some("tmpfs"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;

    let run = safe_mkdir_in_root(root, Path::new("/run"), true)?;
    m(
        Some("tmpfs"),
        &run,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )?;
    std::fs::create_dir_all(run.join("lock")).map_err(|e| format!("mkdir /run/lock: {e}"))?;
    let tmp = safe_mkdir_in_root(root, Path::new("/tmp"), true)?;
    m(
        Some("tmpfs"),
        &tmp,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    Ok(())
}

/// Create `inner` (absolute, inside `root`) as a directory (or an empty file if `dir` is
/// false), refusing to follow any symlink on the way: a hostile tree cannot redirect a mount
/// onto the host.
pub fn safe_mkdir_in_root(root: &Path, inner: &Path, dir: bool) -> Result<PathBuf, String> {
    let mut cur = root.to_path_buf();
    let comps: Vec<_> = inner
        .components()
        .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
        .collect();
    for (i, c) in comps.iter().enumerate() {
        let Component::Normal(name) = c else {
            return Err(format!(
                "path {} inside the image must not contain '..'",
                inner.display()
            ));
        };
        cur.push(name);
        let last = i + 1 == comps.len();
        match std::fs::symlink_metadata(&cur) {
            Ok(md) if md.file_type().is_symlink() => {
                return Err(format!(
                    "refusing to follow symlink {} inside the image",
                    cur.display()
                ));
            }
            Ok(md) if !last && !md.is_dir() => {
                return Err(format!(
                    "{} inside the image is not a directory",
                    cur.display()
                ));
            }
            Ok(_) => {}
            Err(_) if last && !dir => {
                std::fs::write(&cur, b"").map_err(|e| format!("create {}: {e}", cur.display()))?;
            }
            Err(_) => {
                std::fs::create_dir(&cur).map_err(|e| format!("mkdir {}: {e}", cur.display()))?
            }
        }
    }
    Ok(cur)
}

/// A file replaced for the duration of a step and put back afterwards exactly as it was
/// (content, or symlink, or absence).
/// The dpkg configuration drop-in present while a chroot step runs.
pub const DPKG_UNSAFE_IO: &str = "/etc/dpkg/dpkg.cfg.d/webake-unsafe-io";

struct ReplacedFile {
    path: PathBuf,
    before: Before,
}

enum Before {
    Absent,
    Symlink(PathBuf),
    File(Vec<u8>, u32),
}

impl ReplacedFile {
    fn install(path: &Path, content: &[u8], mode: u32) -> Result<Self, String> {
        use std::os::unix::fs::PermissionsExt;
        let before = match std::fs::symlink_metadata(path) {
            Err(_) => Before::Absent,
            Ok(md) if md.file_type().is_symlink() => Before::Symlink(
                std::fs::read_link(path)
                    .map_err(|e| format!("readlink {}: {e}", path.display()))?,
            ),
            Ok(md) => Before::File(
                std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?,
                md.permissions().mode(),
            ),
        };
        if let Some(parent) = path.parent()
            && !parent.is_dir()
        {
            return Err(format!("{} does not exist in the image", parent.display()));
        }
        let _ = std::fs::remove_file(path);
        std::fs::write(path, content).map_err(|e| format!("write {}: {e}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("chmod {}: {e}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            before,
        })
    }

    fn restore(self) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::remove_file(&self.path);
        match self.before {
            Before::Absent => Ok(()),
            Before::Symlink(t) => symlink(&t, &self.path)
                .map_err(|e| format!("restore symlink {}: {e}", self.path.display())),
            Before::File(bytes, mode) => {
                std::fs::write(&self.path, bytes)
                    .map_err(|e| format!("restore {}: {e}", self.path.display()))?;
                std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(mode))
                    .map_err(|e| format!("chmod {}: {e}", self.path.display()))
            }
        }
    }
}
