//! `webake bake RECIPE`: bake an image into the local catalog.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use webake_build::bake::{BakeLog, BakeRequest, BasePlan, Plan};
use webake_build::bootstrap::HostSources;
use webake_build::{CacheStatus, Reporter, Workspace};
use webake_catalog::{Artifact, Bake, BakeStatus, Catalog, Image};
use webake_spec::LoadedRecipe;

use crate::exit;
use crate::settings::Settings;

#[derive(Debug, Args)]
pub struct BakeArgs {
    /// The recipe file (YAML)
    pub recipe: PathBuf,
    #[command(flatten)]
    pub vars: crate::cmd::validate::VarArgs,
    /// Print the plan (steps, cache keys, why each would run) and do nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Print, per step, whether the cache hits and which input changed (also in --dry-run)
    #[arg(long)]
    pub explain: bool,
    /// Bootstrap the base again even if it is cached
    #[arg(long)]
    pub refresh_base: bool,
    /// Ignore cached step layers
    #[arg(long)]
    pub no_cache: bool,
    /// Bake even if the catalog already has an image baked from exactly these inputs
    #[arg(long)]
    pub force: bool,
    /// Keep the scratch directory of a failed bake for debugging
    #[arg(long)]
    pub keep_on_error: bool,
    /// Boot-test the image before recording it (a gate: a failing image is not recorded)
    #[arg(long)]
    pub test: bool,
    /// Write a Packer-compatible manifest.json (for teams migrating from Packer)
    #[arg(long, value_name = "PATH")]
    pub packer_manifest: Option<PathBuf>,
    /// Print the result as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

/// What a finished bake produced (printed, and used by `webake run`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct BakeOutcome {
    pub image: Image,
    pub bake_id: String,
    pub log: PathBuf,
    pub seconds: f64,
    pub steps: Vec<webake_build::bake::StepReport>,
}

impl BakeArgs {
    pub fn run(self, settings: &Settings) -> anyhow::Result<ExitCode> {
        let recipe = crate::cmd::validate::load_recipe(&self.recipe, &self.vars)?;
        let plan = make_plan(&recipe, Some(settings))?;
        if self.dry_run || self.explain {
            print_plan(&recipe, &plan, settings);
            if self.dry_run {
                return Ok(ExitCode::SUCCESS);
            }
        }
        // Unchanged inputs: the image already exists (artifacts intact): nothing to do.
        if !(self.force || self.no_cache || self.refresh_base || self.test)
            && let Some(img) = up_to_date(settings, recipe.family(), &plan.inputs_digest)?
        {
            if !settings.quiet {
                eprintln!(
                    "--- image {} is up to date: baked from the same inputs (digest {}); --force bakes again",
                    img.id,
                    &plan.inputs_digest[..16]
                );
            }
            let outcome = BakeOutcome {
                bake_id: img.bake_id.clone(),
                log: PathBuf::new(),
                seconds: 0.0,
                steps: vec![],
                image: img,
            };
            if self.json {
                println!("{}", serde_json::to_string_pretty(&outcome)?);
            } else {
                print_outcome(&outcome);
            }
            return Ok(ExitCode::SUCCESS);
        }
        webake_sys::cancel::install_signal_handlers();
        let outcome = bake_recipe(&recipe, &plan, settings, &self)?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&outcome)?);
        } else {
            print_outcome(&outcome);
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// The bake plan. A `base: {ami: …}` is resolved to its root snapshot on AWS (nothing is
/// downloaded yet) unless `settings` is `None` (offline, for `validate`).
pub fn make_plan(recipe: &LoadedRecipe, settings: Option<&Settings>) -> anyhow::Result<Plan> {
    if let webake_spec::Base::Ami(a) = &recipe.recipe.base {
        let ws = settings.map(|s| Workspace::new(&s.data_dir, &s.cache_dir));
        return crate::cmd::base_ami::plan(recipe, a, ws.as_ref());
    }
    let host = HostSources::read(Path::new("/etc/apt"));
    let plan = webake_build::bake::plan(recipe, std::env::var("WEBAKE_MIRROR").ok(), &host)
        .with_context(|| format!("planning {}", recipe.path.display()))?;
    Ok(plan)
}

fn print_plan(recipe: &LoadedRecipe, plan: &Plan, settings: &Settings) {
    let ws = Workspace::new(&settings.data_dir, &settings.cache_dir);
    println!(
        "plan for {} (family {})",
        recipe.path.display(),
        recipe.family()
    );
    let cached =
        webake_build::bootstrap::cached_rootfs(&ws.bootstrap_dir(), plan.base.key()).is_some();
    match &plan.base {
        BasePlan::Mmdebstrap(b) => println!(
            "  bootstrap  mmdebstrap {} {} [{}]  mirror: {} ({})  key {}  {}",
            b.suite,
            b.variant,
            b.include.join(","),
            b.mirror.as_deref().unwrap_or("default"),
            b.mirror_source,
            &b.key[..12],
            if cached { "cache hit" } else { "would run" }
        ),
        BasePlan::Prepared {
            key, description, ..
        } => println!(
            "  base       {description}  key {}  {}",
            &key[..12],
            if cached {
                "cache hit"
            } else {
                "would download"
            }
        ),
    }
    for s in &plan.steps {
        let hit = ws.layers_dir().join(&s.key).join("meta.json").is_file();
        let why = if hit {
            "cache hit".to_string()
        } else {
            let explain = ws
                .cache_dir
                .join("explain")
                .join(recipe.family())
                .join(format!("step-{}.json", s.index));
            format!(
                "would run: {}",
                webake_build::bake::explain_miss(&explain, s, false)
            )
        };
        println!("  step       {}  key {}  {why}", s.label, &s.key[..12]);
        for (k, v) in &s.inputs {
            println!("               input {k} = {}", &v[..16.min(v.len())]);
        }
    }
    println!(
        "  assemble   disk {} ext4 + ESP, outputs {:?}",
        recipe.recipe.disk.size, recipe.recipe.outputs
    );
    println!("  inputs digest {}", plan.inputs_digest);
}

/// The catalog's image of `family` baked from exactly `inputs_digest`, if its artifacts are
/// all still there with their recorded sizes.
pub fn up_to_date(
    settings: &Settings,
    family: &str,
    inputs_digest: &str,
) -> anyhow::Result<Option<Image>> {
    if !settings.catalog.exists() {
        return Ok(None);
    }
    let catalog = Catalog::open(&settings.catalog)?;
    Ok(catalog
        .find_by_inputs(family, inputs_digest)?
        .filter(|img| {
            !img.artifacts.is_empty()
                && img
                    .artifacts
                    .iter()
                    .all(|a| std::fs::metadata(&a.path).is_ok_and(|m| m.len() == a.size))
        }))
}

/// Prints steps as lines: readable in a terminal and in a pipeline log alike.
pub struct CliReporter {
    pub quiet: bool,
    pub stream_output: bool,
    started: Mutex<Option<Instant>>,
}

impl CliReporter {
    pub fn new(quiet: bool) -> Self {
        Self {
            quiet,
            stream_output: !quiet,
            started: Mutex::new(None),
        }
    }
}

impl Reporter for CliReporter {
    fn step_started(&self, step: &str, detail: &str) {
        if let Ok(mut s) = self.started.lock() {
            *s = Some(Instant::now());
        }
        if !self.quiet {
            eprintln!("==> {step}: {detail}");
        }
    }
    fn step_finished(&self, step: &str, elapsed: Duration, cache: CacheStatus) {
        if !self.quiet {
            let c = match cache {
                CacheStatus::Hit => " (cached)",
                CacheStatus::Miss => "",
                CacheStatus::Uncached => "",
            };
            eprintln!("<== {step}: done in {:.1}s{c}", elapsed.as_secs_f64());
        }
    }
    fn output(&self, _step: &str, line: &str) {
        if self.stream_output {
            let mut e = std::io::stderr().lock();
            let _ = writeln!(e, "    | {line}");
        }
    }
    fn note(&self, message: &str) {
        if !self.quiet {
            eprintln!("--- {message}");
        }
    }
}

pub fn new_bake_id() -> String {
    let now = jiff::Timestamp::now();
    let mut rnd = [0u8; 4];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut rnd);
    }
    format!("bake-{}-{}", now.strftime("%Y%m%d-%H%M%S"), hex_lower(&rnd))
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn now_secs() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// The whole bake: catalog record, build, inventory + lint, optional boot test, image record.
pub fn bake_recipe(
    recipe: &LoadedRecipe,
    plan: &Plan,
    settings: &Settings,
    args: &BakeArgs,
) -> anyhow::Result<BakeOutcome> {
    let start = Instant::now();
    let ws = Workspace::new(&settings.data_dir, &settings.cache_dir);
    let catalog = Catalog::open(&settings.catalog)?;
    let bake_id = new_bake_id();
    let image_id = format!(
        "img-{}",
        &webake_build::digest::sha256_hex(format!("{bake_id}/{}", plan.inputs_digest).as_bytes())
            [..12]
    );
    let now = jiff::Timestamp::now();
    let version = recipe
        .recipe
        .image
        .version
        .clone()
        .unwrap_or_default()
        .render(now);
    let log_path = ws.bake_log_dir(&bake_id).join("bake.log");
    let log = BakeLog::create(&log_path)?;
    log.line(
        "webake",
        &format!(
            "bake {bake_id} of {} (image {image_id}, version {version})",
            recipe.path.display()
        ),
    );
    // Held until this function returns: the scratch dir, staging entries and image dir stay
    // ours for `webake clean` of any catalog, up to the catalog record.
    let _lease =
        webake_build::workspace::BakeLease::acquire(&settings.cache_dir, &bake_id, &image_id)?;
    catalog.begin_bake(&Bake {
        id: bake_id.clone(),
        recipe_path: recipe.path.display().to_string(),
        name: recipe.recipe.image.name.clone(),
        family: recipe.family().to_string(),
        status: BakeStatus::Running,
        started_at: now.as_second(),
        finished_at: None,
        log_path: log_path.display().to_string(),
        error: None,
        image_id: None,
        pid: std::process::id() as i64,
        inputs_digest: plan.inputs_digest.clone(),
        host: hostname(),
    })?;
    let reporter = CliReporter::new(settings.quiet);
    reporter.note(&format!(
        "bake {bake_id}: {} -> image {image_id} version {version}; log {}",
        recipe.path.display(),
        log_path.display()
    ));

    // Everything that can fail after the bake record exists is inside this closure, so the
    // record is always closed (failed / cancelled) with the error.
    let result = (|| -> anyhow::Result<BakeOutcome> {
        let inventory: Mutex<Option<webake_inventory::Inventory>> = Mutex::new(None);
        let secret_values: Vec<String> = recipe
            .recipe
            .provisioners
            .iter()
            .filter_map(|p| match p {
                webake_spec::Provisioner::Shell(s) => Some(
                    s.secret_env
                        .iter()
                        .filter_map(|k| std::env::var(k).ok())
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            })
            .flatten()
            .collect();
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
        let agent_bin = agent_binary();
        let inspect = |tree: &Path| -> Result<(), String> {
            if let Some(agent) = &recipe.recipe.agent
                && agent.install
            {
                let bin = agent_bin.as_ref().ok_or("the recipe installs the webake agent, but no webake-agent binary was found next to webake (build it with `cargo build -p webake-agent`, or set WEBAKE_AGENT_BINARY)")?;
                crate::cmd::agent::install_agent(
                    tree,
                    bin,
                    recipe.recipe.image.role.as_deref(),
                    agent.hostname_template.as_deref(),
                )
                .map_err(|e| format!("installing the agent: {e:#}"))?;
            }
            let inv = webake_inventory::collect(tree, provenance.clone())
                .map_err(|e| format!("inventory: {e}"))?;
            let config = webake_inventory::LintConfig {
                allow: recipe.recipe.lint.allow.clone(),
                extra_secrets: secret_values.clone(),
                builder_resolv_conf: std::fs::read("/etc/resolv.conf").ok(),
            };
            let findings =
                webake_inventory::lint(tree, &config).map_err(|e| format!("lint: {e}"))?;
            let errors: Vec<_> = findings
                .iter()
                .filter(|f| f.severity == webake_inventory::Severity::Error)
                .collect();
            for f in &findings {
                log.line(
                    "lint",
                    &format!("{:?} {} {}: {}", f.severity, f.rule.id(), f.path, f.message),
                );
            }
            if !errors.is_empty() {
                let list: Vec<String> = errors
                    .iter()
                    .map(|f| format!("  {} {}: {}", f.rule.id(), f.path, f.message))
                    .collect();
                return Err(format!(
                    "hygiene lint failed ({} error(s)); fix the image or allow a rule in the recipe (lint.allow):\n{}",
                    errors.len(),
                    list.join("\n")
                ));
            }
            *inventory.lock().map_err(|_| "inventory lock poisoned")? = Some(inv);
            Ok(())
        };
        let host_env = |k: &str| std::env::var(k).ok();
        let cancel = webake_sys::CancelToken::new();
        let req = BakeRequest {
            recipe,
            plan,
            bake_id: bake_id.clone(),
            image_id: image_id.clone(),
            version: version.clone(),
            workspace: &ws,
            helper_exe: std::env::current_exe().context("locating the webake executable")?,
            cancel: cancel.clone(),
            reporter: &reporter,
            log: &log,
            keep_on_error: args.keep_on_error,
            refresh_base: args.refresh_base,
            no_cache: args.no_cache,
            host_env: &host_env,
            network: webake_build::provision::sandbox_network(recipe),
            secrets: webake_build::provision::recipe_secrets(recipe, &host_env),
            inspect: &inspect,
        };
        // A base from an AMI is downloaded and extracted into the cache first (the build
        // itself never talks to AWS).
        crate::cmd::base_ami::ensure(
            recipe,
            plan,
            settings,
            &bake_id,
            args.refresh_base,
            &reporter,
            &log,
        )?;
        let res = webake_build::bake(req)?;
        let inv = inventory
            .lock()
            .map_err(|_| anyhow::anyhow!("inventory lock poisoned"))?
            .take();
        let inv_json = inv.as_ref().map(serde_json::to_value).transpose()?;
        let tree_size = inv.as_ref().map(|i| i.size.bytes).unwrap_or(0);
        // SBOMs next to the artifacts.
        let out_dir = ws.image_dir(&image_id);
        if let Some(inv) = &inv {
            let opts = webake_inventory::SbomOptions {
                image_id: image_id.clone(),
                image_name: recipe.family().to_string(),
                created: std::time::SystemTime::now(),
                namespace_base: None,
            };
            let base = format!("{}-{}", recipe.recipe.image.name, version);
            webake_sys::fsutil::atomic_write(
                &out_dir.join(format!("{base}.spdx.json")),
                webake_inventory::spdx_json(inv, &opts).as_bytes(),
            )
            .context("writing the SPDX SBOM")?;
            webake_sys::fsutil::atomic_write(
                &out_dir.join(format!("{base}.cdx.json")),
                webake_inventory::cyclonedx_json(inv, &opts).as_bytes(),
            )
            .context("writing the CycloneDX SBOM")?;
        }
        let mut image = Image {
            id: image_id.clone(),
            bake_id: bake_id.clone(),
            name: recipe.recipe.image.name.clone(),
            family: recipe.family().to_string(),
            version: version.clone(),
            created_at: now.as_second(),
            inputs_digest: plan.inputs_digest.clone(),
            recipe_digest: plan.recipe_digest.clone(),
            kernel: Some(res.boot.version.clone()),
            tree_size,
            inventory: inv_json,
            provenance: serde_json::json!({
                "recipe": recipe.path.display().to_string(),
                "recipe_digest": plan.recipe_digest,
                "base": plan.base,
                "steps": plan.steps,
                "webake_version": env!("CARGO_PKG_VERSION"),
            }),
            test_result: None,
            artifacts: res
                .artifacts
                .iter()
                .map(|a| Artifact {
                    format: a.format.extension().to_string(),
                    path: a.path.display().to_string(),
                    sha256: a.sha256.clone(),
                    size: a.size,
                })
                .collect(),
            publications: vec![],
        };
        let gate = args.test || recipe.recipe.test.as_ref().is_some_and(|t| t.gate);
        if gate {
            let outcome = crate::cmd::test::boot_test_image(
                &image,
                recipe.recipe.test.as_ref(),
                &ws,
                &reporter,
                &log,
                &cancel,
            );
            match outcome {
                Ok(()) => image.test_result = Some("passed".into()),
                Err(e) => {
                    // The gate: a failing image is not recorded; its artifacts are removed.
                    let _ = std::fs::remove_dir_all(&out_dir);
                    return Err(exit::coded(
                        exit::TEST_FAILED,
                        e.context("boot test failed; the image was not recorded"),
                    ));
                }
            }
        }
        let mut catalog = Catalog::open(&settings.catalog)?;
        catalog.record_image(&image, now_secs())?;
        if let Some(p) = &args.packer_manifest {
            crate::cmd::images::append_packer_manifest(p, &image, start.elapsed())?;
        }
        Ok(BakeOutcome {
            image,
            bake_id: bake_id.clone(),
            log: log_path.clone(),
            seconds: start.elapsed().as_secs_f64(),
            steps: res.steps,
        })
    })();

    match result {
        Ok(o) => Ok(o),
        Err(e) => {
            let cancelled = e.chain().any(|c| {
                c.downcast_ref::<webake_build::BuildError>()
                    .is_some_and(|b| b.is_cancelled())
            }) || webake_sys::cancel::signalled();
            let status = if cancelled {
                BakeStatus::Cancelled
            } else {
                BakeStatus::Failed
            };
            let msg = format!("{e:#}");
            log.line(
                "webake",
                &format!(
                    "bake {bake_id} {}: {msg}",
                    if cancelled { "cancelled" } else { "failed" }
                ),
            );
            let _ = catalog.end_bake(&bake_id, status, Some(&msg), now_secs());
            // Partial artifacts never stay.
            let _ = std::fs::remove_dir_all(ws.image_dir(&image_id));
            let e = e.context(format!(
                "bake {bake_id} failed (log: {})",
                log_path.display()
            ));
            if cancelled {
                return Err(exit::coded(exit::INTERRUPTED, e));
            }
            Err(e)
        }
    }
}

/// The agent binary to install into images: $WEBAKE_AGENT_BINARY, else next to webake.
pub fn agent_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("WEBAKE_AGENT_BINARY") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.join("webake-agent");
    p.is_file().then_some(p)
}

pub fn print_outcome(o: &BakeOutcome) {
    let img = &o.image;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "image {}  {} {}  (family {})",
        img.id, img.name, img.version, img.family
    );
    if o.log.as_os_str().is_empty() {
        let _ = writeln!(
            out,
            "  bake     {}  (up to date: nothing was baked)",
            o.bake_id
        );
    } else {
        let _ = writeln!(
            out,
            "  bake     {}  {:.1}s  log {}",
            o.bake_id,
            o.seconds,
            o.log.display()
        );
    }
    if let Some(k) = &img.kernel {
        let _ = writeln!(out, "  kernel   {k}");
    }
    if let Some(t) = &img.test_result {
        let _ = writeln!(out, "  boot test {t}");
    }
    for a in &img.artifacts {
        let _ = writeln!(
            out,
            "  {:<8} {}\n           sha256 {}  ({} bytes)",
            a.format, a.path, a.sha256, a.size
        );
    }
    let _ = std::io::stderr().is_terminal();
}
