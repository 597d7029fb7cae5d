//! Differences between two inventories, and their renderings (terminal text, Markdown for
//! a rollout pull request, JSON).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::dpkg::Package;
use crate::inventory::{EnabledUnit, Inventory, OsRelease};
use crate::version::compare_versions;

/// Lists longer than this are folded into `<details>` in Markdown.
const MARKDOWN_FOLD_ROWS: usize = 10;

/// An old and a new value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change<T> {
    pub old: T,
    pub new: T,
}

/// A package present in both, at another version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageChange {
    pub name: String,
    pub architecture: String,
    pub old_version: String,
    pub new_version: String,
}

/// Kernel versions, when the set changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelChange {
    pub old: Vec<String>,
    pub new: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SizeChange {
    pub old_bytes: u64,
    pub new_bytes: u64,
    pub delta_bytes: i64,
}

/// A provenance input (`recipe`, `base`, or a role/input name) whose digest changed;
/// `None` on one side when it was added or removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputChange {
    pub name: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// Counts of package changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffSummary {
    pub added: usize,
    pub removed: usize,
    pub upgraded: usize,
    pub downgraded: usize,
}

/// What changed from one inventory to the next. Lists are sorted by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryDiff {
    pub summary: DiffSummary,
    pub added: Vec<Package>,
    pub removed: Vec<Package>,
    pub upgraded: Vec<PackageChange>,
    pub downgraded: Vec<PackageChange>,
    /// Packages whose version string changed but compares equal (`1.0` vs `0:1.0`).
    pub respelled: Vec<PackageChange>,
    pub kernel: Option<KernelChange>,
    pub os: Option<Change<String>>,
    pub size: SizeChange,
    pub inputs: Vec<InputChange>,
    pub units_enabled: Vec<String>,
    pub units_disabled: Vec<String>,
}

/// Compare two inventories. Packages are matched by (name, architecture) and their versions
/// compared the way dpkg does.
pub fn diff(old: &Inventory, new: &Inventory) -> InventoryDiff {
    let key = |p: &Package| (p.name.clone(), p.architecture.clone());
    let olds: BTreeMap<_, _> = old.packages.iter().map(|p| (key(p), p)).collect();
    let news: BTreeMap<_, _> = new.packages.iter().map(|p| (key(p), p)).collect();
    let (mut added, mut removed, mut upgraded, mut downgraded, mut respelled) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (k, o) in &olds {
        match news.get(k) {
            None => removed.push((*o).clone()),
            Some(n) if n.version != o.version => {
                let change = PackageChange {
                    name: o.name.clone(),
                    architecture: o.architecture.clone(),
                    old_version: o.version.clone(),
                    new_version: n.version.clone(),
                };
                match compare_versions(&o.version, &n.version) {
                    Ordering::Less => upgraded.push(change),
                    Ordering::Greater => downgraded.push(change),
                    Ordering::Equal => respelled.push(change),
                }
            }
            Some(_) => {}
        }
    }
    for (k, n) in &news {
        if !olds.contains_key(k) {
            added.push((*n).clone());
        }
    }

    let kernels = |inv: &Inventory| {
        inv.kernels
            .iter()
            .map(|k| k.version.clone())
            .collect::<Vec<_>>()
    };
    let (ok, nk) = (kernels(old), kernels(new));
    let kernel = (ok != nk).then_some(KernelChange { old: ok, new: nk });

    let (oos, nos) = (os_label(&old.os), os_label(&new.os));
    let os = (oos != nos).then_some(Change { old: oos, new: nos });

    let mut inputs = Vec::new();
    let (op, np) = (&old.provenance, &new.provenance);
    if op.recipe_digest != np.recipe_digest {
        inputs.push(InputChange {
            name: "recipe".into(),
            old: Some(op.recipe_digest.clone()),
            new: Some(np.recipe_digest.clone()),
        });
    }
    if op.base_digest != np.base_digest {
        inputs.push(InputChange {
            name: "base".into(),
            old: op.base_digest.clone(),
            new: np.base_digest.clone(),
        });
    }
    let names: BTreeSet<&String> = op.inputs.keys().chain(np.inputs.keys()).collect();
    for name in names {
        let (o, n) = (op.inputs.get(name), np.inputs.get(name));
        if o != n {
            inputs.push(InputChange {
                name: name.clone(),
                old: o.cloned(),
                new: n.cloned(),
            });
        }
    }

    let unit_names =
        |inv: &Inventory| -> BTreeSet<String> { inv.units.iter().map(unit_label).collect() };
    let (ou, nu) = (unit_names(old), unit_names(new));

    InventoryDiff {
        summary: DiffSummary {
            added: added.len(),
            removed: removed.len(),
            upgraded: upgraded.len(),
            downgraded: downgraded.len(),
        },
        added,
        removed,
        upgraded,
        downgraded,
        respelled,
        kernel,
        os,
        size: SizeChange {
            old_bytes: old.size.bytes,
            new_bytes: new.size.bytes,
            delta_bytes: i64::try_from(new.size.bytes).unwrap_or(i64::MAX)
                - i64::try_from(old.size.bytes).unwrap_or(i64::MAX),
        },
        inputs,
        units_enabled: nu.difference(&ou).cloned().collect(),
        units_disabled: ou.difference(&nu).cloned().collect(),
    }
}

fn os_label(os: &OsRelease) -> String {
    os.pretty_name.clone().unwrap_or_else(|| {
        format!(
            "{} {}",
            os.id.as_deref().unwrap_or("unknown"),
            os.version_id.as_deref().unwrap_or("")
        )
        .trim()
        .to_owned()
    })
}

fn unit_label(u: &EnabledUnit) -> String {
    format!("{} ({})", u.unit, u.wanted_by)
}

impl InventoryDiff {
    /// True when no package, kernel, OS, input or unit changed (size may still differ).
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.upgraded.is_empty()
            && self.downgraded.is_empty()
            && self.respelled.is_empty()
            && self.kernel.is_none()
            && self.os.is_none()
            && self.inputs.is_empty()
            && self.units_enabled.is_empty()
            && self.units_disabled.is_empty()
    }

    /// Pretty JSON (the serde form of this struct).
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("diff always serializes");
        s.push('\n');
        s
    }

    /// Plain text for a terminal, one change per line.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let sm = &self.summary;
        let _ = writeln!(
            s,
            "packages: {} upgraded, {} added, {} removed, {} downgraded",
            sm.upgraded, sm.added, sm.removed, sm.downgraded
        );
        for c in &self.upgraded {
            let _ = writeln!(
                s,
                "  ^ {} {} -> {} ({})",
                c.name, c.old_version, c.new_version, c.architecture
            );
        }
        for c in &self.downgraded {
            let _ = writeln!(
                s,
                "  v {} {} -> {} ({})",
                c.name, c.old_version, c.new_version, c.architecture
            );
        }
        for p in &self.added {
            let _ = writeln!(s, "  + {} {} ({})", p.name, p.version, p.architecture);
        }
        for p in &self.removed {
            let _ = writeln!(s, "  - {} {} ({})", p.name, p.version, p.architecture);
        }
        for c in &self.respelled {
            let _ = writeln!(
                s,
                "  = {} {} -> {} ({}, same version)",
                c.name, c.old_version, c.new_version, c.architecture
            );
        }
        if let Some(k) = &self.kernel {
            let _ = writeln!(
                s,
                "kernel: {} -> {}",
                list_or_none(&k.old),
                list_or_none(&k.new)
            );
        }
        if let Some(os) = &self.os {
            let _ = writeln!(s, "os: {} -> {}", os.old, os.new);
        }
        let _ = writeln!(s, "size: {}", size_line(&self.size));
        if !self.inputs.is_empty() {
            let _ = writeln!(s, "inputs:");
            for i in &self.inputs {
                let _ = writeln!(
                    s,
                    "  {} {}: {} -> {}",
                    input_mark(i),
                    i.name,
                    i.old.as_deref().unwrap_or("(none)"),
                    i.new.as_deref().unwrap_or("(none)")
                );
            }
        }
        for u in &self.units_enabled {
            let _ = writeln!(s, "unit enabled: {u}");
        }
        for u in &self.units_disabled {
            let _ = writeln!(s, "unit disabled: {u}");
        }
        s
    }

    /// Markdown for the body of a rollout pull request: a one-line summary, then a table per
    /// kind of change; tables longer than ten rows are folded into `<details>`.
    pub fn to_markdown(&self, old_label: &str, new_label: &str) -> String {
        let mut s = String::new();
        let sm = &self.summary;
        let _ = writeln!(
            s,
            "### Image changes: `{}` → `{}`\n",
            md(old_label),
            md(new_label)
        );
        let mut parts = vec![
            format!("**{} upgraded**", sm.upgraded),
            format!("**{} added**", sm.added),
            format!("**{} removed**", sm.removed),
        ];
        if sm.downgraded > 0 {
            parts.push(format!("**{} downgraded**", sm.downgraded));
        }
        if let Some(k) = &self.kernel {
            parts.push(format!(
                "kernel {} → {}",
                code_list(&k.old),
                code_list(&k.new)
            ));
        }
        parts.push(format!("size {}", size_line(&self.size)));
        let _ = writeln!(s, "{}\n", parts.join(" · "));
        if let Some(os) = &self.os {
            let _ = writeln!(s, "Operating system: {} → {}\n", md(&os.old), md(&os.new));
        }

        let changes = |rows: &[PackageChange]| -> Vec<String> {
            rows.iter()
                .map(|c| {
                    format!(
                        "| `{}` | {} | `{}` | `{}` |",
                        md(&c.name),
                        md(&c.architecture),
                        md(&c.old_version),
                        md(&c.new_version)
                    )
                })
                .collect()
        };
        let pkgs = |rows: &[Package]| -> Vec<String> {
            rows.iter()
                .map(|p| {
                    format!(
                        "| `{}` | {} | `{}` |",
                        md(&p.name),
                        md(&p.architecture),
                        md(&p.version)
                    )
                })
                .collect()
        };
        table(
            &mut s,
            "Upgraded",
            "| package | arch | from | to |\n|---|---|---|---|",
            changes(&self.upgraded),
        );
        table(
            &mut s,
            "Downgraded",
            "| package | arch | from | to |\n|---|---|---|---|",
            changes(&self.downgraded),
        );
        table(
            &mut s,
            "Added",
            "| package | arch | version |\n|---|---|---|",
            pkgs(&self.added),
        );
        table(
            &mut s,
            "Removed",
            "| package | arch | version |\n|---|---|---|",
            pkgs(&self.removed),
        );
        table(
            &mut s,
            "Inputs changed",
            "| input | from | to |\n|---|---|---|",
            self.inputs
                .iter()
                .map(|i| {
                    format!(
                        "| {} | {} | {} |",
                        md(&i.name),
                        short_digest(i.old.as_deref()),
                        short_digest(i.new.as_deref())
                    )
                })
                .collect(),
        );
        let units: Vec<String> = self
            .units_enabled
            .iter()
            .map(|u| format!("| enabled | `{}` |", md(u)))
            .chain(
                self.units_disabled
                    .iter()
                    .map(|u| format!("| disabled | `{}` |", md(u))),
            )
            .collect();
        table(&mut s, "Units", "| change | unit |\n|---|---|", units);
        if self.is_empty() {
            let _ = writeln!(s, "No package, kernel, OS, input or unit changes.\n");
        }
        s
    }
}

fn table(s: &mut String, title: &str, header: &str, rows: Vec<String>) {
    if rows.is_empty() {
        return;
    }
    let fold = rows.len() > MARKDOWN_FOLD_ROWS;
    if fold {
        let _ = writeln!(s, "<details><summary>{title} ({})</summary>\n", rows.len());
    } else {
        let _ = writeln!(s, "#### {title} ({})\n", rows.len());
    }
    let _ = writeln!(s, "{header}");
    for r in rows {
        let _ = writeln!(s, "{r}");
    }
    s.push('\n');
    if fold {
        s.push_str("</details>\n\n");
    }
}

/// Escape what would break a table cell or inline code.
fn md(s: &str) -> String {
    s.replace('|', "\\|").replace('`', "'")
}

fn short_digest(d: Option<&str>) -> String {
    match d {
        None => "—".into(),
        Some(d) => {
            let hex = d.strip_prefix("sha256:").unwrap_or(d);
            let short: String = hex.chars().take(12).collect();
            format!("`{}`", md(&short))
        }
    }
}

fn input_mark(i: &InputChange) -> char {
    match (&i.old, &i.new) {
        (None, _) => '+',
        (_, None) => '-',
        _ => '~',
    }
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "(none)".into()
    } else {
        v.join(", ")
    }
}

fn code_list(v: &[String]) -> String {
    if v.is_empty() {
        "(none)".into()
    } else {
        v.iter()
            .map(|k| format!("`{}`", md(k)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn size_line(s: &SizeChange) -> String {
    if s.delta_bytes == 0 {
        return format!("{} (unchanged)", human_bytes(s.new_bytes));
    }
    let sign = if s.delta_bytes > 0 { "+" } else { "-" };
    let mut line = format!(
        "{} → {} ({sign}{}",
        human_bytes(s.old_bytes),
        human_bytes(s.new_bytes),
        human_bytes(s.delta_bytes.unsigned_abs())
    );
    if s.old_bytes > 0 {
        let pct = s.delta_bytes as f64 * 100.0 / s.old_bytes as f64;
        let _ = write!(line, ", {pct:+.1}%");
    }
    line.push(')');
    line
}

/// Binary units with one decimal: `512 B`, `1.5 KiB`, `1.2 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}
