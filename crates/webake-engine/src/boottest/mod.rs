//! The boot test: boot an image under qemu (UEFI/OVMF) and run the recipe's checks.
//!
//! The artifact itself is never modified: a throw-away raw copy gets a small harness injected
//! offline ([`harness`]). Instance metadata for the guest is served by a faithful IMDSv2 fake
//! ([`imds`]). Progress: the console milestones (firmware, kernel, initramfs, systemd,
//! multi-user, checks) and each check's result.

pub mod harness;
pub mod imds;
pub mod qemu;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use webake_build::bake::BakeLog;
use webake_catalog::Image;
use webake_spec::TestSpec;
use webake_sys::CancelToken;
use webake_sys::process::{Cmd, run};

pub use qemu::Accel;

use crate::events::{CacheStatus, Event};
use crate::{Context, Error, Result};

/// The test of an image without a recipe `test:` section: boot to multi-user, no checks.
pub fn default_spec() -> TestSpec {
    TestSpec {
        gate: false,
        timeout_secs: 120,
        checks: vec![],
        imds: None,
        memory_mib: 1024,
    }
}

/// Options of a boot test beyond the recipe's `test:` section.
#[derive(Debug, Clone, Default)]
pub struct TestOptions {
    /// Force the accelerator instead of probing.
    pub accel: Option<Accel>,
}

/// What a passing boot test saw.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TestReport {
    pub accel: &'static str,
    pub seconds: f64,
    pub checks_passed: usize,
}

/// Boot-test a catalog image (the raw artifact preferred).
pub fn test_image(
    ctx: &Context<'_>,
    img: &Image,
    spec: Option<&TestSpec>,
    log: &BakeLog,
) -> Result<TestReport> {
    let spec = spec.cloned().unwrap_or_else(default_spec);
    test_disk(ctx, disk_of(img)?, &spec, &TestOptions::default(), log)
}

/// The disk of a catalog image to boot or inspect (its raw artifact preferred).
pub fn disk_of(img: &Image) -> Result<&Path> {
    img.disk()
        .map(|a| a.path.as_path())
        .ok_or_else(|| Error::Invalid(format!("image {} has no artifacts", img.id)))
}

/// Boot `disk` and run `spec`'s checks. A failure carries the console tail.
pub fn test_disk(
    ctx: &Context<'_>,
    disk: &Path,
    spec: &TestSpec,
    opts: &TestOptions,
    log: &BakeLog,
) -> Result<TestReport> {
    let step = "boot test";
    let t0 = Instant::now();
    for tool in ["qemu-system-x86_64", "qemu-img", "debugfs", "sfdisk"] {
        if webake_sys::process::which(tool).is_none() {
            return Err(Error::Failed(format!(
                "missing host tool `{tool}` for the boot test: apt-get install qemu-system-x86 qemu-utils e2fsprogs fdisk ovmf"
            )));
        }
    }
    let (code, vars_template) = qemu::ovmf()?;
    let (accel, why) = qemu::probe_accel(&code, opts.accel.or(ctx.settings.accel));
    let timeout = Duration::from_secs(match accel {
        Accel::Tcg => spec.timeout_secs * 4,
        Accel::Kvm => spec.timeout_secs,
    });
    let detail = format!(
        "qemu {} ({why}), UEFI {}, timeout {}s, {} check(s)",
        accel.as_str(),
        code.display(),
        timeout.as_secs(),
        spec.checks.len()
    );
    ctx.reporter.event(&Event::StepStarted {
        step,
        detail: &detail,
    });
    let vm = Prepared::new(ctx, disk, spec, &vars_template, log)?;
    let booted = boot(ctx, &vm, &code, accel, spec, timeout, log)?;
    let checks_passed = verdict(ctx, &vm, spec, &booted, accel, timeout, log)?;
    ctx.reporter.event(&Event::StepFinished {
        step,
        elapsed: t0.elapsed(),
        cache: CacheStatus::Uncached,
    });
    let summary = if spec.checks.is_empty() {
        "boot test passed: multi-user reached (the recipe defines no check)".to_string()
    } else {
        format!("boot test passed: {checks_passed} check(s) passed")
    };
    ctx.reporter.note(&summary);
    Ok(TestReport {
        accel: accel.as_str(),
        seconds: t0.elapsed().as_secs_f64(),
        checks_passed,
    })
}

/// The throw-away copy of the disk with the harness, the firmware variables and the metadata
/// fake; all gone on drop.
struct Prepared {
    _scratch: tempfile::TempDir,
    raw: PathBuf,
    vars: PathBuf,
    imds: Option<imds::FakeImds>,
    _lease: webake_build::workspace::BakeLease,
}

impl Prepared {
    fn new(
        ctx: &Context<'_>,
        disk: &Path,
        spec: &TestSpec,
        vars_template: &Path,
        log: &BakeLog,
    ) -> Result<Self> {
        let ws = &ctx.workspace;
        ws.ensure()?;
        let scratch = tempfile::Builder::new()
            .prefix("webake-test-")
            .tempdir_in(ws.scratch_root())
            .map_err(|e| Error::io(ws.scratch_root(), e))?;
        // `webake clean` (of any catalog) leaves a scratch dir alone while its lease is held.
        let name = scratch
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let lease = webake_build::workspace::BakeLease::acquire(&ws.cache_dir, &name, "")?;
        let raw = scratch.path().join("disk.raw");
        run(
            &Cmd::new("qemu-img")
                .args(["convert", "-q", "-O", "raw"])
                .arg(disk)
                .arg(&raw),
            &ctx.cancel,
            &mut |l| log.line("boot test", l),
        )?;
        let vars = scratch.path().join("OVMF_VARS.fd");
        std::fs::copy(vars_template, &vars).map_err(|e| Error::io(vars_template, e))?;
        let imds = spec.imds.as_ref().map(imds::FakeImds::start).transpose()?;
        let dropin = imds.as_ref().map(|_| harness::IMDS_DROPIN);
        harness::inject(&raw, &spec.checks, scratch.path(), dropin)?;
        Ok(Self {
            _scratch: scratch,
            raw,
            vars,
            imds,
            _lease: lease,
        })
    }
}

/// How the VM ended.
struct Booted {
    timed_out: bool,
    /// The console showed the harness starting.
    began: bool,
    tail: Vec<String>,
    /// qemu's own failure, if it did not power off cleanly.
    failure: Option<String>,
}

/// Boot the prepared disk until it powers off, the timeout, or cancellation.
fn boot(
    ctx: &Context<'_>,
    vm: &Prepared,
    code: &Path,
    accel: Accel,
    spec: &TestSpec,
    timeout: Duration,
    log: &BakeLog,
) -> Result<Booted> {
    let exe = ctx.settings.helper_exe.clone();
    let cmd = qemu::command(&qemu::Machine {
        accel,
        memory_mib: spec.memory_mib,
        code,
        vars: &vm.vars,
        disk: &vm.raw,
        imds: vm.imds.as_ref().map(|f| (exe.as_path(), f.port)),
    });
    // A watchdog cancels the VM at the timeout (or when the command is cancelled).
    let vm_cancel = CancelToken::new();
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (vm_cancel, done, outer) = (vm_cancel.clone(), done.clone(), ctx.cancel.clone());
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
    let mut tail: VecDeque<String> = VecDeque::new();
    let mut began = false;
    let t0 = Instant::now();
    let res = run(&cmd, &vm_cancel, &mut |line| {
        let line = line.trim_end_matches('\r');
        log.line("boot test", line);
        if tail.len() == 30 {
            tail.pop_front();
        }
        tail.push_back(line.to_string());
        if let Some(m) = qemu::milestone(line) {
            began |= line.contains("WEBAKE-TEST-BEGIN");
            let msg = format!("{m} ({:.1}s)", t0.elapsed().as_secs_f64());
            ctx.reporter.event(&Event::Output {
                step: "boot test",
                line: &msg,
            });
        }
    });
    done.store(true, Ordering::SeqCst);
    let timed_out = watchdog.join().unwrap_or(false);
    if ctx.cancel.is_cancelled() || webake_sys::cancel::signalled() {
        return Err(Error::Interrupted.context("boot test cancelled"));
    }
    Ok(Booted {
        timed_out,
        began,
        tail: tail.into(),
        failure: res.err().map(|e| e.to_string()),
    })
}

/// Read what the harness recorded and judge it; returns the number of checks that passed.
fn verdict(
    ctx: &Context<'_>,
    vm: &Prepared,
    spec: &TestSpec,
    booted: &Booted,
    accel: Accel,
    timeout: Duration,
    log: &BakeLog,
) -> Result<usize> {
    let tail_text = booted
        .tail
        .iter()
        .map(|l| format!("    | {l}"))
        .collect::<Vec<_>>()
        .join("\n");
    let rec = if booted.timed_out {
        harness::Recorded::default()
    } else {
        harness::read(&vm.raw).unwrap_or_default()
    };
    if !rec.ended {
        let why = if booted.timed_out {
            format!("no result within {}s", timeout.as_secs())
        } else {
            format!(
                "the VM stopped before the checks finished ({})",
                booted.failure.as_deref().unwrap_or("powered off")
            )
        };
        let stage = if booted.began || rec.began {
            "the guest reached multi-user but the checks did not finish"
        } else {
            "the guest never reached multi-user"
        };
        return Err(Error::TestFailed(format!(
            "boot test failed: {why}; {stage} (accelerator {}). Console tail:\n{tail_text}",
            accel.as_str()
        )));
    }
    let mut problems = Vec::new();
    for (i, c) in spec.checks.iter().enumerate() {
        let Some((rc, out)) = rec.checks.get(&i) else {
            problems.push(format!("check {:?}: no result", c.name));
            continue;
        };
        let out = out.trim();
        log.line(
            "boot test",
            &format!("check {:?}: rc={rc} output={out:?}", c.name),
        );
        let line = format!("check {}: rc={rc} {out}", c.name);
        ctx.reporter.event(&Event::Output {
            step: "boot test",
            line: &line,
        });
        if *rc != 0 {
            problems.push(format!("check {:?} exited with {rc}: {out}", c.name));
        } else if let Some(exp) = c.expect_stdout.as_ref().filter(|e| out != e.trim()) {
            problems.push(format!("check {:?}: expected {exp:?}, got {out:?}", c.name));
        }
    }
    if problems.is_empty() {
        return Ok(spec.checks.len());
    }
    let units = if rec.failed_units.is_empty() {
        "none"
    } else {
        &rec.failed_units
    };
    Err(Error::TestFailed(format!(
        "boot test failed:\n  {}\n  failed units: {units}\nConsole tail:\n{tail_text}",
        problems.join("\n  ")
    )))
}

/// What `test` boots: a disk file, or a catalog image (its raw artifact preferred).
#[derive(Debug, Clone)]
pub enum Subject {
    Disk(PathBuf),
    Image(Box<Image>),
}

impl Subject {
    /// A path to a disk file, or a catalog image (an id, `family:FAMILY`, `NAME:VERSION`);
    /// neither is invalid input.
    pub fn resolve(ctx: &Context<'_>, what: &str) -> Result<Self> {
        let p = Path::new(what);
        if p.is_file() {
            return Ok(Subject::Disk(p.to_path_buf()));
        }
        if what.contains('/') || !ctx.catalog_exists() {
            return Err(Error::Invalid(format!(
                "{what}: no such disk file or catalog image"
            )));
        }
        let img = ctx
            .catalog()?
            .find_image(what)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        Ok(Subject::Image(Box::new(img)))
    }

    /// The recipe the image was baked from, if it is still where it was.
    pub fn recipe(&self) -> Option<PathBuf> {
        match self {
            Subject::Image(img) => Some(PathBuf::from(&img.provenance.recipe))
                .filter(|p| !p.as_os_str().is_empty() && p.is_file()),
            Subject::Disk(_) => None,
        }
    }

    fn disk(&self) -> Result<PathBuf> {
        match self {
            Subject::Disk(d) => Ok(d.clone()),
            Subject::Image(img) => Ok(disk_of(img)?.to_path_buf()),
        }
    }
}

/// `test`: boot the subject with its own console log; a catalog image gets the result
/// recorded (passed or failed).
pub fn test_subject(
    ctx: &Context<'_>,
    subject: &Subject,
    spec: &TestSpec,
    opts: &TestOptions,
) -> Result<TestReport> {
    let disk = subject.disk()?;
    let log = crate::run::test_log(ctx)?;
    ctx.reporter.note(&format!(
        "boot test of {}; console log {}",
        disk.display(),
        log.path.display()
    ));
    let res = test_disk(ctx, &disk, spec, opts, &log);
    if let Subject::Image(img) = subject {
        let r = if res.is_ok() {
            webake_catalog::TestResult::Passed
        } else {
            webake_catalog::TestResult::Failed
        };
        ctx.catalog()?.set_test_result(&img.id, r)?;
    }
    res.map_err(|e| e.context(format!("console log {}", log.path.display())))
}
