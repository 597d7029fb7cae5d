//! The base's initramfs, built beside the provisioner steps.
//!
//! Building the initramfs is the bootstrap's last and single-threaded job (7 s natively, about
//! 160 s under qemu-user), and the steps rarely need it. So a fresh bootstrap gives every
//! kernel an empty placeholder `boot/initrd.img-V` and builds the real one in the background,
//! in the step sandbox, over the base as a read-only lower layer: its upper directory (the
//! cache entry's `initramfs/`) becomes a layer of its own, merged right above the root
//! filesystem by the export. The steps see the placeholder:
//! - a step that rebuilds the initramfs (`update-initramfs -u`, triggered by a package with an
//!   initramfs hook: initramfs-tools only updates versions whose initrd file exists) writes a
//!   real one into its own layer, which is above and wins;
//! - a step that removes the kernel removes the placeholder: its whiteout hides the background
//!   build too.
//!
//! The cache entry is complete (`meta.json`, other bakes of the base stop waiting) as soon as
//! the initramfs is built; until then its lock is held. A failed or killed build fails the bake
//! and removes the incomplete entry.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use webake_sys::CancelToken;
use webake_sys::sandbox::{Guards, Network, Overlay, SandboxSpec};

use crate::bake::Run;
use crate::error::{BuildError, Result};
use crate::reporter::CacheStatus;
use crate::workspace::{EntryLock, mkdir_p};

/// The entry's layer with the initramfs (an overlay upper directory).
pub const LAYER: &str = "initramfs";

/// Run in the image (`/` is the base, the placeholders in place): build the initramfs of each
/// kernel version given as an argument.
pub const BUILD_SCRIPT: &str = r#"for v; do
    if [ -x /usr/sbin/update-initramfs ]; then update-initramfs -c -k "$v"
    elif [ -x /usr/bin/dracut ]; then dracut --force --kver "$v" "/boot/initrd.img-$v"
    else echo "E: no initramfs generator (initramfs-tools or dracut) in the image" >&2; exit 1; fi
    [ -s "/boot/initrd.img-$v" ] || { echo "E: /boot/initrd.img-$v was not written" >&2; exit 1; }
done"#;

/// The kernel versions of `rootfs` without an initramfs, when the tree can build one
/// (initramfs-tools or dracut installed).
pub fn missing(rootfs: &Path) -> Vec<String> {
    let can = ["usr/sbin/update-initramfs", "usr/bin/dracut"]
        .iter()
        .any(|p| rootfs.join(p).is_file());
    let Ok(rd) = std::fs::read_dir(rootfs.join("boot")) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("vmlinuz-")
                .map(str::to_string)
        })
        .filter(|v| can && !rootfs.join("boot").join(format!("initrd.img-{v}")).exists())
        .collect();
    v.sort();
    v
}

/// Give each of `versions` an empty placeholder initrd in `rootfs` (path-safely).
pub fn place_placeholders(rootfs: &Path, versions: &[String]) -> Result<()> {
    let t = webake_sys::Tree::open(rootfs)?;
    for v in versions {
        t.write(
            &Path::new("boot").join(format!("initrd.img-{v}")),
            b"",
            0o644,
        )?;
    }
    Ok(())
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
        let layer = match self.layer {
            Layer::InTree => return Ok(vec![self.rootfs]),
            Layer::Ready(l) => l,
            Layer::Building(p) => (*p).finish(run)?,
        };
        Ok(vec![layer, self.rootfs])
    }
}

/// What the background job hands back.
struct Outcome {
    lines: Vec<String>,
    result: Result<Duration>,
    /// The entry's lock, returned when the entry was not completed (the caller removes it).
    lock: Option<EntryLock>,
}

/// The initramfs job of a bootstrap that was just committed without `meta.json`.
pub(crate) struct Pending {
    entry: PathBuf,
    versions: Vec<String>,
    stop: CancelToken,
    job: Option<JoinHandle<Outcome>>,
}

/// Start building the initramfs of `versions` for the fresh, incomplete entry `entry` (its
/// `rootfs/` with the placeholders; `meta` becomes its `meta.json` once done). `lock` is the
/// entry's: released as soon as the entry is complete.
pub(crate) fn start(
    run: &Run<'_>,
    bs: &crate::bootstrap::BootstrapPlan,
    entry: &Path,
    versions: Vec<String>,
    meta: serde_json::Value,
    lock: EntryLock,
) -> Result<Base> {
    let rootfs = entry.join("rootfs");
    let upper = entry.join(LAYER);
    let work = entry.join(".initramfs-work");
    let sbx = run.scratch.join("initramfs-sandbox");
    for d in [&upper, &work, &sbx] {
        mkdir_p(d)?;
    }
    let mut argv = vec![
        "/bin/sh".to_string(),
        "-ec".into(),
        BUILD_SCRIPT.into(),
        "webake-initramfs".into(),
    ];
    argv.extend(versions.iter().cloned());
    let mut spec = SandboxSpec::image(&sbx, argv);
    crate::steps::emulate(&mut spec, run.req.recipe)?;
    spec.overlay = Some(Overlay {
        lowers: vec![rootfs.clone()],
        upper: upper.clone(),
        work: work.clone(),
    });
    spec.network = Network::None;
    spec.guards = Guards::default();
    // The bootstrap's environment (its source date), without INITRD=No (kernel hooks only).
    spec.env
        .extend(bs.env().into_iter().filter(|(k, _)| k != "INITRD"));
    let cmd = spec
        .command(&run.req.helper_exe)
        .map_err(|e| BuildError::io(&sbx, e))?;
    run.say(
        "bootstrap",
        &format!(
            "building the initramfs of {} beside the steps",
            versions.join(", ")
        ),
    );
    run.req.log.line(LAYER, &format!("$ {cmd}"));
    let stop = CancelToken::new();
    let job = {
        let (stop, dir) = (stop.clone(), entry.to_path_buf());
        std::thread::Builder::new()
            .name("webake-initramfs".into())
            .spawn(move || build(&cmd, &stop, &dir, &work, &meta, lock))
            .map_err(|e| BuildError::io(entry, e))?
    };
    Ok(Base {
        rootfs,
        layer: Layer::Building(Box::new(Pending {
            entry: entry.to_path_buf(),
            versions,
            stop,
            job: Some(job),
        })),
    })
}

/// The background job: run the build, then complete the entry and release its lock.
fn build(
    cmd: &webake_sys::Cmd,
    stop: &CancelToken,
    entry: &Path,
    work: &Path,
    meta: &serde_json::Value,
    lock: EntryLock,
) -> Outcome {
    let mut lines = Vec::new();
    let ran = webake_sys::process::run(cmd, stop, &mut |l| lines.push(l.to_string()));
    let _ = webake_sys::fsutil::remove_dir_all_if_exists(work);
    let result = ran.map_err(BuildError::from).and_then(|out| {
        let meta_path = entry.join("meta.json");
        let tmp = entry.join(".meta.json.tmp");
        std::fs::write(&tmp, meta.to_string()).map_err(|e| BuildError::io(&tmp, e))?;
        std::fs::rename(&tmp, &meta_path).map_err(|e| BuildError::io(&meta_path, e))?;
        Ok(out.duration)
    });
    let lock = match result {
        Ok(_) => {
            drop(lock);
            None
        }
        Err(_) => Some(lock),
    };
    Outcome {
        lines,
        result,
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
                "{} (built beside the steps; waited {:.1}s for it)",
                self.versions.join(", "),
                waited.as_secs_f64()
            ),
        );
        for l in &outcome.lines {
            run.say(step, l);
        }
        match outcome.result {
            Ok(took) => {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_lists_kernels_without_initrd_when_a_generator_is_there() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("boot")).unwrap();
        std::fs::create_dir_all(r.join("usr/sbin")).unwrap();
        std::fs::write(r.join("boot/vmlinuz-6.1.0-2-amd64"), "k").unwrap();
        std::fs::write(r.join("boot/vmlinuz-6.1.0-1-amd64"), "k").unwrap();
        std::fs::write(r.join("boot/vmlinuz-6.1.0-3-amd64"), "k").unwrap();
        std::fs::write(r.join("boot/initrd.img-6.1.0-3-amd64"), "i").unwrap();
        assert!(missing(r).is_empty(), "no generator: nothing to build");
        std::fs::write(r.join("usr/sbin/update-initramfs"), "#!/bin/sh\n").unwrap();
        let v = missing(r);
        assert_eq!(v, ["6.1.0-1-amd64", "6.1.0-2-amd64"]);
        place_placeholders(r, &v).unwrap();
        assert!(missing(r).is_empty());
        let p = r.join("boot/initrd.img-6.1.0-1-amd64");
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
        assert!(matches!(
            Base::cached(r.join("rootfs")).layer,
            Layer::InTree
        ));
    }

    /// The build script, run by sh with a stand-in update-initramfs: each version once, and a
    /// version whose initrd stays empty fails the build.
    #[test]
    fn build_script_builds_each_version_and_checks_the_result() {
        let t = tempfile::tempdir().unwrap();
        let bin = t.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let log = t.path().join("calls");
        // The script uses absolute /usr/sbin and /boot paths: run it with those rewritten to
        // the temp dir (the real thing runs in the image).
        let boot = t.path().join("boot");
        std::fs::create_dir_all(&boot).unwrap();
        let generator = t.path().join("update-initramfs");
        std::fs::write(
            &generator,
            format!(
                "#!/bin/sh\necho \"$@\" >> {}\n[ \"$3\" = bad ] || echo x > {}/initrd.img-$3\n",
                log.display(),
                boot.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&generator, std::fs::Permissions::from_mode(0o755)).unwrap();
        let script = BUILD_SCRIPT
            .replace(
                "/usr/sbin/update-initramfs",
                &generator.display().to_string(),
            )
            .replace(
                "update-initramfs -c",
                &format!("{} -c", generator.display()),
            )
            .replace("/boot/", &format!("{}/", boot.display()));
        let sh = |args: &[&str]| {
            std::process::Command::new("sh")
                .arg("-ec")
                .arg(&script)
                .arg("x")
                .args(args)
                .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
                .output()
                .unwrap()
        };
        let ok = sh(&["6.1.0-1-amd64", "6.1.0-2-amd64"]);
        assert!(ok.status.success(), "{ok:?}");
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "-c -k 6.1.0-1-amd64\n-c -k 6.1.0-2-amd64\n"
        );
        let bad = sh(&["bad"]);
        assert!(!bad.status.success());
        assert!(
            String::from_utf8_lossy(&bad.stderr).contains("initrd.img-bad was not written"),
            "{bad:?}"
        );
    }
}
