//! The sandbox against the real kernel: namespaces, ids, capabilities, seccomp, kernel
//! parameters and networking. Needs root (CI is root); fails with the missing capability
//! otherwise, never skips.
//!
//! This test binary is its own sandbox helper (like webake): `main` serves
//! `__webake-sandbox` first, then runs the tests one after another.

use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};

use webake_sys::CancelToken;
use webake_sys::process::run;
use webake_sys::sandbox::{Allow, Bind, Guards, Network, SandboxSpec, View, ids};

struct Out {
    code: i32,
    text: String,
}

fn sandbox_run(spec: &SandboxSpec) -> Out {
    let exe = std::env::current_exe().unwrap();
    let cmd = spec.command(&exe).expect("spec");
    let mut text = String::new();
    let r = run(&cmd, &CancelToken::new(), &mut |l| {
        text.push_str(l);
        text.push('\n');
    });
    let code = match r {
        Ok(_) => 0,
        Err(webake_sys::ProcessError::Failed { code, .. }) => code.unwrap_or(-1),
        Err(e) => panic!("{e}"),
    };
    if std::env::var_os("SHOW").is_some() {
        eprintln!("--- code {code}\n{text}");
    }
    Out { code, text }
}

/// A tree that looks like a Debian root: the host's /usr bound read-only, merged-usr links.
struct Tree {
    _dir: tempfile::TempDir,
    work: PathBuf,
    root: PathBuf,
}

fn tree() -> Tree {
    let dir = tempfile::Builder::new()
        .prefix("webake-sbx-")
        .tempdir()
        .unwrap();
    let root = dir.path().join("root");
    for d in ["usr", "etc", "tmp", "root", "var/tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for (l, t) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        std::os::unix::fs::symlink(t, root.join(l)).unwrap();
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    // Like /root/.cache: the sandbox's root may not search the directories above its tree.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    Tree {
        _dir: dir,
        work,
        root,
    }
}

fn spec(t: &Tree, script: &str) -> SandboxSpec {
    let mut s = SandboxSpec::image(&t.work, vec!["/bin/sh".into(), "-c".into(), script.into()]);
    s.view = View::Image {
        tree: Some(t.root.clone()),
    };
    s.network = Network::None;
    // /usr is the host's, read-only: no policy-rc.d or dpkg drop-in.
    s.guards = Guards::default();
    s.binds.push(Bind {
        source: "/usr".into(),
        target: "/usr".into(),
        readonly: true,
    });
    s
}

fn sysctl(name: &str) -> String {
    std::fs::read_to_string(Path::new("/proc/sys").join(name.replace('.', "/")))
        .unwrap()
        .trim()
        .to_string()
}

fn root_inside_is_an_unprivileged_range_outside() {
    let t = tree();
    let o = sandbox_run(&spec(
        &t,
        "id -u; id -g; cat /proc/self/uid_map; ls /proc | grep -c '^[0-9]'",
    ));
    assert_eq!(o.code, 0, "{}", o.text);
    let lines: Vec<&str> = o.text.lines().collect();
    assert_eq!(lines[0], "0");
    assert_eq!(lines[1], "0");
    let map: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(
        map,
        [
            "0",
            &ids::IdRange::resolve().unwrap().base.to_string(),
            "65536"
        ]
    );
    let procs: usize = lines[3].parse().unwrap();
    assert!(
        procs <= 4,
        "the sandbox sees only its own processes: {procs}"
    );
}

fn files_written_inside_keep_their_owners_on_disk() {
    let t = tree();
    let o = sandbox_run(&spec(
        &t,
        "echo hi > /root/f && chown 42:42 /root/f && mkdir /var/tmp/d && chmod 4755 /root/f",
    ));
    assert_eq!(o.code, 0, "{}", o.text);
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(t.root.join("root/f")).unwrap();
    assert_eq!((md.uid(), md.gid()), (42, 42));
    assert_eq!(md.mode() & 0o7777, 0o4755);
    let md = std::fs::metadata(t.root.join("var/tmp/d")).unwrap();
    assert_eq!((md.uid(), md.gid()), (0, 0));
}

fn kernel_parameters_are_private() {
    let t = tree();
    let before = sysctl("vm.swappiness");
    let want = if before == "13" { "14" } else { "13" };
    let o = sandbox_run(&spec(
        &t,
        &format!("echo {want} > /proc/sys/vm/swappiness && cat /proc/sys/vm/swappiness"),
    ));
    assert_eq!(o.code, 0, "{}", o.text);
    assert_eq!(o.text.trim(), want, "the write reads back inside");
    assert_eq!(
        sysctl("vm.swappiness"),
        before,
        "the host's value is unchanged"
    );
}

fn capabilities_seccomp_and_no_new_privs() {
    let t = tree();
    let o = sandbox_run(&spec(
        &t,
        "grep -E '^(CapBnd|CapEff|NoNewPrivs|Seccomp):' /proc/self/status",
    ));
    assert_eq!(o.code, 0, "{}", o.text);
    let field = |k: &str| {
        o.text
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let bnd = u64::from_str_radix(&field("CapBnd:"), 16).unwrap();
    assert_eq!(bnd & (1 << 21), 0, "no CAP_SYS_ADMIN: {}", o.text);
    assert_eq!(bnd & (1 << 16), 0, "no CAP_SYS_MODULE");
    assert_ne!(bnd & (1 << 18), 0, "CAP_SYS_CHROOT kept");
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("Seccomp:"), "2");
}

fn a_chroot_escape_stays_inside() {
    let t = tree();
    let canary_dir = tempfile::Builder::new()
        .prefix("webake-canary-")
        .tempdir()
        .unwrap();
    let canary = canary_dir.path().join("canary");
    std::fs::write(&canary, "untouched").unwrap();
    let py = format!(
        "import os\nos.makedirs('/tmp/x', exist_ok=True)\nos.chroot('/tmp/x')\nfor _ in range(64): os.chdir('..')\nos.chroot('.')\n\
try:\n    open('{c}', 'w').write('escaped')\n    print('WROTE')\nexcept Exception as e:\n    print('refused', e)\n\
print(sorted(os.listdir('/')))\n",
        c = canary.display()
    );
    let o = sandbox_run(&spec(
        &t,
        &format!("python3 -c \"{}\"", py.replace('"', "\\\"")),
    ));
    assert_eq!(o.code, 0, "{}", o.text);
    assert!(o.text.contains("refused"), "{}", o.text);
    assert!(!o.text.contains("WROTE"), "{}", o.text);
    assert_eq!(std::fs::read_to_string(&canary).unwrap(), "untouched");
    assert!(
        !o.text.contains("'home'") || !Path::new("/home").exists() || o.text.contains("root"),
        "{}",
        o.text
    );
}

fn proc_masks_and_host_kernel_interfaces_refuse() {
    let t = tree();
    let o = sandbox_run(&spec(
        &t,
        "echo h > /proc/sysrq-trigger; echo rc=$?; head -c 16 /proc/kcore | wc -c; \
         cat /proc/1/cmdline | tr '\\0' ' '; echo; ls /proc/1/root/ | head -3",
    ));
    assert_eq!(o.code, 0, "{}", o.text);
    // Whatever the shell printed, the sysrq trigger is /dev/null and kcore is empty.
    assert!(
        o.text.lines().any(|l| l.trim() == "0"),
        "kcore readable: {}",
        o.text
    );
}

fn no_network_without_outbound() {
    let t = tree();
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    let o = sandbox_run(&spec(
        &t,
        &format!(
            "python3 -c \"import socket; s=socket.create_connection(('127.0.0.1', {port}), 2); print('CONNECTED')\""
        ),
    ));
    assert!(o.text.contains("Errno"), "{}", o.text);
    assert!(!o.text.contains("CONNECTED"), "{}", o.text);
}

fn outbound_blocks_the_host_and_allows_named_ports() {
    let t = tree();
    let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    let host_ips: Vec<String> = std::process::Command::new("hostname")
        .arg("-I")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default()
        .split_whitespace()
        .filter(|a| a.contains('.'))
        .map(String::from)
        .collect();
    let mut targets = vec!["127.0.0.1".to_string(), "10.0.2.2".to_string()];
    targets.extend(host_ips);
    let probe = |addrs: &[String]| {
        let mut s = String::from("import socket\n");
        for a in addrs {
            s.push_str(&format!(
                "try:\n    socket.create_connection(('{a}', {port}), 2); print('CONNECTED {a}')\nexcept Exception as e:\n    print('refused {a}', e)\n"
            ));
        }
        s
    };
    let server = std::thread::spawn(move || {
        l.set_nonblocking(false).unwrap();
        // Answer whatever connects (only the allowed probe should).
        for c in l.incoming().take(1) {
            let mut c = c.unwrap();
            let _ = c.write_all(b"hello\n");
        }
    });
    let mut s = spec(&t, &format!("python3 -c \"{}\"", probe(&targets)));
    s.network = Network::Outbound { allow: vec![] };
    let o = sandbox_run(&s);
    assert_eq!(o.code, 0, "{}", o.text);
    assert!(!o.text.contains("CONNECTED"), "{}", o.text);
    let mut s = spec(
        &t,
        &format!(
            "python3 -c \"import socket; c=socket.create_connection(('127.0.0.1', {port}), 5); print('GOT', c.recv(6))\""
        ),
    );
    s.network = Network::Outbound {
        allow: vec![Allow::HostLoopbackPort(port)],
    };
    let o = sandbox_run(&s);
    assert!(o.text.contains("GOT b'hello"), "{}", o.text);
    server.join().unwrap();
}

/// The one external address a test may use: the package registry the bakes use anyway.
fn outbound_reaches_the_debian_mirror_by_name() {
    let t = tree();
    let mut s = spec(
        &t,
        "cat /etc/resolv.conf; python3 -c \"import urllib.request; print('STATUS', urllib.request.urlopen('http://deb.debian.org/debian/dists/bookworm/InRelease', timeout=20).status)\"",
    );
    s.network = Network::Outbound { allow: vec![] };
    s.guards.resolv_conf = true;
    let o = sandbox_run(&s);
    assert_eq!(o.code, 0, "{}", o.text);
    assert!(o.text.contains("nameserver 10.0.2.3"), "{}", o.text);
    assert!(o.text.contains("STATUS 200"), "{}", o.text);
    assert!(
        !t.root.join("etc/resolv.conf").exists(),
        "the image's resolv.conf is restored (absent before)"
    );
}

/// Inside a container, /proc is masked (files bound over, /proc/sys read-only): a user
/// namespace may not mount a fresh procfs then. The sandbox mounts its /proc before it enters
/// its user namespace, so it works there too, and its masks are locked.
fn works_under_a_containers_masked_proc() {
    let exe = std::env::current_exe().unwrap();
    let o = std::process::Command::new("unshare")
        .args(["--mount", "sh", "-ec"])
        .arg(
            "mount --make-rprivate /; mount --bind /dev/null /proc/timer_list; \
             mount -o bind,ro /proc/sys /proc/sys; exec \"$0\" __probe",
        )
        .arg(&exe)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{text}");
    assert!(text.contains("PROBE uid=0 swappiness-written"), "{text}");
}

/// The probe run by `works_under_a_containers_masked_proc` (in its masked mount namespace).
fn probe() -> i32 {
    let t = tree();
    let o = sandbox_run(&spec(
        &t,
        "echo 7 > /proc/sys/vm/swappiness && umount /proc/timer_list 2>/dev/null; \
         echo PROBE uid=$(id -u) swappiness-written",
    ));
    print!("{}", o.text);
    o.code
}

fn the_spec_is_not_on_the_command_line() {
    let t = tree();
    let mut s = spec(
        &t,
        "cat /proc/1/cmdline | tr '\\0' ' '; echo; echo $WEBAKE_SECRET_PROBE",
    );
    s.env
        .push(("WEBAKE_SECRET_PROBE".into(), "s3cr3t-value".into()));
    let o = sandbox_run(&s);
    assert_eq!(o.code, 0, "{}", o.text);
    let first = o.text.lines().next().unwrap_or_default();
    assert!(!first.contains("s3cr3t"), "{}", o.text);
    assert!(
        o.text.contains("s3cr3t-value"),
        "the step still gets its environment"
    );
}

/// `(name, function)` pairs of the tests this binary runs.
macro_rules! tests {
    ($($f:ident),* $(,)?) => {
        &[$((stringify!($f), $f as fn())),*]
    };
}

/// What the host's binfmt_misc holds (empty when it is not mounted), to prove it unchanged.
fn host_binfmt_state() -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir("/proc/sys/fs/binfmt_misc")
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                    (e.file_name().to_string_lossy().into_owned(), text)
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// An arm64 program (arch-test's probe: a static binary printing "ok") runs in a sandbox that
/// emulates arm64 through its own binfmt_misc instance, fails without it, and the host's
/// binfmt_misc is the same before and after (the host cannot run it afterwards either, unless
/// it could before).
fn foreign_programs_run_under_the_sandboxs_own_binfmt() {
    let probe = "/usr/lib/arch-test/arm64";
    assert!(
        Path::new(probe).is_file(),
        "{probe} is missing: install arch-test (scripts/setup.sh --test does)"
    );
    let host_ran_before = std::process::Command::new(probe)
        .output()
        .is_ok_and(|o| o.status.success());
    let before = host_binfmt_state();
    let t = tree();
    let plain = sandbox_run(&spec(&t, &format!("{probe}; echo rc=$?")));
    if !host_ran_before {
        assert!(plain.text.contains("rc=126"), "{}", plain.text);
    }
    let mut s = spec(
        &t,
        &format!("{probe}; echo rc=$?; cat /proc/sys/fs/binfmt_misc/qemu-aarch64"),
    );
    s.emulate("arm64")
        .expect("qemu-user-static (scripts/setup.sh installs it)");
    assert_eq!(s.binfmt.len(), 1);
    let o = sandbox_run(&s);
    assert_eq!(o.code, 0, "{}", o.text);
    assert!(o.text.starts_with("ok\nrc=0\nenabled\n"), "{}", o.text);
    assert!(
        o.text.contains("flags: ") && o.text.contains('F'),
        "{}",
        o.text
    );
    assert_eq!(
        host_binfmt_state(),
        before,
        "the host's binfmt_misc changed"
    );
    let host_runs_after = std::process::Command::new(probe)
        .output()
        .is_ok_and(|o| o.status.success());
    assert_eq!(host_runs_after, host_ran_before);
    // Native trees register nothing.
    let mut native = spec(&t, "true");
    native
        .emulate(webake_sys::sandbox::binfmt::host_debian_arch())
        .unwrap();
    assert!(native.binfmt.is_empty());
}

fn main() {
    if let Some(code) = webake_sys::sandbox::helper_main_if_requested() {
        std::process::exit(code as i32);
    }
    if std::env::args().nth(1).as_deref() == Some("__probe") {
        std::process::exit(probe());
    }
    if let Some(why) = webake_sys::sandbox::unsupported_reason() {
        eprintln!("sandbox tests cannot run here: {why}");
        std::process::exit(1);
    }
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let tests: &[(&str, fn())] = tests![
        root_inside_is_an_unprivileged_range_outside,
        files_written_inside_keep_their_owners_on_disk,
        kernel_parameters_are_private,
        capabilities_seccomp_and_no_new_privs,
        a_chroot_escape_stays_inside,
        proc_masks_and_host_kernel_interfaces_refuse,
        no_network_without_outbound,
        outbound_blocks_the_host_and_allows_named_ports,
        the_spec_is_not_on_the_command_line,
        works_under_a_containers_masked_proc,
        outbound_reaches_the_debian_mirror_by_name,
        foreign_programs_run_under_the_sandboxs_own_binfmt,
    ];
    let mut failed = Vec::new();
    for (name, f) in tests {
        if !filters.is_empty() && !filters.iter().any(|x| name.contains(x.as_str())) {
            continue;
        }
        let t = std::time::Instant::now();
        let r = std::panic::catch_unwind(f);
        let ok = r.is_ok();
        println!(
            "test {name} ... {} ({:.2}s)",
            if ok { "ok" } else { "FAILED" },
            t.elapsed().as_secs_f64()
        );
        if !ok {
            failed.push(*name);
        }
    }
    let _ = std::io::stdout().flush();
    if !failed.is_empty() {
        eprintln!("failed: {failed:?}");
        std::process::exit(1);
    }
}
