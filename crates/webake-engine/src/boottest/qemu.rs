//! qemu for the boot test: the UEFI firmware, whether KVM really works, the command line, and
//! the console milestones shown as progress.

use std::path::{Path, PathBuf};

use webake_spec::Architecture;
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

/// The firmware a boot test runs under, with its files.
#[derive(Debug, Clone)]
pub enum Firmware {
    /// OVMF (x86-64) or AAVMF (arm64): its code and the template of its variable store
    /// (copied per boot).
    Uefi {
        code: PathBuf,
        vars_template: PathBuf,
        arch: Architecture,
    },
    /// SeaBIOS, qemu's default firmware.
    Bios,
}

impl Firmware {
    /// The firmware files for `mode` on a machine of `arch`, or what to install.
    pub fn find_for(mode: webake_spec::BootMode, arch: Architecture) -> Result<Self> {
        match (mode, arch) {
            (webake_spec::BootMode::Uefi, Architecture::X86_64) => {
                let (code, vars_template) = ovmf()?;
                Ok(Firmware::Uefi {
                    code,
                    vars_template,
                    arch,
                })
            }
            (webake_spec::BootMode::Uefi, Architecture::Arm64) => {
                let (code, vars_template) = aavmf()?;
                Ok(Firmware::Uefi {
                    code,
                    vars_template,
                    arch,
                })
            }
            (webake_spec::BootMode::Bios, Architecture::Arm64) => Err(Error::Invalid(
                "arm64 machines boot with UEFI only; there is no BIOS boot to test".into(),
            )),
            (webake_spec::BootMode::Bios, Architecture::X86_64) => {
                if !Path::new(SEABIOS).is_file() {
                    return Err(Error::Failed(format!(
                        "BIOS firmware not found ({SEABIOS}): apt-get install seabios"
                    )));
                }
                Ok(Firmware::Bios)
            }
        }
    }

    /// The machine's architecture.
    pub fn arch(&self) -> Architecture {
        match self {
            Firmware::Uefi { arch, .. } => *arch,
            Firmware::Bios => Architecture::X86_64,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Firmware::Uefi { .. } => "uefi",
            Firmware::Bios => "bios",
        }
    }

    /// How it is shown in progress: `UEFI /usr/share/OVMF/...` or `BIOS (SeaBIOS)`.
    pub fn describe(&self) -> String {
        match self {
            Firmware::Uefi { code, .. } => format!("UEFI {}", code.display()),
            Firmware::Bios => "BIOS (SeaBIOS)".to_string(),
        }
    }
}

/// qemu's default BIOS (the seabios package).
pub const SEABIOS: &str = "/usr/share/seabios/bios-256k.bin";

/// The content of SeaBIOS's `etc/sercon-port` fw_cfg file: the first serial port (0x3f8),
/// little-endian.
pub const SERCON_PORT: [u8; 8] = [0xf8, 0x03, 0, 0, 0, 0, 0, 0];

/// OVMF firmware files (code, vars template).
fn ovmf() -> Result<(PathBuf, PathBuf)> {
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

/// AAVMF (arm64 UEFI for qemu's virt machine) files (code, vars template).
fn aavmf() -> Result<(PathBuf, PathBuf)> {
    let (c, v) = (
        "/usr/share/AAVMF/AAVMF_CODE.fd",
        "/usr/share/AAVMF/AAVMF_VARS.fd",
    );
    if Path::new(c).is_file() && Path::new(v).is_file() {
        return Ok((c.into(), v.into()));
    }
    Err(Error::Failed(format!(
        "arm64 UEFI firmware not found ({c}): apt-get install qemu-efi-aarch64"
    )))
}

/// qemu's system emulator for `arch`, its machine and the guest's serial console device.
pub fn system(arch: Architecture) -> (&'static str, &'static str, &'static str) {
    match arch {
        Architecture::X86_64 => ("qemu-system-x86_64", "q35", "ttyS0"),
        Architecture::Arm64 => ("qemu-system-aarch64", "virt", "ttyAMA0"),
    }
}

/// Does KVM really boot the firmware here? Some paravirtual /dev/kvm fail at once with an
/// emulation failure; then software emulation (TCG) is used. Returns the choice and why.
pub fn probe_accel(firmware: &Firmware, forced: Option<Accel>) -> (Accel, String) {
    if firmware.arch() != Architecture::host() {
        return (
            Accel::Tcg,
            format!(
                "a {} guest on this {} host is emulated",
                firmware.arch(),
                Architecture::host()
            ),
        );
    }
    if let Some(a) = forced {
        return (a, "forced".into());
    }
    if !Path::new("/dev/kvm").exists() {
        return (Accel::Tcg, "/dev/kvm is absent".into());
    }
    // A KVM without hardware virtualization (e.g. kvm_pvm, which runs 64-bit guests only)
    // starts SeaBIOS and GRUB but never gets through GRUB's 16-bit kernel loading: measured
    // here, no "Linux version" within 120 s, while TCG boots in about 30 s.
    if matches!(firmware, Firmware::Bios) && !hardware_virtualization() {
        return (
            Accel::Tcg,
            "KVM here has no hardware virtualization (no vmx/svm), which a BIOS boot's 16-bit code needs"
                .into(),
        );
    }
    // Run the firmware alone under KVM for up to a few seconds: a broken KVM reports an
    // emulation failure or internal error at once (and then hangs, paused: stop it there); a
    // healthy one prints the firmware's first lines on the serial console.
    let mut args: Vec<String> = [
        "-accel",
        "kvm",
        "-m",
        "256",
        "-display",
        "none",
        "-nodefaults",
        "-serial",
        "stdio",
        "-monitor",
        "none",
        "-no-reboot",
    ]
    .map(String::from)
    .to_vec();
    if let Firmware::Uefi { code, .. } = firmware {
        args.push("-drive".into());
        args.push(format!(
            "if=pflash,format=raw,readonly=on,file={}",
            code.display()
        ));
    }
    let (text, verdict) = watch_kvm(&args, std::time::Duration::from_secs(6));
    if verdict != Some(false) {
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

/// Run `qemu-system-x86_64 ARGS` (stdout and stderr merged) until a line decides whether KVM
/// works (`Some(true)`: the firmware printed its banner or boot lines; `Some(false)`: an emulation
/// failure, an internal error, or qemu exited) or `limit` passes (`None`: still running,
/// silent). qemu is killed either way. Returns what it printed.
fn watch_kvm(args: &[String], limit: std::time::Duration) -> (String, Option<bool>) {
    use std::io::BufRead;
    let child = std::process::Command::new("sh")
        .arg("-c")
        .arg("exec qemu-system-x86_64 \"$@\" 2>&1")
        .arg("qemu")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        return (
            "qemu-system-x86_64 could not be started".into(),
            Some(false),
        );
    };
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let out = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(out)
            .split(b'\n')
            .map_while(|l| l.ok())
        {
            if tx
                .send(String::from_utf8_lossy(&line).into_owned())
                .is_err()
            {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + limit;
    let mut text = String::new();
    let verdict = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                text.push_str(&line);
                text.push('\n');
                if line.contains("emulation failure") || line.contains("KVM internal error") {
                    break Some(false);
                }
                if ["BdsDxe", "UEFI", "SeaBIOS", "Booting"]
                    .iter()
                    .any(|m| line.contains(m))
                {
                    break Some(true);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break None,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break Some(false),
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    (text, verdict)
}

/// Does the CPU offer hardware virtualization (`vmx` or `svm`)?
fn hardware_virtualization() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| {
        c.lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
    })
}

/// Everything the qemu command line depends on.
pub struct Machine<'a> {
    pub accel: Accel,
    pub memory_mib: u32,
    pub firmware: &'a Firmware,
    /// UEFI: the variable store of this boot (a copy of the template). BIOS: the fw_cfg file
    /// that turns on SeaBIOS's serial console (its own and GRUB's messages on the console).
    pub vars: Option<&'a Path>,
    pub disk: &'a Path,
    pub access: DiskAccess,
    /// Boot this kernel directly (no firmware boot of the disk; `vars` is ignored).
    pub kernel: Option<&'a super::direct::Kernel>,
    /// The guestfwd bridge to the metadata fake: (this executable, its port).
    pub imds: Option<(&'a Path, u16)>,
    /// `webake boot`: the serial console and qemu's monitor multiplexed on the terminal
    /// (Ctrl-A X quits, Ctrl-A C switches to the monitor).
    pub interactive: bool,
}

/// How the VM opens its disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskAccess {
    /// A throw-away raw copy, written by the guest.
    Scratch,
    /// The artifact itself (format `raw` or `qcow2`), read-only: a firmware boot that is
    /// stopped once the kernel starts (one vCPU is enough).
    ReadOnly(&'static str),
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
    let arch = m.firmware.arch();
    let (qemu, machine, _) = system(arch);
    let mut cmd = Cmd::new(qemu)
        .args(["-accel", m.accel.as_str(), "-machine", machine])
        .args(["-m", &m.memory_mib.to_string()])
        .args(match m.access {
            DiskAccess::Scratch => ["-smp", "2"],
            DiskAccess::ReadOnly(_) => ["-smp", "1"],
        })
        .args(["-display", "none", "-nodefaults", "-no-reboot"])
        .args(if m.interactive {
            ["-monitor", "none", "-serial", "mon:stdio"]
        } else {
            ["-monitor", "none", "-serial", "stdio"]
        });
    // UEFI: OVMF in flash; BIOS: qemu's default SeaBIOS; a direct kernel boot: qemu loads
    // the kernel and initrd itself (x86-64: through SeaBIOS's linuxboot ROM).
    match (m.kernel, m.firmware, m.vars) {
        (Some(k), _, _) => {
            cmd = cmd.arg("-kernel").arg(&k.kernel);
            if let Some(i) = &k.initrd {
                cmd = cmd.arg("-initrd").arg(i);
            }
            cmd = cmd.arg("-append").arg(&k.cmdline);
        }
        (None, Firmware::Uefi { code, .. }, Some(vars)) => {
            cmd = cmd
                .arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,readonly=on,file={}",
                    code.display()
                ))
                .arg("-drive")
                .arg(format!("if=pflash,format=raw,file={}", vars.display()));
        }
        (None, Firmware::Bios, Some(sercon)) => {
            cmd = cmd
                .arg("-fw_cfg")
                .arg(format!("name=etc/sercon-port,file={}", sercon.display()));
        }
        _ => {}
    }
    let drive = match m.access {
        DiskAccess::Scratch => format!(
            "if=virtio,format=raw,file={},cache=unsafe",
            m.disk.display()
        ),
        DiskAccess::ReadOnly(format) => {
            format!(
                "if=virtio,format={format},file={},readonly=on",
                m.disk.display()
            )
        }
    };
    cmd = cmd.arg("-drive").arg(drive);
    // A firmware boot up to the kernel has no network: with a NIC, a firmware that cannot boot
    // the disk tries PXE next and waits for minutes instead of failing. romfile=: no iPXE
    // option ROM for the firmware to load and run (0.5 s under TCG).
    if m.access == DiskAccess::Scratch {
        cmd = cmd.args([
            "-netdev",
            &netdev,
            "-device",
            "virtio-net-pci,netdev=n0,romfile=",
        ]);
    }
    cmd.args(["-cpu", cpu(arch, m.accel)])
}

/// The guest CPU: the host's under KVM; else everything TCG emulates, for arm64 with the
/// implementation-defined pointer authentication (QARMA, the architected one, is slow to
/// emulate and buys a test nothing).
fn cpu(arch: Architecture, accel: Accel) -> &'static str {
    match (accel, arch) {
        (Accel::Kvm, _) => "host",
        (Accel::Tcg, Architecture::Arm64) => "max,pauth-impdef=on",
        (Accel::Tcg, Architecture::X86_64) => "max",
    }
}

/// The boot milestones recognized on the console, in order.
pub const MILESTONES: &[(&str, &str)] = &[
    ("BdsDxe:", "firmware: booting the disk"),
    ("Booting from Hard Disk", "firmware: booting the disk"),
    ("Linux version", "kernel started"),
    ("Run /init as init process", "initramfs started"),
    ("systemd[1]: Detected", "systemd started"),
    (
        "Starting webake-ssh-keygen",
        "generating the SSH host keys (first boot)",
    ),
    // Not its end: systemd stops printing status lines once a getty owns the console, and
    // getty's prompt has no newline (the console is read by lines).
    (
        "Reached target multi-user.target",
        "multi-user target reached",
    ),
    ("WEBAKE-TEST-BEGIN", "checks running"),
];

/// The milestone a console line marks, if any. systemd's status lines color unit names
/// (`Reached target \e[0;1;39mmulti-user.target`): escape sequences are ignored.
pub fn milestone(line: &str) -> Option<&'static str> {
    let plain = without_escapes(line);
    MILESTONES
        .iter()
        .find(|(needle, _)| plain.contains(needle))
        .map(|(_, what)| *what)
}

/// One VM's serial console as webake follows it: each line logged under the VM's log step,
/// the last lines kept for an error message, each milestone reported once with the seconds
/// since the VM started (prefixed, e.g. `uefi: `, for a VM beside the checks' one).
pub struct ConsoleWatch<'a> {
    log_step: &'a str,
    prefix: String,
    reporter: &'a dyn crate::events::Reporter,
    log: &'a webake_build::bake::BakeLog,
    keep: usize,
    tail: std::collections::VecDeque<String>,
    milestones: Milestones,
    t0: std::time::Instant,
}

impl<'a> ConsoleWatch<'a> {
    pub fn new(
        log_step: &'a str,
        prefix: String,
        keep: usize,
        reporter: &'a dyn crate::events::Reporter,
        log: &'a webake_build::bake::BakeLog,
    ) -> Self {
        Self {
            log_step,
            prefix,
            reporter,
            log,
            keep,
            tail: Default::default(),
            milestones: Milestones::default(),
            t0: std::time::Instant::now(),
        }
    }

    /// Log `line` (a console line, its CR removed) and keep it for the tail.
    pub fn record(&mut self, line: &str) {
        self.log.line(self.log_step, line);
        if self.tail.len() == self.keep {
            self.tail.pop_front();
        }
        self.tail.push_back(line.to_string());
    }

    /// Report the milestone `line` marks, the first time it is seen.
    pub fn milestone(&mut self, line: &str) {
        if let Some(m) = self.milestones.first(line) {
            let msg = format!("{}{m} ({:.1}s)", self.prefix, self.secs());
            self.reporter.event(&crate::events::Event::Output {
                step: "boot test",
                line: &msg,
            });
        }
    }

    /// Seconds since the VM started.
    pub fn secs(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    /// The kept lines, indented for an error message.
    pub fn tail_text(&self) -> String {
        self.tail
            .iter()
            .map(|l| format!("    | {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The milestones one VM has shown so far: each is reported once (OVMF prints `BdsDxe:` twice,
/// systemd `Detected` twice).
#[derive(Default)]
struct Milestones(Vec<&'static str>);

impl Milestones {
    /// The milestone `line` marks, unless it was seen before.
    fn first(&mut self, line: &str) -> Option<&'static str> {
        let m = milestone(line)?;
        if self.0.contains(&m) {
            return None;
        }
        self.0.push(m);
        Some(m)
    }
}

/// `line` without its ANSI CSI sequences (`ESC [ parameters final-byte`).
fn without_escapes(line: &str) -> std::borrow::Cow<'_, str> {
    if !line.contains('\x1b') {
        return line.into();
    }
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        if chars.next() == Some('[') {
            // Parameters and intermediates up to the final byte (@ to ~).
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TCG machine with 1 GiB, a scratch disk and no network; tests change what they test.
    fn machine(firmware: &Firmware) -> Machine<'_> {
        Machine {
            accel: Accel::Tcg,
            memory_mib: 1024,
            firmware,
            vars: Some(Path::new("/v.fd")),
            disk: Path::new("/d.raw"),
            access: DiskAccess::Scratch,
            kernel: None,
            imds: None,
            interactive: false,
        }
    }

    #[test]
    fn the_command_connects_only_the_metadata_address() {
        let uefi = Firmware::Uefi {
            code: "/c.fd".into(),
            vars_template: "/t.fd".into(),
            arch: Architecture::X86_64,
        };
        let c = command(&Machine {
            imds: Some((Path::new("/w"), 4242)),
            ..machine(&uefi)
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

    /// systemd's colored status lines, as the serial console shows them.
    #[test]
    fn milestones_are_found_in_colored_status_lines() {
        let line = |s: &str| s.replace("ESC", "\x1b");
        assert_eq!(
            milestone(&line(
                "[ESC[0;32m  OK  ESC[0m] Reached target ESC[0;1;39mmulti-user.targetESC[0m - Multi-User System."
            )),
            Some("multi-user target reached")
        );
        assert_eq!(
            milestone(&line(
                "         Starting ESC[0;1;39mwebake-ssh-keygen…ebake images ship without them)..."
            ))
            .map(|m| m.starts_with("generating the SSH host keys")),
            Some(true)
        );
        assert_eq!(
            milestone("localhost login: WEBAKE-TEST-BEGIN"),
            Some("checks running")
        );
        let mut seen = Milestones::default();
        assert_eq!(
            seen.first("BdsDxe: loading Boot0001"),
            Some("firmware: booting the disk")
        );
        assert_eq!(seen.first("BdsDxe: starting Boot0001"), None);
        assert_eq!(without_escapes(&line("aESC[0;1;39mbESC[0mc")), "abc");
        assert_eq!(without_escapes("plain"), "plain");
    }

    #[test]
    fn an_arm64_guest_is_a_virt_machine_emulated_with_aavmf() {
        let fw = Firmware::Uefi {
            code: "/usr/share/AAVMF/AAVMF_CODE.fd".into(),
            vars_template: "/t.fd".into(),
            arch: Architecture::Arm64,
        };
        let c = command(&machine(&fw)).to_string();
        assert!(
            c.starts_with("qemu-system-aarch64 -accel tcg -machine virt"),
            "{c}"
        );
        assert!(c.contains("-cpu max,pauth-impdef=on"), "{c}");
        assert!(c.contains("file=/usr/share/AAVMF/AAVMF_CODE.fd"), "{c}");
        if Architecture::host() == Architecture::X86_64 {
            let (a, why) = probe_accel(&fw, Some(Accel::Kvm));
            assert_eq!(a, Accel::Tcg, "{why}");
            assert!(why.contains("arm64 guest"), "{why}");
        }
        assert!(Firmware::find_for(webake_spec::BootMode::Bios, Architecture::Arm64).is_err());
        assert_eq!(system(Architecture::Arm64).2, "ttyAMA0");
    }

    #[test]
    fn a_direct_boot_loads_the_kernel_and_a_proof_opens_the_artifact_read_only() {
        let uefi = Firmware::Uefi {
            code: "/c.fd".into(),
            vars_template: "/t.fd".into(),
            arch: Architecture::X86_64,
        };
        let kernel = super::super::direct::Kernel {
            kernel: "/s/vmlinuz".into(),
            initrd: Some("/s/initrd.img".into()),
            cmdline: "root=UUID=x ro console=ttyS0,115200n8".into(),
            image_path: "/boot/vmlinuz-6.1".into(),
        };
        let direct = command(&Machine {
            kernel: Some(&kernel),
            ..machine(&uefi)
        });
        let argv: Vec<String> = direct.to_string().split(' ').map(String::from).collect();
        let after = |flag: &str| {
            argv.iter()
                .position(|a| a == flag)
                .map(|i| argv[i + 1].clone())
        };
        assert_eq!(after("-kernel").as_deref(), Some("/s/vmlinuz"));
        assert_eq!(after("-initrd").as_deref(), Some("/s/initrd.img"));
        assert_eq!(after("-smp").as_deref(), Some("2"));
        assert!(!direct.to_string().contains("pflash"), "{direct}");
        let proof = command(&Machine {
            memory_mib: 512,
            vars: Some(Path::new("/v1.fd")),
            disk: Path::new("/img/disk.qcow2"),
            access: DiskAccess::ReadOnly("qcow2"),
            ..machine(&uefi)
        })
        .to_string();
        assert!(
            proof.contains("if=virtio,format=qcow2,file=/img/disk.qcow2,readonly=on"),
            "{proof}"
        );
        assert!(
            proof.contains("file=/v1.fd") && proof.contains("-smp 1"),
            "{proof}"
        );
        assert!(
            !proof.contains("-kernel") && !proof.contains("cache=unsafe"),
            "{proof}"
        );
    }

    #[test]
    fn a_bios_boot_has_no_flash_and_a_serial_bios_console() {
        let c = command(&Machine {
            vars: Some(Path::new("/s/sercon-port")),
            interactive: true,
            ..machine(&Firmware::Bios)
        })
        .to_string();
        assert!(c.contains("-serial mon:stdio"), "{c}");
        assert!(!c.contains("pflash"), "{c}");
        assert!(
            c.contains("name=etc/sercon-port,file=/s/sercon-port"),
            "{c}"
        );
        assert_eq!(
            milestone("Booting from Hard Disk..."),
            Some("firmware: booting the disk")
        );
    }
}
