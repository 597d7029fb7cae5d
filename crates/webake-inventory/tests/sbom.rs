//! SBOMs validated by real third-party validators (PyPI: spdx-tools, cyclonedx-python-lib).
//! CI installs them with `pip install -r crates/webake-inventory/requirements-test.txt`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use webake_inventory::{Inventory, Provenance, SbomOptions, collect, cyclonedx_json, spdx_json};

const PIP: &str = "pip install -r crates/webake-inventory/requirements-test.txt";

fn opts(id: &str) -> SbomOptions {
    SbomOptions {
        image_id: id.into(),
        image_name: "web-base".into(),
        created: UNIX_EPOCH + Duration::from_secs(1_795_000_000),
        namespace_base: None,
        architecture: Some("arm64".into()),
    }
}

fn validate(kind: &str, json: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("image.{kind}.json"));
    std::fs::write(&file, json).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/validate_sbom.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(kind)
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}); install Python 3 and run: {PIP}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => {}
        Some(3) => panic!("the {kind} validator is not installed ({stdout}); run: {PIP}"),
        _ => panic!("{kind} SBOM is invalid:\n{stdout}\n{stderr}\n--- document ---\n{json}"),
    }
    if kind == "spdx" {
        // The validator's own command line, as a user would run it.
        let out = Command::new("pyspdxtools").arg("-i").arg(&file).output();
        match out {
            Err(e) => panic!("pyspdxtools not found ({e}); run: {PIP}"),
            Ok(o) => assert!(
                o.status.success(),
                "pyspdxtools -i rejected the document:\n{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        }
    }
}

fn host_inventory() -> Inventory {
    collect_packages_only(Path::new("/"))
}

/// The host's packages and os-release without walking the whole host for its size.
fn collect_packages_only(root: &Path) -> Inventory {
    Inventory {
        format: webake_inventory::INVENTORY_FORMAT,
        os: webake_inventory::os_release(root).unwrap(),
        packages: webake_inventory::packages(root).unwrap(),
        kernels: webake_inventory::kernels(root).unwrap(),
        units: webake_inventory::enabled_units(root).unwrap(),
        size: Default::default(),
        provenance: Provenance {
            recipe_digest: "sha256:aa".into(),
            inputs: [("role:nginx".to_owned(), "sha256:bb".to_owned())].into(),
            base_digest: Some("sha256:cc".into()),
        },
        offline: Vec::new(),
    }
}

#[test]
fn spdx_of_the_host_validates() {
    let inv = host_inventory();
    assert!(inv.packages.len() > 50);
    validate("spdx", &spdx_json(&inv, &opts("img-host-1")));
}

#[test]
fn cyclonedx_of_the_host_validates() {
    let inv = host_inventory();
    validate("cyclonedx", &cyclonedx_json(&inv, &opts("img-host-1")));
}

#[test]
fn fixture_sboms_validate_and_are_complete() {
    let dir = tempfile::tempdir().unwrap();
    common::debian_tree(dir.path());
    let inv = collect(dir.path(), Provenance::default()).unwrap();
    let spdx = spdx_json(&inv, &opts("img-7"));
    let cdx = cyclonedx_json(&inv, &opts("img-7"));
    validate("spdx", &spdx);
    validate("cyclonedx", &cdx);

    let spdx: serde_json::Value = serde_json::from_str(&spdx).unwrap();
    assert_eq!(
        spdx["documentNamespace"],
        "https://webake.dev/spdx/images/img-7"
    );
    assert_eq!(spdx["creationInfo"]["created"], "2026-11-18T11:06:40Z");
    // One package per installed package, plus the image itself; multi-arch libc6 twice.
    assert_eq!(
        spdx["packages"].as_array().unwrap().len(),
        inv.packages.len() + 1
    );
    let purls: Vec<&str> = spdx["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["externalRefs"][0]["referenceLocator"].as_str())
        .collect();
    assert!(purls.contains(&"pkg:deb/debian/libc6@2.36-9%2Bdeb12u9?arch=i386&distro=debian-12"));
    assert!(purls.contains(&"pkg:deb/debian/vim-tiny@2:9.0.1378-2?arch=amd64&distro=debian-12"));
    assert!(purls.contains(
        &"pkg:deb/debian/libstdc%2B%2B6@12.2.0-14%2Bdeb12u1?arch=amd64&distro=debian-12"
    ));

    let cdx: serde_json::Value = serde_json::from_str(&cdx).unwrap();
    assert_eq!(
        cdx["components"].as_array().unwrap().len(),
        inv.packages.len()
    );
    assert_eq!(cdx["metadata"]["timestamp"], "2026-11-18T11:06:40Z");
    assert_eq!(cdx["metadata"]["component"]["type"], "operating-system");
    // The image's architecture, in both (validated above with it).
    assert_eq!(spdx["packages"][0]["comment"], "architecture: arm64");
    assert!(
        cdx["metadata"]["properties"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!({"name": "webake:architecture", "value": "arm64"})),
        "{cdx:#}"
    );
}

#[test]
fn output_is_deterministic_and_unique_per_image() {
    let inv = host_inventory();
    assert_eq!(spdx_json(&inv, &opts("a")), spdx_json(&inv, &opts("a")));
    assert_eq!(
        cyclonedx_json(&inv, &opts("a")),
        cyclonedx_json(&inv, &opts("a"))
    );
    let ns = |id| {
        serde_json::from_str::<serde_json::Value>(&spdx_json(&inv, &opts(id))).unwrap()["documentNamespace"].clone()
    };
    assert_ne!(ns("a"), ns("b"));
    let serial = |id| {
        serde_json::from_str::<serde_json::Value>(&cyclonedx_json(&inv, &opts(id))).unwrap()["serialNumber"].clone()
    };
    assert_ne!(serial("a"), serial("b"));
}
