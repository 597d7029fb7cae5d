//! `webake boot IMAGE`: boot a throwaway copy of an image under qemu with the serial console
//! on the terminal (as `mkosi boot` / `mkosi qemu` do), logged in as root on the console.

use std::path::Path;

use webake_spec::BootMode;
use webake_sys::process::{Cmd, capture, run};

use super::qemu::{self, Accel, Firmware};
use super::{Subject, firmwares_of};
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
    let ws = &ctx.workspace;
    ws.ensure()?;
    let log = crate::run::test_log(ctx)?;
    let has = match subject {
        Subject::Image(img) => firmwares_of(img),
        Subject::Disk(_) => super::firmwares_of_disk(ctx, &disk, &log)?,
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
    let firmware = Firmware::find(mode)?;
    let scratch = tempfile::Builder::new()
        .prefix("webake-boot-")
        .tempdir_in(ws.scratch_root())
        .map_err(|e| Error::io(ws.scratch_root(), e))?;
    let name = scratch
        .path()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let _lease = webake_build::workspace::BakeLease::acquire(&ws.cache_dir, &name, "")?;
    let raw = scratch.path().join("disk.raw");
    run(
        &Cmd::new("qemu-img")
            .args(["convert", "-q", "-O", "raw"])
            .arg(&disk)
            .arg(&raw),
        &ctx.cancel,
        &mut |l| log.line("boot", l),
    )?;
    if opts.autologin {
        autologin(&raw, scratch.path())?;
    }
    let vars = firmware_state(&firmware, scratch.path())?;
    let (accel, why) = qemu::probe_accel(&firmware, opts.accel.or(ctx.settings.accel));
    let cmd = qemu::command(&qemu::Machine {
        accel,
        memory_mib: opts.memory_mib.max(512),
        firmware: &firmware,
        vars: Some(&vars),
        disk: &raw,
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
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// The UEFI variable store (a copy of the template) or SeaBIOS's serial console switch.
fn firmware_state(firmware: &Firmware, scratch: &Path) -> Result<std::path::PathBuf> {
    match firmware {
        Firmware::Uefi { vars_template, .. } => {
            let vars = scratch.join("OVMF_VARS.fd");
            std::fs::copy(vars_template, &vars).map_err(|e| Error::io(vars_template, e))?;
            Ok(vars)
        }
        Firmware::Bios => {
            let sercon = scratch.join("sercon-port");
            std::fs::write(&sercon, qemu::SERCON_PORT).map_err(|e| Error::io(&sercon, e))?;
            Ok(sercon)
        }
    }
}

/// Root on the serial console without a password, in the copy (debugfs, offline).
fn autologin(raw: &Path, scratch: &Path) -> Result<()> {
    let off = webake_build::extract::root_offset(raw)?;
    let dropin = scratch.join("autologin.conf");
    std::fs::write(&dropin, AUTOLOGIN).map_err(|e| Error::io(&dropin, e))?;
    let dir = "/etc/systemd/system/serial-getty@ttyS0.service.d";
    let cmds = format!(
        "mkdir {dir}\nwrite {} {dir}/webake-autologin.conf\n",
        dropin.display()
    );
    let cmdfile = scratch.join("debugfs.cmds");
    std::fs::write(&cmdfile, cmds).map_err(|e| Error::io(&cmdfile, e))?;
    capture(
        &Cmd::new("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(&cmdfile)
            .arg(format!("{}?offset={off}", raw.display())),
    )?;
    Ok(())
}
