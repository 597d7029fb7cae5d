//! Progress without printing: the library calls a [`Reporter`]; the CLI draws bars or logs.

/// Receives progress events. All methods have no-op defaults; implementations must be cheap
/// (they are called from upload tasks) and must not block.
pub trait Reporter: Send + Sync {
    /// A publish step started or finished ("uploading", "registering", "copying to eu-west-1").
    fn step(&self, _region: &str, _message: &str) {}
    /// An upload (or download) of `total_blocks` blocks of 512 KiB started for `snapshot_id`.
    fn transfer_started(&self, _snapshot_id: &str, _total_blocks: u64) {}
    /// One block was handled: `sent` is false for an all-zero block that was skipped.
    fn block_done(&self, _snapshot_id: &str, _bytes: u64, _sent: bool) {}
    /// The transfer of `snapshot_id` finished.
    fn transfer_finished(&self, _snapshot_id: &str) {}
}

/// A reporter that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoReporter;

impl Reporter for NoReporter {}
