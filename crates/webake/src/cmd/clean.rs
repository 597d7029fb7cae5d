//! `webake clean`: remove what a crash can still leave behind, and say what was removed.

use std::path::Path;
use std::process::ExitCode;

use clap::Args;
use webake_build::Workspace;
use webake_catalog::Catalog;

use crate::exit::{INVALID_INPUT, coded};
use crate::settings::Settings;

#[derive(Debug, Args)]
pub struct CleanArgs {
    /// Only print what would be removed
    #[arg(long)]
    pub dry_run: bool,
    /// Also delete the AMIs and snapshots of this catalog's bakes (tag webake:bake-id) that
    /// no publication in the catalog accounts for, whatever the bake's status; prints the
    /// plan first
    #[arg(long)]
    pub aws: bool,
    /// Regions to sweep with --aws (repeat or comma-separate)
    #[arg(
        long = "region",
        value_name = "REGION",
        value_delimiter = ',',
        env = "AWS_REGION"
    )]
    pub regions: Vec<String>,
}

fn pid_alive(pid: i64) -> bool {
    pid > 0 && Path::new(&format!("/proc/{pid}")).exists()
}

impl CleanArgs {
    pub fn run(self, settings: &Settings) -> anyhow::Result<ExitCode> {
        let report = clean(settings, self.dry_run)?;
        if report.is_empty() {
            println!("nothing to clean");
        }
        for line in report {
            println!(
                "{}{line}",
                if self.dry_run {
                    "would remove: "
                } else {
                    "removed: "
                }
            );
        }
        if self.aws {
            sweep_aws(settings, &self.regions, self.dry_run)?;
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// `clean --aws`: plan (printed), then, unless `dry_run`, delete exactly that plan.
fn sweep_aws(settings: &Settings, regions: &[String], dry_run: bool) -> anyhow::Result<()> {
    if regions.is_empty() {
        return Err(coded(
            INVALID_INPUT,
            anyhow::anyhow!("--aws needs --region (or AWS_REGION)"),
        ));
    }
    let catalog = Catalog::open(&settings.catalog)?;
    let host = crate::cmd::bake::hostname();
    // Every bake this catalog knows, except those running right now (their publish may be
    // in flight); resources of other catalogs' bakes are never touched.
    let bake_ids: Vec<String> = catalog
        .list_bakes(1_000_000)?
        .into_iter()
        .filter(|b| {
            !(b.status == webake_catalog::BakeStatus::Running && b.host == host && pid_alive(b.pid))
        })
        .map(|b| b.id)
        .collect();
    let mut scope = webake_aws::SweepScope {
        bake_ids: Some(bake_ids),
        ..Default::default()
    };
    for img in catalog.list_images(None)? {
        for p in img.publications.iter().filter(|p| p.target == "aws") {
            scope.keep_images.extend(p.ami_id.clone());
            scope.keep_snapshots.extend(p.snapshot_id.clone());
        }
    }
    let client = webake_aws::ClientSettings::default();
    let plan = crate::cmd::publish_aws::plan_sweep_aws(regions, &scope, &client)?;
    if plan.is_empty() {
        println!("AWS: nothing to sweep in {}", regions.join(", "));
        return Ok(());
    }
    for item in &plan.items {
        println!(
            "{}{item}",
            if dry_run {
                "would delete: "
            } else {
                "will delete: "
            }
        );
    }
    if dry_run {
        return Ok(());
    }
    let report = crate::cmd::publish_aws::execute_sweep_aws(&plan, &client, settings.quiet)?;
    for r in &report.removed {
        println!("deleted: {r}");
    }
    if !report.leftovers.is_empty() {
        let list: Vec<String> = report.leftovers.iter().map(ToString::to_string).collect();
        return Err(anyhow::anyhow!(
            "the AWS sweep could not delete: {}",
            list.join("; ")
        ));
    }
    Ok(())
}

/// Remove scratch dirs of bakes that are not running, cache staging entries, temp artifact
/// files, and mark stale running bakes failed. Returns what was (or would be) removed.
pub fn clean(settings: &Settings, dry_run: bool) -> anyhow::Result<Vec<String>> {
    let ws = Workspace::new(&settings.data_dir, &settings.cache_dir);
    let mut done = Vec::new();
    let host = crate::cmd::bake::hostname();
    let catalog = Catalog::open(&settings.catalog)?;
    let now = jiff::Timestamp::now().as_second();
    // Bakes whose process is gone.
    if dry_run {
        for b in catalog.list_bakes(10_000)? {
            if b.status == webake_catalog::BakeStatus::Running
                && b.host == host
                && !pid_alive(b.pid)
            {
                done.push(format!("stale bake record {} (marked failed)", b.id));
            }
        }
    } else {
        for b in catalog.reap_stale_bakes(&host, &pid_alive, now)? {
            done.push(format!("stale bake record {} (marked failed)", b.id));
        }
    }
    // Running bakes, of any catalog sharing this cache: their leases are locked.
    let leases = webake_build::workspace::live_leases(&settings.cache_dir, dry_run)?;
    let running: std::collections::HashSet<String> =
        leases.iter().map(|l| l.bake_id.clone()).collect();
    let writing: std::collections::HashSet<String> =
        leases.iter().map(|l| l.image_id.clone()).collect();
    let mut remove = |p: &Path, what: &str| -> anyhow::Result<()> {
        if !dry_run {
            if p.is_dir() {
                std::fs::remove_dir_all(p)?;
            } else {
                std::fs::remove_file(p)?;
            }
        }
        done.push(format!("{what} {}", p.display()));
        Ok(())
    };
    // Per-bake scratch directories.
    if let Ok(rd) = std::fs::read_dir(ws.scratch_root()) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !running.contains(&name) {
                remove(&e.path(), "scratch directory")?;
            }
        }
    }
    // Half-written cache entries (staging dirs of bakes that are not running).
    for dir in [ws.bootstrap_dir(), ws.layers_dir()] {
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(".staging-")
                    && !running.iter().any(|id| name.ends_with(id.as_str()))
                {
                    remove(&e.path(), "incomplete cache entry")?;
                } else if !name.starts_with('.') && !e.path().join("meta.json").is_file() {
                    remove(&e.path(), "corrupt cache entry")?;
                }
            }
        }
    }
    // Temp artifact files and image directories no catalog image owns.
    let owned: std::collections::HashSet<String> = catalog
        .list_images(None)?
        .into_iter()
        .map(|i| i.id)
        .collect();
    if let Ok(rd) = std::fs::read_dir(ws.images_dir()) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !owned.contains(&name) {
                // An image dir without a catalog record is a partial artifact of a failed bake,
                // unless a running bake is writing it right now.
                if !writing.contains(&name) {
                    remove(&e.path(), "orphaned artifacts")?;
                }
                continue;
            }
            if let Ok(files) = std::fs::read_dir(e.path()) {
                for f in files.flatten() {
                    if webake_sys::fsutil::is_temp_sibling(&f.file_name().to_string_lossy()) {
                        remove(&f.path(), "temp file")?;
                    }
                }
            }
        }
    }
    Ok(done)
}
