//! What a reviewer needs to merge without digging: for each reference the rollout changes, the
//! image it points at now against the new one (kernel, packages, size, boot test, SBOMs), and
//! the guards that refuse a downgrade or a reference the cluster could not resolve.
//!
//! The library does not know the catalog: the caller answers "what image does this reference
//! point at" through [`ImageLookup`]. Everything here is pure: typed values in, typed values and
//! Markdown out.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::error::RolloutError;
use crate::plan::Edit;
use crate::reference::ReferenceKind;

/// What is known about an image: the one rolled out, or the one a reference points at now.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImageFacts {
    /// Catalog id (`img-…`).
    pub id: String,
    pub name: String,
    pub family: String,
    pub version: String,
    /// When the image was made (Unix seconds): orders the images of a family.
    pub created_at: i64,
    pub kernel: Option<String>,
    /// Size of the root tree in bytes.
    pub size_bytes: Option<u64>,
    /// Boot test result (`passed`, `failed`); `None`: not run.
    pub boot_test: Option<String>,
    /// Where its SBOMs are (SPDX, CycloneDX).
    pub sbom_paths: Vec<String>,
    /// Installed packages, kernels and size; the package changes are computed from it.
    #[serde(skip)]
    pub inventory: Option<webake_inventory::Inventory>,
    /// Notes on packages of this image by package name (security fix, changelog lines),
    /// attached to the package changes that lead to it.
    pub package_notes: BTreeMap<String, PackageNote>,
}

impl ImageFacts {
    /// `debian-12-k8s 2026.12.02 (img-…)`.
    pub fn label(&self) -> String {
        let mut s = self.name.clone();
        if !self.version.is_empty() {
            s.push(' ');
            s.push_str(&self.version);
        }
        if !self.id.is_empty() {
            s.push_str(&format!(" (`{}`)", self.id));
        }
        s
    }
}

/// Why a package changed, as a freshness check knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PackageNote {
    /// The new version fixes a security issue.
    pub security: bool,
    /// Changelog lines of the new version (Markdown-safe text).
    pub changelog: Option<String>,
}

/// The caller's answer to "what image does this reference point at now".
pub trait ImageLookup {
    /// The image `reference` (found in `region`, when known) points at; `Ok(None)` when the
    /// catalog does not know it. An error is a failure of the lookup itself (unreadable catalog).
    fn image_for(
        &self,
        reference: &str,
        region: Option<&str>,
    ) -> Result<Option<ImageFacts>, String>;
}

impl<F> ImageLookup for F
where
    F: Fn(&str, Option<&str>) -> Result<Option<ImageFacts>, String>,
{
    fn image_for(
        &self,
        reference: &str,
        region: Option<&str>,
    ) -> Result<Option<ImageFacts>, String> {
        self(reference, region)
    }
}

/// A lookup that knows no image: every current reference is shown as unknown to the catalog.
pub struct NoLookup;

impl ImageLookup for NoLookup {
    fn image_for(&self, _: &str, _: Option<&str>) -> Result<Option<ImageFacts>, String> {
        Ok(None)
    }
}

/// What a reference says about its image when the catalog does not know it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReferenceInfo {
    /// `ami-id`, `ssm-parameter`, `image-name` or `webake-name`.
    pub form: &'static str,
    /// Account id or alias of an `owner/name` reference.
    pub owner: Option<String>,
    /// AMI name of an `owner/name` reference; image name of a `webake/NAME:VERSION` one.
    pub name: Option<String>,
    /// Version of a `webake/NAME:VERSION` reference.
    pub version: Option<String>,
    /// A date written in the name or version (`YYYY-MM-DD`).
    pub date: Option<String>,
}

impl ReferenceInfo {
    pub fn of(reference: &str) -> Self {
        let mut info = Self {
            form: "image-name",
            owner: None,
            name: None,
            version: None,
            date: None,
        };
        match ReferenceKind::of(reference) {
            Ok(ReferenceKind::AmiId) => info.form = "ami-id",
            Ok(ReferenceKind::Ssm) => info.form = "ssm-parameter",
            _ => {
                if let Some((name, version)) = reference
                    .strip_prefix("webake/")
                    .and_then(|rest| rest.split_once(':'))
                {
                    info.form = "webake-name";
                    info.name = Some(name.to_string());
                    info.version = Some(version.to_string());
                    info.date = date_in(version);
                } else if let Some((owner, name)) = reference.split_once('/') {
                    info.owner = Some(owner.to_string());
                    info.name = Some(name.to_string());
                    info.date = date_in(name);
                }
            }
        }
        info
    }

    /// One Markdown sentence of what is known.
    fn describe(&self, reference: &str) -> String {
        let mut parts = Vec::new();
        match self.form {
            "ami-id" => parts.push(format!("AMI id `{reference}`")),
            "ssm-parameter" => parts.push(format!(
                "SSM parameter `{}`",
                reference.trim_start_matches("ssm:")
            )),
            "webake-name" => {
                if let Some(n) = &self.name {
                    parts.push(format!("webake image `{n}`"));
                }
                if let Some(v) = &self.version {
                    parts.push(format!("version `{v}`"));
                }
            }
            _ => {
                if let Some(n) = &self.name {
                    parts.push(format!("AMI name `{n}`"));
                }
                if let Some(o) = &self.owner {
                    parts.push(format!("owner `{o}`"));
                }
            }
        }
        if let Some(d) = &self.date {
            parts.push(format!("dated {d}"));
        }
        parts.join(", ")
    }
}

/// The last plausible date in a name: `20240927`, `2024-09-27`, `2024.09.27`, `20261130.181739`.
fn date_in(text: &str) -> Option<String> {
    static RE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"(?:^|[^0-9])((?:19|20)[0-9]{2})[-.]?(0[1-9]|1[0-2])[-.]?(0[1-9]|[12][0-9]|3[01])(?:[^0-9]|$)")
            .expect("static regex")
    });
    // Overlapping matches: walk forward from each hit to find the last one.
    let mut found = None;
    let mut at = 0;
    while let Some(c) = RE.captures_at(text, at) {
        found = Some(format!("{}-{}-{}", &c[1], &c[2], &c[3]));
        at = c.get(1).map_or(text.len(), |m| m.end());
    }
    found
}

/// The image a reference points at now: from the catalog, or what the reference itself tells.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case", tag = "known")]
pub enum CurrentImage {
    #[serde(rename = "catalog")]
    Known(Box<ImageFacts>),
    #[serde(rename = "unknown")]
    Unknown(ReferenceInfo),
}

/// An old and a new value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change<T> {
    pub old: T,
    pub new: T,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PackageChangeKind {
    Added,
    Removed,
    Upgraded,
    Downgraded,
}

/// One package that differs between the current and the new image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackageChange {
    pub name: String,
    pub architecture: String,
    pub kind: PackageChangeKind,
    pub old_version: Option<String>,
    pub new_version: Option<String>,
    /// The new version fixes a security issue (from the new image's package notes).
    pub security: bool,
    /// Changelog lines of the new version (from the new image's package notes).
    pub changelog: Option<String>,
}

/// One current image against the new one, for the references that point at it.
#[derive(Debug, Clone, Serialize)]
pub struct BeforeAfter {
    /// The reference as the repository holds it now.
    pub reference: String,
    /// What replaces it (per region, the one AMI of that region).
    pub new_reference: String,
    pub region: Option<String>,
    /// The build of a per-architecture reference it gets (`x86_64`, `arm64`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// `file:line` of each place that holds it.
    pub locations: Vec<String>,
    pub current: CurrentImage,
    /// Kernel before and after; `None` when unknown on either side.
    pub kernel: Option<Change<String>>,
    /// Size of the root tree before and after, in bytes.
    pub size: Option<Change<u64>>,
    /// Boot test result before and after (`None`: not run).
    pub boot_test: Change<Option<String>>,
    /// Package changes; `None` when either inventory is unknown.
    pub packages: Option<Vec<PackageChange>>,
}

/// Look up each distinct (current reference, region) of the changed edits and compare it with
/// the new image. Sorted by first location.
pub fn before_after(
    edits: &[Edit],
    new: Option<&ImageFacts>,
    lookup: &dyn ImageLookup,
) -> Result<Vec<BeforeAfter>, RolloutError> {
    let mut groups: Vec<BeforeAfter> = Vec::new();
    for e in edits.iter().filter(|e| e.changes()) {
        let location = format!("{}:{}", e.file, e.line);
        if let Some(g) = groups.iter_mut().find(|g| {
            g.reference == e.old
                && g.region == e.region
                && g.architecture == e.architecture
                && g.new_reference == e.new
        }) {
            g.locations.push(location);
            continue;
        }
        let current = lookup
            .image_for(&e.old, e.region.as_deref())
            .map_err(|message| RolloutError::Lookup {
                file: e.file.clone(),
                line: e.line,
                reference: e.old.clone(),
                message,
            })?;
        groups.push(compare(e, location, current, new));
    }
    Ok(groups)
}

fn compare(
    edit: &Edit,
    location: String,
    current: Option<ImageFacts>,
    new: Option<&ImageFacts>,
) -> BeforeAfter {
    let (kernel, size, boot_old, packages) = match (&current, new) {
        (Some(old), Some(new)) => {
            let kernel = match (&old.kernel, &new.kernel) {
                (Some(o), Some(n)) => Some(Change {
                    old: o.clone(),
                    new: n.clone(),
                }),
                _ => None,
            };
            let size = match (old.size_bytes, new.size_bytes) {
                (Some(o), Some(n)) => Some(Change { old: o, new: n }),
                _ => None,
            };
            let packages = match (&old.inventory, &new.inventory) {
                (Some(o), Some(n)) => Some(package_changes(o, n, &new.package_notes)),
                _ => None,
            };
            (kernel, size, old.boot_test.clone(), packages)
        }
        (Some(old), None) => (None, None, old.boot_test.clone(), None),
        _ => (None, None, None, None),
    };
    BeforeAfter {
        reference: edit.old.clone(),
        new_reference: edit.new.clone(),
        region: edit.region.clone(),
        architecture: edit.architecture.clone(),
        locations: vec![location],
        current: match current {
            Some(facts) => CurrentImage::Known(Box::new(facts)),
            None => CurrentImage::Unknown(ReferenceInfo::of(&edit.old)),
        },
        kernel,
        size,
        boot_test: Change {
            old: boot_old,
            new: new.and_then(|n| n.boot_test.clone()),
        },
        packages,
    }
}

/// The package changes of two inventories (webake-inventory's diff, dpkg version order), with
/// the new image's notes attached.
pub fn package_changes(
    old: &webake_inventory::Inventory,
    new: &webake_inventory::Inventory,
    notes: &BTreeMap<String, PackageNote>,
) -> Vec<PackageChange> {
    let d = webake_inventory::diff(old, new);
    let note = |name: &str| notes.get(name).cloned().unwrap_or_default();
    let mut out = Vec::new();
    for p in &d.added {
        let n = note(&p.name);
        out.push(PackageChange {
            name: p.name.clone(),
            architecture: p.architecture.clone(),
            kind: PackageChangeKind::Added,
            old_version: None,
            new_version: Some(p.version.clone()),
            security: n.security,
            changelog: n.changelog,
        });
    }
    for p in &d.removed {
        out.push(PackageChange {
            name: p.name.clone(),
            architecture: p.architecture.clone(),
            kind: PackageChangeKind::Removed,
            old_version: Some(p.version.clone()),
            new_version: None,
            security: false,
            changelog: None,
        });
    }
    for (list, kind) in [
        (&d.upgraded, PackageChangeKind::Upgraded),
        (&d.downgraded, PackageChangeKind::Downgraded),
    ] {
        for c in list {
            let n = note(&c.name);
            out.push(PackageChange {
                name: c.name.clone(),
                architecture: c.architecture.clone(),
                kind,
                old_version: Some(c.old_version.clone()),
                new_version: Some(c.new_version.clone()),
                security: n.security,
                changelog: n.changelog,
            });
        }
    }
    out.sort_by(|a, b| (&a.name, &a.architecture).cmp(&(&b.name, &b.architecture)));
    out
}

// ---------------------------------------------------------------------------------------------
// guards

/// Refuse references the cluster could not resolve: an AMI id stands for an image in AWS, so
/// a local webake name (an image published nowhere) never replaces one. (An AMI id replacing
/// one comes from the image's publication in that reference's region: the per-region map
/// refuses a region without one; SSM parameters and AMI names are resolved by kops in AWS.)
pub(crate) fn check_resolvable(edits: &[Edit]) -> Result<(), RolloutError> {
    for e in edits.iter().filter(|e| e.changes()) {
        if ReferenceKind::of(&e.old) == Ok(ReferenceKind::AmiId)
            && crate::reference::is_local_reference(&e.new)
        {
            return Err(RolloutError::Unresolvable {
                file: e.file.clone(),
                line: e.line,
                what: e.what.clone(),
                old: e.old.clone(),
                new: e.new.clone(),
            });
        }
    }
    Ok(())
}

/// Refuse a rollout to an image older than the one a reference points at now (same family).
pub(crate) fn check_not_downgrade(
    comparisons: &[BeforeAfter],
    new: Option<&ImageFacts>,
) -> Result<(), RolloutError> {
    let Some(new) = new else { return Ok(()) };
    for c in comparisons {
        let CurrentImage::Known(current) = &c.current else {
            continue;
        };
        if current.family == new.family
            && current.id != new.id
            && current.created_at > new.created_at
        {
            let (file, line) = split_location(&c.locations[0]);
            return Err(RolloutError::Downgrade {
                file,
                line,
                reference: c.reference.clone(),
                current: strip_ticks(&current.label()),
                new: strip_ticks(&new.label()),
            });
        }
    }
    Ok(())
}

fn strip_ticks(s: &str) -> String {
    s.replace('`', "")
}

fn split_location(loc: &str) -> (String, usize) {
    match loc.rsplit_once(':') {
        Some((file, line)) => (file.to_string(), line.parse().unwrap_or(0)),
        None => (loc.to_string(), 0),
    }
}

// ---------------------------------------------------------------------------------------------
// Markdown

pub use webake_inventory::human_bytes;

fn signed_bytes(old: u64, new: u64) -> String {
    if new >= old {
        format!("+{}", human_bytes(new - old))
    } else {
        format!("-{}", human_bytes(old - new))
    }
}

/// `2026-12-02 04:13 UTC` from Unix seconds (civil calendar, no time zone database needed).
pub fn utc_minute(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn boot(result: &Option<String>) -> String {
    match result.as_deref() {
        Some("passed") => "passed".into(),
        Some(other) => format!("**{other}**"),
        None => "not run".into(),
    }
}

/// Lists longer than this are folded into `<details>`.
const FOLD_ROWS: usize = 15;

/// The new image, in a few lines.
pub(crate) fn new_image_markdown(new: &ImageFacts) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "**New image**: {} of family `{}`, made {}",
        new.label(),
        new.family,
        utc_minute(new.created_at)
    );
    let _ = writeln!(s);
    let _ = writeln!(s, "- boot test: {}", boot(&new.boot_test));
    if let Some(k) = &new.kernel {
        let _ = writeln!(s, "- kernel: `{k}`");
    }
    if let Some(b) = new.size_bytes {
        let _ = writeln!(s, "- size: {}", human_bytes(b));
    }
    if new.sbom_paths.is_empty() {
        let _ = writeln!(s, "- SBOM: none recorded");
    } else {
        let list: Vec<String> = new.sbom_paths.iter().map(|p| format!("`{p}`")).collect();
        let _ = writeln!(s, "- SBOM: {}", list.join(", "));
    }
    s
}

/// The before/after sections, one per current image.
pub(crate) fn before_after_markdown(
    comparisons: &[BeforeAfter],
    new: Option<&ImageFacts>,
) -> String {
    let mut s = String::from("### Before and after\n");
    for c in comparisons {
        let place: Vec<&str> = c
            .region
            .iter()
            .chain(&c.architecture)
            .map(String::as_str)
            .collect();
        let region = if place.is_empty() {
            String::new()
        } else {
            format!(" ({})", place.join(", "))
        };
        let _ = writeln!(
            s,
            "\n#### `{}`{region} → `{}`\n",
            c.reference, c.new_reference
        );
        let _ = writeln!(
            s,
            "At {}.",
            c.locations
                .iter()
                .map(|l| format!("`{l}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(s);
        match &c.current {
            CurrentImage::Known(old) => {
                let _ = writeln!(
                    s,
                    "Runs now: {} of family `{}`, made {}.",
                    old.label(),
                    old.family,
                    utc_minute(old.created_at)
                );
            }
            CurrentImage::Unknown(info) => {
                let known = info.describe(&c.reference);
                let _ = writeln!(
                    s,
                    "Runs now: an image unknown to the webake catalog{}. Nothing to compare packages against.",
                    if known.is_empty() {
                        String::new()
                    } else {
                        format!(" (known from the reference: {known})")
                    }
                );
            }
        }
        let old_facts = match &c.current {
            CurrentImage::Known(f) => Some(f.as_ref()),
            CurrentImage::Unknown(_) => None,
        };
        let _ = writeln!(s, "\n| | before | after |\n|---|---|---|");
        let opt = |v: Option<String>| v.unwrap_or_else(|| "?".into());
        let kernel_old = old_facts.and_then(|f| f.kernel.clone());
        let kernel_new = new.and_then(|f| f.kernel.clone());
        let mark = if c.kernel.as_ref().is_some_and(|k| k.old != k.new) {
            " (changed)"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "| kernel{mark} | {} | {} |",
            cell(&opt(kernel_old)),
            cell(&opt(kernel_new))
        );
        let size_old = old_facts.and_then(|f| f.size_bytes);
        let size_new = new.and_then(|f| f.size_bytes);
        let size_after = match (size_old, size_new) {
            (Some(o), Some(n)) => format!("{} ({})", human_bytes(n), signed_bytes(o, n)),
            (_, n) => opt(n.map(human_bytes)),
        };
        let _ = writeln!(
            s,
            "| size | {} | {size_after} |",
            opt(size_old.map(human_bytes))
        );
        let boot_old = match old_facts {
            Some(_) => boot(&c.boot_test.old),
            None => "?".into(),
        };
        let boot_new = match new {
            Some(_) => boot(&c.boot_test.new),
            None => "?".into(),
        };
        let _ = writeln!(s, "| boot test | {boot_old} | {boot_new} |");
        let sbom = |f: Option<&ImageFacts>| match f {
            Some(f) if !f.sbom_paths.is_empty() => f
                .sbom_paths
                .iter()
                .map(|p| format!("`{}`", cell(p)))
                .collect::<Vec<_>>()
                .join("<br>"),
            Some(_) => "none".into(),
            None => "?".into(),
        };
        let _ = writeln!(s, "| SBOM | {} | {} |", sbom(old_facts), sbom(new));
        s.push('\n');
        s.push_str(&packages_markdown(c.packages.as_deref()));
    }
    s
}

fn packages_markdown(packages: Option<&[PackageChange]>) -> String {
    let Some(packages) = packages else {
        return "Packages: not compared (an inventory is missing).\n".into();
    };
    if packages.is_empty() {
        return "Packages: no change.\n".into();
    }
    let count = |k| packages.iter().filter(|p| p.kind == k).count();
    let security = packages.iter().filter(|p| p.security).count();
    let mut s = format!(
        "Packages: {} upgraded, {} added, {} removed, {} downgraded",
        count(PackageChangeKind::Upgraded),
        count(PackageChangeKind::Added),
        count(PackageChangeKind::Removed),
        count(PackageChangeKind::Downgraded)
    );
    if security > 0 {
        let _ = write!(s, "; **{security} with security fixes**");
    }
    s.push_str(".\n\n");
    let mut table = String::from("| package | before | after | |\n|---|---|---|---|\n");
    for p in packages {
        let mut note = match p.kind {
            PackageChangeKind::Added => "added".to_string(),
            PackageChangeKind::Removed => "removed".to_string(),
            PackageChangeKind::Upgraded => String::new(),
            PackageChangeKind::Downgraded => "**downgraded**".to_string(),
        };
        if p.security {
            if !note.is_empty() {
                note.push_str(", ");
            }
            note.push_str("**security**");
        }
        let _ = writeln!(
            table,
            "| `{}` ({}) | {} | {} | {note} |",
            p.name,
            p.architecture,
            p.old_version
                .as_deref()
                .map(cell)
                .unwrap_or_else(|| "–".into()),
            p.new_version
                .as_deref()
                .map(cell)
                .unwrap_or_else(|| "–".into()),
        );
    }
    let changelogs: Vec<&PackageChange> =
        packages.iter().filter(|p| p.changelog.is_some()).collect();
    if packages.len() > FOLD_ROWS {
        let _ = write!(
            s,
            "<details><summary>{} package changes</summary>\n\n{table}\n</details>\n",
            packages.len()
        );
    } else {
        s.push_str(&table);
    }
    for p in changelogs {
        let _ = write!(
            s,
            "\n<details><summary>Changelog of {} {}</summary>\n\n```\n{}\n```\n</details>\n",
            p.name,
            p.new_version.as_deref().unwrap_or(""),
            p.changelog.as_deref().unwrap_or("").trim_end()
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_reference_tells_about_its_image() {
        let ubuntu = ReferenceInfo::of(
            "099720109477/ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-20240927",
        );
        assert_eq!(ubuntu.form, "image-name");
        assert_eq!(ubuntu.owner.as_deref(), Some("099720109477"));
        assert_eq!(
            ubuntu.name.as_deref(),
            Some("ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-20240927")
        );
        assert_eq!(ubuntu.date.as_deref(), Some("2024-09-27"));
        let webake = ReferenceInfo::of("webake/debian-minimal:20261130.181739");
        assert_eq!(
            (
                webake.form,
                webake.name.as_deref(),
                webake.version.as_deref(),
                webake.date.as_deref()
            ),
            (
                "webake-name",
                Some("debian-minimal"),
                Some("20261130.181739"),
                Some("2026-11-30")
            )
        );
        let ami = ReferenceInfo::of("ami-0123456789abcdef0");
        assert_eq!((ami.form, ami.date.clone()), ("ami-id", None));
        assert_eq!(ReferenceInfo::of("ssm:/aws/x").form, "ssm-parameter");
        assert_eq!(
            ReferenceInfo::of("kope.io/k8s-1.18-debian-stretch-amd64-hvm-ebs-2020-07-20")
                .date
                .as_deref(),
            Some("2020-07-20")
        );
        assert_eq!(date_in("release-2.1"), None);
        assert_eq!(date_in("a-20231399"), None, "no month 13");
    }

    #[test]
    fn civil_time() {
        assert_eq!(utc_minute(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_minute(1_764_547_200), "2025-12-01 00:00 UTC");
        assert_eq!(utc_minute(951_782_400 + 3_661), "2000-02-29 01:01 UTC");
    }

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
        assert_eq!(signed_bytes(2048, 1024), "-1.0 KiB");
    }
}
