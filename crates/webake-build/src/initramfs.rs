//! The base's initramfs, built beside the copy of the tree and the provisioner steps.
//!
//! Building the initramfs is the bootstrap's last and single-threaded job (7 s natively, about
//! 160 s under qemu-user), and the steps rarely need it. So the bootstrap
//! ([`crate::bootstrap::BOOTSTRAP_SCRIPT`]) gives every kernel an empty placeholder
//! `boot/initrd.img-V`, starts building the real one in the background (chrooted into an
//! overlay over the fresh tree, in the bootstrap's sandbox) and says when the tree is ready;
//! the bake then goes on with the steps while the script finishes the initramfs and copies it
//! into the cache entry's `initramfs/` layer, which the export merges right above the root
//! filesystem. The steps see the placeholder:
//! - a step that rebuilds the initramfs (`update-initramfs -u`, triggered by a package with an
//!   initramfs hook: initramfs-tools only updates versions whose initrd file exists) writes a
//!   real one into its own layer, which is above and wins;
//! - a step that removes the kernel removes the placeholder: its whiteout hides the background
//!   build too.
//!
//! When no step changed a placeholder, the export does not wait: `Base::defer` hands the
//! initramfs to the assembly as a `Late` file, which puts it in place of the placeholder in
//! the root filesystem once `mkfs.ext4` has made it (`assemble::put_late_files`).
//!
//! The cache entry is committed when the tree is ready, without `meta.json`, and completed
//! (other bakes of the base stop waiting on its lock) as soon as the initramfs is built. A
//! failed or killed build fails the bake and removes the incomplete entry.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use webake_sys::CancelToken;
use webake_sys::process::Running;

use crate::bake::Run;
use crate::error::{BuildError, Result};
use crate::reporter::CacheStatus;
use crate::workspace::EntryLock;

/// The entry's layer with the initramfs.
pub const LAYER: &str = "initramfs";

/// The line the bootstrap script prints when the tree is complete, followed by the kernel
/// versions whose initramfs is still being built.
pub const READY: &str = "webake: tree ready:";

/// Run the bootstrap `cmd` until its tree is ready. Returns the still running process (none
/// if it already ended, successfully) and the kernel versions whose initramfs it builds.
pub(crate) fn run_until_ready(
    run: &Run<'_>,
    step: &str,
    cmd: &webake_sys::Cmd,
) -> Result<(Option<Running>, Vec<String>)> {
    let req = run.req;
    req.log.line(step, &format!("$ {cmd}"));
    let t = Instant::now();
    let mut proc =
        webake_sys::process::spawn(cmd).map_err(|e| BuildError::from(e).in_step(step))?;
    let mut versions = None;
    let ended = proc.pump(
        &req.cancel,
        &mut |line| run.say(step, line),
        crate::reporter::HEARTBEAT,
        &mut |elapsed| req.reporter.progress(step, elapsed),
        &mut |line| match line.strip_prefix(READY) {
            Some(v) => {
                versions = Some(v.split_whitespace().map(str::to_string).collect::<Vec<_>>());
                true
            }
            None => false,
        },
    );
    req.log.line(
        step,
        &format!("  (tree ready in {:.2}s)", t.elapsed().as_secs_f64()),
    );
    if !ended {
        return Ok((Some(proc), versions.unwrap_or_default()));
    }
    proc.wait(&req.cancel)
        .map_err(|e| BuildError::from(e).in_step(step))?;
    match versions {
        Some(v) if v.is_empty() => Ok((None, v)),
        _ => Err(
            BuildError::Invalid(format!("the bootstrap ended without saying `{READY}`"))
                .in_step(step),
        ),
    }
}

/// The base the steps run on and the layers the export merges under theirs.
pub(crate) struct Base {
    /// The tree the steps run on (the lowest layer).
    pub rootfs: PathBuf,
    layer: Layer,
}

enum Layer {
    /// The initramfs is in the tree (a prepared base, a bootstrap without kernel).
    InTree,
    /// Built apart: the cache entry's layer.
    Ready(PathBuf),
    /// Being built.
    Building(Box<Pending>),
}

impl Base {
    pub fn in_tree(rootfs: PathBuf) -> Self {
        Self {
            rootfs,
            layer: Layer::InTree,
        }
    }

    /// A cached entry: its initramfs layer, if it has one.
    pub fn cached(rootfs: PathBuf) -> Self {
        let layer = rootfs.with_file_name(LAYER);
        Self {
            layer: if layer.is_dir() {
                Layer::Ready(layer)
            } else {
                Layer::InTree
            },
            rootfs,
        }
    }

    /// The layers of the base, top first: waits for the initramfs if it is being built (and
    /// fails if that failed).
    pub fn finish(self, run: &mut Run<'_>) -> Result<Vec<PathBuf>> {
        Ok(match self.layer.wait(run)? {
            Some(layer) => vec![layer, self.rootfs],
            None => vec![self.rootfs],
        })
    }
}

impl Layer {
    /// The initramfs layer, once built (none when the initramfs is in the tree).
    fn wait(self, run: &mut Run<'_>) -> Result<Option<PathBuf>> {
        Ok(match self {
            Layer::InTree => None,
            Layer::Ready(l) => Some(l),
            Layer::Building(p) => Some((*p).finish(run)?),
        })
    }
}

/// Where the initrd of kernel `version` is, relative to the root.
fn initrd_rel(version: &str) -> PathBuf {
    Path::new("boot").join(format!("initrd.img-{version}"))
}

/// The base's initramfs when it goes onto the disk after the root filesystem is made: the
/// export, finalize, inspection and `mkfs.ext4` then run while it is still being built.
pub(crate) struct Late {
    versions: Vec<String>,
    layer: Layer,
}

impl Base {
    /// The base's layers for the export, and the initramfs to put onto the disk afterwards
    /// ([`Late`]), when no step layer (`steps`, any order) changes a placeholder
    /// `boot/initrd.img-V` or a directory above it. Otherwise (a step rebuilt the initramfs or
    /// removed the kernel), as [`Base::finish`]: the initramfs layer is merged by the export.
    /// The choice depends on the layers' content alone, never on whether the build is done,
    /// so a bake on a cached base makes the same disk as the one that built it.
    pub fn defer(
        self,
        steps: &[PathBuf],
        run: &mut Run<'_>,
    ) -> Result<(Vec<PathBuf>, Option<Late>)> {
        let versions = match &self.layer {
            Layer::InTree => return Ok((vec![self.rootfs], None)),
            Layer::Ready(l) => ready_versions(l)?,
            Layer::Building(p) => p.versions.clone(),
        };
        for v in &versions {
            let rel = initrd_rel(v);
            for l in steps {
                if crate::export::layer_changes(l, &rel).map_err(|e| BuildError::io(l, e))? {
                    return Ok((self.finish(run)?, None));
                }
            }
        }
        Ok((
            vec![self.rootfs],
            Some(Late {
                versions,
                layer: self.layer,
            }),
        ))
    }
}

/// The kernel versions of a built initramfs layer.
fn ready_versions(layer: &Path) -> Result<Vec<String>> {
    let boot = layer.join("boot");
    let mut v: Vec<String> = std::fs::read_dir(&boot)
        .map_err(|e| BuildError::io(&boot, e))?
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_prefix("initrd.img-").map(str::to_string)
        })
        .collect();
    v.sort();
    Ok(v)
}

impl Late {
    /// Waits for the initramfs if it is being built (and fails if that failed); returns each
    /// file as (path in the image, the built file).
    pub fn files(self, run: &mut Run<'_>) -> Result<Vec<(PathBuf, PathBuf)>> {
        let Some(layer) = self.layer.wait(run)? else {
            return Ok(Vec::new());
        };
        Ok(self
            .versions
            .iter()
            .map(|v| {
                (
                    Path::new("/").join(initrd_rel(v)),
                    layer.join(initrd_rel(v)),
                )
            })
            .collect())
    }
}

/// What the background job hands back.
struct Outcome {
    lines: Vec<String>,
    result: Result<()>,
    /// When the job ended.
    ended: Instant,
    /// The entry's lock, returned when the entry was not completed (the caller removes it).
    lock: Option<EntryLock>,
}

/// The initramfs job of a bootstrap that was committed without `meta.json`.
pub(crate) struct Pending {
    entry: PathBuf,
    versions: Vec<String>,
    stop: CancelToken,
    job: Option<JoinHandle<Outcome>>,
    started: Instant,
}

/// Hand the bootstrap process `proc`, still building the initramfs of `versions` for the
/// fresh, incomplete entry `entry`, to a background job: `meta` becomes the entry's
/// `meta.json` once the initramfs is in its layer, and `lock` (the entry's) is released then.
pub(crate) fn start(
    run: &Run<'_>,
    entry: &Path,
    versions: Vec<String>,
    meta: serde_json::Value,
    lock: EntryLock,
    proc: Running,
) -> Result<Base> {
    run.req.log.line(LAYER, "building beside the steps");
    let stop = CancelToken::new();
    let job = {
        let (stop, dir, v) = (stop.clone(), entry.to_path_buf(), versions.clone());
        std::thread::Builder::new()
            .name("webake-initramfs".into())
            .spawn(move || build(proc, &stop, &dir, &v, &meta, lock))
            .map_err(|e| BuildError::io(entry, e))?
    };
    Ok(Base {
        rootfs: entry.join("rootfs"),
        layer: Layer::Building(Box::new(Pending {
            entry: entry.to_path_buf(),
            versions,
            stop,
            job: Some(job),
            started: Instant::now(),
        })),
    })
}

/// The background job: the rest of the bootstrap, then complete the entry and release its
/// lock.
fn build(
    mut proc: Running,
    stop: &CancelToken,
    entry: &Path,
    versions: &[String],
    meta: &serde_json::Value,
    lock: EntryLock,
) -> Outcome {
    let mut lines = Vec::new();
    proc.pump(
        stop,
        &mut |l| lines.push(l.to_string()),
        Duration::MAX,
        &mut |_| {},
        &mut |_| false,
    );
    let result = proc.wait(stop).map_err(BuildError::from).and_then(|_| {
        for v in versions {
            let f = entry.join(LAYER).join(initrd_rel(v));
            if !std::fs::metadata(&f).is_ok_and(|m| m.len() > 0) {
                return Err(BuildError::Invalid(format!(
                    "the initramfs {} was not built",
                    f.display()
                )));
            }
        }
        let meta_path = entry.join("meta.json");
        let tmp = entry.join(".meta.json.tmp");
        std::fs::write(&tmp, meta.to_string()).map_err(|e| BuildError::io(&tmp, e))?;
        std::fs::rename(&tmp, &meta_path).map_err(|e| BuildError::io(&meta_path, e))
    });
    let lock = match result {
        Ok(()) => {
            drop(lock);
            None
        }
        Err(_) => Some(lock),
    };
    Outcome {
        lines,
        result,
        ended: Instant::now(),
        lock,
    }
}

impl Pending {
    fn finish(mut self, run: &mut Run<'_>) -> Result<PathBuf> {
        let step = LAYER;
        let t = Instant::now();
        let job = self.job.take().expect("joined once");
        while !job.is_finished() {
            if run.req.cancel.is_cancelled() {
                self.stop.cancel();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let waited = t.elapsed();
        let outcome = job
            .join()
            .map_err(|_| BuildError::Invalid("the initramfs job panicked".into()))?;
        run.started(
            step,
            &format!(
                "{} (built beside the copy and the steps; waited {:.1}s for it)",
                self.versions.join(", "),
                waited.as_secs_f64()
            ),
        );
        for l in &outcome.lines {
            run.say(step, l);
        }
        match outcome.result {
            Ok(()) => {
                // From the tree being ready to the initramfs being in its layer.
                let took = outcome.ended.duration_since(self.started);
                run.finished_after(step, took, CacheStatus::Miss, self.versions.join(" "));
                Ok(self.entry.join(LAYER))
            }
            Err(e) => {
                remove_incomplete(&self.entry, outcome.lock);
                Err(e.in_step(step))
            }
        }
    }
}

/// Remove an entry that was never completed, then release its lock.
fn remove_incomplete(entry: &Path, lock: Option<EntryLock>) {
    if lock.is_some()
        && !entry.join("meta.json").is_file()
        && let Err(e) = webake_sys::fsutil::remove_dir_all_if_exists(entry)
    {
        tracing::warn!(path = %entry.display(), error = %e, "could not remove an incomplete base");
    }
    drop(lock);
}

impl Drop for Pending {
    /// The bake failed before it needed the initramfs: stop the job, and remove the entry if
    /// it was not completed.
    fn drop(&mut self) {
        if let Some(job) = self.job.take() {
            self.stop.cancel();
            if let Ok(o) = job.join() {
                remove_incomplete(&self.entry, o.lock);
            }
        }
    }
}
