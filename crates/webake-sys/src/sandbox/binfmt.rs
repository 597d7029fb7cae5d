//! Running another architecture's programs in the sandbox: qemu-user, registered in the
//! sandbox's *own* binfmt_misc instance.
//!
//! Since Linux 6.7 every user namespace that mounts binfmt_misc gets an instance of its own;
//! registrations there apply to programs started in that user namespace and its children, and
//! vanish with it. The sandbox's PID 1 mounts one at `/proc/sys/fs/binfmt_misc` (of its
//! private `/proc/sys`) and registers the emulator with the `F` flag, so the kernel opens the
//! host's qemu binary once, at registration, before `pivot_root`: nothing is copied into the
//! image, and the host's own registrations (`/proc/sys/fs/binfmt_misc` of the host) are never
//! read or written.
//!
//! The registration lines come from the host's qemu-user-static package
//! (`/usr/lib/binfmt.d/qemu-ARCH.conf`), as systemd-binfmt would read them.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use super::helper::mount_at;

/// Where Debian's qemu-user-static puts its binfmt.d registration lines.
pub const BINFMT_D: &str = "/usr/lib/binfmt.d";

/// The qemu name of a Debian architecture (`arm64` -> `aarch64`), for the ones webake bakes.
pub fn qemu_arch(debian_arch: &str) -> Option<&'static str> {
    Some(match debian_arch {
        "arm64" | "aarch64" => "aarch64",
        "amd64" | "x86_64" => "x86_64",
        "armhf" | "armel" => "arm",
        "riscv64" => "riscv64",
        "ppc64el" => "ppc64le",
        "s390x" => "s390x",
        "i386" => "i386",
        _ => return None,
    })
}

/// The Debian name of the architecture webake itself runs on.
pub fn host_debian_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "i386",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        "powerpc64" => "ppc64el",
        other => other,
    }
}

/// Does the host run `debian_arch` programs natively?
pub fn is_native(debian_arch: &str) -> bool {
    qemu_arch(debian_arch) == qemu_arch(host_debian_arch())
}

/// The binfmt_misc registration line that runs `debian_arch` programs under qemu-user, from
/// the host's binfmt.d, with the `F` flag added (the interpreter is opened at registration).
/// An error says what to install.
pub fn registration(debian_arch: &str) -> Result<String, String> {
    registration_in(Path::new(BINFMT_D), debian_arch)
}

fn registration_in(dir: &Path, debian_arch: &str) -> Result<String, String> {
    let q = qemu_arch(debian_arch)
        .ok_or_else(|| format!("webake cannot emulate architecture {debian_arch:?}"))?;
    let conf = dir.join(format!("qemu-{q}.conf"));
    let text = std::fs::read_to_string(&conf).map_err(|e| {
        format!(
            "running {debian_arch} programs on this {} host needs qemu-user: {} ({e}); install qemu-user-static (apt-get install qemu-user-static)",
            host_debian_arch(),
            conf.display()
        )
    })?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(':'))
        .ok_or_else(|| format!("{}: no registration line", conf.display()))?;
    let fields: Vec<&str> = line.split(':').collect();
    // :name:type:offset:magic:mask:interpreter:flags
    if fields.len() != 8 {
        return Err(format!(
            "{}: not a binfmt_misc registration line: {line}",
            conf.display()
        ));
    }
    let interpreter = Path::new(fields[6]);
    if !interpreter.is_file() {
        return Err(format!(
            "{}: the interpreter {} is missing; reinstall qemu-user-static",
            conf.display(),
            interpreter.display()
        ));
    }
    let mut flags = fields[7].to_string();
    if !flags.contains('F') {
        flags.push('F');
    }
    let mut out = fields[..7].join(":");
    out.push(':');
    out.push_str(&flags);
    Ok(out)
}

/// The Debian architecture of an ELF program (`amd64`, `arm64`, ...), from its header.
pub fn elf_arch(path: &Path) -> Option<&'static str> {
    use std::io::Read;
    let mut h = [0u8; 20];
    std::fs::File::open(path).ok()?.read_exact(&mut h).ok()?;
    if &h[..4] != b"\x7fELF" || h[5] != 1 {
        return None; // not ELF, or big-endian
    }
    let wide = h[4] == 2;
    Some(match (u16::from_le_bytes([h[18], h[19]]), wide) {
        (0x3e, true) => "amd64",
        (0xb7, true) => "arm64",
        (0x03, false) => "i386",
        (0x28, false) => "armhf",
        (0xf3, true) => "riscv64",
        (0x15, true) => "ppc64el",
        _ => return None,
    })
}

/// The architecture of a tree given as overlay layers (top first): that of its first
/// `usr/bin/dpkg` (or `bash`, `dash`).
pub fn tree_arch(layers: &[PathBuf]) -> Option<&'static str> {
    ["usr/bin/dpkg", "usr/bin/bash", "usr/bin/dash"]
        .iter()
        .find_map(|p| layers.iter().find_map(|l| elf_arch(&l.join(p))))
}

/// The registration's name (its first field).
fn name_of(line: &str) -> &str {
    line.trim_start_matches(':').split(':').next().unwrap_or("")
}

/// In the sandbox's PID 1, in its own user and mount namespaces and before `pivot_root`:
/// mount this user namespace's binfmt_misc at `proc_dir/sys/fs/binfmt_misc` and register
/// every line. The mount stays (unmounting the instance drops its registrations); it is
/// carried into the image's `/proc` with the bind of `proc_dir`.
pub fn register(proc_dir: &Path, lines: &[String]) -> Result<(), String> {
    if lines.is_empty() {
        return Ok(());
    }
    let at: PathBuf = proc_dir.join("sys/fs/binfmt_misc");
    mount_at(
        Some("binfmt_misc"),
        &at,
        Some("binfmt_misc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )
    .map_err(|e| {
        format!("{e} (a binfmt_misc instance per user namespace needs Linux 6.7 or newer)")
    })?;
    for line in lines {
        let name = name_of(line);
        if at.join(name).exists() {
            continue;
        }
        std::fs::write(at.join("register"), line.as_bytes())
            .map_err(|e| format!("registering {name} in the sandbox's binfmt_misc: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_adds_the_fix_binary_flag_and_checks_the_interpreter() {
        let d = tempfile::tempdir().unwrap();
        let interp = d.path().join("qemu-aarch64-static");
        std::fs::write(&interp, b"").unwrap();
        let line = format!(
            ":qemu-aarch64:M::\\x7fELF\\x02:\\xff\\xff\\xff\\xff\\xff:{}:OP",
            interp.display()
        );
        std::fs::write(
            d.path().join("qemu-aarch64.conf"),
            format!("# comment\n{line}\n"),
        )
        .unwrap();
        let got = registration_in(d.path(), "arm64").unwrap();
        assert_eq!(got, format!("{line}F"));
        assert_eq!(name_of(&got), "qemu-aarch64");
        std::fs::remove_file(&interp).unwrap();
        let e = registration_in(d.path(), "arm64").unwrap_err();
        assert!(e.contains("interpreter") && e.contains("missing"), "{e}");
        let e = registration_in(d.path(), "riscv64").unwrap_err();
        assert!(
            e.contains("qemu-user-static") && e.contains("qemu-riscv64.conf"),
            "{e}"
        );
        let e = registration_in(d.path(), "vax").unwrap_err();
        assert!(e.contains("cannot emulate"), "{e}");
    }

    #[test]
    fn elf_headers_name_their_architecture() {
        let exe = std::env::current_exe().unwrap();
        assert_eq!(elf_arch(&exe), Some(host_debian_arch()));
        let arm = Path::new("/usr/lib/arch-test/arm64");
        if arm.exists() {
            assert_eq!(elf_arch(arm), Some("arm64"));
        }
        let d = tempfile::tempdir().unwrap();
        let layer = d.path().join("l");
        std::fs::create_dir_all(layer.join("usr/bin")).unwrap();
        std::fs::copy(&exe, layer.join("usr/bin/dpkg")).unwrap();
        std::fs::write(d.path().join("text"), b"#!/bin/sh\n").unwrap();
        assert_eq!(elf_arch(&d.path().join("text")), None);
        assert_eq!(
            tree_arch(&[d.path().join("empty"), layer]),
            Some(host_debian_arch())
        );
    }

    #[test]
    fn architectures_map_to_qemu_names() {
        assert_eq!(qemu_arch("arm64"), Some("aarch64"));
        assert_eq!(qemu_arch("amd64"), Some("x86_64"));
        assert!(is_native(host_debian_arch()));
        assert_ne!(is_native("arm64"), is_native("amd64"));
    }
}
