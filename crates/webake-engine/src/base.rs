//! Bases the build does not bootstrap itself: `base: {ami: ...}` (downloaded through the EBS
//! direct APIs) and `base: {image: ...}` (a catalog image's disk), both extracted offline and
//! path-safely into the bootstrap cache. webake-build never talks to clouds or the catalog: it
//! reads the prepared tree as [`BasePlan::Prepared`].

use std::path::Path;
use std::time::Instant;

use webake_build::bake::{BakeLog, BasePlan, Plan};
use webake_build::digest::sha256_hex;
use webake_build::workspace::{CacheLock, mkdir_p};
use webake_catalog::{Image, ParentRecord};
use webake_spec::{AmiBase, Base, LoadedRecipe};

use crate::events::{CacheStatus, Event};
use crate::{Context, Error, Result, ResultExt};

/// The bootstrap cache key of an AMI base.
pub fn ami_base_key(base: &AmiBase, snapshot_id: &str) -> String {
    sha256_hex(format!("ami\n{}\n{}\n{snapshot_id}\n", base.region, base.id).as_bytes())
}

/// The AMI's root snapshot (`DescribeImages`).
fn resolve(ctx: &Context<'_>, base: &AmiBase) -> Result<webake_aws::RootSnapshot> {
    let settings = crate::aws::client_settings(ctx);
    crate::aws::block_on(ctx, async {
        let session = webake_aws::Session::new(&base.region, &settings).await;
        webake_aws::find_root_snapshot(&session.region(&base.region), &base.id).await
    })
    .with_context(|| format!("resolving base AMI {} in {}", base.id, base.region))
}

/// The base of a recipe whose base is an AMI: the AMI is resolved to its root snapshot (one
/// `DescribeImages`; nothing is downloaded) and the base is the cache entry keyed by (region,
/// AMI, snapshot). `ctx == None` (offline, for `validate`): a placeholder key, good only for
/// checking the steps.
pub fn plan_ami(ctx: Option<&Context<'_>>, base: &AmiBase) -> Result<BasePlan> {
    let (key, snapshot, rootfs) = match ctx {
        Some(ctx) => {
            let root = resolve(ctx, base)?;
            if let Some(arch) = root.architecture.as_deref().filter(|a| *a != "x86_64") {
                return Err(Error::Invalid(format!(
                    "base AMI {} is {arch}; webake assembles x86-64 disks only",
                    base.id
                )));
            }
            let key = ami_base_key(base, &root.snapshot_id);
            let rootfs = ctx.workspace.bootstrap_dir().join(&key).join("rootfs");
            (key, root.snapshot_id, rootfs)
        }
        None => (
            ami_base_key(base, "unresolved"),
            "unresolved".to_string(),
            Default::default(),
        ),
    };
    Ok(BasePlan::Prepared {
        key,
        rootfs,
        description: format!(
            "AMI {} ({}, root snapshot {snapshot})",
            base.id, base.region
        ),
    })
}

/// For an AMI base: make sure its cache entry exists (download and extract it when missing,
/// or again with `refresh`). Does nothing for other bases.
pub fn ensure(
    ctx: &Context<'_>,
    recipe: &LoadedRecipe,
    plan: &Plan,
    bake_id: &str,
    refresh: bool,
    log: &BakeLog,
) -> Result<()> {
    let key = match (&recipe.recipe.base, &plan.base) {
        (Base::Ami(base), BasePlan::Prepared { key, .. }) => (base, key),
        (Base::Image(query), BasePlan::Prepared { key, .. }) => {
            return ensure_image(ctx, query, key, bake_id, refresh, log);
        }
        _ => return Ok(()),
    };
    let (base, key) = key;
    let source_date = plan.source_date;
    let ws = &ctx.workspace;
    ws.ensure()?;
    let _lock = CacheLock::shared(&ws.cache_dir)?;
    let dest = ws.bootstrap_dir().join(key);
    if !refresh && webake_build::bootstrap::cached_rootfs(&ws.bootstrap_dir(), key).is_some() {
        return Ok(());
    }
    let step = "base";
    let t = Instant::now();
    let root = resolve(ctx, base)?;
    if ami_base_key(base, &root.snapshot_id) != *key {
        return Err(Error::Failed(format!(
            "the root snapshot of {} changed since planning (now {}); bake again",
            base.id, root.snapshot_id
        )));
    }
    let detail = format!(
        "download AMI {} ({}) root snapshot {} through the EBS direct APIs",
        base.id, base.region, root.snapshot_id
    );
    ctx.reporter.event(&Event::StepStarted {
        step,
        detail: &detail,
    });
    let staging_path = ws
        .bootstrap_dir()
        .join(webake_build::bootstrap::staging_name(key, bake_id));
    let staging = webake_sys::fsutil::RemoveOnDrop::new(&staging_path);
    mkdir_p(&staging_path)?;
    let say = |line: &str| {
        ctx.reporter.event(&Event::Output { step, line });
        log.line(step, line);
    };
    let disk = staging_path.join("disk.raw");
    let summary = download(ctx, base, &root.snapshot_id, &disk)?;
    say(&format!(
        "downloaded {} block(s) of a {} GiB volume in {:.1}s",
        summary.blocks_written,
        summary.volume_size_bytes >> 30,
        t.elapsed().as_secs_f64()
    ));
    let rootfs = staging_path.join("rootfs");
    let extracted = extract_root(&disk, &rootfs)
        .with_context(|| format!("extracting the root filesystem of {}", base.id))?;
    std::fs::remove_file(&disk).map_err(|e| Error::io(&disk, e))?;
    say(&format!("extracted the root filesystem: {extracted}"));
    let meta = serde_json::json!({
        "key": key, "ami": base.id, "region": base.region, "snapshot_id": root.snapshot_id,
        "bake_id": bake_id, "created": jiff::Timestamp::now().as_second().to_string(),
        "source_date": source_date,
    });
    let meta_path = staging_path.join("meta.json");
    std::fs::write(&meta_path, meta.to_string()).map_err(|e| Error::io(&meta_path, e))?;
    if refresh {
        webake_sys::fsutil::remove_dir_all_if_exists(&dest).map_err(|e| Error::io(&dest, e))?;
    }
    webake_build::bootstrap::commit_entry(&staging_path, &dest)?;
    let _ = staging.keep();
    ctx.reporter.event(&Event::StepFinished {
        step,
        elapsed: t.elapsed(),
        cache: CacheStatus::Miss,
    });
    Ok(())
}

fn download(
    ctx: &Context<'_>,
    base: &AmiBase,
    snapshot_id: &str,
    disk: &Path,
) -> Result<webake_aws::DownloadSummary> {
    let settings = crate::aws::client_settings(ctx);
    crate::aws::block_on(ctx, async {
        let session = webake_aws::Session::new(&base.region, &settings).await;
        let clients = session.region(&base.region);
        webake_aws::download_snapshot_to_file(
            &clients,
            snapshot_id,
            disk,
            webake_aws::DEFAULT_CONCURRENCY,
            &webake_aws::NoReporter,
        )
        .await
    })
    .with_context(|| format!("downloading snapshot {snapshot_id} of {}", base.id))
}

/// Extract the root filesystem of raw disk `disk` into `dest` (absent or empty), offline and
/// path-safely ([`webake_build::extract`]); checks it looks like a root filesystem.
pub fn extract_root(disk: &Path, dest: &Path) -> Result<String> {
    let offset = webake_build::extract::root_offset(disk)?;
    let report = webake_build::extract::extract(disk, offset, dest)?;
    let tree = webake_sys::Tree::open(dest)?;
    for marker in ["etc", "usr"] {
        if !tree.is_dir(Path::new(marker)) {
            return Err(Error::Invalid(format!(
                "no /{marker} in the filesystem at offset {offset} of {} (not a root filesystem?)",
                disk.display()
            )));
        }
    }
    Ok(report.to_string())
}

/// The bootstrap cache key of a catalog image base: the image and the digest of its disk.
pub fn image_base_key(img: &Image) -> Result<String> {
    let disk = img
        .disk()
        .ok_or_else(|| Error::Invalid(format!("base image {} has no artifacts", img.id)))?;
    Ok(sha256_hex(
        format!("image\n{}\n{}\n", img.id, disk.sha256).as_bytes(),
    ))
}

/// The catalog image a `base: {image: QUERY}` names (the newest of a family for
/// `family:NAME`), or invalid input naming the query.
pub fn parent_image(ctx: &Context<'_>, query: &str) -> Result<Image> {
    if !ctx.catalog_exists() {
        return Err(Error::Invalid(format!(
            "base image {query}: there is no catalog at {} yet (bake the parent first)",
            ctx.settings.catalog.display()
        )));
    }
    ctx.catalog()?
        .find_image(query)
        .map_err(|e| Error::Invalid(format!("base image {query}: {e}")))
}

/// The base of a recipe whose base is a catalog image: the cache entry of that
/// image's root tree. `ctx == None` (offline, for `validate`): a placeholder key.
pub fn plan_image(ctx: Option<&Context<'_>>, query: &str) -> Result<BasePlan> {
    let (key, rootfs, description) = match ctx {
        Some(ctx) => {
            let img = parent_image(ctx, query)?;
            let key = image_base_key(&img)?;
            let rootfs = ctx.workspace.bootstrap_dir().join(&key).join("rootfs");
            let what = format!(
                "catalog image {} ({} {}, family {})",
                img.id, img.name, img.version, img.family
            );
            (key, rootfs, what)
        }
        None => (
            sha256_hex(format!("image\n{query}\nunresolved\n").as_bytes()),
            Default::default(),
            format!("catalog image {query}"),
        ),
    };
    Ok(BasePlan::Prepared {
        key,
        rootfs,
        description,
    })
}

/// For a catalog image base: extract the image's root tree into the cache when missing.
fn ensure_image(
    ctx: &Context<'_>,
    query: &str,
    key: &str,
    bake_id: &str,
    refresh: bool,
    log: &BakeLog,
) -> Result<()> {
    let ws = &ctx.workspace;
    ws.ensure()?;
    let _lock = CacheLock::shared(&ws.cache_dir)?;
    let dest = ws.bootstrap_dir().join(key);
    if !refresh && webake_build::bootstrap::cached_rootfs(&ws.bootstrap_dir(), key).is_some() {
        return Ok(());
    }
    let img = parent_image(ctx, query)?;
    if image_base_key(&img)? != key {
        return Err(Error::Failed(format!(
            "base image {query} is now {} (a newer image or another disk) since planning; bake again",
            img.id
        )));
    }
    let step = "base";
    let t = Instant::now();
    let disk = crate::boottest::disk_of(&img)?;
    let detail = format!(
        "extract catalog image {} ({} {}) from {}",
        img.id,
        img.name,
        img.version,
        disk.display()
    );
    ctx.reporter.event(&Event::StepStarted {
        step,
        detail: &detail,
    });
    let staging_path = ws
        .bootstrap_dir()
        .join(webake_build::bootstrap::staging_name(key, bake_id));
    let staging = webake_sys::fsutil::RemoveOnDrop::new(&staging_path);
    mkdir_p(&staging_path)?;
    let raw = staging_path.join("disk.raw");
    webake_sys::process::run(
        &webake_sys::process::Cmd::new("qemu-img")
            .args(["convert", "-q", "-O", "raw"])
            .arg(disk)
            .arg(&raw),
        &ctx.cancel,
        &mut |l| log.line(step, l),
    )?;
    let rootfs = staging_path.join("rootfs");
    let extracted = extract_root(&raw, &rootfs)
        .with_context(|| format!("extracting the root filesystem of image {}", img.id))?;
    std::fs::remove_file(&raw).map_err(|e| Error::io(&raw, e))?;
    let line = format!("extracted the root filesystem: {extracted}");
    ctx.reporter.event(&Event::Output { step, line: &line });
    log.line(step, &line);
    let parent = parent_record(&img)?;
    let meta = serde_json::json!({
        "key": key, "image": parent, "bake_id": bake_id,
        "created": jiff::Timestamp::now().as_second().to_string(),
    });
    let meta_path = staging_path.join("meta.json");
    std::fs::write(&meta_path, meta.to_string()).map_err(|e| Error::io(&meta_path, e))?;
    if refresh {
        webake_sys::fsutil::remove_dir_all_if_exists(&dest).map_err(|e| Error::io(&dest, e))?;
    }
    webake_build::bootstrap::commit_entry(&staging_path, &dest)?;
    let _ = staging.keep();
    ctx.reporter.event(&Event::StepFinished {
        step,
        elapsed: t.elapsed(),
        cache: CacheStatus::Miss,
    });
    Ok(())
}

fn parent_record(img: &Image) -> Result<ParentRecord> {
    Ok(ParentRecord {
        id: img.id.to_string(),
        name: img.name.clone(),
        family: img.family.clone(),
        version: img.version.clone(),
        inputs_digest: img.inputs_digest.clone(),
        disk_sha256: img.disk().map(|a| a.sha256.clone()).unwrap_or_default(),
    })
}

/// The parent a derived image is built on, as its base cache entry recorded it.
pub fn parent_of(ctx: &Context<'_>, recipe: &LoadedRecipe, plan: &Plan) -> Option<ParentRecord> {
    let (Base::Image(_), BasePlan::Prepared { key, .. }) = (&recipe.recipe.base, &plan.base) else {
        return None;
    };
    let meta = ctx.workspace.bootstrap_dir().join(key).join("meta.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(meta).ok()?).ok()?;
    serde_json::from_value(v.get("image")?.clone()).ok()
}
