//! The boot test: boot an image under qemu (UEFI/OVMF) and run the recipe's checks.
//!
//! The artifact itself is never modified: a throw-away raw copy gets a small harness injected
//! offline ([`harness`]). Instance metadata for the guest is served by a faithful IMDSv2 fake
//! ([`imds`]). Progress: the console milestones (firmware, kernel, initramfs, systemd,
//! multi-user, checks) and each check's result.

pub mod console;
pub mod direct;
pub mod harness;
pub mod imds;
pub mod qemu;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use webake_build::bake::BakeLog;
use webake_build::finalize::KEYGEN_UNIT_NAME;
use webake_catalog::Image;
use webake_spec::TestSpec;
use webake_sys::CancelToken;
use webake_sys::process::{Cmd, run};

pub use qemu::{Accel, Firmware};
pub use webake_spec::{Architecture, BootMode};

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
        direct_kernel: true,
    }
}

/// Options of a boot test beyond the recipe's `test:` section.
#[derive(Debug, Clone, Default)]
pub struct TestOptions {
    /// Force the accelerator instead of probing.
    pub accel: Option<Accel>,
    /// Boot under these firmwares, one after the other (empty: every firmware the disk has:
    /// a BIOS boot partition, an ESP).
    pub firmwares: Vec<BootMode>,
    /// The machine's architecture (`None`: the disk's, from the EFI loader on its ESP).
    pub arch: Option<Architecture>,
}

/// What a passing boot test saw.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TestReport {
    pub accel: &'static str,
    pub seconds: f64,
    /// Checks that passed under each firmware.
    pub checks_passed: usize,
    /// The firmwares it booted under, in order (with `kernel_boot: direct`: up to the
    /// kernel, the checks then ran on a direct kernel boot).
    pub firmwares: Vec<&'static str>,
    /// How the checks' boot started the kernel: `direct` or `firmware`.
    pub kernel_boot: &'static str,
}

/// Boot-test a catalog image (the raw artifact preferred).
pub fn test_image(
    ctx: &Context<'_>,
    img: &Image,
    spec: Option<&TestSpec>,
    log: &BakeLog,
) -> Result<TestReport> {
    let spec = spec.cloned().unwrap_or_else(default_spec);
    let opts = TestOptions {
        accel: None,
        firmwares: firmwares_of(img),
        arch: Some(arch_of(img)),
    };
    test_disk(ctx, disk_of(img)?, &spec, &opts, log)
}

/// The firmwares a catalog image declares (UEFI for records older than hybrid disks).
pub fn firmwares_of(img: &Image) -> Vec<BootMode> {
    img.provenance
        .firmwares()
        .iter()
        .filter_map(|f| match f.as_str() {
            "bios" => Some(BootMode::Bios),
            "uefi" => Some(BootMode::Uefi),
            _ => None,
        })
        .collect()
}

/// The architecture of a catalog image (x86-64 for records that do not say).
pub fn arch_of(img: &Image) -> Architecture {
    Architecture::parse(&img.arch).unwrap_or(Architecture::X86_64)
}

/// The firmwares a disk file can boot under, from its partition table: a BIOS boot partition
/// (BIOS) and an EFI system partition (UEFI).
pub fn firmwares_of_disk(ctx: &Context<'_>, disk: &Path, log: &BakeLog) -> Result<Vec<BootMode>> {
    Ok(disk_facts(ctx, disk, log)?.0)
}

/// The firmwares a disk boots under and its architecture: that of the removable-media EFI
/// loader on its ESP (`BOOTAA64.EFI`: arm64), x86-64 for a BIOS-only disk.
pub fn disk_facts(
    ctx: &Context<'_>,
    disk: &Path,
    log: &BakeLog,
) -> Result<(Vec<BootMode>, Architecture)> {
    let scratch = tempfile::Builder::new()
        .prefix("webake-probe-")
        .tempdir_in(ctx.workspace.scratch_root())
        .map_err(|e| Error::io(ctx.workspace.scratch_root(), e))?;
    let raw = scratch.path().join("disk.raw");
    run(
        &Cmd::new("qemu-img")
            .args(["convert", "-q", "-O", "raw"])
            .arg(disk)
            .arg(&raw),
        &ctx.cancel,
        &mut |l| log.line("boot test", l),
    )?;
    let json = webake_sys::process::capture(&Cmd::new("sfdisk").arg("--json").arg(&raw))?;
    let table: serde_json::Value = serde_json::from_str(&json)
        .map_err(|e| Error::Failed(format!("sfdisk --json {}: {e}", disk.display())))?;
    let types: Vec<String> = table["partitiontable"]["partitions"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter_map(|p| p["type"].as_str().map(str::to_uppercase))
                .collect()
        })
        .unwrap_or_default();
    let mut found = Vec::new();
    if types
        .iter()
        .any(|t| t == webake_build::assemble::BIOS_BOOT_TYPE)
    {
        found.push(BootMode::Bios);
    }
    if types.iter().any(|t| t == ESP_TYPE) {
        found.push(BootMode::Uefi);
    }
    if found.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: neither a BIOS boot partition nor an EFI system partition: not a disk webake can boot",
            disk.display()
        )));
    }
    let esp_start = table["partitiontable"]["partitions"]
        .as_array()
        .and_then(|ps| {
            ps.iter().find(|p| {
                p["type"]
                    .as_str()
                    .is_some_and(|t| t.eq_ignore_ascii_case(ESP_TYPE))
            })
        })
        .and_then(|p| p["start"].as_u64());
    let arch = match esp_start {
        Some(start) => {
            let listing = webake_sys::process::capture(
                &Cmd::new("mdir")
                    .env("MTOOLS_SKIP_CHECK", "1")
                    .args(["-b", "-i"])
                    .arg(format!("{}@@{}", raw.display(), start * 512))
                    .arg("::/EFI/BOOT"),
            )
            .unwrap_or_default();
            if listing.to_uppercase().contains("BOOTAA64.EFI") {
                Architecture::Arm64
            } else {
                Architecture::X86_64
            }
        }
        None => Architecture::X86_64,
    };
    Ok((found, arch))
}

/// The GPT type of an EFI system partition.
const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";

/// The disk of a catalog image to boot or inspect (its raw artifact preferred).
pub fn disk_of(img: &Image) -> Result<&Path> {
    img.disk()
        .map(|a| a.path.as_path())
        .ok_or_else(|| Error::Invalid(format!("image {} has no artifacts", img.id)))
}

/// Boot `disk` under each firmware and run `spec`'s checks. A failure carries the console
/// tail and names the firmware.
pub fn test_disk(
    ctx: &Context<'_>,
    disk: &Path,
    spec: &TestSpec,
    opts: &TestOptions,
    log: &BakeLog,
) -> Result<TestReport> {
    let t0 = Instant::now();
    let (modes, arch) = match (opts.firmwares.is_empty(), opts.arch) {
        (false, Some(a)) => (opts.firmwares.clone(), a),
        (true, Some(a)) => (disk_facts(ctx, disk, log)?.0, a),
        (empty, None) => {
            let (found, a) = disk_facts(ctx, disk, log)?;
            (if empty { found } else { opts.firmwares.clone() }, a)
        }
    };
    let (qemu, _, _) = qemu::system(arch);
    for tool in [qemu, "qemu-img", "debugfs", "sfdisk"] {
        if webake_sys::process::which(tool).is_none() {
            return Err(Error::Failed(format!(
                "missing host tool `{tool}` for the boot test: apt-get install {} qemu-utils e2fsprogs fdisk {}",
                if arch == Architecture::Arm64 {
                    "qemu-system-arm"
                } else {
                    "qemu-system-x86"
                },
                if arch == Architecture::Arm64 {
                    "qemu-efi-aarch64"
                } else {
                    "ovmf seabios"
                },
            )));
        }
    }
    let firmwares = modes
        .iter()
        .map(|m| Firmware::find_for(*m, arch))
        .collect::<Result<Vec<_>>>()?;
    if firmwares.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no firmware to boot it under",
            disk.display()
        )));
    }
    let mut report = TestReport {
        accel: "",
        seconds: 0.0,
        checks_passed: 0,
        firmwares: firmwares.iter().map(Firmware::name).collect(),
        kernel_boot: "direct",
    };
    let direct = match spec.direct_kernel {
        true => test_direct(ctx, disk, spec, opts, &firmwares, log)?,
        false => Direct::Fallback(None),
    };
    match direct {
        Direct::Passed(accel, passed) => {
            report.accel = accel.as_str();
            report.checks_passed = passed;
        }
        Direct::Fallback(mut prepared) => {
            report.kernel_boot = "firmware";
            for firmware in &firmwares {
                // The first firmware's copy may be made already (a direct boot was not possible).
                let vm = prepared.take().map(|vm| *vm);
                let (accel, passed) = test_under(ctx, disk, spec, opts, firmware, vm, log)?;
                report.accel = accel.as_str();
                report.checks_passed = passed;
            }
        }
    }
    report.seconds = t0.elapsed().as_secs_f64();
    let what = if spec.checks.is_empty() {
        "multi-user reached (the recipe defines no check)".to_string()
    } else {
        format!("{} check(s) passed", report.checks_passed)
    };
    let summary = match report.kernel_boot {
        "direct" => format!(
            "boot test passed: {} start the disk's kernel; on a direct boot of that kernel {what}",
            report.firmwares.join(" and ")
        ),
        _ => format!(
            "boot test passed under {}: {what}",
            report.firmwares.join(" and ")
        ),
    };
    ctx.reporter.note(&summary);
    Ok(report)
}

/// How long a boot may take: the recipe's timeout, four times that under software emulation.
fn timeout_for(spec: &TestSpec, accel: Accel) -> Duration {
    Duration::from_secs(match accel {
        Accel::Tcg => spec.timeout_secs * 4,
        Accel::Kvm => spec.timeout_secs,
    })
}

/// After the checks passed on the direct boot, how long the firmware proofs may still take (at
/// least; as long again as the checks took when that is longer).
const PROOF_GRACE: Duration = Duration::from_secs(60);

/// How [`test_direct`] ended when it did not fail.
enum Direct {
    /// The checks passed (accelerator, checks passed) and every firmware path was proven.
    Passed(Accel, usize),
    /// The disk cannot be booted directly: boot through the firmware, starting with this copy
    /// (prepared for the first firmware) if one was made.
    Fallback(Option<Box<Prepared>>),
}

/// The checks on a direct kernel boot of the test copy, while the artifact boots through each
/// firmware up to its kernel on the other CPU ([`direct`]). [`Direct::Fallback`] when the disk
/// cannot be booted directly (the reason is shown; the caller boots through the firmware).
fn test_direct(
    ctx: &Context<'_>,
    disk: &Path,
    spec: &TestSpec,
    opts: &TestOptions,
    firmwares: &[Firmware],
    log: &BakeLog,
) -> Result<Direct> {
    let step = "boot test";
    let t0 = Instant::now();
    let first = &firmwares[0];
    let mut vm = Prepared::new(ctx, disk, spec, first, log)?;
    let kernel = match direct::extract(&vm.raw, vm.copy.dir.path()) {
        Ok(k) => k,
        Err(why) => {
            ctx.reporter.note(&format!(
                "booting the checks through the firmware: {} cannot be booted directly ({why})",
                disk.display()
            ));
            return Ok(Direct::Fallback(Some(Box::new(vm))));
        }
    };
    let forced = opts.accel.or(ctx.settings.accel);
    let (accel, why) = qemu::probe_accel(first, forced);
    let timeout = timeout_for(spec, accel);
    let proofs = firmwares
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let state = vm.copy.firmware_state(f, &format!("-proof{i}"))?;
            let a = if i == 0 {
                accel // probed above (a probe starts qemu)
            } else {
                qemu::probe_accel(f, forced).0
            };
            Ok((a, state))
        })
        .collect::<Result<Vec<_>>>()?;
    let detail = format!(
        "qemu {} ({why}): {} booted directly with its GRUB entry's command line, the path through {} proven alongside; timeout {}s, {} check(s)",
        accel.as_str(),
        kernel.image_path,
        firmwares
            .iter()
            .map(Firmware::describe)
            .collect::<Vec<_>>()
            .join(" and "),
        timeout.as_secs(),
        spec.checks.len()
    );
    ctx.reporter.event(&Event::StepStarted {
        step,
        detail: &detail,
    });
    vm.rsa_key_under_tcg(ctx, accel, log)?;
    let cmdline = kernel.cmdline.clone();
    vm.kernel = Some(kernel);
    let stop_proofs = CancelToken::new();
    let (checks, proven) = std::thread::scope(|s| {
        let prover = s.spawn(|| {
            firmwares
                .iter()
                .zip(&proofs)
                .map(|(f, (a, state))| {
                    let p = direct::Proof {
                        firmware: f,
                        accel: *a,
                        disk,
                        state,
                        cmdline: &cmdline,
                    };
                    direct::prove(&p, &stop_proofs, timeout, ctx.reporter, log)
                        .map(|secs| (f.name(), secs))
                        .map_err(|why| (f.describe(), why))
                })
                .collect::<std::result::Result<Vec<_>, _>>()
        });
        let checks = boot(ctx, &vm, first, accel, spec, timeout, log)
            .and_then(|b| verdict(ctx, &vm, spec, &b, accel, timeout, log));
        if checks.is_ok() {
            // As long again as the checks took (a loaded machine slows both), at least 60 s.
            let grace = PROOF_GRACE.max(t0.elapsed());
            let waited = Instant::now();
            while !prover.is_finished() && waited.elapsed() < grace {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        stop_proofs.cancel();
        (checks, prover.join())
    });
    let passed = checks.map_err(|e| e.context("the checks' boot (kernel booted directly)"))?;
    match proven {
        Ok(Ok(proofs)) => {
            for (firmware, secs) in proofs {
                let line = format!(
                    "{firmware}: the firmware and GRUB started the disk's kernel with its entry's command line ({secs:.1}s)"
                );
                ctx.reporter.event(&Event::Output { step, line: &line });
            }
        }
        Ok(Err((firmware, why))) => {
            return Err(Error::TestFailed(format!(
                "boot test failed under {firmware}: the firmware path did not start the disk's kernel: {why}"
            )));
        }
        Err(_) => return Err(Error::Failed("the firmware proof panicked".into())),
    }
    ctx.reporter.event(&Event::StepFinished {
        step,
        elapsed: t0.elapsed(),
        cache: CacheStatus::Uncached,
    });
    Ok(Direct::Passed(accel, passed))
}

/// One boot under one firmware; the accelerator used and the checks that passed.
fn test_under(
    ctx: &Context<'_>,
    disk: &Path,
    spec: &TestSpec,
    opts: &TestOptions,
    firmware: &Firmware,
    prepared: Option<Prepared>,
    log: &BakeLog,
) -> Result<(Accel, usize)> {
    let step = "boot test";
    let t0 = Instant::now();
    let (accel, why) = qemu::probe_accel(firmware, opts.accel.or(ctx.settings.accel));
    let timeout = timeout_for(spec, accel);
    let detail = format!(
        "qemu {} ({why}), {}, timeout {}s, {} check(s)",
        accel.as_str(),
        firmware.describe(),
        timeout.as_secs(),
        spec.checks.len()
    );
    ctx.reporter.event(&Event::StepStarted {
        step,
        detail: &detail,
    });
    let vm = match prepared {
        Some(vm) => vm,
        None => Prepared::new(ctx, disk, spec, firmware, log)?,
    };
    vm.rsa_key_under_tcg(ctx, accel, log)?;
    let booted = boot(ctx, &vm, firmware, accel, spec, timeout, log)?;
    let checks_passed = verdict(ctx, &vm, spec, &booted, accel, timeout, log)
        .map_err(|e| e.context(format!("under {}", firmware.describe())))?;
    ctx.reporter.event(&Event::StepFinished {
        step,
        elapsed: t0.elapsed(),
        cache: CacheStatus::Uncached,
    });
    Ok((accel, checks_passed))
}

/// A throw-away raw copy of a disk in a scratch directory of its own, which `webake clean` (of
/// any catalog) leaves alone while the lease is held; all gone on drop.
pub(crate) struct Throwaway {
    pub dir: tempfile::TempDir,
    pub raw: PathBuf,
    _lease: webake_build::workspace::BakeLease,
}

impl Throwaway {
    /// Copy `disk` (raw or qcow2) as raw into a new scratch directory named `prefix...`.
    pub(crate) fn copy(
        ctx: &Context<'_>,
        disk: &Path,
        prefix: &str,
        log: &BakeLog,
        step: &str,
    ) -> Result<Self> {
        let ws = &ctx.workspace;
        ws.ensure()?;
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(ws.scratch_root())
            .map_err(|e| Error::io(ws.scratch_root(), e))?;
        let name = dir
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let lease = webake_build::workspace::BakeLease::acquire(&ws.cache_dir, &name, "")?;
        let raw = dir.path().join("disk.raw");
        run(
            &Cmd::new("qemu-img")
                .args(["convert", "-q", "-O", "raw"])
                .arg(disk)
                .arg(&raw),
            &ctx.cancel,
            &mut |l| log.line(step, l),
        )?;
        Ok(Self {
            dir,
            raw,
            _lease: lease,
        })
    }

    /// The firmware's per-boot file: the UEFI variable store (a copy of the template), or
    /// the fw_cfg file that turns on SeaBIOS's serial console (see `qemu::Machine`); `tag`
    /// tells several boots' files apart.
    pub(crate) fn firmware_state(&self, firmware: &Firmware, tag: &str) -> Result<PathBuf> {
        match firmware {
            Firmware::Uefi { vars_template, .. } => {
                let vars = self.dir.path().join(format!("UEFI_VARS{tag}.fd"));
                std::fs::copy(vars_template, &vars).map_err(|e| Error::io(vars_template, e))?;
                Ok(vars)
            }
            Firmware::Bios => {
                let sercon = self.dir.path().join(format!("sercon-port{tag}"));
                std::fs::write(&sercon, qemu::SERCON_PORT).map_err(|e| Error::io(&sercon, e))?;
                Ok(sercon)
            }
        }
    }
}

/// The throw-away copy of the disk with the harness, the firmware variables and the metadata
/// fake; all gone on drop.
struct Prepared {
    copy: Throwaway,
    raw: PathBuf,
    /// An RSA host key made on the host, for a boot under emulation (or why there is none).
    rsa_key: std::result::Result<tempfile::TempDir, String>,
    /// Boot this kernel directly instead of through the firmware.
    kernel: Option<direct::Kernel>,
    /// The UEFI variable store, or SeaBIOS's serial console switch (see `qemu::Machine`).
    vars: Option<PathBuf>,
    imds: Option<imds::FakeImds>,
}

impl Prepared {
    fn new(
        ctx: &Context<'_>,
        disk: &Path,
        spec: &TestSpec,
        firmware: &Firmware,
        log: &BakeLog,
    ) -> Result<Self> {
        // The RSA host key a test under emulation puts into the copy, made beside the copy.
        let (copy, rsa_key) = std::thread::scope(|s| {
            let key = s.spawn(harness::make_rsa_host_key);
            let copy = Throwaway::copy(ctx, disk, "webake-test-", log, "boot test");
            let key = key
                .join()
                .unwrap_or_else(|_| Err("the key generation panicked".into()));
            (copy, key)
        });
        let copy = copy?;
        let vars = Some(copy.firmware_state(firmware, "")?);
        let imds = spec.imds.as_ref().map(imds::FakeImds::start).transpose()?;
        let dropin = imds.as_ref().map(|_| harness::IMDS_DROPIN);
        let (_, _, console) = qemu::system(firmware.arch());
        harness::inject(&copy.raw, &spec.checks, copy.dir.path(), dropin, console)?;
        Ok(Self {
            raw: copy.raw.clone(),
            copy,
            rsa_key,
            kernel: None,
            vars,
            imds,
        })
    }

    /// Under TCG, the copy's RSA host key made on the host ([`harness::preseed_rsa_host_key`]);
    /// under KVM the guest makes all its keys.
    fn rsa_key_under_tcg(&self, ctx: &Context<'_>, accel: Accel, log: &BakeLog) -> Result<()> {
        if accel != Accel::Tcg {
            return Ok(());
        }
        let line = match harness::preseed_rsa_host_key(&self.raw, self.copy.dir.path(), &self.rsa_key)? {
            harness::Preseed::Done => {
                "SSH RSA host key made on the host for this test copy (its prime search takes seconds to minutes under emulation); the image's first-boot unit makes the others".to_string()
            }
            harness::Preseed::NoKey(why) => format!(
                "the guest makes its RSA host key under emulation, seconds to minutes: {why}"
            ),
            harness::Preseed::NotNeeded => return Ok(()),
        };
        log.line("boot test", &line);
        ctx.reporter.event(&Event::Output {
            step: "boot test",
            line: &line,
        });
        Ok(())
    }
}

/// How the VM ended.
struct Booted {
    timed_out: bool,
    /// The console showed the harness starting.
    began: bool,
    /// The console's last lines, indented for an error message.
    tail: String,
    /// qemu's own failure, if it did not power off cleanly.
    failure: Option<String>,
}

/// Boot the prepared disk until it powers off, the timeout, or cancellation.
fn boot(
    ctx: &Context<'_>,
    vm: &Prepared,
    firmware: &Firmware,
    accel: Accel,
    spec: &TestSpec,
    timeout: Duration,
    log: &BakeLog,
) -> Result<Booted> {
    let exe = ctx.settings.helper_exe.clone();
    let cmd = qemu::command(&qemu::Machine {
        accel,
        memory_mib: spec.memory_mib,
        firmware,
        vars: vm.vars.as_deref(),
        disk: &vm.raw,
        access: qemu::DiskAccess::Scratch,
        kernel: vm.kernel.as_ref(),
        imds: vm.imds.as_ref().map(|f| (exe.as_path(), f.port)),
        interactive: false,
    });
    // A watchdog cancels the VM at the timeout (or when the command is cancelled).
    let watchdog = direct::Watchdog::start(timeout, &ctx.cancel);
    let mut began = false;
    let mut console = qemu::ConsoleWatch::new("boot test", String::new(), 30, ctx.reporter, log);
    let res = run(&cmd, &watchdog.token, &mut |line| {
        let line = line.trim_end_matches('\r');
        console.record(line);
        began |= line.contains("WEBAKE-TEST-BEGIN");
        console.milestone(line);
    });
    let timed_out = watchdog.finish();
    if ctx.cancel.is_cancelled() || webake_sys::cancel::signalled() {
        return Err(Error::Interrupted.context("boot test cancelled"));
    }
    Ok(Booted {
        timed_out,
        began,
        tail: console.tail_text(),
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
    let tail_text = &booted.tail;
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
    if let Some(keygen) = &rec.keygen {
        let line = format!(
            "first-boot SSH host keys: {KEYGEN_UNIT_NAME} {}, in /etc/ssh: {}",
            keygen.0,
            keygen.1.join(" ")
        );
        log.line("boot test", &line);
        ctx.reporter.event(&Event::Output {
            step: "boot test",
            line: &line,
        });
        problems.extend(host_keys_problem(keygen));
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

/// What is wrong with the first-boot host keys the harness saw (the key unit's state, the keys in
/// /etc/ssh), if anything: every key `ssh-keygen -A` makes must be there after boot.
fn host_keys_problem((state, keys): &(String, Vec<String>)) -> Option<String> {
    let missing: Vec<&str> = harness::HOST_KEYS
        .into_iter()
        .filter(|k| !keys.iter().any(|have| have == k))
        .collect();
    (state == "failed" || !missing.is_empty()).then(|| {
        format!(
            "first-boot SSH host keys: {KEYGEN_UNIT_NAME} is {state}, missing in /etc/ssh: {}",
            if missing.is_empty() {
                "none".to_string()
            } else {
                missing.join(" ")
            }
        )
    })
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
    let mut opts = opts.clone();
    if let Subject::Image(img) = subject {
        if opts.firmwares.is_empty() {
            opts.firmwares = firmwares_of(img);
        }
        opts.arch = opts.arch.or(Some(arch_of(img)));
    }
    let res = test_disk(ctx, &disk, spec, &opts, &log);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_boot_host_keys_must_all_be_there_and_the_unit_not_failed() {
        let keys = |ks: &[&str]| ks.iter().map(|k| k.to_string()).collect::<Vec<_>>();
        let all = keys(&harness::HOST_KEYS);
        assert_eq!(host_keys_problem(&("active".into(), all.clone())), None);
        let p = host_keys_problem(&("failed".into(), all)).expect("a failed unit is a problem");
        assert!(
            p.contains("is failed") && p.contains("missing in /etc/ssh: none"),
            "{p}"
        );
        let p = host_keys_problem(&(
            "active".into(),
            keys(&["ssh_host_rsa_key", "ssh_host_ed25519_key"]),
        ))
        .expect("a missing key is a problem");
        assert!(
            p.ends_with("missing in /etc/ssh: ssh_host_ecdsa_key"),
            "{p}"
        );
    }
}
