//! `webake boot IMAGE|DISK`: boot a throwaway copy under qemu with the serial console on this
//! terminal (the interactive counterpart of `webake test`).

use std::process::ExitCode;

use clap::Args;
use webake_engine::Context;
use webake_engine::boottest::console::BootOptions;
use webake_engine::boottest::{Accel, BootMode, Subject};

use crate::cmd::CmdResult;

#[derive(Debug, Args)]
#[command(
    after_help = "The image is never written: qemu boots a copy, removed afterwards. \
Ctrl-A X quits qemu; Ctrl-A C switches to qemu's monitor; `poweroff` in the guest ends the boot."
)]
pub struct BootArgs {
    /// Image id / `family:NAME` / `NAME:VERSION`, or a path to a raw or qcow2 disk file
    #[arg(value_name = "IMAGE|DISK")]
    pub image: String,
    /// Firmware to boot under [default: the first the image declares, or the disk provides]
    #[arg(long, value_enum)]
    pub firmware: Option<Firmware>,
    /// Force the accelerator instead of probing
    #[arg(long)]
    pub accel: Option<Accel>,
    /// Guest memory in MiB
    #[arg(long, default_value_t = 1024)]
    pub memory: u32,
    /// Do not log root in on the serial console (the copy gets an autologin drop-in otherwise)
    #[arg(long)]
    pub no_autologin: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Firmware {
    /// OVMF
    Uefi,
    /// SeaBIOS
    Bios,
}

impl BootArgs {
    pub fn run(self, ctx: &Context<'_>) -> CmdResult {
        let subject = Subject::resolve(ctx, &self.image)?;
        let opts = BootOptions {
            firmware: self.firmware.map(|f| match f {
                Firmware::Uefi => BootMode::Uefi,
                Firmware::Bios => BootMode::Bios,
            }),
            accel: self.accel,
            memory_mib: self.memory,
            autologin: !self.no_autologin,
        };
        let code = webake_engine::boottest::console::boot(ctx, &subject, &opts)?;
        Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
    }
}
