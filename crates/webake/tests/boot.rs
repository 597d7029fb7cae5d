//! Boot tests under qemu (issue 4): the image boots to multi-user under UEFI, becomes itself
//! from instance metadata (served by a local IMDSv2 fake through qemu user networking), and a
//! broken image fails the gate with a clear message within its timeout.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const NETWORKD: &str = "  - shell:
      name: network (systemd-networkd, DHCP on every en* link)
      inline:
        - printf '[Match]\\nName=en*\\n\\n[Network]\\nDHCP=yes\\n' > /etc/systemd/network/80-dhcp.network
        - systemctl enable systemd-networkd.service systemd-networkd-wait-online.service
";

#[test]
fn agent_sets_the_hostname_from_instance_metadata_at_boot() {
    require_bake_capabilities();
    require_qemu();
    let env = Env::new();
    let r = env.recipe(
        "agent",
        &format!(
            "version: 1
image:
  name: agent-test
  role: kubernetes
{BASE}provisioners:
{NETWORKD}agent:
  install: true
test:
  gate: true
  timeout_secs: 90
  imds:
    instance_id: i-07a38e448ad62b4da
    region: eu-west-1
    tags:
      Environment: prod
  checks:
    - name: hostname from IMDS
      run: hostname
      expect_stdout: kubernetes-prod-euwest1-07a38e448ad62b4da
    - name: /etc/hostname written by the agent
      run: cat /etc/hostname
      expect_stdout: kubernetes-prod-euwest1-07a38e448ad62b4da
    - name: machine-id generated at first boot
      run: test -s /etc/machine-id && echo yes
      expect_stdout: \"yes\"
    - name: SSH host keys generated at first boot
      run: ls /etc/ssh/ssh_host_ed25519_key
      expect_stdout: /etc/ssh/ssh_host_ed25519_key
"
        ),
    );
    let o = env.run(&["bake", r.to_str().unwrap()]);
    assert!(
        o.status.success(),
        "bake with boot-test gate failed: {}",
        text(&o)
    );
    let imgs = env.images_json();
    assert_eq!(imgs[0]["test_result"], "passed");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("check hostname from IMDS: rc=0 kubernetes-prod-euwest1-07a38e448ad62b4da"),
        "{err}"
    );
    assert!(
        err.contains("==> boot test: qemu"),
        "the accelerator is not reported:\n{err}"
    );
    assert!(
        err.contains("booted directly") && err.contains("start the disk's kernel"),
        "the checks did not run on a direct kernel boot with the firmware path proven:\n{err}"
    );
    // Under emulation the copy's RSA host key comes from the host; the first-boot unit still
    // runs and makes the others (the harness fails the test when a key is missing after boot).
    if err.contains("==> boot test: qemu tcg") {
        assert!(
            err.contains("SSH RSA host key made on the host for this test copy"),
            "{err}"
        );
    }
    assert!(
        err.contains("generating the SSH host keys (first boot)")
            && err.contains("first-boot SSH host keys: webake-ssh-keygen.service active, in /etc/ssh: ssh_host_ecdsa_key ssh_host_ed25519_key ssh_host_rsa_key"),
        "the first-boot key unit did not run or the harness did not see its keys:\n{err}"
    );
}

#[test]
fn broken_image_fails_the_boot_test_within_its_timeout() {
    require_bake_capabilities();
    require_qemu();
    let env = Env::new();
    let o = env.run(&["bake", "recipes/debian-minimal.yaml", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let res: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let raw = artifact_path(&res["image"], "raw");

    // The good image boots and passes the default checks (reaches multi-user, powers off),
    // also when the checks' VM goes through the firmware and GRUB itself.
    let good = env.run(&["test", &raw, "--timeout", "90", "--full-boot"]);
    assert!(
        good.status.success(),
        "the example image does not boot: {}",
        text(&good)
    );
    assert!(
        String::from_utf8_lossy(&good.stdout).contains("on a firmware kernel boot"),
        "{}",
        text(&good)
    );
    the_firmware_path_is_proven_even_when_the_kernel_boots_directly(&env, Path::new(&raw));

    // Break a copy: remove every kernel from /boot.
    let broken = env.path().join("broken.raw");
    assert!(
        Command::new("cp")
            .args(["--sparse=always", &raw])
            .arg(&broken)
            .status()
            .unwrap()
            .success()
    );
    let off = root_offset(Path::new(&raw));
    let ls = Command::new("debugfs")
        .args(["-R", "ls -l /boot"])
        .arg(format!("{}?offset={off}", broken.display()))
        .output()
        .unwrap();
    let mut cmds = String::new();
    for name in String::from_utf8_lossy(&ls.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with("vmlinuz-"))
    {
        cmds.push_str(&format!("rm /boot/{name}\n"));
    }
    assert!(!cmds.is_empty(), "no kernel found to remove");
    let f = env.path().join("rm.cmds");
    std::fs::write(&f, cmds).unwrap();
    let rm = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&f)
        .arg(format!("{}?offset={off}", broken.display()))
        .output()
        .unwrap();
    assert!(rm.status.success(), "{}", text(&rm));

    let t = Instant::now();
    let bad = env.run(&["test", broken.to_str().unwrap(), "--timeout", "15"]);
    let took = t.elapsed();
    assert_eq!(
        bad.status.code(),
        Some(3),
        "a kernel-less image passed the boot test? {}",
        text(&bad)
    );
    // No kernel to boot directly: the checks' VM goes through the firmware (on the copy that
    // was made for the direct boot), and that boot finds no kernel either.
    assert!(
        text(&bad).contains("cannot be booted directly"),
        "{}",
        text(&bad)
    );
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("boot test failed")
            && err.contains("never reached multi-user")
            && err.contains("Console tail"),
        "unclear failure:\n{err}"
    );
    // 15 s, times 4 under TCG, plus startup: bounded.
    assert!(
        took < Duration::from_secs(15 * 4 + 60),
        "the boot test did not respect its timeout ({took:?})"
    );
}

/// A disk whose kernel is fine but whose firmware path is broken (the ESP's loader removed)
/// fails the test, though the checks' VM, booting the kernel directly, passes: the firmware
/// boot that runs alongside never reaches the kernel.
fn the_firmware_path_is_proven_even_when_the_kernel_boots_directly(env: &Env, raw: &Path) {
    let broken = env.path().join("no-loader.raw");
    assert!(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(raw)
            .arg(&broken)
            .status()
            .unwrap()
            .success()
    );
    let rm = Command::new("mdel")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(format!("{}@@{}", broken.display(), esp_offset(&broken)))
        .arg("::/EFI/BOOT/BOOTX64.EFI")
        .output()
        .unwrap();
    assert!(rm.status.success(), "{}", text(&rm));
    let bad = env.run(&["test", broken.to_str().unwrap(), "--timeout", "60"]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(3), "{}", text(&bad));
    assert!(
        err.contains("booted directly")
            && err.contains("the firmware path did not start the disk's kernel")
            && err.contains("Console tail"),
        "unclear failure:\n{err}"
    );
}
