//! Disks for BIOS, UEFI or both (`webake_build::assemble`), laid out and booted.
//!
//! Needs root, the assembly tools (sfdisk, mkfs.ext4, mkfs.vfat, mtools, grub-mkimage with
//! grub-efi-amd64-bin and grub-pc-bin), `unshare` and `mount` (to run `grub-bios-setup` as a
//! reference), and for the boot tests `qemu-system-x86_64`, SeaBIOS and OVMF plus a bootable
//! Debian tree: the base that `cargo test -p webake --test run` bootstraps into
//! `$CARGO_TARGET_TMPDIR/webake-cache/bootstrap/*/rootfs` (copied, never modified). Without
//! any of them a test fails saying which. Layout tests use a tiny tree with an empty kernel
//! file; boot tests run qemu under TCG (KVM cannot run OVMF on these machines), with the disk
//! attached `snapshot=on` so that both firmwares boot the very same unchanged file.

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::Digest;
use webake_build::assemble::{
    AssembleInput, BIOS_BOOT_TYPE, BootFiles, DiskIds, ESP_TYPE, GRUB_BIOS_DIR, ROOT_X86_64_TYPE,
    assemble, run_simple,
};
use webake_spec::{BootMode, ByteSize, DiskSpec, OutputFormat};
use webake_sys::process::Cmd;

const MIB: u64 = 1 << 20;
/// Generous for TCG on a busy two-core machine: OVMF reaches a login prompt in about 30 s.
const BOOT_TIMEOUT: Duration = Duration::from_secs(420);

/// The Debian architecture of the bases these tests boot (they boot x86-64 qemu).
const HOST_DEB_ARCH: &str = "amd64";
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// One qemu at a time: two TCG guests on two cores would each take twice as long.
static QEMU: Mutex<()> = Mutex::new(());

fn require(tools: &[&str]) {
    let out = Command::new("id")
        .arg("-u")
        .output()
        .expect("running id -u");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "these tests need root (mkfs -d keeps owners; grub-bios-setup runs in a mount namespace)"
    );
    for tool in tools {
        assert!(
            webake_sys::process::which(tool).is_some(),
            "this test needs `{tool}` on PATH (scripts/setup.sh installs it)"
        );
    }
    for f in ["boot.img", "linux.mod", "grub-bios-setup"] {
        assert!(
            Path::new(GRUB_BIOS_DIR).join(f).is_file(),
            "this test needs {GRUB_BIOS_DIR}/{f}: apt-get install grub-pc-bin"
        );
    }
    assert!(
        Path::new("/usr/lib/grub/x86_64-efi/linux.mod").is_file(),
        "this test needs GRUB's x86_64-efi modules: apt-get install grub-efi-amd64-bin"
    );
}

const ASSEMBLY_TOOLS: &[&str] = &["sfdisk", "mkfs.ext4", "mkfs.vfat", "mcopy", "grub-mkimage"];

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A tree with what assembly looks for (a kernel file); not bootable.
fn tiny_tree(dir: &Path) -> PathBuf {
    let t = dir.join("tree");
    std::fs::create_dir_all(t.join("boot")).unwrap();
    std::fs::create_dir_all(t.join("etc")).unwrap();
    std::fs::write(t.join("boot/vmlinuz-6.1.0-1-cloud-amd64"), b"not a kernel").unwrap();
    std::fs::write(
        t.join("boot/initrd.img-6.1.0-1-cloud-amd64"),
        b"not an initrd",
    )
    .unwrap();
    t
}

/// A copy of the Debian base other tests bootstrapped (kernel, initramfs, systemd).
fn bootable_tree(dir: &Path) -> PathBuf {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("webake-cache/bootstrap");
    let mut bases: Vec<PathBuf> = std::fs::read_dir(&cache)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    bases.sort();
    let base = bases
        .into_iter()
        // This machine's architecture: tests/arm64.rs bootstraps arm64 bases into the same
        // cache, and whichever key sorts first must not decide what qemu-system-x86_64 boots.
        .filter(|b| {
            std::fs::read_to_string(b.join("meta.json"))
                .is_ok_and(|m| m.contains(&format!("\"architecture\":\"{HOST_DEB_ARCH}\"")))
        })
        .map(|b| b.join("rootfs"))
        .find(|r| {
            // A kernel with a real initramfs, in the tree or the base's initramfs layer.
            [r.join("boot"), r.with_file_name("initramfs/boot")]
                .iter()
                .any(|b| {
                    std::fs::read_dir(b).is_ok_and(|d| {
                        d.filter_map(|e| e.ok()).any(|e| {
                            e.file_name().to_string_lossy().starts_with("initrd.img-")
                                && e.metadata().is_ok_and(|m| m.len() > 0)
                        })
                    })
                })
        })
        .unwrap_or_else(|| {
            panic!(
                "no bootstrapped Debian base with a kernel and initramfs under {}: run \
                 `cargo test -p webake --test run` first (it bootstraps one there)",
                cache.display()
            )
        });
    let t = dir.join("tree");
    run(Command::new("cp")
        .args(["-a", "--sparse=always"])
        .arg(&base)
        .arg(&t));
    // The base's initramfs is a layer of its own, over the rootfs's placeholder.
    let layer = base.with_file_name(webake_build::initramfs::LAYER);
    if layer.is_dir() {
        run(Command::new("cp")
            .args(["-a", "--sparse=always"])
            .arg(format!("{}/.", layer.display()))
            .arg(&t));
    }
    t
}

struct Assembled {
    raw: PathBuf,
    scratch: PathBuf,
    boot: BootFiles,
    ids: DiskIds,
}

fn assemble_disk(dir: &Path, tree: &Path, boot: &[BootMode], size: u64, title: &str) -> Assembled {
    let disk = DiskSpec {
        size: ByteSize(size),
        esp_size: ByteSize(64 * MIB),
        boot: boot.to_vec(),
        ..DiskSpec::default()
    };
    let ids = DiskIds::derive(&format!("hybrid-test/{title}"));
    let scratch = dir.join("scratch");
    let out_dir = dir.join("out");
    let input = AssembleInput {
        tree,
        disk: &disk,
        ids: ids.clone(),
        title: title.to_string(),
        scratch: &scratch,
        out_dir: &out_dir,
        base_name: "disk".into(),
        outputs: &[OutputFormat::Raw],
        source_date: 1_700_000_000,
        arch: "amd64",
        sandbox_helper: None,
        say: None,
        late_files: None,
    };
    let cancel = webake_sys::CancelToken::new();
    let mut runner = |c: &Cmd| run_simple(c, &cancel);
    let (artifacts, boot) = assemble(&input, &mut runner).expect("assemble");
    assert_eq!(artifacts.len(), 1);
    Assembled {
        raw: artifacts[0].path.clone(),
        scratch,
        boot,
        ids,
    }
}

/// `(number, start, size, type, uuid)` of each partition, from `sfdisk --json`.
fn partitions(raw: &Path) -> Vec<(u32, u64, u64, String, String)> {
    let out = run(Command::new("sfdisk").arg("--json").arg(raw));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["partitiontable"]["label"], "gpt", "{out}");
    let node_prefix = raw.to_string_lossy().into_owned();
    let mut parts: Vec<_> = v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let node = p["node"].as_str().unwrap();
            (
                node.strip_prefix(&node_prefix).unwrap().parse().unwrap(),
                p["start"].as_u64().unwrap(),
                p["size"].as_u64().unwrap(),
                p["type"].as_str().unwrap().to_string(),
                p["uuid"].as_str().unwrap().to_ascii_lowercase(),
            )
        })
        .collect();
    parts.sort_by_key(|p| p.1);
    parts
}

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset).unwrap();
    buf
}

/// The MBR is GRUB's boot code over the protective partition table; the GPT still reads.
fn assert_bios_boot_code(a: &Assembled, core_lba: u64) {
    let mbr = read_at(&a.raw, 0, 512);
    let boot_img = std::fs::read(Path::new(GRUB_BIOS_DIR).join("boot.img")).unwrap();
    assert_eq!(&mbr[..3], &boot_img[..3], "boot.img's jump at the start");
    assert_eq!(&mbr[0x68..0x1b8], &boot_img[0x68..0x1b8], "boot.img's code");
    assert_eq!(
        u64::from_le_bytes(mbr[0x5c..0x64].try_into().unwrap()),
        core_lba,
        "boot.img loads core.img's first sector"
    );
    assert_eq!(mbr[0x1be + 4], 0xee, "the protective partition is intact");
    assert_eq!(&mbr[510..], &[0x55, 0xaa]);
    assert_eq!(
        &read_at(&a.raw, 512, 8),
        b"EFI PART",
        "the GPT header is intact"
    );
    let core = std::fs::read(a.scratch.join("core.img")).unwrap();
    let on_disk = read_at(&a.raw, core_lba * 512, core.len());
    assert_eq!(
        &on_disk[512..],
        &core[512..],
        "core.img after its first sector is written as is"
    );
    run(Command::new("sfdisk").arg("--verify").arg(&a.raw));
}

#[test]
fn hybrid_disk_has_a_bios_boot_partition_an_esp_and_the_root() {
    require(ASSEMBLY_TOOLS);
    let dir = tempfile::tempdir().unwrap();
    let tree = tiny_tree(dir.path());
    let a = assemble_disk(
        dir.path(),
        &tree,
        &[BootMode::Bios, BootMode::Uefi],
        256 * MIB,
        "hybrid",
    );
    assert_eq!(a.boot.firmwares, [BootMode::Bios, BootMode::Uefi]);
    let p = partitions(&a.raw);
    let root_sectors = (256 * MIB - 33 * 512) / MIB * MIB / 512 - 135168;
    assert_eq!(
        p,
        [
            (
                14,
                2048,
                2048,
                BIOS_BOOT_TYPE.into(),
                a.ids.bios_part_uuid.clone()
            ),
            (
                1,
                4096,
                131072,
                ESP_TYPE.into(),
                a.ids.esp_part_uuid.clone()
            ),
            (
                2,
                135168,
                root_sectors,
                ROOT_X86_64_TYPE.into(),
                a.ids.root_part_uuid.clone()
            ),
        ]
    );
    assert_bios_boot_code(&a, 2048);
    // The ESP has the EFI binary, the root has the one grub.cfg and an fstab with the ESP.
    let esp = format!("{}@@{}", a.raw.display(), 4096 * 512);
    let ls = run(Command::new("mdir").env("MTOOLS_SKIP_CHECK", "1").args([
        "-i",
        &esp,
        "-b",
        "::/EFI/BOOT",
    ]));
    assert!(ls.contains("BOOTX64.EFI"), "{ls}");
    let fstab = std::fs::read_to_string(tree.join("etc/fstab")).unwrap();
    assert!(fstab.contains("\t/boot/efi\tvfat\t"), "{fstab}");
    let cfg = std::fs::read_to_string(tree.join("boot/grub/grub.cfg")).unwrap();
    assert!(
        cfg.contains("linux /boot/vmlinuz-6.1.0-1-cloud-amd64 root=UUID="),
        "{cfg}"
    );
}

#[test]
fn bios_disk_has_no_esp() {
    require(ASSEMBLY_TOOLS);
    let dir = tempfile::tempdir().unwrap();
    let tree = tiny_tree(dir.path());
    let a = assemble_disk(dir.path(), &tree, &[BootMode::Bios], 256 * MIB, "bios");
    assert_eq!(a.boot.firmwares, [BootMode::Bios]);
    let p = partitions(&a.raw);
    let root_sectors = (256 * MIB - 33 * 512) / MIB * MIB / 512 - 4096;
    assert_eq!(
        p,
        [
            (
                14,
                2048,
                2048,
                BIOS_BOOT_TYPE.into(),
                a.ids.bios_part_uuid.clone()
            ),
            (
                2,
                4096,
                root_sectors,
                ROOT_X86_64_TYPE.into(),
                a.ids.root_part_uuid.clone()
            ),
        ]
    );
    assert_bios_boot_code(&a, 2048);
    assert!(
        !a.scratch.join("BOOTX64.EFI").exists(),
        "no EFI binary built"
    );
    let fstab = std::fs::read_to_string(tree.join("etc/fstab")).unwrap();
    assert!(!fstab.contains("/boot/efi"), "{fstab}");
    assert!(!tree.join("boot/efi").exists());
}

/// What webake wrote before BIOS boot existed, for the same ids: the sfdisk script of the
/// earlier `Layout::sfdisk_script`, kept here verbatim.
fn earlier_uefi_script(ids: &DiskIds, disk_bytes: u64) -> String {
    let esp_offset = MIB;
    let esp_bytes = 64 * MIB;
    let root_offset = esp_offset + esp_bytes;
    let root_bytes = (disk_bytes - 33 * 512) / MIB * MIB - root_offset;
    format!(
        "label: gpt\nlabel-id: {}\nunit: sectors\nfirst-lba: 2048\n\nstart={}, size={}, type={ESP_TYPE}, uuid={}, name=\"esp\"\nstart={}, size={}, type={ROOT_X86_64_TYPE}, uuid={}, name=\"root\"\n",
        ids.disk_guid,
        esp_offset / 512,
        esp_bytes / 512,
        ids.esp_part_uuid,
        root_offset / 512,
        root_bytes / 512,
        ids.root_part_uuid,
    )
}

#[test]
fn uefi_disk_is_laid_out_as_before() {
    require(ASSEMBLY_TOOLS);
    let dir = tempfile::tempdir().unwrap();
    let tree = tiny_tree(dir.path());
    let size = 256 * MIB;
    let a = assemble_disk(dir.path(), &tree, &[BootMode::Uefi], size, "uefi");
    assert_eq!(a.boot.firmwares, [BootMode::Uefi]);
    let root_sectors = (size - 33 * 512) / MIB * MIB / 512 - 133120;
    assert_eq!(
        partitions(&a.raw),
        [
            (
                1,
                2048,
                131072,
                ESP_TYPE.into(),
                a.ids.esp_part_uuid.clone()
            ),
            (
                2,
                133120,
                root_sectors,
                ROOT_X86_64_TYPE.into(),
                a.ids.root_part_uuid.clone()
            ),
        ]
    );
    // The partition table bytes (protective MBR, primary and backup GPT) are exactly what the
    // earlier script makes; no boot code in the MBR.
    let before = dir.path().join("before.raw");
    std::fs::File::create(&before)
        .unwrap()
        .set_len(size)
        .unwrap();
    let script = earlier_uefi_script(&a.ids, size);
    let mut child = Command::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(&before)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), script.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    let head = 34 * 512;
    assert_eq!(
        read_at(&a.raw, 0, head),
        read_at(&before, 0, head),
        "MBR and primary GPT"
    );
    let tail = 33 * 512;
    assert_eq!(
        read_at(&a.raw, size - tail as u64, tail),
        read_at(&before, size - tail as u64, tail),
        "backup GPT"
    );
    assert!(
        read_at(&a.raw, 0, 440).iter().all(|b| *b == 0),
        "no MBR boot code"
    );
    assert!(
        !a.scratch.join("core.img").exists(),
        "no BIOS core.img built"
    );
}

/// The MBR and BIOS boot partition webake writes are byte for byte what
/// `grub-bios-setup --no-rs-codes` writes with the same boot.img and core.img. grub-bios-setup
/// runs against a copy of the disk with a forged `/proc/self/mountinfo` in a private mount
/// namespace (mkosi's way: otherwise it looks for the host device under its directory).
#[test]
fn boot_code_matches_grub_bios_setup() {
    require(&[ASSEMBLY_TOOLS, &["unshare", "mount"]].concat());
    let dir = tempfile::tempdir().unwrap();
    let tree = tiny_tree(dir.path());
    let a = assemble_disk(
        dir.path(),
        &tree,
        &[BootMode::Bios, BootMode::Uefi],
        256 * MIB,
        "reference",
    );
    // The same disk before GRUB: no MBR code, an empty BIOS boot partition.
    let reference = dir.path().join("reference.raw");
    run(Command::new("cp")
        .arg("--sparse=always")
        .arg(&a.raw)
        .arg(&reference));
    {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&reference)
            .unwrap();
        f.write_all_at(&[0u8; 440], 0).unwrap();
        f.write_all_at(&vec![0u8; MIB as usize], MIB).unwrap();
    }
    let grub_dir = dir.path().join("grub");
    std::fs::create_dir(&grub_dir).unwrap();
    std::fs::copy(
        Path::new(GRUB_BIOS_DIR).join("boot.img"),
        grub_dir.join("boot.img"),
    )
    .unwrap();
    std::fs::copy(a.scratch.join("core.img"), grub_dir.join("core.img")).unwrap();
    let map = dir.path().join("device.map");
    std::fs::write(&map, format!("(hd0) {}\n", reference.display())).unwrap();
    let mountinfo = dir.path().join("mountinfo");
    std::fs::write(
        &mountinfo,
        format!("1 0 1:1 / / - fat {}\n", reference.display()),
    )
    .unwrap();
    run(Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount --bind \"$1\" /proc/$$/mountinfo && shift && exec \"$@\"")
        .arg("sh")
        .arg(&mountinfo)
        .arg(Path::new(GRUB_BIOS_DIR).join("grub-bios-setup"))
        .args(["--no-rs-codes", "--skip-fs-probe", "--directory"])
        .arg(&grub_dir)
        .arg("--device-map")
        .arg(&map)
        .arg(&reference));
    assert_eq!(
        read_at(&reference, 0, 2 * MIB as usize),
        read_at(&a.raw, 0, 2 * MIB as usize),
        "MBR, GPT and BIOS boot partition differ from grub-bios-setup's"
    );
    assert_eq!(sha256(&reference), sha256(&a.raw), "the rest of the disk");
}

fn sha256(p: &Path) -> String {
    let mut f = std::fs::File::open(p).unwrap();
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Firmware {
    SeaBios,
    Ovmf,
}

/// A qemu process, killed and reaped on drop (the test's temp dir holds its files).
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Boot `raw` (read-only: writes go to a temporary overlay in `dir`) until the serial console
/// shows a login prompt; return the serial log.
fn boot(dir: &Path, raw: &Path, fw: Firmware) -> String {
    let _one = QEMU.lock().unwrap_or_else(|e| e.into_inner());
    let tag = format!("{fw:?}").to_lowercase();
    let log = dir.join(format!("serial-{tag}.log"));
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-machine",
        "q35",
        "-accel",
        "tcg",
        "-m",
        "1024",
        "-no-reboot",
    ])
    .args(["-display", "none", "-monitor", "none"])
    .arg("-serial")
    .arg(format!("file:{}", log.display()))
    .arg("-drive")
    .arg(format!(
        "file={},format=raw,if=virtio,snapshot=on",
        raw.display()
    ))
    // snapshot=on keeps its overlay under TMPDIR: the test's temp dir.
    .env("TMPDIR", dir)
    .stdin(Stdio::null())
    .stdout(Stdio::from(
        std::fs::File::create(dir.join(format!("qemu-{tag}.out"))).unwrap(),
    ))
    .stderr(Stdio::from(
        std::fs::File::create(dir.join(format!("qemu-{tag}.err"))).unwrap(),
    ));
    if fw == Firmware::Ovmf {
        let vars = dir.join("OVMF_VARS.fd");
        std::fs::copy(OVMF_VARS, &vars).unwrap();
        cmd.arg("-drive")
            .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,file={}", vars.display()));
    }
    let mut q = Qemu(cmd.spawn().expect("starting qemu-system-x86_64"));
    let start = Instant::now();
    let read = || String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).into_owned();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let text = read();
        if text.contains("login:") {
            // Shown with --nocapture: how long each firmware took to a login prompt.
            eprintln!("{fw:?}: login prompt after {:.1?}", start.elapsed());
            return text;
        }
        if let Some(status) = q.0.try_wait().unwrap() {
            let err =
                std::fs::read_to_string(dir.join(format!("qemu-{tag}.err"))).unwrap_or_default();
            panic!(
                "qemu ({fw:?}) exited ({status}) before a login prompt\nstderr: {err}\nserial:\n{text}"
            );
        }
        if start.elapsed() > BOOT_TIMEOUT {
            let tail: String = text
                .chars()
                .rev()
                .take(4000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            panic!(
                "no login prompt under {fw:?} within {BOOT_TIMEOUT:?}; serial log ends:\n{tail}"
            );
        }
    }
}

fn require_boot_tools() {
    require(&[ASSEMBLY_TOOLS, &["qemu-system-x86_64", "cp"]].concat());
    for f in [OVMF_CODE, OVMF_VARS] {
        assert!(
            Path::new(f).is_file(),
            "this test needs {f}: apt-get install ovmf"
        );
    }
    assert!(
        Path::new("/usr/share/seabios/bios-256k.bin").is_file(),
        "this test needs SeaBIOS (qemu's default firmware): apt-get install seabios"
    );
}

/// What a serial log shows of a boot: GRUB drew webake's menu (read from the root
/// filesystem), the kernel started, and whether it came up under UEFI.
fn assert_booted(log: &str, title: &str, uefi: bool) {
    assert!(
        log.contains(title),
        "GRUB's menu entry '{title}' not on the serial console:\n{log}"
    );
    assert!(log.contains("Linux version"), "no kernel banner:\n{log}");
    assert!(
        log.contains("Command line:") && log.contains("console=ttyS0,115200n8"),
        "kernel command line from grub.cfg not seen:\n{log}"
    );
    assert_eq!(
        log.contains("efi: EFI v"),
        uefi,
        "the kernel {} report EFI firmware:\n{log}",
        if uefi { "did not" } else { "did" }
    );
}

#[test]
fn hybrid_disk_boots_under_seabios_and_ovmf() {
    require_boot_tools();
    let dir = tempfile::tempdir().unwrap();
    let tree = bootable_tree(dir.path());
    let title = "webake hybrid test";
    let a = assemble_disk(
        dir.path(),
        &tree,
        &[BootMode::Bios, BootMode::Uefi],
        2 << 30,
        title,
    );
    let digest = sha256(&a.raw);
    let bios = boot(dir.path(), &a.raw, Firmware::SeaBios);
    assert_booted(&bios, title, false);
    let uefi = boot(dir.path(), &a.raw, Firmware::Ovmf);
    assert_booted(&uefi, title, true);
    assert_eq!(
        sha256(&a.raw),
        digest,
        "both firmwares booted the same, unchanged disk"
    );
}

#[test]
fn bios_disk_boots_under_seabios() {
    require_boot_tools();
    let dir = tempfile::tempdir().unwrap();
    let tree = bootable_tree(dir.path());
    let title = "webake bios test";
    let a = assemble_disk(dir.path(), &tree, &[BootMode::Bios], 2 << 30, title);
    let log = boot(dir.path(), &a.raw, Firmware::SeaBios);
    assert_booted(&log, title, false);
}
