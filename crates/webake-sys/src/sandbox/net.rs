//! Networking of the sandbox: a network namespace owned by the host's user namespace (the
//! command cannot change its routes or firewall), slirp4netns for user-mode outbound
//! networking, and routes that make the host and link-local addresses unreachable.
//!
//! Why slirp4netns and not pasta: Debian 12's pasta (2023-03) drops to `nobody` before it opens
//! the target namespace, so it cannot attach to a namespace owned by the host's user namespace
//! (measured: "Couldn't open network namespace"); slirp4netns 1.2 can, reports readiness on a
//! pipe and exits when its exit pipe closes (also when webake is killed), sandboxes itself
//! (`--enable-sandbox`, `--enable-seccomp`), refuses connections to the host's loopback
//! (`--disable-host-loopback`) and serves DNS on a fixed address independent of the host's
//! resolver. Its lower throughput does not matter for package downloads.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::Allow;

/// slirp4netns's network: the namespace is 10.0.2.100, the gateway 10.0.2.2.
pub const SLIRP_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// slirp4netns's DNS forwarder (to the host's resolver, whatever address that has).
pub const SLIRP_DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
/// How long slirp4netns may take to configure the namespace.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// IPv4 addresses of the host's interfaces, loopback excluded (blocked inside the sandbox:
/// a connection to one of them would reach the host's own services).
pub fn host_addresses() -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a linked list we free with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return out;
    }
    let mut p = ifap;
    while !p.is_null() {
        // SAFETY: p walks the list returned by getifaddrs.
        let ifa = unsafe { &*p };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr; we check the family before casting.
            let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
            if family == libc::AF_INET {
                // SAFETY: AF_INET addresses are sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                let a = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                if !a.is_loopback() && !out.contains(&a) {
                    out.push(a);
                }
            }
        }
        p = ifa.ifa_next;
    }
    // SAFETY: frees what getifaddrs allocated.
    unsafe { libc::freeifaddrs(ifap) };
    out
}

/// Bring up `lo` in the current network namespace.
pub fn loopback_up() -> Result<(), String> {
    // SAFETY: socket/ioctl on a zeroed ifreq with the interface name filled in.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        let s = OwnedFd::from_raw_fd(s);
        let mut ifr: libc::ifreq = std::mem::zeroed();
        ifr.ifr_name[0] = b'l' as libc::c_char;
        ifr.ifr_name[1] = b'o' as libc::c_char;
        if libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) < 0 {
            return Err(format!(
                "SIOCGIFFLAGS lo: {}",
                std::io::Error::last_os_error()
            ));
        }
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) < 0 {
            return Err(format!(
                "SIOCSIFFLAGS lo: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// What a route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// Refused with EACCES ("prohibited"): the destination is blocked.
    Prohibit,
    /// Through slirp4netns's gateway: an explicitly allowed destination.
    ViaGateway,
}

/// The routes of a sandbox: what is blocked and what the recipe allows back.
pub fn routes(host: &[Ipv4Addr], allow: &[Allow]) -> Vec<(Ipv4Addr, u8, RouteKind)> {
    // Link-local: instance metadata (169.254.169.254), ECS/EKS agents (169.254.170.x).
    // (slirp4netns's alias of the host's loopback, 10.0.2.2, is refused by
    // --disable-host-loopback; it must stay routable as the gateway.)
    let mut r = vec![(Ipv4Addr::new(169, 254, 0, 0), 16, RouteKind::Prohibit)];
    for a in host {
        r.push((*a, 32, RouteKind::Prohibit));
    }
    for a in allow {
        if let Allow::Network { addr, prefix } = a {
            r.retain(|(d, p, _)| !(d == addr && p == prefix));
            r.push((*addr, *prefix, RouteKind::ViaGateway));
        }
    }
    r
}

/// Add a route in the current network namespace with rtnetlink.
pub fn add_route(dst: Ipv4Addr, prefix: u8, kind: RouteKind) -> Result<(), String> {
    const NLMSG_HDR: usize = 16;
    const RTMSG: usize = 12;
    let mut attrs = Vec::new();
    let mut push_attr = |ty: u16, data: &[u8]| {
        let len = 4 + data.len();
        attrs.extend_from_slice(&(len as u16).to_ne_bytes());
        attrs.extend_from_slice(&ty.to_ne_bytes());
        attrs.extend_from_slice(data);
        while !attrs.len().is_multiple_of(4) {
            attrs.push(0);
        }
    };
    push_attr(libc::RTA_DST, &dst.octets());
    if kind == RouteKind::ViaGateway {
        push_attr(libc::RTA_GATEWAY, &SLIRP_GATEWAY.octets());
    }
    let total = NLMSG_HDR + RTMSG + attrs.len();
    let mut msg = Vec::with_capacity(total);
    msg.extend_from_slice(&(total as u32).to_ne_bytes());
    msg.extend_from_slice(&libc::RTM_NEWROUTE.to_ne_bytes());
    let flags =
        (libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid
    let (scope, ty) = match kind {
        RouteKind::Prohibit => (libc::RT_SCOPE_UNIVERSE, libc::RTN_PROHIBIT),
        RouteKind::ViaGateway => (libc::RT_SCOPE_UNIVERSE, libc::RTN_UNICAST),
    };
    msg.extend_from_slice(&[
        libc::AF_INET as u8,
        prefix,
        0, // src_len
        0, // tos
        libc::RT_TABLE_MAIN,
        libc::RTPROT_STATIC,
        scope,
        ty,
    ]);
    msg.extend_from_slice(&0u32.to_ne_bytes()); // rtm_flags
    msg.extend_from_slice(&attrs);
    // SAFETY: a netlink socket; send/recv on owned buffers.
    unsafe {
        let s = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        );
        if s < 0 {
            return Err(format!(
                "netlink socket: {}",
                std::io::Error::last_os_error()
            ));
        }
        let s = OwnedFd::from_raw_fd(s);
        if libc::send(s.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) < 0 {
            return Err(format!("netlink send: {}", std::io::Error::last_os_error()));
        }
        let mut buf = [0u8; 1024];
        let n = libc::recv(s.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0);
        if n < (NLMSG_HDR + 4) as isize {
            return Err(format!("netlink recv: {}", std::io::Error::last_os_error()));
        }
        let ty = u16::from_ne_bytes([buf[4], buf[5]]);
        if ty == libc::NLMSG_ERROR as u16 {
            let code = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
            if code != 0 {
                return Err(format!(
                    "adding route {dst}/{prefix} ({kind:?}): {}",
                    std::io::Error::from_raw_os_error(-code)
                ));
            }
        }
    }
    Ok(())
}

/// A running slirp4netns attached to a network namespace. Dropping it closes the exit pipe:
/// slirp4netns exits (it also does when this process dies, SIGKILL included).
pub struct Slirp {
    child: Child,
    exit_w: Option<OwnedFd>,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fresh fds from pipe2.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

impl Slirp {
    /// Start slirp4netns for the namespace at `netns_path` and wait until it is configured.
    pub fn start(netns_path: &str) -> Result<Self, String> {
        let (ready_r, ready_w) = pipe()?;
        let (exit_r, exit_w) = pipe()?;
        let (rw, er) = (ready_w.as_raw_fd(), exit_r.as_raw_fd());
        let mut cmd = Command::new("slirp4netns");
        cmd.args([
            "--configure",
            "--mtu=65520",
            "--disable-host-loopback",
            "--enable-sandbox",
            "--enable-seccomp",
            "--netns-type=path",
        ])
        .arg(format!("--ready-fd={rw}"))
        .arg(format!("--exit-fd={er}"))
        .arg(netns_path)
        .arg("tap0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        use std::os::unix::process::CommandExt;
        // SAFETY: only async-signal-safe calls between fork and exec: clear CLOEXEC on the two
        // pipe ends slirp4netns uses, ask for SIGKILL when the helper dies.
        unsafe {
            cmd.pre_exec(move || {
                for fd in [rw, er] {
                    let fl = libc::fcntl(fd, libc::F_GETFD);
                    libc::fcntl(fd, libc::F_SETFD, fl & !libc::FD_CLOEXEC);
                }
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                "slirp4netns is not installed (apt-get install slirp4netns): the sandbox's \
                 outbound network needs it"
                    .to_string()
            } else {
                format!("starting slirp4netns: {e}")
            }
        })?;
        drop(ready_w);
        drop(exit_r);
        let mut ready = std::fs::File::from(ready_r);
        // Wait for "1" on the ready pipe, bounded.
        let deadline = std::time::Instant::now() + READY_TIMEOUT;
        let mut pfd = libc::pollfd {
            fd: ready.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            // SAFETY: poll on one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis() as i32) };
            if r > 0 {
                break;
            }
            if r == 0 || left.is_zero() {
                let _ = child.kill();
                let _ = child.wait();
                return Err("slirp4netns did not configure the network in time".into());
            }
        }
        let mut b = [0u8; 1];
        if ready.read(&mut b).unwrap_or(0) != 1 {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            let _ = child.wait();
            return Err(format!("slirp4netns failed: {}", err.trim()));
        }
        // Its stderr is not needed any more (and must not block it).
        drop(child.stderr.take());
        Ok(Self {
            child,
            exit_w: Some(exit_w),
        })
    }
}

impl Drop for Slirp {
    fn drop(&mut self) {
        if let Some(mut w) = self.exit_w.take().map(std::fs::File::from) {
            let _ = w.write_all(b"x");
        }
        let _ = self.child.wait();
    }
}

/// Listen on 127.0.0.1:`port` in the current network namespace (before switching back).
pub fn listen_loopback(port: u16) -> Result<TcpListener, String> {
    TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
        .map_err(|e| format!("listening on 127.0.0.1:{port} in the sandbox: {e}"))
}

/// Forward every connection accepted on `listener` (in the sandbox's namespace) to the host's
/// 127.0.0.1:`port`. Threads end with the helper process.
pub fn forward_to_host(listener: TcpListener, port: u16) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(inner) = conn else { continue };
            std::thread::spawn(move || {
                let Ok(outer) = TcpStream::connect(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
                else {
                    return;
                };
                splice_both(inner, outer);
            });
        }
    });
}

fn splice_both(a: TcpStream, b: TcpStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let t = std::thread::spawn(move || copy_then_shutdown(a2, b2));
    copy_then_shutdown(b, a);
    let _ = t.join();
}

fn copy_then_shutdown(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(std::net::Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_block_link_local_and_the_host_and_allow_what_the_recipe_names() {
        let host = [Ipv4Addr::new(192, 0, 2, 2)];
        let r = routes(&host, &[]);
        assert!(r.contains(&(Ipv4Addr::new(169, 254, 0, 0), 16, RouteKind::Prohibit)));
        assert!(r.contains(&(Ipv4Addr::new(192, 0, 2, 2), 32, RouteKind::Prohibit)));
        let r = routes(
            &host,
            &[Allow::Network {
                addr: Ipv4Addr::new(192, 0, 2, 2),
                prefix: 32,
            }],
        );
        assert!(r.contains(&(Ipv4Addr::new(192, 0, 2, 2), 32, RouteKind::ViaGateway)));
        assert!(!r.contains(&(Ipv4Addr::new(192, 0, 2, 2), 32, RouteKind::Prohibit)));
    }
}
