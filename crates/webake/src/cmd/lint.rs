//! `webake lint IMAGE|DIR`: environment-agnostic and hygiene checks.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use webake_catalog::Catalog;
use webake_sys::process::Cmd;

use crate::settings::Settings;

#[derive(Debug, Args)]
pub struct LintArgs {
    /// A directory tree, a raw/qcow2 disk file, or a catalog image
    pub target: String,
    /// Rules to allow (repeatable)
    #[arg(long)]
    pub allow: Vec<String>,
    #[arg(long)]
    pub json: bool,
}

impl LintArgs {
    pub fn run(self, settings: &Settings) -> anyhow::Result<ExitCode> {
        let p = Path::new(&self.target);
        let _tmp;
        let root: PathBuf = if p.is_dir() {
            p.to_path_buf()
        } else {
            let disk = if p.is_file() {
                p.to_path_buf()
            } else {
                let img = Catalog::open(&settings.catalog)?.find_image(&self.target)?;
                PathBuf::from(
                    &img.artifacts
                        .iter()
                        .find(|a| a.format == "raw")
                        .or(img.artifacts.first())
                        .context("image has no artifacts")?
                        .path,
                )
            };
            let t = tempfile::tempdir().context("temp dir")?;
            extract_root(&disk, t.path())?;
            let r = t.path().join("root");
            _tmp = t;
            r
        };
        let cfg = webake_inventory::LintConfig {
            allow: self.allow,
            extra_secrets: vec![],
            builder_resolv_conf: std::fs::read("/etc/resolv.conf").ok(),
        };
        let findings = webake_inventory::lint(&root, &cfg)?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&findings)?);
        } else if findings.is_empty() {
            println!("{}: clean", self.target);
        } else {
            for f in &findings {
                println!(
                    "{:<8} {:<22} {}: {}",
                    format!("{:?}", f.severity).to_lowercase(),
                    f.rule.id(),
                    f.path,
                    f.message
                );
            }
        }
        let errors = findings
            .iter()
            .filter(|f| f.severity == webake_inventory::Severity::Error)
            .count();
        Ok(if errors > 0 {
            ExitCode::from(crate::exit::FAILURE)
        } else {
            ExitCode::SUCCESS
        })
    }
}

/// Extract the root filesystem of a disk image into `dir/root` offline
/// ([`webake_build::extract`]; crafted disks are refused, never extracted onto the host).
pub fn extract_root(disk: &Path, dir: &Path) -> anyhow::Result<()> {
    let raw = dir.join("disk.raw");
    webake_sys::process::capture(
        &Cmd::new("qemu-img")
            .args(["convert", "-q", "-O", "raw"])
            .arg(disk)
            .arg(&raw),
    )?;
    // The same offline extraction a base AMI uses.
    crate::cmd::base_ami::extract_rootfs(&raw, &dir.join("root"))
        .with_context(|| format!("extracting the root filesystem of {}", disk.display()))?;
    std::fs::remove_file(&raw)?;
    Ok(())
}
