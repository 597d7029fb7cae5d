//! `base: { ami: { id, region } }`: the base root filesystem of a bake comes from an existing
//! AMI. Its root snapshot is downloaded through the EBS direct APIs (no volume, no instance),
//! the ext4 root partition is extracted offline ([`webake_build::extract`]: no mount, no loop
//! device, nothing in the image decides where the host writes) into a bootstrap cache entry,
//! and the bake reads it as a prepared base ([`webake_build::bake::BasePlan::Prepared`]).
//! webake-build never talks to AWS; this module does, before the bake starts.
//!
//! Endpoint: `WEBAKE_AWS_ENDPOINT_URL` (as for `webake publish --to aws`), else the SDK's own
//! `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_EC2` / `AWS_ENDPOINT_URL_EBS`, else AWS. Credentials
//! and profile: the standard chain (`AWS_PROFILE`, environment, web identity, IMDS).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use webake_build::bake::{BakeLog, BasePlan, Plan};
use webake_build::digest::sha256_hex;
use webake_build::workspace::{CacheLock, mkdir_p};
use webake_build::{CacheStatus, Reporter, Workspace};
use webake_spec::{AmiBase, Base, LoadedRecipe};

use crate::settings::Settings;

/// The bootstrap cache key of an AMI base.
pub fn base_key(base: &AmiBase, snapshot_id: &str) -> String {
    sha256_hex(format!("ami\n{}\n{}\n{snapshot_id}\n", base.region, base.id).as_bytes())
}

pub fn client_settings() -> webake_aws::ClientSettings {
    webake_aws::ClientSettings {
        endpoint_url: std::env::var("WEBAKE_AWS_ENDPOINT_URL")
            .ok()
            .filter(|u| !u.is_empty()),
        ..webake_aws::ClientSettings::default()
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// The AMI's root snapshot (`DescribeImages`).
fn resolve(base: &AmiBase) -> anyhow::Result<webake_aws::RootSnapshot> {
    let settings = client_settings();
    runtime()?
        .block_on(async {
            let session = webake_aws::Session::new(&base.region, &settings).await;
            webake_aws::find_root_snapshot(&session.region(&base.region), &base.id).await
        })
        .with_context(|| format!("resolving base AMI {} in {}", base.id, base.region))
}

/// The plan of a recipe whose base is an AMI: the AMI is resolved to its root snapshot (one
/// `DescribeImages`; nothing is downloaded) and the base is the cache entry keyed by
/// (region, AMI, snapshot). With `offline`, the AMI is not looked up (for `validate`): the
/// key is a placeholder and the plan is only good for checking the steps.
pub fn plan(recipe: &LoadedRecipe, base: &AmiBase, ws: Option<&Workspace>) -> anyhow::Result<Plan> {
    let (key, snapshot) = match ws {
        Some(_) => {
            let root = resolve(base)?;
            if let Some(arch) = root.architecture.as_deref().filter(|a| *a != "x86_64") {
                bail!(
                    "base AMI {} is {arch}; webake assembles x86-64 UEFI disks only",
                    base.id
                );
            }
            (base_key(base, &root.snapshot_id), root.snapshot_id)
        }
        None => (base_key(base, "unresolved"), "unresolved".to_string()),
    };
    let rootfs = ws
        .map(|w| w.bootstrap_dir().join(&key).join("rootfs"))
        .unwrap_or_default();
    let prepared = BasePlan::Prepared {
        key,
        rootfs,
        description: format!(
            "AMI {} ({}, root snapshot {snapshot})",
            base.id, base.region
        ),
    };
    webake_build::bake::plan_with_base(recipe, prepared)
        .with_context(|| format!("planning {}", recipe.path.display()))
}

/// For an AMI base: make sure its cache entry exists (download and extract it when missing,
/// or again with `refresh`). Does nothing for other bases.
pub fn ensure(
    recipe: &LoadedRecipe,
    plan: &Plan,
    settings: &Settings,
    bake_id: &str,
    refresh: bool,
    reporter: &dyn Reporter,
    log: &BakeLog,
) -> anyhow::Result<()> {
    let (Base::Ami(base), BasePlan::Prepared { key, .. }) = (&recipe.recipe.base, &plan.base)
    else {
        return Ok(());
    };
    let ws = Workspace::new(&settings.data_dir, &settings.cache_dir);
    ws.ensure()?;
    let _lock = CacheLock::shared(&ws.cache_dir)?;
    let dest = ws.bootstrap_dir().join(key);
    if !refresh && webake_build::bootstrap::cached_rootfs(&ws.bootstrap_dir(), key).is_some() {
        return Ok(());
    }
    let step = "base";
    let t = Instant::now();
    let root = resolve(base)?;
    if base_key(base, &root.snapshot_id) != *key {
        bail!(
            "the root snapshot of {} changed since planning (now {}); bake again",
            base.id,
            root.snapshot_id
        );
    }
    reporter.step_started(
        step,
        &format!(
            "download AMI {} ({}) root snapshot {} through the EBS direct APIs",
            base.id, base.region, root.snapshot_id
        ),
    );
    let staging = ws
        .bootstrap_dir()
        .join(webake_build::bootstrap::staging_name(key, bake_id));
    let _cleanup = RemoveOnDrop(staging.clone());
    mkdir_p(&staging)?;
    let disk = staging.join("disk.raw");
    let summary = download(base, &root.snapshot_id, &disk)?;
    let msg = format!(
        "downloaded {} block(s) of a {} GiB volume in {:.1}s",
        summary.blocks_written,
        summary.volume_size_bytes >> 30,
        t.elapsed().as_secs_f64()
    );
    reporter.output(step, &msg);
    log.line(step, &msg);
    let rootfs = staging.join("rootfs");
    let fixed = extract_rootfs(&disk, &rootfs)
        .with_context(|| format!("extracting the root filesystem of {}", base.id))?;
    std::fs::remove_file(&disk).with_context(|| format!("removing {}", disk.display()))?;
    let msg = format!("extracted the root filesystem: {fixed}");
    reporter.output(step, &msg);
    log.line(step, &msg);
    let meta = serde_json::json!({
        "key": key, "ami": base.id, "region": base.region, "snapshot_id": root.snapshot_id,
        "bake_id": bake_id, "created": jiff::Timestamp::now().as_second().to_string(),
    });
    std::fs::write(
        staging.join("meta.json"),
        serde_json::to_string_pretty(&meta)?,
    )
    .context("writing meta.json")?;
    if refresh {
        webake_sys::fsutil::remove_dir_all_if_exists(&dest)
            .with_context(|| format!("removing {}", dest.display()))?;
    }
    webake_build::bootstrap::commit_entry(&staging, &dest)?;
    reporter.step_finished(step, t.elapsed(), CacheStatus::Miss);
    Ok(())
}

fn download(
    base: &AmiBase,
    snapshot_id: &str,
    disk: &Path,
) -> anyhow::Result<webake_aws::DownloadSummary> {
    let settings = client_settings();
    let cancel = webake_sys::CancelToken::new();
    runtime()?.block_on(async {
        let session = webake_aws::Session::new(&base.region, &settings).await;
        let clients = session.region(&base.region);
        let work = webake_aws::download_snapshot_to_file(
            &clients,
            snapshot_id,
            disk,
            webake_aws::DEFAULT_CONCURRENCY,
            &webake_aws::NoReporter,
        );
        tokio::select! {
            r = work => r.with_context(|| format!("downloading snapshot {snapshot_id} of {}", base.id)),
            _ = async { while !cancel.is_cancelled() { tokio::time::sleep(Duration::from_millis(200)).await } } => {
                Err(anyhow::Error::new(webake_build::BuildError::Cancelled))
            }
        }
    })
}

/// Byte offset of the root filesystem in a raw disk: the x86-64 root partition, else the
/// largest Linux partition (GPT or MBR), else the whole disk (no partition table).
pub fn root_offset(disk: &Path) -> anyhow::Result<u64> {
    Ok(webake_build::extract::root_offset(disk)?)
}

/// Extract the ext2/3/4 root filesystem of raw disk `disk` into `dest` (absent or empty),
/// offline, with [`webake_build::extract::extract`]: debugfs only reads the image, the tree is
/// built through path-safe calls, and crafted content (duplicate names, loops, names with
/// `/`) is refused. Returns a summary.
pub fn extract_rootfs(disk: &Path, dest: &Path) -> anyhow::Result<String> {
    let offset = root_offset(disk)?;
    let report = webake_build::extract::extract(disk, offset, dest)?;
    let tree = webake_sys::Tree::open(dest)?;
    for marker in ["etc", "usr"] {
        if !tree.is_dir(Path::new(marker)) {
            bail!(
                "no /{marker} in the filesystem at offset {offset} of {} (not a root filesystem?)",
                disk.display()
            );
        }
    }
    Ok(report.to_string())
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = webake_sys::fsutil::remove_dir_all_if_exists(&self.0);
    }
}
