//! Retiring a published AMI, one step at a time so the caller can record each as it completes
//! (`webake gc`): deprecate it, deregister it, delete its snapshots. Each call goes through
//! webake's retry policy; `InvalidSnapshot.InUse` right after a deregistration is retried.
//! What is already gone (not found) is not an error.

use crate::client::Session;
use crate::error::Result;
use crate::reporter::Reporter;
use crate::retry::Stop;

/// Mark `ami_id` in `region` deprecated from `at` on (EnableImageDeprecation).
pub async fn deprecate_image(
    session: &Session,
    region: &str,
    ami_id: &str,
    at: jiff::Timestamp,
    reporter: &dyn Reporter,
) -> Result<()> {
    let stop = Stop::new();
    let clients = session.region(region);
    reporter.step(region, &format!("deprecating {ami_id}"));
    crate::publish::deprecate(&clients, clients.caller(reporter, &stop), ami_id, at).await
}

/// Deregister `ami_id` in `region`; returns the snapshots its block device mappings used
/// (empty when the AMI was already gone: the caller then deletes the snapshots it knows of).
pub async fn deregister_image(
    session: &Session,
    region: &str,
    ami_id: &str,
    reporter: &dyn Reporter,
) -> Result<Vec<String>> {
    let stop = Stop::new();
    let clients = session.region(region);
    reporter.step(region, &format!("deregistering {ami_id}"));
    crate::ledger::deregister_with_snapshots(&clients, clients.caller(reporter, &stop), ami_id)
        .await
}

/// Delete `snapshot_id` in `region`.
pub async fn delete_snapshot(
    session: &Session,
    region: &str,
    snapshot_id: &str,
    reporter: &dyn Reporter,
) -> Result<()> {
    let stop = Stop::new();
    let clients = session.region(region);
    reporter.step(region, &format!("deleting snapshot {snapshot_id}"));
    crate::ledger::delete_snapshot(&clients, clients.caller(reporter, &stop), snapshot_id).await
}
