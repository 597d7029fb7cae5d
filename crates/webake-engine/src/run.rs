//! `run`: bake -> test -> publish -> rollout in one go, each stage optional, with a summary.
//!
//! The bake is skipped when the catalog holds an image baked from the same inputs (and, with
//! an AWS target, published in every target region), so a cron over unchanged inputs is a
//! no-op; the later stages still run, idempotently (publish reuses the AMI, the rollout finds
//! its branch up to date). See docs/run.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use std::fmt::Write as _;

use serde::Serialize;
use webake_build::bake::BakeLog;
use webake_catalog::{Artifact, Image, TestResult};
use webake_rollout::{BranchStatus, RolloutOutcome};
use webake_spec::LoadedRecipe;

use crate::bake::{BakeOptions, artifacts_intact};
use crate::events::{Event, Stage, StageStatus};
use crate::plan::Planned;
use crate::publish::Target;
use crate::rollout::{ImageChoice, RolloutOptions};
use crate::upstream::UpstreamStatus;
use crate::{Context, Error, ErrorKind, Result};

/// Where `run` rolls out.
#[derive(Debug, Clone)]
pub struct RolloutTarget {
    /// A cluster repository: a local path or a URL git can clone and push to.
    pub repo: String,
    pub options: RolloutOptions,
}

/// Options of a run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub bake: BakeOptions,
    /// Run the boot test stage (a recipe with `test.gate` is tested during the bake anyway).
    pub test: bool,
    pub publish: Option<Target>,
    pub rollout: Option<RolloutTarget>,
    /// Why there is no rollout, when it is not `--no-rollout` (another architecture's run
    /// rolls out, or one failed).
    pub no_rollout_reason: Option<String>,
    /// Write the image id here once the image exists.
    pub image_id_file: Option<PathBuf>,
    /// Write region -> AMI (JSON) here after the publish stage.
    pub ami_ids_file: Option<PathBuf>,
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
    pub test_result: Option<TestResult>,
    pub artifacts: Vec<Artifact>,
}

impl From<&Image> for ImageSummary {
    fn from(img: &Image) -> Self {
        Self {
            id: img.id.to_string(),
            name: img.name.clone(),
            family: img.family.clone(),
            version: img.version.clone(),
            bake_id: img.bake_id.to_string(),
            inputs_digest: img.inputs_digest.clone(),
            test_result: img.test_result,
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

/// What `run` ends with (`--json`: this, on stdout, also when a stage failed).
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
    /// The rollout's full outcome (lines for the summary are derived from it).
    #[serde(skip)]
    pub rollout_outcome: Option<RolloutOutcome>,
}

/// Run the stages; the summary is complete also when a stage failed (the error is returned
/// next to it).
pub fn run(
    ctx: &Context<'_>,
    recipe: &LoadedRecipe,
    plan: &Planned,
    opts: &RunOptions,
) -> (RunSummary, Result<()>) {
    run_baked(ctx, recipe, plan, opts, None)
}

/// [`run`] whose bake stage already ran earlier in this invocation (`run A B C` bakes every
/// recipe that [`decide`] says needs a bake first, several at a time, then runs each one's
/// later stages): `baked` is that bake's outcome or failure; `None`: the bake stage decides
/// as in [`run`].
pub fn run_baked(
    ctx: &Context<'_>,
    recipe: &LoadedRecipe,
    plan: &Planned,
    opts: &RunOptions,
    baked: Option<Result<crate::bake::BakeOutcome>>,
) -> (RunSummary, Result<()>) {
    let mut r = Runner {
        ctx,
        recipe,
        plan,
        opts,
        baked,
        summary: RunSummary {
            recipe: recipe.path.display().to_string(),
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
            rollout_outcome: None,
        },
    };
    let result = r.stages();
    let mut summary = r.summary;
    for stage in Stage::ALL {
        if !summary.stages.iter().any(|s| s.stage == stage) {
            summary.stages.push(StageReport {
                stage,
                status: StageStatus::NotRun,
                seconds: None,
                detail: "an earlier stage failed".into(),
            });
        }
    }
    if let Err(e) = &result {
        summary.exit_code = e.kind().exit_code();
        summary.error = Some(crate::error::chain(e));
    }
    summary.ok = result.is_ok();
    (summary, result)
}

/// What a stage returns: its value and a one-line detail.
enum Outcome<T> {
    Done(T, String),
    /// Done earlier in the invocation, in this many seconds.
    DoneEarlier(T, String, f64),
    Skipped(T, String),
}

struct Runner<'a, 'r> {
    ctx: &'a Context<'r>,
    recipe: &'a LoadedRecipe,
    plan: &'a Planned,
    opts: &'a RunOptions,
    /// The bake stage's result when it ran earlier ([`run_baked`]).
    baked: Option<Result<crate::bake::BakeOutcome>>,
    summary: RunSummary,
}

impl Runner<'_, '_> {
    fn stages(&mut self) -> Result<()> {
        let mut image = self.stage(Stage::Bake, |r| r.bake())?;
        self.summary.image = Some(ImageSummary::from(&image));
        if let Some(f) = &self.opts.image_id_file {
            write_result(f, image.id.as_bytes())?;
        }
        self.stage(Stage::Test, |r| r.test(&mut image))?;
        self.summary.image = Some(ImageSummary::from(&image));
        self.stage(Stage::Publish, |r| r.publish(&image))?;
        if let Some(f) = &self.opts.ami_ids_file {
            let json = serde_json::to_string(&self.summary.ami_ids)
                .map_err(|e| Error::Failed(e.to_string()))?;
            write_result(f, json.as_bytes())?;
        }
        self.stage(Stage::Rollout, |r| r.rollout(&image))?;
        Ok(())
    }

    /// Run one stage: events, timing, its report, and its failure kind.
    fn stage<T>(
        &mut self,
        stage: Stage,
        f: impl FnOnce(&mut Self) -> Result<Outcome<T>>,
    ) -> Result<T> {
        if webake_sys::cancel::signalled() || self.ctx.cancel.is_cancelled() {
            return Err(Error::Interrupted.context(format!("interrupted before the {stage} stage")));
        }
        let start = Instant::now();
        // A stage reports its start itself: a skip decided up front reports none.
        let result = f(self);
        let seconds = start.elapsed().as_secs_f64();
        let (status, seconds, detail, out) = match result {
            Ok(Outcome::Done(v, d)) => (StageStatus::Done, Some(seconds), d, Ok(v)),
            Ok(Outcome::DoneEarlier(v, d, s)) => (StageStatus::Done, Some(s), d, Ok(v)),
            Ok(Outcome::Skipped(v, d)) => (StageStatus::Skipped, None, d, Ok(v)),
            Err(e) => {
                let e = stage_error(stage, e);
                let first = crate::error::chain(&e)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                self.summary.failed_stage = Some(stage);
                (StageStatus::Failed, Some(seconds), first, Err(e))
            }
        };
        self.ctx.reporter.event(&Event::StageFinished {
            stage,
            status,
            seconds,
            detail: &detail,
        });
        self.summary.stages.push(StageReport {
            stage,
            status,
            seconds,
            detail,
        });
        out
    }

    fn started(&self, stage: Stage) {
        self.ctx.reporter.event(&Event::StageStarted { stage });
    }

    fn bake(&mut self) -> Result<Outcome<Image>> {
        if let Some(baked) = self.baked.take() {
            let o = baked?;
            let detail = bake_detail(&o);
            return Ok(Outcome::DoneEarlier(o.image, detail, o.seconds));
        }
        let d = decide(self.ctx, self.recipe, self.plan, self.opts)?;
        if let Some(img) = d.image {
            self.summary.bake_skipped = true;
            self.ctx.reporter.note(&format!(
                "skipping the bake: {}; --force bakes anyway",
                d.reason
            ));
            return Ok(Outcome::Skipped(img, d.reason));
        }
        self.ctx.reporter.note(&d.reason);
        self.started(Stage::Bake);
        // The skip rule above is run's own (it also asks for the AWS publications).
        let opts = BakeOptions {
            force: true,
            ..self.opts.bake.clone()
        };
        let o = crate::bake::bake(self.ctx, self.recipe, self.plan, &opts)?;
        let detail = bake_detail(&o);
        Ok(Outcome::Done(o.image, detail))
    }

    fn test(&mut self, image: &mut Image) -> Result<Outcome<()>> {
        if !self.opts.test {
            return Ok(Outcome::Skipped((), "--no-test".into()));
        }
        if image.test_result == Some(TestResult::Passed) {
            let why = if self.summary.bake_skipped {
                "the image already passed its boot test"
            } else {
                "tested during the bake (test.gate)"
            };
            return Ok(Outcome::Skipped((), why.into()));
        }
        self.started(Stage::Test);
        let log = test_log(self.ctx)?;
        self.ctx.reporter.note(&format!(
            "boot test of image {}; console log {}",
            image.id,
            log.path.display()
        ));
        let res =
            crate::boottest::test_image(self.ctx, image, self.recipe.recipe.test.as_ref(), &log);
        let result = if res.is_ok() {
            TestResult::Passed
        } else {
            TestResult::Failed
        };
        self.ctx.catalog()?.set_test_result(&image.id, result)?;
        image.test_result = Some(result);
        res.map_err(|e| {
            e.context(format!(
                "boot test failed (console log {})",
                log.path.display()
            ))
        })?;
        Ok(Outcome::Done(
            (),
            format!("boot test passed (console log {})", log.path.display()),
        ))
    }

    fn publish(&mut self, image: &Image) -> Result<Outcome<()>> {
        let Some(target) = &self.opts.publish else {
            return Ok(Outcome::Skipped((), "--publish none".into()));
        };
        self.started(Stage::Publish);
        let p = crate::publish::publish(self.ctx, image, target)?;
        let Some(aws) = p.aws else {
            let paths: Vec<String> = image
                .artifacts
                .iter()
                .map(|a| a.path.display().to_string())
                .collect();
            return Ok(Outcome::Done(
                (),
                format!("published locally: {}", paths.join(", ")),
            ));
        };
        let mut parts = Vec::new();
        for (region, r) in &aws.regions {
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
            format!("AMI {}: {}", aws.name, parts.join(", ")),
        ))
    }

    fn rollout(&mut self, image: &Image) -> Result<Outcome<()>> {
        let Some(target) = &self.opts.rollout else {
            let why = self.opts.no_rollout_reason.as_deref();
            return Ok(Outcome::Skipped((), why.unwrap_or("--no-rollout").into()));
        };
        self.started(Stage::Rollout);
        let resolved = crate::rollout::resolve(
            self.ctx,
            &ImageChoice::Catalog {
                query: image.id.to_string(),
                version: None,
            },
        )?;
        let req = crate::rollout::request(resolved, &target.repo, &target.options, false);
        let outcome = crate::rollout::rollout(self.ctx, &req)?;
        self.summary.rollout = Some(RolloutSummary::from(&outcome));
        let detail = crate::rollout::summary_lines(&outcome).join("; ");
        self.summary.rollout_outcome = Some(outcome);
        Ok(Outcome::Done((), detail))
    }
}

/// The bake stage's detail line.
fn bake_detail(o: &crate::bake::BakeOutcome) -> String {
    format!(
        "image {} version {} (bake {}, log {})",
        o.image.id,
        o.image.version,
        o.bake_id,
        o.log.display()
    )
}

/// Whether `run` bakes, and why.
#[derive(Debug, Clone, Serialize)]
pub struct BakeDecision {
    /// The image the later stages would use instead of baking (None: bake).
    #[serde(rename = "reuse", serialize_with = "image_id")]
    pub image: Option<Image>,
    pub reason: String,
}

fn image_id<S: serde::Serializer>(
    img: &Option<Image>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match img {
        Some(i) => s.serialize_some(i.id.as_str()),
        None => s.serialize_none(),
    }
}

/// The skip rule of `run`: an image of the family baked from the same inputs, with its
/// artifacts intact and, with an AWS target, published in every target region.
pub fn decide(
    ctx: &Context<'_>,
    recipe: &LoadedRecipe,
    plan: &Planned,
    opts: &RunOptions,
) -> Result<BakeDecision> {
    let b = &opts.bake;
    let bake = |reason: String| {
        Ok(BakeDecision {
            image: None,
            reason,
        })
    };
    if b.force || b.no_cache || b.refresh_base {
        let why = if b.force {
            "--force"
        } else if b.no_cache {
            "--no-cache"
        } else {
            "--refresh-base"
        };
        return bake(format!(
            "{why}: not looking for an image baked from the same inputs"
        ));
    }
    let family = recipe.family();
    let digest = &plan.inputs_digest;
    let found = if ctx.catalog_exists() {
        ctx.catalog()?.find_by_inputs(family, digest)?
    } else {
        None
    };
    let Some(img) = found else {
        if let Some(why) = stale_parent(ctx, recipe)? {
            return bake(why);
        }
        if let Some(u) = plan
            .upstream
            .as_ref()
            .filter(|u| u.status == UpstreamStatus::Updates)
        {
            return bake(format!("upstream: {}", u.summary));
        }
        if let Some(u) = plan
            .step_sources
            .as_ref()
            .filter(|u| u.status == UpstreamStatus::Updates)
        {
            return bake(format!("upstream: {}", u.summary));
        }
        return bake(format!(
            "no image of family {family} was baked from these inputs (digest {digest})"
        ));
    };
    if !artifacts_intact(&img) {
        return bake(format!(
            "image {} was baked from the same inputs, but an artifact is gone: baking again",
            img.id
        ));
    }
    if let Some(Target::Aws(t)) = &opts.publish {
        let missing: Vec<&str> = t
            .regions()
            .filter(|region| {
                !img.publications
                    .iter()
                    .any(|p| p.ami().is_some_and(|(r, _)| r == *region))
            })
            .collect();
        if !missing.is_empty() {
            return bake(format!(
                "image {} was baked from the same inputs, but is not published to AWS in {}: baking again",
                img.id,
                missing.join(", ")
            ));
        }
    }
    let upstream: String = plan
        .upstream
        .iter()
        .map(|u| format!("; {}", u.summary))
        .chain(plan.step_sources.iter().map(|u| format!("; {}", u.summary)))
        .collect();
    Ok(BakeDecision {
        reason: format!(
            "image {} was baked from the same inputs (digest {digest}){upstream}",
            img.id
        ),
        image: Some(img),
    })
}

/// A derived image whose parent moved: the family's newest image was built on another parent
/// than the one `base: {image: ...}` names now.
fn stale_parent(ctx: &Context<'_>, recipe: &LoadedRecipe) -> Result<Option<String>> {
    let webake_spec::Base::Image(query) = &recipe.recipe.base else {
        return Ok(None);
    };
    let parent = crate::base::parent_image(ctx, query)?;
    let newest = ctx
        .catalog()?
        .list_images(Some(recipe.family()))?
        .into_iter()
        .next();
    let Some(child) = newest else {
        return Ok(None);
    };
    Ok(match &child.provenance.parent {
        Some(p) if p.id != parent.id.as_str() => Some(format!(
            "image {} of family {} was built on {} ({} {}); its base {query} is now {} ({} {}): baking again",
            child.id, child.family, p.id, p.name, p.version, parent.id, parent.name, parent.version
        )),
        _ => None,
    })
}

/// A stage's failure: its own kind, unless the cause is invalid input, an interruption or a
/// failed gate boot test.
fn stage_error(stage: Stage, e: Error) -> Error {
    if webake_sys::cancel::signalled() && e.kind() != ErrorKind::Interrupted {
        return Error::Interrupted.context(crate::error::chain(&e));
    }
    match e.kind() {
        ErrorKind::Invalid | ErrorKind::Interrupted => e,
        k if k == stage.failure_kind() => e,
        // A gate boot test inside the bake fails as a test failure: keep it.
        ErrorKind::TestFailed if stage == Stage::Bake => e,
        _ => Error::Stage {
            stage,
            source: Box::new(e),
        },
    }
}

/// The console log of a boot test run outside a bake.
pub fn test_log(ctx: &Context<'_>) -> Result<BakeLog> {
    ctx.workspace.ensure()?;
    let path = ctx.workspace.data_dir.join("tests").join(format!(
        "{}.log",
        crate::bake::new_bake_id().replace("bake-", "test-")
    ));
    Ok(BakeLog::create(&path)?)
}

fn write_result(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    webake_sys::fsutil::atomic_write(path, bytes).map_err(|e| Error::io(path, e))
}

/// The summary `run` prints at the end.
impl std::fmt::Display for RunSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self;
        let status = if s.ok {
            "ok".to_string()
        } else {
            format!(
                "failed in the {} stage (exit code {})",
                s.failed_stage.map(|st| st.name()).unwrap_or("setup"),
                s.exit_code
            )
        };
        let mut out = format!("run {}: {status}\n", s.recipe);
        for r in &s.stages {
            let secs = r
                .seconds
                .map(|x| format!("{x:>6.1}s"))
                .unwrap_or_else(|| "       ".into());
            let detail = r.detail.lines().next().unwrap_or("");
            let _ = writeln!(
                out,
                "  {:<8} {:<8} {secs}  {detail}",
                r.stage.name(),
                r.status.as_str()
            );
        }
        if let Some(img) = &s.image {
            let _ = writeln!(
                out,
                "image {}  {} {}  (family {}, inputs {})",
                img.id, img.name, img.version, img.family, s.inputs_digest
            );
        }
        for (region, ami) in &s.ami_ids {
            let _ = writeln!(out, "  {region:<16} {ami}");
        }
        if let Some(r) = &s.rollout {
            for c in &r.changes {
                let _ = writeln!(out, "  {c}");
            }
            if let Some(url) = &r.pull_request_url {
                let _ = writeln!(out, "pull request: {url}");
            }
        }
        f.write_str(&out)
    }
}
