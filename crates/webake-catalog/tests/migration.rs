//! A catalog written by an earlier webake opens and reads correctly.
//!
//! `fixtures/catalog-v1.db` was written by webake at commit f6515fa (schema version 1, JSON
//! columns as that version wrote them): four images baked from recipes/debian-minimal.yaml
//! (one boot-tested), a local and an AWS publication.

use webake_catalog::{ArtifactFormat, Catalog, Publication, TestResult};

fn copy_fixture() -> (tempfile::TempDir, std::path::PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("catalog.db");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/catalog-v1.db"),
        &p,
    )
    .unwrap();
    (d, p)
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
