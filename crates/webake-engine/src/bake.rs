//! The bake stage: from a plan to an image in the catalog.
//!
//! ```text
//! up to date?  -> the catalog's image (nothing runs)
//! begin        -> bake record, lease, log
//! base         -> an AMI base downloaded and extracted (webake-build bootstraps the others)
//! build        -> RootFs (webake-build: base, steps, export, finalize)
//! inspect      -> agent installed, inventory taken, lint (errors fail the bake)
//! assemble     -> DiskImage (webake-build), SBOMs next to the artifacts
//! gate         -> boot test when the recipe (or the caller) asks; a failing image is not kept
//! record       -> the image in the catalog, the bake marked succeeded
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use webake_build::bake::{BakeLog, BakeRequest, Plan, StepReport};

use crate::plan::Planned;
use webake_build::{DiskImage, RootFs};
use webake_catalog::{
    Artifact, ArtifactFormat, Bake, BakeId, BakeStatus, BaseRecord, Image, ImageId, Provenance,
    StepRecord, TestResult, VariableRecord,
};
use webake_spec::LoadedRecipe;

use crate::events::BuildBridge;
use crate::{Context, Error, Result, ResultExt};

/// Options of a bake (the CLI's flags, resolved).
#[derive(Debug, Clone, Default)]
pub struct BakeOptions {
    /// Bake even when the catalog has an image baked from exactly these inputs.
    pub force: bool,
    /// Ignore cached step layers.
    pub no_cache: bool,
    /// Bootstrap the base again.
    pub refresh_base: bool,
    /// Keep the scratch directory of a failed bake.
    pub keep_on_error: bool,
    /// Boot-test before recording, whatever the recipe says (a gate).
    pub test: bool,
    /// When a step fails, open an interactive shell in its tree before cleaning up.
    pub shell_on_error: bool,
    /// The image's version, instead of the recipe's template (`webake verify` rebakes an image
    /// with its own).
    pub version: Option<String>,
}

/// What a bake produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BakeOutcome {
    pub image: Image,
    pub bake_id: BakeId,
    /// The bake log (empty when nothing was baked).
    pub log: PathBuf,
    pub seconds: f64,
    pub steps: Vec<StepReport>,
    /// True when the catalog's image was up to date and nothing was baked.
    pub up_to_date: bool,
}

/// Bake `recipe` as `plan` says, unless the catalog holds an image of the same inputs.
pub fn bake(
    ctx: &Context<'_>,
    recipe: &LoadedRecipe,
    plan: &Planned,
    opts: &BakeOptions,
) -> Result<BakeOutcome> {
    if !(opts.force || opts.no_cache || opts.refresh_base || opts.test)
        && let Some(image) = up_to_date(ctx, recipe.family(), &plan.inputs_digest)?
    {
        ctx.reporter.note(&format!(
            "image {} is up to date: baked from the same inputs (digest {}); --force bakes again",
            image.id,
            &plan.inputs_digest[..16]
        ));
        return Ok(BakeOutcome {
            bake_id: image.bake_id.clone(),
            image,
            log: PathBuf::new(),
            seconds: 0.0,
            steps: vec![],
            up_to_date: true,
        });
    }
    let started = Instant::now();
    let b = Begun::begin(ctx, recipe, plan, opts.version.as_deref())?;
    let result = stages(ctx, recipe, plan, opts, &b);
    b.end(ctx, started, result)
}

/// The catalog's image of `family` baked from exactly `inputs_digest`, if its artifacts are
/// all still there with their recorded sizes.
pub fn up_to_date(ctx: &Context<'_>, family: &str, inputs_digest: &str) -> Result<Option<Image>> {
    if !ctx.catalog_exists() {
        return Ok(None);
    }
    Ok(ctx
        .catalog()?
        .find_by_inputs(family, inputs_digest)?
        .filter(artifacts_intact))
}

/// Every artifact of the image is on disk with its recorded size.
pub fn artifacts_intact(img: &Image) -> bool {
    !img.artifacts.is_empty()
        && img
            .artifacts
            .iter()
            .all(|a| std::fs::metadata(&a.path).is_ok_and(|m| m.len() == a.size))
}

/// A bake that has its record, lease and log.
struct Begun {
    bake_id: BakeId,
    image_id: ImageId,
    version: String,
    log: BakeLog,
    created_at: i64,
    _lease: webake_build::workspace::BakeLease,
}

impl Begun {
    fn begin(
        ctx: &Context<'_>,
        recipe: &LoadedRecipe,
        plan: &Planned,
        version: Option<&str>,
    ) -> Result<Self> {
        let bake_id = BakeId::new(new_bake_id());
        let image_id = ImageId::new(format!(
            "img-{}",
            &webake_build::digest::sha256_hex(
                format!("{bake_id}/{}", plan.inputs_digest).as_bytes()
            )[..12]
        ));
        let now = jiff::Timestamp::now();
        let version = match version {
            Some(v) => v.to_string(),
            None => image_version(ctx, recipe, plan)?,
        };
        let ws = &ctx.workspace;
        let log = BakeLog::create(&ws.bake_log_dir(&bake_id).join("bake.log"))?;
        log.line(
            "webake",
            &format!(
                "bake {bake_id} of {} (image {image_id}, version {version})",
                recipe.path.display()
            ),
        );
        // Held until the bake ends: the scratch dir, staging entries and image dir stay ours
        // for `webake clean` of any catalog, up to the catalog record.
        let lease =
            webake_build::workspace::BakeLease::acquire(&ws.cache_dir, &bake_id, &image_id)?;
        ctx.catalog()?.begin_bake(&Bake {
            id: bake_id.clone(),
            recipe_path: recipe.path.display().to_string(),
            name: recipe.recipe.image.name.clone(),
            family: recipe.family().to_string(),
            status: BakeStatus::Running,
            started_at: now.as_second(),
            finished_at: None,
            log_path: log.path.display().to_string(),
            error: None,
            image_id: None,
            pid: std::process::id() as i64,
            inputs_digest: plan.inputs_digest.clone(),
            host: hostname(),
        })?;
        ctx.reporter.note(&format!(
            "bake {bake_id}: {} -> image {image_id} version {version}; log {}",
            recipe.path.display(),
            log.path.display()
        ));
        Ok(Self {
            bake_id,
            image_id,
            version,
            log,
            created_at: now.as_second(),
            _lease: lease,
        })
    }

    /// Close the bake record: succeeded (the image is recorded by then), or failed/cancelled
    /// with the error, partial artifacts removed.
    fn end(
        self,
        ctx: &Context<'_>,
        started: Instant,
        result: Result<(Image, Vec<StepReport>)>,
    ) -> Result<BakeOutcome> {
        let now = jiff::Timestamp::now().as_second();
        match result {
            Ok((image, steps)) => Ok(BakeOutcome {
                image,
                bake_id: self.bake_id,
                log: self.log.path.clone(),
                seconds: started.elapsed().as_secs_f64(),
                steps,
                up_to_date: false,
            }),
            Err(e) => {
                let cancelled =
                    e.kind() == crate::ErrorKind::Interrupted || webake_sys::cancel::signalled();
                let status = if cancelled {
                    BakeStatus::Cancelled
                } else {
                    BakeStatus::Failed
                };
                let msg = crate::error::chain(&e);
                let verb = if cancelled { "cancelled" } else { "failed" };
                self.log
                    .line("webake", &format!("bake {} {verb}: {msg}", self.bake_id));
                if let Ok(c) = ctx.catalog() {
                    let _ = c.end_bake(&self.bake_id, status, Some(&msg), now);
                }
                // Partial artifacts never stay.
                let _ = std::fs::remove_dir_all(ctx.workspace.image_dir(&self.image_id));
                if cancelled {
                    // Said once, with where it stopped: the inner errors only repeat it.
                    let during = step_of(&e)
                        .map(|s| format!(" during step {s}"))
                        .unwrap_or_default();
                    return Err(Error::Interrupted.context(format!(
                        "bake {} cancelled{during}; nothing was recorded (log: {})",
                        self.bake_id,
                        self.log.path.display()
                    )));
                }
                Err(e.context(format!(
                    "bake {} {verb} (log: {})",
                    self.bake_id,
                    self.log.path.display()
                )))
            }
        }
    }
}

/// The step a build error happened in, if it says.
fn step_of(e: &Error) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        let build = c.downcast_ref::<webake_build::BuildError>().or_else(|| {
            match c.downcast_ref::<Error>() {
                Some(Error::Build(b)) => Some(b.as_ref()),
                _ => None,
            }
        });
        if let Some(webake_build::BuildError::Step { step, .. }) = build {
            return Some(step.clone());
        }
        cur = c.source();
    }
    None
}

/// The version template rendered at the source date. When another image of the family
/// already has that version but other inputs (a recipe change against the same upstream
/// state), `.2`, `.3`... follow: a version names one image content.
fn image_version(ctx: &Context<'_>, recipe: &LoadedRecipe, plan: &Planned) -> Result<String> {
    let v = recipe
        .recipe
        .image
        .version
        .clone()
        .unwrap_or_default()
        .render(plan.source_date.timestamp());
    if !ctx.catalog_exists() {
        return Ok(v);
    }
    // Each architecture's image of a family has the version of the others baked from the same
    // source date: only an image of the same architecture takes a version.
    let arch = image_arch(recipe);
    let taken: Vec<(String, String)> = ctx
        .catalog()?
        .list_images(Some(recipe.family()))?
        .into_iter()
        .filter(|i| i.arch == arch || i.arch.is_empty())
        .map(|i| (i.version, i.inputs_digest))
        .collect();
    let free = |cand: &str| {
        taken
            .iter()
            .all(|(ver, inputs)| ver != cand || *inputs == plan.inputs_digest)
    };
    Ok((1..)
        .map(|n| {
            if n == 1 {
                v.clone()
            } else {
                format!("{v}.{n}")
            }
        })
        .find(|c| free(c))
        .expect("some suffix is free"))
}

/// Everything between the bake record and its closing.
fn stages(
    ctx: &Context<'_>,
    recipe: &LoadedRecipe,
    plan: &Planned,
    opts: &BakeOptions,
    b: &Begun,
) -> Result<(Image, Vec<StepReport>)> {
    crate::base::ensure(ctx, recipe, plan, &b.bake_id, opts.refresh_base, &b.log)?;
    let host_env = |k: &str| std::env::var(k).ok();
    let bridge = BuildBridge(ctx.reporter);
    let req = BakeRequest {
        recipe,
        plan: &plan.plan,
        bake_id: b.bake_id.to_string(),
        image_id: b.image_id.to_string(),
        version: b.version.clone(),
        workspace: &ctx.workspace,
        helper_exe: ctx.settings.helper_exe.clone(),
        cancel: ctx.cancel.clone(),
        reporter: &bridge,
        log: &b.log,
        keep_on_error: opts.keep_on_error,
        refresh_base: opts.refresh_base,
        no_cache: opts.no_cache,
        host_env: &host_env,
        network: webake_build::provision::sandbox_network(recipe),
        secrets: webake_build::provision::recipe_secrets(recipe, &host_env),
        shell_on_error: opts.shell_on_error,
    };
    let root = webake_build::build_root(&req)?;
    let inventory = match inspect(ctx, recipe, plan, &req, &root) {
        Ok(inv) => inv,
        Err(e) => {
            if opts.keep_on_error {
                let kept = root.keep();
                ctx.reporter.note(&format!(
                    "keeping scratch directory {} (--keep-on-error)",
                    kept.display()
                ));
            }
            return Err(e);
        }
    };
    let step_sources = record_step_sources(ctx, plan, &root.tree);
    let disk = webake_build::assemble_disk(&req, root)?;
    let mut image = image_record(ctx, recipe, plan, b, &disk, inventory);
    add_step_sources(ctx, plan, &mut image, step_sources);
    write_sboms(ctx, recipe, &image, &b.version)?;
    if opts.test || recipe.recipe.test.as_ref().is_some_and(|t| t.gate) {
        gate(ctx, recipe, &mut image, &b.log)?;
    }
    let now = jiff::Timestamp::now().as_second();
    ctx.catalog()?.record_image(&image, now)?;
    Ok((image, disk.steps))
}

/// The apt sources the steps added to `tree` (beyond the base's), for the next plan.
fn record_step_sources(
    ctx: &Context<'_>,
    plan: &Planned,
    tree: &std::path::Path,
) -> Option<webake_catalog::StepSourcesRecord> {
    let base_root = ctx
        .workspace
        .bootstrap_dir()
        .join(plan.base.key())
        .join("rootfs");
    let arch = match &plan.base {
        webake_build::bake::BasePlan::Mmdebstrap(b) => b.architecture.clone(),
        _ => "amd64".to_string(),
    };
    let generation = plan
        .step_sources
        .as_ref()
        .map(|s| s.generation.clone())
        .unwrap_or_default();
    crate::step_sources::record(ctx, tree, &base_root, &arch, &generation)
}

/// Record the step sources in the provenance, and the updates they brought with the base's.
fn add_step_sources(
    ctx: &Context<'_>,
    plan: &Planned,
    image: &mut Image,
    record: Option<webake_catalog::StepSourcesRecord>,
) {
    image.provenance.step_sources = record;
    let Some(r) = plan
        .step_sources
        .as_ref()
        .filter(|r| r.status == crate::upstream::UpstreamStatus::Updates)
    else {
        return;
    };
    let up = image
        .provenance
        .upstream
        .get_or_insert_with(Default::default);
    if up.summary.is_empty() {
        up.status = "updates".into();
        up.summary = r.summary.clone();
    } else {
        up.summary = format!("{}; {}", up.summary, r.summary);
    }
    up.updates
        .extend(crate::upstream::update_records(ctx, &r.candidates, None));
}

/// Between the finished tree and the disk: the agent goes in, the inventory is taken, the
/// hygiene lint runs (its errors fail the bake).
fn inspect(
    ctx: &Context<'_>,
    recipe: &LoadedRecipe,
    plan: &Plan,
    req: &BakeRequest<'_>,
    root: &RootFs,
) -> Result<webake_inventory::Inventory> {
    let step = "inspect";
    let t = Instant::now();
    ctx.reporter.event(&crate::Event::StepStarted {
        step,
        detail: "agent, inventory, hygiene lint",
    });
    if let Some(agent) = recipe.recipe.agent.as_ref().filter(|a| a.install) {
        let arch = recipe
            .architecture()
            .unwrap_or(webake_spec::Architecture::host());
        let bin = ctx.settings.agent_for(arch).ok_or_else(|| {
            if arch == webake_spec::Architecture::host() {
                Error::Invalid("the recipe installs the webake agent, but no webake-agent binary was found next to webake (build it with `cargo build -p webake-agent`, or set WEBAKE_AGENT_BINARY)".into())
            } else {
                Error::Invalid(format!("the recipe installs the webake agent in a {arch} image, but no {arch} webake-agent was found next to webake (scripts/setup.sh cross-builds it: `cargo build --release -p webake-agent --target {}-unknown-linux-gnu`; or set WEBAKE_AGENT_BINARY_{})", arch.qemu(), arch.as_str().to_uppercase()))
            }
        })?;
        webake_build::agent::check_agent_arch(bin, arch.debian())
            .context("installing the agent")?;
        webake_build::agent::install_agent(
            &root.tree,
            bin,
            recipe.recipe.image.role.as_deref(),
            agent.hostname_template.as_deref(),
        )
        .context("installing the agent")?;
    }
    let provenance = webake_inventory::Provenance {
        recipe_digest: plan.recipe_digest.clone(),
        inputs: plan
            .steps
            .iter()
            .flat_map(|s| {
                s.inputs
                    .iter()
                    .filter(|(k, _)| *k != "definition")
                    .map(move |(k, v)| (format!("step{}:{k}", s.index + 1), v.clone()))
            })
            .collect(),
        base_digest: Some(plan.base.key().to_string()),
    };
    let inv = webake_inventory::collect(&root.tree, provenance).context("inventory")?;
    lint(ctx, recipe, req, &root.tree)?;
    ctx.reporter.event(&crate::Event::StepFinished {
        step,
        elapsed: t.elapsed(),
        cache: crate::events::CacheStatus::Uncached,
    });
    Ok(inv)
}

/// The hygiene lint of the finished tree: findings go to the log, errors fail the bake.
fn lint(
    _ctx: &Context<'_>,
    recipe: &LoadedRecipe,
    req: &BakeRequest<'_>,
    tree: &Path,
) -> Result<()> {
    let config = webake_inventory::LintConfig {
        allow: recipe.recipe.lint.allow.clone(),
        extra_secrets: req.secrets.clone(),
        builder_resolv_conf: std::fs::read("/etc/resolv.conf").ok(),
    };
    let findings = webake_inventory::lint(tree, &config).context("lint")?;
    for f in &findings {
        req.log.line(
            "lint",
            &format!("{:?} {} {}: {}", f.severity, f.rule.id(), f.path, f.message),
        );
    }
    let errors: Vec<String> = findings
        .iter()
        .filter(|f| f.severity == webake_inventory::Severity::Error)
        .map(|f| format!("  {} {}: {}", f.rule.id(), f.path, f.message))
        .collect();
    if errors.is_empty() {
        return Ok(());
    }
    Err(Error::Failed(format!(
        "hygiene lint failed ({} error(s)); fix the image or allow a rule in the recipe (lint.allow):\n{}",
        errors.len(),
        errors.join("\n")
    )))
}

/// The catalog's architecture name of a recipe variant's image.
fn image_arch(recipe: &LoadedRecipe) -> String {
    let debian = webake_build::bake::tree_debian_arch(recipe);
    webake_spec::Architecture::parse(&debian).map_or(debian, |a| a.as_str().to_string())
}

/// The catalog record of the baked image.
fn image_record(
    ctx: &Context<'_>,
    recipe: &LoadedRecipe,
    plan: &Planned,
    b: &Begun,
    disk: &DiskImage,
    inventory: webake_inventory::Inventory,
) -> Image {
    Image {
        id: b.image_id.clone(),
        bake_id: b.bake_id.clone(),
        name: recipe.recipe.image.name.clone(),
        family: recipe.family().to_string(),
        version: b.version.clone(),
        arch: image_arch(recipe),
        created_at: b.created_at,
        inputs_digest: plan.inputs_digest.clone(),
        recipe_digest: plan.recipe_digest.clone(),
        kernel: Some(disk.boot.version.clone()),
        tree_size: inventory.size.bytes,
        inventory: Some(inventory),
        provenance: provenance(ctx, recipe, plan),
        test_result: None,
        artifacts: disk
            .artifacts
            .iter()
            .map(|a| Artifact {
                format: artifact_format(a.format),
                path: a.path.clone(),
                sha256: a.sha256.clone(),
                size: a.size,
            })
            .collect(),
        publications: vec![],
    }
}

pub fn artifact_format(f: webake_spec::OutputFormat) -> ArtifactFormat {
    match f {
        webake_spec::OutputFormat::Raw => ArtifactFormat::Raw,
        webake_spec::OutputFormat::Qcow2 => ArtifactFormat::Qcow2,
    }
}

/// What the image was made from.
fn provenance(ctx: &Context<'_>, recipe: &LoadedRecipe, plan: &Planned) -> Provenance {
    let base = serde_json::to_value(&plan.base)
        .and_then(serde_json::from_value::<BaseRecord>)
        .unwrap_or_default();
    Provenance {
        recipe: recipe.path.display().to_string(),
        recipe_digest: plan.recipe_digest.clone(),
        base,
        steps: plan
            .steps
            .iter()
            .map(|s| StepRecord {
                index: s.index,
                label: s.label.clone(),
                kind: s.kind.clone(),
                key: s.key.clone(),
                inputs: s.inputs.clone(),
            })
            .collect(),
        variables: recipe
            .variables
            .iter()
            .map(|v| VariableRecord {
                name: v.name.clone(),
                value: v.display_value().to_string(),
                origin: v.origin.to_string(),
            })
            .collect(),
        boot: recipe
            .recipe
            .disk
            .boot
            .iter()
            .map(|b| b.as_str().to_string())
            .collect(),
        parent: crate::base::parent_of(ctx, recipe, plan),
        upstream: plan.upstream.as_ref().map(|u| {
            let rootfs = ctx
                .workspace
                .bootstrap_dir()
                .join(plan.base.key())
                .join("rootfs");
            crate::upstream::record(ctx, u, Some(&rootfs))
        }),
        step_sources: None,
        source_date: Some(plan.source_date.record()),
        webake_version: env!("CARGO_PKG_VERSION").to_string(),
        other: Default::default(),
    }
}

/// SPDX and CycloneDX SBOMs next to the artifacts.
fn write_sboms(
    ctx: &Context<'_>,
    recipe: &LoadedRecipe,
    image: &Image,
    version: &str,
) -> Result<()> {
    let Some(inv) = &image.inventory else {
        return Ok(());
    };
    let out_dir = ctx.workspace.image_dir(&image.id);
    let opts = webake_inventory::SbomOptions {
        image_id: image.id.to_string(),
        image_name: recipe.family().to_string(),
        created: std::time::SystemTime::now(),
        namespace_base: None,
        architecture: Some(image.arch.clone()).filter(|a| !a.is_empty()),
    };
    let base = format!("{}-{}", recipe.recipe.image.name, version);
    for (ext, body) in [
        ("spdx.json", webake_inventory::spdx_json(inv, &opts)),
        ("cdx.json", webake_inventory::cyclonedx_json(inv, &opts)),
    ] {
        let p = out_dir.join(format!("{base}.{ext}"));
        webake_sys::fsutil::atomic_write(&p, body.as_bytes()).map_err(|e| Error::io(&p, e))?;
    }
    Ok(())
}

/// The boot test as a gate: a failing image is not recorded, its artifacts are removed.
fn gate(ctx: &Context<'_>, recipe: &LoadedRecipe, image: &mut Image, log: &BakeLog) -> Result<()> {
    match crate::boottest::test_image(ctx, image, recipe.recipe.test.as_ref(), log) {
        Ok(_) => {
            image.test_result = Some(TestResult::Passed);
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(ctx.workspace.image_dir(&image.id));
            Err(e.context("boot test failed; the image was not recorded"))
        }
    }
}

/// `bake-YYYYMMDD-HHMMSS-xxxxxxxx`.
pub fn new_bake_id() -> String {
    let now = jiff::Timestamp::now();
    let mut rnd = [0u8; 4];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut rnd);
    }
    format!(
        "bake-{}-{}",
        now.strftime("%Y%m%d-%H%M%S"),
        hex::encode(rnd)
    )
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
