//! The helper's three processes: H (host root, idmapped mounts and network), C (enters the
//! namespaces), G (PID 1: mounts, pivot_root, runs the command). See the `sandbox` module docs.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, symlink};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, chdir, fork, pivot_root};

use super::guards::{self, ReplacedFile};
use super::ids::IdRange;
use super::net::{self, Slirp};
use super::{Allow, Network, SPEC_FD, SandboxSpec, View, caps, idmap, offline, procfs, seccomp};

/// Exit code of the helper when the sandbox itself fails (not the command).
pub const SANDBOX_FAILED: u8 = 125;

/// A sealed memfd holding the spec (passed to the helper as fd 3).
pub fn spec_memfd(json: &[u8]) -> std::io::Result<File> {
    // SAFETY: memfd_create with a NUL-terminated name; we own the returned fd.
    let fd = unsafe {
        libc::memfd_create(
            c"webake-sandbox-spec".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh fd.
    let mut f = unsafe { File::from_raw_fd(fd) };
    f.write_all(json)?;
    // SAFETY: fcntl on our fd.
    unsafe {
        libc::fcntl(
            fd,
            libc::F_ADD_SEALS,
            libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL,
        );
    }
    Ok(f)
}

fn read_spec() -> Result<SandboxSpec, String> {
    // SAFETY: fcntl only checks whether fd 3 is open.
    if unsafe { libc::fcntl(SPEC_FD, libc::F_GETFD) } < 0 {
        return Err("no spec on fd 3 (run through SandboxSpec::command)".into());
    }
    // SAFETY: fd 3 is open and ours from now on.
    let f = unsafe { File::from_raw_fd(SPEC_FD) };
    let mut buf = Vec::new();
    let mut off = 0u64;
    let mut chunk = [0u8; 65536];
    loop {
        let n = f
            .read_at(&mut chunk, off)
            .map_err(|e| format!("reading the spec: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        off += n as u64;
    }
    drop(f);
    serde_json::from_slice(&buf).map_err(|e| format!("bad spec: {e}"))
}

pub fn main() -> u8 {
    let spec = match read_spec() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("webake sandbox: {e}");
            return SANDBOX_FAILED;
        }
    };
    die_with_parent();
    match helper(&spec) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("webake sandbox: {e}");
            SANDBOX_FAILED
        }
    }
}

pub fn unsupported_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("the sandbox needs root (webake bakes as root)".into());
    }
    if let Err(e) = IdRange::resolve() {
        return Some(e);
    }
    let max = std::fs::read_to_string("/proc/sys/user/max_user_namespaces").unwrap_or_default();
    if max.trim() == "0" {
        return Some("user namespaces are disabled (user.max_user_namespaces = 0)".into());
    }
    if crate::process::which("slirp4netns").is_none() {
        return Some("slirp4netns is not installed (apt-get install slirp4netns)".into());
    }
    None
}

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

fn forward_signals_to(child: Pid) {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, sigaction};
    CHILD.store(child.as_raw(), Ordering::SeqCst);
    let action = SigAction::new(
        SigHandler::Handler(forward),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only reads an atomic and calls kill(2).
        unsafe {
            let _ = sigaction(sig, &action);
        }
    }
}

fn die_with_parent() {
    // SAFETY: plain prctl.
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

fn wait_for(child: Pid) -> u8 {
    loop {
        match waitpid(child, None) {
            Ok(ws) => {
                if let Some(c) = status_code(ws) {
                    return c;
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return SANDBOX_FAILED,
        }
    }
}

pub fn mount_at(
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

/// A pair of pipes between H and C: C says "namespaces made", H says "go" (or closes: abort).
struct Sync {
    read: File,
    write: File,
}

fn pipe() -> Result<(File, File), String> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fresh fds from pipe2.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}

impl Sync {
    fn signal(&mut self) -> Result<(), String> {
        self.write
            .write_all(b"1")
            .map_err(|e| format!("sandbox sync: {e}"))
    }
    fn wait(&mut self) -> Result<(), String> {
        let mut b = [0u8; 1];
        match self.read.read(&mut b) {
            Ok(1) => Ok(()),
            _ => Err("the other side of the sandbox setup gave up".into()),
        }
    }
}

/// Paths under the work dir (a tmpfs in H's mount namespace), *relative*: H makes the tmpfs
/// its working directory before it forks, so C and G reach it without looking up the host
/// directories above it (the sandbox's root may not search a 0700 `/root/.cache`).
struct Work {
    dir: PathBuf,
}

impl Work {
    /// The work dir as every process of the sandbox sees it: its working directory.
    fn at_cwd() -> Self {
        Self {
            dir: PathBuf::from("."),
        }
    }
    fn lower(&self, i: usize) -> PathBuf {
        self.dir.join(format!("l{i}"))
    }
    fn upper_parent(&self) -> PathBuf {
        self.dir.join("u")
    }
    fn tree(&self) -> PathBuf {
        self.dir.join("t")
    }
    fn merged(&self) -> PathBuf {
        self.dir.join("m")
    }
    fn bind(&self, i: usize) -> PathBuf {
        self.dir.join(format!("b{i}"))
    }
    fn view_root(&self) -> PathBuf {
        self.dir.join("v")
    }
    fn resolv(&self) -> PathBuf {
        self.dir.join("resolv.conf")
    }
    fn proc(&self) -> PathBuf {
        self.dir.join("p")
    }
    /// The offline tools' layer (a tmpfs of G).
    fn offline(&self) -> PathBuf {
        self.dir.join("o")
    }
}

fn check_spec(spec: &SandboxSpec) -> Result<(), String> {
    if !spec.work_dir.is_dir() {
        return Err(format!(
            "work dir {} does not exist",
            spec.work_dir.display()
        ));
    }
    if let Some(o) = &spec.overlay
        && o.upper.parent() != o.work.parent()
    {
        return Err("the overlay's upper and work directories must be siblings".into());
    }
    if spec.argv.is_empty() {
        return Err("empty command".into());
    }
    Ok(())
}

/// Every host path of the spec made absolute (H changes its working directory).
fn absolute_paths(spec: &SandboxSpec) -> Result<SandboxSpec, String> {
    let abs = |p: &Path| std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()));
    let mut s = spec.clone();
    s.work_dir = abs(&s.work_dir)?;
    if let Some(o) = &mut s.overlay {
        for l in &mut o.lowers {
            *l = abs(l)?;
        }
        o.upper = abs(&o.upper)?;
        o.work = abs(&o.work)?;
    }
    match &mut s.view {
        View::Image { tree } | View::Host { tree, .. } => {
            if let Some(t) = tree {
                *t = abs(t)?;
            }
        }
    }
    for b in &mut s.binds {
        b.source = abs(&b.source)?;
    }
    Ok(s)
}

/// H: host root in a private mount namespace.
fn helper(spec: &SandboxSpec) -> Result<u8, String> {
    let spec = &absolute_paths(spec)?;
    check_spec(spec)?;
    let ids = IdRange::resolve()?;
    unshare(CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("unshare(mount) failed: {e} (webake must run as root)"))?;
    mount_at(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;
    mount_at(
        Some("webake-sandbox"),
        &spec.work_dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("size=4m,mode=0755"),
    )?;
    chdir(&spec.work_dir).map_err(|e| format!("chdir {}: {e}", spec.work_dir.display()))?;
    let work = Work::at_cwd();
    prepare_mount_points(spec, &work)?;
    // The idmapped mounts need a user namespace with the sandbox's mapping: a throwaway one
    // (the translation depends on the mapping, not on which namespace carries it). They are
    // made now, in H's namespace, so every namespace copied from it has them.
    let mapping = idmap::mapping_namespace(&ids.map_line())?;
    idmapped_mounts(spec, &work, &mapping)?;
    drop(mapping);
    let host_addrs = net::host_addresses();

    let (c_read, h_write) = pipe()?;
    let (h_read, c_write) = pipe()?;
    let me = nix::unistd::getpid();
    // SAFETY: H is single-threaded here; the child only makes syscalls before it forks again.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop((h_read, h_write));
            let mut sync = Sync {
                read: c_read,
                write: c_write,
            };
            let code = match enter(spec, &work, &ids, &mut sync, me) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("webake sandbox: {e}");
                    SANDBOX_FAILED
                }
            };
            // SAFETY: leave the forked child without running H's destructors.
            unsafe { libc::_exit(code as i32) }
        }
        ForkResult::Parent { child } => {
            drop((c_read, c_write));
            let mut sync = Sync {
                read: h_read,
                write: h_write,
            };
            forward_signals_to(child);
            let setup = outside(spec, &host_addrs, child, &mut sync);
            match setup {
                Ok(slirp) => {
                    let code = wait_for(child);
                    drop(slirp);
                    Ok(code)
                }
                Err(e) => {
                    let _ = kill(child, Signal::SIGKILL);
                    let _ = wait_for(child);
                    Err(e)
                }
            }
        }
    }
}

fn prepare_mount_points(spec: &SandboxSpec, work: &Work) -> Result<(), String> {
    let mkdir =
        |p: &Path| std::fs::create_dir(p).map_err(|e| format!("mkdir {}: {e}", p.display()));
    if let Some(o) = &spec.overlay {
        for i in 0..o.lowers.len() {
            mkdir(&work.lower(i))?;
        }
        mkdir(&work.upper_parent())?;
    }
    mkdir(&work.merged())?;
    mkdir(&work.tree())?;
    mkdir(&work.proc())?;
    mkdir(&work.offline())?;
    mkdir(&work.view_root())?;
    for (i, b) in spec.binds.iter().enumerate() {
        if b.source.is_dir() {
            mkdir(&work.bind(i))?;
        } else {
            std::fs::write(work.bind(i), b"")
                .map_err(|e| format!("{}: {e}", b.source.display()))?;
        }
    }
    std::fs::write(work.resolv(), format!("nameserver {}\n", net::SLIRP_DNS))
        .map_err(|e| format!("resolv.conf: {e}"))?;
    Ok(())
}

/// The idmapped mounts of the layers, the tree and the binds (in H's mount namespace).
fn idmapped_mounts(spec: &SandboxSpec, work: &Work, userns: &OwnedFd) -> Result<(), String> {
    if let Some(o) = &spec.overlay {
        for (i, l) in o.lowers.iter().enumerate() {
            idmap::bind(l, &work.lower(i), userns, true)?;
        }
        let parent = o.upper.parent().unwrap_or(Path::new("/"));
        idmap::bind(parent, &work.upper_parent(), userns, false)?;
    }
    let tree = match &spec.view {
        View::Image { tree } | View::Host { tree, .. } => tree,
    };
    if let Some(t) = tree {
        idmap::bind(t, &work.tree(), userns, false)?;
    }
    for (i, b) in spec.binds.iter().enumerate() {
        idmap::bind(&b.source, &work.bind(i), userns, b.readonly)?;
    }
    Ok(())
}

/// H's part once C has made its network namespace: slirp4netns, routes, forwarded ports.
fn outside(
    spec: &SandboxSpec,
    host_addrs: &[std::net::Ipv4Addr],
    child: Pid,
    sync: &mut Sync,
) -> Result<Option<Slirp>, String> {
    sync.wait()?;
    let netns_path = format!("/proc/{}/ns/net", child.as_raw());
    let slirp = match &spec.network {
        Network::None => {
            in_netns(&netns_path, net::loopback_up)?;
            None
        }
        Network::Outbound { allow } => {
            let slirp = Slirp::start(&netns_path)?;
            let listeners = in_netns(&netns_path, || {
                net::loopback_up()?;
                for (dst, prefix, kind) in net::routes(host_addrs, allow) {
                    net::add_route(dst, prefix, kind)?;
                }
                let mut ls = Vec::new();
                for a in allow {
                    if let Allow::HostLoopbackPort(p) = a {
                        ls.push((net::listen_loopback(*p)?, *p));
                    }
                }
                Ok(ls)
            })?;
            for (l, p) in listeners {
                net::forward_to_host(l, p);
            }
            Some(slirp)
        }
    };
    sync.signal()?;
    Ok(slirp)
}

/// Run `f` with this thread in the network namespace at `path`, then switch back.
fn in_netns<T>(path: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    let orig = File::open("/proc/thread-self/ns/net").map_err(|e| format!("netns: {e}"))?;
    let target = File::open(path).map_err(|e| format!("netns {path}: {e}"))?;
    setns(&target, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns {path}: {e}"))?;
    let r = f();
    setns(&orig, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns back: {e}"))?;
    r
}

/// C: a network and a PID namespace of the host's user namespace (the command can change
/// neither its routes nor mount another /proc); forks G, and writes G's id maps when G has
/// made its user namespace.
fn enter(
    spec: &SandboxSpec,
    work: &Work,
    ids: &IdRange,
    sync: &mut Sync,
    parent: Pid,
) -> Result<u8, String> {
    die_with_parent();
    if nix::unistd::getppid() != parent {
        return Err("the helper died during setup".into());
    }
    unshare(CloneFlags::CLONE_NEWNET).map_err(|e| format!("unshare(net): {e}"))?;
    unshare(CloneFlags::CLONE_NEWPID).map_err(|e| format!("unshare(pid): {e}"))?;
    sync.signal()?;
    sync.wait()?;
    // G cannot see its parent (it is outside G's PID namespace): G learns that C died from
    // this pipe's write end closing.
    let (alive_r, alive_w) = pipe()?;
    let (g_read, c_write) = pipe()?;
    let (c_read, g_write) = pipe()?;
    // SAFETY: C is single-threaded.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop((alive_w, c_read, c_write));
            let mut gsync = Sync {
                read: g_read,
                write: g_write,
            };
            let code = match pid1(spec, work, ids, &alive_r, &mut gsync) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("webake sandbox: {e}");
                    SANDBOX_FAILED
                }
            };
            // SAFETY: leave without running destructors of the forked copy.
            unsafe { libc::_exit(code as i32) }
        }
        ForkResult::Parent { child } => {
            drop((alive_r, g_read, g_write));
            let mut gsync = Sync {
                read: c_read,
                write: c_write,
            };
            forward_signals_to(child);
            // G made its user namespace: map it.
            let mapped = gsync
                .wait()
                .and_then(|()| idmap::write_maps(child.as_raw(), &ids.map_line()))
                .and_then(|()| gsync.signal());
            if let Err(e) = mapped {
                let _ = kill(child, Signal::SIGKILL);
                let _ = wait_for(child);
                return Err(e);
            }
            let code = wait_for(child);
            drop(alive_w);
            Ok(code)
        }
    }
}

/// Has the other end of this pipe been closed?
fn hung_up(r: &File) -> bool {
    let mut p = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(r),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one valid pollfd, no wait.
    unsafe { libc::poll(&mut p, 1, 0) > 0 && p.revents & libc::POLLHUP != 0 }
}

/// The overlay of `lowers` (top first) and the spec's upper layer at the merged dir.
fn mount_overlay(o: &super::Overlay, work: &Work, lowers: &[String]) -> Result<(), String> {
    let name = |p: &Path| p.file_name().map(PathBuf::from).unwrap_or_default();
    let up = work.upper_parent();
    let data = format!(
        "lowerdir={},upperdir={},workdir={},userxattr",
        lowers.join(":"),
        up.join(name(&o.upper)).display(),
        up.join(name(&o.work)).display(),
    );
    mount_at(
        Some("overlay"),
        &work.merged(),
        Some("overlay"),
        MsFlags::MS_NODEV,
        Some(&data),
    )
}

/// Where the image tree is mounted before `pivot_root` (if there is one).
fn mount_image(spec: &SandboxSpec, work: &Work) -> Result<Option<PathBuf>, String> {
    if let Some(o) = &spec.overlay {
        let mut lowers: Vec<String> = (0..o.lowers.len())
            .map(|i| work.lower(i).display().to_string())
            .collect();
        mount_overlay(o, work, &lowers)?;
        if offline::wanted(spec) {
            // The offline tools shadow the image's own from a lower layer of their own (read
            // from the image first): the step sees them, its layer never holds them.
            offline::build_layer(&work.merged(), &work.offline())?;
            umount2(&work.merged(), MntFlags::empty())
                .map_err(|e| format!("unmounting the overlay: {e}"))?;
            lowers.insert(0, work.offline().display().to_string());
            mount_overlay(o, work, &lowers)?;
        }
        return Ok(Some(work.merged()));
    }
    let tree = match &spec.view {
        View::Image { tree } | View::Host { tree, .. } => tree,
    };
    if tree.is_none() {
        return Ok(None);
    }
    // The idmapped mount came from H's namespace, so it is locked here and cannot become the
    // root: bind it once more inside this namespace.
    let t = work.tree().display().to_string();
    mount_at(
        Some(&t),
        &work.merged(),
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    Ok(Some(work.merged()))
}

/// G: PID 1 of the sandbox.
fn pid1(
    spec: &SandboxSpec,
    work: &Work,
    ids: &IdRange,
    parent_alive: &File,
    gsync: &mut Sync,
) -> Result<u8, String> {
    stay_tied_to_parent(parent_alive)?;
    mount_masked_proc(work, ids)?;
    become_root(gsync)?;
    // Changing credentials cleared the parent-death signal and the dumpable flag.
    stay_tied_to_parent(parent_alive)?;
    unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWCGROUP,
    )
    .map_err(|e| format!("unshare(mount, uts, ipc, cgroup): {e}"))?;
    mount_at(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;
    let _ = nix::unistd::sethostname(&spec.hostname);
    super::binfmt::register(&work.proc(), &spec.binfmt)?;
    let image = mount_image(spec, work)?;
    let outbound = matches!(spec.network, Network::Outbound { .. });
    let (new_root, image_inside) = build_new_root(spec, work, image, outbound)?;
    for (i, b) in spec.binds.iter().enumerate() {
        let target = safe_mkdir_in_root(&new_root, &b.target, work.bind(i).is_dir())?;
        let s = work.bind(i).display().to_string();
        mount_at(Some(&s), &target, None, MsFlags::MS_BIND, None)?;
    }
    enter_root(&new_root)?;
    chdir(&spec.cwd).map_err(|e| format!("chdir {}: {e}", spec.cwd.display()))?;

    let guards = install_guards(spec, image_inside.as_deref(), outbound)?;
    let code = run_command(spec)?;
    // Everything else still alive in this PID namespace (daemons a step started) dies now.
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    while waitpid(Pid::from_raw(-1), Some(WaitPidFlag::empty())).is_ok() {}
    if let Some(img) = &image_inside {
        offline::report(img, &mut std::io::stdout());
    }
    for g in guards.into_iter().rev() {
        g.restore()?;
    }
    Ok(code)
}

/// Die with the parent, keep the command from inspecting PID 1 (/proc/1/mem, environ, fds),
/// and fail if the parent is already gone.
fn stay_tied_to_parent(parent_alive: &File) -> Result<(), String> {
    die_with_parent();
    // SAFETY: plain prctl.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
    if hung_up(parent_alive) {
        return Err("the sandbox's parent died during setup".into());
    }
    Ok(())
}

/// Mount /proc of the new PID namespace, its private kernel parameters and its masks while
/// still root of the host's user namespace, in a mount namespace of that user namespace. So
/// no "fully visible /proc" is needed (a container's /proc is masked), and once the
/// sandbox's own mount namespace copies them they are locked: the command cannot unmount a
/// mask.
fn mount_masked_proc(work: &Work, ids: &IdRange) -> Result<(), String> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| format!("unshare(mount): {e}"))?;
    mount_at(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;
    let proc_dir = work.proc();
    mount_at(
        Some("proc"),
        &proc_dir,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;
    procfs::private_sysctl(&proc_dir, ids.base)?;
    procfs::mask(&proc_dir)?;
    Ok(())
}

/// Enter a new user namespace (C writes its maps), then become root in it.
fn become_root(gsync: &mut Sync) -> Result<(), String> {
    unshare(CloneFlags::CLONE_NEWUSER).map_err(|e| format!("unshare(user): {e}"))?;
    gsync.signal()?;
    gsync.wait()?;
    let root = nix::unistd::Gid::from_raw(0);
    nix::unistd::setresgid(root, root, root).map_err(|e| format!("setresgid: {e}"))?;
    nix::unistd::setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;
    let uroot = nix::unistd::Uid::from_raw(0);
    nix::unistd::setresuid(uroot, uroot, uroot).map_err(|e| format!("setresuid: {e}"))?;
    Ok(())
}

/// The new root, and where the image is inside it.
fn build_new_root(
    spec: &SandboxSpec,
    work: &Work,
    image: Option<PathBuf>,
    outbound: bool,
) -> Result<(PathBuf, Option<PathBuf>), String> {
    match &spec.view {
        View::Image { .. } => {
            let root = image.ok_or("an image view needs an overlay or a tree")?;
            if spec.api_filesystems {
                mount_api_filesystems(&root)?;
            }
            Ok((root, Some(PathBuf::from("/"))))
        }
        View::Host { image_at, .. } => {
            let root = work.view_root();
            host_view(&root, outbound.then(|| work.resolv()))?;
            if let Some(img) = &image {
                let at = safe_mkdir_in_root(&root, image_at, true)?;
                let s = img.display().to_string();
                mount_at(
                    Some(&s),
                    &at,
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None,
                )?;
                if spec.api_filesystems {
                    mount_api_filesystems(&at)?;
                }
            }
            Ok((root, image.as_ref().map(|_| image_at.clone())))
        }
    }
}

/// `pivot_root` into `root` and detach the old root: no path leads back to the host's tree.
fn enter_root(root: &Path) -> Result<(), String> {
    chdir(root).map_err(|e| format!("chdir {}: {e}", root.display()))?;
    pivot_root(".", ".").map_err(|e| format!("pivot_root {}: {e}", root.display()))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| format!("detaching the old root: {e}"))?;
    chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(())
}

fn install_guards(
    spec: &SandboxSpec,
    image: Option<&Path>,
    outbound: bool,
) -> Result<Vec<ReplacedFile>, String> {
    let mut out = Vec::new();
    let Some(img) = image else {
        return Ok(out);
    };
    if offline::wanted(spec) {
        offline::install(img)?;
    }
    let g = &spec.guards;
    let resolv = format!("nameserver {}\n", net::SLIRP_DNS);
    // (wanted, path in the image, content, mode); each only where its directory exists.
    let files: [(bool, &str, &[u8], u32); 4] = [
        (
            g.resolv_conf && outbound,
            "/etc/resolv.conf",
            resolv.as_bytes(),
            0o644,
        ),
        (
            g.policy_rc_d,
            guards::POLICY_RC_D,
            guards::POLICY_RC_D_BODY,
            0o755,
        ),
        (
            g.dpkg_unsafe_io,
            guards::DPKG_UNSAFE_IO,
            guards::DPKG_UNSAFE_IO_BODY,
            0o644,
        ),
        (
            g.apt_no_translations,
            guards::APT_NO_TRANSLATIONS,
            guards::APT_NO_TRANSLATIONS_BODY,
            0o644,
        ),
    ];
    for (wanted, path, body, mode) in files {
        let file = img.join(path.trim_start_matches('/'));
        if wanted && file.parent().is_some_and(Path::is_dir) {
            out.push(ReplacedFile::install(&file, body, mode)?);
        }
    }
    Ok(out)
}

/// Fork the command with the reduced capabilities, no_new_privs and the seccomp filter; wait.
fn run_command(spec: &SandboxSpec) -> Result<u8, String> {
    let argv: Vec<CString> = spec
        .argv
        .iter()
        .map(|a| CString::new(a.as_str()))
        .collect::<Result<_, _>>()
        .map_err(|_| "argument contains NUL")?;
    let env_list = if offline::wanted(spec) {
        offline::path_env(&spec.env)
    } else {
        spec.env.clone()
    };
    let env: Vec<CString> = env_list
        .iter()
        .map(|(k, v)| CString::new(format!("{k}={v}")))
        .collect::<Result<_, _>>()
        .map_err(|_| "environment contains NUL")?;
    let prog = if spec.argv[0].contains('/') {
        argv[0].clone()
    } else {
        resolve_in_path(&spec.argv[0], &spec.env).unwrap_or_else(|| argv[0].clone())
    };
    let keep = caps::allowed(spec.power);
    let filter = seccomp::program(spec.power);
    // SAFETY: G is single-threaded.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            let fail = |what: &str| -> ! {
                eprintln!("webake sandbox: {what}");
                // SAFETY: leave the forked child.
                unsafe { libc::_exit(SANDBOX_FAILED as i32) }
            };
            // SAFETY: close every descriptor but stdio (nothing of the helper leaks in).
            unsafe {
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            }
            if let Err(e) = caps::restrict(&keep) {
                fail(e);
            }
            // SAFETY: plain prctl.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                fail("no_new_privs failed");
            }
            if let Err(e) = seccomp::install(&filter) {
                fail(e);
            }
            let err = nix::unistd::execve(&prog, &argv, &env).unwrap_err();
            fail(&format!("cannot execute {}: {err}", spec.argv[0]));
        }
        ForkResult::Parent { child } => {
            forward_signals_to(child);
            Ok(reap_until(child))
        }
    }
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
            Err(_) => return SANDBOX_FAILED,
        }
    }
}

/// A read-only, recursive bind of `source` onto `target` (no idmapping: host files keep their
/// host owners, so root-only files stay unreadable to the sandbox's root).
fn bind_readonly(source: &Path, target: &Path) -> Result<(), String> {
    let s = source.display().to_string();
    mount_at(
        Some(&s),
        target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    idmap::make_readonly_recursive(target)
}

/// The host-tools view: a tmpfs with the host's system directories read-only.
fn host_view(root: &Path, resolv: Option<PathBuf>) -> Result<(), String> {
    mount_at(
        Some("webake-host-view"),
        root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755,size=16m"),
    )?;
    for d in [
        "usr", "etc", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "opt",
    ] {
        let host = Path::new("/").join(d);
        let Ok(md) = std::fs::symlink_metadata(&host) else {
            continue;
        };
        let at = root.join(d);
        if md.file_type().is_symlink() {
            let t = std::fs::read_link(&host).map_err(|e| format!("{}: {e}", host.display()))?;
            symlink(&t, &at).map_err(|e| format!("{}: {e}", at.display()))?;
        } else if md.is_dir() {
            std::fs::create_dir(&at).map_err(|e| format!("{}: {e}", at.display()))?;
            bind_readonly(&host, &at)?;
        }
    }
    if let Some(r) = resolv {
        let at = root.join("etc/resolv.conf");
        if at.exists() {
            let s = r.display().to_string();
            mount_at(Some(&s), &at, None, MsFlags::MS_BIND, None)?;
            idmap::make_readonly_recursive(&at)?;
        }
    }
    mount_api_filesystems(root)?;
    std::fs::create_dir_all(root.join("tmp/home")).map_err(|e| format!("home: {e}"))?;
    Ok(())
}

fn mount_api_filesystems(root: &Path) -> Result<(), String> {
    let proc_dir = safe_mkdir_in_root(root, Path::new("/proc"), true)?;
    let prepared = Work::at_cwd().proc().display().to_string();
    mount_at(
        Some(&prepared),
        &proc_dir,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    let sys = safe_mkdir_in_root(root, Path::new("/sys"), true)?;
    bind_readonly(Path::new("/sys"), &sys)?;

    let dev = safe_mkdir_in_root(root, Path::new("/dev"), true)?;
    mount_at(
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
        mount_at(Some(&src), &target, None, MsFlags::MS_BIND, None)?;
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
    mount_at(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=620,gid=5"),
    )?;
    let shm = dev.join("shm");
    std::fs::create_dir(&shm).map_err(|e| format!("mkdir /dev/shm: {e}"))?;
    mount_at(
        Some("tmpfs"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    let run = safe_mkdir_in_root(root, Path::new("/run"), true)?;
    mount_at(
        Some("tmpfs"),
        &run,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )?;
    std::fs::create_dir_all(run.join("lock")).map_err(|e| format!("mkdir /run/lock: {e}"))?;
    let tmp = safe_mkdir_in_root(root, Path::new("/tmp"), true)?;
    mount_at(
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
/// elsewhere.
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
