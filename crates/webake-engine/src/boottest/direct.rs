//! Direct kernel boot for the checks, with the firmware path proven alongside.
//!
//! Under TCG the firmware and GRUB take about 7 s of a 28 s boot test (docs/benchmarks.md).
//! The checks' boot therefore loads the disk's own kernel and initrd with the command line of
//! its one GRUB entry (read offline from the test copy's `/boot/grub/grub.cfg`), while a
//! second qemu boots the **unmodified artifact**, read-only, through each firmware the disk
//! declares until the kernel prints its command line. That line must be GRUB's entry: the
//! firmware found the loader on the ESP (or the BIOS boot code), GRUB found its configuration
//! and started that kernel with that command line. Everything after it (initramfs, root
//! filesystem, systemd, the checks) is what the direct boot runs, from the same files.
//!
//! The proof runs on the second CPU while the checks boot, at a lower priority (the checks'
//! boot is the critical path); it needs one vCPU for the 7 s to the kernel. A disk webake did
//! not assemble, or a kernel command line that silences the kernel's messages (`quiet`, a low
//! `loglevel`), is booted through the firmware instead.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use webake_build::bake::BakeLog;
use webake_sys::CancelToken;
use webake_sys::process::{Cmd, capture, run};

use super::qemu::{self, Accel, DiskAccess, Firmware};
use crate::events::Reporter;

/// The proof's nice value: it only needs to finish before the checks do.
const PROOF_NICE: i32 = 10;

/// The first line of the `grub.cfg` webake writes (`webake_build::assemble::grub_cfg`).
const WEBAKE_GRUB_CFG: &str = "# Written by webake.";

/// The kernel the checks boot: files copied out of the test disk, and the command line of its
/// GRUB entry.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    /// The kernel's path inside the image (for messages).
    pub image_path: String,
}

/// The one menu entry of a webake `grub.cfg`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kernel: String,
    pub initrd: Option<String>,
    pub cmdline: String,
}

/// The first menu entry of a `grub.cfg` written by webake: `linux PATH ARGS…`, `initrd PATH`.
/// Anything else (another tool's configuration, scripting, several initrds, a path with
/// characters webake never writes) is refused with the reason.
pub fn parse_grub_cfg(text: &str) -> Result<Entry, String> {
    if !text.starts_with(WEBAKE_GRUB_CFG) {
        return Err("its grub.cfg was not written by webake".into());
    }
    let mut entered = false;
    let (mut kernel, mut initrd, mut cmdline) = (None, None, String::new());
    for line in text.lines().map(str::trim) {
        if !entered {
            entered = line.starts_with("menuentry ");
            continue;
        }
        if line == "}" {
            break;
        }
        let mut words = line.split_whitespace();
        match words.next() {
            Some("linux" | "linuxefi") => {
                kernel = words.next().map(str::to_string);
                cmdline = words.collect::<Vec<_>>().join(" ");
            }
            Some("initrd" | "initrdefi") => {
                let paths: Vec<&str> = words.collect();
                if paths.len() != 1 {
                    return Err(format!("its GRUB entry loads {} initrds", paths.len()));
                }
                initrd = Some(paths[0].to_string());
            }
            _ => {}
        }
    }
    let kernel = kernel.ok_or("its grub.cfg has no `linux` line in a menu entry")?;
    for p in std::iter::once(&kernel).chain(initrd.as_ref()) {
        let plain = p.starts_with('/')
            && !p.contains("..")
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._/+-".contains(c));
        if !plain {
            return Err(format!("its GRUB entry names an unusual path {p:?}"));
        }
    }
    if let Some(w) = cmdline.split_whitespace().find(|w| silences_kernel(w)) {
        return Err(format!(
            "its kernel command line has `{w}`, which hides the kernel messages that prove the firmware path"
        ));
    }
    Ok(Entry {
        kernel,
        initrd,
        cmdline,
    })
}

/// `quiet` or `loglevel=N` up to 5: the kernel's command line message (KERN_NOTICE, level 5)
/// is not printed on the console.
fn silences_kernel(word: &str) -> bool {
    word == "quiet"
        || word
            .strip_prefix("loglevel=")
            .and_then(|n| n.parse::<u8>().ok())
            .is_some_and(|n| n < 6)
}

/// Copy the kernel and initrd of the GRUB entry out of a raw disk (its root filesystem,
/// offline with debugfs: every path is resolved inside the filesystem image) into `scratch`.
pub fn extract(raw: &Path, scratch: &Path) -> Result<Kernel, String> {
    let off = webake_build::extract::root_offset(raw).map_err(|e| e.to_string())?;
    let image = format!("{}?offset={off}", raw.display());
    let debugfs = |request: String| {
        capture(&Cmd::new("debugfs").arg("-R").arg(request).arg(&image)).map_err(|e| e.to_string())
    };
    let cfg = debugfs("cat /boot/grub/grub.cfg".into())?;
    let entry = parse_grub_cfg(&cfg)?;
    let dump = |inner: &str, name: &str| -> Result<PathBuf, String> {
        let dest = scratch.join(name);
        debugfs(format!("dump {inner} {}", dest.display()))?;
        match std::fs::metadata(&dest) {
            Ok(m) if m.len() > 0 => Ok(dest),
            _ => Err(format!("{inner} could not be read from the disk")),
        }
    };
    Ok(Kernel {
        kernel: dump(&entry.kernel, "vmlinuz")?,
        initrd: entry
            .initrd
            .as_deref()
            .map(|i| dump(i, "initrd.img"))
            .transpose()?,
        cmdline: entry.cmdline,
        image_path: entry.kernel,
    })
}

/// qemu's format name of a disk file: qcow2 by its magic, else raw.
pub fn disk_format(disk: &Path) -> &'static str {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let qcow2 = std::fs::File::open(disk)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"QFI\xfb";
    if qcow2 { "qcow2" } else { "raw" }
}

/// The same kernel command line, but for the `BOOT_IMAGE=` GRUB adds.
pub fn same_cmdline(seen: &str, expected: &str) -> bool {
    let seen: Vec<&str> = seen
        .split_whitespace()
        .filter(|w| !w.starts_with("BOOT_IMAGE="))
        .collect();
    seen == expected.split_whitespace().collect::<Vec<_>>()
}

/// One firmware boot of the artifact up to the kernel.
pub struct Proof<'a> {
    pub firmware: &'a Firmware,
    pub accel: Accel,
    /// The artifact, opened read-only.
    pub disk: &'a Path,
    /// This boot's UEFI variable store (or SeaBIOS's serial console switch).
    pub state: &'a Path,
    pub cmdline: &'a str,
}

/// A cancellation token that fires at a deadline or when `outer` is cancelled (checked every
/// 200 ms); [`Watchdog::finish`] says whether the deadline fired.
pub struct Watchdog {
    pub token: CancelToken,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<bool>,
}

impl Watchdog {
    pub fn start(timeout: Duration, outer: &CancelToken) -> Self {
        use std::sync::atomic::Ordering;
        let token = CancelToken::new();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handle = {
            let (token, done, outer) = (token.clone(), done.clone(), outer.clone());
            std::thread::spawn(move || {
                let start = Instant::now();
                while !done.load(Ordering::SeqCst) {
                    if start.elapsed() > timeout || outer.is_cancelled() {
                        token.cancel();
                        return start.elapsed() > timeout;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                false
            })
        };
        Self {
            token,
            done,
            handle,
        }
    }

    /// Stop watching; true if the deadline fired.
    pub fn finish(self) -> bool {
        self.done.store(true, std::sync::atomic::Ordering::SeqCst);
        self.handle.join().unwrap_or(false)
    }
}

/// Lines on which a firmware boot has failed: OVMF/AAVMF found nothing to boot (or fell back
/// to its built-in shell), SeaBIOS found
/// no bootable disk, GRUB could not find or load a file. (GRUB's other errors, e.g. "no
/// suitable video mode found" on a machine without a display, are not fatal.)
fn firmware_failure(line: &str) -> bool {
    let grub_fatal = ["not found", "unknown filesystem", "load the kernel first"];
    line.contains("No bootable option or device was found")
        || line.contains("UEFI Interactive Shell")
        || line.contains("No bootable device")
        || (line.trim_start().starts_with("error:") && grub_fatal.iter().any(|f| line.contains(f)))
}

/// Boot the artifact under one firmware until its kernel prints the command line; returns the
/// seconds it took, or why the firmware path failed (with the console tail). Stops at
/// `timeout` or when `cancel` fires.
pub fn prove(
    p: &Proof<'_>,
    cancel: &CancelToken,
    timeout: Duration,
    reporter: &dyn Reporter,
    log: &BakeLog,
) -> Result<f64, String> {
    let step = format!("boot test: {} firmware", p.firmware.name());
    let cmd = qemu::command(&qemu::Machine {
        accel: p.accel,
        memory_mib: 512,
        firmware: p.firmware,
        vars: Some(p.state),
        disk: p.disk,
        access: DiskAccess::ReadOnly(disk_format(p.disk)),
        kernel: None,
        imds: None,
        interactive: false,
    })
    // The checks' boot is the test's critical path: the proof takes the CPU time it leaves.
    .nice(PROOF_NICE);
    let watch = Watchdog::start(timeout, cancel);
    let mut verdict: Option<Result<f64, String>> = None;
    let mut console =
        qemu::ConsoleWatch::new(&step, format!("{}: ", p.firmware.name()), 20, reporter, log);
    let _ = run(&cmd, &watch.token, &mut |line| {
        let line = line.trim_end_matches('\r');
        console.record(line);
        if verdict.is_some() {
            return;
        }
        console.milestone(line);
        if let Some((_, seen)) = line.split_once("Kernel command line:") {
            verdict = Some(if same_cmdline(seen, p.cmdline) {
                Ok(console.secs())
            } else {
                Err(format!(
                    "GRUB started the kernel with `{}`, not the entry's `{}`",
                    seen.trim(),
                    p.cmdline
                ))
            });
            watch.token.cancel();
        } else if firmware_failure(line) {
            verdict = Some(Err(format!("the boot stopped at `{}`", line.trim())));
            watch.token.cancel();
        }
    });
    let timed_out = watch.finish();
    let tail_text = console.tail_text();
    match verdict {
        Some(Ok(s)) => Ok(s),
        Some(Err(why)) => Err(format!("{why}. Console tail:\n{tail_text}")),
        None if timed_out => Err(format!(
            "the kernel did not start within {}s. Console tail:\n{tail_text}",
            timeout.as_secs()
        )),
        None if cancel.is_cancelled() => Err(format!(
            "the kernel had not started after {:.0}s, when the checks had long finished. Console tail:\n{tail_text}",
            console.secs()
        )),
        None => Err(format!(
            "qemu stopped before the kernel started. Console tail:\n{tail_text}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = "# Written by webake. Serial and graphical console; one entry.
serial --unit=0 --speed=115200 --word=8 --parity=no --stop=1
set timeout=1
menuentry 'debian-minimal 20261201' {
    search --no-floppy --fs-uuid --set=root 0c4b4f57-8f44-4b8e-a4f2-0d0d3c1e2f10
    linux /boot/vmlinuz-6.1.0-28-cloud-amd64 root=UUID=0c4b4f57 ro console=tty0 console=ttyS0,115200n8
    initrd /boot/initrd.img-6.1.0-28-cloud-amd64
}
";

    #[test]
    fn the_entry_of_a_webake_grub_cfg_is_read_and_anything_else_refused() {
        let e = parse_grub_cfg(CFG).unwrap();
        assert_eq!(e.kernel, "/boot/vmlinuz-6.1.0-28-cloud-amd64");
        assert_eq!(
            e.initrd.as_deref(),
            Some("/boot/initrd.img-6.1.0-28-cloud-amd64")
        );
        assert_eq!(
            e.cmdline,
            "root=UUID=0c4b4f57 ro console=tty0 console=ttyS0,115200n8"
        );
        let foreign = CFG.replace("# Written by webake.", "# Generated by grub-mkconfig");
        assert!(
            parse_grub_cfg(&foreign)
                .unwrap_err()
                .contains("not written by webake")
        );
        let quiet = CFG.replace("115200n8\n", "115200n8 quiet\n");
        assert!(parse_grub_cfg(&quiet).unwrap_err().contains("`quiet`"));
        let low = CFG.replace("115200n8\n", "115200n8 loglevel=3\n");
        assert!(parse_grub_cfg(&low).is_err());
        let loud = CFG.replace("115200n8\n", "115200n8 loglevel=7\n");
        assert!(parse_grub_cfg(&loud).is_ok());
        let odd = CFG.replace("/boot/vmlinuz-6.1.0-28-cloud-amd64", "/boot/k\"x");
        assert!(parse_grub_cfg(&odd).unwrap_err().contains("unusual path"));
        let up = CFG.replace("/boot/vmlinuz-6.1.0-28-cloud-amd64", "/boot/../../k");
        assert!(parse_grub_cfg(&up).is_err());
        let two = CFG.replace(
            "initrd /boot/initrd.img-6.1.0-28-cloud-amd64",
            "initrd /a /b",
        );
        assert!(parse_grub_cfg(&two).unwrap_err().contains("2 initrds"));
        let none = "# Written by webake.\nset timeout=1\n";
        assert!(
            parse_grub_cfg(none)
                .unwrap_err()
                .contains("no `linux` line")
        );
    }

    #[test]
    fn grubs_boot_image_is_the_only_difference_allowed() {
        let want = "root=UUID=0c4b ro console=tty0 console=ttyS0,115200n8";
        assert!(same_cmdline(
            " BOOT_IMAGE=/boot/vmlinuz-6.1.0-28-cloud-amd64 root=UUID=0c4b ro console=tty0 console=ttyS0,115200n8",
            want
        ));
        assert!(!same_cmdline(
            "BOOT_IMAGE=/boot/vmlinuz root=UUID=ffff ro console=tty0 console=ttyS0,115200n8",
            want
        ));
        assert!(!same_cmdline(&format!("{want} init=/bin/sh"), want));
        assert!(firmware_failure(
            "BdsDxe: No bootable option or device was found."
        ));
        assert!(firmware_failure("error: file `/boot/vmlinuz' not found."));
        assert!(!firmware_failure("Booting `debian-minimal'"));
        assert!(!firmware_failure("error: no suitable video mode found."));
    }

    #[test]
    fn a_disk_format_is_told_by_its_magic() {
        let d = tempfile::tempdir().unwrap();
        let (q, r) = (d.path().join("q"), d.path().join("r"));
        std::fs::write(&q, b"QFI\xfb\0\0\0\x03").unwrap();
        std::fs::write(&r, [0u8; 512]).unwrap();
        assert_eq!(disk_format(&q), "qcow2");
        assert_eq!(disk_format(&r), "raw");
        assert_eq!(disk_format(&d.path().join("missing")), "raw");
    }
}
