//! Packer-compatible `manifest.json` (the format of Packer's `manifest` post-processor),
//! for teams migrating from Packer whose tooling reads it.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};

/// The whole file: every build recorded so far and the id of the last run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackerManifest {
    pub builds: Vec<PackerBuild>,
    pub last_run_uuid: String,
}

/// One build, as Packer writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackerBuild {
    /// Build name (`amazon-ebs.web-base` style in Packer; the image family here).
    pub name: String,
    /// `amazon-ebs`, `qemu`, ... (webake writes `webake` or the publish target).
    pub builder_type: String,
    /// Unix seconds.
    pub build_time: i64,
    /// Artifact files; Packer writes `null` when there are none.
    pub files: Option<Vec<PackerFile>>,
    /// `region:ami-id[,region:ami-id...]` for AMIs, a path for local images.
    pub artifact_id: String,
    pub packer_run_uuid: String,
    pub custom_data: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackerFile {
    pub name: String,
    pub size: u64,
}

impl PackerManifest {
    /// Read `path`; a missing file is an empty manifest (Packer appends to an existing one).
    pub fn read(path: &Path) -> Result<Self> {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| Error::Json {
                path: path.to_owned(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).at(path),
        }
    }

    /// Append a build and make its run the last one.
    pub fn push(&mut self, build: PackerBuild) {
        self.last_run_uuid = build.packer_run_uuid.clone();
        self.builds.push(build);
    }

    /// JSON as Packer formats it (two-space indentation).
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("manifest always serializes");
        s.push('\n');
        s
    }

    /// Write atomically: a temp file in the same directory, synced, then renamed over `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = path
            .file_name()
            .map_or_else(|| "manifest.json".into(), |n| n.to_string_lossy());
        let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
        let result = (|| {
            let mut f = fs::File::create(&tmp).at(&tmp)?;
            f.write_all(self.to_json().as_bytes()).at(&tmp)?;
            f.sync_all().at(&tmp)?;
            fs::rename(&tmp, path).at(path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Read `path`, append `build`, write it back atomically.
    pub fn append_to(path: &Path, build: PackerBuild) -> Result<Self> {
        let mut m = Self::read(path)?;
        m.push(build);
        m.write(path)?;
        Ok(m)
    }
}
