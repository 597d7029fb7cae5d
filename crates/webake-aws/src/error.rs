//! Typed errors: every cloud error names the operation, region and resource it was about.

use std::path::PathBuf;
use std::time::Duration;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to AWS failed (after the SDK's and our own retries).
    /// `detail` is the SDK error with its code and message (never credentials).
    #[error("{op} in {region} ({what}) failed: {detail}")]
    Aws {
        op: &'static str,
        region: String,
        what: String,
        detail: String,
        code: Option<String>,
    },

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

    /// The publish failed; what it had created was rolled back (or listed as left over).
    #[error("{source}; {}", rollback_summary(.leftovers))]
    RolledBack {
        #[source]
        source: Box<Error>,
        /// Resources the rollback could not delete; `webake clean --aws` sweeps them.
        leftovers: Vec<String>,
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

fn rollback_summary(leftovers: &[String]) -> String {
    if leftovers.is_empty() {
        "everything this run created was rolled back".to_string()
    } else {
        format!(
            "rollback could not delete {} (run `webake clean --aws` to sweep)",
            leftovers.join(", ")
        )
    }
}

impl Error {
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
            Error::Aws { code, .. } => code.as_deref(),
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

/// Build an [`Error::Aws`] from an SDK error, keeping its code and the full error context.
pub(crate) fn aws<E>(
    op: &'static str,
    region: &str,
    what: impl Into<String>,
) -> impl FnOnce(E) -> Error
where
    E: std::error::Error + aws_sdk_ec2::error::ProvideErrorMetadata + 'static,
{
    let region = region.to_string();
    let what = what.into();
    move |e| {
        let code = e.code().map(str::to_string);
        let detail = format!("{}", aws_sdk_ec2::error::DisplayErrorContext(&e));
        Error::Aws {
            op,
            region,
            what,
            detail,
            code,
        }
    }
}

/// Codes that mean "the resource is already gone": rollback and sweep treat them as success.
pub(crate) fn is_not_found(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "InvalidAMIID.NotFound"
                | "InvalidAMIID.Unavailable"
                | "InvalidSnapshot.NotFound"
                | "ResourceNotFoundException"
        )
    )
}
