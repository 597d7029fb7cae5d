//! `clean`: remove what a crash can still leave behind (scratch of bakes no longer running,
//! half-written cache entries, orphaned artifacts, stale bake records), and, with AWS regions,
//! AMIs and snapshots of this catalog's bakes that no publication accounts for.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use webake_catalog::{BakeStatus, Publication};

use crate::bake::hostname;
use crate::{Context, Error, Result};

/// One thing `clean` removed (or would remove).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Removed {
    /// `stale bake record`, `scratch directory`, `incomplete cache entry`,
    /// `corrupt cache entry`, `orphaned artifacts`, `temp file`.
    pub what: &'static str,
    /// The path, or the bake id of a record.
    pub target: String,
}

impl std::fmt::Display for Removed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.what == "stale bake record" {
            write!(f, "{} {} (marked failed)", self.what, self.target)
        } else {
            write!(f, "{} {}", self.what, self.target)
        }
    }
}

fn pid_alive(pid: i64) -> bool {
    pid > 0 && Path::new(&format!("/proc/{pid}")).exists()
}

/// Is this bake record one of a bake running right now on this host?
fn running_here(b: &webake_catalog::Bake, host: &str) -> bool {
    b.status == BakeStatus::Running && b.host == host && pid_alive(b.pid)
}

/// Remove scratch dirs of bakes that are not running, cache staging entries, temp artifact
/// files, and mark stale running bakes failed. Returns what was (or would be) removed.
/// Bakes of any catalog sharing this cache are protected by their leases.
pub fn clean(ctx: &Context<'_>, dry_run: bool) -> Result<Vec<Removed>> {
    let ws = &ctx.workspace;
    let mut done = Vec::new();
    let host = hostname();
    let catalog = ctx.catalog()?;
    let now = jiff::Timestamp::now().as_second();
    if dry_run {
        for b in catalog.list_bakes(10_000)? {
            if b.status == BakeStatus::Running && b.host == host && !pid_alive(b.pid) {
                done.push(Removed {
                    what: "stale bake record",
                    target: b.id.to_string(),
                });
            }
        }
    } else {
        for b in catalog.reap_stale_bakes(&host, &pid_alive, now)? {
            done.push(Removed {
                what: "stale bake record",
                target: b.id.to_string(),
            });
        }
    }
    let leases = webake_build::workspace::live_leases(&ctx.settings.cache_dir, dry_run)?;
    let running: HashSet<String> = leases.iter().map(|l| l.bake_id.clone()).collect();
    let writing: HashSet<String> = leases.iter().map(|l| l.image_id.clone()).collect();
    let owned: HashSet<String> = catalog
        .list_images(None)?
        .into_iter()
        .map(|i| i.id.to_string())
        .collect();
    drop(catalog);

    let mut doomed: Vec<(PathBuf, &'static str)> = Vec::new();
    for e in entries(&ws.scratch_root()) {
        if !running.contains(&name_of(&e)) {
            doomed.push((e, "scratch directory"));
        }
    }
    for dir in [ws.bootstrap_dir(), ws.layers_dir()] {
        for e in entries(&dir) {
            let name = name_of(&e);
            if name.starts_with(".staging-") {
                if !running.iter().any(|id| name.ends_with(id.as_str())) {
                    doomed.push((e, "incomplete cache entry"));
                }
            } else if !name.starts_with('.')
                && !e.join("meta.json").is_file()
                // A fresh base is committed before its initramfs is built; its lock is held
                // until then.
                && !webake_build::workspace::entry_lock_held(
                    &ctx.settings.cache_dir,
                    "bootstrap",
                    &name,
                )
            {
                doomed.push((e, "corrupt cache entry"));
            }
        }
    }
    for e in entries(&ws.images_dir()) {
        let name = name_of(&e);
        if !owned.contains(&name) {
            // An image dir without a catalog record is a partial artifact of a failed bake,
            // unless a running bake is writing it right now.
            if !writing.contains(&name) {
                doomed.push((e, "orphaned artifacts"));
            }
            continue;
        }
        for f in entries(&e) {
            if webake_sys::fsutil::is_temp_sibling(&name_of(&f)) {
                doomed.push((f, "temp file"));
            }
        }
    }
    for (path, what) in doomed {
        if !dry_run {
            let r = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            r.map_err(|e| Error::io(&path, e))?;
        }
        done.push(Removed {
            what,
            target: path.display().to_string(),
        });
    }
    Ok(done)
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn name_of(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// What `clean --aws` may delete: resources tagged with this catalog's bake ids (except bakes
/// running right now, whose publish may be in flight) that no publication keeps.
pub fn aws_sweep_scope(ctx: &Context<'_>) -> Result<webake_aws::SweepScope> {
    let catalog = ctx.catalog()?;
    let host = hostname();
    let bake_ids: Vec<String> = catalog
        .list_bakes(1_000_000)?
        .into_iter()
        .filter(|b| !running_here(b, &host))
        .map(|b| b.id.to_string())
        .collect();
    let mut scope = webake_aws::SweepScope {
        bake_ids: Some(bake_ids),
        ..Default::default()
    };
    for img in catalog.list_images(None)? {
        for p in &img.publications {
            if let Publication::Aws {
                ami_id,
                snapshot_id,
                ..
            } = p
            {
                scope.keep_images.insert(ami_id.clone());
                scope.keep_snapshots.extend(snapshot_id.clone());
            }
        }
    }
    Ok(scope)
}

/// `clean --aws`: the plan for `regions` (nothing deleted yet).
pub fn plan_aws_sweep(ctx: &Context<'_>, regions: &[String]) -> Result<webake_aws::SweepPlan> {
    if regions.is_empty() {
        return Err(Error::Invalid(
            "--aws needs --region (or AWS_REGION)".into(),
        ));
    }
    let scope = aws_sweep_scope(ctx)?;
    let client = crate::aws::client_settings(ctx);
    crate::publish::plan_sweep(ctx, regions, &scope, &client)
}

/// `clean --aws`: delete exactly `plan`; an error names what could not be deleted.
pub fn execute_aws_sweep(
    ctx: &Context<'_>,
    plan: &webake_aws::SweepPlan,
) -> Result<webake_aws::SweepReport> {
    let client = crate::aws::client_settings(ctx);
    let report = crate::publish::execute_sweep(ctx, plan, &client)?;
    if !report.leftovers.is_empty() {
        let list: Vec<String> = report.leftovers.iter().map(ToString::to_string).collect();
        return Err(Error::Failed(format!(
            "the AWS sweep could not delete: {}",
            list.join("; ")
        )));
    }
    Ok(report)
}
