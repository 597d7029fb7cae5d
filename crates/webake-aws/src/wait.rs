//! Polling until a snapshot or AMI leaves its pending state.

use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{ImageState, SnapshotState};

use crate::client::RegionClients;
use crate::error::{Error, Result, aws};

/// Wait until `snapshot_id` is `completed`; error if it turns `error` or the timeout passes.
pub async fn snapshot_completed(
    clients: &RegionClients,
    snapshot_id: &str,
    interval: Duration,
    timeout: Duration,
) -> Result<()> {
    let region = &clients.region;
    let start = Instant::now();
    loop {
        let out = clients
            .ec2
            .describe_snapshots()
            .snapshot_ids(snapshot_id)
            .send()
            .await
            .map_err(aws("DescribeSnapshots", region, snapshot_id))?;
        let snap = out.snapshots().first();
        match snap.and_then(|s| s.state()) {
            Some(SnapshotState::Completed) => return Ok(()),
            Some(SnapshotState::Error) => {
                return Err(Error::SnapshotFailed {
                    region: region.clone(),
                    snapshot_id: snapshot_id.to_string(),
                    state: "error".into(),
                    message: snap
                        .and_then(|s| s.state_message())
                        .unwrap_or_default()
                        .to_string(),
                });
            }
            state => tracing::debug!(%region, %snapshot_id, ?state, "snapshot not completed yet"),
        }
        if start.elapsed() >= timeout {
            return Err(Error::Timeout {
                region: region.clone(),
                what: format!("snapshot {snapshot_id} to complete"),
                waited: start.elapsed(),
            });
        }
        tokio::time::sleep(interval).await;
    }
}

/// Wait until `ami_id` is `available`; error if it fails or the timeout passes. Returns the
/// image description.
pub async fn image_available(
    clients: &RegionClients,
    ami_id: &str,
    interval: Duration,
    timeout: Duration,
) -> Result<aws_sdk_ec2::types::Image> {
    let region = &clients.region;
    let start = Instant::now();
    loop {
        let out = clients.ec2.describe_images().image_ids(ami_id).send().await;
        match out {
            Ok(out) => {
                if let Some(image) = out.images().first() {
                    match image.state() {
                        Some(ImageState::Available) => return Ok(image.clone()),
                        Some(
                            s @ (ImageState::Failed | ImageState::Error | ImageState::Invalid),
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
                        state => {
                            tracing::debug!(%region, %ami_id, ?state, "image not available yet")
                        }
                    }
                }
            }
            // A freshly copied AMI can be briefly unknown to DescribeImages (eventual
            // consistency): keep polling until the timeout.
            Err(e) => {
                let err = aws("DescribeImages", region, ami_id)(e);
                if !crate::error::is_not_found(err.aws_code()) {
                    return Err(err);
                }
            }
        }
        if start.elapsed() >= timeout {
            return Err(Error::Timeout {
                region: region.clone(),
                what: format!("AMI {ami_id} to become available"),
                waited: start.elapsed(),
            });
        }
        tokio::time::sleep(interval).await;
    }
}
