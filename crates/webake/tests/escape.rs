//! The escape suite (issue 14): a recipe whose steps try everything a hostile package script
//! or role could try against the build host, and a bake that must leave the host exactly as it
//! was. Attacks aim only at canaries this test creates (files under a temp dir, a loop device
//! over a temp file, listeners on loopback and on a link-local address inside a network
//! namespace the test makes); host-wide values the attacks could change (kernel parameters)
//! are recorded first and written back by a guard if a bake ever changed them.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;

/// Kernel parameters that change on their own (counters, random values).
const VOLATILE: &[&str] = &[
    "fs.dentry-state",
    "fs.inode-nr",
    "fs.inode-state",
    "fs.file-nr",
    "fs.aio-nr",
    "fs.quota.",
    "kernel.ns_last_pid",
    "kernel.random.uuid",
    "kernel.random.entropy_avail",
    "kernel.pty.nr",
    "net.netfilter.nf_conntrack_count",
];

/// Every readable kernel parameter of the host, by name.
fn sysctl_all() -> BTreeMap<String, String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(md) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if md.is_dir() {
                if p.ends_with("fs/binfmt_misc") {
                    continue;
                }
                walk(base, &p, out);
            } else if md.mode() & 0o444 != 0
                && let Ok(v) = std::fs::read(&p)
            {
                let key = p
                    .strip_prefix(base)
                    .unwrap()
                    .to_string_lossy()
                    .replace('/', ".");
                if !VOLATILE.iter().any(|k| key.starts_with(k)) {
                    out.insert(key, String::from_utf8_lossy(&v).into_owned());
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(Path::new("/proc/sys"), Path::new("/proc/sys"), &mut out);
    out
}

/// Writes back any kernel parameter that differs from what was recorded (also when the test
/// fails): the test must leave the host as it found it even if webake did not.
struct SysctlGuard(BTreeMap<String, String>);

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        let now = sysctl_all();
        for (k, v) in &self.0 {
            if now.get(k) != Some(v) {
                let p = Path::new("/proc/sys").join(k.replace('.', "/"));
                let _ = std::fs::write(p, v);
            }
        }
    }
}

fn run_ok(cmd: &str, args: &[&str]) -> String {
    let o = std::process::Command::new(cmd).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A loop device over a canary file: the "host block device" the attack tries to write.
struct Loop {
    dev: String,
}

impl Loop {
    fn new(file: &Path) -> Self {
        let dev = run_ok("losetup", &["--find", "--show", file.to_str().unwrap()])
            .trim()
            .to_string();
        Self { dev }
    }
    fn major_minor(&self) -> (u64, u64) {
        let rdev = std::fs::metadata(&self.dev).unwrap().rdev();
        (libc_major(rdev), libc_minor(rdev))
    }
}

fn libc_major(d: u64) -> u64 {
    ((d >> 32) & 0xffff_f000) | ((d >> 8) & 0xfff)
}
fn libc_minor(d: u64) -> u64 {
    ((d >> 12) & 0xffff_ff00) | (d & 0xff)
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.dev])
            .status();
    }
}

/// A fake instance metadata server on a link-local address, inside a network namespace the
/// test creates (reached from the host through a veth pair; nothing else is routed there).
struct Imds {
    ns: String,
    veth: String,
    server: std::process::Child,
    addr: &'static str,
}

impl Imds {
    fn start() -> Self {
        let tag = std::process::id() % 100_000;
        let ns = format!("wbk-imds-{tag}");
        let veth = format!("wbki{tag}");
        let peer = format!("wbkp{tag}");
        // 169.254.123.45: link-local like 169.254.169.254 (blocked by the same rule), but not
        // the real metadata address, so a machine that has one is not disturbed.
        let addr = "169.254.123.45";
        run_ok("ip", &["netns", "add", &ns]);
        let mut me = Self {
            ns: ns.clone(),
            veth: veth.clone(),
            server: std::process::Command::new("true").spawn().unwrap(),
            addr,
        };
        run_ok(
            "ip",
            &["link", "add", &veth, "type", "veth", "peer", "name", &peer],
        );
        run_ok("ip", &["link", "set", &peer, "netns", &ns]);
        run_ok("ip", &["addr", "add", "169.254.123.1/32", "dev", &veth]);
        run_ok("ip", &["link", "set", &veth, "up"]);
        run_ok("ip", &["route", "add", &format!("{addr}/32"), "dev", &veth]);
        let inns = |args: &[&str]| {
            let mut a = vec!["netns", "exec", &ns];
            a.extend_from_slice(args);
            run_ok("ip", &a);
        };
        inns(&["ip", "addr", "add", &format!("{addr}/16"), "dev", &peer]);
        inns(&["ip", "link", "set", &peer, "up"]);
        inns(&["ip", "link", "set", "lo", "up"]);
        inns(&["ip", "route", "add", "169.254.123.1/32", "dev", &peer]);
        let _ = me.server.wait();
        me.server = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "python3",
                "-c",
                &format!(
                    "import http.server as h\nclass H(h.BaseHTTPRequestHandler):\n def do_GET(s):\n  s.send_response(200); s.end_headers(); s.wfile.write(b'iam-credentials')\nh.HTTPServer(('{addr}', 80), H).serve_forever()\n"
                ),
            ])
            .spawn()
            .unwrap();
        // The fake answers from the host (so the sandbox's refusal means something).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect((addr, 80)) {
                use std::io::Write;
                s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
                let mut b = String::new();
                let _ = s.read_to_string(&mut b);
                assert!(b.contains("iam-credentials"), "fake IMDS answered {b:?}");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "fake IMDS did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        me
    }
}

impl Drop for Imds {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.veth])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.ns])
            .status();
    }
}

/// A listener that counts connections (none may arrive).
fn counting_listener(addr: &str) -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind((addr, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            if c.is_ok() {
                n2.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    (port, n)
}

/// Content, mode and type of every entry under `dir` (the canaries).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let content = if md.is_file() {
                std::fs::read(&p).unwrap()
            } else {
                Vec::new()
            };
            if md.is_dir() {
                stack.push(p.clone());
            }
            out.insert(p, (md.mode(), content));
        }
    }
    out
}

fn host_addresses() -> Vec<String> {
    run_ok("hostname", &["-I"])
        .split_whitespace()
        .filter(|a| a.contains('.'))
        .map(String::from)
        .collect()
}

const ESCAPE_SH: &str = r#"#!/bin/bash
# Each attempt prints one line: ATTEMPT <name>: refused|succeeded. "succeeded" is fine only
# for what stays inside the sandbox (kernel parameters: a private copy); the test checks the
# host afterwards.
set -u
try() { local name=$1; shift; if "$@" >/tmp/attempt.out 2>&1; then echo "ATTEMPT $name: succeeded"; else echo "ATTEMPT $name: refused ($(tail -c 200 /tmp/attempt.out | tr '\n' ' '))"; fi; }

try chroot-escape perl -e '
    mkdir "/tmp/x"; chroot "/tmp/x" or die "chroot: $!"; chdir ".." for 1..64; chroot "." or die "chroot .: $!";
    open(my $f, ">", "$ENV{CANARY}/file") or die "write canary: $!"; print $f "escaped\n"; close $f;'
try chroot-list-host perl -e 'mkdir "/tmp/y"; chroot "/tmp/y"; chdir ".." for 1..64; chroot "."; opendir(my $d, $ENV{CANARY}) or die "$!"; print readdir($d);'
try read-host-hostname-via-proc1 cat "/proc/1/root$CANARY/file"
try proc1-environ sh -c 'tr "\0" "\n" < /proc/1/environ | grep -q WEBAKE_ESCAPE_HOST_SECRET'
for key in kernel/kptr_restrict vm/swappiness fs/protected_regular net/ipv4/ip_forward net/ipv4/conf/all/rp_filter; do
    try "sysctl-$key" sh -c "v=\$(cat /proc/sys/$key); echo \$(( (v + 1) % 2 + 1 )) > /proc/sys/$key"
done
try iptables iptables -A INPUT -s 203.0.113.7 -j DROP
try nft nft add table inet webake_escape
try modprobe modprobe dummy
try insmod-syscall perl -e 'my $r = syscall(175, 0, 0, 0); exit($r == 0 ? 0 : 1)'
try mknod-host-block-device sh -c "mknod /tmp/blk b $LOOP_MAJOR $LOOP_MINOR && dd if=/dev/zero of=/tmp/blk bs=512 count=1 conv=notrunc"
try mount-tmpfs mount -t tmpfs none /mnt
try mount-proc mount -t proc proc /mnt
try connect-host-loopback bash -c "exec 3<>/dev/tcp/127.0.0.1/$HOST_PORT"
for a in $HOST_ADDRS; do try "connect-host-address-$a" bash -c "exec 3<>/dev/tcp/$a/$HOST_PORT"; done
try connect-metadata bash -c "exec 3<>/dev/tcp/$IMDS/80; printf 'GET / HTTP/1.0\r\n\r\n' >&3; cat <&3 | grep -q iam-credentials"
try kexec perl -e 'my $r = syscall(246, 0, 0, 0, 0); exit($r == 0 ? 0 : 1)'
try reboot perl -e 'my $r = syscall(169, 0xfee1dead, 672274793, 0x1234567, 0); exit($r == 0 ? 0 : 1)'
try keyctl perl -e 'my $r = syscall(250, 0, -3, 0, 0); exit($r >= 0 ? 0 : 1)'
try sysrq sh -c 'echo s > /proc/sysrq-trigger'
exit 0
"#;

/// Canaries under /var/tmp, a path the steps also create inside the image: every planted
/// link resolves to an existing directory in the image, so the bake goes through finalize,
/// assembly and the agent install with the links in place.
struct Canaries {
    tmp: tempfile::TempDir,
    /// Files named like what the bake writes (grub.cfg, host keys, apt lists).
    dir: PathBuf,
    file: PathBuf,
    /// The backing file of the loop device the attacks try to write.
    block: PathBuf,
}

impl Canaries {
    fn plant() -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("escape-canary-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let dir = tmp.path().join("dir");
        std::fs::create_dir(&dir).unwrap();
        for (name, body) in [
            ("file", "canary\n"),
            ("grub.cfg", "host grub.cfg\n"),
            ("ssh_host_ed25519_key", "host key\n"),
            ("Packages", "host apt list\n"),
        ] {
            std::fs::write(dir.join(name), body).unwrap();
        }
        let file = tmp.path().join("file");
        std::fs::write(&file, "canary file\n").unwrap();
        let block = tmp.path().join("block");
        std::fs::write(&block, vec![0x5a; 1 << 20]).unwrap();
        Self {
            tmp,
            dir,
            file,
            block,
        }
    }

    fn path(&self) -> &Path {
        self.tmp.path()
    }
}

/// What the host looked like before the bake; kernel parameters are written back on drop.
struct HostBefore {
    canaries: BTreeMap<PathBuf, (u32, Vec<u8>)>,
    sysctl: BTreeMap<String, String>,
    _restore: SysctlGuard,
    modules: String,
    firewall: String,
    mounts: usize,
}

impl HostBefore {
    fn record(canaries: &Canaries) -> Self {
        let before_canaries = snapshot(canaries.path());
        let sysctl = sysctl_all();
        let restore = SysctlGuard(sysctl.clone());
        // (A kernel without module support has no /proc/modules: nothing can load then.)
        let modules = std::fs::read_to_string("/proc/modules").unwrap_or_default();
        let firewall = run_ok("nft", &["list", "ruleset"]);
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .count();
        Self {
            canaries: before_canaries,
            sysctl,
            _restore: restore,
            modules,
            firewall,
            mounts,
        }
    }

    /// The host is as it was: canaries, kernel parameters and modules, listeners, firewall,
    /// mounts, the block device.
    fn assert_unchanged(&self, canaries: &Canaries, hits: &AtomicUsize) {
        assert_eq!(snapshot(canaries.path()), self.canaries, "a canary changed");
        let after_sysctl = sysctl_all();
        let changed: Vec<&String> = self
            .sysctl
            .iter()
            .filter(|(k, v)| after_sysctl.get(*k) != Some(v))
            .map(|(k, _)| k)
            .collect();
        assert!(
            changed.is_empty(),
            "host kernel parameters changed: {changed:?}"
        );
        assert_eq!(
            std::fs::read_to_string("/proc/modules").unwrap_or_default(),
            self.modules,
            "a kernel module was loaded"
        );
        assert_eq!(
            hits.load(Ordering::SeqCst),
            0,
            "a step reached a host listener"
        );
        assert_eq!(
            run_ok("nft", &["list", "ruleset"]),
            self.firewall,
            "the host's firewall changed"
        );
        assert_eq!(
            std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap()
                .lines()
                .count(),
            self.mounts,
            "a mount was left on the host"
        );
        let mut blk = Vec::new();
        std::fs::File::open(&canaries.block)
            .unwrap()
            .read_to_end(&mut blk)
            .unwrap();
        assert!(
            blk.iter().all(|b| *b == 0x5a),
            "the block device was written"
        );
    }
}

/// The recipe: tools for the attacks, the attacks (escape.sh, aimed at the canaries, the
/// loop device, the listener and the fake IMDS), then links planted toward the canaries'
/// path for finalize, assembly and the agent install.
fn escape_recipe(
    env: &Env,
    canaries: &Canaries,
    (maj, min): (u64, u64),
    port: u16,
    imds: &str,
) -> PathBuf {
    let c = canaries.path().display().to_string();
    let d = canaries.dir.display().to_string();
    let f = canaries.file.display().to_string();
    let plant = [
        format!("mkdir -p {d} && echo inside > {d}/inside-marker"),
        // finalize / assembly / agent paths, each pointing at the host canaries' path
        "rm -rf /boot/grub".into(),
        format!("ln -s {d} /boot/grub"),
        "rm -rf /etc/ssh".into(),
        format!("mkdir -p {d}/ssh && ln -s {d}/ssh /etc/ssh"),
        format!("ln -sf {f} /etc/hosts"),
        format!("ln -sf {f} /etc/machine-id"),
        format!("ln -sf {f} /etc/fstab"),
        format!("ln -sf {f} /etc/resolv.conf"),
        format!("ln -sf {f} /root/.bash_history"),
        "rm -rf /var/lib/apt/lists".into(),
        format!("ln -s {d} /var/lib/apt/lists"),
        "mkdir -p /etc/systemd/system && rm -rf /etc/systemd/system/network-online.target.wants"
            .into(),
        format!("ln -s {d} /etc/systemd/system/network-online.target.wants"),
        format!(
            "mkdir -p {c}/local-bin && rm -rf /usr/local/bin && ln -s {c}/local-bin /usr/local/bin"
        ),
    ];
    let plant_yaml: String = plant
        .iter()
        .map(|l| format!("        - {}\n", serde_json::to_string(l).unwrap()))
        .collect();
    let r = env.recipe(
        "escape",
        &format!(
            "version: 1\nimage:\n  name: escape\n{BASE}provisioners:\n  - shell:\n      name: tools for the attacks\n      inline:\n        - apt-get update -q\n        - apt-get install -y -q --no-install-recommends iptables nftables kmod\n  - shell:\n      name: attacks\n      script: escape.sh\n      env:\n        CANARY: {c}\n        LOOP_MAJOR: \"{maj}\"\n        LOOP_MINOR: \"{min}\"\n        HOST_PORT: \"{port}\"\n        HOST_ADDRS: \"{addrs}\"\n        IMDS: {imds}\n  - shell:\n      name: planted links\n      inline:\n{plant_yaml}agent:\n  install: true\n",
            addrs = host_addresses().join(" "),
        ),
    );
    std::fs::write(r.parent().unwrap().join("escape.sh"), ESCAPE_SH).unwrap();
    r
}

/// Bake the recipe with a secret in webake's environment: every attempt ran, those that
/// reach outside were refused, and the secret never reached the sandbox.
fn bake_the_attacks(env: &Env, recipe: &Path) {
    let o = env
        .cmd()
        .env("WEBAKE_ESCAPE_HOST_SECRET", "host-secret-value-7d1e")
        .args(["bake", recipe.to_str().unwrap()])
        .output()
        .unwrap();
    let all = text(&o);
    assert!(o.status.success(), "the bake failed: {all}");

    let attempts: Vec<&str> = all.lines().filter(|l| l.contains("ATTEMPT ")).collect();
    assert!(attempts.len() >= 20, "not every attempt ran: {all}");
    for l in &attempts {
        let stays_inside = l.contains("ATTEMPT sysctl-");
        assert!(
            stays_inside || l.contains(": refused"),
            "an attack succeeded: {l}\n{all}"
        );
    }
    assert!(
        !all.contains("host-secret-value-7d1e"),
        "webake's environment reached the sandbox"
    );
}

/// What the links pointed at was written inside the image (where the image resolves it;
/// read with debugfs, which resolves links inside the filesystem, never on the host).
fn assert_links_resolved_inside_the_image(env: &Env, canaries: &Canaries) {
    let c = canaries.path().display().to_string();
    let d = canaries.dir.display().to_string();
    let imgs = env.images_json();
    let raw = PathBuf::from(artifact_path(&imgs[0], "raw"));
    let grub = cat_in_image(&raw, &format!("{d}/grub.cfg")).unwrap_or_default();
    assert!(
        grub.contains("linux /boot/vmlinuz"),
        "grub.cfg was not written where /boot/grub resolves inside the image: {grub:?}"
    );
    let agent = cat_in_image(&raw, &format!("{c}/local-bin/webake-agent")).unwrap_or_default();
    assert!(
        !agent.is_empty(),
        "the agent was not installed through the in-image link"
    );
}

#[test]
fn escape_attempts_change_nothing_on_the_host() {
    require_bake_capabilities();
    for tool in ["ip", "losetup", "python3", "nft"] {
        assert!(which(tool), "the escape suite needs `{tool}` on the host");
    }
    let env = Env::new();
    let canaries = Canaries::plant();
    let lo = Loop::new(&canaries.block);
    let loop_device = lo.major_minor();
    let imds = Imds::start();
    let (port, hits) = counting_listener("0.0.0.0");
    let before = HostBefore::record(&canaries);

    let recipe = escape_recipe(&env, &canaries, loop_device, port, imds.addr);
    bake_the_attacks(&env, &recipe);
    before.assert_unchanged(&canaries, &hits);
    assert_links_resolved_inside_the_image(&env, &canaries);
    drop(lo);
    drop(imds);
}

/// Host mode: the Ansible controller runs from the host's installation, but in the sandbox. A
/// play for `localhost` is the controller's own view (a private tmpfs with the host's /usr
/// and /etc read-only), never the build host.
#[test]
fn a_localhost_play_in_host_mode_stays_in_the_controllers_sandbox() {
    require_bake_capabilities();
    assert!(
        which("ansible-playbook"),
        "host mode needs ansible on the host"
    );
    let env = Env::new();
    let canaries = tempfile::Builder::new()
        .prefix("escape-canary-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let c = canaries.path().display().to_string();
    std::fs::write(canaries.path().join("file"), "canary\n").unwrap();
    let before = snapshot(canaries.path());
    let dir = env.path().join("pb");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("site.yml"),
        format!(
            "- hosts: localhost\n  connection: local\n  gather_facts: false\n  tasks:\n    - file: {{path: {c}, state: directory}}\n    - copy: {{dest: {c}/file, content: \"escaped\\n\"}}\n    - copy: {{dest: {c}/new, content: \"escaped\\n\"}}\n    - shell: echo controller sees $(ls /home 2>&1 | wc -l) home entries\n- hosts: all\n  gather_facts: false\n  tasks:\n    - raw: echo ok > /etc/from-host-mode\n"
        ),
    )
    .unwrap();
    let r = env.recipe(
        "hostmode",
        &format!(
            "version: 1\nimage:\n  name: hostmode\n{BASE}provisioners:\n  - ansible:\n      playbook_file: pb/site.yml\n"
        ),
    );
    let o = env.run(&["bake", r.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        snapshot(canaries.path()),
        before,
        "a localhost play changed the build host"
    );
    let imgs = env.images_json();
    let raw = PathBuf::from(artifact_path(&imgs[0], "raw"));
    assert_eq!(
        cat_in_image(&raw, "/etc/from-host-mode").as_deref(),
        Some("ok\n"),
        "the play for the image did not reach it"
    );
}

/// `webake lint DISK` extracts a disk someone else made: a crafted one (a symlink to a host
/// canary, then a setuid file of the same name: what made `debugfs rdump` overwrite and chmod
/// host files) is refused, naming the entry, and the canary stays as it was.
#[test]
fn lint_of_a_crafted_disk_refuses_it_and_never_writes_on_the_host() {
    require_bake_capabilities();
    let env = Env::new();
    let canaries = tempfile::Builder::new()
        .prefix("escape-canary-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let canary = canaries.path().join("canary");
    std::fs::write(&canary, "host canary\n").unwrap();
    let before = snapshot(canaries.path());
    let src = env.path().join("src");
    for d in ["etc", "usr/bin"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
    }
    std::fs::write(src.join("etc/os-release"), "ID=debian\n").unwrap();
    std::os::unix::fs::symlink(&canary, src.join("victim")).unwrap();
    std::fs::write(src.join("xictim"), "pwned\n").unwrap();
    std::fs::set_permissions(
        src.join("xictim"),
        std::os::unix::fs::PermissionsExt::from_mode(0o4755),
    )
    .unwrap();
    let img = env.path().join("crafted.img");
    run_ok(
        "mkfs.ext4",
        &[
            "-q",
            "-O",
            "^metadata_csum,^dir_index",
            "-d",
            src.to_str().unwrap(),
            img.to_str().unwrap(),
            "16M",
        ],
    );
    // Rename `xictim` to `victim` in the root directory block: two entries named `victim`,
    // the symlink first.
    let mut b = std::fs::read(&img).unwrap();
    let hits: Vec<usize> = b
        .windows(6)
        .enumerate()
        .filter(|(_, w)| *w == b"xictim")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(hits.len(), 1, "the name appears once");
    b[hits[0]] = b'v';
    std::fs::write(&img, b).unwrap();

    let o = env.run(&["lint", img.to_str().unwrap()]);
    let all = text(&o);
    assert!(
        !o.status.success(),
        "a crafted disk was linted as clean: {all}"
    );
    assert!(all.contains("duplicate") && all.contains("victim"), "{all}");
    assert_eq!(
        snapshot(canaries.path()),
        before,
        "extraction wrote on the host"
    );
}
