//! Assemble a bootable GPT disk offline: no loop device, no mount.
//!
//! Layout: 1 MiB alignment, partition 1 the EFI system partition (FAT, made with
//! `mkfs.vfat --offset` and filled with `mcopy`), partition 2 the ext4 root filesystem (made
//! with `mkfs.ext4 -E offset=… -d TREE`). UEFI firmware loads `\EFI\BOOT\BOOTX64.EFI`, a GRUB
//! image built from the host's GRUB modules with an embedded config that finds the root
//! filesystem by UUID and reads `/boot/grub/grub.cfg`, which webake writes into the tree.

use std::path::{Path, PathBuf};

use serde::Serialize;
use webake_spec::{DiskSpec, OutputFormat};
use webake_sys::process::{Cmd, run};

use crate::digest::sha256_hex;
use crate::error::{BuildError, Result};

pub const SECTOR: u64 = 512;
pub const ALIGN: u64 = 1 << 20;
/// The GPT backup header and table at the end of the disk.
const GPT_TAIL: u64 = 33 * SECTOR;

pub const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
pub const ROOT_X86_64_TYPE: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";

/// Partition placement, computed from the disk spec (pure).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Layout {
    pub disk_bytes: u64,
    pub esp_offset: u64,
    pub esp_bytes: u64,
    pub root_offset: u64,
    pub root_bytes: u64,
}

impl Layout {
    pub fn new(disk: &DiskSpec) -> Result<Self> {
        let disk_bytes = disk.size.bytes();
        let esp_offset = ALIGN;
        let esp_bytes = disk.esp_size.bytes() / ALIGN * ALIGN;
        let root_offset = esp_offset + esp_bytes;
        let end = (disk_bytes - GPT_TAIL) / ALIGN * ALIGN;
        if end <= root_offset + (64 << 20) {
            return Err(BuildError::Invalid(format!(
                "disk size {} leaves no room for the root filesystem",
                disk.size
            )));
        }
        Ok(Self {
            disk_bytes,
            esp_offset,
            esp_bytes,
            root_offset,
            root_bytes: end - root_offset,
        })
    }

    /// The sfdisk script for this layout.
    pub fn sfdisk_script(&self, ids: &DiskIds) -> String {
        format!(
            "label: gpt\nlabel-id: {}\nunit: sectors\nfirst-lba: 2048\n\nstart={}, size={}, type={ESP_TYPE}, uuid={}, name=\"esp\"\nstart={}, size={}, type={ROOT_X86_64_TYPE}, uuid={}, name=\"root\"\n",
            ids.disk_guid,
            self.esp_offset / SECTOR,
            self.esp_bytes / SECTOR,
            ids.esp_part_uuid,
            self.root_offset / SECTOR,
            self.root_bytes / SECTOR,
            ids.root_part_uuid,
        )
    }
}

/// Identifiers derived from the image id, so a re-assembly of the same image is identical.
#[derive(Debug, Clone, Serialize)]
pub struct DiskIds {
    pub disk_guid: String,
    pub esp_part_uuid: String,
    pub root_part_uuid: String,
    pub root_fs_uuid: String,
    /// FAT volume id, 8 hex digits.
    pub esp_volume_id: String,
}

impl DiskIds {
    pub fn derive(seed: &str) -> Self {
        let u = |label: &str| {
            let h = sha256_hex(format!("{seed}/{label}").as_bytes());
            // RFC 4122 variant, version 4 layout.
            format!(
                "{}-{}-4{}-a{}-{}",
                &h[0..8],
                &h[8..12],
                &h[13..16],
                &h[17..20],
                &h[20..32]
            )
        };
        Self {
            disk_guid: u("disk"),
            esp_part_uuid: u("esp-part"),
            root_part_uuid: u("root-part"),
            root_fs_uuid: u("root-fs"),
            esp_volume_id: sha256_hex(format!("{seed}/esp-vol").as_bytes())[..8].to_string(),
        }
    }

    pub fn esp_fs_uuid(&self) -> String {
        format!(
            "{}-{}",
            self.esp_volume_id[..4].to_uppercase(),
            self.esp_volume_id[4..].to_uppercase()
        )
    }
}

/// The kernel and initrd to boot, as paths inside the tree.
#[derive(Debug, Clone, Serialize)]
pub struct BootFiles {
    pub kernel: String,
    pub initrd: Option<String>,
    pub version: String,
}

/// Find the newest kernel in `root/boot` (by version order), resolved inside the tree.
pub fn find_kernel(root: &Path) -> Result<BootFiles> {
    let t = webake_sys::Tree::open(root)?;
    let names = if t.is_dir(Path::new("boot")) {
        t.read_dir(Path::new("boot"))?
    } else {
        Vec::new()
    };
    let mut versions: Vec<String> = names
        .iter()
        .filter_map(|n| {
            n.to_str()
                .and_then(|n| n.strip_prefix("vmlinuz-"))
                .map(String::from)
        })
        .collect();
    if versions.is_empty() {
        return Err(BuildError::Invalid(format!(
            "no kernel in {}/boot: add a kernel package (e.g. linux-image-cloud-amd64) to base.mmdebstrap.include",
            root.display()
        )));
    }
    versions.sort_by(|a, b| version_cmp(a, b));
    let v = versions.pop().expect("non-empty");
    let initrd = format!("/boot/initrd.img-{v}");
    let has_initrd = t
        .open_read(Path::new(&initrd))
        .and_then(|f| {
            f.metadata().map_err(|e| webake_sys::TreeError {
                op: "stat",
                inner: initrd.clone(),
                root: root.display().to_string(),
                source: e,
            })
        })
        .is_ok_and(|m| m.is_file());
    Ok(BootFiles {
        kernel: format!("/boot/vmlinuz-{v}"),
        initrd: has_initrd.then_some(initrd),
        version: v,
    })
}

/// Compare kernel version strings numerically where they are numbers.
fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let split = |s: &str| -> Vec<Result<u64, String>> {
        s.split(['.', '-', '+', '~'])
            .map(|p| p.parse::<u64>().map_err(|_| p.to_string()))
            .collect()
    };
    split(a).cmp(&split(b))
}

pub fn kernel_cmdline(ids: &DiskIds, extra: &[String]) -> String {
    let mut args = vec![
        format!("root=UUID={}", ids.root_fs_uuid),
        "ro".to_string(),
        "console=tty0".to_string(),
        "console=ttyS0,115200n8".to_string(),
    ];
    args.extend(extra.iter().cloned());
    args.join(" ")
}

/// `/boot/grub/grub.cfg` for the image.
pub fn grub_cfg(ids: &DiskIds, boot: &BootFiles, cmdline: &str, title: &str) -> String {
    let mut s = String::new();
    s.push_str("# Written by webake. Serial and graphical console; one entry.\n");
    s.push_str("serial --unit=0 --speed=115200 --word=8 --parity=no --stop=1\n");
    s.push_str("terminal_input serial console\nterminal_output serial console\n");
    s.push_str("set timeout=1\nset default=0\n\n");
    s.push_str(&format!("menuentry '{}' {{\n", title.replace('\'', "")));
    s.push_str(&format!(
        "    search --no-floppy --fs-uuid --set=root {}\n",
        ids.root_fs_uuid
    ));
    s.push_str(&format!("    linux {} {cmdline}\n", boot.kernel));
    if let Some(i) = &boot.initrd {
        s.push_str(&format!("    initrd {i}\n"));
    }
    s.push_str("}\n");
    s
}

/// The config embedded in the EFI binary: find the root filesystem, read its grub.cfg.
pub fn embedded_cfg(ids: &DiskIds) -> String {
    format!(
        "search --no-floppy --fs-uuid --set=root {u}\nset prefix=($root)/boot/grub\nconfigfile ($root)/boot/grub/grub.cfg\n",
        u = ids.root_fs_uuid
    )
}

pub fn fstab(ids: &DiskIds) -> String {
    format!(
        "# Written by webake.\nUUID={}\t/\text4\tdefaults,errors=remount-ro\t0\t1\nUUID={}\t/boot/efi\tvfat\tumask=0077,nofail\t0\t2\n",
        ids.root_fs_uuid,
        ids.esp_fs_uuid()
    )
}

pub const GRUB_MODULES: &[&str] = &[
    "part_gpt",
    "part_msdos",
    "fat",
    "ext2",
    "normal",
    "linux",
    "search",
    "search_fs_uuid",
    "configfile",
    "echo",
    "gzio",
    "all_video",
    "efi_gop",
    "serial",
    "terminal",
    "test",
    "ls",
    "cat",
    "reboot",
    "halt",
    "boot",
];

/// Host tools assembly needs, with the Debian package that provides each.
pub const HOST_TOOLS: &[(&str, &str)] = &[
    ("sfdisk", "fdisk"),
    ("mkfs.ext4", "e2fsprogs"),
    ("mkfs.vfat", "dosfstools"),
    ("mcopy", "mtools"),
    ("mmd", "mtools"),
    ("grub-mkimage", "grub-common (with grub-efi-amd64-bin)"),
    ("qemu-img", "qemu-utils"),
];

pub fn check_host_tools() -> Result<()> {
    for (tool, pkg) in HOST_TOOLS {
        if webake_sys::process::which(tool).is_none() {
            return Err(BuildError::MissingTool {
                tool: tool.to_string(),
                hint: format!("apt-get install {pkg}"),
            });
        }
    }
    if !Path::new("/usr/lib/grub/x86_64-efi/linux.mod").is_file() {
        return Err(BuildError::MissingTool {
            tool: "GRUB x86_64-efi modules".into(),
            hint: "apt-get install grub-efi-amd64-bin".into(),
        });
    }
    Ok(())
}

/// One artifact written.
#[derive(Debug, Clone, Serialize)]
pub struct Artifact {
    pub format: OutputFormat,
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
}

/// Everything [`assemble`] needs.
pub struct AssembleInput<'a> {
    pub tree: &'a Path,
    pub disk: &'a DiskSpec,
    pub ids: DiskIds,
    pub title: String,
    pub scratch: &'a Path,
    pub out_dir: &'a Path,
    pub base_name: String,
    pub outputs: &'a [OutputFormat],
}

/// Run a command through the shared runner, streaming its output to `sink`.
pub type Runner<'a> = dyn FnMut(&Cmd) -> Result<()> + 'a;

/// Write boot configuration into the tree, then build the disk and the requested formats.
pub fn assemble(
    input: &AssembleInput<'_>,
    runner: &mut Runner<'_>,
) -> Result<(Vec<Artifact>, BootFiles)> {
    let layout = Layout::new(input.disk)?;
    let tree = input.tree;
    let boot = find_kernel(tree)?;
    let cmdline = kernel_cmdline(&input.ids, &input.disk.kernel_cmdline);

    // Boot configuration inside the tree (every path resolved inside it: a planted
    // /boot/grub symlink cannot send grub.cfg to the host).
    let t = webake_sys::Tree::open(tree)?;
    t.create_dir_all(Path::new("boot/grub"), 0o755)?;
    t.write(
        Path::new("boot/grub/grub.cfg"),
        grub_cfg(&input.ids, &boot, &cmdline, &input.title).as_bytes(),
        0o644,
    )?;
    t.create_dir_all(Path::new("boot/efi"), 0o755)?;
    t.create_dir_all(Path::new("etc"), 0o755)?;
    t.write(Path::new("etc/fstab"), fstab(&input.ids).as_bytes(), 0o644)?;

    // The EFI binary.
    let scratch = input.scratch;
    std::fs::create_dir_all(scratch).map_err(|e| BuildError::io(scratch, e))?;
    let cfg = scratch.join("embedded.cfg");
    write_plain(&cfg, embedded_cfg(&input.ids).as_bytes())?;
    let efi = scratch.join("BOOTX64.EFI");
    runner(
        &Cmd::new("grub-mkimage")
            .args([
                "-O",
                "x86_64-efi",
                "-d",
                "/usr/lib/grub/x86_64-efi",
                "-p",
                "/EFI/BOOT",
                "-c",
            ])
            .arg(&cfg)
            .arg("-o")
            .arg(&efi)
            .args(GRUB_MODULES),
    )?;

    // The raw disk, written under a temp name in the output directory.
    std::fs::create_dir_all(input.out_dir).map_err(|e| BuildError::io(input.out_dir, e))?;
    let raw_final = input.out_dir.join(format!("{}.raw", input.base_name));
    let raw_tmp = webake_sys::fsutil::temp_sibling(&raw_final);
    let guard = TempFiles(vec![raw_tmp.clone()]);
    {
        let f = std::fs::File::create(&raw_tmp).map_err(|e| BuildError::io(&raw_tmp, e))?;
        f.set_len(layout.disk_bytes)
            .map_err(|e| BuildError::io(&raw_tmp, e))?;
    }
    let script = scratch.join("layout.sfdisk");
    write_plain(&script, layout.sfdisk_script(&input.ids).as_bytes())?;
    runner(
        &Cmd::new("sh")
            .arg("-c")
            .arg("exec sfdisk --quiet --no-reread --no-tell-kernel \"$1\" < \"$2\"")
            .arg("sfdisk")
            .arg(&raw_tmp)
            .arg(&script),
    )?;

    // ESP: FAT at its offset, then the EFI binary copied in with mtools.
    runner(
        &Cmd::new("mkfs.vfat")
            // FAT32 needs at least 65525 clusters: one 512-byte sector per cluster from 64 MiB
            // up; a smaller ESP is FAT16 (which UEFI firmware reads as well).
            .args(if layout.esp_bytes >= 64 << 20 {
                ["-F", "32", "-s", "1"]
            } else {
                ["-F", "16", "-s", "4"]
            })
            .args(["-n", "ESP", "-i", &input.ids.esp_volume_id, "-S", "512"])
            .arg(format!("--offset={}", layout.esp_offset / SECTOR))
            .arg(&raw_tmp)
            .arg((layout.esp_bytes / 1024).to_string()),
    )?;
    let img = format!("{}@@{}", raw_tmp.display(), layout.esp_offset);
    runner(&Cmd::new("mmd").env("MTOOLS_SKIP_CHECK", "1").args([
        "-i",
        &img,
        "::/EFI",
        "::/EFI/BOOT",
    ]))?;
    runner(
        &Cmd::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-i", &img])
            .arg(&efi)
            .arg("::/EFI/BOOT/BOOTX64.EFI"),
    )?;

    // Root filesystem populated from the tree, at its offset.
    runner(
        &Cmd::new("mkfs.ext4")
            .args([
                "-F",
                "-q",
                "-L",
                "root",
                "-U",
                &input.ids.root_fs_uuid,
                "-b",
                "4096",
                "-E",
            ])
            .arg(format!(
                "offset={},nodiscard,root_owner=0:0",
                layout.root_offset
            ))
            .arg("-d")
            .arg(tree)
            .arg(&raw_tmp)
            .arg(format!("{}k", layout.root_bytes / 1024))
            .env("E2FSPROGS_FAKE_TIME", "0")
            .env("MKE2FS_DEVICE_SECTSIZE", "512"),
    )?;
    let mut artifacts = Vec::new();
    let mut tmps = guard;
    let want_raw = input.outputs.contains(&OutputFormat::Raw);
    // The raw disk is final now: hash it on a second thread while qemu-img compresses it
    // (both only read it; on two cores this hides most of hashing the whole disk).
    let raw_sha256 = std::thread::scope(|scope| -> Result<Option<String>> {
        let raw_hash = want_raw.then(|| {
            let p = raw_tmp.clone();
            scope.spawn(move || crate::digest::sha256_file(&p))
        });
        let converted = if input.outputs.contains(&OutputFormat::Qcow2) {
            let q_final = input.out_dir.join(format!("{}.qcow2", input.base_name));
            let q_tmp = webake_sys::fsutil::temp_sibling(&q_final);
            tmps.0.push(q_tmp.clone());
            let r = runner(
                &Cmd::new("qemu-img")
                    // -W: clusters are compressed on several threads and written as they
                    // finish, so the qcow2's cluster order (not its content) varies between
                    // runs; every bake has its own disk ids anyway.
                    .args([
                        "convert",
                        "-q",
                        "-W",
                        "-f",
                        "raw",
                        "-O",
                        "qcow2",
                        "-c",
                        "-o",
                        "compression_type=zstd",
                    ])
                    .arg(&raw_tmp)
                    .arg(&q_tmp),
            );
            artifacts.push((OutputFormat::Qcow2, q_tmp, q_final));
            r
        } else {
            Ok(())
        };
        let raw_digest = raw_hash.map(|h| h.join().expect("hashing thread panicked"));
        converted?;
        raw_digest.transpose()
    })?;
    if want_raw {
        artifacts.push((OutputFormat::Raw, raw_tmp.clone(), raw_final));
    }
    // Digests, then rename into place (all or nothing).
    let mut out = Vec::new();
    for (format, tmp, fin) in &artifacts {
        let sha256 = match (format, &raw_sha256) {
            (OutputFormat::Raw, Some(d)) => d.clone(),
            _ => crate::digest::sha256_file(tmp)?,
        };
        let size = std::fs::metadata(tmp)
            .map_err(|e| BuildError::io(tmp, e))?
            .len();
        out.push(Artifact {
            format: *format,
            path: fin.clone(),
            sha256,
            size,
        });
    }
    for (_, tmp, fin) in &artifacts {
        std::fs::rename(tmp, fin).map_err(|e| BuildError::io(fin, e))?;
    }
    drop(tmps); // removes the raw temp if raw was not requested
    Ok((out, boot))
}

/// Write a file of webake's own scratch directory.
fn write_plain(p: &Path, content: &[u8]) -> Result<()> {
    std::fs::write(p, content).map_err(|e| BuildError::io(p, e))
}

/// Temp files removed on drop (success renames them away first).
struct TempFiles(Vec<PathBuf>);

impl Drop for TempFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Run a command and stream output (convenience for callers without a reporter).
pub fn run_simple(cmd: &Cmd, cancel: &webake_sys::CancelToken) -> Result<()> {
    run(cmd, cancel, &mut |_| {})?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use webake_spec::ByteSize;

    #[test]
    fn layout_is_aligned_and_fits() {
        let d = DiskSpec {
            size: ByteSize(2 << 30),
            esp_size: ByteSize(64 << 20),
            ..DiskSpec::default()
        };
        let l = Layout::new(&d).unwrap();
        assert_eq!(l.esp_offset, 1 << 20);
        assert_eq!(l.root_offset, 65 << 20);
        assert_eq!(l.root_offset % ALIGN, 0);
        assert!(l.root_offset + l.root_bytes + GPT_TAIL <= l.disk_bytes);
        let ids = DiskIds::derive("img-1");
        let s = l.sfdisk_script(&ids);
        assert!(s.contains("start=2048, size=131072"), "{s}");
        assert!(s.contains(ROOT_X86_64_TYPE));
    }

    #[test]
    fn ids_are_deterministic_uuids() {
        let a = DiskIds::derive("x");
        let b = DiskIds::derive("x");
        assert_eq!(a.root_fs_uuid, b.root_fs_uuid);
        assert_ne!(a.root_fs_uuid, DiskIds::derive("y").root_fs_uuid);
        assert_eq!(a.root_fs_uuid.len(), 36);
        assert_eq!(&a.root_fs_uuid[14..15], "4");
        assert_eq!(a.esp_fs_uuid().len(), 9);
    }

    #[test]
    fn newest_kernel_wins() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("boot")).unwrap();
        for v in ["6.1.0-9-cloud-amd64", "6.1.0-10-cloud-amd64"] {
            std::fs::write(d.path().join(format!("boot/vmlinuz-{v}")), "").unwrap();
        }
        std::fs::write(d.path().join("boot/initrd.img-6.1.0-10-cloud-amd64"), "").unwrap();
        let k = find_kernel(d.path()).unwrap();
        assert_eq!(k.version, "6.1.0-10-cloud-amd64");
        assert_eq!(
            k.initrd.as_deref(),
            Some("/boot/initrd.img-6.1.0-10-cloud-amd64")
        );
        let empty = tempfile::tempdir().unwrap();
        std::fs::create_dir(empty.path().join("boot")).unwrap();
        assert!(
            find_kernel(empty.path())
                .unwrap_err()
                .to_string()
                .contains("no kernel")
        );
    }

    #[test]
    fn grub_and_fstab_reference_the_root_uuid() {
        let ids = DiskIds::derive("z");
        let boot = BootFiles {
            kernel: "/boot/vmlinuz-6".into(),
            initrd: None,
            version: "6".into(),
        };
        let cmd = kernel_cmdline(&ids, &["quiet".into()]);
        assert!(cmd.contains("console=ttyS0,115200n8") && cmd.ends_with("quiet"));
        assert!(
            grub_cfg(&ids, &boot, &cmd, "t").contains(&format!("root=UUID={}", ids.root_fs_uuid))
        );
        assert!(fstab(&ids).contains(&format!("UUID={}\t/\t", ids.root_fs_uuid)));
        assert!(embedded_cfg(&ids).contains(&ids.root_fs_uuid));
    }
}
