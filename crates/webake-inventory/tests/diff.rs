//! Diff of two inventories and its three renderings.

use webake_inventory::{
    Dependency, EnabledUnit, Inventory, Kernel, OsRelease, Package, Provenance, TreeSize, diff,
};

fn pkg(name: &str, version: &str) -> Package {
    Package {
        name: name.into(),
        version: version.into(),
        architecture: "amd64".into(),
        source: name.into(),
        source_version: version.into(),
        installed_size_kib: None,
    }
}

fn inventory(packages: Vec<Package>) -> Inventory {
    Inventory {
        format: webake_inventory::INVENTORY_FORMAT,
        os: OsRelease {
            id: Some("debian".into()),
            version_id: Some("12".into()),
            version_codename: Some("bookworm".into()),
            pretty_name: Some("Debian GNU/Linux 12 (bookworm)".into()),
        },
        packages,
        kernels: vec![Kernel {
            version: "6.1.0-25-amd64".into(),
            image: Some("/boot/vmlinuz-6.1.0-25-amd64".into()),
            modules: true,
        }],
        units: vec![EnabledUnit {
            unit: "ssh.service".into(),
            wanted_by: "multi-user.target".into(),
            dependency: Dependency::Wants,
            unit_file: Some("/usr/lib/systemd/system/ssh.service".into()),
        }],
        size: TreeSize {
            bytes: 734_003_200,
            files: 21_000,
        },
        provenance: Provenance {
            recipe_digest:
                "sha256:4f2a9c0d11e3b5a7c9d2e4f6a8b0c1d3e5f7a9b1c3d5e7f9a1b3c5d7e9f1a3b5".into(),
            inputs: [("role:base".to_owned(), "sha256:aaaa1111bbbb2222".to_owned())].into(),
            base_digest: None,
        },
        offline: Vec::new(),
    }
}

fn base() -> Vec<Package> {
    vec![
        pkg("bash", "5.2.15-2+b7"),
        pkg("libc6", "2.36-9+deb12u9"),
        pkg("openssl", "3.0.15-1~deb12u1"),
    ]
}

#[test]
fn one_upgraded_package_in_all_renderers() {
    let old = inventory(base());
    let mut newer = base();
    newer[2] = pkg("openssl", "3.0.16-1~deb12u1");
    let new = inventory(newer);
    let d = diff(&old, &new);

    assert_eq!(d.upgraded.len(), 1);
    assert_eq!(d.upgraded[0].name, "openssl");
    assert!(d.added.is_empty() && d.removed.is_empty() && d.downgraded.is_empty());
    assert!(d.kernel.is_none() && d.os.is_none() && d.inputs.is_empty());
    assert_eq!(d.size.delta_bytes, 0);

    let text = d.to_text();
    assert_eq!(
        text,
        "packages: 1 upgraded, 0 added, 0 removed, 0 downgraded\n  ^ openssl 3.0.15-1~deb12u1 -> 3.0.16-1~deb12u1 (amd64)\nsize: 700.0 MiB (unchanged)\n"
    );

    let json: serde_json::Value = serde_json::from_str(&d.to_json()).unwrap();
    assert_eq!(
        json["summary"],
        serde_json::json!({"added": 0, "removed": 0, "upgraded": 1, "downgraded": 0})
    );
    assert_eq!(json["upgraded"][0]["name"], "openssl");
    assert_eq!(json["upgraded"][0]["old_version"], "3.0.15-1~deb12u1");
    assert_eq!(json["upgraded"][0]["new_version"], "3.0.16-1~deb12u1");
    assert_eq!(json["added"], serde_json::json!([]));

    let md = d.to_markdown("web-base 2026-11-18", "web-base 2026-11-25");
    assert_eq!(md.matches("openssl").count(), 1);
    assert!(!md.contains("bash") && !md.contains("libc6"));
    insta::assert_snapshot!("one_upgraded_markdown", md);
}

#[test]
fn one_added_package() {
    let old = inventory(base());
    let mut more = base();
    more.push(pkg("curl", "7.88.1-10+deb12u8"));
    let new = inventory(more);
    let d = diff(&old, &new);
    assert_eq!(
        d.added.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["curl"]
    );
    assert!(d.upgraded.is_empty() && d.removed.is_empty());
    assert!(d.to_text().contains("  + curl 7.88.1-10+deb12u8 (amd64)\n"));
    let md = d.to_markdown("a", "b");
    assert!(md.contains("#### Added (1)\n\n| package | arch | version |\n|---|---|---|\n| `curl` | amd64 | `7.88.1-10+deb12u8` |\n"));
    let json: serde_json::Value = serde_json::from_str(&d.to_json()).unwrap();
    assert_eq!(json["added"][0]["name"], "curl");
    // And back: the same package removed.
    let back = diff(&new, &old);
    assert_eq!(
        back.removed
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        ["curl"]
    );
}

#[test]
fn versions_compare_like_dpkg() {
    // A string comparison would call both of these the other way round.
    let old = inventory(vec![
        pkg("a", "1.0~rc1-1"),
        pkg("b", "1:1.0-1"),
        pkg("c", "1.10-1"),
        pkg("d", "0:2.0"),
    ]);
    let new = inventory(vec![
        pkg("a", "1.0-1"),
        pkg("b", "2.0-1"),
        pkg("c", "1.9-1"),
        pkg("d", "2.0"),
    ]);
    let d = diff(&old, &new);
    assert_eq!(
        d.upgraded
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["a"]
    );
    assert_eq!(
        d.downgraded
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["b", "c"]
    );
    assert_eq!(
        d.respelled
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["d"]
    );
}

#[test]
fn big_rollout_folds_long_lists_and_shows_kernel_size_inputs() {
    let old_pkgs: Vec<Package> = (0..30)
        .map(|i| pkg(&format!("lib{i:02}"), "1.0-1"))
        .collect();
    let new_pkgs: Vec<Package> = (0..30)
        .map(|i| pkg(&format!("lib{i:02}"), "1.0-2"))
        .collect();
    let old = inventory(old_pkgs);
    let mut new = inventory(new_pkgs);
    new.kernels[0].version = "6.1.0-26-amd64".into();
    new.size.bytes += 3 * 1024 * 1024;
    new.provenance
        .inputs
        .insert("role:base".into(), "sha256:cccc3333dddd4444".into());
    new.provenance
        .inputs
        .insert("role:nginx".into(), "sha256:eeee5555".into());
    new.units.clear();
    let d = diff(&old, &new);
    assert_eq!(d.summary.upgraded, 30);
    assert_eq!(d.kernel.as_ref().unwrap().new, ["6.1.0-26-amd64"]);
    assert_eq!(d.inputs.len(), 2);
    assert_eq!(d.units_disabled, ["ssh.service (multi-user.target)"]);
    let md = d.to_markdown("web-base 1", "web-base 2");
    assert!(md.contains("<details><summary>Upgraded (30)</summary>"));
    insta::assert_snapshot!("big_rollout_markdown", md);
    let text = d.to_text();
    assert!(text.contains("kernel: 6.1.0-25-amd64 -> 6.1.0-26-amd64\n"));
    assert!(text.contains("size: 700.0 MiB → 703.0 MiB (+3.0 MiB, +0.4%)\n"));
}
