//! `webake clean --aws`: delete what crashed or interrupted bakes left behind.

use aws_sdk_ec2::types::Filter;

use crate::client::Session;
use crate::error::{Result, aws};
use crate::publish::{TAG_BAKE_ID, delete_snapshot, deregister_with_snapshots};

/// What a sweep deleted, as `(region, id)` pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub images: Vec<(String, String)>,
    pub snapshots: Vec<(String, String)>,
}

/// Find AMIs and snapshots (owned by this account) tagged `webake:bake-id` with one of
/// `bake_ids` in each of `regions`, and delete them: AMIs first, then their snapshots and any
/// other tagged snapshot. Pass only bakes that did not finish: a finished bake's AMI carries
/// its bake id too. An empty `bake_ids` deletes nothing.
pub async fn sweep(
    session: &Session,
    regions: &[String],
    bake_ids: &[String],
) -> Result<SweepReport> {
    let mut report = SweepReport::default();
    if bake_ids.is_empty() {
        return Ok(report);
    }
    // Describe* take at most 200 filter values; sweep in chunks.
    for region in regions {
        let clients = session.region(region);
        for ids in bake_ids.chunks(200) {
            let filter = || {
                Filter::builder()
                    .name(format!("tag:{TAG_BAKE_ID}"))
                    .set_values(Some(ids.to_vec()))
                    .build()
            };
            let images = clients
                .ec2
                .describe_images()
                .owners("self")
                .filters(filter())
                .send()
                .await
                .map_err(aws("DescribeImages", region, format!("tag {TAG_BAKE_ID}")))?;
            let mut snapshot_ids = Vec::new();
            for image in images.images() {
                let Some(ami_id) = image.image_id() else {
                    continue;
                };
                snapshot_ids.extend(deregister_with_snapshots(&clients, ami_id).await?);
                report.images.push((region.clone(), ami_id.to_string()));
            }
            let mut pages = clients
                .ec2
                .describe_snapshots()
                .owner_ids("self")
                .filters(filter())
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(aws(
                    "DescribeSnapshots",
                    region,
                    format!("tag {TAG_BAKE_ID}"),
                ))?;
                snapshot_ids.extend(
                    page.snapshots()
                        .iter()
                        .filter_map(|s| s.snapshot_id())
                        .map(str::to_string),
                );
            }
            snapshot_ids.sort();
            snapshot_ids.dedup();
            for id in snapshot_ids {
                delete_snapshot(&clients, &id).await?;
                report.snapshots.push((region.clone(), id));
            }
        }
    }
    Ok(report)
}
