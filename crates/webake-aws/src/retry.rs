//! webake's own retry policy for every EC2 and EBS call.
//!
//! The SDK's retries are turned off (see [`crate::Session::new`]): its standard mode shares one
//! retry quota (a token bucket) between every call of a client, so a burst of throttling on
//! thousands of blocks drains it and later calls get one try each. Here every call gets the
//! same budget, independent of the others, the constants are ours and documented, and each
//! retry is reported (so a slow publish says why it is slow).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use tokio::sync::Notify;

use crate::error::{Error, Result};
use crate::reporter::{Reporter, RetryEvent};

/// Attempts per call, the first included. coldsnap uploads each block with 12 attempts over
/// ~132 s because that outlasted "snapshot does not exist" right after StartSnapshot in its
/// testing (the EBS team advised retrying for about two minutes, coldsnap issue 43); every
/// call here gets at least that budget.
pub const RETRY_ATTEMPTS: u32 = 12;
/// The pause before retry `n` is `n × RETRY_BASE_DELAY` (2, 4, …, 22 s: 132 s over 12
/// attempts, coldsnap's schedule), capped at [`RETRY_MAX_DELAY`], plus up to 10 % jitter so
/// blocks throttled together do not come back together.
pub const RETRY_BASE_DELAY: Duration = Duration::from_secs(2);
/// Ceiling of one pause.
pub const RETRY_MAX_DELAY: Duration = Duration::from_secs(30);
/// How long after webake created a resource a "not found" for it means "not visible yet"
/// (EC2 and EBS are eventually consistent) rather than "gone". After this grace a resource we
/// created and still cannot see is an error ([`Error::Vanished`] or the call's error), never
/// a reason to keep waiting. Slightly more than coldsnap's 132 s.
pub const NOT_YET_VISIBLE_GRACE: Duration = Duration::from_secs(150);

/// webake's retry budget for one call. Plain data: tests shorten the delays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per call, the first included.
    pub attempts: u32,
    /// Pause before retry `n` is `n × base_delay` (capped at `max_delay`), plus jitter.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// See [`NOT_YET_VISIBLE_GRACE`].
    pub not_yet_visible_grace: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: RETRY_ATTEMPTS,
            base_delay: RETRY_BASE_DELAY,
            max_delay: RETRY_MAX_DELAY,
            not_yet_visible_grace: NOT_YET_VISIBLE_GRACE,
        }
    }
}

impl RetryPolicy {
    /// The pause after failed attempt `attempt` (1-based), without jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.base_delay.saturating_mul(attempt).min(self.max_delay)
    }

    /// The sum of all pauses of one call: the least time a call keeps trying.
    pub fn budget(&self) -> Duration {
        (1..self.attempts).map(|a| self.delay(a)).sum()
    }
}

/// Why a failed call may succeed if tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Throttling, a concurrency limit, 5xx, a timeout or a connection failure. The call may
    /// or may not have taken effect (the answer can be lost after the service acted).
    Transient,
    /// The resource is unknown (possibly not visible yet).
    NotFound,
    /// Anything else (validation, permissions, conflicts): retrying will not help.
    Permanent,
}

/// Error codes that mean "slow down" or "try again" on EC2 and the EBS direct APIs.
const TRANSIENT_CODES: &[&str] = &[
    // EC2
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "Unavailable",
    "InsufficientInstanceCapacity",
    // EBS direct APIs (documented errors of PutSnapshotBlock & co.)
    "RequestThrottledException",
    "ConcurrentLimitExceededException",
    "InternalServerException",
    "ServiceUnavailableException",
    "TooManyRequestsException",
];

/// Codes of definite refusals among the transient ones: the call did not take effect.
const THROTTLE_CODES: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "RequestThrottledException",
    "ConcurrentLimitExceededException",
    "TooManyRequestsException",
    "InsufficientInstanceCapacity",
];

/// Whether a failed attempt may have taken effect: no definite answer came back.
fn ambiguous<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> bool {
    match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(se) => {
            se.raw().status().is_server_error()
                && !se.err().code().is_some_and(|c| THROTTLE_CODES.contains(&c))
        }
        _ => false,
    }
}

/// Codes that mean the resource (AMI or snapshot) is unknown.
pub(crate) const NOT_FOUND_CODES: &[&str] = &[
    "InvalidAMIID.NotFound",
    "InvalidAMIID.Unavailable",
    "InvalidSnapshot.NotFound",
    "ResourceNotFoundException",
];

pub(crate) fn classify<E>(e: &SdkError<E, HttpResponse>) -> Class
where
    E: ProvideErrorMetadata,
{
    match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            Class::Transient
        }
        SdkError::ServiceError(se) => {
            let code = se.err().code();
            if code.is_some_and(|c| NOT_FOUND_CODES.contains(&c)) {
                Class::NotFound
            } else if code.is_some_and(|c| TRANSIENT_CODES.contains(&c))
                || se.raw().status().is_server_error()
                || se.raw().status().as_u16() == 429
            {
                Class::Transient
            } else {
                Class::Permanent
            }
        }
        _ => Class::Permanent,
    }
}

/// Extra conditions under which one call is retried.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Also<'a> {
    /// The resource the call is about was created by this run at this instant: "not found"
    /// is retried until the grace period after it has passed.
    pub created_at: Option<Instant>,
    /// Error codes retried for this call only (e.g. `InvalidSnapshot.InUse` on a
    /// DeleteSnapshot right after DeregisterImage).
    pub codes: &'a [&'a str],
}

/// What every call needs: where, with which budget, whom to tell, and when to stop.
#[derive(Clone, Copy)]
pub(crate) struct Caller<'a> {
    pub region: &'a str,
    pub policy: &'a RetryPolicy,
    pub reporter: &'a dyn Reporter,
    pub stop: &'a Stop,
}

impl Caller<'_> {
    /// Run `f` (one SDK call) under the retry policy. Stopping interrupts the pauses between
    /// attempts, never an attempt in flight: a create whose request was sent is always
    /// awaited, so its answer can be recorded.
    pub(crate) async fn call<T, E, F, Fut>(
        &self,
        op: &'static str,
        what: &str,
        also: Also<'_>,
        mut f: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, SdkError<E, HttpResponse>>>,
        E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
    {
        let started = Instant::now();
        let mut attempt = 1;
        let mut unanswered = false;
        loop {
            self.stop.check()?;
            let e = match f().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            unanswered |= ambiguous(&e);
            let class = classify(&e);
            let code = e.code().map(str::to_string);
            let retryable = match class {
                Class::Transient => true,
                Class::NotFound => also
                    .created_at
                    .is_some_and(|t| t.elapsed() < self.policy.not_yet_visible_grace),
                Class::Permanent => code.as_deref().is_some_and(|c| also.codes.contains(&c)),
            };
            if !retryable || attempt >= self.policy.attempts.max(1) {
                return Err(crate::error::aws_error(
                    op,
                    self.region,
                    what,
                    &e,
                    attempt,
                    started.elapsed(),
                    unanswered,
                ));
            }
            let delay = jitter(self.policy.delay(attempt));
            let reason = code.unwrap_or_else(|| match &e {
                SdkError::TimeoutError(_) => "timeout".into(),
                SdkError::DispatchFailure(_) => "connection failure".into(),
                SdkError::ResponseError(_) => "unreadable answer".into(),
                SdkError::ServiceError(se) => format!("HTTP {}", se.raw().status().as_u16()),
                _ => "error".into(),
            });
            tracing::warn!(region = %self.region, op, %what, attempt, ?delay, %reason, "retrying");
            self.reporter.retrying(&RetryEvent {
                region: self.region,
                op,
                what,
                attempt,
                attempts: self.policy.attempts,
                delay,
                reason: &reason,
            });
            self.stop.sleep(delay).await?;
            attempt += 1;
        }
    }
}

/// Add up to 10 % to `d`, from a cheap per-process sequence (no need for real randomness:
/// the point is that concurrent retries do not line up).
fn jitter(d: Duration) -> Duration {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut x = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        ^ std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(0);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    d + d.mul_f64((x % 1000) as f64 / 10_000.0)
}

#[derive(Debug, Default)]
struct StopFlag {
    set: AtomicBool,
    notify: Notify,
}

impl StopFlag {
    async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.set.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

/// A stop request shared by the tasks of one publish: set on cancellation, or (a child) when
/// a sibling copy failed. Checked between attempts and steps, never inside a call.
#[derive(Debug, Clone, Default)]
pub(crate) struct Stop {
    own: Arc<StopFlag>,
    parent: Option<Arc<StopFlag>>,
}

impl Stop {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// A stop that is set when this one is, and can also be set on its own.
    pub(crate) fn child(&self) -> Self {
        Self {
            own: Arc::new(StopFlag::default()),
            parent: Some(self.own.clone()),
        }
    }

    pub(crate) fn stop(&self) {
        self.own.set.store(true, Ordering::SeqCst);
        self.own.notify.notify_waiters();
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.own.set.load(Ordering::SeqCst)
            || self
                .parent
                .as_ref()
                .is_some_and(|p| p.set.load(Ordering::SeqCst))
    }

    pub(crate) fn check(&self) -> Result<()> {
        if self.is_stopped() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }

    async fn stopped(&self) {
        match &self.parent {
            Some(p) => tokio::select! {
                () = self.own.wait() => {}
                () = p.wait() => {}
            },
            None => self.own.wait().await,
        }
    }

    /// Sleep for `d`, or return `Cancelled` as soon as stopped.
    pub(crate) async fn sleep(&self, d: Duration) -> Result<()> {
        tokio::select! {
            () = tokio::time::sleep(d) => self.check(),
            () = self.stopped() => Err(Error::Cancelled),
        }
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Futures driven together on the current task (no spawning, so they may borrow the
/// reporter and the ledger). Meant for a handful to a few dozen futures: every wake polls
/// all of them.
pub(crate) struct Pool<'a, T> {
    futures: Vec<BoxFuture<'a, T>>,
}

impl<'a, T> Pool<'a, T> {
    pub(crate) fn new() -> Self {
        Self {
            futures: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, f: impl Future<Output = T> + Send + 'a) {
        self.futures.push(Box::pin(f));
    }

    pub(crate) fn len(&self) -> usize {
        self.futures.len()
    }

    /// The output of the next future to finish; `None` when the pool is empty.
    pub(crate) async fn next(&mut self) -> Option<T> {
        std::future::poll_fn(|cx: &mut Context<'_>| {
            if self.futures.is_empty() {
                return Poll::Ready(None);
            }
            for i in 0..self.futures.len() {
                if let Poll::Ready(v) = self.futures[i].as_mut().poll(cx) {
                    drop(self.futures.swap_remove(i));
                    return Poll::Ready(Some(v));
                }
            }
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_budget_is_at_least_coldsnaps() {
        let p = RetryPolicy::default();
        assert_eq!(p.attempts, 12);
        assert_eq!(p.delay(1), Duration::from_secs(2));
        assert_eq!(p.delay(11), Duration::from_secs(22));
        assert_eq!(p.budget(), Duration::from_secs(132));
        assert!(p.not_yet_visible_grace >= p.budget());
    }

    #[test]
    fn jitter_adds_at_most_ten_percent() {
        for _ in 0..100 {
            let d = jitter(Duration::from_secs(10));
            assert!(
                d >= Duration::from_secs(10) && d <= Duration::from_secs(11),
                "{d:?}"
            );
        }
    }

    #[tokio::test]
    async fn stop_interrupts_sleep_and_reaches_children() {
        let parent = Stop::new();
        let child = parent.child();
        let sleeping = child.sleep(Duration::from_secs(60));
        parent.stop();
        assert!(matches!(sleeping.await, Err(Error::Cancelled)));
        assert!(child.is_stopped());
        let other = Stop::new();
        let c2 = other.child();
        c2.stop();
        assert!(!other.is_stopped(), "a child does not stop its parent");
    }

    #[tokio::test]
    async fn pool_yields_in_completion_order() {
        let mut pool = Pool::new();
        for (i, ms) in [(0, 60u64), (1, 10), (2, 30)] {
            pool.push(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                i
            });
        }
        let mut got = Vec::new();
        while let Some(i) = pool.next().await {
            got.push(i);
        }
        assert_eq!(got, [1, 2, 0]);
        assert_eq!(pool.len(), 0);
    }
}
