//! `webake test IMAGE|DISK`: boot an image under qemu (UEFI/OVMF) and run the recipe's checks
//! (the engine's boot test; the artifact itself is never modified).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use webake_engine::Context;
use webake_engine::boottest::{Accel, BootMode, Subject, TestOptions};

use crate::args::VarArgs;
use crate::cmd::CmdResult;
use crate::output::Output;

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Image id / `family:NAME`, or a path to a raw or qcow2 disk file
    pub image: String,
    /// Recipe whose `test:` section to use (default: the image's own recipe)
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    #[command(flatten)]
    pub vars: VarArgs,
    /// Seconds to wait (default: the recipe's, or 120; multiplied by 4 under TCG)
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Force the accelerator instead of probing
    #[arg(long)]
    pub accel: Option<Accel>,
    /// Firmware to boot under [default: all: every firmware the image declares, or the disk's
    /// partitions provide]
    #[arg(long, value_enum, default_value_t = FirmwareArg::All)]
    pub firmware: FirmwareArg,
    /// Boot the checks' VM through the firmware and GRUB too (default: the recipe's
    /// `test.direct_kernel`: the disk's kernel booted directly while the firmware path is
    /// proven alongside, up to that kernel)
    #[arg(long)]
    pub full_boot: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FirmwareArg {
    /// OVMF
    Uefi,
    /// SeaBIOS
    Bios,
    /// One boot per firmware of the image
    All,
}

impl TestArgs {
    pub fn run(self, ctx: &Context<'_>, out: &Output) -> CmdResult {
        let subject = Subject::resolve(ctx, &self.image)?;
        let recipe = match self.recipe.clone().or_else(|| subject.recipe()) {
            Some(r) => self.vars.load(&r, ctx.reporter)?.recipe.test,
            None => None,
        };
        let mut spec = recipe.unwrap_or_else(webake_engine::boottest::default_spec);
        if let Some(t) = self.timeout {
            spec.timeout_secs = t;
        }
        if self.full_boot {
            spec.direct_kernel = false;
        }
        let opts = TestOptions {
            accel: self.accel,
            firmwares: match self.firmware {
                FirmwareArg::Uefi => vec![BootMode::Uefi],
                FirmwareArg::Bios => vec![BootMode::Bios],
                FirmwareArg::All => vec![],
            },
            arch: None,
        };
        let report = webake_engine::boottest::test_subject(ctx, &subject, &spec, &opts)?;
        out.result(&report, |r| {
            format!(
                "boot test passed: {} under {} ({} check(s) on a {} kernel boot, {}, {:.1}s)\n",
                self.image,
                r.firmwares.join(" and "),
                r.checks_passed,
                r.kernel_boot,
                r.accel,
                r.seconds
            )
        })?;
        Ok(ExitCode::SUCCESS)
    }
}
