//! arm64 (Graviton) images on an x86-64 host (issue 22), end to end: the arm64 variant of
//! recipes/bastion-multiarch.yaml is bootstrapped and provisioned under qemu-user registered in
//! the sandbox's own binfmt_misc instance (the host's stays as it was), assembled with GRUB
//! arm64-efi, recorded as `arm64`, and boot-tested under qemu-system-aarch64 (virt, AAVMF,
//! TCG) with the fake IMDS: the agent's hostname check passes in the arm64 guest; then
//! published to a moto server on loopback (behind webake-aws's recording proxy), registered as
//! an arm64 UEFI AMI.
//!
//! Needs root, qemu-user-static, arch-test, qemu-system-arm, qemu-efi-aarch64, Ansible and the
//! cross-built arm64 agent (scripts/setup.sh --test installs and builds them all); fails naming
//! what is missing.

/// The AWS test harness of webake-aws (moto on loopback and the recording proxy).
#[path = "../../webake-aws/tests/common/mod.rs"]
mod aws_harness;
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const RECIPE: &str = "recipes/bastion-multiarch.yaml";

/// The host's binfmt_misc registrations (empty when it is not mounted).
fn host_binfmt() -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir("/proc/sys/fs/binfmt_misc")
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let body = std::fs::read_to_string(e.path()).unwrap_or_default();
                    (e.file_name().to_string_lossy().into_owned(), body)
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn require_arm64_tools() -> PathBuf {
    for (tool, pkg) in [
        ("qemu-system-aarch64", "qemu-system-arm"),
        ("arch-test", "arch-test"),
        ("ansible-playbook", "ansible"),
        ("mdir", "mtools"),
    ] {
        assert!(
            which(tool),
            "missing `{tool}` for the arm64 test: apt-get install {pkg} (scripts/setup.sh --test)"
        );
    }
    for (file, pkg) in [
        ("/usr/lib/binfmt.d/qemu-aarch64.conf", "qemu-user-static"),
        ("/usr/share/AAVMF/AAVMF_CODE.fd", "qemu-efi-aarch64"),
    ] {
        assert!(
            Path::new(file).is_file(),
            "missing {file}: apt-get install {pkg} (scripts/setup.sh --test)"
        );
    }
    let agent = Path::new(env!("CARGO_BIN_EXE_webake"))
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("aarch64-unknown-linux-gnu/debug/webake-agent");
    assert!(
        agent.is_file(),
        "missing the arm64 agent {}: cargo build -p webake-agent --target aarch64-unknown-linux-gnu (scripts/setup.sh --test)",
        agent.display()
    );
    agent
}

/// The first bytes of a file of the image's root filesystem.
fn elf_machine_in_image(raw: &Path, path: &str, scratch: &Path) -> u16 {
    let out = scratch.join("dumped");
    let o = dump_from_image(raw, path, &out);
    let bytes = std::fs::read(&out)
        .unwrap_or_else(|e| panic!("{path} not in the image ({e}): {}", text(&o)));
    assert_eq!(&bytes[..4], b"\x7fELF", "{path} is not ELF");
    u16::from_le_bytes([bytes[18], bytes[19]])
}

#[test]
fn the_arm64_variant_bakes_under_emulation_and_boots_with_its_hostname() {
    require_bake_capabilities();
    let agent = require_arm64_tools();
    let before = host_binfmt();
    let env = Env::new();

    // Both variants plan, each labelled with its architecture.
    let o = env.run(&["bake", RECIPE, "--dry-run"]);
    assert!(o.status.success(), "dry run: {}", text(&o));
    let plans = String::from_utf8_lossy(&o.stdout);
    for label in ["[bastion/x86_64]", "[bastion/arm64]"] {
        assert!(plans.contains(label), "{label} missing:\n{plans}");
    }
    assert!(
        plans.contains("--architectures=arm64") || plans.contains("arm64"),
        "{plans}"
    );

    let o = env
        .cmd()
        .env("WEBAKE_AGENT_BINARY_ARM64", &agent)
        .args(["bake", RECIPE, "--arch", "arm64", "--test"])
        .output()
        .unwrap();
    let out = text(&o);
    assert!(o.status.success(), "arm64 bake with boot test: {out}");
    assert!(
        out.contains(
            "check hostname from IMDS (the agent): rc=0 bastion-prod-euwest1-07a38e448ad62b4da"
        ),
        "the agent's hostname check in the arm64 guest:\n{out}"
    );
    assert!(
        out.contains("qemu tcg (a arm64 guest on this x86_64 host is emulated)"),
        "{out}"
    );
    // The checks ran on a direct boot of the arm64 kernel (`-machine virt`, no firmware), and
    // AAVMF was proven to start that kernel with its GRUB entry's command line.
    assert!(
        out.contains("booted directly")
            && out.contains("uefi: the firmware and GRUB started the disk's kernel"),
        "{out}"
    );

    let imgs = env.images_json();
    let img = &imgs[0];
    assert_eq!(imgs.as_array().unwrap().len(), 1, "{imgs:#}");
    assert_eq!(img["arch"], "arm64", "{img:#}");
    assert_eq!(img["test_result"], "passed", "{img:#}");
    assert!(
        img["kernel"].as_str().unwrap().ends_with("-cloud-arm64"),
        "{img:#}"
    );
    let list = env.run(&["images", "list"]);
    assert!(text(&list).contains(" arm64 "), "{}", text(&list));

    // GRUB arm64-efi on the ESP; the image's programs and the agent are aarch64 (EM 183).
    let raw = PathBuf::from(artifact_path(img, "raw"));
    let esp = &partitions(&raw)["partitiontable"]["partitions"][0];
    let listing = Command::new("mdir")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-b", "-i"])
        .arg(format!(
            "{}@@{}",
            raw.display(),
            esp["start"].as_u64().unwrap() * 512
        ))
        .arg("::/EFI/BOOT")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&listing.stdout).contains("BOOTAA64.EFI"),
        "{}",
        text(&listing)
    );
    for p in ["/usr/bin/dpkg", "/usr/local/bin/webake-agent"] {
        assert_eq!(elf_machine_in_image(&raw, p, env.path()), 183, "{p}");
    }
    let cdx = std::fs::read_to_string(raw.with_extension("cdx.json")).unwrap();
    assert!(
        cdx.contains("\"webake:architecture\""),
        "SBOM names the architecture"
    );

    publish_registers_an_arm64_uefi_ami(&env, img["id"].as_str().unwrap());

    // Emulation was the sandbox's own: the host's binfmt_misc is as it was.
    assert_eq!(host_binfmt(), before, "the host's binfmt_misc changed");
    assert!(
        env.scratch_entries().is_empty(),
        "{:?}",
        env.scratch_entries()
    );
}

/// `webake publish --to aws` of the arm64 image: RegisterImage says arm64 and uefi, the AMI
/// name carries the architecture, and moto has it as arm64.
fn publish_registers_an_arm64_uefi_ami(env: &Env, id: &str) {
    let moto = aws_harness::Moto::start();
    let proxy = aws_harness::Proxy::start_with(moto.port, false);
    let url = proxy.url();
    let o = with_aws_env(env.cmd(), env.path(), &url)
        .args([
            "publish",
            id,
            "--to",
            "aws",
            "--region",
            "eu-west-1",
            "--endpoint-url",
            &url,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "publish --to aws: {}", text(&o));
    let reg = proxy.ops("RegisterImage");
    assert_eq!(
        reg.len(),
        1,
        "{:?}",
        proxy.log().iter().map(|r| &r.op).collect::<Vec<_>>()
    );
    let form = reg[0].form();
    assert_eq!(
        form.get("Architecture").map(String::as_str),
        Some("arm64"),
        "{form:?}"
    );
    assert_eq!(
        form.get("BootMode").map(String::as_str),
        Some("uefi"),
        "{form:?}"
    );
    assert!(
        form.get("Name").is_some_and(|n| n.ends_with("-arm64")),
        "{form:?}"
    );
    assert!(proxy.violations().is_empty(), "{:?}", proxy.violations());
}
