//! The bake: plan, then execute the plan.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;
use webake_spec::{Base, LoadedRecipe};
use webake_sys::CancelToken;
use webake_sys::process::{Cmd, run};
use webake_sys::sandbox::{Bind, Guards, Network, Overlay, Power, SandboxSpec, View};

use crate::assemble::{Artifact, AssembleInput, BootFiles, DiskIds};
use crate::bootstrap::{self, BootstrapPlan, HostSources};
use crate::digest::sha256_hex;
use crate::error::{BuildError, Result};
use crate::provision::{self, BakeVars, STAGING, StepPlan};
use crate::reporter::{CacheStatus, Reporter};
use crate::workspace::{Workspace, mkdir_p};

/// Where the base root filesystem comes from.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum BasePlan {
    /// Bootstrapped with mmdebstrap into the cache (`base.mmdebstrap`).
    Mmdebstrap(BootstrapPlan),
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
    /// Digest of everything that determines the image (recipe text, base, step inputs).
    pub inputs_digest: String,
    pub recipe_digest: String,
}

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
                "{}: base `image: {i}` is not supported by this webake yet; use base.mmdebstrap",
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
    plan_with_base(recipe, BasePlan::Mmdebstrap(bootstrap))
}

/// Compute the plan on top of an already decided base (reads the recipe's input files).
pub fn plan_with_base(recipe: &LoadedRecipe, base: BasePlan) -> Result<Plan> {
    let steps = provision::plan_steps(recipe, base.key(), &[])?;
    // The recipe text and the values of its variables (secrets as a placeholder).
    let recipe_digest = sha256_hex(&recipe.digest_input());
    let last = steps
        .last()
        .map(|s| s.key.clone())
        .unwrap_or_else(|| base.key().to_string());
    let inputs_digest =
        sha256_hex(format!("webake-inputs-v1\n{recipe_digest}\n{last}\n").as_bytes());
    Ok(Plan {
        base,
        steps,
        inputs_digest,
        recipe_digest,
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
    /// Called with the finished, finalized tree before assembly (inventory, lint, agent).
    pub inspect: &'a dyn Fn(&Path) -> std::result::Result<(), String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub name: String,
    pub cache: CacheStatus,
    pub seconds: f64,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct BakeResult {
    pub artifacts: Vec<Artifact>,
    pub boot: BootFiles,
    pub steps: Vec<StepReport>,
    pub finalize_actions: Vec<String>,
    pub disk_ids: DiskIds,
}

/// Removes the scratch directory unless disarmed (explicit `finish`, Drop backstop).
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

pub fn bake(req: BakeRequest<'_>) -> Result<BakeResult> {
    req.workspace.ensure()?;
    crate::assemble::check_host_tools()?;
    if matches!(req.plan.base, BasePlan::Mmdebstrap(_))
        && webake_sys::process::which("mmdebstrap").is_none()
    {
        return Err(BuildError::MissingTool {
            tool: "mmdebstrap".into(),
            hint: "apt-get install mmdebstrap".into(),
        });
    }
    // Bakes hold the cache lock shared; `webake cache gc|clear` takes it exclusively, so an
    // entry is never evicted while a bake may read it.
    let _cache_lock = crate::workspace::CacheLock::shared(&req.workspace.cache_dir)?;

    let scratch_path = req.workspace.scratch_dir(&req.bake_id);
    mkdir_p(&scratch_path)?;
    let mut scratch = Scratch {
        path: scratch_path.clone(),
        keep: false,
    };
    let result = bake_inner(&req, &scratch_path);
    match &result {
        Ok(_) => scratch.finish()?,
        Err(e) if req.keep_on_error && !e.is_cancelled() => {
            scratch.keep = true;
            req.reporter.note(&format!(
                "keeping scratch directory {} (--keep-on-error)",
                scratch_path.display()
            ));
        }
        Err(_) => scratch.finish()?,
    }
    result
}

fn check_cancel(c: &CancelToken) -> Result<()> {
    if c.is_cancelled() {
        Err(BuildError::Cancelled)
    } else {
        Ok(())
    }
}

fn bake_inner(req: &BakeRequest<'_>, scratch: &Path) -> Result<BakeResult> {
    let plan = req.plan;
    let recipe = req.recipe;
    let mut steps = Vec::new();
    let say = |step: &str, line: &str| {
        req.log.line(step, line);
        req.reporter.output(step, line);
    };
    let run_in = |step: &str, cmd: &Cmd| -> Result<()> {
        req.log.line(step, &format!("$ {cmd}"));
        let t = Instant::now();
        run(cmd, &req.cancel, &mut |line| say(step, line))?;
        req.log.line(
            step,
            &format!("  (done in {:.2}s)", t.elapsed().as_secs_f64()),
        );
        Ok(())
    };

    // 1. Bootstrap (cached), or the base the caller prepared.
    let step = "bootstrap";
    let t = Instant::now();
    let base_root = match &plan.base {
        BasePlan::Prepared {
            key,
            rootfs,
            description,
        } => {
            req.reporter
                .step_started(step, &format!("{description}: cached base {}", &key[..12]));
            if !rootfs.is_dir() {
                return Err(BuildError::Invalid(format!(
                    "the prepared base {} is missing (was the cache cleared during the bake?)",
                    rootfs.display()
                ))
                .in_step(step));
            }
            touch(&req.workspace.bootstrap_dir().join(key));
            finish_step(
                req.reporter,
                &mut steps,
                step,
                t,
                CacheStatus::Hit,
                key.clone(),
            );
            rootfs.clone()
        }
        BasePlan::Mmdebstrap(bs) => {
            match bootstrap::cached_rootfs(&req.workspace.bootstrap_dir(), &bs.key)
                .filter(|_| !req.refresh_base)
            {
                Some(root) => {
                    req.reporter.step_started(
                        step,
                        &format!("cached base {} ({})", &bs.key[..12], bs.suite),
                    );
                    touch(&req.workspace.bootstrap_dir().join(&bs.key));
                    finish_step(
                        req.reporter,
                        &mut steps,
                        step,
                        t,
                        CacheStatus::Hit,
                        bs.key.clone(),
                    );
                    root
                }
                None => {
                    let why = if req.refresh_base {
                        "refresh requested".to_string()
                    } else {
                        format!("no cached base for key {}", &bs.key[..12])
                    };
                    req.reporter.step_started(
                        step,
                        &format!(
                            "mmdebstrap {} {} (mirror: {}; {why})",
                            bs.suite,
                            bs.variant,
                            bs.mirror.as_deref().unwrap_or("default")
                        ),
                    );
                    let staging = req
                        .workspace
                        .bootstrap_dir()
                        .join(bootstrap::staging_name(&bs.key, &req.bake_id));
                    let _cleanup = RemoveOnDrop(staging.clone());
                    mkdir_p(&staging)?;
                    let target = staging.join("rootfs");
                    let argv = match bootstrap::tmpfs_budget() {
                        // dpkg's many small writes and renames are several times faster in
                        // memory; the finished tree is then copied into the cache in one go.
                        // The tmpfs lives in the sandbox's mount namespace: it is gone when
                        // the sandbox ends, also when the bake is killed.
                        Some(bytes) => {
                            let mem = staging.join("mem");
                            let mut argv = vec![
                                "sh".to_string(),
                                "-ec".into(),
                                bootstrap::IN_MEMORY_SCRIPT.into(),
                                "webake-bootstrap".into(),
                                mem.display().to_string(),
                                target.display().to_string(),
                                bytes.to_string(),
                                bootstrap::INITRAMFS_HOOK.into(),
                            ];
                            argv.extend(bs.args(&mem.join("rootfs"), None, false));
                            argv
                        }
                        None => {
                            let mut argv = vec!["mmdebstrap".to_string()];
                            argv.extend(bs.args(&target, None, true));
                            argv
                        }
                    };
                    // mmdebstrap runs from the host's installation (read-only) in the
                    // sandbox: its maintainer scripts are as untrusted as any step's.
                    let sbx = staging.join("sandbox");
                    mkdir_p(&sbx)?;
                    let mut spec = SandboxSpec::host_tools(&sbx, argv);
                    spec.view = View::Host {
                        tree: None,
                        image_at: "/image".into(),
                    };
                    spec.power = Power::Mounts;
                    spec.network = req.network.clone();
                    spec.env.extend(bs.env());
                    spec.binds.push(Bind {
                        source: staging.clone(),
                        target: staging.clone(),
                        readonly: false,
                    });
                    for k in &bs.keyrings {
                        spec.binds.push(Bind {
                            source: k.clone(),
                            target: k.clone(),
                            readonly: true,
                        });
                    }
                    let cmd = spec
                        .command(&req.helper_exe)
                        .map_err(|e| BuildError::io(&sbx, e))?;
                    run_in(step, &cmd).map_err(|e| e.in_step(step))?;
                    let _ = std::fs::remove_dir(&sbx);
                    bootstrap::populate_dev(&target).map_err(|e| e.in_step(step))?;
                    let meta = serde_json::json!({"key": bs.key, "plan": bs, "bake_id": req.bake_id, "created": jiff_now()});
                    write_json(&staging.join("meta.json"), &meta)?;
                    let dest = req.workspace.bootstrap_dir().join(&bs.key);
                    if req.refresh_base {
                        webake_sys::fsutil::remove_dir_all_if_exists(&dest)
                            .map_err(|e| BuildError::io(&dest, e))?;
                    }
                    bootstrap::commit_entry(&staging, &dest)?;
                    finish_step(req.reporter, &mut steps, step, t, CacheStatus::Miss, why);
                    dest.join("rootfs")
                }
            }
        }
    };
    check_cancel(&req.cancel)?;

    // 2. Provisioners, each an overlay layer (top first in `lowers`).
    let vars = BakeVars {
        image_name: recipe.recipe.image.name.clone(),
        image_family: recipe.family().to_string(),
        image_version: req.version.clone(),
        bake_id: req.bake_id.clone(),
    };
    let mut lowers: Vec<PathBuf> = vec![base_root.clone()];
    let mut uncached_from_here = false;
    for (i, sp) in plan.steps.iter().enumerate() {
        let p = &recipe.recipe.provisioners[i];
        let t = Instant::now();
        let entry = req.workspace.layers_dir().join(&sp.key);
        let explain_file = req
            .workspace
            .cache_dir
            .join("explain")
            .join(recipe.family())
            .join(format!("step-{i}.json"));
        // A step that reads secrets depends on values the key must not contain: it, and every
        // step after it, always runs and is never written to the shared cache.
        if matches!(p, webake_spec::Provisioner::Shell(s) if !s.secret_env.is_empty())
            || recipe.step_uses_secret(i)
        {
            uncached_from_here = true;
        }
        if !req.no_cache
            && !uncached_from_here
            && entry.join("meta.json").is_file()
            && entry.join("tree").is_dir()
        {
            req.reporter
                .step_started(&sp.label, &format!("cached layer {}", &sp.key[..12]));
            touch(&entry);
            finish_step(
                req.reporter,
                &mut steps,
                &sp.label,
                t,
                CacheStatus::Hit,
                sp.key.clone(),
            );
            lowers.insert(0, entry.join("tree"));
            continue;
        }
        let why = if uncached_from_here {
            "reads secrets (or follows a step that does): never cached".to_string()
        } else {
            explain_miss(&explain_file, sp, req.no_cache)
        };
        req.reporter.step_started(&sp.label, &why);
        let dir = scratch.join(format!("step-{i}"));
        let (upper, work, gen_dir) = (dir.join("upper"), dir.join("work"), dir.join("gen"));
        for d in [&upper, &work, &gen_dir] {
            mkdir_p(d)?;
        }
        let sc = provision::step_command(recipe, p, &vars, req.host_env)
            .map_err(|e| e.in_step(&sp.label))?;
        for (name, content, mode) in &sc.generated {
            if let Some(link) = name.strip_prefix("link:") {
                let target = String::from_utf8_lossy(content).to_string();
                mkdir_p(&gen_dir.join("inventory"))?;
                std::os::unix::fs::symlink(&target, gen_dir.join("inventory").join(link))
                    .map_err(|e| BuildError::io(gen_dir.join(link), e))?;
                continue;
            }
            let path = gen_dir.join(name);
            if let Some(d) = path.parent() {
                mkdir_p(d)?;
            }
            std::fs::write(&path, content).map_err(|e| BuildError::io(&path, e))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode))
                .map_err(|e| BuildError::io(&path, e))?;
        }
        let overlay = Overlay {
            lowers: lowers.clone(),
            upper: upper.clone(),
            work: work.clone(),
        };
        let sbx = dir.join("sandbox");
        mkdir_p(&sbx)?;
        let spec = if sc.on_host {
            // ansible (host mode): the controller runs from the host's Ansible installation
            // (read-only) in the sandbox, the image at /image (chroot connection).
            let mut inv = String::from(
                "[all]\nimage ansible_connection=community.general.chroot ansible_host=/image ansible_python_interpreter=/usr/bin/python3\n",
            );
            if let Some((_, g, _)) = sc
                .generated
                .iter()
                .find(|(n, _, _)| n == "inventory.groups")
            {
                inv.push_str(&String::from_utf8_lossy(g));
            }
            mkdir_p(&gen_dir.join("inventory"))?;
            std::fs::write(gen_dir.join("inventory/hosts"), inv)
                .map_err(|e| BuildError::io(gen_dir.join("inventory/hosts"), e))?;
            let mut argv = vec![
                "ansible-playbook".to_string(),
                "-i".into(),
                gen_dir.join("inventory/hosts").display().to_string(),
                "--extra-vars".into(),
                format!("@{}", gen_dir.join("extra_vars.json").display()),
            ];
            argv.extend(sc.argv.iter().cloned());
            let mut spec = SandboxSpec::host_tools(&sbx, argv);
            spec.env.extend(
                sc.env
                    .iter()
                    .filter(|(k, _)| {
                        k.starts_with("ANSIBLE")
                            || k.starts_with("WEBAKE")
                            || k == "PYTHONUNBUFFERED"
                    })
                    .cloned(),
            );
            let recipe_dir = recipe
                .dir
                .canonicalize()
                .unwrap_or_else(|_| recipe.dir.clone());
            spec.overlay = Some(overlay);
            spec.api_filesystems = true;
            spec.network = req.network.clone();
            spec.guards = Guards {
                resolv_conf: true,
                policy_rc_d: true,
                dpkg_unsafe_io: true,
            };
            for d in [&recipe_dir, &gen_dir] {
                spec.binds.push(Bind {
                    source: d.clone(),
                    target: d.clone(),
                    readonly: true,
                });
            }
            for extra in &sc.host_paths {
                spec.binds.push(Bind {
                    source: extra.clone(),
                    target: extra.clone(),
                    readonly: true,
                });
            }
            spec.cwd = recipe_dir;
            spec
        } else {
            let mut binds = sc.binds.clone();
            // Shared package cache: the step's apt downloads land in a per-bake directory
            // hard-linked from (and back into) the shared cache, so .debs are reused across
            // bakes, never written into the layer, and concurrent bakes never share apt's lock.
            let debs = scratch.join("debs");
            link_debs(&req.workspace.packages_dir(), &debs)?;
            binds.push(Bind {
                source: debs.clone(),
                target: "/var/cache/apt/archives".into(),
                readonly: false,
            });
            binds.push(Bind {
                source: gen_dir.clone(),
                target: format!("{STAGING}/gen").into(),
                readonly: true,
            });
            let mut spec = SandboxSpec::image(&sbx, sc.argv.clone());
            spec.overlay = Some(overlay);
            spec.binds = binds;
            spec.network = req.network.clone();
            spec.env = sc.env.clone();
            spec
        };
        let cmd = spec
            .command(&req.helper_exe)
            .map_err(|e| BuildError::io(&sbx, e))?
            .secrets(req.secrets.iter().cloned())
            .secrets(sc.secrets.clone());
        let ran = run_in(&sp.label, &cmd).map_err(|e| e.in_step(&sp.label));
        if !sc.on_host {
            // Keep what apt downloaded, even when the step failed.
            let _ = link_debs(&scratch.join("debs"), &req.workspace.packages_dir());
        }
        ran?;
        if uncached_from_here {
            // Keep the layer in this bake's scratch only.
            finish_step(
                req.reporter,
                &mut steps,
                &sp.label,
                t,
                CacheStatus::Uncached,
                "reads secrets: never cached",
            );
            lowers.insert(0, upper.clone());
            check_cancel(&req.cancel)?;
            continue;
        }
        // Commit the layer: upper -> cache entry (atomic rename of a complete directory).
        let staging = req
            .workspace
            .layers_dir()
            .join(bootstrap::staging_name(&sp.key, &req.bake_id));
        let _cleanup = RemoveOnDrop(staging.clone());
        mkdir_p(&staging)?;
        std::fs::rename(&upper, staging.join("tree")).map_err(|e| BuildError::io(&upper, e))?;
        let meta = serde_json::json!({"key": sp.key, "label": sp.label, "inputs": sp.inputs, "bake_id": req.bake_id, "created": jiff_now()});
        write_json(&staging.join("meta.json"), &meta)?;
        bootstrap::commit_entry(&staging, &entry)?;
        let _ = webake_sys::fsutil::remove_dir_all_if_exists(&dir);
        if let Some(d) = explain_file.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        let _ = webake_sys::fsutil::atomic_write(
            &explain_file,
            serde_json::to_string(&meta).unwrap_or_default().as_bytes(),
        );
        finish_step(
            req.reporter,
            &mut steps,
            &sp.label,
            t,
            CacheStatus::Miss,
            why,
        );
        lowers.insert(0, entry.join("tree"));
        check_cancel(&req.cancel)?;
    }

    // 3. Export the merged tree once into a plain directory.
    let step = "export";
    let t = Instant::now();
    req.reporter
        .step_started(step, &format!("{} layer(s)", lowers.len()));
    let tree = scratch.join("tree");
    mkdir_p(&tree)?;
    // Hard links to the layers (no data copied); a copy of the mounted overlay where that
    // cannot be done (layers on another filesystem, overlay features it does not model).
    let bottom_first: Vec<PathBuf> = lowers.iter().rev().cloned().collect();
    match crate::export::link_layers(&bottom_first, &tree) {
        Ok(st) => {
            say(
                step,
                &format!(
                    "{} files hard-linked from the layers, {} directories, {} whiteouts applied",
                    st.linked, st.dirs, st.whiteouts
                ),
            );
        }
        Err(crate::export::LinkError::Build(e)) => return Err(e.in_step(step)),
        Err(crate::export::LinkError::Unsupported(why)) => {
            say(step, &format!("copying the merged layers ({why})"));
            webake_sys::fsutil::remove_dir_all_if_exists(&tree)
                .map_err(|e| BuildError::io(&tree, e))?;
            mkdir_p(&tree)?;
            copy_merged(req, scratch, &lowers, &tree, &run_in).map_err(|e| e.in_step(step))?;
        }
    }
    finish_step(
        req.reporter,
        &mut steps,
        step,
        t,
        CacheStatus::Uncached,
        String::new(),
    );
    check_cancel(&req.cancel)?;

    // 4. Finalize: environment-agnostic.
    let step = "finalize";
    let t = Instant::now();
    req.reporter
        .step_started(step, "environment-agnostic cleanup");
    let host_resolv = std::fs::read("/etc/resolv.conf").ok();
    let fin =
        crate::finalize::finalize(&tree, host_resolv.as_deref()).map_err(|e| e.in_step(step))?;
    for a in &fin.actions {
        say(step, a);
    }
    (req.inspect)(&tree).map_err(|m| BuildError::Invalid(m).in_step(step))?;
    finish_step(
        req.reporter,
        &mut steps,
        step,
        t,
        CacheStatus::Uncached,
        String::new(),
    );
    check_cancel(&req.cancel)?;

    // 5. Assemble the disk and write the artifacts.
    let step = "assemble";
    let t = Instant::now();
    req.reporter.step_started(
        step,
        &format!(
            "GPT disk {} (ESP + ext4), outputs: {}",
            recipe.recipe.disk.size,
            recipe
                .recipe
                .outputs
                .iter()
                .map(|o| o.extension())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let ids = DiskIds::derive(&req.image_id);
    let input = AssembleInput {
        tree: &tree,
        disk: &recipe.recipe.disk,
        ids: ids.clone(),
        title: format!("{} {}", recipe.recipe.image.name, req.version),
        scratch: &scratch.join("assemble"),
        out_dir: &req.workspace.image_dir(&req.image_id),
        base_name: format!("{}-{}", recipe.recipe.image.name, req.version),
        outputs: &recipe.recipe.outputs,
    };
    let mut runner = |c: &Cmd| run_in(step, c);
    let (artifacts, boot) =
        crate::assemble::assemble(&input, &mut runner).map_err(|e| e.in_step(step))?;
    finish_step(
        req.reporter,
        &mut steps,
        step,
        t,
        CacheStatus::Uncached,
        String::new(),
    );
    Ok(BakeResult {
        artifacts,
        boot,
        steps,
        finalize_actions: fin.actions,
        disk_ids: ids,
    })
}

/// Export by copying: `cp -a` of the layers mounted as one overlay in a sandbox.
fn copy_merged(
    req: &BakeRequest<'_>,
    scratch: &Path,
    lowers: &[PathBuf],
    tree: &Path,
    run_in: &dyn Fn(&str, &Cmd) -> Result<()>,
) -> Result<()> {
    if lowers.len() == 1 {
        return run_in(
            "export",
            &Cmd::new("cp")
                .args(["-a", "--sparse=always"])
                .arg(format!("{}/.", lowers[0].display()))
                .arg(tree),
        );
    }
    let ex = scratch.join("export");
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
        .command(&req.helper_exe)
        .map_err(|e| BuildError::io(&sbx, e))?;
    run_in("export", &cmd)?;
    let _ = webake_sys::fsutil::remove_dir_all_if_exists(&ex);
    Ok(())
}

/// Why a step misses the cache: compare with the inputs of the last layer built at this
/// position of this family.
pub fn explain_miss(explain_file: &Path, sp: &StepPlan, no_cache: bool) -> String {
    if no_cache {
        return "cache disabled (--no-cache)".into();
    }
    let Ok(text) = std::fs::read_to_string(explain_file) else {
        return "not built before".into();
    };
    let Ok(prev) = serde_json::from_str::<serde_json::Value>(&text) else {
        return "not built before".into();
    };
    let prev_inputs = prev
        .get("inputs")
        .and_then(|v| v.as_object())
        .cloned()
        .unwrap_or_default();
    let mut changed = Vec::new();
    for (k, v) in &sp.inputs {
        match prev_inputs.get(k).and_then(|x| x.as_str()) {
            Some(old) if old == v => {}
            Some(_) => changed.push(format!("{k} changed")),
            None => changed.push(format!("{k} added")),
        }
    }
    for k in prev_inputs.keys() {
        if !sp.inputs.contains_key(k) {
            changed.push(format!("{k} removed"));
        }
    }
    if changed.is_empty() {
        "an earlier step changed".into()
    } else {
        changed.join(", ")
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = webake_sys::fsutil::remove_dir_all_if_exists(&self.0);
    }
}

fn touch(p: &Path) {
    let now = std::time::SystemTime::now();
    if let Ok(f) = std::fs::File::open(p.join("meta.json")) {
        let _ = f.set_modified(now);
    }
}

fn write_json(p: &Path, v: &serde_json::Value) -> Result<()> {
    let s = serde_json::to_string_pretty(v).map_err(|e| BuildError::Invalid(e.to_string()))?;
    std::fs::write(p, s).map_err(|e| BuildError::io(p, e))
}

fn jiff_now() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    d.as_secs().to_string()
}

/// Hard-link every `*.deb` of `from` into `to` (same filesystem), creating `to/partial`.
fn link_debs(from: &Path, to: &Path) -> Result<()> {
    mkdir_p(&to.join("partial"))?;
    let Ok(rd) = std::fs::read_dir(from) else {
        return Ok(());
    };
    for e in rd.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().ends_with(".deb") || !e.path().is_file() {
            continue;
        }
        let dest = to.join(&name);
        if !dest.exists() && std::fs::hard_link(e.path(), &dest).is_err() {
            std::fs::copy(e.path(), &dest).map_err(|err| BuildError::io(&dest, err))?;
        }
    }
    Ok(())
}

/// Report a finished step and record it for the bake result.
fn finish_step(
    reporter: &dyn Reporter,
    steps: &mut Vec<StepReport>,
    name: &str,
    t: Instant,
    cache: CacheStatus,
    detail: impl Into<String>,
) {
    reporter.step_finished(name, t.elapsed(), cache);
    steps.push(StepReport {
        name: name.into(),
        cache,
        seconds: t.elapsed().as_secs_f64(),
        detail: detail.into(),
    });
}
