//! Polling until a snapshot or AMI leaves its pending state.
//!
//! "Not found" for a resource this run created means "not visible yet" only for the grace
//! period after its creation ([`crate::RetryPolicy::not_yet_visible_grace`]); after that it
//! is [`Error::Vanished`], never a reason to poll until the timeout.

use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{ImageState, SnapshotState};

use crate::client::RegionClients;
use crate::error::{Error, Result, is_not_found};
use crate::reporter::{NoReporter, Reporter};
use crate::retry::{Also, Stop};

/// Wait until `snapshot_id` is `completed`; error if it turns `error`, vanishes or the
/// timeout passes. `interval` and `timeout` override the clients' timing.
pub async fn snapshot_completed(
    clients: &RegionClients,
    snapshot_id: &str,
    interval: Duration,
    timeout: Duration,
) -> Result<()> {
    let mut clients = clients.clone();
    clients.timing.poll_interval = interval;
    clients.timing.snapshot_timeout = timeout;
    snapshot_completed_until(
        &clients,
        snapshot_id,
        Instant::now(),
        &NoReporter,
        &Stop::new(),
    )
    .await
}

/// Wait until `ami_id` is `available`; error if it fails, vanishes or the timeout passes.
/// Returns the image description.
pub async fn image_available(
    clients: &RegionClients,
    ami_id: &str,
    interval: Duration,
    timeout: Duration,
) -> Result<aws_sdk_ec2::types::Image> {
    let mut clients = clients.clone();
    clients.timing.poll_interval = interval;
    clients.timing.image_timeout = timeout;
    image_available_until(&clients, ami_id, Instant::now(), &NoReporter, &Stop::new()).await
}

fn vanished_or_wait(clients: &RegionClients, what: String, created_at: Instant) -> Result<()> {
    let waited = created_at.elapsed();
    if waited >= clients.timing.retry.not_yet_visible_grace {
        return Err(Error::Vanished {
            region: clients.region.clone(),
            what,
            waited,
        });
    }
    tracing::debug!(region = %clients.region, %what, ?waited, "not visible yet");
    Ok(())
}

pub(crate) async fn snapshot_completed_until(
    clients: &RegionClients,
    snapshot_id: &str,
    created_at: Instant,
    reporter: &dyn Reporter,
    stop: &Stop,
) -> Result<()> {
    let region = &clients.region;
    let caller = clients.caller(reporter, stop);
    let start = Instant::now();
    loop {
        let out = caller
            .call("DescribeSnapshots", snapshot_id, Also::default(), || {
                clients
                    .ec2
                    .describe_snapshots()
                    .snapshot_ids(snapshot_id)
                    .send()
            })
            .await;
        let snap = match out {
            Ok(out) => out.snapshots().first().cloned(),
            Err(e) if is_not_found(e.aws_code()) => None,
            Err(e) => return Err(e),
        };
        match snap.as_ref().map(|s| s.state()) {
            None => vanished_or_wait(clients, format!("snapshot {snapshot_id}"), created_at)?,
            Some(Some(SnapshotState::Completed)) => return Ok(()),
            Some(Some(SnapshotState::Error)) => {
                return Err(Error::SnapshotFailed {
                    region: region.clone(),
                    snapshot_id: snapshot_id.to_string(),
                    state: "error".into(),
                    message: snap
                        .as_ref()
                        .and_then(|s| s.state_message())
                        .unwrap_or_default()
                        .to_string(),
                });
            }
            Some(state) => {
                tracing::debug!(%region, %snapshot_id, ?state, "snapshot not completed yet")
            }
        }
        if start.elapsed() >= clients.timing.snapshot_timeout {
            return Err(Error::Timeout {
                region: region.clone(),
                what: format!("snapshot {snapshot_id} to complete"),
                waited: start.elapsed(),
            });
        }
        stop.sleep(clients.timing.poll_interval).await?;
    }
}

pub(crate) async fn image_available_until(
    clients: &RegionClients,
    ami_id: &str,
    created_at: Instant,
    reporter: &dyn Reporter,
    stop: &Stop,
) -> Result<aws_sdk_ec2::types::Image> {
    let region = &clients.region;
    let caller = clients.caller(reporter, stop);
    let start = Instant::now();
    loop {
        let out = caller
            .call("DescribeImages", ami_id, Also::default(), || {
                clients.ec2.describe_images().image_ids(ami_id).send()
            })
            .await;
        let image = match out {
            Ok(out) => out.images().first().cloned(),
            Err(e) if is_not_found(e.aws_code()) => None,
            Err(e) => return Err(e),
        };
        match &image {
            None => vanished_or_wait(clients, format!("AMI {ami_id}"), created_at)?,
            Some(image) => match image.state() {
                Some(ImageState::Available) => return Ok(image.clone()),
                Some(
                    s @ (ImageState::Failed
                    | ImageState::Error
                    | ImageState::Invalid
                    | ImageState::Deregistered
                    | ImageState::Disabled),
                ) => {
                    return Err(Error::ImageFailed {
                        region: region.clone(),
                        ami_id: ami_id.to_string(),
                        state: s.as_str().to_string(),
                        message: image
                            .state_reason()
                            .and_then(|r| r.message())
                            .unwrap_or_default()
                            .to_string(),
                    });
                }
                state => tracing::debug!(%region, %ami_id, ?state, "image not available yet"),
            },
        }
        if start.elapsed() >= clients.timing.image_timeout {
            return Err(Error::Timeout {
                region: region.clone(),
                what: format!("AMI {ami_id} to become available"),
                waited: start.elapsed(),
            });
        }
        stop.sleep(clients.timing.poll_interval).await?;
    }
}
