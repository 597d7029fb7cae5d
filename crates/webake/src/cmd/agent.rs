//! Installing the boot-time identity agent into a tree (see crates/webake-agent/README.md).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context as _, bail};

pub const UNIT: &str = include_str!("../../../webake-agent/systemd/webake-agent.service");

/// Copy the agent binary, its unit and config into `tree`, enable it, and check the config.
pub fn install_agent(
    tree: &Path,
    binary: &Path,
    role: Option<&str>,
    template: Option<&str>,
) -> anyhow::Result<()> {
    let inner = |rel: &str| {
        webake_build::finalize::inner(tree, rel)
            .with_context(|| format!("/{rel} in the image is under a symlink"))
    };
    for d in [
        "usr/local/bin",
        "etc/systemd/system/multi-user.target.wants",
        "etc/webake",
    ] {
        let p = inner(d)?;
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
    }
    let bin = inner("usr/local/bin/webake-agent")?;
    let _ = std::fs::remove_file(&bin);
    std::fs::copy(binary, &bin)
        .with_context(|| format!("copying {} into the image", binary.display()))?;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))?;
    let unit = inner("etc/systemd/system/webake-agent.service")?;
    let _ = std::fs::remove_file(&unit);
    std::fs::write(&unit, UNIT)?;
    let link = inner("etc/systemd/system/multi-user.target.wants/webake-agent.service")?;
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink("../webake-agent.service", &link)?;
    let mut conf = String::from(
        "# Written by webake at bake time; see webake-agent(8) / crates/webake-agent/README.md\n",
    );
    if let Some(r) = role {
        conf.push_str(&format!("role = {r}\n"));
    }
    if let Some(t) = template {
        if t.contains('"') || t.contains('\n') {
            bail!("agent hostname template {t:?} must not contain quotes or newlines");
        }
        conf.push_str(&format!("template = \"{t}\"\n"));
    }
    let conf_path = inner("etc/webake/agent.conf")?;
    let _ = std::fs::remove_file(&conf_path);
    std::fs::write(&conf_path, conf)?;
    // network-online.target must mean something for the agent to reach IMDS at boot.
    let wait_online = tree.join("lib/systemd/system/systemd-networkd-wait-online.service");
    if wait_online.exists() {
        let d = inner("etc/systemd/system/network-online.target.wants")?;
        std::fs::create_dir_all(&d)?;
        let l = d.join("systemd-networkd-wait-online.service");
        if std::fs::symlink_metadata(&l).is_err() {
            std::os::unix::fs::symlink(
                "/lib/systemd/system/systemd-networkd-wait-online.service",
                &l,
            )?;
        }
    }
    // Validate the config as the agent will read it (no network).
    let out = std::process::Command::new(binary)
        .arg("--root")
        .arg(tree)
        .arg("--check")
        .output()
        .with_context(|| format!("running {} --check", binary.display()))?;
    if !out.status.success() {
        bail!(
            "webake-agent --check rejected the configuration: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
