//! qemu for the boot test: the UEFI firmware, whether KVM really works, the command line, and
//! the console milestones shown as progress.

use std::path::{Path, PathBuf};

use webake_sys::process::Cmd;

use crate::{Error, Result};

/// The accelerator of a boot test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl std::str::FromStr for Accel {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            o => Err(format!("unknown accelerator {o:?} (kvm or tcg)")),
        }
    }
}

/// OVMF firmware files (code, vars template).
pub fn ovmf() -> Result<(PathBuf, PathBuf)> {
    for (c, v) in [
        (
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
        ),
        (
            "/usr/share/OVMF/OVMF_CODE.fd",
            "/usr/share/OVMF/OVMF_VARS.fd",
        ),
    ] {
        if Path::new(c).is_file() && Path::new(v).is_file() {
            return Ok((c.into(), v.into()));
        }
    }
    Err(Error::Failed(
        "UEFI firmware not found (/usr/share/OVMF/OVMF_CODE*.fd): apt-get install ovmf".into(),
    ))
}

/// Does KVM really boot UEFI firmware here? Some paravirtual /dev/kvm fail at once with an
/// emulation failure; then software emulation (TCG) is used. Returns the choice and why.
pub fn probe_accel(code: &Path, forced: Option<Accel>) -> (Accel, String) {
    if let Some(a) = forced {
        return (a, "forced".into());
    }
    if !Path::new("/dev/kvm").exists() {
        return (Accel::Tcg, "/dev/kvm is absent".into());
    }
    // Run the firmware alone under KVM for a few seconds: a healthy KVM keeps running (and
    // prints the firmware banner); a broken one exits with an emulation failure.
    let cmd = Cmd::new("timeout")
        .args([
            "-s",
            "KILL",
            "6",
            "qemu-system-x86_64",
            "-accel",
            "kvm",
            "-m",
            "256",
        ])
        .args(["-display", "none", "-nodefaults", "-serial", "stdio"])
        .args(["-monitor", "none", "-no-reboot", "-drive"])
        .arg(format!(
            "if=pflash,format=raw,readonly=on,file={}",
            code.display()
        ));
    let mut text = String::new();
    let r = webake_sys::process::run(&cmd, &webake_sys::CancelToken::new(), &mut |l| {
        text.push_str(l);
        text.push('\n');
    });
    let killed_by_timeout = matches!(
        &r,
        Err(webake_sys::ProcessError::Failed {
            code: None | Some(137) | Some(124),
            ..
        })
    );
    if killed_by_timeout
        && !text.contains("emulation failure")
        && !text.contains("KVM internal error")
    {
        return (Accel::Kvm, "KVM boots the firmware".into());
    }
    let why = text
        .lines()
        .find(|l| l.contains("error") || l.contains("failure"))
        .unwrap_or("qemu exited")
        .trim()
        .to_string();
    (
        Accel::Tcg,
        format!("KVM cannot run the firmware here ({why})"),
    )
}

/// Everything the qemu command line depends on.
pub struct Machine<'a> {
    pub accel: Accel,
    pub memory_mib: u32,
    pub code: &'a Path,
    pub vars: &'a Path,
    pub disk: &'a Path,
    /// The guestfwd bridge to the metadata fake: (this executable, its port).
    pub imds: Option<(&'a Path, u16)>,
}

/// The qemu command of a boot test (pure: tested without qemu).
pub fn command(m: &Machine<'_>) -> Cmd {
    let netdev = match m.imds {
        // Guest network 169.254.169.0/24 so that the real IMDS address is inside it; a
        // guestfwd connects 169.254.169.254:80 to the fake on the host's loopback. restrict=on
        // cuts the guest off from everything else (forwarding rules still apply). `cmd:` spawns
        // one bridge per guest connection (a `tcp:` chardev would be a single connection made
        // at qemu start, shared by every guest connection).
        Some((exe, port)) => format!(
            "user,id=n0,restrict=on,net=169.254.169.0/24,host=169.254.169.1,dhcpstart=169.254.169.15,guestfwd=tcp:169.254.169.254:80-cmd:{} {} 127.0.0.1:{port}",
            exe.display(),
            super::imds::TCP_PIPE_ARG
        ),
        None => "user,id=n0,restrict=on".to_string(),
    };
    Cmd::new("qemu-system-x86_64")
        .args(["-accel", m.accel.as_str(), "-machine", "q35"])
        .args(["-m", &m.memory_mib.to_string(), "-smp", "2"])
        .args(["-display", "none", "-nodefaults", "-no-reboot"])
        .args(["-monitor", "none", "-serial", "stdio"])
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,readonly=on,file={}",
            m.code.display()
        ))
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,file={}", m.vars.display()))
        .arg("-drive")
        .arg(format!(
            "if=virtio,format=raw,file={},cache=unsafe",
            m.disk.display()
        ))
        .args(["-netdev", &netdev, "-device", "virtio-net-pci,netdev=n0"])
        .args(["-cpu", if m.accel == Accel::Kvm { "host" } else { "max" }])
}

/// The boot milestones recognized on the console, in order.
pub const MILESTONES: &[(&str, &str)] = &[
    ("BdsDxe:", "firmware: booting the disk"),
    ("Linux version", "kernel started"),
    ("Run /init as init process", "initramfs started"),
    ("systemd[1]: Detected", "systemd started"),
    (
        "Reached target multi-user.target",
        "multi-user target reached",
    ),
    ("WEBAKE-TEST-BEGIN", "checks running"),
];

/// The milestone a console line marks, if any.
pub fn milestone(line: &str) -> Option<&'static str> {
    MILESTONES
        .iter()
        .find(|(needle, _)| line.contains(needle))
        .map(|(_, what)| *what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_connects_only_the_metadata_address() {
        let c = command(&Machine {
            accel: Accel::Tcg,
            memory_mib: 1024,
            code: Path::new("/c.fd"),
            vars: Path::new("/v.fd"),
            disk: Path::new("/d.raw"),
            imds: Some((Path::new("/w"), 4242)),
        })
        .to_string();
        assert!(c.contains("restrict=on"), "{c}");
        assert!(
            c.contains("guestfwd=tcp:169.254.169.254:80-cmd:/w __webake-tcp-pipe 127.0.0.1:4242"),
            "{c}"
        );
        assert!(c.contains("-cpu max"), "{c}");
        assert_eq!(
            milestone("[    0.000000] Linux version 6.1.0"),
            Some("kernel started")
        );
        assert_eq!(milestone("nothing"), None);
    }
}
