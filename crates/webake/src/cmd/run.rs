//! `webake run RECIPE`: the whole pipeline in one process — bake, boot test, publish, rollout —
//! each stage optional, with a summary (text, or `--json` on stdout) and one exit code per
//! failing stage.
//!
//! The bake is skipped when the catalog already holds an image baked from the same inputs
//! (the plan's `inputs_digest`: recipe, files, roles, base), so a weekly cron is a no-op when
//! nothing changed; the later stages still run, idempotently (publish reuses the AMI, the
//! rollout finds its branch up to date). See docs/run.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use clap::{Args, Parser, ValueEnum};
use serde::Serialize;
use webake_build::Workspace;
use webake_build::bake::{BakeLog, Plan};
use webake_catalog::{Artifact, Catalog, Image};
use webake_rollout::{BranchStatus, RolloutOutcome};
use webake_spec::LoadedRecipe;

use crate::cmd::bake::{BakeArgs, CliReporter};
use crate::cmd::publish_aws::PublishAwsArgs;
use crate::cmd::rollout::RolloutOptions;
use crate::exit::{
    self, FAILURE, INTERRUPTED, INVALID_INPUT, PUBLISH_FAILED, ROLLOUT_FAILED, TEST_FAILED, coded,
};
use crate::settings::Settings;

const AFTER_HELP: &str = "\
Stages: bake -> test -> publish -> rollout. The bake is skipped when the catalog holds an image
baked from the same inputs (and, with --publish aws, published to AWS in every target region);
--force bakes anyway. AWS options go after `--`, as after `publish --to aws`:
  webake run recipe.yaml --publish aws --cluster-repo URL --github OWNER/REPO -- --region eu-west-1 --copy-to us-east-1

Exit codes: 0 ok, 1 bake failed, 2 invalid input, 3 boot test failed, 4 publish failed,
5 rollout failed, 130 interrupted.";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishTarget {
    /// Record the local artifacts as published
    Local,
    /// Upload through the EBS direct APIs and register an AMI (options after `--`)
    Aws,
    /// Do not publish
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Progress {
    /// `==> stage` lines
    Text,
    /// One JSON object per line (`{"stage":"bake","event":"started",...}`)
    Json,
}

#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct RunArgs {
    /// The recipe file (YAML)
    pub recipe: PathBuf,
    #[command(flatten)]
    pub vars: crate::cmd::validate::VarArgs,

    /// Bake even when an image baked from the same inputs is in the catalog
    #[arg(long)]
    pub force: bool,

    /// Ignore cached step layers (implies --force)
    #[arg(long)]
    pub no_cache: bool,

    /// Bootstrap the base again even if it is cached (implies --force)
    #[arg(long)]
    pub refresh_base: bool,

    /// Keep the scratch directory of a failed bake for debugging
    #[arg(long)]
    pub keep_on_error: bool,

    /// Skip the boot test (a recipe with `test.gate: true` is still tested during the bake)
    #[arg(long)]
    pub no_test: bool,

    /// Where to publish; AWS options follow `--` (those of `publish --to aws`)
    #[arg(long, value_enum, default_value_t = PublishTarget::Local)]
    pub publish: PublishTarget,

    /// Skip the rollout
    #[arg(long)]
    pub no_rollout: bool,

    /// Cluster repository to roll out to: a local path or a URL git can clone and push to
    #[arg(long, value_name = "PATH|URL", required_unless_present = "no_rollout")]
    pub cluster_repo: Option<String>,

    /// Print the summary as JSON on stdout (also when a stage fails)
    #[arg(long)]
    pub json: bool,

    /// Stage progress on stderr: text lines, or JSON lines for log collectors
    #[arg(long, value_enum, default_value_t = Progress::Text)]
    pub progress: Progress,

    /// Write the catalog id of the image to this file
    #[arg(long, value_name = "FILE", help_heading = "Result files")]
    pub image_id_file: Option<PathBuf>,

    /// Write the published AMIs to this file: a JSON object region -> AMI id (`{}` unless
    /// --publish aws)
    #[arg(long, value_name = "FILE", help_heading = "Result files")]
    pub ami_ids_file: Option<PathBuf>,

    #[command(flatten, next_help_heading = "Rollout options")]
    pub rollout: RolloutOptions,

    /// AWS options for --publish aws (after `--`): --region, --copy-to, --share-with, --tag, …
    #[arg(last = true, value_name = "AWS OPTIONS", help_heading = "AWS options")]
    pub aws: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Bake,
    Test,
    Publish,
    Rollout,
}

impl Stage {
    const ALL: [Stage; 4] = [Stage::Bake, Stage::Test, Stage::Publish, Stage::Rollout];

    fn name(self) -> &'static str {
        match self {
            Stage::Bake => "bake",
            Stage::Test => "test",
            Stage::Publish => "publish",
            Stage::Rollout => "rollout",
        }
    }

    /// The documented exit code of a failure in this stage.
    fn exit_code(self) -> u8 {
        match self {
            Stage::Bake => FAILURE,
            Stage::Test => TEST_FAILED,
            Stage::Publish => PUBLISH_FAILED,
            Stage::Rollout => ROLLOUT_FAILED,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    Done,
    Skipped,
    Failed,
    NotRun,
}

impl StageStatus {
    fn as_str(self) -> &'static str {
        match self {
            StageStatus::Done => "done",
            StageStatus::Skipped => "skipped",
            StageStatus::Failed => "failed",
            StageStatus::NotRun => "not run",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    pub stage: Stage,
    pub status: StageStatus,
    /// Wall-clock seconds (absent for stages that did not run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// What happened, or why the stage was skipped.
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImageSummary {
    pub id: String,
    pub name: String,
    pub family: String,
    pub version: String,
    pub bake_id: String,
    pub inputs_digest: String,
    pub test_result: Option<String>,
    pub artifacts: Vec<Artifact>,
}

impl From<&Image> for ImageSummary {
    fn from(img: &Image) -> Self {
        Self {
            id: img.id.clone(),
            name: img.name.clone(),
            family: img.family.clone(),
            version: img.version.clone(),
            bake_id: img.bake_id.clone(),
            inputs_digest: img.inputs_digest.clone(),
            test_result: img.test_result.clone(),
            artifacts: img.artifacts.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RolloutSummary {
    pub branch: String,
    pub base_branch: String,
    pub status: BranchStatus,
    pub commit: Option<String>,
    pub changed_files: Vec<String>,
    /// `file:line what: old -> new` for each changed reference.
    pub changes: Vec<String>,
    pub pull_request_url: Option<String>,
}

impl From<&RolloutOutcome> for RolloutSummary {
    fn from(o: &RolloutOutcome) -> Self {
        Self {
            branch: o.branch.clone(),
            base_branch: o.base_branch.clone(),
            status: o.status,
            commit: o.commit.clone(),
            changed_files: o.changed_files.clone(),
            changes: o
                .edits
                .iter()
                .filter(|e| e.changes())
                .map(|e| format!("{}:{} {}: {} -> {}", e.file, e.line, e.what, e.old, e.new))
                .collect(),
            pull_request_url: o.pull_request.as_ref().map(|p| p.url.clone()),
        }
    }
}

/// What `webake run` prints at the end (`--json`: this, on stdout).
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub recipe: String,
    pub family: String,
    pub inputs_digest: String,
    pub ok: bool,
    pub exit_code: u8,
    pub failed_stage: Option<Stage>,
    pub error: Option<String>,
    /// True when an image baked from the same inputs was reused.
    pub bake_skipped: bool,
    pub image: Option<ImageSummary>,
    pub stages: Vec<StageReport>,
    /// region -> AMI id (empty unless published to AWS).
    pub ami_ids: BTreeMap<String, String>,
    pub rollout: Option<RolloutSummary>,
}

/// Progress lines on stderr.
struct Events {
    format: Progress,
    quiet: bool,
}

impl Events {
    fn emit(&self, stage: Option<Stage>, event: &str, fields: serde_json::Value, text: String) {
        if self.quiet {
            return;
        }
        match self.format {
            Progress::Text => eprintln!("{text}"),
            Progress::Json => {
                let mut obj = serde_json::json!({
                    "time": jiff::Timestamp::now().to_string(),
                    "source": "webake run",
                    "event": event,
                });
                if let Some(s) = stage {
                    obj["stage"] = serde_json::json!(s.name());
                }
                if let (Some(o), serde_json::Value::Object(f)) = (obj.as_object_mut(), fields) {
                    o.extend(f);
                }
                eprintln!("{obj}");
            }
        }
    }

    fn started(&self, stage: Stage) {
        self.emit(
            Some(stage),
            "started",
            serde_json::json!({}),
            format!("==> run: {}", stage.name()),
        );
    }

    fn finished(&self, r: &StageReport) {
        let secs = r
            .seconds
            .map(|s| format!(" in {s:.1}s"))
            .unwrap_or_default();
        self.emit(
            Some(r.stage),
            "finished",
            serde_json::json!({"status": r.status, "seconds": r.seconds, "detail": r.detail}),
            format!(
                "<== run: {} {}{secs}: {}",
                r.stage.name(),
                r.status.as_str(),
                r.detail
            ),
        );
    }

    fn note(&self, stage: Stage, message: &str) {
        self.emit(
            Some(stage),
            "note",
            serde_json::json!({"message": message}),
            format!("--- {message}"),
        );
    }
}

/// Parses `BakeArgs` the way `webake bake` does, so new bake options get their defaults.
#[derive(Debug, Parser)]
#[command(name = "webake bake", no_binary_name = false)]
struct BakeCli {
    #[command(flatten)]
    args: BakeArgs,
}

impl RunArgs {
    pub fn run(self, settings: &Settings) -> anyhow::Result<ExitCode> {
        webake_sys::cancel::install_signal_handlers();
        // Everything that can be checked before a long bake is checked first (exit code 2).
        let recipe = crate::cmd::validate::load_recipe(&self.recipe, &self.vars)?;
        let aws = self.check_options()?;
        let plan = crate::cmd::bake::make_plan(&recipe, Some(settings))?;

        let mut runner = Runner {
            args: &self,
            settings,
            recipe: &recipe,
            plan: &plan,
            aws: aws.as_ref(),
            events: Events {
                format: self.progress,
                quiet: settings.quiet,
            },
            summary: RunSummary {
                recipe: self.recipe.display().to_string(),
                family: recipe.family().to_string(),
                inputs_digest: plan.inputs_digest.clone(),
                ok: false,
                exit_code: 0,
                failed_stage: None,
                error: None,
                bake_skipped: false,
                image: None,
                stages: Vec::new(),
                ami_ids: BTreeMap::new(),
                rollout: None,
            },
        };
        let result = runner.stages();
        let mut summary = runner.summary;
        for stage in Stage::ALL {
            if !summary.stages.iter().any(|r| r.stage == stage) {
                summary.stages.push(StageReport {
                    stage,
                    status: StageStatus::NotRun,
                    seconds: None,
                    detail: "an earlier stage failed".into(),
                });
            }
        }
        if let Err(e) = &result {
            summary.exit_code = exit::code_of(e);
            summary.error = Some(format!("{e:#}"));
        }
        summary.ok = result.is_ok();
        if self.json {
            println!("{}", serde_json::to_string_pretty(&summary)?);
        } else if !settings.quiet || result.is_ok() {
            print_summary(&summary);
        }
        result.map(|()| ExitCode::SUCCESS)
    }

    /// Check the options that do not need the image; returns the AWS options parsed against a
    /// placeholder image (for the regions the skip rule checks).
    fn check_options(&self) -> anyhow::Result<Option<PublishAwsArgs>> {
        if self.publish != PublishTarget::Aws && !self.aws.is_empty() {
            return Err(coded(
                INVALID_INPUT,
                anyhow::anyhow!(
                    "options after `--` are AWS options for --publish aws, got {:?} with --publish {}",
                    self.aws,
                    match self.publish {
                        PublishTarget::Local => "local",
                        _ => "none",
                    }
                ),
            ));
        }
        if let (false, Some(repo)) = (self.no_rollout, &self.cluster_repo) {
            self.rollout
                .validate(repo)
                .map_err(|e| coded(INVALID_INPUT, e))?;
        }
        if self.publish != PublishTarget::Aws {
            return Ok(None);
        }
        let placeholder = Image {
            id: "img-000000000000".into(),
            bake_id: "bake-00000000-000000-00000000".into(),
            name: "image".into(),
            family: "family".into(),
            version: "0".into(),
            created_at: 0,
            inputs_digest: String::new(),
            recipe_digest: String::new(),
            kernel: None,
            tree_size: 0,
            inventory: None,
            provenance: serde_json::Value::Null,
            test_result: None,
            artifacts: vec![Artifact {
                format: "raw".into(),
                path: "image.raw".into(),
                sha256: String::new(),
                size: 0,
            }],
            publications: Vec::new(),
        };
        let args = crate::cmd::publish::aws_args(&placeholder, &self.aws)?;
        args.request()?;
        if args.dry_run {
            return Err(coded(
                INVALID_INPUT,
                anyhow::anyhow!(
                    "--dry-run is not an option of `webake run` (see `webake bake --dry-run`)"
                ),
            ));
        }
        Ok(Some(args))
    }
}

struct Runner<'a> {
    args: &'a RunArgs,
    settings: &'a Settings,
    recipe: &'a LoadedRecipe,
    plan: &'a Plan,
    aws: Option<&'a PublishAwsArgs>,
    events: Events,
    summary: RunSummary,
}

impl Runner<'_> {
    fn stages(&mut self) -> anyhow::Result<()> {
        let mut image = self.stage(Stage::Bake, |r| r.bake())?;
        self.summary.image = Some(ImageSummary::from(&image));
        if let Some(f) = &self.args.image_id_file {
            write_result(f, image.id.as_bytes())?;
        }
        self.stage(Stage::Test, |r| r.test(&mut image))?;
        self.summary.image = Some(ImageSummary::from(&image));
        self.stage(Stage::Publish, |r| r.publish(&image))?;
        if let Some(f) = &self.args.ami_ids_file {
            write_result(f, serde_json::to_string(&self.summary.ami_ids)?.as_bytes())?;
        }
        self.stage(Stage::Rollout, |r| r.rollout(&image))?;
        Ok(())
    }

    /// Run one stage: progress lines, timing, its report, and its exit code on failure.
    fn stage<T>(
        &mut self,
        stage: Stage,
        f: impl FnOnce(&mut Self) -> anyhow::Result<Outcome<T>>,
    ) -> anyhow::Result<T> {
        if webake_sys::cancel::signalled() {
            return Err(coded(
                INTERRUPTED,
                anyhow::anyhow!("interrupted before the {} stage", stage.name()),
            ));
        }
        let start = Instant::now();
        // A stage prints its "started" line itself: a skip decided up front prints none.
        let result = f(self);
        let seconds = start.elapsed().as_secs_f64();
        match result {
            Ok(Outcome::Done(value, detail)) => {
                let r = StageReport {
                    stage,
                    status: StageStatus::Done,
                    seconds: Some(seconds),
                    detail,
                };
                self.events.finished(&r);
                self.summary.stages.push(r);
                Ok(value)
            }
            Ok(Outcome::Skipped(value, detail)) => {
                let r = StageReport {
                    stage,
                    status: StageStatus::Skipped,
                    seconds: None,
                    detail,
                };
                self.events.finished(&r);
                self.summary.stages.push(r);
                Ok(value)
            }
            Err(e) => {
                let e = stage_error(stage, e);
                // The first line; the whole chain is the summary's `error` (and on stderr).
                let detail = format!("{e:#}")
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let r = StageReport {
                    stage,
                    status: StageStatus::Failed,
                    seconds: Some(seconds),
                    detail,
                };
                self.events.finished(&r);
                self.summary.stages.push(r);
                self.summary.failed_stage = Some(stage);
                Err(e)
            }
        }
    }

    fn bake(&mut self) -> anyhow::Result<Outcome<Image>> {
        let args = self.args;
        let digest = &self.plan.inputs_digest;
        if args.force || args.no_cache || args.refresh_base {
            let why = if args.force {
                "--force"
            } else if args.no_cache {
                "--no-cache"
            } else {
                "--refresh-base"
            };
            self.events.note(
                Stage::Bake,
                &format!("{why}: not looking for an image baked from the same inputs"),
            );
        } else if let Some(img) = self.reusable_image()? {
            self.summary.bake_skipped = true;
            let msg = format!(
                "skipping the bake: image {} was baked from the same inputs (digest {digest})",
                img.id
            );
            self.events
                .note(Stage::Bake, &format!("{msg}; --force bakes anyway"));
            return Ok(Outcome::Skipped(
                img.clone(),
                format!(
                    "image {} was baked from the same inputs (digest {digest})",
                    img.id
                ),
            ));
        }
        self.events.started(Stage::Bake);
        let mut argv: Vec<std::ffi::OsString> =
            vec!["webake bake".into(), self.args.recipe.clone().into()];
        for (on, flag) in [
            (args.no_cache, "--no-cache"),
            (args.refresh_base, "--refresh-base"),
            (args.keep_on_error, "--keep-on-error"),
        ] {
            if on {
                argv.push(flag.into());
            }
        }
        let bake_args = BakeCli::try_parse_from(argv)
            .map_err(|e| coded(INVALID_INPUT, anyhow::anyhow!("{e}")))?
            .args;
        let outcome =
            crate::cmd::bake::bake_recipe(self.recipe, self.plan, self.settings, &bake_args)?;
        Ok(Outcome::Done(
            outcome.image.clone(),
            format!(
                "image {} version {} (bake {}, log {})",
                outcome.image.id,
                outcome.image.version,
                outcome.bake_id,
                outcome.log.display()
            ),
        ))
    }

    /// An image of the catalog baked from the same inputs that the later stages can use, if
    /// any; says why a matching image is not reused.
    fn reusable_image(&self) -> anyhow::Result<Option<Image>> {
        let catalog = Catalog::open(&self.settings.catalog)?;
        let Some(img) = catalog.find_by_inputs(self.recipe.family(), &self.plan.inputs_digest)?
        else {
            self.events.note(
                Stage::Bake,
                &format!(
                    "no image of family {} was baked from these inputs (digest {})",
                    self.recipe.family(),
                    self.plan.inputs_digest
                ),
            );
            return Ok(None);
        };
        if let Some(a) = img.artifacts.iter().find(|a| !Path::new(&a.path).is_file()) {
            self.events.note(
                Stage::Bake,
                &format!(
                    "image {} was baked from the same inputs, but its artifact {} is gone: baking again",
                    img.id, a.path
                ),
            );
            return Ok(None);
        }
        if let Some(aws) = self.aws {
            let missing: Vec<&str> = std::iter::once(&aws.region)
                .chain(&aws.copy_to)
                .map(String::as_str)
                .filter(|region| {
                    !img.publications
                        .iter()
                        .any(|p| p.target == "aws" && p.region == *region && p.ami_id.is_some())
                })
                .collect();
            if !missing.is_empty() {
                self.events.note(
                    Stage::Bake,
                    &format!(
                        "image {} was baked from the same inputs, but is not published to AWS in {}: baking again",
                        img.id,
                        missing.join(", ")
                    ),
                );
                return Ok(None);
            }
        }
        Ok(Some(img))
    }

    fn test(&mut self, image: &mut Image) -> anyhow::Result<Outcome<()>> {
        if self.args.no_test {
            return Ok(Outcome::Skipped((), "--no-test".into()));
        }
        if image.test_result.as_deref() == Some("passed") {
            let why = if self.summary.bake_skipped {
                "the image already passed its boot test"
            } else {
                "tested during the bake (test.gate)"
            };
            return Ok(Outcome::Skipped((), why.into()));
        }
        self.events.started(Stage::Test);
        let ws = Workspace::new(&self.settings.data_dir, &self.settings.cache_dir);
        ws.ensure()?;
        let log_path = ws.data_dir.join("tests").join(format!(
            "{}.log",
            crate::cmd::bake::new_bake_id().replace("bake-", "test-")
        ));
        let log = BakeLog::create(&log_path)?;
        let reporter = CliReporter::new(self.settings.quiet);
        self.events.note(
            Stage::Test,
            &format!(
                "boot test of image {}; console log {}",
                image.id,
                log_path.display()
            ),
        );
        let res = crate::cmd::test::boot_test_image(
            image,
            self.recipe.recipe.test.as_ref(),
            &ws,
            &reporter,
            &log,
            &webake_sys::CancelToken::new(),
        );
        let result = if res.is_ok() { "passed" } else { "failed" };
        Catalog::open(&self.settings.catalog)?.set_test_result(&image.id, result)?;
        image.test_result = Some(result.into());
        res.with_context(|| format!("boot test failed (console log {})", log_path.display()))?;
        Ok(Outcome::Done(
            (),
            format!("boot test passed (console log {})", log_path.display()),
        ))
    }

    fn publish(&mut self, image: &Image) -> anyhow::Result<Outcome<()>> {
        let catalog = Catalog::open(&self.settings.catalog)?;
        match self.args.publish {
            PublishTarget::None => Ok(Outcome::Skipped((), "--publish none".into())),
            PublishTarget::Local => {
                self.events.started(Stage::Publish);
                crate::cmd::publish::publish_local(&catalog, image)?;
                Ok(Outcome::Done(
                    (),
                    format!(
                        "published locally: {}",
                        image
                            .artifacts
                            .iter()
                            .map(|a| a.path.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ))
            }
            PublishTarget::Aws => {
                self.events.started(Stage::Publish);
                let args = crate::cmd::publish::aws_args(image, &self.args.aws)?;
                let req = args.request()?;
                let p =
                    crate::cmd::publish::publish_aws(&catalog, image, &args, &req, self.settings)?;
                let mut parts = Vec::new();
                for (region, r) in &p.regions {
                    self.summary
                        .ami_ids
                        .insert(region.clone(), r.ami_id.clone());
                    parts.push(format!(
                        "{region} {}{}",
                        r.ami_id,
                        if r.reused { " (reused)" } else { "" }
                    ));
                }
                Ok(Outcome::Done(
                    (),
                    format!("AMI {}: {}", p.name, parts.join(", ")),
                ))
            }
        }
    }

    fn rollout(&mut self, image: &Image) -> anyhow::Result<Outcome<()>> {
        let repo = match (&self.args.cluster_repo, self.args.no_rollout) {
            (_, true) => return Ok(Outcome::Skipped((), "--no-rollout".into())),
            (None, false) => {
                return Err(coded(
                    INVALID_INPUT,
                    anyhow::anyhow!("--cluster-repo is required unless --no-rollout"),
                ));
            }
            (Some(repo), false) => repo,
        };
        self.events.started(Stage::Rollout);
        let outcome = crate::cmd::rollout::rollout_image(
            self.settings,
            &image.id,
            repo,
            &self.args.rollout,
            self.settings.quiet,
        )?;
        let lines = crate::cmd::rollout::summary_lines(&outcome);
        self.summary.rollout = Some(RolloutSummary::from(&outcome));
        Ok(Outcome::Done((), lines.join("; ")))
    }
}

/// What a stage returns: its value and a one-line detail.
enum Outcome<T> {
    Done(T, String),
    Skipped(T, String),
}

/// The stage's exit code on its error, keeping invalid input (2) and interrupted (130).
fn stage_error(stage: Stage, e: anyhow::Error) -> anyhow::Error {
    let code = exit::code_of(&e);
    if code == INTERRUPTED || webake_sys::cancel::signalled() {
        return if code == INTERRUPTED {
            e
        } else {
            coded(INTERRUPTED, e)
        };
    }
    if code == INVALID_INPUT || code == stage.exit_code() {
        return e;
    }
    if stage == Stage::Bake {
        // A gate boot test inside the bake fails with 3: keep it.
        return e;
    }
    coded(
        stage.exit_code(),
        e.context(format!("the {} stage failed", stage.name())),
    )
}

fn write_result(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    webake_sys::fsutil::atomic_write(path, bytes)
        .with_context(|| format!("writing {}", path.display()))
}

fn print_summary(s: &RunSummary) {
    let status = if s.ok {
        "ok".to_string()
    } else {
        format!(
            "failed in the {} stage (exit code {})",
            s.failed_stage.map(Stage::name).unwrap_or("setup"),
            s.exit_code
        )
    };
    println!("run {}: {status}", s.recipe);
    for r in &s.stages {
        let secs = r
            .seconds
            .map(|x| format!("{x:>6.1}s"))
            .unwrap_or_else(|| "       ".into());
        let detail = r.detail.lines().next().unwrap_or("");
        println!(
            "  {:<8} {:<8} {secs}  {detail}",
            r.stage.name(),
            r.status.as_str()
        );
    }
    if let Some(img) = &s.image {
        println!(
            "image {}  {} {}  (family {}, inputs {})",
            img.id, img.name, img.version, img.family, s.inputs_digest
        );
    }
    for (region, ami) in &s.ami_ids {
        println!("  {region:<16} {ami}");
    }
    if let Some(r) = &s.rollout {
        for c in &r.changes {
            println!("  {c}");
        }
        if let Some(url) = &r.pull_request_url {
            println!("pull request: {url}");
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;
    use webake_pipeline::render::contract::{self, Targets};

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: Vec<String>) -> Command {
        let argv = std::iter::once("webake".to_string()).chain(args.iter().cloned());
        match Cli::try_parse_from(argv) {
            Ok(cli) => cli.command,
            Err(e) => panic!("the pipeline contract {args:?} does not parse: {e}"),
        }
    }

    /// The command lines `webake pipeline render` puts in the pods are accepted by this CLI.
    #[test]
    fn the_pipeline_contract_parses_with_the_real_cli() {
        let copy_to = vec!["us-east-1".to_string(), "eu-central-1".to_string()];
        let aws = Targets {
            publish: "aws",
            region: Some("eu-west-1"),
            copy_to: &copy_to,
            github: Some("example/platform"),
            token_env: "FORGE_TOKEN",
        };
        let local = Targets {
            publish: "local",
            region: None,
            copy_to: &[],
            github: None,
            token_env: "GITHUB_TOKEN",
        };
        let repo = "https://github.com/example/platform.git";

        let Command::Run(a) = parse(contract::run("recipes/x.yaml", repo, &aws)) else {
            panic!("not run")
        };
        assert_eq!(a.recipe, PathBuf::from("recipes/x.yaml"));
        assert_eq!(a.publish, PublishTarget::Aws);
        assert_eq!(a.cluster_repo.as_deref(), Some(repo));
        assert!(!a.no_rollout);
        assert_eq!(a.rollout.github.as_deref(), Some("example/platform"));
        assert_eq!(a.rollout.token_env.as_deref(), Some("FORGE_TOKEN"));
        let parsed = a.check_options().unwrap().expect("AWS options");
        assert_eq!(parsed.region, "eu-west-1");
        assert_eq!(parsed.copy_to, copy_to);

        let Command::Run(a) = parse(contract::run("recipes/x.yaml", repo, &local)) else {
            panic!("not run")
        };
        assert_eq!(a.publish, PublishTarget::Local);
        assert!(a.rollout.github.is_none() && a.aws.is_empty());
        assert!(a.check_options().unwrap().is_none());

        for targets in [&aws, &local] {
            let Command::Run(a) = parse(contract::run_no_rollout(
                "$(params.recipe)",
                "/tekton/results/image-id",
                "/tekton/results/ami-ids",
                targets,
            )) else {
                panic!("not run")
            };
            assert!(a.no_rollout && a.cluster_repo.is_none());
            assert_eq!(
                a.image_id_file.as_deref(),
                Some(Path::new("/tekton/results/image-id"))
            );
            assert_eq!(
                a.ami_ids_file.as_deref(),
                Some(Path::new("/tekton/results/ami-ids"))
            );
            a.check_options().unwrap();
        }

        let Command::Rollout(a) = parse(contract::rollout(
            "img-0123456789ab",
            repo,
            "/tekton/results/pull-request",
            &aws,
        )) else {
            panic!("not rollout")
        };
        assert_eq!(a.image.as_deref(), Some("img-0123456789ab"));
        assert_eq!(a.repo, repo);
        assert_eq!(a.options.github.as_deref(), Some("example/platform"));
        assert_eq!(
            a.options.pr_url_file.as_deref(),
            Some(Path::new("/tekton/results/pull-request"))
        );
        a.options.validate(repo).unwrap();
    }

    #[test]
    fn options_that_cannot_work_are_invalid_input() {
        let Command::Run(a) = parse(
            [
                "run",
                "r.yaml",
                "--no-rollout",
                "--",
                "--region",
                "eu-west-1",
            ]
            .map(String::from)
            .to_vec(),
        ) else {
            panic!("not run")
        };
        let e = a.check_options().unwrap_err();
        assert_eq!(exit::code_of(&e), INVALID_INPUT, "{e:#}");

        let Command::Run(a) = parse(
            [
                "run",
                "r.yaml",
                "--publish",
                "aws",
                "--no-rollout",
                "--",
                "--region",
                "eu-west-1",
                "--name",
                "x",
            ]
            .map(String::from)
            .to_vec(),
        ) else {
            panic!("not run")
        };
        let e = a.check_options().unwrap_err();
        assert_eq!(exit::code_of(&e), INVALID_INPUT, "{e:#}");
        assert!(
            format!("{e:#}").contains("--name comes from the catalog"),
            "{e:#}"
        );

        assert!(
            Cli::try_parse_from(["webake", "run", "r.yaml"]).is_err(),
            "--cluster-repo or --no-rollout is required"
        );
    }

    #[test]
    fn stage_errors_map_to_their_exit_codes() {
        let plain = || anyhow::anyhow!("boom");
        assert_eq!(exit::code_of(&stage_error(Stage::Bake, plain())), FAILURE);
        assert_eq!(
            exit::code_of(&stage_error(Stage::Test, plain())),
            TEST_FAILED
        );
        assert_eq!(
            exit::code_of(&stage_error(Stage::Publish, plain())),
            PUBLISH_FAILED
        );
        assert_eq!(
            exit::code_of(&stage_error(Stage::Rollout, plain())),
            ROLLOUT_FAILED
        );
        let invalid = || coded(INVALID_INPUT, anyhow::anyhow!("bad"));
        assert_eq!(
            exit::code_of(&stage_error(Stage::Rollout, invalid())),
            INVALID_INPUT
        );
        let gate = coded(TEST_FAILED, anyhow::anyhow!("gate"));
        assert_eq!(exit::code_of(&stage_error(Stage::Bake, gate)), TEST_FAILED);
    }
}
