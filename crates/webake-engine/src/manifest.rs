//! Packer's `manifest.json`, for teams whose tooling reads it: one build appended per image.
//! `artifact_id` is `region:ami-…[,region:ami-…]` once the image is on AWS (as Packer's Amazon
//! builders write it), else the path of its first artifact.

use std::path::Path;
use std::time::Duration;

use webake_catalog::Image;

use crate::{Result, ResultExt};

/// Append a build for `img` to the manifest at `path` (created when missing).
pub fn append_packer_manifest(path: &Path, img: &Image, build_time: Duration) -> Result<()> {
    let amis: Vec<String> = img
        .publications
        .iter()
        .filter_map(|p| p.ami().map(|(region, ami)| format!("{region}:{ami}")))
        .collect();
    let artifact_id = if amis.is_empty() {
        img.artifacts
            .first()
            .map(|a| a.path.display().to_string())
            .unwrap_or_default()
    } else {
        amis.join(",")
    };
    let build = webake_inventory::PackerBuild {
        name: img.family.clone(),
        builder_type: "webake".into(),
        build_time: jiff::Timestamp::now().as_second(),
        files: Some(
            img.artifacts
                .iter()
                .map(|a| webake_inventory::PackerFile {
                    name: a.path.display().to_string(),
                    size: a.size,
                })
                .collect(),
        ),
        artifact_id,
        packer_run_uuid: img.bake_id.to_string(),
        custom_data: Some(
            [
                ("image_id".to_string(), img.id.to_string()),
                ("version".to_string(), img.version.clone()),
                ("arch".to_string(), img.arch.clone()),
                (
                    "build_seconds".to_string(),
                    build_time.as_secs().to_string(),
                ),
            ]
            .into_iter()
            .collect(),
        ),
    };
    webake_inventory::PackerManifest::append_to(path, build)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
