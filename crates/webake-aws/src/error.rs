//! Typed errors: every cloud error names the operation, region and resource it was about.

use std::path::PathBuf;
use std::time::Duration;

use crate::ledger::{Leftover, Resource};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One EC2 or EBS call that failed for good. `detail` is the SDK error with its code and
/// message (never credentials).
#[derive(Debug, thiserror::Error)]
#[error(
    "{op} in {region} ({what}) failed after {attempts} attempt(s) over {elapsed:.1?}: {detail}"
)]
pub struct CallError {
    pub op: &'static str,
    pub region: String,
    pub what: String,
    pub detail: String,
    pub code: Option<String>,
    pub attempts: u32,
    pub elapsed: Duration,
    /// Some attempt ended without a definite answer (5xx, a timeout, a lost connection): the
    /// call may have taken effect although no answer said so. Throttling and validation
    /// errors are definite refusals.
    pub ambiguous: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to AWS failed after webake's retries (see [`crate::RetryPolicy`]).
    #[error(transparent)]
    Aws(Box<CallError>),

    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid input: {0}")]
    Invalid(String),

    /// An AMI with this name exists but was baked from other inputs: refusing to reuse or
    /// overwrite it.
    #[error(
        "AMI name {name:?} is taken in {region} by {ami_id} with inputs digest {found:?}, \
         not {expected}; choose another name or deregister it"
    )]
    NameConflict {
        region: String,
        name: String,
        ami_id: String,
        expected: String,
        found: Option<String>,
    },

    #[error("snapshot {snapshot_id} in {region} ended in state {state}: {message}")]
    SnapshotFailed {
        region: String,
        snapshot_id: String,
        state: String,
        message: String,
    },

    #[error("AMI {ami_id} in {region} ended in state {state}: {message}")]
    ImageFailed {
        region: String,
        ami_id: String,
        state: String,
        message: String,
    },

    #[error("timed out after {waited:?} waiting for {what} in {region}")]
    Timeout {
        region: String,
        what: String,
        waited: Duration,
    },

    #[error("checksum mismatch for block {block_index} of snapshot {snapshot_id}")]
    Checksum {
        snapshot_id: String,
        block_index: i64,
    },

    #[error("AWS returned no {what} for {context}")]
    Missing { what: &'static str, context: String },

    /// A resource this run created (and is waiting for) is not found after the grace period
    /// for eventual consistency: it was deleted, or a repeated idempotency token returned a
    /// resource that no longer exists. Waiting longer would not help.
    #[error(
        "{what} in {region} is not found {waited:.1?} after this run created it (deleted, or never existed)"
    )]
    Vanished {
        region: String,
        what: String,
        waited: Duration,
    },

    /// The publish failed; what this run had created was rolled back. `removed` lists what
    /// the rollback deleted, `leftovers` exactly what remains (empty if nothing does).
    #[error("{source}; {}", rollback_summary(.run_id, .removed, .leftovers))]
    RolledBack {
        #[source]
        source: Box<Error>,
        /// The run's nonce (tag `webake:run` on everything it created).
        run_id: String,
        removed: Vec<Resource>,
        /// What could not be deleted (or found); `webake clean --aws` sweeps them.
        leftovers: Vec<Leftover>,
    },

    #[error("NVMe device for {volume_id} not found within {waited:?}: {detail}")]
    NvmeTimeout {
        volume_id: String,
        waited: Duration,
        detail: String,
    },

    #[error("NVMe device for {volume_id}: {detail}")]
    NvmeMismatch { volume_id: String, detail: String },

    #[error("cancelled")]
    Cancelled,

    #[error("internal task failed: {0}")]
    Task(String),
}

fn rollback_summary(run_id: &str, removed: &[Resource], leftovers: &[Leftover]) -> String {
    let removed = if removed.is_empty() {
        "nothing to remove".to_string()
    } else {
        format!(
            "removed {}",
            removed
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    if leftovers.is_empty() {
        format!("rolled back run {run_id} ({removed}); nothing this run created remains")
    } else {
        format!(
            "rolled back run {run_id} ({removed}); still left: {} (run `webake clean --aws` to sweep)",
            leftovers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        )
    }
}

impl Error {
    /// True if the failed call may have taken effect (see [`CallError::ambiguous`]).
    pub fn is_ambiguous(&self) -> bool {
        matches!(self, Error::Aws(c) if c.ambiguous)
    }

    /// True if the operation stopped because it was cancelled (maps to exit code 130).
    pub fn is_cancelled(&self) -> bool {
        match self {
            Error::Cancelled => true,
            Error::RolledBack { source, .. } => source.is_cancelled(),
            _ => false,
        }
    }

    /// The AWS error code (e.g. `InvalidAMIID.NotFound`), if this is an AWS error.
    pub fn aws_code(&self) -> Option<&str> {
        match self {
            Error::Aws(c) => c.code.as_deref(),
            Error::RolledBack { source, .. } => source.aws_code(),
            _ => None,
        }
    }

    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { what, path, source }
    }
}

/// Build an [`Error::Aws`] from the last SDK error of a call.
pub(crate) fn aws_error<E>(
    op: &'static str,
    region: &str,
    what: &str,
    e: &aws_sdk_ec2::error::SdkError<E, aws_sdk_ec2::config::http::HttpResponse>,
    attempts: u32,
    elapsed: Duration,
    ambiguous: bool,
) -> Error
where
    E: std::error::Error + aws_sdk_ec2::error::ProvideErrorMetadata + Send + Sync + 'static,
{
    use aws_sdk_ec2::error::ProvideErrorMetadata as _;
    Error::Aws(Box::new(CallError {
        op,
        region: region.to_string(),
        what: what.to_string(),
        detail: format!("{}", aws_sdk_ec2::error::DisplayErrorContext(e)),
        code: e.code().map(str::to_string),
        attempts,
        elapsed,
        ambiguous,
    }))
}

/// Codes that mean "the resource is already gone": rollback and sweep treat them as success.
pub(crate) fn is_not_found(code: Option<&str>) -> bool {
    code.is_some_and(|c| crate::retry::NOT_FOUND_CODES.contains(&c))
}
