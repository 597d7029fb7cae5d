//! Progress reporting. Libraries never print: the CLI implements this trait.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheStatus {
    /// Step ran.
    Miss,
    /// Step result taken from the cache.
    Hit,
    /// Step is never cached.
    Uncached,
}

pub trait Reporter: Send + Sync {
    /// A step begins. `detail` says why it runs (e.g. which input changed).
    fn step_started(&self, step: &str, detail: &str);
    fn step_finished(&self, step: &str, elapsed: Duration, cache: CacheStatus);
    /// One line of a step's output (already redacted).
    fn output(&self, step: &str, line: &str);
    /// A notable event that is not a step.
    fn note(&self, message: &str);
    /// A step is still running after `elapsed`, silent since the last heartbeat.
    fn progress(&self, _step: &str, _elapsed: Duration) {}
}

/// How long a step may be silent before a heartbeat says it is still running.
pub const HEARTBEAT: Duration = Duration::from_secs(30);

/// A reporter that drops everything (tests, library users that don't care).
pub struct Silent;

impl Reporter for Silent {
    fn step_started(&self, _: &str, _: &str) {}
    fn step_finished(&self, _: &str, _: Duration, _: CacheStatus) {}
    fn output(&self, _: &str, _: &str) {}
    fn note(&self, _: &str) {}
}
