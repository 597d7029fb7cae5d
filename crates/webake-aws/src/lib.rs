//! webake-aws: publish a baked raw disk to AWS as an AMI through the EBS direct APIs (no
//! volume attach), idempotently and with rollback; sweep leftovers; download a snapshot to
//! start a bake from an existing AMI; resolve attached EBS volumes by NVMe serial; list the
//! AMIs in use and retire unused ones step by step (`webake gc`).
//!
//! The library never prints: progress goes through [`Reporter`], diagnostics through
//! `tracing`. Credentials come from the standard AWS chain and are never logged.
//!
//! ```no_run
//! # async fn demo(req: webake_aws::PublishRequest) -> webake_aws::Result<()> {
//! let session = webake_aws::Session::new(&req.region, &webake_aws::ClientSettings::default()).await;
//! let publication = webake_aws::publish(&session, &req, &webake_aws::NoReporter).await?;
//! println!("{:?}", publication.regions);
//! # Ok(()) }
//! ```

mod client;
mod ebs;
mod error;
mod in_use;
mod ledger;
mod nvme;
mod publish;
mod reporter;
mod retire;
mod retry;
mod sweep;
pub mod wait;

pub use client::{
    ClientSettings, DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_CANCEL_GRACE, DEFAULT_IMAGE_TIMEOUT,
    DEFAULT_POLL_INTERVAL, DEFAULT_SNAPSHOT_TIMEOUT, RegionClients, Session, StaticCredentials,
    Timing,
};
pub use ebs::{
    DEFAULT_CONCURRENCY, DownloadSummary, EBS_BLOCK_SIZE, START_SNAPSHOT_TIMEOUT_MINUTES,
    UploadOptions, UploadSummary, aggregate_checksum, block_checksum, block_digest,
    download_snapshot_to_file, upload_snapshot, volume_size_gib,
};
pub use error::{CallError, Error, Result};
pub use in_use::{AmiUse, AmiUser, LIVE_INSTANCE_STATES, amis_in_use};
pub use ledger::{Ledger, Leftover, Resource, ResourceKind, TAG_RUN};
pub use nvme::{EBS_NVME_MODEL, nvme_serial_of, resolve_nvme_device};
pub use publish::{
    Architecture, BootMode, ImagePlatform, NameVars, Principal, Publication, PublishRequest,
    ROOT_DEVICE, RegionImage, RootSnapshot, TAG_BAKE_ID, TAG_INPUTS_DIGEST, find_root_snapshot,
    publish, publish_until, render_name, validate_ami_name,
};
pub use reporter::{NoReporter, Reporter, RetryEvent};
pub use retire::{delete_snapshot, deprecate_image, deregister_image};
pub use retry::{
    NOT_YET_VISIBLE_GRACE, RETRY_ATTEMPTS, RETRY_BASE_DELAY, RETRY_MAX_DELAY, RetryPolicy,
};
pub use sweep::{SweepItem, SweepPlan, SweepReport, SweepScope, execute_sweep, plan_sweep};
