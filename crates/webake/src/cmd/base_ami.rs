//! `base: { ami: { id, region } }`: the base root filesystem of a bake comes from an existing
//! AMI. Its root snapshot is downloaded through the EBS direct APIs (no volume, no instance),
//! the ext4 root partition is extracted offline (`debugfs rdump`: no mount, no loop device)
//! into a bootstrap cache entry, and the bake reads it as a prepared base
//! ([`webake_build::bake::BasePlan::Prepared`]). webake-build never talks to AWS; this module
//! does, before the bake starts.
//!
//! Endpoint: `WEBAKE_AWS_ENDPOINT_URL` (as for `webake publish --to aws`), else the SDK's own
//! `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_EC2` / `AWS_ENDPOINT_URL_EBS`, else AWS. Credentials
//! and profile: the standard chain (`AWS_PROFILE`, environment, web identity, IMDS).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use webake_build::bake::{BakeLog, BasePlan, Plan};
use webake_build::digest::sha256_hex;
use webake_build::workspace::{CacheLock, mkdir_p};
use webake_build::{CacheStatus, Reporter, Workspace};
use webake_spec::{AmiBase, Base, LoadedRecipe};
use webake_sys::process::{Cmd, capture};

use crate::settings::Settings;

/// GPT type of the x86-64 root partition (what webake assembles).
const ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
/// GPT "Linux filesystem data" (most other AMIs).
const LINUX_DATA: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

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
    let msg = format!("extracted the root filesystem; {fixed}");
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
    let Ok(out) = capture(&Cmd::new("sfdisk").arg("--json").arg(disk)) else {
        return Ok(0); // no partition table: a filesystem on the whole disk
    };
    let v: serde_json::Value = serde_json::from_str(&out).context("sfdisk --json output")?;
    let parts = v
        .pointer("/partitiontable/partitions")
        .and_then(|p| p.as_array())
        .cloned()
        .unwrap_or_default();
    let ty = |p: &serde_json::Value| {
        p.get("type")
            .and_then(|t| t.as_str())
            .unwrap_or_default()
            .to_ascii_uppercase()
    };
    let num = |p: &serde_json::Value, k: &str| p.get(k).and_then(|s| s.as_u64()).unwrap_or(0);
    let chosen = parts.iter().find(|p| ty(p) == ROOT_X86_64).or_else(|| {
        parts
            .iter()
            .filter(|p| ty(p) == LINUX_DATA || ty(p) == "83")
            .max_by_key(|p| num(p, "size"))
    });
    let sector = v
        .pointer("/partitiontable/sectorsize")
        .and_then(|s| s.as_u64())
        .unwrap_or(512);
    match chosen {
        Some(p) => Ok(num(p, "start") * sector),
        None => bail!(
            "{}: no Linux root partition in the partition table",
            disk.display()
        ),
    }
}

/// Extract the ext2/3/4 root filesystem of raw disk `disk` into `dest` (created), offline.
///
/// `debugfs rdump` copies directories, regular files and symlinks with owner, mode and times,
/// but (run as root) its chown after chmod drops setuid/setgid bits, and it skips device
/// nodes, FIFOs and sockets. A second pass lists every directory with `debugfs ls -p` and
/// restores the exact mode of entries with special bits and recreates device nodes and FIFOs
/// (`stat` gives their numbers). Not carried over: extended attributes (file capabilities,
/// SELinux labels) and hard links (each link becomes a copy). Returns a summary.
pub fn extract_rootfs(disk: &Path, dest: &Path) -> anyhow::Result<String> {
    let offset = root_offset(disk)?;
    let fs = format!("{}?offset={offset}", disk.display());
    mkdir_p(dest)?;
    let out = capture(
        &Cmd::new("debugfs")
            .arg("-R")
            .arg(format!("rdump / {}", dest.display()))
            .arg(&fs),
    )
    .context("debugfs rdump")?;
    for marker in ["etc", "usr"] {
        if !dest.join(marker).is_dir() {
            bail!(
                "debugfs found no /{marker} in the filesystem at offset {offset} of {} (not an ext2/3/4 root filesystem?): {}",
                disk.display(),
                out.trim()
            );
        }
    }
    let entries = list_tree(&fs)?;
    let mut modes = 0;
    let mut nodes = 0;
    let mut specials: Vec<(String, u32, u32, u32)> = Vec::new();
    for (path, e) in &entries {
        let kind = e.mode & 0o170000;
        match kind {
            0o100000 | 0o040000 if e.mode & 0o7000 != 0 => {
                set_mode(&dest.join(path.trim_start_matches('/')), e.mode & 0o7777)?;
                modes += 1;
            }
            0o020000 | 0o060000 | 0o010000 => specials.push((path.clone(), e.mode, e.uid, e.gid)),
            _ => {}
        }
    }
    if !specials.is_empty() {
        let numbers = device_numbers(&fs, specials.iter().map(|s| s.0.as_str()))?;
        for (path, mode, uid, gid) in &specials {
            let target = dest.join(path.trim_start_matches('/'));
            let (major, minor) = numbers.get(path).copied().unwrap_or((0, 0));
            mknod(&target, *mode, major, minor, *uid, *gid)?;
            nodes += 1;
        }
    }
    Ok(format!(
        "{} entries, special mode bits restored on {modes}, {nodes} device node(s)/FIFO(s) recreated",
        entries.len()
    ))
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    mode: u32,
    uid: u32,
    gid: u32,
}

/// Every entry of the filesystem (path -> mode, owner), listed breadth-first with
/// `ls -p <inode>` (one debugfs run per directory level; names never pass through a shell).
fn list_tree(fs: &str) -> anyhow::Result<BTreeMap<String, Entry>> {
    let mut all = BTreeMap::new();
    let mut level: Vec<(u64, String)> = vec![(2, String::new())];
    let tmp = tempfile::NamedTempFile::new().context("temp file for debugfs commands")?;
    while !level.is_empty() {
        let cmds: String = level
            .iter()
            .map(|(ino, _)| format!("ls -p <{ino}>\n"))
            .collect();
        std::fs::write(tmp.path(), cmds).context("writing debugfs commands")?;
        let out = capture(&Cmd::new("debugfs").arg("-f").arg(tmp.path()).arg(fs))
            .context("debugfs ls -p")?;
        let by_ino: BTreeMap<u64, &str> = level.iter().map(|(i, p)| (*i, p.as_str())).collect();
        let mut next = Vec::new();
        let mut current: Option<&str> = None;
        for line in out.lines() {
            if let Some(rest) = line.strip_prefix("debugfs: ls -p <") {
                current = rest
                    .trim_end_matches('>')
                    .parse::<u64>()
                    .ok()
                    .and_then(|i| by_ino.get(&i).copied());
                continue;
            }
            let Some(dir) = current else { continue };
            // /INODE/MODE/UID/GID/NAME/SIZE/
            let f: Vec<&str> = line.split('/').collect();
            if f.len() != 8 || !f[0].is_empty() {
                continue;
            }
            let name = f[5];
            if name.is_empty() || name == "." || name == ".." {
                continue;
            }
            let (Ok(ino), Ok(mode), Ok(uid), Ok(gid)) = (
                f[1].parse::<u64>(),
                u32::from_str_radix(f[2], 8),
                f[3].parse::<u32>(),
                f[4].parse::<u32>(),
            ) else {
                continue;
            };
            let path = format!("{dir}/{name}");
            if mode & 0o170000 == 0o040000 {
                next.push((ino, path.clone()));
            }
            all.insert(path, Entry { mode, uid, gid });
        }
        level = next;
    }
    Ok(all)
}

/// (major, minor) of device nodes, from `debugfs stat`.
fn device_numbers<'a>(
    fs: &str,
    paths: impl Iterator<Item = &'a str>,
) -> anyhow::Result<BTreeMap<String, (u32, u32)>> {
    let paths: Vec<&str> = paths.filter(|p| !p.contains(['"', ' ', '\n'])).collect();
    let tmp = tempfile::NamedTempFile::new().context("temp file for debugfs commands")?;
    let cmds: String = paths.iter().map(|p| format!("stat \"{p}\"\n")).collect();
    std::fs::write(tmp.path(), cmds).context("writing debugfs commands")?;
    let out =
        capture(&Cmd::new("debugfs").arg("-f").arg(tmp.path()).arg(fs)).context("debugfs stat")?;
    let mut numbers = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("debugfs: stat ") {
            current = Some(rest.trim_matches('"').to_string());
        } else if let (Some(p), Some(rest)) = (
            &current,
            line.trim().strip_prefix("Device major/minor number: "),
        ) {
            // "01:03 (hex 01:03)"
            if let Some((a, b)) = rest
                .split_whitespace()
                .next()
                .and_then(|n| n.split_once(':'))
                && let (Ok(a), Ok(b)) = (a.parse(), b.parse())
            {
                numbers.insert(p.clone(), (a, b));
            }
        }
    }
    Ok(numbers)
}

fn set_mode(p: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    // Never through a symlink: rdump wrote a plain file or directory here.
    let md = std::fs::symlink_metadata(p).with_context(|| format!("{}", p.display()))?;
    if md.file_type().is_symlink() {
        return Ok(());
    }
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {:o} {}", mode, p.display()))
}

fn mknod(p: &Path, mode: u32, major: u32, minor: u32, uid: u32, gid: u32) -> anyhow::Result<()> {
    let kind = match mode & 0o170000 {
        0o020000 => "c",
        0o060000 => "b",
        _ => "p",
    };
    let _ = std::fs::remove_file(p);
    let mut cmd = Cmd::new("mknod")
        .arg("-m")
        .arg(format!("{:o}", mode & 0o7777))
        .arg(p)
        .arg(kind);
    if kind != "p" {
        cmd = cmd.arg(major.to_string()).arg(minor.to_string());
    }
    capture(&cmd).with_context(|| format!("mknod {}", p.display()))?;
    std::os::unix::fs::lchown(p, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", p.display()))
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = webake_sys::fsutil::remove_dir_all_if_exists(&self.0);
    }
}
