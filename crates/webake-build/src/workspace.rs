//! Where a bake keeps its files.
//!
//! - `cache_dir/bootstrap/<key>/`  finished bootstrap trees (lowest overlay layer)
//! - `cache_dir/layers/<key>/`     finished step layers (overlay upper dirs)
//! - `cache_dir/packages/`         downloaded .deb files shared between bakes
//! - `cache_dir/tmp/<bake-id>/`    per-bake scratch (layers in progress, export tree)
//! - `cache_dir/leases/<bake-id>`  a running bake's lease (see [`BakeLease`])
//! - `cache_dir/locks/<kind>-<key>.lock`  held while a bake builds that entry ([`EntryLock`])
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
    pub fn leases_dir(&self) -> PathBuf {
        self.cache_dir.join("leases")
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

    /// Remove the entry lock files ([`EntryLock`]). Only with the cache lock held exclusively
    /// (`cache gc|clear`): no bake is running, so no entry lock is held; they are created again
    /// on demand.
    pub fn remove_entry_locks(&self, _exclusive: &CacheLock) -> Result<()> {
        let dir = self.cache_dir.join("locks");
        webake_sys::fsutil::remove_dir_all_if_exists(&dir).map_err(|e| BuildError::io(&dir, e))
    }

    pub fn ensure(&self) -> Result<()> {
        for d in [
            self.bootstrap_dir(),
            self.layers_dir(),
            self.packages_dir(),
            self.scratch_root(),
            self.leases_dir(),
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

/// An advisory lock on the cache directory (flock on `cache_dir/.lock`), released on drop.
pub struct CacheLock {
    _file: std::fs::File,
}

impl CacheLock {
    fn open(cache_dir: &Path) -> Result<std::fs::File> {
        mkdir_p(cache_dir)?;
        let p = cache_dir.join(".lock");
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| BuildError::io(&p, e))
    }

    /// Shared: any number of bakes at once.
    pub fn shared(cache_dir: &Path) -> Result<Self> {
        let f = Self::open(cache_dir)?;
        flock(&f, libc_lock::SH).map_err(|e| BuildError::io(cache_dir.join(".lock"), e))?;
        Ok(Self { _file: f })
    }

    /// Exclusive, without waiting: `None` if bakes are running.
    pub fn try_exclusive(cache_dir: &Path) -> Result<Option<Self>> {
        let f = Self::open(cache_dir)?;
        match flock(&f, libc_lock::EX | libc_lock::NB) {
            Ok(()) => Ok(Some(Self { _file: f })),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(BuildError::io(cache_dir.join(".lock"), e)),
        }
    }
}

mod libc_lock {
    pub const SH: i32 = 1;
    pub const EX: i32 = 2;
    pub const NB: i32 = 4;
}

fn flock(f: &std::fs::File, op: i32) -> std::io::Result<()> {
    use std::fs::TryLockError;
    let r = match (op & libc_lock::EX != 0, op & libc_lock::NB != 0) {
        (false, _) => return f.lock_shared(),
        (true, false) => return f.lock(),
        (true, true) => f.try_lock(),
    };
    match r {
        Ok(()) => Ok(()),
        Err(TryLockError::WouldBlock) => Err(std::io::Error::from(std::io::ErrorKind::WouldBlock)),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// An exclusive lock on one cache entry while a bake builds it (flock on
/// `cache_dir/locks/<kind>-<key>.lock`). A second bake that needs the same base or layer (two
/// recipes on one base, baked at once) waits for the first and uses what it committed instead
/// of building it again. Released on drop, and by the kernel when the process dies.
#[must_use]
pub struct EntryLock {
    _file: std::fs::File,
}

impl EntryLock {
    /// Take the lock, waiting (and polling `cancel`) while another bake holds it; `waiting`
    /// is called once if it has to wait.
    pub fn acquire(
        cache_dir: &Path,
        kind: &str,
        key: &str,
        cancel: &webake_sys::CancelToken,
        waiting: &mut dyn FnMut(),
    ) -> Result<Self> {
        let p = entry_lock_path(cache_dir, kind, key);
        if let Some(dir) = p.parent() {
            mkdir_p(dir)?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| BuildError::io(&p, e))?;
        let mut said = false;
        loop {
            match flock(&f, libc_lock::EX | libc_lock::NB) {
                Ok(()) => return Ok(Self { _file: f }),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if !said {
                        waiting();
                        said = true;
                    }
                    if cancel.is_cancelled() {
                        return Err(BuildError::Cancelled);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                Err(e) => return Err(BuildError::io(&p, e)),
            }
        }
    }
}

/// The lock file of one cache entry ([`EntryLock`]).
fn entry_lock_path(cache_dir: &Path, kind: &str, key: &str) -> PathBuf {
    cache_dir.join("locks").join(format!("{kind}-{key}.lock"))
}

/// Is the lock of this cache entry held (a bake is building it right now)? An entry without
/// `meta.json` whose lock is held is being completed, not corrupt.
pub fn entry_lock_held(cache_dir: &Path, kind: &str, key: &str) -> bool {
    let p = entry_lock_path(cache_dir, kind, key);
    let Ok(f) = std::fs::File::open(&p) else {
        return false;
    };
    matches!(flock(&f, libc_lock::EX | libc_lock::NB), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// A running bake's claim on its files: its scratch directory and staging entries in the
/// cache, and its image directory. An exclusive flock on `cache_dir/leases/<bake-id>` held for
/// the life of the bake process (the kernel drops it when the process dies, SIGKILL included).
/// Liveness therefore comes from the cache every bake shares, not from one catalog's rows:
/// `webake clean` run against another catalog still sees the bake as running.
#[must_use]
pub struct BakeLease {
    file: std::fs::File,
    path: PathBuf,
}

/// What a live lease says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    pub bake_id: String,
    pub image_id: String,
}

impl BakeLease {
    pub fn acquire(cache_dir: &Path, bake_id: &str, image_id: &str) -> Result<Self> {
        use std::io::Write;
        use std::os::unix::fs::MetadataExt;
        let dir = cache_dir.join("leases");
        mkdir_p(&dir)?;
        let path = dir.join(bake_id);
        // A cleaner may remove a lease file it could lock (a dead bake's) between our open and
        // our lock: retry until the locked file is the one at the path.
        for _ in 0..100 {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| BuildError::io(&path, e))?;
            flock(&file, libc_lock::EX).map_err(|e| BuildError::io(&path, e))?;
            let same = std::fs::metadata(&path)
                .ok()
                .zip(file.metadata().ok())
                .is_some_and(|(a, b)| a.ino() == b.ino() && a.dev() == b.dev());
            if !same {
                continue;
            }
            file.set_len(0).map_err(|e| BuildError::io(&path, e))?;
            writeln!(file, "{image_id}").map_err(|e| BuildError::io(&path, e))?;
            return Ok(Self { file, path });
        }
        Err(BuildError::Invalid(format!(
            "{}: could not take the bake's lease",
            path.display()
        )))
    }
}

impl Drop for BakeLease {
    fn drop(&mut self) {
        // Removed while still locked; the lock goes with the file descriptor.
        let _ = std::fs::remove_file(&self.path);
        let _ = &self.file;
    }
}

/// The leases of bakes that are running now (any catalog). Leases of dead bakes are removed
/// unless `dry_run`.
pub fn live_leases(cache_dir: &Path, dry_run: bool) -> Result<Vec<LeaseInfo>> {
    let dir = cache_dir.join("leases");
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Ok(out);
    };
    for e in rd.flatten() {
        let path = e.path();
        let Ok(file) = std::fs::OpenOptions::new().read(true).open(&path) else {
            continue;
        };
        match flock(&file, libc_lock::EX | libc_lock::NB) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let image_id = std::fs::read_to_string(&path)
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                out.push(LeaseInfo {
                    bake_id: e_name(&path),
                    image_id,
                });
            }
            Ok(()) if !dry_run => {
                let _ = std::fs::remove_file(&path);
            }
            _ => {}
        }
    }
    Ok(out)
}

fn e_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// One cache entry (a bootstrap base or a step layer).
#[derive(Debug, Clone, serde::Serialize)]
pub struct CacheEntry {
    pub kind: &'static str,
    pub key: String,
    pub path: PathBuf,
    pub label: String,
    pub bytes: u64,
    /// Unix seconds of the last use (meta.json mtime, touched on every hit).
    pub last_used: i64,
    pub complete: bool,
}

impl Workspace {
    /// Every entry of the bootstrap and layer caches.
    pub fn cache_entries(&self) -> Vec<CacheEntry> {
        let mut v = Vec::new();
        for (kind, dir) in [
            ("bootstrap", self.bootstrap_dir()),
            ("layer", self.layers_dir()),
        ] {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                let meta = e.path().join("meta.json");
                let complete = meta.is_file();
                let label = std::fs::read_to_string(&meta)
                    .ok()
                    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                    .and_then(|v| {
                        v.get("label")
                            .and_then(|l| l.as_str())
                            .map(String::from)
                            .or_else(|| {
                                v.pointer("/plan/suite")
                                    .and_then(|s| s.as_str())
                                    .map(|s| format!("mmdebstrap {s}"))
                            })
                    })
                    .unwrap_or_default();
                let entry_path = e.path();
                let last_used = std::fs::metadata(if complete { &meta } else { &entry_path })
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                v.push(CacheEntry {
                    kind,
                    key: name,
                    path: e.path(),
                    label,
                    bytes: du(&e.path()),
                    last_used,
                    complete,
                });
            }
        }
        v.sort_by_key(|e| std::cmp::Reverse(e.last_used));
        v
    }
}

/// Disk usage of a tree (allocated blocks, not apparent size; symlinks not followed).
pub fn du(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(md) = std::fs::symlink_metadata(&d) else {
            continue;
        };
        total += md.blocks() * 512;
        if md.is_dir()
            && let Ok(rd) = std::fs::read_dir(&d)
        {
            stack.extend(rd.flatten().map(|e| e.path()));
        }
    }
    total
}

/// Least-recently-used eviction down to `max_bytes`. Incomplete entries go first. Returns
/// the entries removed. The caller holds the exclusive cache lock.
pub fn evict_lru(
    entries: Vec<CacheEntry>,
    max_bytes: u64,
    dry_run: bool,
) -> Result<Vec<CacheEntry>> {
    let mut total: u64 = entries.iter().map(|e| e.bytes).sum();
    let mut order = entries;
    // Oldest first; incomplete (never usable) before everything.
    order.sort_by_key(|e| (e.complete, e.last_used));
    let mut removed = Vec::new();
    for e in order {
        if total <= max_bytes && e.complete {
            break;
        }
        if !dry_run {
            crate::workspace::remove_tree(&e.path)?;
        }
        total = total.saturating_sub(e.bytes);
        removed.push(e);
    }
    Ok(removed)
}

pub fn remove_tree(p: &Path) -> Result<()> {
    webake_sys::fsutil::remove_dir_all_if_exists(p).map_err(|e| BuildError::io(p, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second claim on an entry waits (saying so once) until the first is released; a
    /// cancelled wait stops with `Cancelled`; another entry is not held up.
    #[test]
    fn entry_locks_make_the_second_builder_wait() {
        let d = tempfile::tempdir().unwrap();
        let cancel = webake_sys::CancelToken::new();
        let first = EntryLock::acquire(d.path(), "layer", "k1", &cancel, &mut || {}).unwrap();
        let mut waited = 0;
        let other = EntryLock::acquire(d.path(), "layer", "k2", &cancel, &mut || waited += 1);
        assert!(other.is_ok() && waited == 0, "another key does not wait");

        let released = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(500));
                released.store(true, std::sync::atomic::Ordering::SeqCst);
                drop(first);
            });
            let mut said = 0;
            let second =
                EntryLock::acquire(d.path(), "layer", "k1", &cancel, &mut || said += 1).unwrap();
            assert!(released.load(std::sync::atomic::Ordering::SeqCst));
            assert_eq!(said, 1);
            drop(second);
        });

        let _held = EntryLock::acquire(d.path(), "bootstrap", "b", &cancel, &mut || {}).unwrap();
        let stopper = cancel.clone();
        let r = std::thread::scope(|s| {
            s.spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(300));
                stopper.cancel();
            });
            EntryLock::acquire(d.path(), "bootstrap", "b", &cancel, &mut || {})
        });
        assert!(matches!(r, Err(BuildError::Cancelled)));
        drop(_held);

        // cache gc|clear, holding the cache lock exclusively, removes the lock files.
        let ws = Workspace::new(d.path().join("data"), d.path());
        let exclusive = CacheLock::try_exclusive(d.path()).unwrap().unwrap();
        assert!(d.path().join("locks/layer-k1.lock").is_file());
        ws.remove_entry_locks(&exclusive).unwrap();
        assert!(!d.path().join("locks").exists());
    }
}
