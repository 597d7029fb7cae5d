//! Make the timestamps of a freshly made ext4 filesystem a function of the source date.
//!
//! `mkfs.ext4 -d TREE` (e2fsprogs 1.47.0) copies each file's access and change times from the
//! build host (a hard link or a read changes them) and stamps creation times, the root
//! directory and `lost+found` with the clock; `E2FSPROGS_FAKE_TIME` only reaches the
//! superblock. Entries are added in name order (`scandir` + `alphasort`) and every other
//! identifier is given on the command line, so these times are what is left to make the
//! filesystem a function of its inputs.
//!
//! This pass edits the inode tables in place: for every inode in use (the root and every
//! inode from `s_first_ino` on), access, change and creation time become the source date and a
//! modification time later than the source date is clamped to it (the reproducible-builds.org
//! rule; times from packages stay as they are). The inode checksum (`metadata_csum`) is
//! recomputed. Nothing else is touched: `e2fsck -fn` finds the filesystem clean afterwards.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{BuildError, Result};

const SUPERBLOCK: u64 = 1024;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
const BG_INODE_UNINIT: u16 = 0x1;
const ROOT_INO: u32 = 2;

// Inode fields (byte offsets).
const I_ATIME: usize = 0x08;
const I_CTIME: usize = 0x0C;
const I_MTIME: usize = 0x10;
const I_GENERATION: usize = 0x64;
const I_CHECKSUM_LO: usize = 0x7C;
const I_EXTRA_ISIZE: usize = 0x80;
const I_CHECKSUM_HI: usize = 0x82;
const I_CTIME_EXTRA: usize = 0x84;
const I_MTIME_EXTRA: usize = 0x88;
const I_ATIME_EXTRA: usize = 0x8C;
const I_CRTIME: usize = 0x90;
const I_CRTIME_EXTRA: usize = 0x94;
const GOOD_OLD_INODE_SIZE: usize = 128;

/// What [`normalize`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Normalized {
    pub inodes: u64,
    /// Modification times later than the source date, clamped.
    pub clamped: u64,
}

fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn put16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}

/// The superblock fields this pass needs.
struct Geometry {
    inodes_count: u32,
    inodes_per_group: u32,
    block_size: u64,
    first_data_block: u64,
    first_ino: u32,
    inode_size: usize,
    desc_size: usize,
    /// `Some(seed)` when inodes carry a crc32c checksum.
    csum_seed: Option<u32>,
}

impl Geometry {
    fn read(f: &File, at: u64, what: &Path) -> Result<Self> {
        let mut sb = vec![0u8; 1024];
        f.read_exact_at(&mut sb, at + SUPERBLOCK)
            .map_err(|e| BuildError::io(what, e))?;
        if le16(&sb, 0x38) != 0xEF53 {
            return Err(BuildError::Invalid(format!(
                "{}: no ext4 superblock at byte {at}",
                what.display()
            )));
        }
        let incompat = le32(&sb, 0x60);
        let ro_compat = le32(&sb, 0x64);
        let rev = le32(&sb, 0x4C);
        let csum_seed = (ro_compat & RO_COMPAT_METADATA_CSUM != 0).then(|| {
            if incompat & INCOMPAT_CSUM_SEED != 0 {
                le32(&sb, 0x270)
            } else {
                crc32c(!0, &sb[0x68..0x78])
            }
        });
        Ok(Self {
            inodes_count: le32(&sb, 0x00),
            inodes_per_group: le32(&sb, 0x28),
            block_size: 1024 << le32(&sb, 0x18),
            first_data_block: u64::from(le32(&sb, 0x14)),
            first_ino: if rev == 0 { 11 } else { le32(&sb, 0x54) },
            inode_size: if rev == 0 {
                GOOD_OLD_INODE_SIZE
            } else {
                usize::from(le16(&sb, 0x58))
            },
            desc_size: if incompat & INCOMPAT_64BIT != 0 {
                usize::from(le16(&sb, 0xFE))
            } else {
                32
            },
            csum_seed,
        })
    }
}

/// Normalize the times of the ext4 filesystem that starts at byte `offset` of `image`.
pub fn normalize(image: &Path, offset: u64, source_date: i64) -> Result<Normalized> {
    let f = File::options()
        .read(true)
        .write(true)
        .open(image)
        .map_err(|e| BuildError::io(image, e))?;
    let g = Geometry::read(&f, offset, image)?;
    let groups = g.inodes_count.div_ceil(g.inodes_per_group);
    let mut gdt = vec![0u8; groups as usize * g.desc_size];
    let gdt_at = offset + (g.first_data_block + 1) * g.block_size;
    f.read_exact_at(&mut gdt, gdt_at)
        .map_err(|e| BuildError::io(image, e))?;
    let mut done = Normalized::default();
    for group in 0..groups {
        let d = &gdt[group as usize * g.desc_size..][..g.desc_size];
        if le16(d, 0x12) & BG_INODE_UNINIT != 0 {
            continue;
        }
        let hi = |o: usize| {
            if g.desc_size >= 64 {
                u64::from(le32(d, o)) << 32
            } else {
                0
            }
        };
        let bitmap_at = offset + (u64::from(le32(d, 0x04)) | hi(0x24)) * g.block_size;
        let table_at = offset + (u64::from(le32(d, 0x08)) | hi(0x28)) * g.block_size;
        let mut bitmap = vec![0u8; g.inodes_per_group.div_ceil(8) as usize];
        f.read_exact_at(&mut bitmap, bitmap_at)
            .map_err(|e| BuildError::io(image, e))?;
        let mut table = vec![0u8; g.inodes_per_group as usize * g.inode_size];
        f.read_exact_at(&mut table, table_at)
            .map_err(|e| BuildError::io(image, e))?;
        let mut dirty = false;
        for i in 0..g.inodes_per_group {
            let ino = group * g.inodes_per_group + i + 1;
            let used = bitmap[(i / 8) as usize] & (1 << (i % 8)) != 0;
            if !used || (ino != ROOT_INO && ino < g.first_ino) {
                continue;
            }
            let inode = &mut table[i as usize * g.inode_size..][..g.inode_size];
            if set_times(inode, source_date) {
                done.clamped += 1;
            }
            if let Some(seed) = g.csum_seed {
                set_checksum(inode, ino, seed);
            }
            done.inodes += 1;
            dirty = true;
        }
        if dirty {
            f.write_all_at(&table, table_at)
                .map_err(|e| BuildError::io(image, e))?;
        }
    }
    // No fsync: the disk is a temp file of the assembly, renamed into place (or removed) with
    // the others; flushing 2 GiB here would only slow the bake down.
    Ok(done)
}

/// ext4's on-disk time: the low 32 bits (signed), and the epoch bits of the `_extra` field.
fn encode(t: i64) -> (u32, u32) {
    let low = t as i32;
    let epoch = ((t - i64::from(low)) >> 32) & 0b11;
    (low as u32, epoch as u32)
}

fn decode(low: u32, extra: Option<u32>) -> i64 {
    i64::from(low as i32) + (i64::from(extra.unwrap_or(0) & 0b11) << 32)
}

/// Set one inode's times; true if its modification time was clamped.
fn set_times(inode: &mut [u8], t: i64) -> bool {
    let (low, epoch) = encode(t);
    let extra = if inode.len() > GOOD_OLD_INODE_SIZE {
        usize::from(le16(inode, I_EXTRA_ISIZE))
    } else {
        0
    };
    // An `_extra` field exists if `i_extra_isize` reaches its end.
    let has = |field: usize| GOOD_OLD_INODE_SIZE + extra >= field + 4;
    let mtime = decode(
        le32(inode, I_MTIME),
        has(I_MTIME_EXTRA).then(|| le32(inode, I_MTIME_EXTRA)),
    );
    let clamp = mtime > t;
    let mut fields = vec![(I_ATIME, I_ATIME_EXTRA), (I_CTIME, I_CTIME_EXTRA)];
    if clamp {
        fields.push((I_MTIME, I_MTIME_EXTRA));
    }
    if has(I_CRTIME) {
        fields.push((I_CRTIME, I_CRTIME_EXTRA));
    }
    for (secs, frac) in fields {
        put32(inode, secs, low);
        if has(frac) {
            put32(inode, frac, epoch); // nanoseconds 0
        }
    }
    clamp
}

/// ext4's inode checksum: crc32c over the seed, the inode number, its generation and the
/// inode with its checksum fields zeroed; the low 16 bits, and the high 16 where they fit.
fn set_checksum(inode: &mut [u8], ino: u32, seed: u32) {
    let has_hi = inode.len() > GOOD_OLD_INODE_SIZE && usize::from(le16(inode, I_EXTRA_ISIZE)) >= 4;
    put16(inode, I_CHECKSUM_LO, 0);
    if has_hi {
        put16(inode, I_CHECKSUM_HI, 0);
    }
    let mut crc = crc32c(seed, &ino.to_le_bytes());
    crc = crc32c(crc, &le32(inode, I_GENERATION).to_le_bytes());
    crc = crc32c(crc, inode);
    put16(inode, I_CHECKSUM_LO, crc as u16);
    if has_hi {
        put16(inode, I_CHECKSUM_HI, (crc >> 16) as u16);
    }
}

/// CRC-32C (Castagnoli), reflected, without the final inversion (as ext4 chains it).
fn crc32c(mut crc: u32, data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82F6_3B78
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    for &b in data {
        crc = TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // The CRC-32C check value of "123456789" (with the usual initial and final inversion).
        assert_eq!(!crc32c(!0, b"123456789"), 0xE306_9283);
    }

    #[test]
    fn times_encode_past_2038() {
        for t in [0i64, 1_700_000_000, (1 << 31) + 5, (1 << 32) + 7] {
            let (low, epoch) = encode(t);
            assert_eq!(decode(low, Some(epoch)), t, "{t}");
        }
    }

    #[test]
    fn clamps_only_later_modification_times() {
        let mut inode = vec![0u8; 256];
        put16(&mut inode, I_EXTRA_ISIZE, 32);
        put32(&mut inode, I_MTIME, 1000);
        assert!(!set_times(&mut inode, 2000));
        assert_eq!(le32(&inode, I_MTIME), 1000);
        assert_eq!(le32(&inode, I_ATIME), 2000);
        assert_eq!(le32(&inode, I_CRTIME), 2000);
        put32(&mut inode, I_MTIME, 3000);
        put32(&mut inode, I_MTIME_EXTRA, 12345 << 2);
        assert!(set_times(&mut inode, 2000));
        assert_eq!(
            (le32(&inode, I_MTIME), le32(&inode, I_MTIME_EXTRA)),
            (2000, 0)
        );
    }
}
