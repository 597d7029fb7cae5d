//! `lint`: the hygiene lint of a directory tree, a disk file or a catalog image. A disk is
//! read offline and path-safely (its root filesystem extracted into a temp dir, crafted entries
//! refused), never mounted.

use std::path::{Path, PathBuf};

use webake_inventory::{Finding, LintConfig, Rule};
use webake_sys::process::Cmd;

use crate::{Context, Error, Result, ResultExt};

/// Lint `target` (a directory, a raw/qcow2 disk file, or a catalog image) with `allow`ed rules.
pub fn lint_target(ctx: &Context<'_>, target: &str, allow: &[String]) -> Result<Vec<Finding>> {
    check_rules(allow)?;
    let p = Path::new(target);
    let config = LintConfig {
        allow: allow.to_vec(),
        extra_secrets: vec![],
        builder_resolv_conf: std::fs::read("/etc/resolv.conf").ok(),
    };
    if p.is_dir() {
        return Ok(webake_inventory::lint(p, &config)?);
    }
    let disk: PathBuf = if p.is_file() {
        p.to_path_buf()
    } else if looks_like_path(target) || !ctx.catalog_exists() {
        return Err(Error::Invalid(format!(
            "{target}: no such directory, disk file or catalog image"
        )));
    } else {
        let img = ctx
            .catalog()?
            .find_image(target)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        crate::boottest::disk_of(&img)?.to_path_buf()
    };
    let tmp = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let root = tmp.path().join("root");
    extract_disk(&disk, tmp.path(), &root)?;
    Ok(webake_inventory::lint(&root, &config)?)
}

/// Every allowed rule exists (a typo would silently allow nothing).
fn check_rules(allow: &[String]) -> Result<()> {
    for a in allow {
        if !Rule::ALL.iter().any(|r| r.id() == a) {
            let ids: Vec<&str> = Rule::ALL.iter().map(|r| r.id()).collect();
            let hint = webake_spec::suggest::closest(a, ids.iter().copied())
                .map(|s| format!("did you mean `{s}`? "))
                .unwrap_or_default();
            return Err(Error::Invalid(format!(
                "--allow {a}: no such lint rule; {hint}rules: {}",
                ids.join(", ")
            )));
        }
    }
    Ok(())
}

fn looks_like_path(s: &str) -> bool {
    s.contains('/') || s.ends_with(".raw") || s.ends_with(".qcow2") || s.ends_with(".img")
}

/// The root filesystem of `disk` (any format qemu-img reads) into `root`, offline.
fn extract_disk(disk: &Path, scratch: &Path, root: &Path) -> Result<()> {
    let raw = scratch.join("disk.raw");
    webake_sys::process::capture(
        &Cmd::new("qemu-img")
            .args(["convert", "-q", "-O", "raw"])
            .arg(disk)
            .arg(&raw),
    )?;
    crate::base::extract_root(&raw, root)
        .with_context(|| format!("extracting the root filesystem of {}", disk.display()))?;
    std::fs::remove_file(&raw).map_err(|e| Error::io(&raw, e))
}
