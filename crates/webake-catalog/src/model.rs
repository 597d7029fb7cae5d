//! The catalog's records, typed. What is stored as text (JSON columns, format names) is parsed
//! once, here, into these types; nothing above the catalog handles the raw forms.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(s: impl Into<String>) -> Self {
                Self(s.into())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }
        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_string())
            }
        }
        impl PartialEq<str> for $name {
            fn eq(&self, o: &str) -> bool {
                self.0 == o
            }
        }
        impl PartialEq<&str> for $name {
            fn eq(&self, o: &&str) -> bool {
                self.0 == *o
            }
        }
        impl rusqlite::ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                self.0.to_sql()
            }
        }
        impl rusqlite::types::FromSql for $name {
            fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
                String::column_result(v).map(Self)
            }
        }
    };
}

id_type!(
    /// An image's id: `img-` and 12 hex digits.
    ImageId
);
id_type!(
    /// A bake's id: `bake-YYYYMMDD-HHMMSS-` and 8 hex digits.
    BakeId
);

/// The format of a disk artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactFormat {
    Raw,
    Qcow2,
}

impl ArtifactFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Qcow2 => "qcow2",
        }
    }
}

impl fmt::Display for ArtifactFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ArtifactFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "raw" => Ok(Self::Raw),
            "qcow2" => Ok(Self::Qcow2),
            other => Err(format!("unknown artifact format {other:?}")),
        }
    }
}

/// A file an image consists of, complete on disk before the image is recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub format: ArtifactFormat,
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
}

/// The outcome of a boot test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TestResult {
    Passed,
    Failed,
}

impl TestResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Failed => "failed",
        }
    }
    pub fn passed(self) -> bool {
        self == Self::Passed
    }
}

impl fmt::Display for TestResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TestResult {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "passed" => Ok(Self::Passed),
            "failed" => Ok(Self::Failed),
            other => Err(format!("unknown test result {other:?}")),
        }
    }
}

/// Where an image was published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "target", rename_all = "lowercase")]
pub enum Publication {
    /// Recorded as published locally: `name` is the artifact handed out.
    Local { name: String, created_at: i64 },
    /// An AMI in one region.
    Aws {
        region: String,
        /// Empty when `webake gc` deregistered the AMI but its snapshot (`snapshot_id`) could
        /// not be deleted yet: what remains in the region is that snapshot.
        ami_id: String,
        snapshot_id: Option<String>,
        /// The AMI's name.
        name: String,
        created_at: i64,
        /// The publish run that created it (its client tokens and `webake:run` tag).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run_id: Option<String>,
    },
}

impl Publication {
    pub fn target(&self) -> &'static str {
        match self {
            Self::Local { .. } => "local",
            Self::Aws { .. } => "aws",
        }
    }
    pub fn name(&self) -> &str {
        match self {
            Self::Local { name, .. } | Self::Aws { name, .. } => name,
        }
    }
    pub fn created_at(&self) -> i64 {
        match self {
            Self::Local { created_at, .. } | Self::Aws { created_at, .. } => *created_at,
        }
    }
    /// `(region, ami)` of an AWS publication whose AMI exists (not of one whose AMI `gc`
    /// deregistered while its snapshot remains).
    pub fn ami(&self) -> Option<(&str, &str)> {
        match self {
            Self::Aws { region, ami_id, .. } if !ami_id.is_empty() => Some((region, ami_id)),
            Self::Aws { .. } | Self::Local { .. } => None,
        }
    }
}

/// Where an image's base came from (the first link of its step keys).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseRecord {
    /// The base's cache key.
    #[serde(default)]
    pub key: String,
    /// mmdebstrap: suite, variant, architecture (Debian name), mirror and what it installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suite: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// A prepared base (an AMI, a catalog image): what it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Anything else the planner recorded.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// One step of a bake as planned: its cache key and the digests of what it read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    #[serde(default)]
    pub index: usize,
    #[serde(default)]
    pub label: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
}

/// A recipe variable's value at bake time (secrets are recorded as `(secret)`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VariableRecord {
    pub name: String,
    pub value: String,
    pub origin: String,
}

/// The upstream check of a bake: why its base was (or was not) refreshed, and the package
/// updates the refresh brought.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamRecord {
    /// `up_to_date`, `no_image_updates`, `updates`, `pinned`, `new_base`, `unchecked`.
    pub status: String,
    pub summary: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub updates: Vec<UpdateRecord>,
}

/// A package the image had in an older version, and what upstream offered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateRecord {
    pub name: String,
    pub source: String,
    /// The version the previous image (or the cached base) had.
    pub old: String,
    /// The version upstream offered.
    pub new: String,
    pub suite: String,
    pub security: bool,
    /// The newest changelog entry of the new version (from its .deb).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changelog: Option<String>,
    /// The Debian security tracker page of the source package (security updates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracker: Option<String>,
}

/// The apt sources the steps added to the image beyond the base's (a vendor repository in
/// `sources.list.d`), so that later plans can check them upstream: the sources (their keyrings
/// copied into the cache), what they offered when the image was baked, and the generation the
/// steps were keyed on (empty until one of their packages had an update).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepSourcesRecord {
    /// webake-upstream `AptSource`s.
    pub sources: Vec<serde_json::Value>,
    /// webake-upstream `UpstreamState` of those sources right after the bake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub generation: String,
}

/// The catalog image a derived image was built on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentRecord {
    pub id: String,
    pub name: String,
    pub family: String,
    pub version: String,
    pub inputs_digest: String,
    /// sha256 of the parent's disk the base tree was extracted from.
    pub disk_sha256: String,
}

impl Provenance {
    /// The firmwares the image boots under (`uefi` for records older than hybrid disks).
    pub fn firmwares(&self) -> Vec<String> {
        if self.boot.is_empty() {
            vec!["uefi".to_string()]
        } else {
            self.boot.clone()
        }
    }
}

/// A bake's source date.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceDateRecord {
    /// Unix seconds (`SOURCE_DATE_EPOCH`).
    pub epoch: i64,
    /// Where it came from: `--source-date-epoch`, the recipe, the base's upstream state...
    pub origin: String,
}

/// Everything an image was made from: enough to say what a rebake would need.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// The recipe file, as given to webake.
    #[serde(default)]
    pub recipe: String,
    #[serde(default)]
    pub recipe_digest: String,
    #[serde(default)]
    pub base: BaseRecord,
    #[serde(default)]
    pub steps: Vec<StepRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variables: Vec<VariableRecord>,
    /// Firmwares the disk boots under (`bios`, `uefi`); empty in records older than hybrid
    /// disks, which were all UEFI.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub boot: Vec<String>,
    /// The catalog image this one was built on (`base: {image: ...}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentRecord>,
    /// What the upstream check said when the image was planned (Debian bases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamRecord>,
    /// The apt sources the steps added, for the next plan's upstream check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_sources: Option<StepSourcesRecord>,
    /// The bake's source date and where it came from (`webake verify` rebakes with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_date: Option<SourceDateRecord>,
    #[serde(default)]
    pub webake_version: String,
    /// Fields this version does not know (written by a newer webake): kept as they are.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}
