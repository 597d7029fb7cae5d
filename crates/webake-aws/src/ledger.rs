//! What one publish run created, and how it is undone.
//!
//! Every id is recorded the moment an answer names it. A create whose answer never came
//! (lost after the service acted, or still in flight when the run was cancelled) is recorded
//! as *uncertain*; the rollback then looks for it by the run's tag (and the AMI name), which
//! every create sets atomically (StartSnapshot tags, RegisterImage and CopyImage tag
//! specifications), so it is found although its id was never seen.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use aws_sdk_ec2::types::{Filter, Image};
use serde::{Deserialize, Serialize};

use crate::client::{RegionClients, Session};
use crate::error::{Error, Result, is_not_found};
use crate::reporter::Reporter;
use crate::retry::{Also, Caller, Stop};

/// Tag carrying the run id (a nonce per publish attempt) on everything a run creates.
pub const TAG_RUN: &str = "webake:run";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    Image,
    Snapshot,
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResourceKind::Image => "AMI",
            ResourceKind::Snapshot => "snapshot",
        })
    }
}

/// An AMI or snapshot in a region.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Resource {
    pub region: String,
    pub kind: ResourceKind,
    pub id: String,
}

impl Resource {
    pub fn image(region: &str, id: &str) -> Self {
        Self {
            region: region.to_string(),
            kind: ResourceKind::Image,
            id: id.to_string(),
        }
    }
    pub fn snapshot(region: &str, id: &str) -> Self {
        Self {
            region: region.to_string(),
            kind: ResourceKind::Snapshot,
            id: id.to_string(),
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} in {}", self.kind, self.id, self.region)
    }
}

/// Something that may still exist after a rollback or sweep, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leftover {
    pub region: String,
    pub kind: ResourceKind,
    /// `None` when a create's answer was lost and nothing carrying the run's tag was found.
    pub id: Option<String>,
    pub reason: String,
}

impl fmt::Display for Leftover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.id {
            Some(id) => write!(f, "{} {id} in {}: {}", self.kind, self.region, self.reason),
            None => write!(
                f,
                "an unknown {} in {}: {}",
                self.kind, self.region, self.reason
            ),
        }
    }
}

#[derive(Debug, Clone)]
struct Uncertain {
    region: String,
    kind: ResourceKind,
    what: String,
}

/// The record of what one run created. `rollback()` deletes it; `commit()` keeps it. If
/// neither ran, `Drop` logs the ids: they carry the bake id and run tags, so
/// `webake clean --aws` sweeps them.
#[derive(Debug)]
#[must_use]
pub struct Ledger {
    run_id: String,
    /// The AMI name the run registers and copies under.
    name: String,
    /// Every region the run may create something in.
    regions: Vec<String>,
    items: Mutex<Vec<Resource>>,
    uncertain: Mutex<Vec<Uncertain>>,
    settled: AtomicBool,
}

/// A create call in flight. `created(id)` records its answer; if it is dropped otherwise
/// (failed ambiguously, or the future was dropped), the ledger marks the create uncertain.
pub(crate) struct InFlight<'a> {
    ledger: &'a Ledger,
    region: String,
    kind: ResourceKind,
    what: String,
    done: bool,
}

impl InFlight<'_> {
    pub(crate) fn created(mut self, id: &str) {
        self.ledger.record(Resource {
            region: self.region.clone(),
            kind: self.kind,
            id: id.to_string(),
        });
        self.done = true;
    }

    /// The create failed with `e`. Definite refusals (throttling, validation, permissions)
    /// prove nothing was created; an attempt without a definite answer (5xx, timeout) or a
    /// stop between attempts leaves the create uncertain.
    pub(crate) fn failed(mut self, e: &Error) {
        let ambiguous = e.is_ambiguous() || matches!(e, Error::Cancelled);
        self.done = !ambiguous;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.done {
            tracing::warn!(region = %self.region, what = %self.what, "create answer lost; the rollback will look for it by tag");
            lock(&self.ledger.uncertain).push(Uncertain {
                region: self.region.clone(),
                kind: self.kind,
                what: self.what.clone(),
            });
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Ledger {
    pub fn new(run_id: &str, name: &str, regions: Vec<String>) -> Self {
        Self {
            run_id: run_id.to_string(),
            name: name.to_string(),
            regions,
            items: Mutex::new(Vec::new()),
            uncertain: Mutex::new(Vec::new()),
            settled: AtomicBool::new(false),
        }
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    pub fn record(&self, r: Resource) {
        tracing::debug!(created = %r, "recorded for rollback");
        let mut items = lock(&self.items);
        if !items.contains(&r) {
            items.push(r);
        }
    }

    pub fn items(&self) -> Vec<Resource> {
        lock(&self.items).clone()
    }

    /// True if nothing was created and no create is uncertain: there is nothing to undo.
    pub fn is_empty(&self) -> bool {
        lock(&self.items).is_empty() && lock(&self.uncertain).is_empty()
    }

    pub(crate) fn begin(&self, region: &str, kind: ResourceKind, what: String) -> InFlight<'_> {
        InFlight {
            ledger: self,
            region: region.to_string(),
            kind,
            what,
            done: false,
        }
    }

    /// Keep everything (the publish succeeded).
    pub fn commit(&self) {
        self.settled.store(true, Ordering::SeqCst);
    }

    /// Delete everything this run created, in every region: recorded AMIs first (a snapshot
    /// in use by an AMI cannot be deleted), then whatever carries the run's tag (creates
    /// whose answer was lost), then the snapshots, retrying `InvalidSnapshot.InUse` while a
    /// deregistration settles. Returns what was removed and exactly what remains.
    pub async fn rollback(
        &self,
        session: &Session,
        reporter: &dyn Reporter,
    ) -> (Vec<Resource>, Vec<Leftover>) {
        self.settled.store(true, Ordering::SeqCst);
        // The run's stop may be set (cancellation): the rollback has its own, never set.
        let stop = Stop::new();
        let mut undo = Undo::default();

        let items = self.items();
        undo.deregister_recorded(session, reporter, &stop, &items)
            .await;
        undo.snapshots.extend(
            items
                .iter()
                .rev()
                .filter(|r| r.kind == ResourceKind::Snapshot)
                .cloned(),
        );

        // Creates whose answer was lost carry the run tag: find them in every region.
        let uncertain = lock(&self.uncertain).clone();
        for region in &self.regions {
            let clients = session.region(region);
            let caller = clients.caller(reporter, &stop);
            self.find_lost_creates(&clients, caller, reporter, &stop, &uncertain, &mut undo)
                .await;
        }

        // Snapshots are deleted only after every AMI of the run is deregistered, including
        // those found by tag above: a snapshot an AMI still uses cannot be deleted.
        delete_snapshots(
            session,
            reporter,
            &stop,
            &mut undo.snapshots,
            &mut undo.deleted,
            &mut undo.removed,
            &mut undo.leftovers,
        )
        .await;
        (undo.removed, undo.leftovers)
    }

    /// Look in `clients.region` for the creates of this run whose answer was lost: undo what
    /// carries the run's tag, and report as leftovers those still missing once the retry
    /// budget is spent.
    async fn find_lost_creates(
        &self,
        clients: &RegionClients,
        caller: Caller<'_>,
        reporter: &dyn Reporter,
        stop: &Stop,
        uncertain: &[Uncertain],
        undo: &mut Undo,
    ) {
        let region = &clients.region;
        let mut pending: Vec<&Uncertain> =
            uncertain.iter().filter(|u| &u.region == region).collect();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match find_run_resources(clients, caller, &self.run_id, &self.name).await {
                Ok(found) => {
                    for r in found {
                        let known = undo.knows(&r);
                        pending.retain(|u| u.kind != r.kind || known);
                        if !known {
                            undo.found_by_tag(clients, caller, reporter, r, &self.run_id)
                                .await;
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(%region, "rollback: looking for the run's resources: {e}");
                    undo.leftovers.push(Leftover {
                        region: region.clone(),
                        kind: ResourceKind::Image,
                        id: None,
                        reason: format!(
                            "could not look for resources tagged {TAG_RUN}={}: {e}",
                            self.run_id
                        ),
                    });
                    pending.clear();
                    break;
                }
            }
            // A lost create may take a moment to show up in Describe* (eventual
            // consistency): keep looking for it under the retry policy.
            if pending.is_empty() || attempt >= clients.timing.retry.attempts {
                break;
            }
            let _ = stop.sleep(clients.timing.retry.delay(attempt)).await;
        }
        for u in pending {
            undo.leftovers.push(Leftover {
                region: region.clone(),
                kind: u.kind,
                id: None,
                reason: format!(
                    "the answer of {} was lost and nothing tagged {TAG_RUN}={} turned up",
                    u.what, self.run_id
                ),
            });
        }
    }
}

/// The state of one rollback: what was removed, what remains, and the snapshots queued for
/// deletion.
#[derive(Default)]
struct Undo {
    removed: Vec<Resource>,
    leftovers: Vec<Leftover>,
    /// AMIs already deregistered (or tried).
    handled: BTreeSet<Resource>,
    snapshots: Vec<Resource>,
    deleted: BTreeSet<Resource>,
}

impl Undo {
    /// Deregister the recorded AMIs, newest first, queueing their snapshots.
    async fn deregister_recorded(
        &mut self,
        session: &Session,
        reporter: &dyn Reporter,
        stop: &Stop,
        items: &[Resource],
    ) {
        for r in items.iter().rev() {
            if r.kind == ResourceKind::Image {
                let clients = session.region(&r.region);
                let caller = clients.caller(reporter, stop);
                reporter.step(&r.region, &format!("rolling back: deregistering {}", r.id));
                undo_image(
                    &clients,
                    caller,
                    r,
                    &mut self.removed,
                    &mut self.leftovers,
                    &mut self.snapshots,
                )
                .await;
                self.handled.insert(r.clone());
            }
        }
    }

    /// Is `r` already deregistered, deleted or queued?
    fn knows(&self, r: &Resource) -> bool {
        self.handled.contains(r) || self.deleted.contains(r) || self.snapshots.contains(r)
    }

    /// Undo `r`, found by the tag of run `run_id`: deregister an AMI now, queue a snapshot.
    async fn found_by_tag(
        &mut self,
        clients: &RegionClients,
        caller: Caller<'_>,
        reporter: &dyn Reporter,
        r: Resource,
        run_id: &str,
    ) {
        tracing::warn!(found = %r, run = %run_id, "rollback: found by tag");
        if r.kind == ResourceKind::Image {
            reporter.step(
                &clients.region,
                &format!("rolling back: deregistering {} (found by tag)", r.id),
            );
            undo_image(
                clients,
                caller,
                &r,
                &mut self.removed,
                &mut self.leftovers,
                &mut self.snapshots,
            )
            .await;
            self.handled.insert(r);
        } else {
            self.snapshots.push(r);
        }
    }
}

/// Delete every snapshot in `pending` not yet in `done` (moving them there).
async fn delete_snapshots(
    session: &Session,
    reporter: &dyn Reporter,
    stop: &Stop,
    pending: &mut Vec<Resource>,
    done: &mut BTreeSet<Resource>,
    removed: &mut Vec<Resource>,
    leftovers: &mut Vec<Leftover>,
) {
    for s in std::mem::take(pending) {
        if !done.insert(s.clone()) {
            continue;
        }
        let clients = session.region(&s.region);
        let caller = clients.caller(reporter, stop);
        reporter.step(&s.region, &format!("rolling back: deleting {}", s.id));
        match delete_snapshot(&clients, caller, &s.id).await {
            Ok(()) => removed.push(s),
            Err(e) => {
                tracing::error!(snapshot = %s, "rollback: {e}");
                leftovers.push(Leftover {
                    region: s.region.clone(),
                    kind: s.kind,
                    id: Some(s.id.clone()),
                    reason: e.to_string(),
                });
            }
        }
    }
}

async fn undo_image(
    clients: &RegionClients,
    caller: Caller<'_>,
    r: &Resource,
    removed: &mut Vec<Resource>,
    leftovers: &mut Vec<Leftover>,
    snapshots: &mut Vec<Resource>,
) {
    match deregister_with_snapshots(clients, caller, &r.id).await {
        Ok(snaps) => {
            removed.push(r.clone());
            snapshots.extend(snaps.iter().map(|s| Resource::snapshot(&r.region, s)));
        }
        Err(e) => {
            tracing::error!(image = %r, "rollback: {e}");
            leftovers.push(Leftover {
                region: r.region.clone(),
                kind: r.kind,
                id: Some(r.id.clone()),
                reason: e.to_string(),
            });
        }
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        if !self.settled.load(Ordering::SeqCst) {
            let items = self.items();
            if !items.is_empty() {
                let list: Vec<String> = items.iter().map(ToString::to_string).collect();
                tracing::error!(
                    run = %self.run_id,
                    "publish interrupted; these resources were not rolled back (sweep with `webake clean --aws`): {}",
                    list.join(", ")
                );
            }
        }
    }
}

/// AMIs named `name` and snapshots, owned by this account and tagged with the run id.
async fn find_run_resources(
    clients: &RegionClients,
    caller: Caller<'_>,
    run_id: &str,
    name: &str,
) -> Result<Vec<Resource>> {
    let region = &clients.region;
    let tag = || {
        Filter::builder()
            .name(format!("tag:{TAG_RUN}"))
            .values(run_id)
            .build()
    };
    let images = caller
        .call(
            "DescribeImages",
            &format!("{TAG_RUN}={run_id}"),
            Also::default(),
            || {
                clients
                    .ec2
                    .describe_images()
                    .owners("self")
                    .filters(Filter::builder().name("name").values(name).build())
                    .filters(tag())
                    .send()
            },
        )
        .await?;
    let mut out: Vec<Resource> = images
        .images()
        .iter()
        .filter(|i| i.state() != Some(&aws_sdk_ec2::types::ImageState::Deregistered))
        .filter_map(|i| i.image_id())
        .map(|id| Resource::image(region, id))
        .collect();
    let mut next: Option<String> = None;
    loop {
        let page = caller
            .call(
                "DescribeSnapshots",
                &format!("{TAG_RUN}={run_id}"),
                Also::default(),
                || {
                    clients
                        .ec2
                        .describe_snapshots()
                        .owner_ids("self")
                        .filters(tag())
                        .set_next_token(next.clone())
                        .send()
                },
            )
            .await?;
        out.extend(
            page.snapshots()
                .iter()
                .filter_map(|s| s.snapshot_id())
                .map(|id| Resource::snapshot(region, id)),
        );
        match page.next_token() {
            Some(t) if !t.is_empty() => next = Some(t.to_string()),
            _ => break,
        }
    }
    Ok(out)
}

pub(crate) fn image_snapshots(image: &Image) -> Vec<String> {
    image
        .block_device_mappings()
        .iter()
        .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()).map(str::to_string))
        .collect()
}

/// Deregister `ami_id` and return the snapshots of its block device mappings (to delete).
/// An AMI that is already gone is not an error.
pub(crate) async fn deregister_with_snapshots(
    clients: &RegionClients,
    caller: Caller<'_>,
    ami_id: &str,
) -> Result<Vec<String>> {
    let region = &clients.region;
    let snaps = match caller
        .call("DescribeImages", ami_id, Also::default(), || {
            clients.ec2.describe_images().image_ids(ami_id).send()
        })
        .await
    {
        Ok(out) => match out.images().first() {
            Some(image) => image_snapshots(image),
            None => return Ok(Vec::new()),
        },
        Err(e) if is_not_found(e.aws_code()) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    match caller
        .call("DeregisterImage", ami_id, Also::default(), || {
            clients.ec2.deregister_image().image_id(ami_id).send()
        })
        .await
    {
        Ok(_) => {}
        Err(e) if is_not_found(e.aws_code()) => {}
        Err(e) => return Err(e),
    }
    tracing::info!(%region, %ami_id, "deregistered AMI");
    Ok(snaps)
}

/// Delete `snapshot_id`. `InvalidSnapshot.InUse` is retried under the policy: right after
/// DeregisterImage, EC2 still reports the AMI's snapshot in use for a while. A snapshot that
/// is already gone is not an error.
pub(crate) async fn delete_snapshot(
    clients: &RegionClients,
    caller: Caller<'_>,
    snapshot_id: &str,
) -> Result<()> {
    let also = Also {
        created_at: None,
        codes: &["InvalidSnapshot.InUse"],
    };
    match caller
        .call("DeleteSnapshot", snapshot_id, also, || {
            clients
                .ec2
                .delete_snapshot()
                .snapshot_id(snapshot_id)
                .send()
        })
        .await
    {
        Ok(_) => {}
        Err(e) if is_not_found(e.aws_code()) => {}
        Err(e) => return Err(e),
    }
    tracing::info!(region = %clients.region, %snapshot_id, "deleted snapshot");
    Ok(())
}
