//! SDK clients per region, built once from the standard credential chain.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_ec2::config::{Credentials, Region};

use crate::retry::RetryPolicy;

/// How often we poll a snapshot or AMI whose state is still pending.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// A snapshot of a multi-GiB disk completes in minutes; an hour means something is wrong.
pub const DEFAULT_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// CopyImage across regions is the slowest step (tens of minutes for large images).
pub const DEFAULT_IMAGE_TIMEOUT: Duration = Duration::from_secs(90 * 60);
/// One attempt of one call (connect, send, answer). A 512 KiB block needs seconds even on
/// a slow uplink; a hung connection becomes a timeout that the retry policy retries.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);
/// After cancellation, how long webake keeps waiting for calls already in flight (a
/// CopyImage whose answer would name a new AMI) before it rolls back anyway. Longer than one
/// attempt, so an answer is normally recorded; what is still unanswered is found by the
/// run's tag in the rollback.
pub const DEFAULT_CANCEL_GRACE: Duration = Duration::from_secs(75);

/// Retry and wait policy. The defaults are the named constants; tests shorten them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timing {
    /// webake's retries of every EC2 and EBS call (the SDK's own retries are off).
    pub retry: RetryPolicy,
    pub poll_interval: Duration,
    pub snapshot_timeout: Duration,
    pub image_timeout: Duration,
    pub attempt_timeout: Duration,
    pub cancel_grace: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            poll_interval: DEFAULT_POLL_INTERVAL,
            snapshot_timeout: DEFAULT_SNAPSHOT_TIMEOUT,
            image_timeout: DEFAULT_IMAGE_TIMEOUT,
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            cancel_grace: DEFAULT_CANCEL_GRACE,
        }
    }
}

/// Explicit static credentials. Meant for tests against a local endpoint; real runs use the
/// standard chain (environment, profile, web identity, IMDS). `Debug` never shows the secret.
#[derive(Clone)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"** redacted **")
            .finish()
    }
}

/// How to reach AWS.
#[derive(Debug, Clone, Default)]
pub struct ClientSettings {
    /// Endpoint override for every service (e.g. a local moto server). Without it the SDK
    /// still honours the standard `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_EC2` variables.
    pub endpoint_url: Option<String>,
    /// Named profile from ~/.aws/config; `None` means the default chain.
    pub profile: Option<String>,
    /// Static credentials instead of the default chain (tests).
    pub credentials: Option<StaticCredentials>,
    pub timing: Timing,
}

/// The EC2 and EBS clients of one region, and the timing every call through them uses.
#[derive(Clone, Debug)]
pub struct RegionClients {
    pub region: String,
    pub ec2: aws_sdk_ec2::Client,
    pub ebs: aws_sdk_ebs::Client,
    pub timing: Timing,
}

/// One resolved SDK configuration (credentials are loaded once) and clients per region.
#[derive(Debug)]
pub struct Session {
    sdk: aws_config::SdkConfig,
    timing: Timing,
    clients: Mutex<BTreeMap<String, RegionClients>>,
}

impl Session {
    /// Resolve the configuration for `home_region`. Nothing is called on AWS yet.
    pub async fn new(home_region: &str, settings: &ClientSettings) -> Self {
        // The SDK's retries are off: webake retries every call itself (see crate::retry for
        // why), so a call's budget never depends on a quota shared with other calls.
        let timeouts = TimeoutConfig::builder()
            .operation_attempt_timeout(settings.timing.attempt_timeout)
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(home_region.to_string()))
            .retry_config(RetryConfig::disabled())
            .timeout_config(timeouts);
        if let Some(url) = &settings.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let Some(profile) = &settings.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(c) = &settings.credentials {
            loader = loader.credentials_provider(Credentials::new(
                &c.access_key_id,
                &c.secret_access_key,
                None,
                None,
                "webake-static",
            ));
        }
        let sdk = loader.load().await;
        Self {
            sdk,
            timing: settings.timing.clone(),
            clients: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn timing(&self) -> &Timing {
        &self.timing
    }

    /// An Auto Scaling client for `region` (only `webake gc` asks Auto Scaling anything, so it
    /// is not kept in [`RegionClients`]).
    pub(crate) fn autoscaling(&self, region: &str) -> aws_sdk_autoscaling::Client {
        let conf = aws_sdk_autoscaling::config::Builder::from(&self.sdk)
            .region(aws_sdk_autoscaling::config::Region::new(region.to_string()))
            .build();
        aws_sdk_autoscaling::Client::from_conf(conf)
    }

    /// Clients for `region`, sharing the resolved credentials.
    pub fn region(&self, region: &str) -> RegionClients {
        let mut map = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(region.to_string())
            .or_insert_with(|| {
                let ec2 = aws_sdk_ec2::config::Builder::from(&self.sdk)
                    .region(Region::new(region.to_string()))
                    .build();
                let ebs = aws_sdk_ebs::config::Builder::from(&self.sdk)
                    .region(aws_sdk_ebs::config::Region::new(region.to_string()))
                    .build();
                RegionClients {
                    region: region.to_string(),
                    ec2: aws_sdk_ec2::Client::from_conf(ec2),
                    ebs: aws_sdk_ebs::Client::from_conf(ebs),
                    timing: self.timing.clone(),
                }
            })
            .clone()
    }
}

impl RegionClients {
    /// The retry context for calls in this region.
    pub(crate) fn caller<'a>(
        &'a self,
        reporter: &'a dyn crate::reporter::Reporter,
        stop: &'a crate::retry::Stop,
    ) -> crate::retry::Caller<'a> {
        crate::retry::Caller {
            region: &self.region,
            policy: &self.timing.retry,
            reporter,
            stop,
        }
    }
}
