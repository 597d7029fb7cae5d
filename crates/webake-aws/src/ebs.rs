//! Our own EBS direct API uploader and downloader (see README.md for why not coldsnap).
//!
//! Upload: StartSnapshot, PutSnapshotBlock for every non-zero 512 KiB block (SHA-256,
//! base64), CompleteSnapshot with the linear aggregate checksum. Download: ListSnapshotBlocks,
//! GetSnapshotBlock, each block verified against its checksum.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_ebs::primitives::ByteStream;
use aws_sdk_ebs::types::{ChecksumAggregationMethod, ChecksumAlgorithm, Tag as EbsTag};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt as _;

use crate::client::RegionClients;
use crate::error::{CallError, Error, Result};
use crate::reporter::Reporter;
use crate::retry::{Also, Caller, Pool, Stop};

/// EBS direct APIs work in fixed blocks of 512 KiB.
pub const EBS_BLOCK_SIZE: usize = 512 * 1024;
const GIB: u64 = 1024 * 1024 * 1024;

/// Blocks in flight at once. EBS direct allows high request rates per snapshot, but each
/// block is 512 KiB in memory; 16 keeps memory at ~8 MiB and saturates a pod's uplink.
pub const DEFAULT_CONCURRENCY: usize = 16;

/// How long EBS keeps a started snapshot open before it fails it (StartSnapshot `Timeout`,
/// minutes; default 60, max 4320). Four hours leaves room for a 100 GiB disk over a slow
/// uplink while still ending snapshots of a crashed upload the same day.
pub const START_SNAPSHOT_TIMEOUT_MINUTES: i32 = 240;

/// Options for one snapshot upload.
#[derive(Debug, Clone)]
pub struct UploadOptions {
    pub description: String,
    /// Tags set on the snapshot at StartSnapshot, so even a half-uploaded snapshot carries
    /// the bake id and can be swept.
    pub tags: Vec<(String, String)>,
    /// Encrypt with this KMS key (ARN); `None` leaves the account's default encryption.
    pub kms_key_arn: Option<String>,
    /// Volume size in GiB; `None` is the file size rounded up to whole GiB.
    pub volume_size_gib: Option<i64>,
    pub concurrency: usize,
    /// Idempotency token for StartSnapshot. It must be unique per run: EBS answers a
    /// repeated token with the original snapshot, even one that was deleted since.
    pub client_token: Option<String>,
}

impl Default for UploadOptions {
    fn default() -> Self {
        Self {
            description: String::new(),
            tags: Vec::new(),
            kms_key_arn: None,
            volume_size_gib: None,
            concurrency: DEFAULT_CONCURRENCY,
            client_token: None,
        }
    }
}

/// What an upload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadSummary {
    pub snapshot_id: String,
    pub volume_size_gib: i64,
    pub blocks_total: u64,
    pub blocks_sent: u64,
    pub blocks_skipped: u64,
}

/// Base64 of the SHA-256 of one block, as PutSnapshotBlock expects.
pub fn block_checksum(data: &[u8]) -> String {
    B64.encode(block_digest(data))
}

/// The SHA-256 of one block (the input of [`aggregate_checksum`]).
pub fn block_digest(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// The CompleteSnapshot checksum: SHA-256 over the concatenated per-block SHA-256 digests,
/// in ascending block index order (ChecksumAggregationMethod LINEAR), base64.
pub fn aggregate_checksum<'a>(digests: impl IntoIterator<Item = &'a [u8; 32]>) -> String {
    let mut h = Sha256::new();
    for d in digests {
        h.update(d);
    }
    B64.encode(h.finalize())
}

/// Volume size needed for `len` bytes, in whole GiB (at least 1).
pub fn volume_size_gib(len: u64) -> i64 {
    (len.div_ceil(GIB)).max(1) as i64
}

/// Upload `path` into a new EBS snapshot in `clients.region`. `on_started` is called with
/// the snapshot id as soon as StartSnapshot answers, so the caller can record it for rollback
/// before any block is sent. Returns after CompleteSnapshot; the snapshot may still be
/// `pending` in EC2 (see [`crate::wait::snapshot_completed`]). Every call is retried under
/// `clients.timing.retry`; "not found" for the new snapshot is retried for the grace period
/// after StartSnapshot (EBS is eventually consistent).
pub async fn upload_snapshot(
    clients: &RegionClients,
    path: &Path,
    opts: &UploadOptions,
    reporter: &dyn Reporter,
    on_started: &(dyn Fn(&str) + Send + Sync),
) -> Result<UploadSummary> {
    upload_snapshot_until(clients, path, opts, reporter, &Stop::new(), on_started).await
}

pub(crate) async fn upload_snapshot_until(
    clients: &RegionClients,
    path: &Path,
    opts: &UploadOptions,
    reporter: &dyn Reporter,
    stop: &Stop,
    on_started: &(dyn Fn(&str) + Send + Sync),
) -> Result<UploadSummary> {
    let region = &clients.region;
    let caller = clients.caller(reporter, stop);
    let (file, len) = open_disk_image(path).await?;
    let size = checked_volume_size(path, len, opts.volume_size_gib)?;
    let blocks_total = len.div_ceil(EBS_BLOCK_SIZE as u64);

    let (snapshot_id, created_at) = start_snapshot(clients, caller, path, opts, size).await?;
    on_started(&snapshot_id);
    tracing::info!(%region, %snapshot_id, size_gib = size, blocks_total, "snapshot started");
    reporter.transfer_started(&snapshot_id, blocks_total);

    let upload = Upload {
        ebs: &clients.ebs,
        caller,
        snapshot_id: &snapshot_id,
        created_at,
    };
    let Blocks {
        digests,
        sent,
        skipped,
    } = upload
        .put_blocks(file, path, len, opts.concurrency.max(1), reporter, stop)
        .await?;
    upload.complete(sent, &digests).await?;
    reporter.transfer_finished(&snapshot_id);
    tracing::info!(%region, %snapshot_id, sent, skipped, "snapshot upload complete");
    Ok(UploadSummary {
        snapshot_id,
        volume_size_gib: size,
        blocks_total,
        blocks_sent: sent,
        blocks_skipped: skipped,
    })
}

/// Open the disk image; returns it with its length, which must not be zero.
async fn open_disk_image(path: &Path) -> Result<(tokio::fs::File, u64)> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(Error::io("opening disk image", path))?;
    let len = file
        .metadata()
        .await
        .map_err(Error::io("reading metadata of", path))?
        .len();
    if len == 0 {
        return Err(Error::Invalid(format!(
            "disk image {} is empty",
            path.display()
        )));
    }
    Ok((file, len))
}

/// The volume size in GiB: the one asked for, which must hold `len` bytes, or else the
/// smallest that does.
fn checked_volume_size(path: &Path, len: u64, asked: Option<i64>) -> Result<i64> {
    let needed = volume_size_gib(len);
    let size = asked.unwrap_or(needed);
    if size < needed {
        return Err(Error::Invalid(format!(
            "volume size {size} GiB is smaller than the disk image {} ({len} bytes)",
            path.display()
        )));
    }
    Ok(size)
}

/// StartSnapshot with the run's tags, timeout and encryption; returns the new snapshot's
/// id and when EBS answered (the start of the "not yet visible" grace period).
async fn start_snapshot(
    clients: &RegionClients,
    caller: Caller<'_>,
    path: &Path,
    opts: &UploadOptions,
    size: i64,
) -> Result<(String, Instant)> {
    let tags: Vec<EbsTag> = opts
        .tags
        .iter()
        .map(|(k, v)| EbsTag::builder().key(k).value(v).build())
        .collect();
    let started = caller
        .call(
            "StartSnapshot",
            &path.display().to_string(),
            Also::default(),
            || {
                let mut start = clients
                    .ebs
                    .start_snapshot()
                    .volume_size(size)
                    .description(&opts.description)
                    .timeout(START_SNAPSHOT_TIMEOUT_MINUTES)
                    .set_tags(Some(tags.clone()))
                    .set_client_token(opts.client_token.clone());
                if let Some(key) = &opts.kms_key_arn {
                    start = start.encrypted(true).kms_key_arn(key);
                }
                start.send()
            },
        )
        .await?;
    let created_at = Instant::now();
    let snapshot_id = started
        .snapshot_id()
        .ok_or_else(|| Error::Missing {
            what: "snapshot id",
            context: format!("StartSnapshot in {}", clients.region),
        })?
        .to_string();
    Ok((snapshot_id, created_at))
}

/// A started snapshot: what every PutSnapshotBlock and the CompleteSnapshot need.
struct Upload<'a> {
    ebs: &'a aws_sdk_ebs::Client,
    caller: Caller<'a>,
    snapshot_id: &'a str,
    created_at: Instant,
}

/// What [`Upload::put_blocks`] sent: the digest of every block sent (`None` for a skipped
/// zero block), in block index order, and the counts.
struct Blocks {
    digests: Vec<Option<[u8; 32]>>,
    sent: u64,
    skipped: u64,
}

impl Upload<'_> {
    /// Read `file` block by block and put every non-zero block, `concurrency` at a time.
    async fn put_blocks(
        &self,
        mut file: tokio::fs::File,
        path: &Path,
        len: u64,
        concurrency: usize,
        reporter: &dyn Reporter,
        stop: &Stop,
    ) -> Result<Blocks> {
        let blocks_total = len.div_ceil(EBS_BLOCK_SIZE as u64);
        let mut digests: Vec<Option<[u8; 32]>> = vec![None; blocks_total as usize];
        let mut pool: Pool<'_, Result<()>> = Pool::new();
        let mut sent = 0u64;
        let mut skipped = 0u64;
        for index in 0..blocks_total {
            stop.check()?;
            let mut buf = vec![0u8; EBS_BLOCK_SIZE];
            let want = (len - index * EBS_BLOCK_SIZE as u64).min(EBS_BLOCK_SIZE as u64) as usize;
            file.read_exact(&mut buf[..want])
                .await
                .map_err(Error::io("reading disk image", path))?;
            // The tail of the last block stays zero: EBS blocks are always full size.
            if buf.iter().all(|&b| b == 0) {
                // Unwritten blocks of a snapshot read back as zeros: skip them (sparse upload).
                skipped += 1;
                reporter.block_done(self.snapshot_id, want as u64, false);
                continue;
            }
            let digest = block_digest(&buf);
            digests[index as usize] = Some(digest);
            sent += 1;
            while pool.len() >= concurrency {
                if let Some(r) = pool.next().await {
                    r?;
                }
            }
            let progress = ((index + 1) * 100 / blocks_total) as i32;
            pool.push(self.put_block(index, buf, B64.encode(digest), progress));
            reporter.block_done(self.snapshot_id, want as u64, true);
        }
        while let Some(r) = pool.next().await {
            r?;
        }
        Ok(Blocks {
            digests,
            sent,
            skipped,
        })
    }

    /// PutSnapshotBlock for block `index`; `checksum` is the base64 SHA-256 of `data`.
    async fn put_block(
        &self,
        index: u64,
        data: Vec<u8>,
        checksum: String,
        progress: i32,
    ) -> Result<()> {
        let snapshot = self.snapshot_id;
        let what = format!("{snapshot} block {index}");
        self.caller
            .call(
                "PutSnapshotBlock",
                &what,
                Also {
                    created_at: Some(self.created_at),
                    codes: &[],
                },
                || {
                    self.ebs
                        .put_snapshot_block()
                        .snapshot_id(snapshot)
                        .block_index(index as i32)
                        .block_data(ByteStream::from(data.clone()))
                        .data_length(EBS_BLOCK_SIZE as i32)
                        .checksum(&checksum)
                        .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
                        .progress(progress.clamp(0, 100))
                        .send()
                },
            )
            .await
            .map(|_| ())
    }

    /// CompleteSnapshot with the count of blocks sent and, if any was, their linear
    /// aggregate checksum.
    async fn complete(&self, sent: u64, digests: &[Option<[u8; 32]>]) -> Result<()> {
        let aggregate = (sent > 0).then(|| aggregate_checksum(digests.iter().flatten()));
        self.caller
            .call(
                "CompleteSnapshot",
                self.snapshot_id,
                Also {
                    created_at: Some(self.created_at),
                    codes: &[],
                },
                || {
                    let mut complete = self
                        .ebs
                        .complete_snapshot()
                        .snapshot_id(self.snapshot_id)
                        .changed_blocks_count(sent as i32);
                    if let Some(sum) = &aggregate {
                        complete = complete
                            .checksum(sum)
                            .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
                            .checksum_aggregation_method(
                                ChecksumAggregationMethod::ChecksumAggregationLinear,
                            );
                    }
                    complete.send()
                },
            )
            .await?;
        Ok(())
    }
}

/// What a download did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadSummary {
    pub snapshot_id: String,
    pub path: PathBuf,
    pub volume_size_bytes: u64,
    pub blocks_written: u64,
}

/// Download snapshot `snapshot_id` into `path` (a raw disk of the volume's size; unwritten
/// blocks stay sparse). Written to a temporary file beside `path` and renamed into place, so
/// `path` never holds a partial disk.
pub async fn download_snapshot_to_file(
    clients: &RegionClients,
    snapshot_id: &str,
    path: &Path,
    concurrency: usize,
    reporter: &dyn Reporter,
) -> Result<DownloadSummary> {
    let stop = Stop::new();
    let caller = clients.caller(reporter, &stop);
    let (blocks, size_gib) = list_snapshot_blocks(clients, caller, snapshot_id).await?;
    let size_bytes = size_gib as u64 * GIB;
    let (file, tmp, guard) = create_partial(path, size_bytes)?;
    let file = Arc::new(file);

    reporter.transfer_started(snapshot_id, blocks.len() as u64);
    let download = Download {
        clients,
        caller,
        snapshot_id,
        file: &file,
        tmp: &tmp,
    };
    let mut pool: Pool<'_, Result<()>> = Pool::new();
    let written = blocks.len() as u64;
    for (index, token) in blocks {
        while pool.len() >= concurrency.max(1) {
            if let Some(r) = pool.next().await {
                r?;
            }
        }
        pool.push(download.get_block(index, token));
        reporter.block_done(snapshot_id, EBS_BLOCK_SIZE as u64, true);
    }
    while let Some(r) = pool.next().await {
        r?;
    }
    drop(pool);
    file.sync_all().map_err(Error::io("syncing", &tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(Error::io("renaming into place", path))?;
    guard.disarm();
    reporter.transfer_finished(snapshot_id);
    Ok(DownloadSummary {
        snapshot_id: snapshot_id.to_string(),
        path: path.to_path_buf(),
        volume_size_bytes: size_bytes,
        blocks_written: written,
    })
}

/// Every block of the snapshot (index and token, all pages) and its volume size in GiB.
async fn list_snapshot_blocks(
    clients: &RegionClients,
    caller: Caller<'_>,
    snapshot_id: &str,
) -> Result<(Vec<(i32, String)>, i64)> {
    let mut blocks: Vec<(i32, String)> = Vec::new();
    let mut volume_size_gib = None;
    let mut next: Option<String> = None;
    loop {
        let page = caller
            .call("ListSnapshotBlocks", snapshot_id, Also::default(), || {
                clients
                    .ebs
                    .list_snapshot_blocks()
                    .snapshot_id(snapshot_id)
                    .set_next_token(next.clone())
                    .send()
            })
            .await?;
        if let Some(bs) = page.block_size()
            && bs as usize != EBS_BLOCK_SIZE
        {
            // The API documents a fixed 512 KiB block; trust that over an odd answer (moto
            // reports 512 here).
            tracing::debug!(%snapshot_id, reported = bs, "ignoring reported block size");
        }
        volume_size_gib = volume_size_gib.or(page.volume_size());
        for b in page.blocks() {
            if let (Some(i), Some(t)) = (b.block_index(), b.block_token()) {
                blocks.push((i, t.to_string()));
            }
        }
        match page.next_token() {
            Some(t) if !t.is_empty() => next = Some(t.to_string()),
            _ => break,
        }
    }
    let size_gib = volume_size_gib.ok_or_else(|| Error::Missing {
        what: "volume size",
        context: format!("snapshot {snapshot_id}"),
    })?;
    Ok((blocks, size_gib))
}

/// Create the temporary file beside `path`, `size_bytes` long (sparse), with the guard that
/// removes it on every early return.
fn create_partial(path: &Path, size_bytes: u64) -> Result<(std::fs::File, PathBuf, TempFile)> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("{} has no file name", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let file = std::fs::File::create(&tmp).map_err(Error::io("creating", &tmp))?;
    let guard = TempFile(Some(tmp.clone()));
    file.set_len(size_bytes)
        .map_err(Error::io("sizing", &tmp))?;
    Ok((file, tmp, guard))
}

/// A snapshot being downloaded into a temporary file: what every block needs.
struct Download<'a> {
    clients: &'a RegionClients,
    caller: Caller<'a>,
    snapshot_id: &'a str,
    file: &'a Arc<std::fs::File>,
    tmp: &'a Path,
}

impl Download<'_> {
    /// GetSnapshotBlock `index`, check it against its checksum, and write it at its offset.
    async fn get_block(&self, index: i32, token: String) -> Result<()> {
        let snapshot_id = self.snapshot_id;
        let what = format!("{snapshot_id} block {index}");
        let out = self
            .caller
            .call("GetSnapshotBlock", &what, Also::default(), || {
                self.clients
                    .ebs
                    .get_snapshot_block()
                    .snapshot_id(snapshot_id)
                    .block_index(index)
                    .block_token(&token)
                    .send()
            })
            .await?;
        let expected = out.checksum().map(str::to_string);
        let algo = out.checksum_algorithm().cloned();
        let data = out
            .block_data
            .collect()
            .await
            .map_err(|e| {
                Error::Aws(Box::new(CallError {
                    op: "GetSnapshotBlock",
                    region: self.clients.region.clone(),
                    what: what.clone(),
                    detail: e.to_string(),
                    code: None,
                    attempts: 1,
                    elapsed: Duration::ZERO,
                    ambiguous: true,
                }))
            })?
            .into_bytes();
        if let (Some(expected), Some(ChecksumAlgorithm::ChecksumAlgorithmSha256)) =
            (&expected, &algo)
            && *expected != block_checksum(&data)
        {
            return Err(Error::Checksum {
                snapshot_id: snapshot_id.to_string(),
                block_index: index as i64,
            });
        }
        let offset = index as u64 * EBS_BLOCK_SIZE as u64;
        let file = self.file.clone();
        let tmp = self.tmp.to_path_buf();
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt as _;
            file.write_all_at(&data, offset)
                .map_err(Error::io("writing", &tmp))
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
        Ok(())
    }
}

/// Removes a partial download on every early return.
struct TempFile(Option<PathBuf>);

impl TempFile {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take()
            && let Err(e) = std::fs::remove_file(&p)
        {
            tracing::warn!(path = %p.display(), "could not remove partial download: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_size_rounds_up_to_gib() {
        assert_eq!(volume_size_gib(1), 1);
        assert_eq!(volume_size_gib(GIB), 1);
        assert_eq!(volume_size_gib(GIB + 1), 2);
        assert_eq!(volume_size_gib(8 * GIB), 8);
    }

    #[test]
    fn checksums_are_base64_sha256() {
        // sha256("") = e3b0c442...; its base64 is well known.
        assert_eq!(
            block_checksum(b""),
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
        let a: [u8; 32] = Sha256::digest(b"a").into();
        let b: [u8; 32] = Sha256::digest(b"b").into();
        let mut concat = a.to_vec();
        concat.extend_from_slice(&b);
        assert_eq!(aggregate_checksum([&a, &b]), block_checksum(&concat));
    }
}
