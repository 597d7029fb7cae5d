//! Progress, without printing: every stage reports [`Event`]s to one [`Reporter`], which the
//! CLI renders as text lines or JSON lines. The libraries' own reporter traits (webake-build's
//! steps, webake-aws's transfers and retries, webake-rollout's steps) are bridged into it.

use std::time::Duration;

pub use webake_build::CacheStatus;

/// The stages of `webake run` (and of the commands that run one of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Bake,
    Test,
    Publish,
    Rollout,
}

impl Stage {
    pub const ALL: [Stage; 4] = [Stage::Bake, Stage::Test, Stage::Publish, Stage::Rollout];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Bake => "bake",
            Stage::Test => "test",
            Stage::Publish => "publish",
            Stage::Rollout => "rollout",
        }
    }

    /// What a failure in this stage is, unless its cause says otherwise.
    pub fn failure_kind(self) -> crate::ErrorKind {
        match self {
            Stage::Bake => crate::ErrorKind::Failure,
            Stage::Test => crate::ErrorKind::TestFailed,
            Stage::Publish => crate::ErrorKind::PublishFailed,
            Stage::Rollout => crate::ErrorKind::RolloutFailed,
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How a stage of `run` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    Done,
    Skipped,
    Failed,
    NotRun,
}

impl StageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StageStatus::Done => "done",
            StageStatus::Skipped => "skipped",
            StageStatus::Failed => "failed",
            StageStatus::NotRun => "not run",
        }
    }
}

/// One thing that happened.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// A stage of `run` starts.
    StageStarted { stage: Stage },
    /// A stage of `run` ended (done, skipped with the reason, failed with the first line).
    StageFinished {
        stage: Stage,
        status: StageStatus,
        seconds: Option<f64>,
        detail: &'a str,
    },
    /// A step (bootstrap, a provisioner, export, finalize, assemble, boot test phases,
    /// publish steps) starts; `detail` says why or what.
    StepStarted { step: &'a str, detail: &'a str },
    /// A step ended.
    StepFinished {
        step: &'a str,
        elapsed: Duration,
        cache: CacheStatus,
    },
    /// A long step is still running (sent every so often while it produces no output).
    Progress { step: &'a str, elapsed: Duration },
    /// One line of a command's output (already redacted).
    Output { step: &'a str, line: &'a str },
    /// Something worth saying that is not a step.
    Note(&'a str),
    /// Something that does not stop the operation but should be read.
    Warning(&'a str),
}

/// Receives events. Implementations must be cheap and must not block.
pub trait Reporter: Send + Sync {
    fn event(&self, event: &Event<'_>);

    fn note(&self, message: &str) {
        self.event(&Event::Note(message));
    }
    fn warning(&self, message: &str) {
        self.event(&Event::Warning(message));
    }
}

/// A reporter that drops everything.
pub struct Silent;

impl Reporter for Silent {
    fn event(&self, _event: &Event<'_>) {}
}

/// webake-build's steps, as events.
pub struct BuildBridge<'a>(pub &'a dyn Reporter);

impl webake_build::Reporter for BuildBridge<'_> {
    fn step_started(&self, step: &str, detail: &str) {
        self.0.event(&Event::StepStarted { step, detail });
    }
    fn step_finished(&self, step: &str, elapsed: Duration, cache: CacheStatus) {
        self.0.event(&Event::StepFinished {
            step,
            elapsed,
            cache,
        });
    }
    fn output(&self, step: &str, line: &str) {
        self.0.event(&Event::Output { step, line });
    }
    fn note(&self, message: &str) {
        self.0.note(message);
    }
    fn progress(&self, step: &str, elapsed: Duration) {
        self.0.event(&Event::Progress { step, elapsed });
    }
}

/// webake-aws's publish steps and retries, as events.
pub struct AwsBridge<'a>(pub &'a dyn Reporter);

impl webake_aws::Reporter for AwsBridge<'_> {
    fn step(&self, region: &str, message: &str) {
        self.0.note(&format!("{region}: {message}"));
    }
    fn retrying(&self, e: &webake_aws::RetryEvent<'_>) {
        self.0.warning(&format!(
            "{} {} {} failed ({}), attempt {}/{}: retrying in {:.1}s",
            e.region,
            e.op,
            e.what,
            e.reason,
            e.attempt,
            e.attempts,
            e.delay.as_secs_f64()
        ));
    }
}

/// webake-rollout's steps, as events.
pub struct RolloutBridge<'a>(pub &'a dyn Reporter);

impl webake_rollout::Reporter for RolloutBridge<'_> {
    fn step(&self, step: webake_rollout::Step<'_>) {
        use webake_rollout::Step;
        let line = match step {
            Step::Cloning { location } => format!("cloning {location}"),
            Step::Planning { rules } => format!("finding image references ({rules} rule(s))"),
            Step::Committing { branch } => format!("committing on {branch}"),
            Step::Pushing { branch } => format!("pushing {branch}"),
            Step::PullRequest { branch } => {
                format!("opening or updating the pull request for {branch}")
            }
        };
        self.0.event(&Event::StepStarted {
            step: "rollout",
            detail: &line,
        });
    }
}
