//! Inventory read from real trees, cross-checked against dpkg itself.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use webake_inventory::{Dependency, Inventory, Provenance, collect, kernels, os_release, packages};

type Row = (String, String, String);

/// Installed packages as `dpkg-query` sees them (status `installed`, no error flag).
fn dpkg_query(admindir: Option<&Path>) -> BTreeSet<Row> {
    let mut cmd = Command::new("dpkg-query");
    if let Some(dir) = admindir {
        cmd.arg(format!("--admindir={}", dir.display()));
    }
    let out = cmd
        .args([
            "-W",
            "-f=${Package}\t${Version}\t${Architecture}\t${db:Status-Abbrev}\n",
        ])
        .output()
        .expect("dpkg-query is required (the build host is Debian)");
    assert!(
        out.status.success(),
        "dpkg-query failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let abbrev = f[3].as_bytes();
            (abbrev.get(1) == Some(&b'i') && abbrev.get(2) == Some(&b' '))
                .then(|| (f[0].to_owned(), f[1].to_owned(), f[2].to_owned()))
        })
        .collect()
}

fn ours(root: &Path) -> BTreeSet<Row> {
    packages(root)
        .unwrap()
        .into_iter()
        .map(|p| (p.name, p.version, p.architecture))
        .collect()
}

#[test]
fn host_packages_match_dpkg_query() {
    let theirs = dpkg_query(None);
    assert!(
        theirs.len() > 50,
        "expected a real Debian host, dpkg-query listed {}",
        theirs.len()
    );
    let ours = ours(Path::new("/"));
    assert_eq!(
        ours.difference(&theirs).collect::<Vec<_>>(),
        Vec::<&Row>::new(),
        "only in ours"
    );
    assert_eq!(
        theirs.difference(&ours).collect::<Vec<_>>(),
        Vec::<&Row>::new(),
        "only in dpkg-query"
    );
}

#[test]
fn host_os_release_and_kernels() {
    let os = os_release(Path::new("/")).unwrap();
    let text = std::fs::read_to_string("/etc/os-release").unwrap();
    let id = text.lines().find_map(|l| l.strip_prefix("ID=")).unwrap();
    assert_eq!(os.id.as_deref(), Some(id.trim_matches('"')));
    assert!(os.pretty_name.is_some());
    // Whatever the host has, each listed kernel must exist where it says.
    for k in kernels(Path::new("/")).unwrap() {
        assert!(k.image.is_some() || k.modules, "{k:?}");
    }
}

#[test]
fn fixture_packages_match_dpkg_query() {
    let dir = tempfile::tempdir().unwrap();
    common::debian_tree(dir.path());
    let theirs = dpkg_query(Some(&dir.path().join("var/lib/dpkg")));
    let ours = ours(dir.path());
    assert_eq!(ours, theirs);
    // hold ok installed is installed; config-files and unpacked are not.
    assert!(ours.iter().any(|r| r.0 == "libpcre2-8-0"));
    assert!(!ours.iter().any(|r| r.0 == "nano" || r.0 == "half"));
    assert_eq!(ours.len(), 8);
}

fn provenance() -> Provenance {
    Provenance {
        recipe_digest: "sha256:1111".into(),
        inputs: [("role:base".to_owned(), "sha256:2222".to_owned())].into(),
        base_digest: Some("sha256:3333".into()),
    }
}

#[test]
fn fixture_inventory() {
    let dir = tempfile::tempdir().unwrap();
    common::debian_tree(dir.path());
    let inv = collect(dir.path(), provenance()).unwrap();

    assert_eq!(inv.os.id.as_deref(), Some("debian"));
    assert_eq!(inv.os.version_id.as_deref(), Some("12"));
    assert_eq!(inv.os.version_codename.as_deref(), Some("bookworm"));
    assert_eq!(
        inv.os.pretty_name.as_deref(),
        Some("Debian GNU/Linux 12 (bookworm)")
    );

    let libstd = inv
        .packages
        .iter()
        .find(|p| p.name == "libstdc++6")
        .unwrap();
    assert_eq!(
        (libstd.source.as_str(), libstd.source_version.as_str()),
        ("gcc-12", "12.2.0-14+deb12u1")
    );
    let base = inv
        .packages
        .iter()
        .find(|p| p.name == "base-files")
        .unwrap();
    assert_eq!(
        (base.source.as_str(), base.source_version.as_str()),
        ("base-files", "12.4+deb12u8")
    );

    let ks: Vec<(&str, bool, bool)> = inv
        .kernels
        .iter()
        .map(|k| (k.version.as_str(), k.image.is_some(), k.modules))
        .collect();
    // Ordered as versions, not strings (9 < 25).
    assert_eq!(
        ks,
        [
            ("6.1.0-9-amd64", false, true),
            ("6.1.0-25-amd64", true, true)
        ]
    );
    assert_eq!(
        inv.kernels[1].image.as_deref(),
        Some("/boot/vmlinuz-6.1.0-25-amd64")
    );

    let units: Vec<(&str, &str, Dependency, Option<&str>)> = inv
        .units
        .iter()
        .map(|u| {
            (
                u.unit.as_str(),
                u.wanted_by.as_str(),
                u.dependency,
                u.unit_file.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        units,
        [
            (
                "getty@tty1.service",
                "getty.target",
                Dependency::Wants,
                Some("/usr/lib/systemd/system/getty@.service")
            ),
            ("gone.service", "multi-user.target", Dependency::Wants, None),
            (
                "ssh.service",
                "multi-user.target",
                Dependency::Wants,
                Some("/usr/lib/systemd/system/ssh.service")
            ),
            (
                "systemd-networkd.service",
                "network-online.target",
                Dependency::Requires,
                Some("/usr/lib/systemd/system/systemd-networkd.service")
            ),
        ]
    );

    // Regular files only, symlinks not followed, hard links once.
    std::fs::hard_link(
        dir.path().join("usr/bin/tool"),
        dir.path().join("usr/bin/tool2"),
    )
    .unwrap();
    let again = collect(dir.path(), provenance()).unwrap();
    let expected: u64 = walk_sizes(dir.path());
    assert_eq!(again.size.bytes, expected);
    assert_eq!(again.size.bytes, inv.size.bytes);

    // Round trip through the catalog's JSON.
    let json = serde_json::to_string(&inv).unwrap();
    assert_eq!(serde_json::from_str::<Inventory>(&json).unwrap(), inv);
}

/// Independent size count: `du --apparent-size`-like, via find.
fn walk_sizes(root: &Path) -> u64 {
    let out = Command::new("find")
        .arg(root)
        .args(["-type", "f", "-links", "1", "-printf", "%s\n"])
        .output()
        .unwrap();
    let single: u64 = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.parse::<u64>().unwrap())
        .sum();
    single + 5000 // usr/bin/tool, now with two links, counted once
}

#[test]
fn hostile_symlinks_resolve_inside_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    common::write(root, "var/lib/dpkg/status", common::STATUS);
    // Pointing at the host's files: must be read inside the root (where they are absent).
    common::link(root, "etc/os-release", "/etc/os-release");
    common::link(root, "boot", "/boot");
    common::link(root, "usr", "/usr");
    common::link(root, "etc/systemd/system", "/etc/systemd/system");
    let inv = collect(root, Provenance::default()).unwrap();
    assert_eq!(inv.os, Default::default(), "os-release read from the host");
    assert!(inv.kernels.is_empty());
    assert!(inv.units.is_empty());

    // etc/os-release -> /etc/shadow resolves to the image's own /etc/shadow.
    std::fs::remove_file(root.join("etc/os-release")).unwrap();
    common::link(root, "etc/os-release", "/etc/shadow");
    common::write(root, "etc/shadow", "ID=inside\n");
    assert_eq!(
        collect(root, Provenance::default())
            .unwrap()
            .os
            .id
            .as_deref(),
        Some("inside")
    );
}

#[test]
fn kernel_modules_without_merged_usr() {
    let dir = tempfile::tempdir().unwrap();
    common::write(dir.path(), "lib/modules/5.10.0-32-amd64/modules.dep", "");
    common::write(dir.path(), "boot/vmlinuz-5.10.0-32-amd64", "k");
    let ks = kernels(dir.path()).unwrap();
    assert_eq!(ks.len(), 1);
    assert!(ks[0].modules && ks[0].image.is_some());
}

#[test]
fn missing_root_names_the_path() {
    let err = collect(Path::new("/nonexistent/webake-root"), Provenance::default()).unwrap_err();
    assert!(
        err.to_string().starts_with("/nonexistent/webake-root: "),
        "{err}"
    );
}
