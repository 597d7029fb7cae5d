//! `webake boot IMAGE`: boot a throwaway copy of an image under qemu with the serial console
//! on the terminal (as `mkosi boot` / `mkosi qemu` do), logged in as root on the console.

use webake_spec::BootMode;

use super::qemu::{self, Accel, Firmware};
use super::{Subject, Throwaway, firmwares_of};
use crate::{Context, Error, Result};

/// How to boot.
#[derive(Debug, Clone, Default)]
pub struct BootOptions {
    /// The firmware (default: the first the image declares, or the disk has).
    pub firmware: Option<BootMode>,
    pub accel: Option<Accel>,
    pub memory_mib: u32,
    /// Log in as root on the serial console without a password (the copy only).
    pub autologin: bool,
}

/// The drop-in that logs root in on the serial console (written into the copy only).
const AUTOLOGIN: &str = "[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --noclear --keep-baud 115200,57600,38400,9600 %I $TERM
";

/// Boot the subject; returns qemu's exit code. The copy, its firmware variables and the
/// scratch directory are gone afterwards; the image is never written.
pub fn boot(ctx: &Context<'_>, subject: &Subject, opts: &BootOptions) -> Result<i32> {
    let disk = subject.disk()?;
    let log = crate::run::test_log(ctx)?;
    let (has, arch) = match subject {
        Subject::Image(img) => (firmwares_of(img), super::arch_of(img)),
        Subject::Disk(_) => super::disk_facts(ctx, &disk, &log)?,
    };
    let mode = match opts.firmware {
        Some(f) if has.contains(&f) => f,
        Some(f) => {
            return Err(Error::Invalid(format!(
                "{} does not boot under {} (it has: {})",
                disk.display(),
                f.as_str(),
                has.iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        None => *has.first().ok_or_else(|| {
            Error::Invalid(format!("{}: no firmware can boot it", disk.display()))
        })?,
    };
    let firmware = Firmware::find_for(mode, arch)?;
    let copy = Throwaway::copy(ctx, &disk, "webake-boot-", &log, "boot")?;
    if opts.autologin {
        let dropin = copy.dir.path().join("autologin.conf");
        std::fs::write(&dropin, AUTOLOGIN).map_err(|e| Error::io(&dropin, e))?;
        let (_, _, console) = qemu::system(arch);
        let dir = format!("/etc/systemd/system/serial-getty@{console}.service.d");
        let cmds = format!(
            "mkdir {dir}\nwrite {} {dir}/webake-autologin.conf\n",
            dropin.display()
        );
        super::harness::debugfs_write(&copy.raw, copy.dir.path(), &cmds)?;
    }
    let vars = copy.firmware_state(&firmware, "")?;
    let (accel, why) = qemu::probe_accel(&firmware, opts.accel.or(ctx.settings.accel));
    let cmd = qemu::command(&qemu::Machine {
        accel,
        memory_mib: opts.memory_mib.max(512),
        firmware: &firmware,
        vars: Some(&vars),
        disk: &copy.raw,
        access: qemu::DiskAccess::Scratch,
        kernel: None,
        imds: None,
        interactive: true,
    });
    ctx.reporter.note(&format!(
        "booting a throwaway copy of {} under {} (qemu {}: {why}); this terminal is its serial console{}; Ctrl-A X quits qemu, `poweroff` in the guest ends the boot",
        disk.display(),
        firmware.describe(),
        accel.as_str(),
        if opts.autologin { ", root logged in" } else { "" }
    ));
    let status = webake_sys::process::interactive(&cmd)?;
    Ok(webake_sys::process::exit_code(&status))
}
