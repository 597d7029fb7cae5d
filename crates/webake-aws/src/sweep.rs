//! `webake clean --aws`: find what failed, interrupted or crashed publishes left behind, and
//! delete it. Planning and deleting are separate: the caller prints the plan (or stops there
//! for `--dry-run`), then executes exactly that plan.

use std::collections::BTreeSet;
use std::fmt;

use aws_sdk_ec2::types::{Filter, Image, ImageState};
use serde::Serialize;

use crate::client::{RegionClients, Session};
use crate::error::Result;
use crate::ledger::{
    Leftover, Resource, ResourceKind, TAG_RUN, delete_snapshot, deregister_with_snapshots,
    image_snapshots,
};
use crate::publish::TAG_BAKE_ID;
use crate::reporter::Reporter;
use crate::retry::{Also, Caller, Stop};

/// Which webake resources a sweep looks at, and which it keeps.
#[derive(Debug, Clone, Default)]
pub struct SweepScope {
    /// Only resources tagged `webake:bake-id` with one of these ids (e.g. every bake the local
    /// catalog knows, whatever its status). `None`: every resource carrying the tag, which
    /// includes images published from other catalogs in the same account.
    pub bake_ids: Option<Vec<String>>,
    /// AMIs a catalog publication accounts for: kept, and so are the snapshots they use.
    pub keep_images: BTreeSet<String>,
    /// Snapshots a catalog publication accounts for: kept.
    pub keep_snapshots: BTreeSet<String>,
}

/// One resource the sweep would delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SweepItem {
    pub resource: Resource,
    /// The AMI name or the snapshot description.
    pub name: String,
    pub bake_id: Option<String>,
    /// The publish run that created it (`webake:run`), if tagged.
    pub run_id: Option<String>,
    /// For an AMI: its snapshots, deleted after it is deregistered.
    pub snapshots: Vec<String>,
}

impl fmt::Display for SweepItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.resource)?;
        if !self.name.is_empty() {
            write!(f, " {:?}", self.name)?;
        }
        if let Some(b) = &self.bake_id {
            write!(f, " bake {b}")?;
        }
        if let Some(r) = &self.run_id {
            write!(f, " run {r}")?;
        }
        if !self.snapshots.is_empty() {
            write!(f, " (with {})", self.snapshots.join(", "))?;
        }
        Ok(())
    }
}

/// What a sweep would delete, AMIs first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SweepPlan {
    pub items: Vec<SweepItem>,
}

impl SweepPlan {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// What a sweep deleted and exactly what it could not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    pub removed: Vec<Resource>,
    pub leftovers: Vec<Leftover>,
}

fn tag(item: &[aws_sdk_ec2::types::Tag], key: &str) -> Option<String> {
    item.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
        .map(str::to_string)
}

/// The bake-id filters to query with (Describe* take at most 200 values per filter).
fn filters(scope: &SweepScope) -> Vec<Filter> {
    match &scope.bake_ids {
        None => vec![
            Filter::builder()
                .name("tag-key")
                .values(TAG_BAKE_ID)
                .build(),
        ],
        Some(ids) => ids
            .chunks(200)
            .map(|c| {
                Filter::builder()
                    .name(format!("tag:{TAG_BAKE_ID}"))
                    .set_values(Some(c.to_vec()))
                    .build()
            })
            .collect(),
    }
}

/// Find, in each of `regions`, the AMIs and snapshots owned by this account and tagged
/// `webake:bake-id` (within `scope`) that no publication accounts for. Deletes nothing.
pub async fn plan_sweep(
    session: &Session,
    regions: &[String],
    scope: &SweepScope,
) -> Result<SweepPlan> {
    let mut plan = SweepPlan::default();
    if scope.bake_ids.as_ref().is_some_and(|ids| ids.is_empty()) {
        return Ok(plan);
    }
    let stop = Stop::new();
    let reporter = crate::reporter::NoReporter;
    let mut snapshot_items = Vec::new();
    for region in regions {
        let clients = session.region(region);
        let caller = clients.caller(&reporter, &stop);
        let mut keep_snaps = scope.keep_snapshots.clone();
        let mut planned_snaps = BTreeSet::new();
        let mut images = Vec::new();
        for f in filters(scope) {
            images.extend(describe_images(&clients, caller, f).await?);
        }
        images.sort_by(|a, b| a.image_id().cmp(&b.image_id()));
        images.dedup_by(|a, b| a.image_id() == b.image_id());
        for image in &images {
            if image.state() == Some(&ImageState::Deregistered) {
                continue;
            }
            let Some(id) = image.image_id() else { continue };
            if scope.keep_images.contains(id) {
                keep_snaps.extend(image_snapshots(image));
            }
        }
        for image in &images {
            let Some(id) = image.image_id() else { continue };
            if scope.keep_images.contains(id) || image.state() == Some(&ImageState::Deregistered) {
                continue;
            }
            let snaps: Vec<String> = image_snapshots(image)
                .into_iter()
                .filter(|s| !keep_snaps.contains(s))
                .collect();
            planned_snaps.extend(snaps.iter().cloned());
            plan.items.push(SweepItem {
                resource: Resource::image(region, id),
                name: image.name().unwrap_or_default().to_string(),
                bake_id: tag(image.tags(), TAG_BAKE_ID),
                run_id: tag(image.tags(), TAG_RUN),
                snapshots: snaps,
            });
        }
        let mut seen = BTreeSet::new();
        for f in filters(scope) {
            let mut next: Option<String> = None;
            loop {
                let page = caller
                    .call(
                        "DescribeSnapshots",
                        "webake snapshots",
                        Also::default(),
                        || {
                            clients
                                .ec2
                                .describe_snapshots()
                                .owner_ids("self")
                                .filters(f.clone())
                                .set_next_token(next.clone())
                                .send()
                        },
                    )
                    .await?;
                for s in page.snapshots() {
                    let Some(id) = s.snapshot_id() else { continue };
                    if keep_snaps.contains(id)
                        || planned_snaps.contains(id)
                        || !seen.insert(id.to_string())
                    {
                        continue;
                    }
                    snapshot_items.push(SweepItem {
                        resource: Resource::snapshot(region, id),
                        name: s.description().unwrap_or_default().to_string(),
                        bake_id: tag(s.tags(), TAG_BAKE_ID),
                        run_id: tag(s.tags(), TAG_RUN),
                        snapshots: Vec::new(),
                    });
                }
                match page.next_token() {
                    Some(t) if !t.is_empty() => next = Some(t.to_string()),
                    _ => break,
                }
            }
        }
    }
    plan.items.extend(snapshot_items);
    Ok(plan)
}

async fn describe_images(
    clients: &RegionClients,
    caller: Caller<'_>,
    filter: Filter,
) -> Result<Vec<Image>> {
    let out = caller
        .call("DescribeImages", "webake images", Also::default(), || {
            clients
                .ec2
                .describe_images()
                .owners("self")
                .filters(filter.clone())
                .send()
        })
        .await?;
    Ok(out.images().to_vec())
}

/// Delete what `plan` lists: each AMI, then its snapshots, then the other snapshots
/// (`InvalidSnapshot.InUse` right after a deregistration is retried). Continues past
/// failures; the report says exactly what remains.
pub async fn execute_sweep(
    session: &Session,
    plan: &SweepPlan,
    reporter: &dyn Reporter,
) -> SweepReport {
    let stop = Stop::new();
    let mut report = SweepReport::default();
    let mut done = BTreeSet::new();
    for item in &plan.items {
        let r = &item.resource;
        if !done.insert(r.clone()) {
            continue;
        }
        match r.kind {
            ResourceKind::Image => {
                let clients = session.region(&r.region);
                let caller = clients.caller(reporter, &stop);
                reporter.step(&r.region, &format!("deregistering {}", r.id));
                match deregister_with_snapshots(&clients, caller, &r.id).await {
                    Ok(_) => {
                        report.removed.push(r.clone());
                        for s in &item.snapshots {
                            if done.insert(Resource::snapshot(&r.region, s)) {
                                delete(session, reporter, &stop, &r.region, s, &mut report).await;
                            }
                        }
                    }
                    Err(e) => {
                        report.leftovers.push(Leftover {
                            region: r.region.clone(),
                            kind: r.kind,
                            id: Some(r.id.clone()),
                            reason: e.to_string(),
                        });
                        for s in &item.snapshots {
                            report.leftovers.push(Leftover {
                                region: r.region.clone(),
                                kind: ResourceKind::Snapshot,
                                id: Some(s.clone()),
                                reason: format!("in use by {} (not deregistered)", r.id),
                            });
                        }
                    }
                }
            }
            ResourceKind::Snapshot => {
                delete(session, reporter, &stop, &r.region, &r.id, &mut report).await
            }
        }
    }
    report
}

async fn delete(
    session: &Session,
    reporter: &dyn Reporter,
    stop: &Stop,
    region: &str,
    id: &str,
    report: &mut SweepReport,
) {
    let clients = session.region(region);
    let caller = clients.caller(reporter, stop);
    reporter.step(region, &format!("deleting snapshot {id}"));
    match delete_snapshot(&clients, caller, id).await {
        Ok(()) => report.removed.push(Resource::snapshot(region, id)),
        Err(e) => report.leftovers.push(Leftover {
            region: region.to_string(),
            kind: ResourceKind::Snapshot,
            id: Some(id.to_string()),
            reason: e.to_string(),
        }),
    }
}
