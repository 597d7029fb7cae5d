//! Assemble a bootable GPT disk offline: no loop device, no mount.
//!
//! The disk boots under the firmwares the recipe's `disk.boot` declares: `[uefi]` (the
//! default), `[bios, uefi]` (hybrid) or `[bios]`. One GPT layout serves all three; a
//! partition's number names its role whatever the firmwares, so the root filesystem is
//! partition 2 on every webake disk (the BIOS boot partition takes 14, the number Debian's and
//! Ubuntu's cloud images give it). Offsets are 1 MiB aligned; the first partition starts at
//! LBA 2048.
//!
//! Offsets for the default `esp_size` of 64 MiB (the root ends at the last MiB boundary
//! before the backup GPT):
//!
//! | region | `[bios, uefi]` | `[uefi]` | `[bios]` | contents | made with |
//! |---|---|---|---|---|---|
//! | MBR boot code | LBA 0, bytes 0–439 | zeros | as hybrid | GRUB `boot.img`, patched to load LBA 2048 | webake ([`grub_bios`]) |
//! | protective MBR | LBA 0, bytes 440–511 | same | same | disk signature 0, one partition of type 0xEE over the disk, 55 AA | `sfdisk` |
//! | GPT | LBA 1–33, last 33 sectors | same | same | header and 128 entries; backup at the end | `sfdisk` |
//! | p14 BIOS boot | 1 MiB, 1 MiB long | — | 1 MiB, 1 MiB long | GRUB `core.img` (i386-pc, ~170 KiB) from its first sector | `grub-mkimage -O i386-pc`, block list patched by webake |
//! | p1 ESP | 2 MiB, `esp_size` long | 1 MiB, `esp_size` long | — | FAT32 (FAT16 below 64 MiB), label `ESP`: `\EFI\BOOT\BOOTX64.EFI` (GRUB x86_64-efi; `BOOTAA64.EFI`, arm64-efi, for arm64) | `mkfs.vfat --offset`, `mmd`, `mcopy` |
//! | p2 root | 66 MiB to the end | 65 MiB to the end | 2 MiB to the end | ext4, label `root`: the tree, with `/boot/grub/grub.cfg` and `/etc/fstab` | `mkfs.ext4 -E offset=… -d TREE` |
//!
//! Partition types: BIOS boot `21686148-6449-6E6F-744E-656564454649`, ESP
//! `C12A7328-F81F-11D2-BA4B-00A0C93EC93B`, root `4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709`
//! (Discoverable Partitions: root x86-64). A `[uefi]` disk is laid out exactly as before
//! hybrid disks existed.
//!
//! Which firmware reads what:
//! - BIOS (SeaBIOS, EC2 legacy BIOS) runs the MBR boot code, which loads `core.img` from the
//!   BIOS boot partition by LBA (no filesystem); UEFI firmware ignores that code (the GPT is
//!   valid) and runs `\EFI\BOOT\BOOTX64.EFI` from the ESP.
//! - Both GRUB images embed the same small config ([`embedded_cfg`]): find the root
//!   filesystem by its UUID, then read `/boot/grub/grub.cfg` from it. That one `grub.cfg`
//!   ([`grub_cfg`]) serves both firmwares: serial and graphical console, one entry that boots
//!   the newest kernel in `/boot` with its initrd. Both images carry every module they need,
//!   so nothing else of GRUB is read from disk.
//! - `/etc/fstab` mounts the root by UUID, and the ESP at `/boot/efi` (`nofail`) when there
//!   is one.

use std::path::{Path, PathBuf};

use serde::Serialize;
use webake_spec::{BootMode, DiskSpec, OutputFormat};
use webake_sys::process::{Cmd, run};

use crate::digest::sha256_hex;
use crate::error::{BuildError, Result};

pub mod ext4_times;
pub mod grub_bios;

pub const SECTOR: u64 = 512;
pub const ALIGN: u64 = 1 << 20;
/// The GPT backup header and table at the end of the disk.
const GPT_TAIL: u64 = 33 * SECTOR;

pub const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
pub const ROOT_X86_64_TYPE: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
/// GRUB's BIOS boot partition ("Hah!IdontNeedEFI").
pub const BIOS_BOOT_TYPE: &str = "21686148-6449-6E6F-744E-656564454649";

/// Partition numbers, one per role (see the module documentation).
pub const ESP_PARTNO: u32 = 1;
pub const ROOT_PARTNO: u32 = 2;
pub const BIOS_BOOT_PARTNO: u32 = 14;
/// Size of the BIOS boot partition: room for a `core.img` up to the 444 KiB diskboot loads
/// (webake's is about 170 KiB).
pub const BIOS_BOOT_BYTES: u64 = ALIGN;

/// Where GRUB's modules and images for each platform are (Debian: grub-efi-amd64-bin,
/// grub-pc-bin).
pub const GRUB_EFI_DIR: &str = "/usr/lib/grub/x86_64-efi";
pub const GRUB_BIOS_DIR: &str = "/usr/lib/grub/i386-pc";

/// The firmwares a `disk.boot` list declares, without repeats, BIOS first.
pub fn firmwares(boot: &[BootMode]) -> Result<Vec<BootMode>> {
    let v: Vec<BootMode> = [BootMode::Bios, BootMode::Uefi]
        .into_iter()
        .filter(|m| boot.contains(m))
        .collect();
    if v.is_empty() {
        return Err(BuildError::Invalid(
            "disk.boot is empty: expected `uefi`, `bios` or both".into(),
        ));
    }
    Ok(v)
}

/// A byte range of the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Extent {
    pub offset: u64,
    pub bytes: u64,
}

/// Partition placement, computed from the disk spec (pure).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Layout {
    pub disk_bytes: u64,
    /// The firmwares the disk boots under ([`firmwares`]).
    pub firmwares: Vec<BootMode>,
    /// The BIOS boot partition (GRUB's `core.img`), with BIOS boot.
    pub bios_boot: Option<Extent>,
    /// The EFI system partition, with UEFI boot.
    pub esp: Option<Extent>,
    pub root: Extent,
}

/// One line of the partition table.
struct PartitionLine<'a> {
    number: u32,
    extent: Extent,
    type_guid: &'static str,
    uuid: &'a str,
    name: &'static str,
}

impl Layout {
    pub fn new(disk: &DiskSpec) -> Result<Self> {
        let disk_bytes = disk.size.bytes();
        let firmwares = firmwares(&disk.boot)?;
        let mut next = ALIGN;
        let mut take = |bytes: u64| {
            let e = Extent {
                offset: next,
                bytes,
            };
            next += bytes;
            e
        };
        let bios_boot = firmwares
            .contains(&BootMode::Bios)
            .then(|| take(BIOS_BOOT_BYTES));
        let esp = firmwares
            .contains(&BootMode::Uefi)
            .then(|| take(disk.esp_size.bytes() / ALIGN * ALIGN));
        let root_offset = next;
        let end = (disk_bytes - GPT_TAIL) / ALIGN * ALIGN;
        if end <= root_offset + (64 << 20) {
            return Err(BuildError::Invalid(format!(
                "disk size {} leaves no room for the root filesystem",
                disk.size
            )));
        }
        Ok(Self {
            disk_bytes,
            firmwares,
            bios_boot,
            esp,
            root: Extent {
                offset: root_offset,
                bytes: end - root_offset,
            },
        })
    }

    pub fn boots(&self, mode: BootMode) -> bool {
        self.firmwares.contains(&mode)
    }

    /// The partitions in disk order.
    fn partitions<'a>(&self, ids: &'a DiskIds) -> Vec<PartitionLine<'a>> {
        let mut v = Vec::new();
        if let Some(extent) = self.bios_boot {
            v.push(PartitionLine {
                number: BIOS_BOOT_PARTNO,
                extent,
                type_guid: BIOS_BOOT_TYPE,
                uuid: &ids.bios_part_uuid,
                name: "bios-boot",
            });
        }
        if let Some(extent) = self.esp {
            v.push(PartitionLine {
                number: ESP_PARTNO,
                extent,
                type_guid: ESP_TYPE,
                uuid: &ids.esp_part_uuid,
                name: "esp",
            });
        }
        v.push(PartitionLine {
            number: ROOT_PARTNO,
            extent: self.root,
            type_guid: ROOT_X86_64_TYPE,
            uuid: &ids.root_part_uuid,
            name: "root",
        });
        v
    }

    /// The sfdisk script for this layout. Each line names its partition number (`pN :`,
    /// sfdisk reads the number from the name's trailing digits).
    pub fn sfdisk_script(&self, ids: &DiskIds) -> String {
        let mut s = format!(
            "label: gpt\nlabel-id: {}\nunit: sectors\nfirst-lba: 2048\n\n",
            ids.disk_guid
        );
        for p in self.partitions(ids) {
            s.push_str(&format!(
                "p{} : start={}, size={}, type={}, uuid={}, name=\"{}\"\n",
                p.number,
                p.extent.offset / SECTOR,
                p.extent.bytes / SECTOR,
                p.type_guid,
                p.uuid,
                p.name,
            ));
        }
        s
    }
}

/// Identifiers derived from a seed (a bake's inputs digest), never random: the same inputs give
/// the same disk.
#[derive(Debug, Clone, Serialize)]
pub struct DiskIds {
    pub disk_guid: String,
    pub esp_part_uuid: String,
    pub root_part_uuid: String,
    pub bios_part_uuid: String,
    pub root_fs_uuid: String,
    /// FAT volume id, 8 hex digits.
    pub esp_volume_id: String,
    /// The root filesystem's directory hash seed (a UUID).
    pub root_fs_hash_seed: String,
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
            bios_part_uuid: u("bios-part"),
            root_fs_uuid: u("root-fs"),
            root_fs_hash_seed: u("root-fs-hash-seed"),
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

/// The kernel and initrd to boot, as paths inside the tree, and the firmwares the disk boots
/// under.
#[derive(Debug, Clone, Serialize)]
pub struct BootFiles {
    pub kernel: String,
    pub initrd: Option<String>,
    pub version: String,
    /// `bios` and/or `uefi` (BIOS first), as [`assemble`] laid the disk out; empty from
    /// [`find_kernel`] alone. An AMI of a disk with both boots `uefi-preferred`, BIOS only
    /// `legacy-bios`, UEFI only `uefi`.
    pub firmwares: Vec<BootMode>,
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
        firmwares: Vec::new(),
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
    kernel_cmdline_for(ids, extra, &["ttyS0,115200n8"])
}

/// The kernel command line with the architecture's serial consoles.
pub fn kernel_cmdline_for(ids: &DiskIds, extra: &[String], consoles: &[&str]) -> String {
    let mut args = vec![
        format!("root=UUID={}", ids.root_fs_uuid),
        "ro".to_string(),
        "console=tty0".to_string(),
    ];
    args.extend(consoles.iter().map(|c| format!("console={c}")));
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

/// The config embedded in both GRUB images (EFI binary and BIOS `core.img`): find the root
/// filesystem, read its grub.cfg.
pub fn embedded_cfg(ids: &DiskIds) -> String {
    format!(
        "search --no-floppy --fs-uuid --set=root {u}\nset prefix=($root)/boot/grub\nconfigfile ($root)/boot/grub/grub.cfg\n",
        u = ids.root_fs_uuid
    )
}

/// `/etc/fstab`: the root, and the ESP when the disk has one (`esp`).
pub fn fstab(ids: &DiskIds, esp: bool) -> String {
    let mut s = format!(
        "# Written by webake.\nUUID={}\t/\text4\tdefaults,errors=remount-ro\t0\t1\n",
        ids.root_fs_uuid,
    );
    if esp {
        s.push_str(&format!(
            "UUID={}\t/boot/efi\tvfat\tumask=0077,nofail\t0\t2\n",
            ids.esp_fs_uuid()
        ));
    }
    s
}

/// Modules built into the EFI binary (x86_64-efi).
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

/// Modules built into the BIOS `core.img` (i386-pc): the EFI set with BIOS disk access
/// (`biosdisk`) in place of the EFI console (`efi_gop`). `core.img` is read before any
/// filesystem, so it has to find the root by UUID on its own (`biosdisk`, `part_gpt`,
/// `ext2`, `search_fs_uuid`) and needs nothing from disk after that.
pub const BIOS_GRUB_MODULES: &[&str] = &[
    "biosdisk",
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
    // Not for the disk (crate::qcow2 writes the qcow2): a bake from a catalog image or an AMI
    // reads it with qemu-img.
    ("qemu-img", "qemu-utils"),
];

/// The host tools for a UEFI disk (what every bake needed before BIOS boot existed).
pub fn check_host_tools() -> Result<()> {
    check_host_tools_for(&[BootMode::Uefi])
}

/// The host tools, and GRUB's modules for each firmware in `boot`.
pub fn check_host_tools_for(boot: &[BootMode]) -> Result<()> {
    for (tool, pkg) in HOST_TOOLS {
        if webake_sys::process::which(tool).is_none() {
            return Err(BuildError::MissingTool {
                tool: tool.to_string(),
                hint: format!("apt-get install {pkg}"),
            });
        }
    }
    check_grub_platforms(boot, "x86_64-efi")
}

/// GRUB's modules and images for each firmware in `boot` (UEFI: on the host for x86-64,
/// the image may bring another platform's, see [`grub_modules`]).
fn check_grub_platforms(boot: &[BootMode], efi: &str) -> Result<()> {
    if boot.contains(&BootMode::Uefi)
        && efi == "x86_64-efi"
        && !Path::new(GRUB_EFI_DIR).join("linux.mod").is_file()
    {
        return Err(BuildError::MissingTool {
            tool: "GRUB x86_64-efi modules".into(),
            hint: "apt-get install grub-efi-amd64-bin".into(),
        });
    }
    let bios = Path::new(GRUB_BIOS_DIR);
    if boot.contains(&BootMode::Bios)
        && !(bios.join("linux.mod").is_file() && bios.join("boot.img").is_file())
    {
        return Err(BuildError::MissingTool {
            tool: "GRUB i386-pc modules and boot.img".into(),
            hint: "apt-get install grub-pc-bin".into(),
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
    /// The source date (`SOURCE_DATE_EPOCH`): every timestamp the disk holds is at most this.
    pub source_date: i64,
    /// The image's Debian architecture (`amd64`, `arm64`): which EFI GRUB and console.
    pub arch: &'a str,
    /// The webake binary (sandbox helper): GRUB modules taken from the image (arm64 on an
    /// x86-64 host) are read by a `grub-mkimage` in the sandbox, never on the host.
    pub sandbox_helper: Option<&'a Path>,
    /// Where a line about work done without a command goes (the bake log and the reporter).
    pub say: Option<&'a dyn Fn(&str)>,
    /// Files that replace their placeholders in the root filesystem once it is made, as (path
    /// in the image, file): the base's initramfs, built while the tree was exported, finalized
    /// and written (waits for it).
    pub late_files: Option<&'a LateFiles<'a>>,
}

/// Files put into the root filesystem after it is made: (path in the image, file) pairs.
pub type LateFiles<'a> = dyn Fn() -> Result<Vec<(PathBuf, PathBuf)>> + 'a;

/// How an architecture boots with UEFI: GRUB's platform and the removable-media file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EfiPlatform {
    pub grub: &'static str,
    pub file: &'static str,
    /// Kernel consoles besides `tty0` (the last is /dev/console where it exists).
    pub consoles: &'static [&'static str],
}

impl EfiPlatform {
    pub fn of(debian_arch: &str) -> Result<Self> {
        match debian_arch {
            "amd64" => Ok(Self {
                grub: "x86_64-efi",
                file: "BOOTX64.EFI",
                consoles: &["ttyS0,115200n8"],
            }),
            // ttyS0: AWS Graviton's serial console; ttyAMA0: the PL011 of qemu's virt machine.
            "arm64" => Ok(Self {
                grub: "arm64-efi",
                file: "BOOTAA64.EFI",
                consoles: &["ttyS0,115200n8", "ttyAMA0,115200n8"],
            }),
            other => Err(BuildError::Invalid(format!(
                "webake assembles UEFI disks for amd64 and arm64, not {other}"
            ))),
        }
    }
}

/// Where `platform`'s GRUB modules are: the host's (`/usr/lib/grub/PLATFORM`, Debian
/// grub-efi-*-bin), else the image's own (an arm64 image on an x86-64 host installs
/// grub-efi-arm64-bin; webake adds it to an mmdebstrap base). `true`: the image's.
fn grub_modules(tree: &Path, platform: &str) -> Result<(PathBuf, bool)> {
    let host = Path::new("/usr/lib/grub").join(platform);
    if host.join("linux.mod").is_file() {
        return Ok((host, false));
    }
    let t = webake_sys::Tree::open(tree)?;
    let inner = Path::new("usr/lib/grub").join(platform);
    if t.is_dir(&inner)
        && t.metadata(&inner.join("linux.mod"))?
            .is_some_and(|m| m.is_file())
    {
        return Ok((Path::new("/image").join(inner), true));
    }
    let pkg = match platform {
        "x86_64-efi" => "grub-efi-amd64-bin",
        "arm64-efi" => "grub-efi-arm64-bin",
        _ => "grub-efi",
    };
    Err(BuildError::MissingTool {
        tool: format!("GRUB {platform} modules"),
        hint: format!("apt-get install {pkg} on the host, or install {pkg} in the image"),
    })
}

/// Run a command through the shared runner, streaming its output to `sink`.
pub type Runner<'a> = dyn FnMut(&Cmd) -> Result<()> + 'a;

/// Write boot configuration into the tree, then build the disk and the requested formats.
pub fn assemble(
    input: &AssembleInput<'_>,
    runner: &mut Runner<'_>,
) -> Result<(Vec<Artifact>, BootFiles)> {
    let layout = Layout::new(input.disk)?;
    let efi_platform = EfiPlatform::of(input.arch)?;
    check_grub_platforms(&layout.firmwares, efi_platform.grub)?;
    let mut boot = find_kernel(input.tree)?;
    boot.firmwares = layout.firmwares.clone();
    write_boot_config(input, &layout, &boot)?;

    let scratch = input.scratch;
    std::fs::create_dir_all(scratch).map_err(|e| BuildError::io(scratch, e))?;
    let cfg = scratch.join("embedded.cfg");
    write_plain(&cfg, embedded_cfg(&input.ids).as_bytes())?;
    let efi = layout
        .boots(BootMode::Uefi)
        .then(|| build_efi_image(input, efi_platform, &cfg, runner))
        .transpose()?;
    let core = layout
        .boots(BootMode::Bios)
        .then(|| build_bios_core(&cfg, scratch, runner))
        .transpose()?;

    // The raw disk, written under a temp name in the output directory.
    std::fs::create_dir_all(input.out_dir).map_err(|e| BuildError::io(input.out_dir, e))?;
    let raw_final = input.out_dir.join(format!("{}.raw", input.base_name));
    let raw_tmp = webake_sys::fsutil::temp_sibling(&raw_final);
    let guard = TempFiles(vec![raw_tmp.clone()]);
    partition(&raw_tmp, &layout, &input.ids, scratch, runner)?;
    if let (Some(esp), Some(efi)) = (layout.esp, &efi) {
        make_esp(&raw_tmp, esp, &input.ids, efi, input.source_date, runner)?;
    }
    make_root(&raw_tmp, layout.root, input, runner)?;
    // Last: boot.img keeps the partition table it finds in sector 0.
    if let (Some(part), Some(core)) = (layout.bios_boot, &core) {
        grub_bios::install(
            &raw_tmp,
            &Path::new(GRUB_BIOS_DIR).join("boot.img"),
            core,
            part.offset / SECTOR,
            part.bytes / SECTOR,
        )?;
    }
    let out = write_artifacts(input, &raw_tmp, raw_final, guard)?;
    Ok((out, boot))
}

/// Boot configuration inside the tree (every path resolved inside it: a planted /boot/grub
/// symlink cannot send grub.cfg to the host).
fn write_boot_config(input: &AssembleInput<'_>, layout: &Layout, boot: &BootFiles) -> Result<()> {
    let cmdline = kernel_cmdline_for(
        &input.ids,
        &input.disk.kernel_cmdline,
        EfiPlatform::of(input.arch)?.consoles,
    );
    let t = webake_sys::Tree::open(input.tree)?;
    t.create_dir_all(Path::new("boot/grub"), 0o755)?;
    t.write(
        Path::new("boot/grub/grub.cfg"),
        grub_cfg(&input.ids, boot, &cmdline, &input.title).as_bytes(),
        0o644,
    )?;
    if layout.esp.is_some() {
        t.create_dir_all(Path::new("boot/efi"), 0o755)?;
    }
    t.create_dir_all(Path::new("etc"), 0o755)?;
    let image_fstab = match t.metadata(Path::new("etc/fstab"))? {
        Some(m) if m.is_file() => {
            String::from_utf8_lossy(&t.read(Path::new("etc/fstab"))?).into_owned()
        }
        _ => String::new(),
    };
    t.write(
        Path::new("etc/fstab"),
        with_image_mounts(&fstab(&input.ids, layout.esp.is_some()), &image_fstab).as_bytes(),
        0o644,
    )?;
    Ok(())
}

/// webake's `fstab` followed by the image's own entries for other mount points (what a role
/// added: a tmpfs, a data volume); the image's root and ESP entries are replaced.
pub fn with_image_mounts(ours: &str, image: &str) -> String {
    let mut out = ours.to_string();
    let kept: Vec<&str> = image
        .lines()
        .filter(|l| {
            let mut f = l.split_whitespace();
            match (f.next(), f.next()) {
                (Some(src), Some(dir)) if !src.starts_with('#') => {
                    !matches!(dir, "/" | "/boot/efi")
                }
                _ => false,
            }
        })
        .collect();
    if !kept.is_empty() {
        out.push_str("# From the image (its provisioning steps):\n");
        for l in kept {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// `BOOTX64.EFI` / `BOOTAA64.EFI`: GRUB for the platform with the embedded config `cfg`.
/// Modules from the image are read by a `grub-mkimage` in the sandbox (the host's tools, the
/// image at /image, the output directory bound in): a step's planted module or symlink
/// reaches nothing of the host.
fn build_efi_image(
    input: &AssembleInput<'_>,
    platform: EfiPlatform,
    cfg: &Path,
    runner: &mut Runner<'_>,
) -> Result<PathBuf> {
    let scratch = input.scratch;
    let efi = scratch.join(platform.file);
    let (dir, from_image) = grub_modules(input.tree, platform.grub)?;
    let mut args: Vec<String> = ["-O", platform.grub, "-d"].map(String::from).to_vec();
    args.push(dir.display().to_string());
    args.extend(["-p", "/EFI/BOOT", "-c"].map(String::from));
    if !from_image {
        args.extend([
            cfg.display().to_string(),
            "-o".into(),
            efi.display().to_string(),
        ]);
        args.extend(GRUB_MODULES.iter().map(|m| m.to_string()));
        runner(&Cmd::new("grub-mkimage").args(&args))?;
        return Ok(efi);
    }
    let helper = input.sandbox_helper.ok_or_else(|| {
        BuildError::Invalid("GRUB modules from the image need the sandbox helper".into())
    })?;
    let out = scratch.join("efi-out");
    let sbx = scratch.join("efi-sandbox");
    for d in [&out, &sbx] {
        std::fs::create_dir_all(d).map_err(|e| BuildError::io(d, e))?;
    }
    std::fs::copy(cfg, out.join("embedded.cfg")).map_err(|e| BuildError::io(cfg, e))?;
    args.extend(["/out/embedded.cfg", "-o"].map(String::from));
    args.push(format!("/out/{}", platform.file));
    // Only the modules this platform has (all_video, efi_gop are x86-64 and arm64 alike).
    args.extend(GRUB_MODULES.iter().map(|m| m.to_string()));
    let mut argv = vec!["grub-mkimage".to_string()];
    argv.extend(args);
    let mut spec = webake_sys::sandbox::SandboxSpec::host_tools(&sbx, argv);
    spec.view = webake_sys::sandbox::View::Host {
        tree: Some(input.tree.to_path_buf()),
        image_at: "/image".into(),
    };
    spec.binds.push(webake_sys::sandbox::Bind {
        source: out.clone(),
        target: "/out".into(),
        readonly: false,
    });
    let cmd = spec
        .command(helper)
        .map_err(|e| BuildError::io(helper, e))?;
    runner(&cmd)?;
    std::fs::rename(out.join(platform.file), &efi).map_err(|e| BuildError::io(&efi, e))?;
    Ok(efi)
}

/// `core.img`: GRUB for i386-pc (diskboot, lzma-compressed kernel and modules) with the same
/// embedded config. The prefix is a placeholder: the config sets it once the root is found.
fn build_bios_core(cfg: &Path, scratch: &Path, runner: &mut Runner<'_>) -> Result<PathBuf> {
    let core = scratch.join("core.img");
    runner(
        &Cmd::new("grub-mkimage")
            .args([
                "-O",
                "i386-pc",
                "-d",
                GRUB_BIOS_DIR,
                "-p",
                "/boot/grub",
                "-c",
            ])
            .arg(cfg)
            .arg("-o")
            .arg(&core)
            .args(BIOS_GRUB_MODULES),
    )?;
    Ok(core)
}

/// A sparse file of the disk's size with the GPT written by sfdisk.
fn partition(
    raw: &Path,
    layout: &Layout,
    ids: &DiskIds,
    scratch: &Path,
    runner: &mut Runner<'_>,
) -> Result<()> {
    {
        let f = std::fs::File::create(raw).map_err(|e| BuildError::io(raw, e))?;
        f.set_len(layout.disk_bytes)
            .map_err(|e| BuildError::io(raw, e))?;
    }
    let script = scratch.join("layout.sfdisk");
    write_plain(&script, layout.sfdisk_script(ids).as_bytes())?;
    runner(
        &Cmd::new("sh")
            .arg("-c")
            .arg("exec sfdisk --quiet --no-reread --no-tell-kernel \"$1\" < \"$2\"")
            .arg("sfdisk")
            .arg(raw)
            .arg(&script),
    )
}

/// ESP: FAT at its offset, then the EFI binary copied in with mtools. dosfstools and mtools
/// take their clock from `SOURCE_DATE_EPOCH`, so the FAT is a function of the volume id, the
/// binary and the source date.
fn make_esp(
    raw: &Path,
    esp: Extent,
    ids: &DiskIds,
    efi: &Path,
    source_date: i64,
    runner: &mut Runner<'_>,
) -> Result<()> {
    let sde = source_date.to_string();
    runner(
        &Cmd::new("mkfs.vfat")
            .env("SOURCE_DATE_EPOCH", &sde)
            .arg("--invariant")
            // FAT32 needs at least 65525 clusters: one 512-byte sector per cluster from 64 MiB
            // up; a smaller ESP is FAT16 (which UEFI firmware reads as well).
            .args(if esp.bytes >= 64 << 20 {
                ["-F", "32", "-s", "1"]
            } else {
                ["-F", "16", "-s", "4"]
            })
            .args(["-n", "ESP", "-i", &ids.esp_volume_id, "-S", "512"])
            .arg(format!("--offset={}", esp.offset / SECTOR))
            .arg(raw)
            .arg((esp.bytes / 1024).to_string()),
    )?;
    let img = format!("{}@@{}", raw.display(), esp.offset);
    runner(
        &Cmd::new("mmd")
            .env("MTOOLS_SKIP_CHECK", "1")
            .env("SOURCE_DATE_EPOCH", &sde)
            .args(["-i", &img, "::/EFI", "::/EFI/BOOT"]),
    )?;
    runner(
        &Cmd::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .env("SOURCE_DATE_EPOCH", &sde)
            .args(["-i", &img])
            .arg(efi)
            .arg(format!(
                "::/EFI/BOOT/{}",
                efi.file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("BOOTX64.EFI")
            )),
    )
}

/// Root filesystem populated from the tree, at its offset; then its timestamps are made a
/// function of the source date ([`ext4_times`]).
fn make_root(
    raw: &Path,
    root: Extent,
    input: &AssembleInput<'_>,
    runner: &mut Runner<'_>,
) -> Result<()> {
    let (ids, tree, source_date) = (&input.ids, input.tree, input.source_date);
    // The htree hash seed is random unless given.
    let extended = format!(
        "offset={},nodiscard,root_owner=0:0,hash_seed={}",
        root.offset, ids.root_fs_hash_seed
    );
    runner(
        &Cmd::new("mkfs.ext4")
            .args([
                "-F",
                "-q",
                "-L",
                "root",
                "-U",
                &ids.root_fs_uuid,
                "-b",
                "4096",
                "-E",
            ])
            .arg(extended)
            .arg("-d")
            .arg(tree)
            .arg(raw)
            .arg(format!("{}k", root.bytes / 1024))
            .env("E2FSPROGS_FAKE_TIME", source_date.to_string())
            .env("MKE2FS_DEVICE_SECTSIZE", "512"),
    )?;
    if let Some(late) = input.late_files {
        put_late_files(raw, root, &late()?, input.scratch, source_date, runner)?;
    }
    ext4_times::normalize(raw, root.offset, source_date)?;
    Ok(())
}

/// Replace placeholders in the root filesystem with their files (the base's initramfs, built
/// while the tree was exported and written), offline with debugfs, which resolves every path
/// inside the filesystem image, never on the host. Each file keeps its mode and owner; its
/// times are normalized with all the others afterwards. debugfs reports a failed command but
/// exits 0: every file is checked after.
fn put_late_files(
    raw: &Path,
    root: Extent,
    files: &[(PathBuf, PathBuf)],
    scratch: &Path,
    source_date: i64,
    runner: &mut Runner<'_>,
) -> Result<()> {
    use std::fmt::Write as _;
    use std::os::unix::fs::MetadataExt;
    if files.is_empty() {
        return Ok(());
    }
    let device = format!("{}?offset={}", raw.display(), root.offset);
    let mut cmds = String::new();
    let mut sizes = Vec::new();
    for (inner, host) in files {
        let (i, h) = (inner.display().to_string(), host.display().to_string());
        if [&i, &h].iter().any(|p| p.contains(['"', '\n'])) {
            return Err(BuildError::Invalid(format!(
                "cannot put {h} at {i} with debugfs (a quote or newline in the path)"
            )));
        }
        let md = std::fs::metadata(host).map_err(|e| BuildError::io(host, e))?;
        let _ = write!(
            cmds,
            "rm \"{i}\"\nwrite \"{h}\" \"{i}\"\nsif \"{i}\" mode 0{:o}\nsif \"{i}\" uid {}\nsif \"{i}\" gid {}\n",
            md.mode(),
            md.uid(),
            md.gid()
        );
        sizes.push(md.len());
    }
    let cmdfile = scratch.join("late-files.debugfs");
    write_plain(&cmdfile, cmds.as_bytes())?;
    runner(
        &Cmd::new("debugfs")
            .args(["-w", "-f"])
            .arg(&cmdfile)
            .arg(&device)
            .env("E2FSPROGS_FAKE_TIME", source_date.to_string()),
    )?;
    for ((inner, host), want) in files.iter().zip(sizes) {
        let stat = webake_sys::process::capture(
            &Cmd::new("debugfs")
                .arg("-R")
                .arg(format!("stat \"{}\"", inner.display()))
                .arg(&device),
        )?;
        if !stat.contains("Type: regular") || !stat.contains(&format!("Size: {want}\n")) {
            return Err(BuildError::Invalid(format!(
                "debugfs did not put {} ({want} bytes) at {} in the root filesystem: {}",
                host.display(),
                inner.display(),
                stat.lines().take(3).collect::<Vec<_>>().join(" / ")
            )));
        }
    }
    Ok(())
}

/// The requested formats from the finished raw disk, hashed, renamed into place together.
fn write_artifacts(
    input: &AssembleInput<'_>,
    raw_tmp: &Path,
    raw_final: PathBuf,
    mut tmps: TempFiles,
) -> Result<Vec<Artifact>> {
    let mut artifacts = Vec::new();
    let want_raw = input.outputs.contains(&OutputFormat::Raw);
    // The raw disk is final now: hash it on one thread (a sequential pass over the whole
    // disk, holes included) while the others compress it.
    let raw_sha256 = std::thread::scope(|scope| -> Result<Option<String>> {
        let raw_hash = want_raw.then(|| scope.spawn(|| crate::digest::sha256_file(raw_tmp)));
        let converted = if input.outputs.contains(&OutputFormat::Qcow2) {
            let q_final = input.out_dir.join(format!("{}.qcow2", input.base_name));
            let q_tmp = webake_sys::fsutil::temp_sibling(&q_final);
            tmps.0.push(q_tmp.clone());
            // Our own writer (crate::qcow2): clusters compressed on several threads, written
            // in guest order, so the file is a function of the raw disk.
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            let threads = if want_raw { cpus - 1 } else { cpus }.max(1);
            let t = std::time::Instant::now();
            let r = crate::qcow2::convert(raw_tmp, &q_tmp, threads);
            if let (Ok(()), Some(say)) = (&r, input.say) {
                say(&format!(
                    "qcow2 written in {:.2}s (zstd clusters on {threads} thread(s){})",
                    t.elapsed().as_secs_f64(),
                    if want_raw {
                        ", the raw disk hashed beside"
                    } else {
                        ""
                    },
                ));
            }
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
        artifacts.push((OutputFormat::Raw, raw_tmp.to_path_buf(), raw_final));
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
    Ok(out)
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
        let esp = l.esp.unwrap();
        assert_eq!(esp.offset, 1 << 20);
        assert_eq!(l.root.offset, 65 << 20);
        assert_eq!(l.root.offset % ALIGN, 0);
        assert!(l.root.offset + l.root.bytes + GPT_TAIL <= l.disk_bytes);
        assert_eq!(l.bios_boot, None);
        assert_eq!(l.firmwares, [BootMode::Uefi]);
        let ids = DiskIds::derive("img-1");
        let s = l.sfdisk_script(&ids);
        assert!(s.contains("start=2048, size=131072"), "{s}");
        assert!(s.contains(ROOT_X86_64_TYPE));
    }

    fn disk(boot: &[BootMode]) -> DiskSpec {
        DiskSpec {
            size: ByteSize(2 << 30),
            esp_size: ByteSize(64 << 20),
            boot: boot.to_vec(),
            ..DiskSpec::default()
        }
    }

    /// The partition table of a UEFI disk is the one webake wrote before BIOS boot existed
    /// (the script then had no `pN :` names; sfdisk writes the same GPT bytes, see the
    /// `hybrid` tests).
    #[test]
    fn uefi_layout_is_unchanged() {
        let ids = DiskIds::derive("img-1");
        let l = Layout::new(&disk(&[BootMode::Uefi])).unwrap();
        let root_sectors = ((2u64 << 30) - 33 * 512) / ALIGN * ALIGN / 512 - 133120;
        assert_eq!(
            l.sfdisk_script(&ids),
            format!(
                "label: gpt\nlabel-id: {}\nunit: sectors\nfirst-lba: 2048\n\n\
                 p1 : start=2048, size=131072, type={ESP_TYPE}, uuid={}, name=\"esp\"\n\
                 p2 : start=133120, size={root_sectors}, type={ROOT_X86_64_TYPE}, uuid={}, name=\"root\"\n",
                ids.disk_guid, ids.esp_part_uuid, ids.root_part_uuid
            )
        );
    }

    #[test]
    fn hybrid_and_bios_layouts() {
        let ids = DiskIds::derive("img-1");
        let h = Layout::new(&disk(&[BootMode::Uefi, BootMode::Bios, BootMode::Uefi])).unwrap();
        assert_eq!(h.firmwares, [BootMode::Bios, BootMode::Uefi]);
        let mib = |n: u64| n << 20;
        assert_eq!(
            h.bios_boot,
            Some(Extent {
                offset: mib(1),
                bytes: mib(1)
            })
        );
        assert_eq!(
            h.esp,
            Some(Extent {
                offset: mib(2),
                bytes: mib(64)
            })
        );
        assert_eq!(h.root.offset, mib(66));
        assert_eq!(h.root.offset + h.root.bytes, mib(2047));
        let s = h.sfdisk_script(&ids);
        let lines: Vec<&str> = s.lines().skip(5).collect();
        assert_eq!(lines.len(), 3, "{s}");
        assert!(
            lines[0].starts_with(&format!(
                "p14 : start=2048, size=2048, type={BIOS_BOOT_TYPE}, uuid={}",
                ids.bios_part_uuid
            )),
            "{s}"
        );
        assert!(
            lines[1].starts_with("p1 : start=4096, size=131072, "),
            "{s}"
        );
        assert!(lines[2].starts_with("p2 : start=135168, "), "{s}");

        let b = Layout::new(&disk(&[BootMode::Bios])).unwrap();
        assert_eq!(b.firmwares, [BootMode::Bios]);
        assert_eq!(b.esp, None);
        assert_eq!(b.root.offset, mib(2));
        let s = b.sfdisk_script(&ids);
        assert!(!s.contains(ESP_TYPE), "{s}");
        assert!(s.contains("p2 : start=4096, "), "{s}");

        let e = Layout::new(&disk(&[])).unwrap_err().to_string();
        assert!(e.contains("disk.boot is empty"), "{e}");
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
    fn fstab_keeps_the_images_other_mounts() {
        let ours = "# Written by webake.\nUUID=r\t/\text4\tdefaults\t0\t1\n";
        let image = "# /etc/fstab: static file system information.\nUUID=old / ext4 defaults 0 1\nUUID=e /boot/efi vfat umask=0077 0 1\ntmpfs /srv/scratch tmpfs nodev,noexec 0 0\n\nLABEL=data /srv/data ext4 defaults,nofail 0 0\n";
        assert_eq!(
            with_image_mounts(ours, image),
            format!(
                "{ours}# From the image (its provisioning steps):\ntmpfs /srv/scratch tmpfs nodev,noexec 0 0\nLABEL=data /srv/data ext4 defaults,nofail 0 0\n"
            )
        );
        assert_eq!(with_image_mounts(ours, ""), ours);
        assert_eq!(
            with_image_mounts(ours, "# UNCONFIGURED FSTAB FOR BASE SYSTEM\n"),
            ours
        );
    }

    #[test]
    fn grub_and_fstab_reference_the_root_uuid() {
        let ids = DiskIds::derive("z");
        let boot = BootFiles {
            kernel: "/boot/vmlinuz-6".into(),
            initrd: None,
            version: "6".into(),
            firmwares: vec![BootMode::Uefi],
        };
        let cmd = kernel_cmdline(&ids, &["quiet".into()]);
        assert!(cmd.contains("console=ttyS0,115200n8") && cmd.ends_with("quiet"));
        assert!(
            grub_cfg(&ids, &boot, &cmd, "t").contains(&format!("root=UUID={}", ids.root_fs_uuid))
        );
        assert!(fstab(&ids, true).contains(&format!("UUID={}\t/\t", ids.root_fs_uuid)));
        assert!(fstab(&ids, true).contains("\t/boot/efi\tvfat\t"));
        assert!(!fstab(&ids, false).contains("/boot/efi"));
        assert!(embedded_cfg(&ids).contains(&ids.root_fs_uuid));
    }

    /// The same tree made at different times, from files with different access and change
    /// times, gives the same root filesystem, byte for byte, and e2fsck finds it clean; a late
    /// file (the base's initramfs) replaces its placeholder with its content, mode and owner.
    #[test]
    fn the_root_filesystem_is_a_function_of_its_inputs() {
        assert!(
            webake_sys::process::which("mkfs.ext4").is_some()
                && webake_sys::process::which("e2fsck").is_some(),
            "this test needs mkfs.ext4 and e2fsck (apt-get install e2fsprogs)"
        );
        let d = tempfile::tempdir().unwrap();
        let sde = 1_700_000_000i64;
        let ids = DiskIds::derive("same inputs");
        let root = Extent {
            offset: 1 << 20,
            bytes: 32 << 20,
        };
        let mut digests = Vec::new();
        for (n, order) in [["a", "b", "c"], ["c", "b", "a"]].iter().enumerate() {
            let tree = d.path().join(format!("tree{n}"));
            std::fs::create_dir_all(tree.join("etc/sub")).unwrap();
            for name in order {
                std::fs::write(tree.join("etc").join(name), name).unwrap();
            }
            // A file from a package (older than the source date) and one written during the
            // bake (newer: clamped).
            let old = std::fs::File::open(tree.join("etc/a")).unwrap();
            old.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1000))
                .unwrap();
            std::fs::write(tree.join("etc/sub/new"), "x").unwrap();
            std::fs::create_dir_all(tree.join("boot")).unwrap();
            std::fs::write(tree.join("boot/initrd.img-1.0"), "").unwrap();
            let built = d.path().join(format!("initrd{n}"));
            let content: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
            std::fs::write(&built, &content).unwrap();
            std::fs::set_permissions(
                &built,
                <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
            )
            .unwrap();
            let raw = d.path().join(format!("disk{n}.raw"));
            std::fs::File::create(&raw)
                .unwrap()
                .set_len(root.offset + root.bytes)
                .unwrap();
            let mut runner = |c: &Cmd| run_simple(c, &webake_sys::CancelToken::new());
            let late = || Ok(vec![(PathBuf::from("/boot/initrd.img-1.0"), built.clone())]);
            let scratch = d.path().join(format!("scratch{n}"));
            std::fs::create_dir_all(&scratch).unwrap();
            let disk = DiskSpec::default();
            let input = AssembleInput {
                tree: &tree,
                disk: &disk,
                ids: ids.clone(),
                title: String::new(),
                scratch: &scratch,
                out_dir: d.path(),
                base_name: String::new(),
                outputs: &[],
                source_date: sde,
                arch: "amd64",
                sandbox_helper: None,
                say: None,
                late_files: Some(&late),
            };
            make_root(&raw, root, &input, &mut runner).unwrap();
            let dev = format!("{}?offset={}", raw.display(), root.offset);
            let got = std::process::Command::new("debugfs")
                .args(["-R", "cat /boot/initrd.img-1.0", &dev])
                .output()
                .unwrap();
            assert!(got.stdout == content, "the late file's content");
            let stat = webake_sys::process::capture(
                &Cmd::new("debugfs")
                    .args(["-R", "stat /boot/initrd.img-1.0"])
                    .arg(&dev),
            )
            .unwrap();
            assert!(stat.contains("Mode:  0600"), "{stat}");
            let fsck = std::process::Command::new("e2fsck")
                .args(["-fn"])
                .arg(format!("{}?offset={}", raw.display(), root.offset))
                .output()
                .unwrap();
            assert!(
                fsck.status.success(),
                "e2fsck: {}{}",
                String::from_utf8_lossy(&fsck.stdout),
                String::from_utf8_lossy(&fsck.stderr)
            );
            digests.push(crate::digest::sha256_file(&raw).unwrap());
            std::thread::sleep(std::time::Duration::from_millis(1100));
        }
        assert_eq!(digests[0], digests[1]);
    }
}
