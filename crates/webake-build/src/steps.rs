//! Stage 2 of a bake: the provisioners, each one run in the sandbox over an overlay whose
//! upper directory becomes that step's cached layer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use webake_sys::sandbox::{Bind, Guards, Overlay, SandboxSpec};

use crate::bake::Run;
use crate::bootstrap;
use crate::error::{BuildError, Result};
use crate::provision::{self, BakeVars, GeneratedFile, STAGING, StepCommand, StepPlan};
use crate::reporter::CacheStatus;
use crate::workspace::mkdir_p;

/// What a cached layer (and the last build of a step position, for `--explain`) records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerMeta {
    pub key: String,
    pub label: String,
    /// Input name -> sha256, as planned.
    pub inputs: BTreeMap<String, String>,
    pub bake_id: String,
    /// Unix seconds.
    pub created: String,
}

/// Run every step on top of `base`; returns the layers, top first (overlay order).
pub(crate) fn provision_stage(run: &mut Run<'_>, base: PathBuf) -> Result<Vec<PathBuf>> {
    provision_steps(run, base, usize::MAX)
}

/// Run the first `count` steps on top of `base` (cached or not, as a bake would); returns the
/// layers, top first.
pub(crate) fn provision_steps(
    run: &mut Run<'_>,
    base: PathBuf,
    count: usize,
) -> Result<Vec<PathBuf>> {
    let recipe = run.req.recipe;
    let vars = BakeVars {
        image_name: recipe.recipe.image.name.clone(),
        image_family: recipe.family().to_string(),
        image_version: run.req.version.clone(),
        bake_id: run.req.bake_id.clone(),
        source_date: run.req.plan.source_date,
    };
    let mut lowers = vec![base];
    let mut uncached_from_here = false;
    for (i, sp) in run.req.plan.steps.iter().enumerate().take(count) {
        // A step that reads secrets depends on values the key must not contain: it, and every
        // step after it, always runs and is never written to the shared cache.
        let p = &recipe.recipe.provisioners[i];
        if matches!(p, webake_spec::Provisioner::Shell(s) if !s.secret_env.is_empty())
            || recipe.step_uses_secret(i)
        {
            uncached_from_here = true;
        }
        let layer = run_step(run, i, sp, &vars, &lowers, uncached_from_here)?;
        lowers.insert(0, layer);
        run.check_cancel()?;
    }
    Ok(lowers)
}

/// The file where the last layer built at this position of this family is described.
fn explain_file(run: &Run<'_>, i: usize) -> PathBuf {
    run.req
        .workspace
        .cache_dir
        .join("explain")
        .join(run.req.recipe.family())
        .join(format!("step-{i}.json"))
}

/// A layer this bake can use as it is, or the right to build it.
enum Claim {
    Cached(PathBuf),
    /// Build it, holding the entry's lock (none for a step that is never cached).
    Build(Option<crate::workspace::EntryLock>),
}

/// The cached layer of `sp`, else its lock: a concurrent bake building the same layer (the
/// same first steps of two recipes baked at once) is waited for, and its layer used.
fn claim_layer(run: &mut Run<'_>, sp: &StepPlan, cacheable: bool, t: Instant) -> Result<Claim> {
    let req = run.req;
    let entry = req.workspace.layers_dir().join(&sp.key);
    let hit = |run: &mut Run<'_>| -> Option<PathBuf> {
        (cacheable && entry.join("meta.json").is_file() && entry.join("tree").is_dir()).then(|| {
            run.started(&sp.label, &format!("cached layer {}", &sp.key[..12]));
            touch(&entry);
            run.finished(&sp.label, t, CacheStatus::Hit, sp.key.clone());
            entry.join("tree")
        })
    };
    if let Some(tree) = hit(run) {
        return Ok(Claim::Cached(tree));
    }
    if !cacheable {
        return Ok(Claim::Build(None));
    }
    let lock = crate::workspace::EntryLock::acquire(
        &req.workspace.cache_dir,
        "layer",
        &sp.key,
        &req.cancel,
        &mut || {
            req.reporter.output(
                &sp.label,
                "waiting for a concurrent bake that builds the same layer",
            )
        },
    )
    .map_err(|e| e.in_step(&sp.label))?;
    Ok(match hit(run) {
        Some(tree) => Claim::Cached(tree),
        None => Claim::Build(Some(lock)),
    })
}

/// One step: its cached layer, or a run in the sandbox and the new layer. Returns the layer.
fn run_step(
    run: &mut Run<'_>,
    i: usize,
    sp: &StepPlan,
    vars: &BakeVars,
    lowers: &[PathBuf],
    uncached: bool,
) -> Result<PathBuf> {
    let req = run.req;
    let t = Instant::now();
    let entry = req.workspace.layers_dir().join(&sp.key);
    let cacheable = !req.no_cache && !uncached;
    let _lock = match claim_layer(run, sp, cacheable, t)? {
        Claim::Cached(tree) => return Ok(tree),
        Claim::Build(lock) => lock,
    };
    let why = if uncached {
        "reads secrets (or follows a step that does): never cached".to_string()
    } else {
        explain_miss(&explain_file(run, i), sp, req.no_cache)
    };
    run.started(&sp.label, &why);
    let dir = run.scratch.join(format!("step-{i}"));
    let (upper, work, gen_dir) = (dir.join("upper"), dir.join("work"), dir.join("gen"));
    for d in [&upper, &work, &gen_dir] {
        mkdir_p(d)?;
    }
    let p = &req.recipe.recipe.provisioners[i];
    let sc = provision::step_command(req.recipe, p, vars, req.host_env)
        .map_err(|e| e.in_step(&sp.label))?;
    let overlay = Overlay {
        lowers: lowers.to_vec(),
        upper: upper.clone(),
        work: work.clone(),
    };
    let sbx = dir.join("sandbox");
    mkdir_p(&sbx)?;
    let gen_bind = Bind {
        source: gen_dir.clone(),
        target: format!("{STAGING}/gen").into(),
        readonly: true,
    };
    let (spec, secrets, mut shell_binds) = match &sc {
        StepCommand::InImage {
            argv,
            env,
            binds,
            secrets,
            generated,
        } => {
            write_generated(&gen_dir, generated)?;
            (
                in_image_spec(run, &sbx, overlay, &gen_dir, argv, env, binds)?,
                secrets.clone(),
                binds.clone(),
            )
        }
        StepCommand::HostAnsible { .. } => (
            host_ansible_spec(run, &sbx, overlay, &gen_dir, &sc)?,
            Vec::new(),
            Vec::new(),
        ),
    };
    shell_binds.push(gen_bind);
    let cmd = spec
        .command(&req.helper_exe)
        .map_err(|e| BuildError::io(&sbx, e))?
        .secrets(req.secrets.iter().cloned())
        .secrets(secrets);
    let ran = run.exec(&sp.label, &cmd).map_err(|e| e.in_step(&sp.label));
    if matches!(sc, StepCommand::InImage { .. }) {
        // Keep what apt downloaded, even when the step failed.
        let _ = link_debs(&run.scratch.join("debs"), &req.workspace.packages_dir());
    }
    if let Err(e) = &ran
        && req.shell_on_error
        && !e.is_cancelled()
    {
        shell_after_failure(
            run,
            &sp.label,
            e,
            lowers,
            (upper.clone(), work),
            shell_binds,
        )?;
    }
    ran?;
    if uncached {
        // The layer stays in this bake's scratch only.
        run.finished(
            &sp.label,
            t,
            CacheStatus::Uncached,
            "reads secrets: never cached",
        );
        return Ok(upper);
    }
    let meta = commit_layer(run, sp, &upper, &entry)?;
    let _ = webake_sys::fsutil::remove_dir_all_if_exists(&dir);
    let explain = explain_file(run, i);
    if let Some(d) = explain.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    let _ = webake_sys::fsutil::atomic_write(
        &explain,
        serde_json::to_string(&meta).unwrap_or_default().as_bytes(),
    );
    run.finished(&sp.label, t, CacheStatus::Miss, why);
    Ok(entry.join("tree"))
}

/// `--on-error shell`: a shell on the failed step's tree, what it changed before failing
/// included, with its inputs and generated files bound where the step had them. Nothing of
/// it is kept: the bake then fails and cleans up as without it.
fn shell_after_failure(
    run: &Run<'_>,
    label: &str,
    error: &BuildError,
    lowers: &[PathBuf],
    upper: (PathBuf, PathBuf),
    binds: Vec<Bind>,
) -> Result<()> {
    let req = run.req;
    req.reporter.note(&format!(
        "{error}\nopening a shell in the tree of step {label} as it failed (--on-error shell): \
         the step's generated files are in {STAGING}/gen; exit the shell to clean up"
    ));
    let code = crate::debug::open_shell(&crate::debug::Shell {
        helper_exe: &req.helper_exe,
        scratch: &run.scratch,
        lowers: lowers.to_vec(),
        upper: Some(upper),
        network: req.network.clone(),
        binds,
        prompt: format!("webake: {label} failed"),
    })?;
    req.log
        .line(label, &format!("debug shell exited with status {code}"));
    Ok(())
}

/// Commit a step's upper directory as the cache entry `entry` (an atomic rename of a complete
/// directory).
fn commit_layer(run: &Run<'_>, sp: &StepPlan, upper: &Path, entry: &Path) -> Result<LayerMeta> {
    let req = run.req;
    let staging = req
        .workspace
        .layers_dir()
        .join(bootstrap::staging_name(&sp.key, &req.bake_id));
    let cleanup = webake_sys::fsutil::RemoveOnDrop::new(&staging);
    mkdir_p(&staging)?;
    std::fs::rename(upper, staging.join("tree")).map_err(|e| BuildError::io(upper, e))?;
    let meta = LayerMeta {
        key: sp.key.clone(),
        label: sp.label.clone(),
        inputs: sp.inputs.clone(),
        bake_id: req.bake_id.clone(),
        created: now_secs(),
    };
    let path = staging.join("meta.json");
    let json = serde_json::to_vec_pretty(&meta).map_err(|e| BuildError::Invalid(e.to_string()))?;
    std::fs::write(&path, json).map_err(|e| BuildError::io(&path, e))?;
    bootstrap::commit_entry(&staging, entry)?;
    let _ = cleanup.keep();
    Ok(meta)
}

/// Write a step's generated files into its gen directory.
fn write_generated(gen_dir: &Path, files: &[GeneratedFile]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for f in files {
        let path = gen_dir.join(&f.path);
        if let Some(d) = path.parent() {
            mkdir_p(d)?;
        }
        std::fs::write(&path, &f.content).map_err(|e| BuildError::io(&path, e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(f.mode))
            .map_err(|e| BuildError::io(&path, e))?;
    }
    Ok(())
}

/// Run the tree's programs under qemu-user when the recipe's architecture is not the host's.
pub(crate) fn emulate(spec: &mut SandboxSpec, recipe: &webake_spec::LoadedRecipe) -> Result<()> {
    spec.emulate(&crate::bake::tree_debian_arch(recipe))
        .map_err(|hint| BuildError::MissingTool {
            tool: "qemu-user".into(),
            hint,
        })
}

/// A step inside the image: its inputs, the generated files and the shared package cache
/// bound in.
fn in_image_spec(
    run: &Run<'_>,
    sbx: &Path,
    overlay: Overlay,
    gen_dir: &Path,
    argv: &[String],
    env: &[(String, String)],
    binds: &[Bind],
) -> Result<SandboxSpec> {
    let mut binds = binds.to_vec();
    // Shared package cache: the step's apt downloads land in a per-bake directory hard-linked
    // from (and back into) the shared cache, so .debs are reused across bakes, never written
    // into the layer, and concurrent bakes never share apt's lock.
    let debs = run.scratch.join("debs");
    link_debs(&run.req.workspace.packages_dir(), &debs)?;
    binds.push(Bind {
        source: debs,
        target: "/var/cache/apt/archives".into(),
        readonly: false,
    });
    binds.push(Bind {
        source: gen_dir.to_path_buf(),
        target: format!("{STAGING}/gen").into(),
        readonly: true,
    });
    let mut spec = SandboxSpec::image(sbx, argv.to_vec());
    emulate(&mut spec, run.req.recipe)?;
    spec.overlay = Some(overlay);
    spec.binds = binds;
    spec.network = run.req.network.clone();
    spec.env = env.to_vec();
    Ok(spec)
}

/// Ansible host mode: the controller runs from the host's Ansible installation (read-only) in
/// the sandbox, the image at /image (chroot connection).
fn host_ansible_spec(
    run: &Run<'_>,
    sbx: &Path,
    overlay: Overlay,
    gen_dir: &Path,
    sc: &StepCommand,
) -> Result<SandboxSpec> {
    let StepCommand::HostAnsible {
        args,
        env,
        generated,
        inventory_groups,
        vars_dirs,
        host_paths,
    } = sc
    else {
        unreachable!("host ansible only");
    };
    let mut inv = String::from(
        "[all]\nimage ansible_connection=community.general.chroot ansible_host=/image ansible_python_interpreter=/usr/bin/python3\n",
    );
    inv.push_str(inventory_groups);
    let mut files = generated.clone();
    files.push(GeneratedFile {
        path: "inventory/hosts".into(),
        content: inv.into_bytes(),
        mode: 0o644,
    });
    write_generated(gen_dir, &files)?;
    // group_vars / host_vars sit next to the inventory.
    for (name, target) in vars_dirs {
        let link = gen_dir.join("inventory").join(name);
        std::os::unix::fs::symlink(target, &link).map_err(|e| BuildError::io(&link, e))?;
    }
    let mut argv = vec![
        "ansible-playbook".to_string(),
        "-i".into(),
        gen_dir.join("inventory/hosts").display().to_string(),
        "--extra-vars".into(),
        format!("@{}", gen_dir.join("extra_vars.json").display()),
    ];
    argv.extend(args.iter().cloned());
    let mut spec = SandboxSpec::host_tools(sbx, argv);
    // The controller is the host's; the modules it sends run the image's Python.
    emulate(&mut spec, run.req.recipe)?;
    spec.env.extend(
        env.iter()
            .filter(|(k, _)| {
                k.starts_with("ANSIBLE") || k.starts_with("WEBAKE") || k == "PYTHONUNBUFFERED"
            })
            .cloned(),
    );
    let recipe = run.req.recipe;
    let recipe_dir = recipe
        .dir
        .canonicalize()
        .unwrap_or_else(|_| recipe.dir.clone());
    spec.overlay = Some(overlay);
    spec.api_filesystems = true;
    spec.network = run.req.network.clone();
    spec.guards = Guards {
        resolv_conf: true,
        policy_rc_d: true,
        dpkg_unsafe_io: true,
        apt_no_translations: true,
    };
    for d in [&recipe_dir, &gen_dir.to_path_buf()]
        .into_iter()
        .chain(host_paths)
    {
        spec.binds.push(Bind {
            source: d.clone(),
            target: d.clone(),
            readonly: true,
        });
    }
    spec.cwd = recipe_dir;
    Ok(spec)
}

/// Why a step misses the cache: compare with the inputs of the last layer built at this
/// position of this family.
pub fn explain_miss(explain_file: &Path, sp: &StepPlan, no_cache: bool) -> String {
    if no_cache {
        return "cache disabled (--no-cache)".into();
    }
    let Some(prev) = std::fs::read(explain_file)
        .ok()
        .and_then(|b| serde_json::from_slice::<LayerMeta>(&b).ok())
    else {
        return "not built before".into();
    };
    let mut changed = Vec::new();
    for (k, v) in &sp.inputs {
        match prev.inputs.get(k) {
            Some(old) if old == v => {}
            Some(_) => changed.push(format!("{k} changed")),
            None => changed.push(format!("{k} added")),
        }
    }
    for k in prev.inputs.keys() {
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

/// Mark a cache entry used now (the LRU of `webake cache gc` reads this time).
pub(crate) fn touch(entry: &Path) {
    if let Ok(f) = std::fs::File::open(entry.join("meta.json")) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

pub(crate) fn now_secs() -> String {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        .to_string()
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
