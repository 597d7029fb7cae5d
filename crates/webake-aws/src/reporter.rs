//! Progress without printing: the library calls a [`Reporter`]; the CLI draws bars or logs.

use std::time::Duration;

/// One retry of one call (see [`crate::RetryPolicy`]).
#[derive(Debug, Clone, Copy)]
pub struct RetryEvent<'a> {
    pub region: &'a str,
    /// The API operation, e.g. `PutSnapshotBlock`.
    pub op: &'a str,
    /// What the call was about, e.g. `snap-0123… block 7`.
    pub what: &'a str,
    /// The attempt that just failed (1-based) and the budget.
    pub attempt: u32,
    pub attempts: u32,
    /// The pause before the next attempt.
    pub delay: Duration,
    /// The error code (`ThrottlingException`, `ResourceNotFoundException`, …) or `HTTP 503`,
    /// `timeout`, `connection failure`.
    pub reason: &'a str,
}

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
    /// A call failed and will be tried again after `event.delay`.
    fn retrying(&self, _event: &RetryEvent<'_>) {}
}

/// A reporter that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoReporter;

impl Reporter for NoReporter {}
