//! What `webake gc` removed, and what of an image remains.
//!
//! Each removed thing (a file, an AMI, a snapshot) is one `removals` row, written in the same
//! transaction that updates the artifact or publication row describing it: after any step, and
//! after a failure between steps, the catalog says exactly what remains. An image of which
//! nothing remains is replaced by a tombstone (who it was, when and why it was removed); its
//! removals stay, so the tombstone lists what was removed and when.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::{ArtifactFormat, BakeId, Catalog, CatalogError, Image, ImageId, Publication, Result};

/// Schema 3: deprecation times of AWS publications, removals, tombstones.
pub(crate) const MIGRATION_V3: &str = "ALTER TABLE publications ADD COLUMN deprecated_at INTEGER;
    CREATE TABLE IF NOT EXISTS removals (
        image_id TEXT NOT NULL, what TEXT NOT NULL, removed_at INTEGER NOT NULL,
        reason TEXT NOT NULL);
    CREATE INDEX IF NOT EXISTS removals_image ON removals(image_id, removed_at);
    CREATE TABLE IF NOT EXISTS tombstones (
        image_id TEXT PRIMARY KEY, bake_id TEXT NOT NULL, name TEXT NOT NULL,
        family TEXT NOT NULL, version TEXT NOT NULL, created_at INTEGER NOT NULL,
        inputs_digest TEXT NOT NULL, removed_at INTEGER NOT NULL, reason TEXT NOT NULL);
    CREATE INDEX IF NOT EXISTS tombstones_family ON tombstones(family, created_at);
    PRAGMA user_version = 3;";

/// One thing of an image that is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Removed {
    /// A file: a recorded artifact (`format`), or a file written next to one (an SBOM).
    File {
        path: PathBuf,
        bytes: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        format: Option<ArtifactFormat>,
    },
    /// A deregistered AMI; `snapshots` are the ones it used, each removed on its own next.
    Ami {
        region: String,
        ami_id: String,
        #[serde(default)]
        snapshots: Vec<String>,
    },
    /// A deleted EBS snapshot.
    Snapshot { region: String, snapshot_id: String },
}

impl fmt::Display for Removed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File { path, bytes, .. } => write!(f, "file {} ({bytes} bytes)", path.display()),
            Self::Ami { region, ami_id, .. } => write!(f, "AMI {ami_id} in {region}"),
            Self::Snapshot {
                region,
                snapshot_id,
            } => write!(f, "snapshot {snapshot_id} in {region}"),
        }
    }
}

/// A removal as recorded: what, when (Unix seconds) and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removal {
    pub image_id: ImageId,
    pub removed: Removed,
    pub removed_at: i64,
    pub reason: String,
}

/// What the catalog keeps of an image `gc` removed entirely.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    pub image_id: ImageId,
    pub bake_id: BakeId,
    pub name: String,
    pub family: String,
    pub version: String,
    pub created_at: i64,
    pub inputs_digest: String,
    pub removed_at: i64,
    pub reason: String,
    /// Everything removed from it, oldest first.
    pub removed: Vec<Removal>,
}

fn json_err(e: serde_json::Error) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(e.into())
}

impl Catalog {
    /// Record that `removed` of `image` is gone, in one transaction with the rows that described
    /// it: a removed artifact's row (and a local publication of that file) is deleted; a
    /// deregistered AMI's publication keeps only its snapshot; a deleted snapshot's publication
    /// row goes when it holds neither an AMI nor a snapshot any more.
    pub fn record_removal(
        &mut self,
        image: &ImageId,
        removed: &Removed,
        reason: &str,
        at: i64,
    ) -> Result<()> {
        let path = self.path.clone();
        let e = |source| CatalogError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(e)?;
        match removed {
            Removed::File { path, format, .. } => {
                if let Some(format) = format {
                    tx.execute(
                        "DELETE FROM artifacts WHERE image_id = ?1 AND format = ?2",
                        params![image, format.as_str()],
                    )
                    .map_err(e)?;
                }
                tx.execute(
                    "DELETE FROM publications WHERE image_id = ?1 AND target = 'local' AND name = ?2",
                    params![image, path.to_string_lossy()],
                )
                .map_err(e)?;
            }
            Removed::Ami {
                region,
                ami_id,
                snapshots,
            } => {
                tx.execute(
                    "UPDATE publications SET ami_id = NULL, snapshot_id = COALESCE(snapshot_id, ?4)
                     WHERE image_id = ?1 AND target = 'aws' AND region = ?2 AND ami_id = ?3",
                    params![image, region, ami_id, snapshots.first()],
                )
                .map_err(e)?;
            }
            Removed::Snapshot {
                region,
                snapshot_id,
            } => {
                tx.execute(
                    "UPDATE publications SET snapshot_id = NULL
                     WHERE image_id = ?1 AND target = 'aws' AND region = ?2 AND snapshot_id = ?3",
                    params![image, region, snapshot_id],
                )
                .map_err(e)?;
            }
        }
        tx.execute(
            "DELETE FROM publications WHERE image_id = ?1 AND target = 'aws'
             AND ami_id IS NULL AND snapshot_id IS NULL",
            [image],
        )
        .map_err(e)?;
        let what = serde_json::to_string(removed).map_err(|j| e(json_err(j)))?;
        tx.execute(
            "INSERT INTO removals (image_id, what, removed_at, reason) VALUES (?1, ?2, ?3, ?4)",
            params![image, what, at, reason],
        )
        .map_err(e)?;
        tx.commit().map_err(e)?;
        Ok(())
    }

    /// Record that the AMI of `image` in `region` was deprecated at `at` (Unix seconds).
    pub fn mark_deprecated(
        &self,
        image: &ImageId,
        region: &str,
        ami_id: &str,
        at: i64,
    ) -> Result<()> {
        self.conn
            .execute(
                "UPDATE publications SET deprecated_at = ?4
                 WHERE image_id = ?1 AND target = 'aws' AND region = ?2 AND ami_id = ?3",
                params![image, region, ami_id, at],
            )
            .map_err(self.e())?;
        Ok(())
    }

    /// When each AWS publication of `image` was deprecated: region -> Unix seconds.
    pub fn deprecations(&self, image: &ImageId) -> Result<BTreeMap<String, i64>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT region, deprecated_at FROM publications
                 WHERE image_id = ?1 AND target = 'aws' AND deprecated_at IS NOT NULL",
            )
            .map_err(self.e())?;
        st.query_map([image], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(self.e())?
            .collect::<rusqlite::Result<_>>()
            .map_err(self.e())
    }

    /// The removals recorded for `image`, oldest first.
    pub fn removals(&self, image: &ImageId) -> Result<Vec<Removal>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT what, removed_at, reason FROM removals WHERE image_id = ?1
                 ORDER BY removed_at, rowid",
            )
            .map_err(self.e())?;
        st.query_map([image], |r| {
            let what: String = r.get(0)?;
            Ok(Removal {
                image_id: image.clone(),
                removed: serde_json::from_str(&what).map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(
                        0,
                        rusqlite::types::Type::Text,
                        e.into(),
                    )
                })?,
                removed_at: r.get(1)?,
                reason: r.get(2)?,
            })
        })
        .map_err(self.e())?
        .collect::<rusqlite::Result<_>>()
        .map_err(self.e())
    }

    /// The image with exactly this id, if the catalog has it (not a tombstone).
    pub fn get_image(&self, id: &ImageId) -> Result<Option<Image>> {
        let img = self
            .conn
            .query_row("SELECT * FROM images WHERE id = ?1", [id], |r| {
                self.image_from_row(r)
            })
            .optional()
            .map_err(self.e())?;
        img.map(|i| self.fill(i)).transpose()
    }

    /// What of `img` still exists, as the catalog knows it: its artifacts, its AWS
    /// publications (an AMI, or the snapshot of a deregistered one), and snapshots of AMIs `gc`
    /// deregistered that were not deleted yet.
    pub fn remains(&self, img: &Image) -> Result<Vec<String>> {
        let mut out: Vec<String> = img
            .artifacts
            .iter()
            .map(|a| format!("file {}", a.path.display()))
            .collect();
        for p in &img.publications {
            if let Publication::Aws {
                region,
                ami_id,
                snapshot_id,
                ..
            } = p
            {
                if !ami_id.is_empty() {
                    out.push(format!("AMI {ami_id} in {region}"));
                } else if let Some(s) = snapshot_id {
                    out.push(format!("snapshot {s} in {region}"));
                }
            }
        }
        let removals = self.removals(&img.id)?;
        for r in &removals {
            let Removed::Ami {
                region, snapshots, ..
            } = &r.removed
            else {
                continue;
            };
            for s in snapshots {
                let gone = removals.iter().any(|d| {
                    matches!(&d.removed, Removed::Snapshot { region: dr, snapshot_id } if dr == region && snapshot_id == s)
                });
                let line = format!("snapshot {s} in {region}");
                if !gone && !out.contains(&line) {
                    out.push(line);
                }
            }
        }
        Ok(out)
    }

    /// Replace `image` by its tombstone: refused while anything of it remains (see
    /// [`Catalog::remains`]). Its removals are kept; the tombstone lists them.
    pub fn bury(&mut self, image: &ImageId, reason: &str, at: i64) -> Result<Tombstone> {
        let img = self
            .get_image(image)?
            .ok_or_else(|| CatalogError::NotFound(image.to_string()))?;
        let remains = self.remains(&img)?;
        if !remains.is_empty() {
            return Err(CatalogError::StillHolds {
                image: image.to_string(),
                remains,
            });
        }
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
            "INSERT INTO tombstones (image_id, bake_id, name, family, version, created_at, inputs_digest, removed_at, reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![img.id, img.bake_id, img.name, img.family, img.version, img.created_at, img.inputs_digest, at, reason],
        )
        .map_err(e)?;
        tx.execute("DELETE FROM images WHERE id = ?1", [image])
            .map_err(e)?;
        tx.commit().map_err(e)?;
        self.tombstone(image)?
            .ok_or_else(|| CatalogError::NotFound(image.to_string()))
    }

    /// The tombstone of `image`, if `gc` removed it.
    pub fn tombstone(&self, image: &ImageId) -> Result<Option<Tombstone>> {
        Ok(self
            .tombstones(None)?
            .into_iter()
            .find(|t| &t.image_id == image))
    }

    /// Tombstones (of one family, or all), the most recently removed first.
    pub fn tombstones(&self, family: Option<&str>) -> Result<Vec<Tombstone>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT image_id, bake_id, name, family, version, created_at, inputs_digest, removed_at, reason
                 FROM tombstones WHERE (?1 IS NULL OR family = ?1) ORDER BY removed_at DESC, image_id",
            )
            .map_err(self.e())?;
        let rows: Vec<Tombstone> = st
            .query_map([family], |r| {
                Ok(Tombstone {
                    image_id: r.get(0)?,
                    bake_id: r.get(1)?,
                    name: r.get(2)?,
                    family: r.get(3)?,
                    version: r.get(4)?,
                    created_at: r.get(5)?,
                    inputs_digest: r.get(6)?,
                    removed_at: r.get(7)?,
                    reason: r.get(8)?,
                    removed: Vec::new(),
                })
            })
            .map_err(self.e())?
            .collect::<rusqlite::Result<_>>()
            .map_err(self.e())?;
        rows.into_iter()
            .map(|mut t| {
                t.removed = self.removals(&t.image_id)?;
                Ok(t)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Artifact;

    fn image(id: &str) -> Image {
        Image {
            inputs_digest: "d".into(),
            recipe_digest: "r".into(),
            tree_size: 1,
            artifacts: vec![Artifact {
                format: ArtifactFormat::Raw,
                path: "/i/n-1.raw".into(),
                sha256: "00".into(),
                size: 4,
            }],
            ..Image::bare(id, "n", "f", "1", "x86_64", 10)
        }
    }

    #[test]
    fn removals_update_the_rows_then_the_image_becomes_a_tombstone() {
        let d = tempfile::tempdir().unwrap();
        let mut c = Catalog::open(&d.path().join("c.db")).unwrap();
        let img = image("img-1");
        c.record_image(&img, 11).unwrap();
        c.add_publication(
            &img.id,
            &Publication::Local {
                name: "/i/n-1.raw".into(),
                created_at: 12,
            },
        )
        .unwrap();
        // A publication recorded without its snapshot: the AMI's snapshot is kept in its row.
        c.add_publication(
            &img.id,
            &Publication::Aws {
                region: "eu-west-1".into(),
                ami_id: "ami-1".into(),
                snapshot_id: None,
                name: "n".into(),
                created_at: 12,
                run_id: None,
            },
        )
        .unwrap();
        let ami = Removed::Ami {
            region: "eu-west-1".into(),
            ami_id: "ami-1".into(),
            snapshots: vec!["snap-1".into()],
        };
        c.record_removal(&img.id, &ami, "older than 30d", 20)
            .unwrap();
        let now = c.get_image(&img.id).unwrap().unwrap();
        assert!(
            matches!(
                &now.publications[..],
                [Publication::Aws { ami_id, snapshot_id: Some(s), .. }, Publication::Local { .. }]
                    if ami_id.is_empty() && s == "snap-1"
            ),
            "{:?}",
            now.publications
        );
        assert_eq!(now.publications[0].ami(), None);
        let snap = Removed::Snapshot {
            region: "eu-west-1".into(),
            snapshot_id: "snap-1".into(),
        };
        c.record_removal(&img.id, &snap, "older than 30d", 21)
            .unwrap();
        let file = Removed::File {
            path: "/i/n-1.raw".into(),
            bytes: 4,
            format: Some(ArtifactFormat::Raw),
        };
        c.record_removal(&img.id, &file, "older than 30d", 22)
            .unwrap();
        let now = c.get_image(&img.id).unwrap().unwrap();
        assert!(
            now.artifacts.is_empty() && now.publications.is_empty(),
            "{now:?}"
        );
        assert!(c.remains(&now).unwrap().is_empty());
        let t = c.bury(&img.id, "older than 30d", 23).unwrap();
        assert_eq!(t.removed_at, 23);
        assert_eq!(
            t.removed
                .iter()
                .map(|r| r.removed.clone())
                .collect::<Vec<_>>(),
            [ami, snap, file]
        );
        assert!(c.get_image(&img.id).unwrap().is_none());
        assert!(c.list_images(None).unwrap().is_empty());
        assert_eq!(c.tombstones(Some("f")).unwrap(), [t]);
    }

    #[test]
    fn a_snapshot_left_by_a_deregistered_ami_blocks_the_tombstone() {
        let d = tempfile::tempdir().unwrap();
        let mut c = Catalog::open(&d.path().join("c.db")).unwrap();
        let mut img = image("img-2");
        img.artifacts.clear();
        c.record_image(&img, 11).unwrap();
        // An AMI with two snapshots, one of which the publication row names.
        c.add_publication(
            &img.id,
            &Publication::Aws {
                region: "us-east-1".into(),
                ami_id: "ami-2".into(),
                snapshot_id: Some("snap-a".into()),
                name: "n".into(),
                created_at: 12,
                run_id: None,
            },
        )
        .unwrap();
        let ami = Removed::Ami {
            region: "us-east-1".into(),
            ami_id: "ami-2".into(),
            snapshots: vec!["snap-a".into(), "snap-b".into()],
        };
        c.record_removal(&img.id, &ami, "gc", 20).unwrap();
        c.record_removal(
            &img.id,
            &Removed::Snapshot {
                region: "us-east-1".into(),
                snapshot_id: "snap-a".into(),
            },
            "gc",
            21,
        )
        .unwrap();
        let now = c.get_image(&img.id).unwrap().unwrap();
        assert!(now.publications.is_empty());
        assert_eq!(c.remains(&now).unwrap(), ["snapshot snap-b in us-east-1"]);
        let err = c.bury(&img.id, "gc", 22).unwrap_err();
        assert!(err.to_string().contains("snap-b"), "{err}");
    }
}
