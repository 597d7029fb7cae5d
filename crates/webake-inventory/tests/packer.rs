//! Packer-compatible manifest.json.

use webake_inventory::{PackerBuild, PackerFile, PackerManifest};

fn build(run: &str, artifact: &str) -> PackerBuild {
    PackerBuild {
        name: "web-base".into(),
        builder_type: "amazon-ebs".into(),
        build_time: 1_795_000_000,
        files: None,
        artifact_id: artifact.into(),
        packer_run_uuid: run.into(),
        custom_data: Some([("image_id".to_owned(), "img-7".to_owned())].into()),
    }
}

#[test]
fn writes_packers_format_and_appends_like_packer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("manifest.json");
    PackerManifest::append_to(
        &path,
        build("6b3f1c1e-0000-4000-8000-000000000001", "us-east-1:ami-0a1"),
    )
    .unwrap();
    let mut local = build("6b3f1c1e-0000-4000-8000-000000000002", "out/web-base.qcow2");
    local.builder_type = "qemu".into();
    local.files = Some(vec![PackerFile {
        name: "out/web-base.qcow2".into(),
        size: 532_676_608,
    }]);
    local.custom_data = None;
    let m = PackerManifest::append_to(&path, local).unwrap();
    assert_eq!(m.builds.len(), 2);

    let text = std::fs::read_to_string(&path).unwrap();
    // Exactly the keys Packer writes, in Packer's order.
    let expected = r#"{
  "builds": [
    {
      "name": "web-base",
      "builder_type": "amazon-ebs",
      "build_time": 1795000000,
      "files": null,
      "artifact_id": "us-east-1:ami-0a1",
      "packer_run_uuid": "6b3f1c1e-0000-4000-8000-000000000001",
      "custom_data": {
        "image_id": "img-7"
      }
    },
    {
      "name": "web-base",
      "builder_type": "qemu",
      "build_time": 1795000000,
      "files": [
        {
          "name": "out/web-base.qcow2",
          "size": 532676608
        }
      ],
      "artifact_id": "out/web-base.qcow2",
      "packer_run_uuid": "6b3f1c1e-0000-4000-8000-000000000002",
      "custom_data": null
    }
  ],
  "last_run_uuid": "6b3f1c1e-0000-4000-8000-000000000002"
}
"#;
    assert_eq!(text, expected);
    assert_eq!(PackerManifest::read(&path).unwrap(), m);
    // No temp file left next to it.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn reads_a_manifest_written_by_packer() {
    // As written by Packer 1.11's manifest post-processor.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("manifest.json");
    std::fs::write(
        &path,
        r#"{"builds":[{"name":"ubuntu","builder_type":"amazon-ebs","build_time":1700000000,"files":null,"artifact_id":"eu-west-1:ami-0123","packer_run_uuid":"a8f7f6a5-1111-2222-3333-444455556666","custom_data":null}],"last_run_uuid":"a8f7f6a5-1111-2222-3333-444455556666"}"#,
    )
    .unwrap();
    let m = PackerManifest::read(&path).unwrap();
    assert_eq!(m.builds[0].artifact_id, "eu-west-1:ami-0123");
    std::fs::write(&path, "{not json").unwrap();
    let err = PackerManifest::read(&path).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("{}: invalid JSON", path.display())),
        "{err}"
    );
}
