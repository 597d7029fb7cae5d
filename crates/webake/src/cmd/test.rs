//! `webake test IMAGE`: boot an image under qemu (UEFI/OVMF) and run the recipe's checks.
//!
//! The artifact itself is never modified: a throw-away raw copy gets a small harness injected
//! offline (debugfs writes into the ext4 root at its partition offset): a oneshot unit that,
//! once multi-user is reached, runs the checks, prints results on the serial console between
//! markers, and powers off. Instance metadata for the guest is served by a faithful IMDSv2
//! fake on 127.0.0.1, reached through qemu user networking at the real 169.254.169.254.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use webake_build::bake::BakeLog;
use webake_build::{CacheStatus, Reporter, Workspace};
use webake_catalog::{Catalog, Image};
use webake_spec::{BootCheck, ImdsFixture, TestSpec};
use webake_sys::CancelToken;
use webake_sys::process::{Cmd, run};

use crate::exit;
use crate::settings::Settings;

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Image id / `family:NAME`, or a path to a raw or qcow2 disk file
    pub image: String,
    /// Recipe whose `test:` section to use (default: the image's own recipe)
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    #[command(flatten)]
    pub vars: crate::cmd::validate::VarArgs,
    /// Seconds to wait (default: the recipe's, or 120; multiplied by 4 under TCG)
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Force the accelerator instead of probing
    #[arg(long, value_parser = ["kvm", "tcg"])]
    pub accel: Option<String>,
}

impl TestArgs {
    pub fn run(self, settings: &Settings) -> anyhow::Result<ExitCode> {
        webake_sys::cancel::install_signal_handlers();
        let ws = Workspace::new(&settings.data_dir, &settings.cache_dir);
        ws.ensure()?;
        let (disk, image, recipe_path) = if Path::new(&self.image).is_file() {
            (PathBuf::from(&self.image), None, self.recipe.clone())
        } else {
            let cat = Catalog::open(&settings.catalog)?;
            let img = cat.find_image(&self.image)?;
            let a = img
                .artifacts
                .iter()
                .find(|a| a.format == "raw")
                .or(img.artifacts.first())
                .context("image has no artifacts")?;
            let recipe = self.recipe.clone().or_else(|| {
                img.provenance
                    .get("recipe")
                    .and_then(|v| v.as_str())
                    .map(PathBuf::from)
            });
            (PathBuf::from(&a.path), Some(img), recipe)
        };
        let mut spec = match &recipe_path {
            Some(r) if r.is_file() => {
                crate::cmd::validate::load_recipe(r, &self.vars)?
                    .recipe
                    .test
            }
            _ => None,
        }
        .unwrap_or_else(default_spec);
        if let Some(t) = self.timeout {
            spec.timeout_secs = t;
        }
        if let Some(a) = &self.accel {
            // SAFETY-free: read once by probe_accel below.
            ACCEL_OVERRIDE.set(a.clone()).ok();
        }
        let reporter = crate::cmd::bake::CliReporter::new(settings.quiet);
        let log_path = ws.data_dir.join("tests").join(format!(
            "{}.log",
            crate::cmd::bake::new_bake_id().replace("bake-", "test-")
        ));
        let log = BakeLog::create(&log_path)?;
        reporter.note(&format!(
            "boot test of {}; console log {}",
            disk.display(),
            log_path.display()
        ));
        let res = boot_test_disk(&disk, &spec, &ws, &reporter, &log, &CancelToken::new());
        if let Some(img) = &image {
            let cat = Catalog::open(&settings.catalog)?;
            cat.set_test_result(&img.id, if res.is_ok() { "passed" } else { "failed" })?;
        }
        match res {
            Ok(()) => {
                println!("boot test passed: {}", disk.display());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => Err(exit::coded(exit::TEST_FAILED, e)),
        }
    }
}

static ACCEL_OVERRIDE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn default_spec() -> TestSpec {
    TestSpec {
        gate: false,
        timeout_secs: 120,
        checks: vec![],
        imds: None,
        memory_mib: 1024,
    }
}

/// Boot-test a catalog image (raw artifact preferred).
pub fn boot_test_image(
    img: &Image,
    spec: Option<&TestSpec>,
    ws: &Workspace,
    reporter: &dyn Reporter,
    log: &BakeLog,
    cancel: &CancelToken,
) -> anyhow::Result<()> {
    let a = img
        .artifacts
        .iter()
        .find(|a| a.format == "raw")
        .or(img.artifacts.first())
        .context("image has no artifacts")?;
    let spec = spec.cloned().unwrap_or_else(default_spec);
    boot_test_disk(Path::new(&a.path), &spec, ws, reporter, log, cancel)
}

/// OVMF firmware files (code, vars template).
pub fn ovmf() -> anyhow::Result<(PathBuf, PathBuf)> {
    for (c, v) in [
        (
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
        ),
        (
            "/usr/share/OVMF/OVMF_CODE.fd",
            "/usr/share/OVMF/OVMF_VARS.fd",
        ),
    ] {
        if Path::new(c).is_file() && Path::new(v).is_file() {
            return Ok((c.into(), v.into()));
        }
    }
    bail!("UEFI firmware not found (/usr/share/OVMF/OVMF_CODE*.fd): apt-get install ovmf")
}

/// Does KVM really boot UEFI firmware here? Some paravirtual /dev/kvm fail at once with an
/// emulation failure; then software emulation (TCG) is used.
pub fn probe_accel(code: &Path) -> (String, String) {
    if let Some(a) = ACCEL_OVERRIDE.get() {
        return (a.clone(), "forced".into());
    }
    if let Ok(a) = std::env::var("WEBAKE_ACCEL")
        && (a == "kvm" || a == "tcg")
    {
        return (a, "WEBAKE_ACCEL".into());
    }
    if !Path::new("/dev/kvm").exists() {
        return ("tcg".into(), "/dev/kvm is absent".into());
    }
    // Run the firmware alone under KVM for a few seconds: a healthy KVM keeps running (and
    // prints the firmware banner); a broken one exits with an emulation failure.
    let out = std::process::Command::new("timeout")
        .args([
            "-s",
            "KILL",
            "6",
            "qemu-system-x86_64",
            "-accel",
            "kvm",
            "-m",
            "256",
            "-display",
            "none",
            "-nodefaults",
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-no-reboot",
        ])
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,readonly=on,file={}",
            code.display()
        ))
        .output();
    match out {
        Ok(o) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            let killed_by_timeout = o.status.code().is_none()
                || o.status.code() == Some(137)
                || o.status.code() == Some(124);
            if killed_by_timeout
                && !text.contains("emulation failure")
                && !text.contains("KVM internal error")
            {
                ("kvm".into(), "KVM boots the firmware".into())
            } else {
                (
                    "tcg".into(),
                    format!(
                        "KVM cannot run the firmware here ({})",
                        text.lines()
                            .find(|l| l.contains("error") || l.contains("failure"))
                            .unwrap_or("qemu exited")
                            .trim()
                    ),
                )
            }
        }
        Err(e) => ("tcg".into(), format!("cannot probe KVM: {e}")),
    }
}

const HARNESS_UNIT: &str = "[Unit]
Description=webake boot test harness (test copy only)
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/bin/sh /usr/local/lib/webake-test/run.sh
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
[Install]
WantedBy=multi-user.target
";

/// Where the harness writes its results inside the guest (read back offline after power-off:
/// the serial console interleaves with systemd's status output and cannot be parsed reliably).
const RESULTS: &str = "/var/lib/webake-test/results";

fn harness_script(checks: &[BootCheck]) -> String {
    let mut s = String::from(
        "#!/bin/sh\n# webake boot test harness: runs the checks, records results, powers off.\n",
    );
    s.push_str(&format!("R={RESULTS}\nmkdir -p \"$(dirname $R)\"\n: > $R\necho BEGIN >> $R\necho WEBAKE-TEST-BEGIN\n"));
    s.push_str("echo \"FAILED-UNITS $(systemctl --failed --no-legend --plain 2>/dev/null | awk '{print $1}' | tr '\\n' ' ')\" >> $R\n");
    for (i, c) in checks.iter().enumerate() {
        let b64 = base64_encode(c.run.as_bytes());
        s.push_str(&format!("out=$(echo {b64} | base64 -d | sh 2>&1); rc=$?; echo \"CHECK {i} rc=$rc out=$(printf %s \"$out\" | base64 -w0)\" >> $R; echo \"WEBAKE-CHECK {i} rc=$rc\"\n"));
    }
    s.push_str("echo END >> $R\nsync\necho WEBAKE-TEST-END\nsystemctl poweroff --no-block\n");
    s
}

/// Read the harness results from the test disk after the VM stopped.
fn read_results(raw: &Path) -> anyhow::Result<String> {
    let off = crate::cmd::base_ami::root_offset(raw)?;
    let out = std::process::Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {RESULTS}"))
        .arg(format!("{}?offset={off}", raw.display()))
        .output()
        .context("running debugfs")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn base64_encode(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::new();
    let bytes: Vec<u8> = s.bytes().filter(|c| *c != b'=').collect();
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        let mut k: u32 = 0;
        for &c in chunk {
            if let Some(v) = val(c) {
                n = n << 6 | v;
                k += 1;
            }
        }
        n <<= 6 * (4 - k);
        for i in 0..k.saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

/// Inject the harness into a raw copy with debugfs (offline, no mount).
fn inject_harness(
    raw: &Path,
    checks: &[BootCheck],
    scratch: &Path,
    imds_dropin: Option<&str>,
) -> anyhow::Result<()> {
    let off = crate::cmd::base_ami::root_offset(raw)?;
    let unit = scratch.join("webake-test.service");
    std::fs::write(&unit, HARNESS_UNIT)?;
    let script = scratch.join("run.sh");
    std::fs::write(&script, harness_script(checks))?;
    let mut cmds = String::new();
    cmds.push_str("mkdir /usr/local/lib/webake-test\n");
    cmds.push_str(&format!(
        "write {} /usr/local/lib/webake-test/run.sh\n",
        script.display()
    ));
    cmds.push_str(&format!(
        "write {} /etc/systemd/system/webake-test.service\n",
        unit.display()
    ));
    cmds.push_str("mkdir /etc/systemd/system/multi-user.target.wants\n");
    cmds.push_str("symlink /etc/systemd/system/multi-user.target.wants/webake-test.service /etc/systemd/system/webake-test.service\n");
    if let Some(d) = imds_dropin {
        let f = scratch.join("imds.conf");
        std::fs::write(&f, d)?;
        cmds.push_str("mkdir /etc/systemd/system/webake-agent.service.d\n");
        cmds.push_str(&format!(
            "write {} /etc/systemd/system/webake-agent.service.d/webake-test-imds.conf\n",
            f.display()
        ));
    }
    let cmdfile = scratch.join("debugfs.cmds");
    std::fs::write(&cmdfile, cmds)?;
    // debugfs reports most command errors on stderr but exits 0 ("mkdir: file exists" is fine).
    let out = webake_sys::process::capture(
        &Cmd::new("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(&cmdfile)
            .arg(format!("{}?offset={off}", raw.display())),
    )?;
    tracing::debug!(%out, "debugfs");
    Ok(())
}

/// Boot `disk` and run `spec`'s checks. Errors carry the console tail.
pub fn boot_test_disk(
    disk: &Path,
    spec: &TestSpec,
    ws: &Workspace,
    reporter: &dyn Reporter,
    log: &BakeLog,
    cancel: &CancelToken,
) -> anyhow::Result<()> {
    let step = "boot test";
    let t0 = Instant::now();
    for tool in ["qemu-system-x86_64", "qemu-img", "debugfs", "sfdisk"] {
        if webake_sys::process::which(tool).is_none() {
            bail!(
                "missing host tool `{tool}` for the boot test: apt-get install qemu-system-x86 qemu-utils e2fsprogs fdisk ovmf"
            );
        }
    }
    let (code, vars_template) = ovmf()?;
    let (accel, why) = probe_accel(&code);
    let timeout = Duration::from_secs(if accel == "tcg" {
        spec.timeout_secs * 4
    } else {
        spec.timeout_secs
    });
    reporter.step_started(
        step,
        &format!(
            "qemu {accel} ({why}), UEFI {}, timeout {}s",
            code.display(),
            timeout.as_secs()
        ),
    );
    let scratch = tempfile::Builder::new()
        .prefix("webake-test-")
        .tempdir_in(ws.scratch_root())
        .context("creating the test scratch dir")?;
    // `webake clean` (of any catalog) leaves a scratch dir alone while its lease is held.
    let scratch_name = scratch
        .path()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let _lease = webake_build::workspace::BakeLease::acquire(&ws.cache_dir, &scratch_name, "")?;
    let raw = scratch.path().join("disk.raw");
    run(
        &Cmd::new("qemu-img")
            .args(["convert", "-q", "-O", "raw"])
            .arg(disk)
            .arg(&raw),
        cancel,
        &mut |l| log.line(step, l),
    )?;
    let vars = scratch.path().join("OVMF_VARS.fd");
    std::fs::copy(&vars_template, &vars)
        .with_context(|| format!("copying {}", vars_template.display()))?;

    // Instance metadata for the guest.
    let imds = spec.imds.as_ref().map(FakeImds::start).transpose()?;
    let dropin = imds.as_ref().map(|_| {
        "[Service]\nEnvironment=AWS_EC2_METADATA_SERVICE_ENDPOINT=http://169.254.169.254\n"
            .to_string()
    });
    inject_harness(&raw, &spec.checks, scratch.path(), dropin.as_deref())?;

    let netdev = match &imds {
        // Guest network 169.254.169.0/24 so that the real IMDS address is inside it; a
        // guestfwd connects 169.254.169.254:80 to the fake on the host's loopback. restrict=on
        // cuts the guest off from everything else (forwarding rules still apply).
        // `cmd:` spawns one bridge per guest connection (a `tcp:` chardev would be a single
        // connection made at qemu start, shared by every guest connection).
        Some(f) => format!(
            "user,id=n0,restrict=on,net=169.254.169.0/24,host=169.254.169.1,dhcpstart=169.254.169.15,guestfwd=tcp:169.254.169.254:80-cmd:{} {TCP_PIPE_ARG} 127.0.0.1:{}",
            std::env::current_exe()
                .context("locating the webake executable")?
                .display(),
            f.port
        ),
        None => "user,id=n0,restrict=on".to_string(),
    };
    let mut cmd = Cmd::new("qemu-system-x86_64")
        .args([
            "-accel",
            &accel,
            "-machine",
            "q35",
            "-m",
            &spec.memory_mib.to_string(),
            "-smp",
            "2",
        ])
        .args([
            "-display",
            "none",
            "-nodefaults",
            "-no-reboot",
            "-monitor",
            "none",
            "-serial",
            "stdio",
        ])
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,readonly=on,file={}",
            code.display()
        ))
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,file={}", vars.display()))
        .arg("-drive")
        .arg(format!(
            "if=virtio,format=raw,file={},cache=unsafe",
            raw.display()
        ))
        .args(["-netdev", &netdev, "-device", "virtio-net-pci,netdev=n0"]);
    if accel == "kvm" {
        cmd = cmd.args(["-cpu", "host"]);
    } else {
        cmd = cmd.args(["-cpu", "max"]);
    }

    // A watchdog cancels the VM at the timeout (or when the bake is cancelled).
    let vm_cancel = CancelToken::new();
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (vm_cancel, done, outer) = (vm_cancel.clone(), done.clone(), cancel.clone());
        std::thread::spawn(move || {
            let start = Instant::now();
            while !done.load(Ordering::SeqCst) {
                if start.elapsed() > timeout || outer.is_cancelled() {
                    vm_cancel.cancel();
                    return true;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            false
        })
    };
    let mut tail: std::collections::VecDeque<String> = Default::default();
    let mut began = false;
    let res = run(&cmd, &vm_cancel, &mut |line| {
        let line = line.trim_end_matches('\r');
        log.line(step, line);
        if tail.len() == 30 {
            tail.pop_front();
        }
        tail.push_back(line.to_string());
        if line.contains("WEBAKE-TEST-BEGIN") {
            began = true;
        }
    });
    done.store(true, Ordering::SeqCst);
    let timed_out = watchdog.join().unwrap_or(false);
    drop(imds);
    let tail_text = tail
        .iter()
        .map(|l| format!("    | {l}"))
        .collect::<Vec<_>>()
        .join("\n");
    if cancel.is_cancelled() {
        bail!("boot test cancelled");
    }
    // The VM is off: read what the harness recorded.
    let recorded = if timed_out {
        String::new()
    } else {
        read_results(&raw).unwrap_or_default()
    };
    let mut ended = false;
    let mut failed_units = String::new();
    let mut results: BTreeMap<usize, (i32, String)> = BTreeMap::new();
    for line in recorded.lines() {
        if line == "BEGIN" {
            began = true;
        } else if line == "END" {
            ended = true;
        } else if let Some(rest) = line.strip_prefix("FAILED-UNITS") {
            failed_units = rest.trim().to_string();
        } else if let Some(rest) = line.strip_prefix("CHECK ") {
            let mut it = rest.splitn(3, ' ');
            let i: usize = it.next().and_then(|s| s.parse().ok()).unwrap_or(usize::MAX);
            let rc: i32 = it
                .next()
                .and_then(|s| s.strip_prefix("rc="))
                .and_then(|s| s.parse().ok())
                .unwrap_or(-1);
            let out = it
                .next()
                .and_then(|s| s.strip_prefix("out="))
                .map(|b| String::from_utf8_lossy(&base64_decode(b.trim())).to_string())
                .unwrap_or_default();
            results.insert(i, (rc, out));
        }
    }
    if !ended {
        let why = if timed_out {
            format!("no result within {}s", timeout.as_secs())
        } else {
            format!(
                "the VM stopped before the checks finished ({})",
                res.err()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "powered off".into())
            )
        };
        let stage = if began {
            "the guest reached multi-user but the checks did not finish"
        } else {
            "the guest never reached multi-user"
        };
        bail!("boot test failed: {why}; {stage} (accelerator {accel}). Console tail:\n{tail_text}");
    }
    let mut problems = Vec::new();
    for (i, c) in spec.checks.iter().enumerate() {
        match results.get(&i) {
            None => problems.push(format!("check {:?}: no result", c.name)),
            Some((rc, out)) => {
                let out_t = out.trim();
                log.line(
                    step,
                    &format!("check {:?}: rc={rc} output={out_t:?}", c.name),
                );
                reporter.output(step, &format!("check {}: rc={rc} {out_t}", c.name));
                if *rc != 0 {
                    problems.push(format!("check {:?} exited with {rc}: {out_t}", c.name));
                } else if let Some(exp) = &c.expect_stdout
                    && out_t != exp.trim()
                {
                    problems.push(format!(
                        "check {:?}: expected {exp:?}, got {out_t:?}",
                        c.name
                    ));
                }
            }
        }
    }
    if !problems.is_empty() {
        bail!(
            "boot test failed:\n  {}\n  failed units: {}\nConsole tail:\n{tail_text}",
            problems.join("\n  "),
            if failed_units.is_empty() {
                "none"
            } else {
                &failed_units
            }
        );
    }
    reporter.step_finished(step, t0.elapsed(), CacheStatus::Uncached);
    Ok(())
}

/// argv[1] of the per-connection bridge qemu's guestfwd runs: stdin/stdout <-> a TCP address.
pub const TCP_PIPE_ARG: &str = "__webake-tcp-pipe";

/// The bridge: copy stdin to the TCP peer and the peer to stdout until either side closes.
pub fn tcp_pipe_main_if_requested() -> Option<u8> {
    let mut args = std::env::args();
    let _ = args.next();
    if args.next().as_deref() != Some(TCP_PIPE_ARG) {
        return None;
    }
    let addr = args.next()?;
    let Ok(sock) = TcpStream::connect(&addr) else {
        return Some(1);
    };
    let Ok(mut up) = sock.try_clone() else {
        return Some(1);
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut up);
        let _ = up.shutdown(std::net::Shutdown::Write);
    });
    let mut down = sock;
    let _ = std::io::copy(&mut down, &mut std::io::stdout().lock());
    let _ = std::io::stdout().flush();
    Some(0)
}

/// A faithful IMDSv2 fake (token PUT with TTL header; GETs need the token) on 127.0.0.1.
pub struct FakeImds {
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeImds {
    pub fn start(f: &ImdsFixture) -> anyhow::Result<Self> {
        let listener =
            TcpListener::bind("127.0.0.1:0").context("binding the IMDS fake on 127.0.0.1")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let mut data: BTreeMap<String, String> = BTreeMap::new();
        data.insert(
            "/latest/meta-data/instance-id".into(),
            f.instance_id.clone(),
        );
        data.insert(
            "/latest/meta-data/placement/region".into(),
            f.region.clone(),
        );
        data.insert(
            "/latest/meta-data/placement/availability-zone".into(),
            format!("{}a", f.region),
        );
        if !f.tags.is_empty() {
            data.insert(
                "/latest/meta-data/tags/instance".into(),
                f.tags.keys().cloned().collect::<Vec<_>>().join("\n"),
            );
            for (k, v) in &f.tags {
                data.insert(format!("/latest/meta-data/tags/instance/{k}"), v.clone());
            }
        }
        let token = format!("webake-test-token-{port}");
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = serve_imds(stream, &data, &token);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(Self {
            port,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for FakeImds {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_imds(
    stream: TcpStream,
    data: &BTreeMap<String, String>,
    token: &str,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut r = BufReader::new(stream.try_clone()?);
    let mut w = stream;
    loop {
        let mut request = String::new();
        if r.read_line(&mut request)? == 0 {
            return Ok(());
        }
        let mut headers = BTreeMap::new();
        loop {
            let mut l = String::new();
            r.read_line(&mut l)?;
            let l = l.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        if let Some(n) = headers
            .get("content-length")
            .and_then(|v| v.parse::<usize>().ok())
        {
            let mut b = vec![0; n.min(1 << 16)];
            r.read_exact(&mut b)?;
        }
        let mut parts = request.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let (status, body) = if method == "PUT" && path == "/latest/api/token" {
            match headers
                .get("x-aws-ec2-metadata-token-ttl-seconds")
                .and_then(|v| v.parse::<u32>().ok())
            {
                Some(t) if (1..=21600).contains(&t) => ("200 OK", token.to_string()),
                _ => ("400 Bad Request", String::new()),
            }
        } else if method == "GET" {
            if headers.get("x-aws-ec2-metadata-token").map(String::as_str) != Some(token) {
                ("401 Unauthorized", String::new())
            } else {
                match data.get(path.trim_end_matches('/')) {
                    Some(v) => ("200 OK", v.clone()),
                    None => ("404 Not Found", String::new()),
                }
            }
        } else {
            ("405 Method Not Allowed", String::new())
        };
        write!(
            w,
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nServer: EC2ws\r\n\r\n{body}",
            body.len()
        )?;
        w.flush()?;
        if headers
            .get("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"))
        {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_roundtrip() {
        for s in [
            "",
            "a",
            "ab",
            "abc",
            "hostname -f\n",
            "kubernetes-prod-euwest1-07a38e448ad62b4da",
        ] {
            assert_eq!(base64_decode(&base64_encode(s.as_bytes())), s.as_bytes());
        }
        assert_eq!(base64_encode(b"hi!"), "aGkh");
    }

    #[test]
    fn harness_reports_each_check() {
        let s = harness_script(&[BootCheck {
            name: "h".into(),
            run: "hostname".into(),
            expect_stdout: None,
        }]);
        assert!(s.contains("WEBAKE-CHECK 0"));
        assert!(s.contains("systemctl poweroff"));
    }

    #[test]
    fn fake_imds_follows_the_protocol() {
        let f = FakeImds::start(&ImdsFixture {
            instance_id: "i-1".into(),
            region: "eu-west-1".into(),
            tags: [("Environment".to_string(), "prod".to_string())].into(),
        })
        .unwrap();
        let req = |s: &str| -> String {
            let mut c = TcpStream::connect(("127.0.0.1", f.port)).unwrap();
            c.write_all(s.as_bytes()).unwrap();
            let mut out = String::new();
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let _ = c.read_to_string(&mut out);
            out
        };
        assert!(
            req("PUT /latest/api/token HTTP/1.1\r\nConnection: close\r\n\r\n")
                .starts_with("HTTP/1.1 400")
        );
        let tok = req(
            "PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\nConnection: close\r\n\r\n",
        );
        let token = tok.rsplit("\r\n\r\n").next().unwrap().to_string();
        assert!(
            req("GET /latest/meta-data/instance-id HTTP/1.1\r\nConnection: close\r\n\r\n")
                .starts_with("HTTP/1.1 401")
        );
        let ok = req(&format!(
            "GET /latest/meta-data/tags/instance/Environment HTTP/1.1\r\nX-aws-ec2-metadata-token: {token}\r\nConnection: close\r\n\r\n"
        ));
        assert!(
            ok.starts_with("HTTP/1.1 200") && ok.ends_with("prod"),
            "{ok}"
        );
    }
}
