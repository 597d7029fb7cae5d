//! The step sandbox: run a command against an image tree with the power of an unprivileged
//! container over the build host, and no more.
//!
//! `webake` re-executes itself as a helper (`__webake-sandbox`); the spec arrives on file
//! descriptor 3 (a sealed memfd), never on the command line. Three processes set it up:
//!
//! 1. **H**, the helper, still host root: a private mount namespace in which it makes
//!    *idmapped* bind mounts of every host directory the sandbox may write (overlay layers,
//!    binds), so that root in the sandbox (host uid [`ids::IdRange::base`]) reads and writes
//!    files with their real owners on disk. It starts slirp4netns for outbound networking and
//!    sets the routes of the sandbox's network namespace (link-local and the host's own
//!    addresses unreachable).
//! 2. **C** joins a fresh network namespace owned by the *host* user namespace (so the step can
//!    change neither its routes nor its firewall), then a new user namespace mapping 0..65535 to
//!    a range of unprivileged host ids, then new mount, PID, UTS, IPC and cgroup namespaces owned
//!    by that user namespace.
//! 3. **G**, PID 1 of the new PID namespace, mounts the overlay (`userxattr`), proc with a
//!    private copy of `/proc/sys` (writes never reach the kernel) and masked paths, a read-only
//!    `/sys`, a minimal `/dev`, tmpfs `/run` and `/tmp`, the binds, then `pivot_root`s into the
//!    root and detaches the old one. It forks the command with a reduced capability bounding
//!    set, `no_new_privs` and a seccomp filter, reaps everything, restores the files it put in
//!    the tree for the duration of the command (resolv.conf, policy-rc.d, a dpkg drop-in) and
//!    exits with the command's status. A step that asks for them (`WEBAKE_OFFLINE_TOOLS=1`)
//!    gets offline stand-ins for systemctl, hostnamectl, modprobe, iptables, mount, ... in a
//!    lower layer of its own (`offline.rs`).
//!
//! Every mount lives in namespaces that die with these processes (each carries a parent-death
//! signal), also on SIGKILL; slirp4netns exits when its exit pipe closes.

pub mod binfmt;
mod caps;
mod guards;
mod helper;
mod idmap;
pub mod ids;
mod net;
mod offline;
mod procfs;
mod seccomp;

use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::process::Cmd;

pub use guards::{APT_NO_TRANSLATIONS, DPKG_UNSAFE_IO};
pub use helper::safe_mkdir_in_root;
pub use net::SLIRP_DNS;
pub use offline::{
    ENV as OFFLINE_TOOLS_ENV, LIB_DIR as OFFLINE_TOOLS_DIR, REPORT_PREFIX as OFFLINE_REPORT_PREFIX,
    STATE as OFFLINE_STATE,
};

/// argv[1] that selects the helper.
pub const HELPER_ARG: &str = "__webake-sandbox";
/// The file descriptor on which the helper reads its spec.
pub const SPEC_FD: i32 = 3;

/// An overlay mount: `lowers` (top first), an `upper` receiving changes, and a `work` dir on
/// the same filesystem as `upper`. The layers keep overlayfs' *user* xattrs
/// (`user.overlay.opaque`): the overlay is mounted inside the sandbox's user namespace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Overlay {
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
}

/// A bind mount of a host path into the sandbox. Binds are idmapped: files owned by root on
/// the host are owned by root in the sandbox, and what the sandbox writes keeps its owner.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bind {
    pub source: PathBuf,
    /// Absolute path inside the sandbox. Created if missing; symlinks on the way are refused.
    pub target: PathBuf,
    pub readonly: bool,
}

/// What the command sees as `/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum View {
    /// The image tree: the overlay's merged view, or `tree` when there is no overlay.
    Image { tree: Option<PathBuf> },
    /// A private tmpfs with a read-only, unmapped view of the host's system directories
    /// (`/usr`, `/etc`, ...: root-only files stay unreadable), a private `/tmp`, and the image
    /// tree (overlay or `tree`) at `image_at`. For tools that run from the host's installation
    /// against an image: mmdebstrap, the Ansible controller of host mode, disk extraction.
    Host {
        tree: Option<PathBuf>,
        image_at: PathBuf,
    },
}

/// An address a sandbox may reach although the default policy blocks it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Allow {
    /// A TCP port on the build host's loopback, reachable as `127.0.0.1:PORT` inside.
    HostLoopbackPort(u16),
    /// An IPv4 network otherwise blocked (link-local, a host address).
    Network { addr: Ipv4Addr, prefix: u8 },
}

/// Networking of the sandbox.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub enum Network {
    /// Loopback only.
    #[default]
    None,
    /// User-mode outbound networking (slirp4netns): the internet and the host's networks are
    /// reachable, the host itself (loopback, its own addresses) and link-local 169.254.0.0/16
    /// (instance metadata) are not, except what `allow` names.
    Outbound { allow: Vec<Allow> },
}

/// The capabilities (inside the sandbox's user namespace) a command keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Power {
    /// A container's default set (chown, dac_override, setuid, sys_chroot, ...): no mounts,
    /// no namespaces.
    Step,
    /// `Step` plus mounting inside the sandbox (mmdebstrap mounts proc and binds /dev).
    Mounts,
}

/// Files webake puts into the image tree while the command runs, and restores afterwards.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Guards {
    /// `/etc/resolv.conf` pointing at the sandbox's DNS forwarder.
    pub resolv_conf: bool,
    /// `/usr/sbin/policy-rc.d` that keeps services from starting.
    pub policy_rc_d: bool,
    /// A dpkg drop-in with `force-unsafe-io` (a step's tree is committed whole or thrown away).
    pub dpkg_unsafe_io: bool,
    /// An apt drop-in that fetches no translated package descriptions.
    #[serde(default)]
    pub apt_no_translations: bool,
}

/// What to run and where.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// A private, empty host directory for the sandbox's own mount points (created and
    /// removed by the caller; nothing of the host is written elsewhere).
    pub work_dir: PathBuf,
    pub view: View,
    pub overlay: Option<Overlay>,
    /// Mount proc, sys, dev, devpts, run and tmp in the image tree.
    pub api_filesystems: bool,
    pub binds: Vec<Bind>,
    pub network: Network,
    pub guards: Guards,
    pub power: Power,
    pub hostname: String,
    /// Working directory inside the sandbox.
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
    pub argv: Vec<String>,
    /// binfmt_misc registrations (qemu-user) made in the sandbox's own binfmt_misc instance
    /// before the command runs: the tree's programs are of another architecture
    /// ([`SandboxSpec::emulate`], `binfmt.rs`). The host's registrations are never touched.
    #[serde(default)]
    pub binfmt: Vec<String>,
}

impl SandboxSpec {
    /// A command run as root inside the image (`/` is the image), with outbound networking.
    pub fn image(work_dir: impl Into<PathBuf>, argv: Vec<String>) -> Self {
        Self {
            work_dir: work_dir.into(),
            view: View::Image { tree: None },
            overlay: None,
            api_filesystems: true,
            binds: Vec::new(),
            network: Network::Outbound { allow: Vec::new() },
            guards: Guards {
                resolv_conf: true,
                policy_rc_d: true,
                dpkg_unsafe_io: true,
                apt_no_translations: true,
            },
            power: Power::Step,
            hostname: "webake-build".into(),
            cwd: "/".into(),
            env: default_env(),
            argv,
            binfmt: Vec::new(),
        }
    }

    /// A command run from the host's installation (read-only) against an image at `image_at`.
    pub fn host_tools(work_dir: impl Into<PathBuf>, argv: Vec<String>) -> Self {
        Self {
            work_dir: work_dir.into(),
            view: View::Host {
                tree: None,
                image_at: "/image".into(),
            },
            overlay: None,
            api_filesystems: false,
            binds: Vec::new(),
            network: Network::None,
            guards: Guards::default(),
            power: Power::Step,
            hostname: "webake-build".into(),
            cwd: "/".into(),
            env: host_tools_env(),
            argv,
            binfmt: Vec::new(),
        }
    }

    /// Run programs of `debian_arch` (the tree's architecture) under qemu-user when the host
    /// cannot run them natively. An error names what to install.
    pub fn emulate(&mut self, debian_arch: &str) -> Result<(), String> {
        if binfmt::is_native(debian_arch) {
            self.binfmt.clear();
            return Ok(());
        }
        self.binfmt = vec![binfmt::registration(debian_arch)?];
        Ok(())
    }

    /// The command that runs this spec through the helper in `exe` (the webake binary). The
    /// spec, which may carry secret environment values, travels in a memfd on fd 3.
    pub fn command(&self, exe: &Path) -> std::io::Result<Cmd> {
        let json = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        let fd = helper::spec_memfd(&json)?;
        let mut shown = String::from("[sandbox");
        match &self.view {
            View::Image { .. } => shown.push_str(" image"),
            View::Host { .. } => shown.push_str(" host-tools"),
        }
        shown.push_str("] ");
        shown.push_str(&self.argv.join(" "));
        // The helper starts with an empty environment: webake's own (cloud credentials, forge
        // tokens) must not be readable in the sandbox, not even from /proc/1/environ.
        let mut cmd = Cmd::new(exe)
            .arg(HELPER_ARG)
            .env_clear()
            .pass_fd(SPEC_FD, Arc::new(OwnedFd::from(fd)))
            .display_as(shown);
        for k in ["PATH", ids::ENV] {
            if let Some(v) = std::env::var_os(k) {
                cmd = cmd.env(k, v);
            }
        }
        Ok(cmd)
    }
}

/// The environment a command in the image starts with (nothing leaks in from the host).
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

/// The environment of host tools in the sandbox: the host's PATH and locale, a private HOME.
pub fn host_tools_env() -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k == "PATH" || k.starts_with("LC_") || k == "LANG")
        .collect();
    env.push(("HOME".into(), "/tmp/home".into()));
    env.push(("TMPDIR".into(), "/tmp".into()));
    env
}

/// Call first thing in `main`: if this process is the sandbox helper, run it and return the
/// exit code; otherwise return `None`.
pub fn helper_main_if_requested() -> Option<u8> {
    let mut args = std::env::args_os();
    let _exe = args.next();
    if args.next().as_deref() != Some(std::ffi::OsStr::new(HELPER_ARG)) {
        return None;
    }
    Some(helper::main())
}

/// Why the sandbox cannot run on this machine, or `None` when it can. Tests call this to fail
/// with a message naming the missing capability instead of skipping.
pub fn unsupported_reason() -> Option<String> {
    helper::unsupported_reason()
}
