//! Where a bake keeps its files.
//!
//! - `cache_dir/bootstrap/<key>/`  finished bootstrap trees (lowest overlay layer)
//! - `cache_dir/layers/<key>/`     finished step layers (overlay upper dirs)
//! - `cache_dir/packages/`         downloaded .deb files shared between bakes
//! - `cache_dir/tmp/<bake-id>/`    per-bake scratch (layers in progress, export tree)
//! - `data_dir/images/<image-id>/` artifacts
//! - `data_dir/bakes/<bake-id>/`   bake logs

use std::path::{Path, PathBuf};

use crate::error::{BuildError, Result};

#[derive(Debug, Clone)]
pub struct Workspace {
    pub data_dir: PathBuf,
    pub cache_dir: PathBuf,
}

impl Workspace {
    pub fn new(data_dir: impl Into<PathBuf>, cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            cache_dir: cache_dir.into(),
        }
    }

    pub fn bootstrap_dir(&self) -> PathBuf {
        self.cache_dir.join("bootstrap")
    }
    pub fn layers_dir(&self) -> PathBuf {
        self.cache_dir.join("layers")
    }
    pub fn packages_dir(&self) -> PathBuf {
        self.cache_dir.join("packages")
    }
    pub fn scratch_root(&self) -> PathBuf {
        self.cache_dir.join("tmp")
    }
    pub fn scratch_dir(&self, bake_id: &str) -> PathBuf {
        self.scratch_root().join(bake_id)
    }
    pub fn images_dir(&self) -> PathBuf {
        self.data_dir.join("images")
    }
    pub fn image_dir(&self, image_id: &str) -> PathBuf {
        self.images_dir().join(image_id)
    }
    pub fn bake_log_dir(&self, bake_id: &str) -> PathBuf {
        self.data_dir.join("bakes").join(bake_id)
    }

    pub fn ensure(&self) -> Result<()> {
        for d in [
            self.bootstrap_dir(),
            self.layers_dir(),
            self.packages_dir(),
            self.scratch_root(),
            self.images_dir(),
            self.data_dir.join("bakes"),
        ] {
            mkdir_p(&d)?;
        }
        Ok(())
    }
}

pub fn mkdir_p(d: &Path) -> Result<()> {
    std::fs::create_dir_all(d).map_err(|e| BuildError::io(d, e))
}
