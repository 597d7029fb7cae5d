//! webake-aws: publish a baked raw disk to AWS as an AMI through the EBS direct APIs (no
//! volume attach), idempotently and with rollback; sweep leftovers; download a snapshot to
//! start a bake from an existing AMI; resolve attached EBS volumes by NVMe serial.
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
mod nvme;
mod publish;
mod reporter;
mod sweep;
pub mod wait;

pub use client::{
    ClientSettings, DEFAULT_IMAGE_TIMEOUT, DEFAULT_POLL_INTERVAL, DEFAULT_SNAPSHOT_TIMEOUT,
    RegionClients, SDK_INITIAL_BACKOFF, SDK_MAX_ATTEMPTS, SDK_MAX_BACKOFF, Session,
    StaticCredentials, Timing,
};
pub use ebs::{
    BLOCK_ATTEMPTS, BLOCK_RETRY_BACKOFF, DEFAULT_CONCURRENCY, DownloadSummary, EBS_BLOCK_SIZE,
    START_SNAPSHOT_TIMEOUT_MINUTES, UploadOptions, UploadSummary, aggregate_checksum,
    block_checksum, download_snapshot_to_file, upload_snapshot, volume_size_gib,
};
pub use error::{Error, Result};
pub use nvme::{EBS_NVME_MODEL, nvme_serial_of, resolve_nvme_device};
pub use publish::{
    Architecture, BootMode, Created, Ledger, NameVars, Principal, Publication, PublishRequest,
    ROOT_DEVICE, RegionImage, RootSnapshot, TAG_BAKE_ID, TAG_INPUTS_DIGEST, find_root_snapshot,
    publish, publish_until, render_name, validate_ami_name,
};
pub use reporter::{NoReporter, Reporter};
pub use sweep::{SweepReport, sweep};
