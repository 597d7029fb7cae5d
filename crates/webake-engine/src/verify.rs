//! `webake verify IMAGE`: bake the image again from its recorded inputs, in a scratch
//! workspace, and compare the raw disks byte for byte.
//!
//! The recorded inputs are the recipe (its digest must match), the source date, the base's
//! upstream generation (a moving mirror must still serve it) and the version. The rebake
//! starts from empty caches unless asked to reuse them. On a difference, both root trees are
//! extracted (offline, [`webake_build::extract`]) and compared file by file; diffoscope, when
//! installed, shows what differs inside the first few files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use webake_catalog::Image;
use webake_spec::LoadedRecipe;

use crate::bake::{BakeOptions, bake};
use crate::{Context, Error, Result, ResultExt};

/// Options of a verification.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// The disk to check instead of the image's own raw artifact (e.g. an AMI's root snapshot
    /// downloaded with coldsnap).
    pub artifact: Option<PathBuf>,
    /// Rebake with the bootstrap and layer cache instead of empty ones (checks the
    /// assembly, not the steps).
    pub reuse_cache: bool,
    /// Keep the scratch workspace (the rebake, the extracted trees).
    pub keep: bool,
}

/// What a verification found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub image: String,
    /// The disk compared: the image's raw artifact or `--artifact`.
    pub reference: PathBuf,
    pub reference_sha256: String,
    /// The raw digest the catalog recorded when the image was baked.
    pub recorded_sha256: String,
    pub rebaked_sha256: String,
    pub identical: bool,
    pub inputs_digest: String,
    pub source_date: i64,
    /// Whether the rebake started from empty caches.
    pub from_empty_caches: bool,
    pub seconds: f64,
    /// Files that differ between the reference's root tree and the rebake's (empty when
    /// identical, or when only filesystem metadata differs).
    pub differences: Vec<Difference>,
    /// The first byte offset where the disks differ, and in which partition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_difference: Option<String>,
    /// diffoscope's report on the first differing files (when diffoscope is installed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diffoscope: Option<String>,
    /// The scratch workspace, when kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scratch: Option<PathBuf>,
}

/// One path that differs between two root trees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub path: String,
    /// `only in the reference`, `only in the rebake`, `content`, `type`, `mode`, `owner`,
    /// `mtime`, `target`.
    pub what: String,
}

/// The image of `query` and its recipe's path as recorded (for the CLI to load it).
pub fn image_and_recipe(ctx: &Context<'_>, query: &str) -> Result<(Image, PathBuf)> {
    let img = ctx
        .catalog()?
        .find_image(query)
        .map_err(|e| Error::Invalid(format!("image {query}: {e}")))?;
    let recipe = PathBuf::from(&img.provenance.recipe);
    Ok((img, recipe))
}

/// Rebake `img` from `recipe` (loaded by the caller, with the same variables) and compare.
pub fn verify(
    ctx: &Context<'_>,
    img: &Image,
    recipe: &LoadedRecipe,
    opts: &VerifyOptions,
) -> Result<VerifyReport> {
    let t = Instant::now();
    let sd = img.provenance.source_date.as_ref().ok_or_else(|| {
        Error::Invalid(format!(
            "image {} records no source date (baked by webake {} before images were reproducible): it cannot be verified; bake it again",
            img.id, img.provenance.webake_version
        ))
    })?;
    let reference = match &opts.artifact {
        Some(p) => p.clone(),
        None => img
            .artifact(webake_catalog::ArtifactFormat::Raw)
            .map(|a| a.path.clone())
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "image {} has no raw artifact to compare (give one with --artifact)",
                    img.id
                ))
            })?,
    };
    let recorded_sha256 = img
        .artifact(webake_catalog::ArtifactFormat::Raw)
        .map(|a| a.sha256.clone())
        .unwrap_or_default();
    ctx.workspace.ensure()?;
    let scratch_root = ctx.workspace.data_dir.join("verify");
    std::fs::create_dir_all(&scratch_root).map_err(|e| Error::io(&scratch_root, e))?;
    let scratch = tempfile::Builder::new()
        .prefix(&format!("{}-", img.id))
        .tempdir_in(&scratch_root)
        .map_err(|e| Error::io(&scratch_root, e))?;
    let mut settings = ctx.settings.clone();
    settings.data_dir = scratch.path().join("data");
    settings.catalog = scratch.path().join("catalog.db");
    if !opts.reuse_cache {
        settings.cache_dir = scratch.path().join("cache");
    }
    settings.source_date_epoch = Some(sd.epoch);
    let sctx = Context::new(settings, ctx.reporter, ctx.cancel.clone());
    let planned = crate::plan::plan(Some(&sctx), recipe)?;
    check_inputs(img, recipe, &planned)?;
    ctx.reporter.note(&format!(
        "rebaking image {} from its recorded inputs (digest {}, source date {}) {}",
        img.id,
        &img.inputs_digest[..16],
        sd.epoch,
        if opts.reuse_cache {
            "with the layer cache"
        } else {
            "from empty caches"
        }
    ));
    let rebake_opts = BakeOptions {
        force: true,
        version: Some(img.version.clone()),
        ..Default::default()
    };
    let outcome = bake(&sctx, recipe, &planned, &rebake_opts).context("rebaking the image")?;
    let rebaked = outcome
        .image
        .artifact(webake_catalog::ArtifactFormat::Raw)
        .ok_or_else(|| Error::Invalid("the recipe does not output a raw disk".into()))?
        .clone();
    let (reference_sha256, padding) = digest_of_disk(&reference, rebaked.size)?;
    if padding > 0 {
        ctx.reporter.note(&format!(
            "{} is {padding} bytes longer than the disk, all zeros (a volume rounded up to whole GiB): compared the first {} bytes",
            reference.display(),
            rebaked.size
        ));
    }
    let mut report = VerifyReport {
        image: img.id.to_string(),
        reference: reference.clone(),
        identical: reference_sha256 == rebaked.sha256,
        reference_sha256,
        recorded_sha256,
        rebaked_sha256: rebaked.sha256.clone(),
        inputs_digest: planned.inputs_digest.clone(),
        source_date: sd.epoch,
        from_empty_caches: !opts.reuse_cache,
        seconds: 0.0,
        differences: Vec::new(),
        first_difference: None,
        diffoscope: None,
        scratch: None,
    };
    if !report.identical {
        explain(ctx, &reference, &rebaked.path, scratch.path(), &mut report)?;
    }
    report.seconds = t.elapsed().as_secs_f64();
    if opts.keep {
        report.scratch = Some(scratch.keep());
    }
    Ok(report)
}

/// The sha256 of a disk file; a file longer than `size` whose excess is all zeros (an EBS
/// volume rounded up to whole GiB, downloaded) is hashed over its first `size` bytes. Returns
/// the digest and the length of the zero padding left out.
fn digest_of_disk(path: &Path, size: u64) -> Result<(String, u64)> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let (mut at, mut zero_tail) = (0u64, true);
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        let inside = (size.saturating_sub(at) as usize).min(n);
        h.update(&chunk[..inside]);
        if chunk[inside..].iter().any(|&b| b != 0) {
            zero_tail = false;
        }
        at += n as u64;
    }
    let digest = hex::encode(h.finalize());
    match (len > size, zero_tail) {
        (false, _) => Ok((digest, 0)),
        (true, true) => Ok((digest, len - size)),
        // Longer, with data past the disk: the whole file is the reference.
        (true, false) => Ok((webake_build::digest::sha256_file(path)?, 0)),
    }
}

/// The plan must be the image's: same recipe, same inputs (else say which moved).
fn check_inputs(img: &Image, recipe: &LoadedRecipe, planned: &crate::plan::Planned) -> Result<()> {
    if planned.recipe_digest != img.recipe_digest {
        return Err(Error::Invalid(format!(
            "{} is not the recipe image {} was baked from (its text or variables changed): check out the commit the image was baked from, or pass the same --var values",
            recipe.path.display(),
            img.id
        )));
    }
    if planned.inputs_digest == img.inputs_digest {
        return Ok(());
    }
    let mut moved = Vec::new();
    if planned.base.key() != img.provenance.base.key {
        let why = planned
            .upstream
            .as_ref()
            .map(|u| format!(": {}", u.summary))
            .unwrap_or_default();
        moved.push(format!(
            "the base (key {} then, {} now{why})",
            short(&img.provenance.base.key),
            short(planned.base.key())
        ));
    }
    for s in &planned.steps {
        let Some(then) = img.provenance.steps.iter().find(|r| r.index == s.index) else {
            moved.push(format!("step {} is new", s.label));
            continue;
        };
        for (k, v) in &s.inputs {
            if then.inputs.get(k) != Some(v) {
                moved.push(format!("input {k} of step {}", s.label));
            }
        }
    }
    if moved.is_empty() {
        moved.push("the step keys (a different webake version?)".into());
    }
    Err(Error::NotReproduced(format!(
        "the inputs of image {} cannot be had again: {} changed since it was baked (inputs digest {} then, {} now); a bake from a moving mirror is reproducible only while upstream serves the same packages: pin a snapshot mirror to verify later",
        img.id,
        moved.join(", "),
        short(&img.inputs_digest),
        short(&planned.inputs_digest)
    )))
}

fn short(s: &str) -> &str {
    &s[..12.min(s.len())]
}

/// Where two disks differ: the first byte, and file by file in their root trees.
fn explain(
    ctx: &Context<'_>,
    reference: &Path,
    rebaked: &Path,
    scratch: &Path,
    report: &mut VerifyReport,
) -> Result<()> {
    report.first_difference = first_difference(reference, rebaked)?;
    let mut trees = Vec::new();
    let parent = scratch.join("trees");
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    for (name, disk) in [("reference", reference), ("rebake", rebaked)] {
        let dest = parent.join(name);
        let offset = webake_build::extract::root_offset(disk)?;
        webake_build::extract::extract(disk, offset, &dest)
            .with_context(|| format!("extracting the root tree of {}", disk.display()))?;
        trees.push(dest);
    }
    report.differences = compare_trees(&trees[0], &trees[1])?;
    if webake_sys::process::which("diffoscope").is_some() {
        report.diffoscope = diffoscope(ctx, &trees[0], &trees[1], &report.differences);
    }
    Ok(())
}

/// "byte N (partition 2, root)" of the first difference.
fn first_difference(a: &Path, b: &Path) -> Result<Option<String>> {
    use std::io::Read;
    let open = |p: &Path| std::fs::File::open(p).map_err(|e| Error::io(p, e));
    let (mut fa, mut fb) = (
        std::io::BufReader::new(open(a)?),
        std::io::BufReader::new(open(b)?),
    );
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut at = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba).map_err(|e| Error::io(a, e))?;
        let nb = read_full(&mut fb, &mut bb).map_err(|e| Error::io(b, e))?;
        if let Some(i) = (0..na.min(nb)).find(|&i| ba[i] != bb[i]) {
            let off = at + i as u64;
            return Ok(Some(format!("byte {off}{}", partition_of(b, off))));
        }
        if na != nb {
            return Ok(Some(format!(
                "the disks have different sizes ({} and {} bytes read)",
                at + na as u64,
                at + nb as u64
            )));
        }
        if na == 0 {
            return Ok(None);
        }
        at += na as u64;
    }

    fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            match r.read(&mut buf[n..])? {
                0 => break,
                k => n += k,
            }
        }
        Ok(n)
    }
}

/// " (partition N, NAME)" for a byte offset, from the disk's GPT (sfdisk).
fn partition_of(disk: &Path, off: u64) -> String {
    let cmd = webake_sys::process::Cmd::new("sfdisk")
        .arg("--json")
        .arg(disk);
    let Ok(out) = webake_sys::process::capture(&cmd) else {
        return String::new();
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&out) else {
        return String::new();
    };
    let parts = v["partitiontable"]["partitions"].as_array().cloned();
    for (i, p) in parts.unwrap_or_default().iter().enumerate() {
        let (Some(start), Some(size)) = (p["start"].as_u64(), p["size"].as_u64()) else {
            continue;
        };
        if (start * 512..(start + size) * 512).contains(&off) {
            let name = p["name"].as_str().unwrap_or("");
            return format!(
                " (partition {}{}{name}, {} bytes in)",
                i + 1,
                if name.is_empty() { "" } else { ", " },
                off - start * 512
            );
        }
    }
    " (outside the partitions: the partition table or boot code)".into()
}

/// What a tree entry is, for comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    owner: (u32, u32),
    mtime: i64,
    /// Content digest (files) or target (symlinks).
    data: String,
}

fn entries(root: &Path) -> Result<BTreeMap<String, Entry>> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        for e in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let e = e.map_err(|e| Error::io(&dir, e))?;
            let rel = rel.join(e.file_name());
            let path = e.path();
            let m = std::fs::symlink_metadata(&path).map_err(|e| Error::io(&path, e))?;
            let ft = m.file_type();
            let (kind, data) = if ft.is_dir() {
                stack.push(rel.clone());
                ("directory", String::new())
            } else if ft.is_symlink() {
                let t = std::fs::read_link(&path).map_err(|e| Error::io(&path, e))?;
                ("symlink", t.display().to_string())
            } else if ft.is_file() {
                ("file", webake_build::digest::sha256_file(&path)?)
            } else {
                ("special", format!("{}", m.rdev()))
            };
            out.insert(
                format!("/{}", rel.display()),
                Entry {
                    kind,
                    mode: m.mode() & 0o7777,
                    owner: (m.uid(), m.gid()),
                    // Symlink times are not kept by the extraction.
                    mtime: if kind == "symlink" { 0 } else { m.mtime() },
                    data,
                },
            );
        }
    }
    Ok(out)
}

/// Every path whose presence, type, content, mode, owner or modification time differs.
pub(crate) fn compare_trees(a: &Path, b: &Path) -> Result<Vec<Difference>> {
    let (ea, eb) = (entries(a)?, entries(b)?);
    let mut out = Vec::new();
    let diff = |path: &str, what: &str| Difference {
        path: path.to_string(),
        what: what.to_string(),
    };
    for (p, x) in &ea {
        let Some(y) = eb.get(p) else {
            out.push(diff(p, "only in the reference"));
            continue;
        };
        let what = if x.kind != y.kind {
            "type"
        } else if x.data != y.data {
            if x.kind == "symlink" {
                "target"
            } else {
                "content"
            }
        } else if x.mode != y.mode {
            "mode"
        } else if x.owner != y.owner {
            "owner"
        } else if x.mtime != y.mtime {
            "mtime"
        } else {
            continue;
        };
        out.push(diff(p, what));
    }
    for p in eb.keys().filter(|p| !ea.contains_key(*p)) {
        out.push(diff(p, "only in the rebake"));
    }
    Ok(out)
}

/// diffoscope on the first five files whose content differs (its text report, at most 200
/// lines).
fn diffoscope(ctx: &Context<'_>, a: &Path, b: &Path, diffs: &[Difference]) -> Option<String> {
    let mut text = String::new();
    for d in diffs.iter().filter(|d| d.what == "content").take(5) {
        let rel = d.path.trim_start_matches('/');
        let o = std::process::Command::new("diffoscope")
            .args([
                "--no-progress",
                "--text",
                "-",
                "--max-text-report-size",
                "20000",
            ])
            .arg(a.join(rel))
            .arg(b.join(rel))
            .output();
        match o {
            Ok(o) => text.push_str(&String::from_utf8_lossy(&o.stdout)),
            Err(e) => {
                ctx.reporter
                    .warning(&format!("diffoscope could not run: {e}"));
                return None;
            }
        }
    }
    let lines: Vec<&str> = text.lines().take(200).collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_comparison_names_each_kind_of_difference() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        for t in [&a, &b] {
            std::fs::create_dir_all(t.join("etc")).unwrap();
            std::fs::write(t.join("etc/same"), "x").unwrap();
        }
        std::fs::write(a.join("etc/motd"), "hello").unwrap();
        std::fs::write(b.join("etc/motd"), "tampered").unwrap();
        std::fs::write(a.join("gone"), "").unwrap();
        std::os::unix::fs::symlink("/x", b.join("new")).unwrap();
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1000);
        for t in [&a, &b] {
            for f in ["etc/same", "etc/motd"] {
                std::fs::File::open(t.join(f))
                    .unwrap()
                    .set_modified(when)
                    .unwrap();
            }
            std::fs::File::open(t.join("etc"))
                .unwrap()
                .set_modified(when)
                .unwrap();
        }
        let got = compare_trees(&a, &b).unwrap();
        let pairs: Vec<(&str, &str)> = got
            .iter()
            .map(|d| (d.path.as_str(), d.what.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("/etc/motd", "content"),
                ("/gone", "only in the reference"),
                ("/new", "only in the rebake")
            ]
        );
    }

    #[test]
    fn a_volume_rounded_up_with_zeros_compares_as_the_disk() {
        let d = tempfile::tempdir().unwrap();
        let disk = d.path().join("disk.raw");
        std::fs::write(&disk, b"disk content").unwrap();
        let want = webake_build::digest::sha256_file(&disk).unwrap();
        let padded = d.path().join("volume.raw");
        let mut bytes = b"disk content".to_vec();
        bytes.extend(std::iter::repeat_n(0u8, 3 << 20));
        std::fs::write(&padded, &bytes).unwrap();
        assert_eq!(
            digest_of_disk(&padded, 12).unwrap(),
            (want.clone(), 3 << 20)
        );
        assert_eq!(digest_of_disk(&disk, 12).unwrap(), (want.clone(), 0));
        bytes.push(1);
        std::fs::write(&padded, &bytes).unwrap();
        let (other, pad) = digest_of_disk(&padded, 12).unwrap();
        assert_eq!(pad, 0);
        assert_ne!(other, want);
        assert_eq!(other, webake_build::digest::sha256_file(&padded).unwrap());
    }
}
