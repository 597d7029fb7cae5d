//! A catalog written by an earlier webake opens and reads correctly.
//!
//! `fixtures/catalog-v1.db` was written by webake at commit f6515fa (schema version 1, JSON
//! columns as that version wrote them): four images baked from recipes/debian-minimal.yaml
//! (one boot-tested), a local and an AWS publication.
//!
//! `fixtures/catalog-v2.db` was written by the schema-2 catalog code (commit f256b9e of
//! crates/webake-catalog): the v1 fixture opened (migrated to 2), plus three `k8s-node` images
//! (raw and qcow2 artifacts, two boot-tested) each published to AWS in eu-west-1 and us-east-1
//! with a run id (one publication without a snapshot id), and a failed bake.

use webake_catalog::{ArtifactFormat, Catalog, Publication, Removed, TestResult};

fn copy_fixture() -> (tempfile::TempDir, std::path::PathBuf) {
    copy_named("catalog-v1.db")
}

fn copy_named(name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("catalog.db");
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
        &p,
    )
    .unwrap();
    (d, p)
}

fn user_version(p: &std::path::Path) -> i64 {
    rusqlite::Connection::open(p)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn a_version_1_catalog_opens_migrates_and_reads_typed() {
    let (_d, p) = copy_fixture();
    let c = Catalog::open(&p).unwrap();
    let images = c.list_images(None).unwrap();
    assert_eq!(images.len(), 4);
    for img in &images {
        assert!(img.id.starts_with("img-"), "{}", img.id);
        assert_eq!(img.family, "debian-12-minimal");
        assert_eq!(img.artifacts.len(), 2);
        assert!(img.artifact(ArtifactFormat::Raw).is_some());
        assert!(img.artifact(ArtifactFormat::Qcow2).is_some());
        // The provenance JSON of v1 reads into the typed record.
        assert_eq!(img.provenance.base.suite.as_deref(), Some("bookworm"));
        assert_eq!(img.provenance.base.architecture.as_deref(), Some("amd64"));
        assert_eq!(img.provenance.base.key.len(), 64);
        assert_eq!(img.provenance.steps.len(), 2);
        assert!(img.provenance.steps[0].inputs.contains_key("definition"));
        assert!(img.provenance.recipe.ends_with("debian-minimal.yaml"));
        // So does the inventory.
        let inv = img.inventory.as_ref().expect("inventory");
        assert!(inv.packages.iter().any(|p| p.name == "systemd"));
    }
    let tested: Vec<_> = images.iter().filter_map(|i| i.test_result).collect();
    assert_eq!(tested, vec![TestResult::Passed]);
    let published = images
        .iter()
        .find(|i| !i.publications.is_empty())
        .expect("a published image");
    assert!(
        published
            .publications
            .iter()
            .any(|p| matches!(p, Publication::Local { .. }))
    );
    assert!(
        published
            .publications
            .iter()
            .any(|p| p.ami() == Some(("eu-west-1", "ami-0123456789abcdef0")))
    );
    // Bakes read too, and the image's bake is there.
    let b = c.get_bake(&published.bake_id).unwrap().expect("bake");
    assert_eq!(b.image_id.as_ref(), Some(&published.id));
}

#[test]
fn a_migrated_catalog_takes_new_records_and_opens_again() {
    let (_d, p) = copy_fixture();
    let c = Catalog::open(&p).unwrap();
    let img = c.list_images(None).unwrap().remove(0);
    c.add_publication(
        &img.id,
        &Publication::Aws {
            region: "us-east-1".into(),
            ami_id: "ami-0fedcba9876543210".into(),
            snapshot_id: Some("snap-0fedcba9876543210".into()),
            name: "n".into(),
            created_at: 1,
            run_id: Some("run-abc".into()),
        },
    )
    .unwrap();
    drop(c);
    let c = Catalog::open(&p).unwrap();
    let again = c.find_image(&img.id).unwrap();
    assert!(again.publications.iter().any(|p| matches!(
        p,
        Publication::Aws { run_id: Some(r), .. } if r == "run-abc"
    )));
}

#[test]
fn a_version_2_catalog_opens_migrates_and_reads_typed() {
    let (_d, p) = copy_named("catalog-v2.db");
    assert_eq!(user_version(&p), 2, "the fixture is a schema-2 catalog");
    let c = Catalog::open(&p).unwrap();
    assert_eq!(user_version(&p), 4);
    let images = c.list_images(None).unwrap();
    assert_eq!(images.len(), 7);
    assert_eq!(
        images
            .iter()
            .filter(|i| i.family == "debian-12-minimal")
            .count(),
        4
    );
    let nodes = c.list_images(Some("k8s-node")).unwrap();
    let versions: Vec<&str> = nodes.iter().map(|i| i.version.as_str()).collect();
    assert_eq!(versions, ["2026.12.02", "2026.11.25", "2026.11.18"]);
    for img in &nodes {
        assert_eq!(img.artifacts.len(), 2, "{}", img.id);
        assert_eq!(img.artifact(ArtifactFormat::Raw).unwrap().size, 2 << 30);
        let amis: Vec<(&str, &str)> = img.publications.iter().filter_map(|p| p.ami()).collect();
        assert_eq!(amis.len(), 2, "{}: {amis:?}", img.id);
        assert!(img.publications.iter().all(|p| matches!(
            p,
            Publication::Aws { run_id: Some(r), .. } if r.len() == 16
        )));
        assert_eq!(img.provenance.recipe, "recipes/k8s-node.yaml");
        assert!(c.deprecations(&img.id).unwrap().is_empty());
        assert!(c.removals(&img.id).unwrap().is_empty());
    }
    assert_eq!(
        nodes.iter().filter_map(|i| i.test_result).count(),
        2,
        "two of three boot-tested"
    );
    // The publication written without a snapshot id reads as such.
    let newest = &nodes[0];
    assert!(newest.publications.iter().any(|p| matches!(
        p,
        Publication::Aws { region, snapshot_id: None, .. } if region == "us-east-1"
    )));
    assert!(c.tombstones(None).unwrap().is_empty());
    // The v1 images are still there, typed.
    let minimal = c.find_image("family:debian-12-minimal").unwrap();
    assert_eq!(minimal.provenance.base.suite.as_deref(), Some("bookworm"));
    let bakes = c.list_bakes(100).unwrap();
    assert!(
        bakes
            .iter()
            .any(|b| b.error.as_deref() == Some("step 2 failed"))
    );
    // The v1 fixture's ten bakes, three k8s-node bakes and the failed one.
    assert_eq!(bakes.len(), 14);
}

#[test]
fn a_migrated_version_2_catalog_records_gc_and_opens_again() {
    let (_d, p) = copy_named("catalog-v2.db");
    let mut c = Catalog::open(&p).unwrap();
    let old = c.find_image("k8s-node:2026.11.18").unwrap();
    let (region, ami, snap) = match &old.publications[0] {
        Publication::Aws {
            region,
            ami_id,
            snapshot_id,
            ..
        } => (region.clone(), ami_id.clone(), snapshot_id.clone().unwrap()),
        other => panic!("{other:?}"),
    };
    c.mark_deprecated(&old.id, &region, &ami, 100).unwrap();
    assert_eq!(c.deprecations(&old.id).unwrap()[&region], 100);
    // The AMI is deregistered, its snapshot not deleted yet: the catalog says the snapshot remains.
    c.record_removal(
        &old.id,
        &Removed::Ami {
            region: region.clone(),
            ami_id: ami.clone(),
            snapshots: vec![snap.clone()],
        },
        "gc",
        101,
    )
    .unwrap();
    let now = c.get_image(&old.id).unwrap().unwrap();
    assert!(
        now.publications
            .iter()
            .all(|p| p.ami() != Some((&region, &ami)))
    );
    let remains = c.remains(&now).unwrap();
    assert!(
        remains.contains(&format!("snapshot {snap} in {region}")),
        "{remains:?}"
    );
    assert!(
        c.bury(&old.id, "gc", 102).is_err(),
        "refused while things remain"
    );
    drop(c);
    // Reopened: same state, and the rest of the removal goes through.
    let mut c = Catalog::open(&p).unwrap();
    let now = c.get_image(&old.id).unwrap().unwrap();
    assert!(
        c.remains(&now)
            .unwrap()
            .contains(&format!("snapshot {snap} in {region}"))
    );
    c.record_removal(
        &old.id,
        &Removed::Snapshot {
            region: region.clone(),
            snapshot_id: snap.clone(),
        },
        "gc",
        103,
    )
    .unwrap();
    let now = c.get_image(&old.id).unwrap().unwrap();
    assert_eq!(now.publications.len(), 1, "only the other region remains");
    assert_eq!(c.remains(&now).unwrap().len(), 3, "two files and an AMI");
}
