//! Installing the boot-time identity agent into a tree (see crates/webake-agent/README.md).

use std::path::Path;

use webake_sys::Tree;
use webake_sys::process::{Cmd, capture};

use crate::error::{BuildError, Result};

/// The agent's systemd unit.
pub const UNIT: &str = include_str!("../../webake-agent/systemd/webake-agent.service");

/// The command that runs the agent binary on this host: itself, or under qemu-user.
fn agent_cmd(binary: &Path) -> Result<Cmd> {
    use webake_sys::sandbox::binfmt;
    match binfmt::elf_arch(binary) {
        Some(a) if !binfmt::is_native(a) => {
            let q = binfmt::qemu_arch(a).unwrap_or(a);
            let emu = format!("/usr/bin/qemu-{q}-static");
            if !Path::new(&emu).is_file() {
                return Err(BuildError::MissingTool {
                    tool: emu,
                    hint: "apt-get install qemu-user-static".into(),
                });
            }
            Ok(Cmd::new(emu).arg(binary))
        }
        _ => Ok(Cmd::new(binary)),
    }
}

/// The agent for `debian_arch` must be built for it.
pub fn check_agent_arch(binary: &Path, debian_arch: &str) -> Result<()> {
    match webake_sys::sandbox::binfmt::elf_arch(binary) {
        Some(a) if a == debian_arch => Ok(()),
        found => Err(BuildError::Invalid(format!(
            "the webake-agent binary {} is for {}, the image is {debian_arch}",
            binary.display(),
            found.unwrap_or("an unknown architecture")
        ))),
    }
}

/// Copy the agent binary, its unit and config into `tree`, enable it, and check the config.
pub fn install_agent(
    tree: &Path,
    binary: &Path,
    role: Option<&str>,
    template: Option<&str>,
) -> Result<()> {
    // Every path is resolved inside the tree: a symlink a step planted (say
    // network-online.target.wants -> a host directory) cannot lead a write out of it.
    let t = Tree::open(tree)?;
    let p = Path::new;
    for d in [
        "usr/local/bin",
        "etc/systemd/system/multi-user.target.wants",
        "etc/webake",
    ] {
        t.create_dir_all(p(d), 0o755)?;
    }
    let mut bin = std::fs::File::open(binary).map_err(|e| BuildError::io(binary, e))?;
    t.write_with(p("usr/local/bin/webake-agent"), 0o755, |f| {
        std::io::copy(&mut bin, f).map(|_| ())
    })?;
    t.write(
        p("etc/systemd/system/webake-agent.service"),
        UNIT.as_bytes(),
        0o644,
    )?;
    t.symlink(
        p("../webake-agent.service"),
        p("etc/systemd/system/multi-user.target.wants/webake-agent.service"),
    )?;
    let mut conf = String::from(
        "# Written by webake at bake time; see webake-agent(8) / crates/webake-agent/README.md\n",
    );
    if let Some(r) = role {
        conf.push_str(&format!("role = {r}\n"));
    }
    if let Some(tpl) = template {
        if tpl.contains('"') || tpl.contains('\n') {
            return Err(BuildError::Invalid(format!(
                "agent hostname template {tpl:?} must not contain quotes or newlines"
            )));
        }
        conf.push_str(&format!("template = \"{tpl}\"\n"));
    }
    t.write(p("etc/webake/agent.conf"), conf.as_bytes(), 0o644)?;
    // network-online.target must mean something for the agent to reach IMDS at boot.
    if t.exists(p("lib/systemd/system/systemd-networkd-wait-online.service")) {
        let wants = p("etc/systemd/system/network-online.target.wants");
        t.create_dir_all(wants, 0o755)?;
        let l = wants.join("systemd-networkd-wait-online.service");
        if t.metadata(&l)?.is_none() {
            t.symlink(
                p("/lib/systemd/system/systemd-networkd-wait-online.service"),
                &l,
            )?;
        }
    }
    // Validate the config as the agent will read it (no network). An agent for another
    // architecture (static, ours) runs under the host's qemu-user.
    capture(&agent_cmd(binary)?.arg("--root").arg(tree).arg("--check")).map_err(|e| {
        BuildError::Invalid(format!(
            "webake-agent --check rejected the configuration: {e}"
        ))
    })?;
    Ok(())
}
