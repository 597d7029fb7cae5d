//! The inventory of a root tree, read from the tree itself (no chroot, no commands).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dpkg::{self, Package};
use crate::error::{IoContext, Result};
use crate::offline::{OfflineRecord, read_offline};
use crate::root::{self, Root};
use crate::version::compare_versions;

/// Version of the serialized [`Inventory`] format, bumped on incompatible changes.
pub const INVENTORY_FORMAT: u32 = 1;

/// dpkg status and os-release are small; refuse to read absurd ones whole.
const MAX_METADATA_FILE: u64 = 256 * 1024 * 1024;

/// What an image contains. Stored as JSON in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub format: u32,
    pub os: OsRelease,
    /// Installed packages, sorted by name then architecture.
    pub packages: Vec<Package>,
    /// Kernels found in `/boot` and `/usr/lib/modules`, oldest first.
    pub kernels: Vec<Kernel>,
    /// Units enabled through `/etc/systemd/system/*.wants` and `*.requires`.
    pub units: Vec<EnabledUnit>,
    pub size: TreeSize,
    pub provenance: Provenance,
    /// What roles started, stopped, loaded, mounted or set during the bake (recorded by the
    /// sandbox's offline tools; nothing of it ran), with what happens at boot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offline: Vec<OfflineRecord>,
}

/// Fields of `os-release(5)`; absent keys are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsRelease {
    pub id: Option<String>,
    pub version_id: Option<String>,
    pub version_codename: Option<String>,
    pub pretty_name: Option<String>,
}

/// A kernel version with where it was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kernel {
    /// `6.1.0-25-amd64`
    pub version: String,
    /// Image path of the kernel image (`/boot/vmlinuz-6.1.0-25-amd64`), if present.
    pub image: Option<String>,
    /// Whether `/usr/lib/modules/<version>` (or `/lib/modules/<version>`) exists.
    pub modules: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dependency {
    Wants,
    Requires,
}

/// One symlink in `/etc/systemd/system/<unit>.wants/` or `.requires/`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EnabledUnit {
    /// The enabled unit: the link name (`ssh.service`, `getty@tty1.service`).
    pub unit: String,
    /// The unit that pulls it in (`multi-user.target`).
    pub wanted_by: String,
    pub dependency: Dependency,
    /// The unit file the link resolves to inside the image (`/usr/lib/systemd/system/ssh.service`),
    /// `None` when it dangles. Its name differs from `unit` for aliases and template instances.
    pub unit_file: Option<String>,
}

/// Apparent size of the tree: the sum of regular file lengths (hard links counted once),
/// staying on the root's file system.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeSize {
    pub bytes: u64,
    pub files: u64,
}

/// Where the image came from; passed by the caller, digests as `sha256:<hex>` or plain hex.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    pub recipe_digest: String,
    /// Digests of the roles and other inputs, by name.
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_digest: Option<String>,
}

/// Read the whole inventory of the tree at `root`.
pub fn collect(root: &Path, provenance: Provenance) -> Result<Inventory> {
    let r = Root::open(root)?;
    let units = read_enabled_units(&r)?;
    let offline = read_offline(&r, &units)?;
    Ok(Inventory {
        format: INVENTORY_FORMAT,
        os: read_os_release(&r)?,
        packages: read_packages(&r)?,
        kernels: read_kernels(&r)?,
        units,
        size: measure(&r)?,
        provenance,
        offline,
    })
}

/// Installed packages from `var/lib/dpkg/status` (empty when there is no dpkg database).
pub fn packages(root: &Path) -> Result<Vec<Package>> {
    read_packages(&Root::open(root)?)
}

/// `etc/os-release`, falling back to `usr/lib/os-release`.
pub fn os_release(root: &Path) -> Result<OsRelease> {
    read_os_release(&Root::open(root)?)
}

/// Kernel versions from `boot/vmlinuz-*` and `usr/lib/modules/*` (or `lib/modules/*`).
pub fn kernels(root: &Path) -> Result<Vec<Kernel>> {
    read_kernels(&Root::open(root)?)
}

/// Enabled units from `etc/systemd/system/*.wants/` and `*.requires/`.
pub fn enabled_units(root: &Path) -> Result<Vec<EnabledUnit>> {
    read_enabled_units(&Root::open(root)?)
}

/// Apparent size of the tree (see [`TreeSize`]).
pub fn tree_size(root: &Path) -> Result<TreeSize> {
    measure(&Root::open(root)?)
}

const DPKG_STATUS: &str = "var/lib/dpkg/status";

fn read_packages(r: &Root) -> Result<Vec<Package>> {
    let Some(bytes) = r.read(DPKG_STATUS, MAX_METADATA_FILE)? else {
        return Ok(Vec::new());
    };
    // Names and versions are ASCII; a stray Latin-1 description must not fail the bake.
    let text = String::from_utf8_lossy(&bytes);
    dpkg::parse_status(&text, &r.host(DPKG_STATUS))
}

fn read_os_release(r: &Root) -> Result<OsRelease> {
    for rel in ["etc/os-release", "usr/lib/os-release"] {
        if let Some(bytes) = r.read(rel, 1024 * 1024)? {
            return Ok(parse_os_release(&String::from_utf8_lossy(&bytes)));
        }
    }
    Ok(OsRelease::default())
}

/// Parse `os-release(5)`: `KEY=value` lines, values optionally quoted with shell escapes.
pub fn parse_os_release(text: &str) -> OsRelease {
    let mut fields = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            fields.insert(k.trim().to_owned(), unquote(v.trim()));
        }
    }
    let mut take = |k: &str| fields.remove(k).filter(|v| !v.is_empty());
    OsRelease {
        id: take("ID"),
        version_id: take("VERSION_ID"),
        version_codename: take("VERSION_CODENAME"),
        pretty_name: take("PRETTY_NAME"),
    }
}

fn unquote(v: &str) -> String {
    let mut out = String::new();
    let mut quote: Option<char> = None;
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (Some('\''), c) => out.push(c),
            (_, '\\') => out.extend(chars.next()),
            (None, '#') => break,
            (_, c) => out.push(c),
        }
    }
    out.trim().to_owned()
}

fn read_kernels(r: &Root) -> Result<Vec<Kernel>> {
    let mut found: BTreeMap<String, Kernel> = BTreeMap::new();
    for (name, meta) in r.list("boot")? {
        let name = name.to_string_lossy();
        if let Some(v) = name.strip_prefix("vmlinuz-")
            && !meta.is_dir()
            && !v.is_empty()
        {
            found.insert(
                v.to_owned(),
                Kernel {
                    version: v.to_owned(),
                    image: Some(format!("/boot/{name}")),
                    modules: false,
                },
            );
        }
    }
    // `lib/modules` for trees without merged /usr (with it, `lib` links to `usr/lib`).
    let modules = [r.list("usr/lib/modules")?, r.list("lib/modules")?];
    for (name, meta) in modules.into_iter().flatten() {
        if !meta.is_dir() {
            continue;
        }
        let v = name.to_string_lossy().into_owned();
        found
            .entry(v.clone())
            .or_insert(Kernel {
                version: v,
                image: None,
                modules: false,
            })
            .modules = true;
    }
    let mut kernels: Vec<Kernel> = found.into_values().collect();
    kernels
        .sort_by(|a, b| compare_versions(&a.version, &b.version).then(a.version.cmp(&b.version)));
    Ok(kernels)
}

const SYSTEMD_SYSTEM: &str = "etc/systemd/system";

fn read_enabled_units(r: &Root) -> Result<Vec<EnabledUnit>> {
    let mut units = BTreeSet::new();
    for (dir, meta) in r.list(SYSTEMD_SYSTEM)? {
        let dir = dir.to_string_lossy().into_owned();
        let (wanted_by, dependency) = if let Some(u) = dir.strip_suffix(".wants") {
            (u, Dependency::Wants)
        } else if let Some(u) = dir.strip_suffix(".requires") {
            (u, Dependency::Requires)
        } else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        let rel_dir = format!("{SYSTEMD_SYSTEM}/{dir}");
        for (link, meta) in r.list(&rel_dir)? {
            if !meta.file_type().is_symlink() {
                continue;
            }
            let link = link.to_string_lossy().into_owned();
            let unit_file = match r.stat(&format!("{rel_dir}/{link}"))? {
                Some(found) if found.meta.is_file() => {
                    Some(root::image_path(r.path(), &found.host_path))
                }
                _ => None,
            };
            units.insert(EnabledUnit {
                unit: link,
                wanted_by: wanted_by.to_owned(),
                dependency,
                unit_file,
            });
        }
    }
    Ok(units.into_iter().collect())
}

fn measure(r: &Root) -> Result<TreeSize> {
    let mut size = TreeSize::default();
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut stack: Vec<PathBuf> = vec![r.path().to_owned()];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).at(dir),
        };
        for entry in entries {
            let entry = entry.at(&dir)?;
            // DirEntry::metadata does not follow symlinks.
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).at(entry.path()),
            };
            if meta.is_dir() {
                if meta.dev() == r.dev() {
                    stack.push(entry.path());
                }
            } else if meta.is_file() && (meta.nlink() == 1 || seen.insert((meta.dev(), meta.ino())))
            {
                size.bytes += meta.len();
                size.files += 1;
            }
        }
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_quoting() {
        let os = parse_os_release(
            "# comment\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID='12'\nVERSION_CODENAME=bookworm\nX=\"a \\\"b\\\"\"\n",
        );
        assert_eq!(os.id.as_deref(), Some("debian"));
        assert_eq!(os.version_id.as_deref(), Some("12"));
        assert_eq!(os.version_codename.as_deref(), Some("bookworm"));
        assert_eq!(
            os.pretty_name.as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(unquote("\"a \\\"b\\\"\""), "a \"b\"");
    }
}
