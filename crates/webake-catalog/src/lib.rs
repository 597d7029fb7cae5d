//! webake-catalog: the SQLite catalog of bakes, images, artifacts and publications.
//!
//! WAL mode with a busy timeout, so several bakes on one host can record concurrently. An
//! image row and its artifact rows are written in one transaction, after the artifacts are
//! complete on disk: there is never an image whose artifacts are missing.

mod model;
mod removal;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
pub use webake_inventory::Inventory;

pub use model::{
    Artifact, ArtifactFormat, BakeId, BaseRecord, ImageId, ParentRecord, Provenance, Publication,
    SourceDateRecord, StepRecord, StepSourcesRecord, TestResult, UpdateRecord, UpstreamRecord,
    VariableRecord,
};
pub use removal::{Removal, Removed, Tombstone};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("catalog {path}: cannot create its directory: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no image matches {0:?} (try `webake images list`)")]
    NotFound(String),
    #[error("{query:?} matches several images: {}", .ids.join(", "))]
    Ambiguous { query: String, ids: Vec<String> },
    /// An image cannot be replaced by its tombstone while files or AMIs of it remain.
    #[error("image {image} still has {}: not marking it removed", .remains.join(", "))]
    StillHolds { image: String, remains: Vec<String> },
    #[error(
        "catalog {path} has schema version {found}, newer than this webake understands ({supported})"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
}

pub type Result<T, E = CatalogError> = std::result::Result<T, E>;

fn to_json<T: Serialize>(v: &T) -> rusqlite::Result<String> {
    serde_json::to_string(v).map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BakeStatus {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl BakeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
    fn parse(s: &str) -> Self {
        match s {
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "cancelled" => Self::Cancelled,
            _ => Self::Failed,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bake {
    pub id: BakeId,
    pub recipe_path: String,
    pub name: String,
    pub family: String,
    pub status: BakeStatus,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub log_path: String,
    pub error: Option<String>,
    pub image_id: Option<ImageId>,
    pub pid: i64,
    pub inputs_digest: String,
    pub host: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Image {
    pub id: ImageId,
    pub bake_id: BakeId,
    pub name: String,
    pub family: String,
    pub version: String,
    /// CPU architecture, by its AWS name (`x86_64`, `arm64`; another Debian name for an
    /// architecture AWS does not run). An image family can hold one image per architecture
    /// of the same version. Empty for images recorded before schema 4 that did not say.
    #[serde(default)]
    pub arch: String,
    pub created_at: i64,
    pub inputs_digest: String,
    pub recipe_digest: String,
    pub kernel: Option<String>,
    /// Apparent size of the root tree in bytes.
    pub tree_size: u64,
    /// Packages, kernels, units, os-release (webake-inventory).
    pub inventory: Option<Inventory>,
    /// What the image was made from.
    pub provenance: Provenance,
    /// Boot test result, if one ran.
    pub test_result: Option<TestResult>,
    pub artifacts: Vec<Artifact>,
    pub publications: Vec<Publication>,
}

impl Image {
    /// A record of identity and version only (bake id `bake-ID`): no digests, kernel,
    /// inventory, test result, artifacts or publications. Fill in the rest with struct update
    /// syntax (`Image { artifacts, ..Image::bare(..) }`).
    pub fn bare(
        id: &str,
        name: &str,
        family: &str,
        version: &str,
        arch: &str,
        created_at: i64,
    ) -> Self {
        Self {
            id: id.into(),
            bake_id: format!("bake-{id}").into(),
            name: name.into(),
            family: family.into(),
            version: version.into(),
            arch: arch.into(),
            created_at,
            inputs_digest: String::new(),
            recipe_digest: String::new(),
            kernel: None,
            tree_size: 0,
            inventory: None,
            provenance: Provenance::default(),
            test_result: None,
            artifacts: vec![],
            publications: vec![],
        }
    }

    /// The artifact of `format`, if the image has one.
    pub fn artifact(&self, format: ArtifactFormat) -> Option<&Artifact> {
        self.artifacts.iter().find(|a| a.format == format)
    }

    /// The disk to boot, extract or inspect: the raw artifact, else the first one.
    pub fn disk(&self) -> Option<&Artifact> {
        self.artifact(ArtifactFormat::Raw)
            .or(self.artifacts.first())
    }
}

/// 1: the first schema. 2: publications.run_id. 3: publications.deprecated_at, removals and
/// tombstones (`webake gc`). 4: images.arch.
const SCHEMA_VERSION: i64 = 4;

/// The AWS name of the architecture webake runs on (what `family:NAME` prefers).
pub const HOST_ARCH: &str = if cfg!(target_arch = "aarch64") {
    "arm64"
} else {
    "x86_64"
};

/// images.arch, filled for older images from their bootstrap's architecture.
const MIGRATION_V4: &str = "ALTER TABLE images ADD COLUMN arch TEXT NOT NULL DEFAULT '';
    UPDATE images SET arch = CASE json_extract(provenance, '$.base.architecture')
        WHEN 'amd64' THEN 'x86_64' WHEN 'arm64' THEN 'arm64'
        ELSE coalesce(json_extract(provenance, '$.base.architecture'), '') END;
    CREATE INDEX IF NOT EXISTS images_family_arch ON images(family, arch, created_at);
    PRAGMA user_version = 4;";

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

pub struct Catalog {
    conn: Connection,
    path: PathBuf,
}

impl Catalog {
    /// Open (creating and migrating if needed). Several processes may open a new catalog at
    /// the same moment: switching to WAL and migrating need a lock that SQLite reports as
    /// busy without waiting, so opening retries for a bounded time.
    pub fn open(path: &Path) -> Result<Self> {
        // Bounded: 30 s of retries, backing off from 20 ms to 500 ms.
        const OPEN_DEADLINE: Duration = Duration::from_secs(30);
        let start = std::time::Instant::now();
        let mut delay = Duration::from_millis(20);
        loop {
            match Self::open_once(path) {
                Err(CatalogError::Sqlite { source, .. })
                    if is_busy(&source) && start.elapsed() < OPEN_DEADLINE =>
                {
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_millis(500));
                }
                other => return other,
            }
        }
    }

    fn open_once(path: &Path) -> Result<Self> {
        if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(d).map_err(|source| CatalogError::Dir {
                path: d.into(),
                source,
            })?;
        }
        let e = |source| CatalogError::Sqlite {
            path: path.into(),
            source,
        };
        let conn = Connection::open(path).map_err(e)?;
        conn.busy_timeout(Duration::from_secs(30)).map_err(e)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(e)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(e)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(e)?;
        let cat = Self {
            conn,
            path: path.into(),
        };
        cat.migrate()?;
        Ok(cat)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn e(&self) -> impl Fn(rusqlite::Error) -> CatalogError + '_ {
        move |source| CatalogError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn migrate(&self) -> Result<()> {
        let version = |conn: &Connection| -> rusqlite::Result<i64> {
            conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        };
        if version(&self.conn).map_err(self.e())? == SCHEMA_VERSION {
            return Ok(());
        }
        // Under the write lock, so concurrent first opens migrate once.
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(self.e())?;
        let r = self.migrate_locked(version(&self.conn).map_err(self.e())?);
        let end = if r.is_ok() { "COMMIT" } else { "ROLLBACK" };
        self.conn.execute_batch(end).map_err(self.e())?;
        r
    }

    fn migrate_locked(&self, v: i64) -> Result<()> {
        if v > SCHEMA_VERSION {
            return Err(CatalogError::TooNew {
                path: self.path.clone(),
                found: v,
                supported: SCHEMA_VERSION,
            });
        }
        if v < 1 {
            self.conn
                .execute_batch(
                    "CREATE TABLE IF NOT EXISTS bakes (
                        id TEXT PRIMARY KEY, recipe_path TEXT NOT NULL, name TEXT NOT NULL, family TEXT NOT NULL,
                        status TEXT NOT NULL, started_at INTEGER NOT NULL, finished_at INTEGER,
                        log_path TEXT NOT NULL, error TEXT, image_id TEXT, pid INTEGER NOT NULL,
                        inputs_digest TEXT NOT NULL, host TEXT NOT NULL DEFAULT '');
                    CREATE TABLE IF NOT EXISTS images (
                        id TEXT PRIMARY KEY, bake_id TEXT NOT NULL, name TEXT NOT NULL, family TEXT NOT NULL,
                        version TEXT NOT NULL, created_at INTEGER NOT NULL, inputs_digest TEXT NOT NULL,
                        recipe_digest TEXT NOT NULL, kernel TEXT, tree_size INTEGER NOT NULL,
                        inventory TEXT, provenance TEXT NOT NULL, test_result TEXT);
                    CREATE INDEX IF NOT EXISTS images_family ON images(family, created_at);
                    CREATE INDEX IF NOT EXISTS images_inputs ON images(inputs_digest);
                    CREATE TABLE IF NOT EXISTS artifacts (
                        image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE, format TEXT NOT NULL,
                        path TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
                        PRIMARY KEY (image_id, format));
                    CREATE TABLE IF NOT EXISTS publications (
                        image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE, target TEXT NOT NULL,
                        region TEXT NOT NULL, ami_id TEXT, snapshot_id TEXT, name TEXT NOT NULL,
                        created_at INTEGER NOT NULL, PRIMARY KEY (image_id, target, region));
                    PRAGMA user_version = 1;",
                )
                .map_err(self.e())?;
        }
        if v < 2 {
            self.conn
                .execute_batch(
                    "ALTER TABLE publications ADD COLUMN run_id TEXT;
                    PRAGMA user_version = 2;",
                )
                .map_err(self.e())?;
        }
        if v < 3 {
            self.conn
                .execute_batch(removal::MIGRATION_V3)
                .map_err(self.e())?;
        }
        if v < 4 {
            self.conn.execute_batch(MIGRATION_V4).map_err(self.e())?;
        }
        Ok(())
    }

    pub fn begin_bake(&self, b: &Bake) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO bakes (id, recipe_path, name, family, status, started_at, log_path, pid, inputs_digest, host)
                 VALUES (?1, ?2, ?3, ?4, 'running', ?5, ?6, ?7, ?8, ?9)",
                params![b.id, b.recipe_path, b.name, b.family, b.started_at, b.log_path, b.pid, b.inputs_digest, b.host],
            )
            .map_err(self.e())?;
        Ok(())
    }

    pub fn end_bake(
        &self,
        id: &BakeId,
        status: BakeStatus,
        error: Option<&str>,
        finished_at: i64,
    ) -> Result<()> {
        self.conn
            .execute(
                "UPDATE bakes SET status = ?2, error = ?3, finished_at = ?4 WHERE id = ?1",
                params![id, status.as_str(), error, finished_at],
            )
            .map_err(self.e())?;
        Ok(())
    }

    /// Record an image and its artifacts, and mark its bake succeeded, in one transaction.
    pub fn record_image(&mut self, img: &Image, finished_at: i64) -> Result<()> {
        let path = self.path.clone();
        let e = |source| CatalogError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(e)?;
        tx.execute(
            "INSERT INTO images (id, bake_id, name, family, version, created_at, inputs_digest, recipe_digest, kernel, tree_size, inventory, provenance, test_result, arch)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            params![
                img.id,
                img.bake_id,
                img.name,
                img.family,
                img.version,
                img.created_at,
                img.inputs_digest,
                img.recipe_digest,
                img.kernel,
                img.tree_size as i64,
                img.inventory.as_ref().map(to_json).transpose().map_err(e)?,
                to_json(&img.provenance).map_err(e)?,
                img.test_result.map(TestResult::as_str),
                img.arch,
            ],
        )
        .map_err(e)?;
        for a in &img.artifacts {
            tx.execute(
                "INSERT INTO artifacts (image_id, format, path, sha256, size) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    img.id,
                    a.format.as_str(),
                    a.path.to_string_lossy(),
                    a.sha256,
                    a.size as i64
                ],
            )
            .map_err(e)?;
        }
        tx.execute(
            "UPDATE bakes SET status = 'succeeded', image_id = ?2, finished_at = ?3, error = NULL WHERE id = ?1",
            params![img.bake_id, img.id, finished_at],
        )
        .map_err(e)?;
        tx.commit().map_err(e)?;
        Ok(())
    }

    pub fn set_test_result(&self, image_id: &ImageId, result: TestResult) -> Result<()> {
        self.conn
            .execute(
                "UPDATE images SET test_result = ?2 WHERE id = ?1",
                params![image_id, result.as_str()],
            )
            .map_err(self.e())?;
        Ok(())
    }

    pub fn add_publication(&self, image_id: &ImageId, p: &Publication) -> Result<()> {
        let (region, ami, snapshot, run_id) = match p {
            Publication::Local { .. } => ("-", None, None, None),
            Publication::Aws {
                region,
                ami_id,
                snapshot_id,
                run_id,
                ..
            } => (
                region.as_str(),
                Some(ami_id.as_str()),
                snapshot_id.as_deref(),
                run_id.as_deref(),
            ),
        };
        self.conn
            .execute(
                "INSERT OR REPLACE INTO publications (image_id, target, region, ami_id, snapshot_id, name, created_at, run_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![image_id, p.target(), region, ami, snapshot, p.name(), p.created_at(), run_id],
            )
            .map_err(self.e())?;
        Ok(())
    }

    fn image_from_row(&self, r: &rusqlite::Row<'_>) -> rusqlite::Result<Image> {
        let inv: Option<String> = r.get("inventory")?;
        let prov: String = r.get("provenance")?;
        Ok(Image {
            id: r.get("id")?,
            bake_id: r.get("bake_id")?,
            name: r.get("name")?,
            family: r.get("family")?,
            version: r.get("version")?,
            arch: r.get("arch")?,
            created_at: r.get("created_at")?,
            inputs_digest: r.get("inputs_digest")?,
            recipe_digest: r.get("recipe_digest")?,
            kernel: r.get("kernel")?,
            tree_size: r.get::<_, i64>("tree_size")? as u64,
            inventory: inv.and_then(|s| serde_json::from_str(&s).ok()),
            provenance: serde_json::from_str(&prov).unwrap_or_default(),
            test_result: r
                .get::<_, Option<String>>("test_result")?
                .and_then(|t| t.parse().ok()),
            artifacts: Vec::new(),
            publications: Vec::new(),
        })
    }

    fn fill(&self, mut img: Image) -> Result<Image> {
        let mut st = self.conn.prepare("SELECT format, path, sha256, size FROM artifacts WHERE image_id = ?1 ORDER BY format").map_err(self.e())?;
        img.artifacts = st
            .query_map([&img.id], |r| {
                let format: String = r.get(0)?;
                Ok(Artifact {
                    format: format.parse().map_err(|e: String| {
                        rusqlite::Error::FromSqlConversionFailure(
                            0,
                            rusqlite::types::Type::Text,
                            e.into(),
                        )
                    })?,
                    path: PathBuf::from(r.get::<_, String>(1)?),
                    sha256: r.get(2)?,
                    size: r.get::<_, i64>(3)? as u64,
                })
            })
            .map_err(self.e())?
            .collect::<rusqlite::Result<_>>()
            .map_err(self.e())?;
        let mut st = self
            .conn
            .prepare("SELECT target, region, ami_id, snapshot_id, name, created_at, run_id FROM publications WHERE image_id = ?1 ORDER BY target, region")
            .map_err(self.e())?;
        img.publications = st
            .query_map([&img.id], |r| {
                let target: String = r.get(0)?;
                Ok(match target.as_str() {
                    "local" => Publication::Local {
                        name: r.get(4)?,
                        created_at: r.get(5)?,
                    },
                    _ => Publication::Aws {
                        region: r.get(1)?,
                        ami_id: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                        snapshot_id: r.get(3)?,
                        name: r.get(4)?,
                        created_at: r.get(5)?,
                        run_id: r.get(6)?,
                    },
                })
            })
            .map_err(self.e())?
            .collect::<rusqlite::Result<_>>()
            .map_err(self.e())?;
        Ok(img)
    }

    /// Find an image by id, unique id prefix, `family:NAME` (latest of a family) or
    /// `NAME:VERSION`; the last two take `@ARCH` (`family:debian-12@arm64`). Without it,
    /// `family:NAME` is the latest of the host's architecture when the family has one.
    pub fn find_image(&self, query: &str) -> Result<Image> {
        let (query, arch) = match query.rsplit_once('@') {
            Some((q, a)) if query.contains(':') && !a.is_empty() => (q, Some(a)),
            _ => (query, None),
        };
        let rows: Vec<Image> = if let Some(fam) = query.strip_prefix("family:") {
            let host = HOST_ARCH;
            let mut st = self.conn.prepare("SELECT * FROM images WHERE family = ?1 AND (?2 IS NULL OR arch = ?2) ORDER BY (?2 IS NULL AND arch = ?3) DESC, created_at DESC, id DESC LIMIT 1").map_err(self.e())?;
            st.query_map(params![fam, arch, host], |r| self.image_from_row(r))
                .map_err(self.e())?
                .collect::<rusqlite::Result<_>>()
                .map_err(self.e())?
        } else if let Some((name, version)) = query.split_once(':') {
            let mut st = self
                .conn
                .prepare("SELECT * FROM images WHERE name = ?1 AND version = ?2 AND (?3 IS NULL OR arch = ?3)")
                .map_err(self.e())?;
            st.query_map(params![name, version, arch], |r| self.image_from_row(r))
                .map_err(self.e())?
                .collect::<rusqlite::Result<_>>()
                .map_err(self.e())?
        } else {
            let like = format!("{}%", query.replace(['%', '_'], ""));
            let mut st = self
                .conn
                .prepare("SELECT * FROM images WHERE id = ?1 OR id LIKE ?2 ORDER BY id")
                .map_err(self.e())?;
            let mut v: Vec<Image> = st
                .query_map([query, &like], |r| self.image_from_row(r))
                .map_err(self.e())?
                .collect::<rusqlite::Result<_>>()
                .map_err(self.e())?;
            if let Some(exact) = v.iter().position(|i| i.id == query) {
                v = vec![v.swap_remove(exact)];
            }
            v
        };
        match rows.len() {
            0 => Err(CatalogError::NotFound(query.into())),
            1 => self.fill(rows.into_iter().next().expect("one")),
            _ => Err(CatalogError::Ambiguous {
                query: query.into(),
                ids: rows.into_iter().map(|i| i.id.to_string()).collect(),
            }),
        }
    }

    pub fn list_images(&self, family: Option<&str>) -> Result<Vec<Image>> {
        let mut st = self
            .conn
            .prepare("SELECT * FROM images WHERE (?1 IS NULL OR family = ?1) ORDER BY created_at DESC, id DESC")
            .map_err(self.e())?;
        let v: Vec<Image> = st
            .query_map([family], |r| self.image_from_row(r))
            .map_err(self.e())?
            .collect::<rusqlite::Result<_>>()
            .map_err(self.e())?;
        v.into_iter().map(|i| self.fill(i)).collect()
    }

    /// The newest image of a family baked from exactly these inputs.
    pub fn find_by_inputs(&self, family: &str, inputs_digest: &str) -> Result<Option<Image>> {
        let img = self
            .conn
            .query_row(
                "SELECT * FROM images WHERE family = ?1 AND inputs_digest = ?2 ORDER BY created_at DESC LIMIT 1",
                [family, inputs_digest],
                |r| self.image_from_row(r),
            )
            .optional()
            .map_err(self.e())?;
        img.map(|i| self.fill(i)).transpose()
    }

    /// The image of `family` and the same architecture created just before `image_id` (for
    /// diffs and rollouts).
    pub fn previous_in_family(&self, img: &Image) -> Result<Option<Image>> {
        let prev = self
            .conn
            .query_row(
                "SELECT * FROM images WHERE family = ?1 AND id != ?2 AND (created_at < ?3 OR (created_at = ?3 AND id < ?2)) AND (?4 = '' OR arch = ?4 OR arch = '') ORDER BY created_at DESC, id DESC LIMIT 1",
                params![img.family, img.id, img.created_at, img.arch],
                |r| self.image_from_row(r),
            )
            .optional()
            .map_err(self.e())?;
        prev.map(|i| self.fill(i)).transpose()
    }

    fn bake_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Bake> {
        Ok(Bake {
            id: r.get("id")?,
            recipe_path: r.get("recipe_path")?,
            name: r.get("name")?,
            family: r.get("family")?,
            status: BakeStatus::parse(&r.get::<_, String>("status")?),
            started_at: r.get("started_at")?,
            finished_at: r.get("finished_at")?,
            log_path: r.get("log_path")?,
            error: r.get("error")?,
            image_id: r.get("image_id")?,
            pid: r.get("pid")?,
            inputs_digest: r.get("inputs_digest")?,
            host: r.get("host")?,
        })
    }

    pub fn list_bakes(&self, limit: usize) -> Result<Vec<Bake>> {
        let mut st = self
            .conn
            .prepare("SELECT * FROM bakes ORDER BY started_at DESC, id DESC LIMIT ?1")
            .map_err(self.e())?;
        st.query_map([limit as i64], Self::bake_from_row)
            .map_err(self.e())?
            .collect::<rusqlite::Result<_>>()
            .map_err(self.e())
    }

    pub fn get_bake(&self, id: &BakeId) -> Result<Option<Bake>> {
        self.conn
            .query_row(
                "SELECT * FROM bakes WHERE id = ?1",
                [id],
                Self::bake_from_row,
            )
            .optional()
            .map_err(self.e())
    }

    /// Bakes recorded as running whose process is gone (crashed or killed): marked failed.
    pub fn reap_stale_bakes(
        &self,
        host: &str,
        is_alive: &dyn Fn(i64) -> bool,
        now: i64,
    ) -> Result<Vec<Bake>> {
        let mut st = self
            .conn
            .prepare("SELECT * FROM bakes WHERE status = 'running' AND host = ?1")
            .map_err(self.e())?;
        let running: Vec<Bake> = st
            .query_map([host], Self::bake_from_row)
            .map_err(self.e())?
            .collect::<rusqlite::Result<_>>()
            .map_err(self.e())?;
        let mut stale = Vec::new();
        for b in running {
            if !is_alive(b.pid) {
                self.end_bake(&b.id, BakeStatus::Failed, Some("the bake process ended without finishing (crash or kill); cleaned by `webake clean`"), now)?;
                stale.push(b);
            }
        }
        Ok(stale)
    }

    /// Ids of bakes that did not finish successfully (for sweeping cloud resources).
    pub fn unfinished_bake_ids(&self) -> Result<Vec<BakeId>> {
        let mut st = self
            .conn
            .prepare("SELECT id FROM bakes WHERE status != 'succeeded'")
            .map_err(self.e())?;
        st.query_map([], |r| r.get(0))
            .map_err(self.e())?
            .collect::<rusqlite::Result<_>>()
            .map_err(self.e())
    }

    /// Integrity: every image's artifacts exist with their recorded size. Returns problems.
    pub fn check_artifacts(&self) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        for img in self.list_images(None)? {
            if img.artifacts.is_empty() {
                problems.push(format!("image {} has no artifacts", img.id));
            }
            for a in &img.artifacts {
                match std::fs::metadata(&a.path) {
                    Ok(m) if m.len() == a.size => {}
                    Ok(m) => problems.push(format!(
                        "image {}: {} is {} bytes, recorded {}",
                        img.id,
                        a.path.display(),
                        m.len(),
                        a.size
                    )),
                    Err(e) => problems.push(format!("image {}: {}: {e}", img.id, a.path.display())),
                }
            }
        }
        Ok(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bake(id: &str) -> Bake {
        Bake {
            id: id.into(),
            recipe_path: "r.yaml".into(),
            name: "n".into(),
            family: "f".into(),
            status: BakeStatus::Running,
            started_at: 1,
            finished_at: None,
            log_path: "/l".into(),
            error: None,
            image_id: None,
            pid: 999_999,
            inputs_digest: "d".into(),
            host: "h".into(),
        }
    }

    fn image(id: &str, bake: &str, created: i64) -> Image {
        Image {
            bake_id: bake.into(),
            inputs_digest: "d".into(),
            recipe_digest: "r".into(),
            kernel: Some("6.1".into()),
            tree_size: 10,
            provenance: Provenance {
                recipe: "r".into(),
                ..Provenance::default()
            },
            artifacts: vec![Artifact {
                format: ArtifactFormat::Raw,
                path: "/x.raw".into(),
                sha256: "ab".into(),
                size: 3,
            }],
            ..Image::bare(id, "n", "f", &format!("v{created}"), "x86_64", created)
        }
    }

    #[test]
    fn one_family_holds_an_image_per_architecture() {
        let d = tempfile::tempdir().unwrap();
        let mut c = Catalog::open(&d.path().join("catalog.db")).unwrap();
        for (id, arch, created) in [
            ("img-x1", "x86_64", 10),
            ("img-a1", "arm64", 10),
            ("img-x2", "x86_64", 20),
            ("img-a2", "arm64", 20),
        ] {
            c.begin_bake(&bake(id)).unwrap();
            let mut img = image(id, id, created);
            img.arch = arch.into();
            c.record_image(&img, created + 1).unwrap();
        }
        let host = HOST_ARCH;
        let latest = c.find_image("family:f").unwrap();
        assert_eq!((latest.arch.as_str(), latest.created_at), (host, 20));
        let arm = c.find_image("family:f@arm64").unwrap();
        assert_eq!(arm.id, "img-a2");
        assert_eq!(c.find_image("n:v10@arm64").unwrap().id, "img-a1");
        assert!(matches!(
            c.find_image("n:v10"),
            Err(CatalogError::Ambiguous { .. })
        ));
        // The previous image is the previous one of the same architecture.
        assert_eq!(c.previous_in_family(&arm).unwrap().unwrap().id, "img-a1");
        let x = c.find_image("img-x2").unwrap();
        assert_eq!(c.previous_in_family(&x).unwrap().unwrap().id, "img-x1");
    }

    #[test]
    fn schema_4_names_the_architecture_of_older_images() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("catalog.db");
        {
            let mut c = Catalog::open(&path).unwrap();
            c.begin_bake(&bake("b1")).unwrap();
            let mut img = image("img-old", "b1", 10);
            img.provenance.base.architecture = Some("arm64".into());
            c.record_image(&img, 11).unwrap();
            // As a schema-3 catalog left it: no arch column.
            c.conn
                .execute_batch(
                    "DROP INDEX images_family_arch; ALTER TABLE images DROP COLUMN arch; PRAGMA user_version = 3;",
                )
                .unwrap();
        }
        let c = Catalog::open(&path).unwrap();
        assert_eq!(c.find_image("img-old").unwrap().arch, "arm64");
    }

    #[test]
    fn records_and_finds_images() {
        let d = tempfile::tempdir().unwrap();
        let mut c = Catalog::open(&d.path().join("sub/catalog.db")).unwrap();
        c.begin_bake(&bake("b1")).unwrap();
        c.record_image(&image("img-aaa1", "b1", 10), 11).unwrap();
        c.begin_bake(&bake("b2")).unwrap();
        c.record_image(&image("img-aab2", "b2", 20), 21).unwrap();
        assert_eq!(c.find_image("img-aaa1").unwrap().artifacts.len(), 1);
        assert_eq!(c.find_image("img-aab").unwrap().id, "img-aab2");
        assert!(matches!(
            c.find_image("img-aa"),
            Err(CatalogError::Ambiguous { .. })
        ));
        assert!(matches!(
            c.find_image("nope"),
            Err(CatalogError::NotFound(_))
        ));
        assert_eq!(c.find_image("family:f").unwrap().id, "img-aab2");
        assert_eq!(c.find_image("n:v10").unwrap().id, "img-aaa1");
        let latest = c.find_image("family:f").unwrap();
        assert_eq!(
            c.previous_in_family(&latest).unwrap().unwrap().id,
            "img-aaa1"
        );
        assert_eq!(
            c.get_bake(&"b1".into()).unwrap().unwrap().status,
            BakeStatus::Succeeded
        );
        assert_eq!(c.find_by_inputs("f", "d").unwrap().unwrap().id, "img-aab2");
        c.add_publication(
            &"img-aab2".into(),
            &Publication::Aws {
                region: "eu-west-1".into(),
                ami_id: "ami-1".into(),
                snapshot_id: Some("snap-1".into()),
                name: "n".into(),
                created_at: 5,
                run_id: Some("run-1".into()),
            },
        )
        .unwrap();
        let img = c.find_image("img-aab2").unwrap();
        assert_eq!(img.publications[0].ami(), Some(("eu-west-1", "ami-1")));
        assert_eq!(img.provenance.recipe, "r");
    }

    #[test]
    fn failed_image_insert_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let mut c = Catalog::open(&d.path().join("c.db")).unwrap();
        c.begin_bake(&bake("b1")).unwrap();
        let mut img = image("img-1", "b1", 1);
        img.artifacts.push(img.artifacts[0].clone()); // duplicate primary key -> the insert fails
        assert!(c.record_image(&img, 2).is_err());
        assert!(c.list_images(None).unwrap().is_empty());
        assert_eq!(
            c.get_bake(&"b1".into()).unwrap().unwrap().status,
            BakeStatus::Running
        );
    }

    #[test]
    fn stale_running_bakes_are_reaped() {
        let d = tempfile::tempdir().unwrap();
        let c = Catalog::open(&d.path().join("c.db")).unwrap();
        c.begin_bake(&bake("dead")).unwrap();
        let stale = c.reap_stale_bakes("h", &|_| false, 5).unwrap();
        assert_eq!(stale.len(), 1);
        assert_eq!(
            c.get_bake(&"dead".into()).unwrap().unwrap().status,
            BakeStatus::Failed
        );
        assert_eq!(c.unfinished_bake_ids().unwrap(), vec![BakeId::from("dead")]);
    }

    #[test]
    fn concurrent_first_opens_of_a_new_catalog_do_not_fail() {
        // Regression: three bakes started at once on a new catalog failed with
        // "database is locked" while switching to WAL.
        for round in 0..5 {
            let d = tempfile::tempdir().unwrap();
            let path = d.path().join(format!("c{round}.db"));
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(6));
            let threads: Vec<_> = (0..6)
                .map(|t| {
                    let (path, barrier) = (path.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        let c = Catalog::open(&path).unwrap();
                        c.begin_bake(&bake(&format!("b{t}"))).unwrap();
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!(
                Catalog::open(&path).unwrap().list_bakes(10).unwrap().len(),
                6
            );
        }
    }

    #[test]
    fn concurrent_writers_do_not_fail() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("c.db");
        Catalog::open(&path).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let mut c = Catalog::open(&path).unwrap();
                    for i in 0..25 {
                        let b = format!("b{t}-{i}");
                        c.begin_bake(&bake(&b)).unwrap();
                        c.record_image(&image(&format!("img-{t}-{i}"), &b, i), i)
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(
            Catalog::open(&path)
                .unwrap()
                .list_images(None)
                .unwrap()
                .len(),
            100
        );
    }
}
