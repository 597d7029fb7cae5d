//! The bake: plan, then execute the plan, stage by stage.
//!
//! ```text
//! build_root:    base (bootstrap or prepared) -> steps (one cached layer each) -> export -> finalize
//!                => RootFs (the caller inspects it: agent, inventory, lint)
//! assemble_disk: RootFs (consumed) -> GPT disk, raw + qcow2 => DiskImage
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;
use webake_spec::{Base, LoadedRecipe};
use webake_sys::CancelToken;
use webake_sys::process::Cmd;
use webake_sys::sandbox::{Bind, Network, Overlay, SandboxSpec};

use crate::assemble::{Artifact, AssembleInput, BootFiles, DiskIds};
use crate::bootstrap::{BootstrapPlan, HostSources};
use crate::digest::sha256_hex;
use crate::error::{BuildError, Result};
use crate::initramfs::Late;
use crate::provision::{self, StepPlan};
use crate::reporter::{CacheStatus, Reporter};
use crate::workspace::{Workspace, mkdir_p};

/// Where the base root filesystem comes from.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum BasePlan {
    /// Bootstrapped with mmdebstrap into the cache (`base.mmdebstrap`).
    Mmdebstrap(Box<BootstrapPlan>),
    /// A root filesystem the caller prepared before the bake (e.g. extracted from an AMI's
    /// root snapshot by the CLI: this crate never talks to clouds), committed to the
    /// bootstrap cache as `<bootstrap_dir>/<key>/rootfs`. The bake only reads it.
    Prepared {
        key: String,
        rootfs: PathBuf,
        description: String,
    },
}

impl BasePlan {
    /// The cache key of the base (the first link of every step key).
    pub fn key(&self) -> &str {
        match self {
            BasePlan::Mmdebstrap(b) => &b.key,
            BasePlan::Prepared { key, .. } => key,
        }
    }
}

/// The plan: what will run, with the cache key of every step.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub base: BasePlan,
    pub steps: Vec<StepPlan>,
    /// Digest of everything that determines the image (recipe text, base, step inputs, the
    /// source date).
    pub inputs_digest: String,
    pub recipe_digest: String,
    /// The bake's date (`SOURCE_DATE_EPOCH`, Unix seconds).
    pub source_date: i64,
}

/// The source date of a plan made without one: the base's, else 1980-01-01 (the earliest a
/// FAT filesystem holds).
pub const FALLBACK_SOURCE_DATE: i64 = 315_532_800;

/// Compute the plan (reads the recipe's input files, touches nothing).
pub fn plan(
    recipe: &LoadedRecipe,
    env_mirror: Option<String>,
    host_sources: &HostSources,
) -> Result<Plan> {
    let base = match &recipe.recipe.base {
        Base::Mmdebstrap(m) => m,
        Base::Image(i) => {
            return Err(BuildError::Invalid(format!(
                "{}: base `image: {i}` is prepared by the caller (extracted from the catalog before the bake); plan it with plan_with_base",
                recipe.path.display()
            )));
        }
        Base::Ami(a) => {
            return Err(BuildError::Invalid(format!(
                "{}: base `ami: {}` is prepared by the caller (downloaded and extracted before the bake); plan it with plan_with_base",
                recipe.path.display(),
                a.id
            )));
        }
    };
    let bootstrap = BootstrapPlan::new(base, &recipe.dir, env_mirror, host_sources)?;
    plan_with_base(recipe, BasePlan::Mmdebstrap(Box::new(bootstrap)))
}

/// Compute the plan on top of an already decided base (reads the recipe's input files).
pub fn plan_with_base(recipe: &LoadedRecipe, base: BasePlan) -> Result<Plan> {
    let source_date = match &base {
        BasePlan::Mmdebstrap(b) => b.source_date,
        BasePlan::Prepared { .. } => None,
    };
    plan_with_base_and(
        recipe,
        base,
        None,
        source_date.unwrap_or(FALLBACK_SOURCE_DATE),
    )
}

/// [`plan_with_base`], with the generation of the apt sources the steps added and the source
/// date as inputs of the first step (see [`provision::plan_steps`]).
pub fn plan_with_base_and(
    recipe: &LoadedRecipe,
    base: BasePlan,
    steps_upstream: Option<&str>,
    source_date: i64,
) -> Result<Plan> {
    let first = provision::FirstStepInputs {
        steps_upstream,
        source_date: Some(source_date),
    };
    let steps = provision::plan_steps(recipe, base.key(), &[], first)?;
    // The recipe text and the values of its variables (secrets as a placeholder).
    let recipe_digest = sha256_hex(&recipe.digest_input());
    let last = steps
        .last()
        .map(|s| s.key.clone())
        .unwrap_or_else(|| base.key().to_string());
    // v2: the source date is an input (it is in every timestamp of the disk). v3: finalize's
    // first-boot key unit makes each missing key (the same inputs now make another disk).
    let inputs_digest = sha256_hex(
        format!("webake-inputs-v3\n{recipe_digest}\n{last}\nsource-date {source_date}\n")
            .as_bytes(),
    );
    Ok(Plan {
        base,
        steps,
        inputs_digest,
        recipe_digest,
        source_date,
    })
}

/// The per-bake log file: every step's output, with the step name.
pub struct BakeLog {
    file: Mutex<std::fs::File>,
    pub path: PathBuf,
}

impl BakeLog {
    pub fn create(path: &Path) -> Result<Self> {
        if let Some(d) = path.parent() {
            mkdir_p(d)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| BuildError::io(path, e))?;
        Ok(Self {
            file: Mutex::new(file),
            path: path.to_path_buf(),
        })
    }

    pub fn line(&self, step: &str, line: &str) {
        if let Ok(mut f) = self.file.lock() {
            let _ = writeln!(f, "[{step}] {line}");
        }
    }
}

/// The Debian architecture of the recipe's tree (a variant's, see `LoadedRecipe::variants`).
pub fn tree_debian_arch(recipe: &LoadedRecipe) -> String {
    match &recipe.recipe.base {
        Base::Mmdebstrap(m) => m.arch().to_string(),
        _ => recipe
            .architecture()
            .unwrap_or(webake_spec::Architecture::host())
            .debian()
            .to_string(),
    }
}

/// Inputs of a bake.
pub struct BakeRequest<'a> {
    pub recipe: &'a LoadedRecipe,
    pub plan: &'a Plan,
    pub bake_id: String,
    pub image_id: String,
    pub version: String,
    pub workspace: &'a Workspace,
    /// The executable that serves as sandbox helper (the webake binary).
    pub helper_exe: PathBuf,
    pub cancel: CancelToken,
    pub reporter: &'a dyn Reporter,
    pub log: &'a BakeLog,
    /// Keep the scratch directory of a failed bake for debugging.
    pub keep_on_error: bool,
    /// Bootstrap again even if a cached base exists.
    pub refresh_base: bool,
    /// Ignore cached step layers (they are still written).
    pub no_cache: bool,
    /// Host environment lookup for secret variables.
    pub host_env: &'a (dyn Fn(&str) -> Option<String> + Sync),
    /// The network of the bootstrap and every step (the sandbox's policy plus what the recipe
    /// allows).
    pub network: Network,
    /// Every secret value of the bake: redacted from every step's output, not only the
    /// declaring step's.
    pub secrets: Vec<String>,
    /// `--on-error shell`: when a step fails, open an interactive shell in its tree first.
    pub shell_on_error: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub name: String,
    pub cache: CacheStatus,
    pub seconds: f64,
    pub detail: String,
}

/// A finished, finalized root tree in the bake's scratch directory. The caller inspects it
/// (installs the agent, takes the inventory, lints it), then hands it to [`assemble_disk`],
/// which consumes it: nothing can hold on to a tree that is still being worked on. Dropped
/// without being assembled (an error), its scratch directory goes away, unless the bake keeps
/// it for debugging.
#[must_use]
pub struct RootFs {
    pub tree: PathBuf,
    pub steps: Vec<StepReport>,
    pub finalize_actions: Vec<String>,
    /// The base's initramfs, put onto the disk after mkfs (still being built, maybe).
    late: Option<Late>,
    scratch: Scratch,
    // The layers the tree hard-links must not be evicted before the disk is assembled.
    _cache_lock: crate::workspace::CacheLock,
}

impl RootFs {
    /// Keep the scratch directory (the tree, the failed step's layers) for debugging.
    pub fn keep(mut self) -> PathBuf {
        self.scratch.keep = true;
        self.scratch.path.clone()
    }
}

/// The assembled disk.
#[derive(Debug, Clone, Serialize)]
pub struct DiskImage {
    pub artifacts: Vec<Artifact>,
    pub boot: BootFiles,
    pub steps: Vec<StepReport>,
    pub finalize_actions: Vec<String>,
    pub disk_ids: DiskIds,
}

/// Removes the scratch directory unless kept (explicit `finish`, Drop backstop).
#[must_use]
struct Scratch {
    path: PathBuf,
    keep: bool,
}

impl Scratch {
    fn finish(mut self) -> Result<()> {
        self.keep = true; // Drop does nothing now
        webake_sys::fsutil::remove_dir_all_if_exists(&self.path)
            .map_err(|e| BuildError::io(&self.path, e))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.keep
            && let Err(e) = webake_sys::fsutil::remove_dir_all_if_exists(&self.path)
        {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove scratch directory");
        }
    }
}

/// One running bake: the request, its scratch directory and the steps reported so far.
pub(crate) struct Run<'a> {
    pub req: &'a BakeRequest<'a>,
    pub scratch: PathBuf,
    pub steps: Vec<StepReport>,
}

impl Run<'_> {
    /// A line of a step's output: the bake log and the reporter.
    pub fn say(&self, step: &str, line: &str) {
        self.req.log.line(step, line);
        self.req.reporter.output(step, line);
    }

    /// Run a command of a step (logged with its time; output streamed and redacted).
    pub fn exec(&self, step: &str, cmd: &Cmd) -> Result<()> {
        self.req.log.line(step, &format!("$ {cmd}"));
        let t = Instant::now();
        webake_sys::process::run_with_heartbeat(
            cmd,
            &self.req.cancel,
            &mut |line| self.say(step, line),
            crate::reporter::HEARTBEAT,
            &mut |elapsed| self.req.reporter.progress(step, elapsed),
        )?;
        self.req.log.line(
            step,
            &format!("  (done in {:.2}s)", t.elapsed().as_secs_f64()),
        );
        Ok(())
    }

    pub fn started(&self, step: &str, detail: &str) {
        self.req.reporter.step_started(step, detail);
    }

    /// Report a finished step and record it for the result.
    pub fn finished(
        &mut self,
        step: &str,
        t: Instant,
        cache: CacheStatus,
        detail: impl Into<String>,
    ) {
        self.finished_after(step, t.elapsed(), cache, detail);
    }

    /// [`Run::finished`] for a step that took `took` (one that ran beside others).
    pub fn finished_after(
        &mut self,
        step: &str,
        took: std::time::Duration,
        cache: CacheStatus,
        detail: impl Into<String>,
    ) {
        self.req.reporter.step_finished(step, took, cache);
        self.steps.push(StepReport {
            name: step.into(),
            cache,
            seconds: took.as_secs_f64(),
            detail: detail.into(),
        });
    }

    pub fn check_cancel(&self) -> Result<()> {
        if self.req.cancel.is_cancelled() {
            Err(BuildError::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// Host tools and the workspace are there.
fn preflight(req: &BakeRequest<'_>) -> Result<()> {
    req.workspace.ensure()?;
    crate::assemble::check_host_tools_for(&req.recipe.recipe.disk.boot)?;
    if matches!(req.plan.base, BasePlan::Mmdebstrap(_))
        && webake_sys::process::which("mmdebstrap").is_none()
    {
        return Err(BuildError::MissingTool {
            tool: "mmdebstrap".into(),
            hint: "apt-get install mmdebstrap".into(),
        });
    }
    Ok(())
}

/// Build the root tree: the base, every step, the export, finalize.
pub fn build_root(req: &BakeRequest<'_>) -> Result<RootFs> {
    preflight(req)?;
    // Bakes hold the cache lock shared; `webake cache gc|clear` takes it exclusively, so an
    // entry is never evicted while a bake may read it.
    let cache_lock = crate::workspace::CacheLock::shared(&req.workspace.cache_dir)?;
    let path = req.workspace.scratch_dir(&req.bake_id);
    mkdir_p(&path)?;
    let mut scratch = Scratch { path, keep: false };
    let mut run = Run {
        req,
        scratch: scratch.path.clone(),
        steps: Vec::new(),
    };
    let built = (|| -> Result<(PathBuf, Vec<String>, Option<Late>)> {
        let base = crate::bootstrap::base_stage(&mut run)?;
        run.check_cancel()?;
        let mut layers = crate::steps::provision_stage(&mut run, base.rootfs.clone())?;
        // The steps ran on the base's tree; the export merges the base's layers under theirs.
        // The base's initramfs, unless a step changed it, goes onto the disk after mkfs.
        layers.pop();
        let (base_layers, late) = base.defer(&layers, &mut run)?;
        layers.extend(base_layers);
        let tree = export_stage(&mut run, &layers)?;
        run.check_cancel()?;
        let actions = finalize_stage(&mut run, &tree)?;
        run.check_cancel()?;
        Ok((tree, actions, late))
    })();
    match built {
        Ok((tree, finalize_actions, late)) => Ok(RootFs {
            tree,
            steps: run.steps,
            finalize_actions,
            late,
            scratch,
            _cache_lock: cache_lock,
        }),
        Err(e) => {
            if req.keep_on_error && !e.is_cancelled() {
                scratch.keep = true;
                req.reporter.note(&format!(
                    "keeping scratch directory {} (--keep-on-error): a failed step's changes are in its step-N/upper; \
                     to work in the failed step's tree instead, bake with --on-error shell, or \
                     `webake shell {} --after STEP` for the tree before it",
                    scratch.path.display(),
                    req.recipe.path.display()
                ));
            }
            Err(e)
        }
    }
}

/// `webake shell RECIPE --after N`: the base and the first `steps` steps, cached or run as a
/// bake would, then an interactive shell on that tree in the step sandbox. What the shell
/// changes is thrown away with the scratch directory. Returns the shell's exit code.
///
/// `what` names the tree in the prompt and the note (default: "after step N ...").
pub fn shell(req: &BakeRequest<'_>, steps: usize, what: Option<&str>) -> Result<i32> {
    preflight(req)?;
    let _cache_lock = crate::workspace::CacheLock::shared(&req.workspace.cache_dir)?;
    let path = req.workspace.scratch_dir(&req.bake_id);
    mkdir_p(&path)?;
    let scratch = Scratch { path, keep: false };
    let mut run = Run {
        req,
        scratch: scratch.path.clone(),
        steps: Vec::new(),
    };
    let base = crate::bootstrap::base_stage(&mut run)?;
    let mut lowers = crate::steps::provision_steps(&mut run, base.rootfs.clone(), steps)?;
    lowers.pop();
    lowers.extend(base.finish(&mut run)?);
    run.check_cancel()?;
    let what = match (what, steps.min(req.plan.steps.len())) {
        (Some(w), _) => w.to_string(),
        (None, 0) => "after the base".to_string(),
        (None, n) => format!("after step {}", req.plan.steps[n - 1].label),
    };
    req.reporter.note(&format!(
        "shell on the tree {what}, in the step sandbox; changes are discarded when it exits"
    ));
    let code = crate::debug::open_shell(&crate::debug::Shell {
        helper_exe: &req.helper_exe,
        scratch: &scratch.path,
        lowers,
        upper: None,
        network: req.network.clone(),
        binds: Vec::new(),
        prompt: format!("webake {what}"),
    })?;
    drop(scratch);
    Ok(code)
}

/// Stage 3: export the merged layers once into a plain directory: hard links to the layers (no data
/// copied), or a copy of the mounted overlay where that cannot be done.
fn export_stage(run: &mut Run<'_>, lowers: &[PathBuf]) -> Result<PathBuf> {
    let step = "export";
    let t = Instant::now();
    run.started(step, &format!("{} layer(s)", lowers.len()));
    let tree = run.scratch.join("tree");
    mkdir_p(&tree)?;
    let bottom_first: Vec<PathBuf> = lowers.iter().rev().cloned().collect();
    match crate::export::link_layers(&bottom_first, &tree) {
        Ok(st) => run.say(
            step,
            &format!(
                "{} files hard-linked from the layers, {} directories, {} whiteouts applied",
                st.linked, st.dirs, st.whiteouts
            ),
        ),
        Err(crate::export::LinkError::Build(e)) => return Err(e.in_step(step)),
        Err(crate::export::LinkError::Unsupported(why)) => {
            run.say(step, &format!("copying the merged layers ({why})"));
            webake_sys::fsutil::remove_dir_all_if_exists(&tree)
                .map_err(|e| BuildError::io(&tree, e))?;
            mkdir_p(&tree)?;
            copy_merged(run, lowers, &tree).map_err(|e| e.in_step(step))?;
        }
    }
    run.finished(step, t, CacheStatus::Uncached, String::new());
    Ok(tree)
}

/// Stage 4: make the tree environment-agnostic.
fn finalize_stage(run: &mut Run<'_>, tree: &Path) -> Result<Vec<String>> {
    let step = "finalize";
    let t = Instant::now();
    run.started(step, "environment-agnostic cleanup");
    let host_resolv = std::fs::read("/etc/resolv.conf").ok();
    let fin =
        crate::finalize::finalize(tree, host_resolv.as_deref()).map_err(|e| e.in_step(step))?;
    for a in &fin.actions {
        run.say(step, a);
    }
    run.finished(step, t, CacheStatus::Uncached, String::new());
    Ok(fin.actions)
}

/// Stage 5: assemble the disk and write the artifacts. Consumes the tree; its scratch directory is
/// removed once the disk is written (kept with `keep_on_error` on failure).
pub fn assemble_disk(req: &BakeRequest<'_>, root: RootFs) -> Result<DiskImage> {
    let RootFs {
        tree,
        steps,
        finalize_actions,
        late,
        mut scratch,
        _cache_lock,
    } = root;
    let run = Run {
        req,
        scratch: scratch.path.clone(),
        steps,
    };
    let step = "assemble";
    let t = Instant::now();
    let recipe = req.recipe;
    run.started(
        step,
        &format!(
            "GPT disk {} for {}, outputs: {}",
            recipe.recipe.disk.size,
            recipe
                .recipe
                .disk
                .boot
                .iter()
                .map(|b| b.as_str())
                .collect::<Vec<_>>()
                .join(" + "),
            recipe
                .recipe
                .outputs
                .iter()
                .map(|o| o.extension())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    // Every identifier of the disk (GUIDs, filesystem UUIDs, hash seed, FAT volume id) from the
    // inputs digest: the same inputs give the same disk.
    let ids = DiskIds::derive(&req.plan.inputs_digest);
    let assemble_dir = run.scratch.join("assemble");
    // The runner, the log lines and the wait for the base's initramfs (after mkfs) all
    // report through the run, one at a time.
    let run = std::cell::RefCell::new(run);
    let late = std::cell::RefCell::new(late);
    let late_files = || -> Result<Vec<(PathBuf, PathBuf)>> {
        match late.borrow_mut().take() {
            Some(l) => l.files(&mut run.borrow_mut()),
            None => Ok(Vec::new()),
        }
    };
    let input = AssembleInput {
        tree: &tree,
        disk: &recipe.recipe.disk,
        ids: ids.clone(),
        title: format!("{} {}", recipe.recipe.image.name, req.version),
        scratch: &assemble_dir,
        out_dir: &req.workspace.image_dir(&req.image_id),
        base_name: format!("{}-{}", recipe.recipe.image.name, req.version),
        outputs: &recipe.recipe.outputs,
        source_date: req.plan.source_date,
        arch: &tree_debian_arch(recipe),
        sandbox_helper: Some(&req.helper_exe),
        say: Some(&|l: &str| run.borrow().say(step, l)),
        late_files: Some(&late_files),
    };
    let assembled = {
        let mut runner = |c: &Cmd| run.borrow().exec(step, c);
        crate::assemble::assemble(&input, &mut runner).map_err(|e| e.in_step(step))
    };
    drop(input);
    let mut run = run.into_inner();
    let (artifacts, boot) = match assembled {
        Ok(x) => x,
        Err(e) => {
            if req.keep_on_error && !e.is_cancelled() {
                scratch.keep = true;
                req.reporter.note(&format!(
                    "keeping scratch directory {} (--keep-on-error): a failed step's changes are in its step-N/upper; \
                     to work in the failed step's tree instead, bake with --on-error shell, or \
                     `webake shell {} --after STEP` for the tree before it",
                    scratch.path.display(),
                    req.recipe.path.display()
                ));
            }
            return Err(e);
        }
    };
    run.finished(step, t, CacheStatus::Uncached, String::new());
    scratch.finish()?;
    Ok(DiskImage {
        artifacts,
        boot,
        steps: run.steps,
        finalize_actions,
        disk_ids: ids,
    })
}

/// Export by copying: `cp -a` of the layers mounted as one overlay in a sandbox.
fn copy_merged(run: &Run<'_>, lowers: &[PathBuf], tree: &Path) -> Result<()> {
    if lowers.len() == 1 {
        return run.exec(
            "export",
            &Cmd::new("cp")
                .args(["-a", "--sparse=always"])
                .arg(format!("{}/.", lowers[0].display()))
                .arg(tree),
        );
    }
    let ex = run.scratch.join("export");
    let (upper, work, sbx) = (ex.join("upper"), ex.join("work"), ex.join("sandbox"));
    for d in [&upper, &work, &sbx] {
        mkdir_p(d)?;
    }
    let mut spec = SandboxSpec::host_tools(
        &sbx,
        vec![
            "cp".into(),
            "-a".into(),
            "--sparse=always".into(),
            "/image/.".into(),
            "/out".into(),
        ],
    );
    spec.overlay = Some(Overlay {
        lowers: lowers.to_vec(),
        upper,
        work,
    });
    spec.binds.push(Bind {
        source: tree.to_path_buf(),
        target: "/out".into(),
        readonly: false,
    });
    let cmd = spec
        .command(&run.req.helper_exe)
        .map_err(|e| BuildError::io(&sbx, e))?;
    run.exec("export", &cmd)?;
    let _ = webake_sys::fsutil::remove_dir_all_if_exists(&ex);
    Ok(())
}
