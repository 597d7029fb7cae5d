//! GRUB for BIOS written into a disk image file, as `grub-bios-setup` does, without a device.
//!
//! A BIOS reads sector 0 (the protective MBR of the GPT disk) and runs its first 440 bytes:
//! GRUB's `boot.img`, which loads one sector (the first sector of `core.img`, GRUB's
//! `diskboot.img`) from the LBA patched into it. That sector loads the rest of `core.img` from
//! the block list at its own end, and `core.img` (GRUB's kernel, its modules and an embedded
//! config) takes over.
//!
//! What `grub-bios-setup` does to a GPT disk with a BIOS boot partition (GRUB 2.06
//! `util/setup.c`, the embedding path), and what [`boot_sector`] and [`core_image`] redo:
//! - `core.img` goes to the first sectors of the BIOS boot partition (`gpt.c` embeds there and
//!   nowhere else); its first sector's block list (`struct grub_boot_blocklist`: start LBA u64,
//!   sector count u16, load segment u16, 12 bytes, packed, the first entry ending at byte 512)
//!   names the remaining sectors: one contiguous run loaded at segment 0x820, then an
//!   all-zero terminator.
//! - `boot.img` gets the BPB bytes 0x03..0x5a and the disk signature plus partition table
//!   0x1b8..0x1fe of the sector already on the disk, the LBA of `core.img`'s first sector at
//!   0x5c (u64), 0xff at 0x64 (use the drive the BIOS passes in DL) and two NOPs over the jump
//!   at 0x66 (the workaround for BIOSes that pass a wrong drive number, on for hard disks).
//! - No Reed-Solomon codes (`--no-rs-codes`): they protect a `core.img` in the unowned gap
//!   after an MBR against other software writing there; a BIOS boot partition is GRUB's alone.
//!
//! Why not run `grub-bios-setup` itself (measured with grub-pc-bin 2.06-13+deb12u2): given the
//! image file as the device and a device map, it still looks up the device under its
//! `--directory` in `/proc/self/mountinfo`, finds the host's own disk (`/dev/vda`) and stops
//! ("guessing the root device failed"); in a pod whose root is an overlay there is no device
//! at all. mkosi makes it work by bind-mounting a forged mountinfo in a private mount namespace
//! (0.2 s here), which needs `CAP_SYS_ADMIN` and still probes host devices. The steps above are
//! few and fixed, so webake writes the bytes itself; the `hybrid` tests compare the result
//! byte for byte with `grub-bios-setup --no-rs-codes` on the same disk.

use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{BuildError, Result};

const SECTOR: usize = 512;
/// `GRUB_BOOT_MACHINE_BPB_START` .. `GRUB_BOOT_MACHINE_BPB_END`: a possible DOS BPB, kept.
const BPB: std::ops::Range<usize> = 0x03..0x5a;
/// `GRUB_BOOT_MACHINE_KERNEL_SECTOR`: LBA of `core.img`'s first sector, u64 little-endian.
const KERNEL_SECTOR: usize = 0x5c;
/// `GRUB_BOOT_MACHINE_BOOT_DRIVE`: 0xff means the drive the BIOS passed in DL.
const BOOT_DRIVE: usize = 0x64;
/// `GRUB_BOOT_MACHINE_DRIVE_CHECK`: a two-byte jump, replaced by NOPs for hard disks.
const DRIVE_CHECK: usize = 0x66;
/// `GRUB_BOOT_MACHINE_WINDOWS_NT_MAGIC` .. `GRUB_BOOT_MACHINE_PART_END`: disk signature and
/// the (protective) partition table, kept from the disk.
const PART_TABLE: std::ops::Range<usize> = 0x1b8..0x1fe;
/// Size of `struct grub_boot_blocklist` (start u64, len u16, segment u16, packed).
const BLOCKLIST_ENTRY: usize = 12;
/// `GRUB_BOOT_I386_PC_KERNEL_SEG + (GRUB_DISK_SECTOR_SIZE >> 4)`: where the second sector of
/// `core.img` is loaded.
const FIRST_SEGMENT: u16 = 0x800 + (SECTOR as u16 >> 4);
/// `GRUB_KERNEL_I386_PC_NO_REED_SOLOMON_LENGTH`, in `core.img`'s second sector.
const NO_RS_LENGTH: usize = SECTOR + 0x14;
/// The most sectors `diskboot.img` loads: up to 0x78000 from the link address 0x9000.
pub const MAX_CORE_SECTORS: u64 = (0x78000 - 0x9000) / SECTOR as u64;

/// `boot.img` patched for a `core.img` whose first sector is at `core_lba`, keeping the BPB
/// area and the partition table of `disk_sector0` (the sector it replaces).
pub fn boot_sector(
    boot_img: &[u8],
    disk_sector0: &[u8; SECTOR],
    core_lba: u64,
) -> Result<[u8; SECTOR]> {
    let mut s: [u8; SECTOR] = boot_img.try_into().map_err(|_| {
        BuildError::Invalid(format!(
            "GRUB boot.img is {} bytes, expected {SECTOR}",
            boot_img.len()
        ))
    })?;
    if s[510..] != [0x55, 0xaa] {
        return Err(BuildError::Invalid(
            "GRUB boot.img has no 55 AA boot signature".into(),
        ));
    }
    s[BPB].copy_from_slice(&disk_sector0[BPB]);
    s[DRIVE_CHECK..DRIVE_CHECK + 2].copy_from_slice(&[0x90, 0x90]);
    s[PART_TABLE].copy_from_slice(&disk_sector0[PART_TABLE]);
    s[BOOT_DRIVE] = 0xff;
    s[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&core_lba.to_le_bytes());
    Ok(s)
}

/// `core.img` with its block list set for being written at `core_lba`, in an area of
/// `area_sectors` sectors, padded to whole sectors.
pub fn core_image(core_img: &[u8], core_lba: u64, area_sectors: u64) -> Result<Vec<u8>> {
    let bad = |what: String| BuildError::Invalid(format!("GRUB core.img: {what}"));
    if core_img.len() < NO_RS_LENGTH + 2 {
        return Err(bad(format!("{} bytes is too small", core_img.len())));
    }
    let sectors = core_img.len().div_ceil(SECTOR) as u64;
    let limit = area_sectors.min(MAX_CORE_SECTORS);
    if sectors > limit {
        return Err(bad(format!(
            "{sectors} sectors do not fit in {limit} (the BIOS boot partition has {area_sectors}, \
             diskboot loads at most {MAX_CORE_SECTORS}): embed fewer modules"
        )));
    }
    if core_img[NO_RS_LENGTH..NO_RS_LENGTH + 2] == [0xff, 0xff] {
        return Err(bad("version mismatch (not an i386-pc core image?)".into()));
    }
    let mut img = core_img.to_vec();
    img.resize(sectors as usize * SECTOR, 0);
    // Entry i of the block list, counted from the end of the first sector towards its start.
    let entry = |i: usize| SECTOR - BLOCKLIST_ENTRY * (i + 1)..SECTOR - BLOCKLIST_ENTRY * i;
    // grub-mkimage leaves one entry with the load segment filled in: a check that this is the
    // diskboot.img block list and not something else at the end of the sector.
    let segment = u16::from_le_bytes([img[entry(0).end - 2], img[entry(0).end - 1]]);
    if segment != FIRST_SEGMENT {
        return Err(bad(format!(
            "first block list entry has load segment {segment:#x}, expected {FIRST_SEGMENT:#x} \
             (not an i386-pc core image?)"
        )));
    }
    // Clear the old entries down to their terminator (an entry of length 0).
    let mut i = 0;
    loop {
        if BLOCKLIST_ENTRY * (i + 1) >= SECTOR {
            return Err(bad("no terminator in the block list".into()));
        }
        let e = entry(i);
        let len = u16::from_le_bytes([img[e.start + 8], img[e.start + 9]]);
        if len == 0 {
            break;
        }
        img[e].fill(0);
        i += 1;
    }
    // The first sector is read by boot.img; the rest is one contiguous run after it.
    let rest = sectors - 1;
    if rest > 0 {
        let e = entry(0);
        img[e.start..e.start + 8].copy_from_slice(&(core_lba + 1).to_le_bytes());
        img[e.start + 8..e.start + 10].copy_from_slice(&(rest as u16).to_le_bytes());
        img[e.start + 10..e.end].copy_from_slice(&FIRST_SEGMENT.to_le_bytes());
    }
    img[entry(usize::from(rest > 0))].fill(0);
    Ok(img)
}

/// Install GRUB for BIOS into the disk image `disk`: `core.img` at the start of the BIOS boot
/// partition (`part_lba`, `part_sectors` long), `boot.img` into sector 0 keeping its partition
/// table. Run after the partition table is written.
pub fn install(
    disk: &Path,
    boot_img: &Path,
    core_img: &Path,
    part_lba: u64,
    part_sectors: u64,
) -> Result<()> {
    let boot = std::fs::read(boot_img).map_err(|e| BuildError::io(boot_img, e))?;
    let core = std::fs::read(core_img).map_err(|e| BuildError::io(core_img, e))?;
    let core = core_image(&core, part_lba, part_sectors)
        .map_err(|e| BuildError::Invalid(format!("{}: {e}", core_img.display())))?;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .map_err(|e| BuildError::io(disk, e))?;
    let mut sector0 = [0u8; SECTOR];
    f.read_exact_at(&mut sector0, 0)
        .map_err(|e| BuildError::io(disk, e))?;
    let mbr = boot_sector(&boot, &sector0, part_lba)
        .map_err(|e| BuildError::Invalid(format!("{}: {e}", boot_img.display())))?;
    f.write_all_at(&core, part_lba * SECTOR as u64)
        .map_err(|e| BuildError::io(disk, e))?;
    f.write_all_at(&mbr, 0).map_err(|e| BuildError::io(disk, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for grub-mkimage's output: diskboot's block list entry (segment 0x820) and
    /// terminator at the end of sector 0, a no-RS length in sector 1.
    fn fake_core(sectors: usize) -> Vec<u8> {
        let mut c = vec![0xabu8; sectors * SECTOR - 100];
        c[SECTOR - 24..SECTOR].fill(0);
        c[SECTOR - 12..SECTOR - 4].copy_from_slice(&2u64.to_le_bytes());
        c[SECTOR - 4..SECTOR - 2].copy_from_slice(&(sectors as u16).to_le_bytes());
        c[SECTOR - 2..SECTOR].copy_from_slice(&FIRST_SEGMENT.to_le_bytes());
        c[NO_RS_LENGTH..NO_RS_LENGTH + 2].copy_from_slice(&0x1234u16.to_le_bytes());
        c
    }

    #[test]
    fn core_block_list_names_the_rest_of_the_image() {
        let img = core_image(&fake_core(5), 2048, 2048).unwrap();
        assert_eq!(img.len(), 5 * SECTOR, "padded to whole sectors");
        let e = &img[SECTOR - 12..SECTOR];
        assert_eq!(u64::from_le_bytes(e[..8].try_into().unwrap()), 2049);
        assert_eq!(u16::from_le_bytes([e[8], e[9]]), 4);
        assert_eq!(u16::from_le_bytes([e[10], e[11]]), 0x820);
        assert!(
            img[SECTOR - 24..SECTOR - 12].iter().all(|b| *b == 0),
            "terminator"
        );
        assert!(
            img[SECTOR * 4 + SECTOR - 100..].iter().all(|b| *b == 0),
            "zero padding"
        );
    }

    #[test]
    fn core_that_does_not_fit_is_refused() {
        let e = core_image(&fake_core(5), 2048, 4).unwrap_err().to_string();
        assert!(e.contains("5 sectors do not fit in 4"), "{e}");
        let mut c = fake_core(3);
        c[SECTOR - 2..SECTOR].fill(0);
        let e = core_image(&c, 2048, 2048).unwrap_err().to_string();
        assert!(e.contains("load segment 0x0"), "{e}");
        let mut c = fake_core(3);
        c[NO_RS_LENGTH..NO_RS_LENGTH + 2].fill(0xff);
        assert!(core_image(&c, 2048, 2048).is_err());
        assert!(core_image(&[0u8; 100], 2048, 2048).is_err());
    }

    #[test]
    fn boot_sector_keeps_the_partition_table_and_points_at_core() {
        let mut boot = [0x11u8; SECTOR];
        boot[510] = 0x55;
        boot[511] = 0xaa;
        let mut disk = [0u8; SECTOR];
        disk[0x1be..0x1ce].copy_from_slice(&[
            0, 0, 2, 0, 0xee, 0xff, 0xff, 0xff, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff,
        ]);
        disk[510] = 0x55;
        disk[511] = 0xaa;
        let s = boot_sector(&boot, &disk, 2048).unwrap();
        assert_eq!(&s[0x1b8..], &disk[0x1b8..], "partition table kept");
        assert_eq!(&s[..3], &[0x11; 3], "jump kept");
        assert!(s[BPB].iter().all(|b| *b == 0), "BPB from the disk");
        assert_eq!(u64::from_le_bytes(s[0x5c..0x64].try_into().unwrap()), 2048);
        assert_eq!(s[0x64], 0xff);
        assert_eq!(&s[0x66..0x68], &[0x90, 0x90]);
        assert!(boot_sector(&boot[..100], &disk, 1).is_err());
    }
}
