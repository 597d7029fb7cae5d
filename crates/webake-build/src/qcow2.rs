//! A qcow2 writer of webake's own: a raw disk into a qcow2 v3 image of zstd-compressed 64 KiB
//! clusters, compressed on several threads and written in guest order.
//!
//! Why not `qemu-img convert -c`: it writes compressed clusters in order only on one thread
//! (with `-W` the cluster order, not the content, varies between runs), and the disk must be a
//! function of its inputs (docs/reproducible.md). Here every cluster is compressed on its own,
//! the results are laid out in guest order, and the file is a function of the raw disk and
//! the zstd library version alone: the thread count does not change a byte.
//!
//! The layout (all of it standard qcow2 v3, docs/interop/qcow2.txt in qemu):
//! cluster 0 the header; then the data, compressed clusters packed byte by byte (as qemu packs
//! them) and an incompressible cluster stored whole at a cluster boundary; then the L2
//! tables (only those covering data), the L1 table, the refcount table and its blocks. A
//! cluster that reads as zeros is not allocated. `qemu-img check` and `qemu-img compare`
//! validate the result in the tests.

use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{BuildError, Result};

const CLUSTER_BITS: u32 = 16;
const CLUSTER: u64 = 1 << CLUSTER_BITS;
/// L2 entries per table (one table per cluster, 8-byte entries).
const L2_ENTRIES: u64 = CLUSTER / 8;
/// 16-bit refcounts (refcount_order 4): entries per refcount block.
const REFCOUNTS_PER_BLOCK: u64 = CLUSTER / 2;
/// Clusters read, compressed and written as one batch.
const BATCH_CLUSTERS: usize = 256;
/// qemu's default zstd level for qcow2 (it sets none: ZSTD_CLEVEL_DEFAULT).
const ZSTD_LEVEL: i32 = 3;

const OFLAG_COPIED: u64 = 1 << 63;
const OFLAG_COMPRESSED: u64 = 1 << 62;
/// Compressed cluster descriptor: host offset in the low bits, additional 512-byte sectors above.
const CSIZE_SHIFT: u32 = 62 - (CLUSTER_BITS - 8);
const INCOMPAT_COMPRESSION_TYPE: u64 = 1 << 3;
const COMPRESSION_TYPE_ZSTD: u8 = 1;
const HEADER_LENGTH: u32 = 112;

/// What one guest cluster became.
enum Packed {
    Zero,
    Compressed(Vec<u8>),
    Whole,
}

/// A batch of guest clusters read from the raw disk.
struct Batch {
    /// Guest cluster indices, ascending.
    index: Vec<u64>,
    /// CLUSTER bytes per index (the disk's tail past its end reads as zeros).
    data: Vec<u8>,
}

impl Batch {
    fn cluster(&self, i: usize) -> &[u8] {
        &self.data[i * CLUSTER as usize..(i + 1) * CLUSTER as usize]
    }
}

/// Write `raw` as a compressed qcow2 at `out` (created or truncated), compressing on
/// `threads` threads. Only clusters holding data are read: holes read as zeros.
pub fn convert(raw: &Path, out: &Path, threads: usize) -> Result<()> {
    let src = std::fs::File::open(raw).map_err(|e| BuildError::io(raw, e))?;
    let len = src.metadata().map_err(|e| BuildError::io(raw, e))?.len();
    let dst = std::fs::File::create(out).map_err(|e| BuildError::io(out, e))?;
    let segments = webake_sys::fsutil::data_segments(&src, len).unwrap_or_else(|_| vec![(0, len)]);
    let mut wanted = Vec::new();
    for (start, seg_len) in segments {
        for c in start / CLUSTER..(start + seg_len).div_ceil(CLUSTER) {
            if wanted.last() != Some(&c) {
                wanted.push(c);
            }
        }
    }
    let threads = threads.max(1);
    let mut w = Writer::new(&dst, out);
    let mut batches = wanted.chunks(BATCH_CLUSTERS);
    let mut next = batches
        .next()
        .map(|c| read_batch(&src, raw, c, len))
        .transpose()?;
    while let Some(batch) = next.take() {
        // The next batch is read while this one is compressed.
        let (packed, following) = std::thread::scope(|s| {
            let per = batch.index.len().div_ceil(threads);
            let workers: Vec<_> = (0..batch.index.len())
                .step_by(per)
                .map(|from| {
                    let b = &batch;
                    s.spawn(move || pack_range(b, from, (from + per).min(b.index.len())))
                })
                .collect();
            let following = batches.next().map(|c| read_batch(&src, raw, c, len));
            let packed: Vec<Packed> = workers
                .into_iter()
                .flat_map(|h| h.join().expect("compression thread panicked"))
                .collect();
            (packed, following)
        });
        for (i, p) in packed.into_iter().enumerate() {
            w.put(batch.index[i], p, batch.cluster(i))?;
        }
        next = following.transpose()?;
    }
    w.finish(len)
}

fn read_batch(src: &std::fs::File, raw: &Path, index: &[u64], len: u64) -> Result<Batch> {
    let mut data = vec![0u8; index.len() * CLUSTER as usize];
    for (i, &c) in index.iter().enumerate() {
        let off = c * CLUSTER;
        let n = (len - off).min(CLUSTER) as usize;
        src.read_exact_at(&mut data[i * CLUSTER as usize..][..n], off)
            .map_err(|e| BuildError::io(raw, e))?;
    }
    Ok(Batch {
        index: index.to_vec(),
        data,
    })
}

fn pack_range(b: &Batch, from: usize, to: usize) -> Vec<Packed> {
    let mut z = zstd::bulk::Compressor::new(ZSTD_LEVEL).expect("zstd context");
    let mut buf = vec![0u8; CLUSTER as usize - 1];
    (from..to)
        .map(|i| {
            let c = b.cluster(i);
            if is_zero(c) {
                Packed::Zero
            } else {
                match z.compress_to_buffer(c, &mut buf[..]) {
                    Ok(n) => Packed::Compressed(buf[..n].to_vec()),
                    // Not smaller than the cluster: stored as it is (qemu does the same).
                    Err(_) => Packed::Whole,
                }
            }
        })
        .collect()
}

fn is_zero(c: &[u8]) -> bool {
    c.chunks_exact(16)
        .all(|w| u128::from_ne_bytes(w.try_into().expect("16 bytes")) == 0)
}

/// Appends the data area in guest order and keeps the L2 entries and refcounts.
struct Writer<'a> {
    f: &'a std::fs::File,
    path: &'a Path,
    /// Next free byte of the data area (cluster 0 is the header).
    pos: u64,
    /// (guest cluster, L2 entry) in guest order.
    entries: Vec<(u64, u64)>,
    /// Host clusters in use by the data area, counted as `qemu-img check` counts them.
    refcounts: Vec<u16>,
    /// Pending output, written in large pieces.
    pending: Vec<u8>,
    pending_at: u64,
}

impl<'a> Writer<'a> {
    fn new(f: &'a std::fs::File, path: &'a Path) -> Self {
        Writer {
            f,
            path,
            pos: CLUSTER,
            entries: Vec::new(),
            refcounts: vec![1],
            pending: Vec::with_capacity(8 << 20),
            pending_at: CLUSTER,
        }
    }

    fn put(&mut self, guest: u64, p: Packed, cluster: &[u8]) -> Result<()> {
        match p {
            Packed::Zero => {}
            Packed::Compressed(bytes) => {
                let off = self.pos;
                let last_sector = (off + bytes.len() as u64 - 1) >> 9;
                let extra = last_sector - (off >> 9);
                self.entries
                    .push((guest, OFLAG_COMPRESSED | (extra << CSIZE_SHIFT) | off));
                // qemu-img check counts the sectors the descriptor names.
                self.count(off & !511, (last_sector + 1) << 9);
                self.append(&bytes)?;
            }
            Packed::Whole => {
                let off = self.pos.next_multiple_of(CLUSTER);
                self.pad_to(off);
                self.entries.push((guest, OFLAG_COPIED | off));
                self.count(off, off + CLUSTER);
                self.append(cluster)?;
            }
        }
        Ok(())
    }

    /// One more reference to every host cluster in [from, to).
    fn count(&mut self, from: u64, to: u64) {
        let last = (to - 1) / CLUSTER;
        if self.refcounts.len() as u64 <= last {
            self.refcounts.resize(last as usize + 1, 0);
        }
        for c in from / CLUSTER..=last {
            self.refcounts[c as usize] += 1;
        }
    }

    fn pad_to(&mut self, off: u64) {
        let n = (off - self.pos) as usize;
        self.pending.resize(self.pending.len() + n, 0);
        self.pos = off;
    }

    fn append(&mut self, bytes: &[u8]) -> Result<()> {
        self.pending.extend_from_slice(bytes);
        self.pos += bytes.len() as u64;
        if self.pending.len() >= 4 << 20 {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.f
            .write_all_at(&self.pending, self.pending_at)
            .map_err(|e| BuildError::io(self.path, e))?;
        self.pending_at += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    /// The metadata after the data: L2 tables, L1 table, refcount table and blocks, header.
    fn finish(mut self, len: u64) -> Result<()> {
        // The data area ends at a cluster boundary past the last sector a descriptor names.
        let end = self.pos.next_multiple_of(512).next_multiple_of(CLUSTER);
        self.pad_to(end);
        self.flush()?;
        let l1_size = len.div_ceil(CLUSTER).div_ceil(L2_ENTRIES).max(1);
        let mut l1 = vec![0u64; l1_size as usize];
        let mut next = end;
        let mut tables: Vec<(u64, Vec<u8>)> = Vec::new();
        for (guest, entry) in &self.entries {
            let t = (guest / L2_ENTRIES) as usize;
            if l1[t] == 0 {
                l1[t] = OFLAG_COPIED | next;
                tables.push((next, vec![0u8; CLUSTER as usize]));
                next += CLUSTER;
            }
            let table = &mut tables.last_mut().expect("a table was pushed").1;
            let i = (guest % L2_ENTRIES) as usize * 8;
            table[i..i + 8].copy_from_slice(&entry.to_be_bytes());
        }
        for (off, table) in &tables {
            self.write_at(table, *off)?;
            self.count(*off, off + CLUSTER);
        }
        let l1_offset = next;
        let l1_bytes: Vec<u8> = l1.iter().flat_map(|e| e.to_be_bytes()).collect();
        let l1_clusters = (l1_bytes.len() as u64).div_ceil(CLUSTER);
        self.write_at(&l1_bytes, l1_offset)?;
        self.count(l1_offset, l1_offset + l1_clusters * CLUSTER);
        // The refcount table and blocks count themselves too: grow until they fit.
        let rt_offset = l1_offset + l1_clusters * CLUSTER;
        let used = rt_offset / CLUSTER;
        let (mut rt_clusters, mut blocks) = (1u64, 1u64);
        loop {
            let total = used + rt_clusters + blocks;
            let b = total.div_ceil(REFCOUNTS_PER_BLOCK);
            let t = (b * 8).div_ceil(CLUSTER);
            if (b, t) == (blocks, rt_clusters) {
                break;
            }
            (blocks, rt_clusters) = (b, t);
        }
        let blocks_offset = rt_offset + rt_clusters * CLUSTER;
        let file_end = blocks_offset + blocks * CLUSTER;
        self.count(rt_offset, file_end);
        let mut table = vec![0u8; (rt_clusters * CLUSTER) as usize];
        for b in 0..blocks {
            let at = blocks_offset + b * CLUSTER;
            table[b as usize * 8..][..8].copy_from_slice(&at.to_be_bytes());
        }
        self.write_at(&table, rt_offset)?;
        let mut block_bytes = vec![0u8; (blocks * CLUSTER) as usize];
        for (c, r) in self.refcounts.iter().enumerate() {
            block_bytes[c * 2..c * 2 + 2].copy_from_slice(&r.to_be_bytes());
        }
        self.write_at(&block_bytes, blocks_offset)?;
        let header = header(len, l1_size, l1_offset, rt_offset, rt_clusters);
        self.write_at(&header, 0)?;
        self.f
            .set_len(file_end)
            .map_err(|e| BuildError::io(self.path, e))
    }

    fn write_at(&self, bytes: &[u8], off: u64) -> Result<()> {
        self.f
            .write_all_at(bytes, off)
            .map_err(|e| BuildError::io(self.path, e))
    }
}

fn header(len: u64, l1_size: u64, l1_offset: u64, rt_offset: u64, rt_clusters: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LENGTH as usize + 8);
    h.extend_from_slice(b"QFI\xfb");
    h.extend_from_slice(&3u32.to_be_bytes()); // version
    h.extend_from_slice(&0u64.to_be_bytes()); // backing file offset
    h.extend_from_slice(&0u32.to_be_bytes()); // backing file size
    h.extend_from_slice(&CLUSTER_BITS.to_be_bytes());
    h.extend_from_slice(&len.to_be_bytes()); // virtual size
    h.extend_from_slice(&0u32.to_be_bytes()); // no encryption
    h.extend_from_slice(&(l1_size as u32).to_be_bytes());
    h.extend_from_slice(&l1_offset.to_be_bytes());
    h.extend_from_slice(&rt_offset.to_be_bytes());
    h.extend_from_slice(&(rt_clusters as u32).to_be_bytes());
    h.extend_from_slice(&0u32.to_be_bytes()); // snapshots
    h.extend_from_slice(&0u64.to_be_bytes()); // snapshots offset
    h.extend_from_slice(&INCOMPAT_COMPRESSION_TYPE.to_be_bytes());
    h.extend_from_slice(&0u64.to_be_bytes()); // compatible features
    h.extend_from_slice(&0u64.to_be_bytes()); // autoclear features
    h.extend_from_slice(&4u32.to_be_bytes()); // refcount order: 16-bit refcounts
    h.extend_from_slice(&HEADER_LENGTH.to_be_bytes());
    h.push(COMPRESSION_TYPE_ZSTD);
    h.resize(HEADER_LENGTH as usize, 0);
    // Header extensions: only the end marker (type 0, length 0).
    h.extend_from_slice(&[0u8; 8]);
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A raw disk with every kind of cluster: holes, written zeros, text (compressible),
    /// random bytes (stored whole), data in the middle of a cluster, several L2 tables with an
    /// unallocated one between them, and a tail shorter than a cluster.
    fn sample_disk(path: &Path) -> Vec<u8> {
        let len: u64 = 3 * L2_ENTRIES * CLUSTER + 5 * CLUSTER + 4096;
        let f = std::fs::File::create(path).unwrap();
        f.set_len(len).unwrap();
        let text: Vec<u8> = (0..40_000u32)
            .flat_map(|i| format!("line {i} of a root filesystem\n").into_bytes())
            .collect();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let random: Vec<u8> = (0..3 * CLUSTER)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        f.write_all_at(&text, 0).unwrap();
        f.write_all_at(&vec![0u8; 2 * CLUSTER as usize], 40 * CLUSTER)
            .unwrap();
        f.write_all_at(&random, 41 * CLUSTER + 100).unwrap();
        f.write_all_at(&text[..5000], 50 * CLUSTER + 30_000)
            .unwrap();
        // Skips the second L2 table's range: its L1 entry stays 0.
        f.write_all_at(&text, 2 * L2_ENTRIES * CLUSTER + 7 * CLUSTER)
            .unwrap();
        f.write_all_at(b"the end", len - 7).unwrap();
        std::fs::read(path).unwrap()
    }

    /// `qemu-img check` finds no error in the qcow2 and `qemu-img compare` reads it back as
    /// the raw disk.
    fn check_and_compare(raw: &Path, q: &Path) {
        let (raw, q) = (raw.to_str().unwrap(), q.to_str().unwrap());
        let (ok, out) = qemu_img(&["check", "-f", "qcow2", q]);
        assert!(ok && out.contains("No errors were found"), "{out}");
        let (ok, out) = qemu_img(&["compare", "-f", "raw", "-F", "qcow2", raw, q]);
        assert!(ok && out.contains("Images are identical"), "{out}");
    }

    fn qemu_img(args: &[&str]) -> (bool, String) {
        let out = Command::new("qemu-img")
            .args(args)
            .output()
            .expect("qemu-img (apt-get install qemu-utils) runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    #[test]
    fn the_qcow2_reads_back_as_the_raw_disk_and_passes_qemu_img_check() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        let content = sample_disk(&raw);
        let q = dir.path().join("disk.qcow2");
        convert(&raw, &q, 2).unwrap();
        check_and_compare(&raw, &q);
        let (ok, info) = qemu_img(&["info", "--output=json", q.to_str().unwrap()]);
        assert!(ok, "{info}");
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(info["virtual-size"], content.len() as u64);
        assert_eq!(info["format-specific"]["data"]["compression-type"], "zstd");
        // Both kinds of data cluster are there: compressed (no host offset of its own in
        // qemu-img's map) and stored whole (the random bytes).
        let (ok, map) = qemu_img(&["map", "--output=json", q.to_str().unwrap()]);
        assert!(ok, "{map}");
        let map: Vec<serde_json::Value> = serde_json::from_str(&map).unwrap();
        let data = |whole: bool| {
            map.iter()
                .any(|e| e["data"] == true && e.get("offset").is_some() == whole)
        };
        assert!(data(true) && data(false), "{map:?}");
        // Much smaller than the data it holds (the text compresses, holes take nothing).
        let size = std::fs::metadata(&q).unwrap().len();
        assert!(size < 2 * text_len() as u64, "qcow2 of {size} bytes");
    }

    fn text_len() -> usize {
        (0..40_000u32)
            .map(|i| format!("line {i} of a root filesystem\n").len())
            .sum()
    }

    #[test]
    fn the_qcow2_is_the_same_file_whatever_the_thread_count() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        sample_disk(&raw);
        let files: Vec<Vec<u8>> = [1, 2, 3, 7]
            .into_iter()
            .map(|threads| {
                let q = dir.path().join(format!("disk-{threads}.qcow2"));
                convert(&raw, &q, threads).unwrap();
                std::fs::read(q).unwrap()
            })
            .collect();
        for f in &files[1..] {
            assert!(f == &files[0], "the thread count changed the qcow2");
        }
    }

    #[test]
    fn an_all_zero_disk_is_an_empty_qcow2_of_the_same_size() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("zero.raw");
        std::fs::File::create(&raw)
            .unwrap()
            .set_len(640 << 20)
            .unwrap();
        let q = dir.path().join("zero.qcow2");
        convert(&raw, &q, 2).unwrap();
        check_and_compare(&raw, &q);
        // Header, L1, refcount table and block: four clusters.
        assert_eq!(std::fs::metadata(&q).unwrap().len(), 4 * CLUSTER);
    }
}
