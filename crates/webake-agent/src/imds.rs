//! EC2 instance metadata service client, IMDSv2 only: a session token from
//! `PUT /latest/api/token`, then GETs carrying it. Bounded in every dimension so it can never
//! hold up boot: short per-socket timeouts, a few retries with exponential backoff, and one
//! overall deadline that caps all of it (including the sleeps).

use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use crate::http::{self, Endpoint, Limits};
use crate::{Level, Reporter};

/// `AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv4` (the default).
pub const ENDPOINT_V4: &str = "http://169.254.169.254";
/// `AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6` (Nitro instances with IPv6 IMDS enabled).
pub const ENDPOINT_V6: &str = "http://[fd00:ec2::254]";
pub const ENV_ENDPOINT: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT";
pub const ENV_ENDPOINT_MODE: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE";

pub const TOKEN_PATH: &str = "/latest/api/token";
pub const TOKEN_TTL_HEADER: &str = "X-aws-ec2-metadata-token-ttl-seconds";
pub const TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";
/// Six hours, the maximum IMDS accepts. The agent needs the token for a second at most, but a
/// long TTL costs nothing and avoids a refresh if the clock jumps at boot (NTP step).
pub const TOKEN_TTL_SECONDS: u32 = 21600;

/// IMDS is a link-local service on the host: on EC2 it accepts a connection in well under a
/// millisecond. One second covers a slow early-boot network stack; off EC2 the SYN to
/// 169.254.169.254 is usually dropped, and this is what bounds each attempt.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Per read/write on an open connection. IMDS answers in milliseconds; the AWS SDKs use 1 s.
/// Two seconds tolerates a busy hypervisor without letting a wedged peer stall us.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Attempts per request (first try + 3 retries), as in the AWS SDKs' IMDS clients. Enough to
/// ride out IMDS throttling (429/503) or a network interface that comes up a moment late.
pub const MAX_ATTEMPTS: u32 = 4;
/// Backoff before retry n is INITIAL * 2^(n-1), capped at MAX: 250 ms, 500 ms, 1 s. Short,
/// because everything here is link-local; doubling spreads retries when IMDS throttles.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(250);
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Everything the agent asks IMDS must finish within this, retries and backoff included.
/// Off EC2 with a black-holed 169.254.169.254 the token request gives up after about
/// 4 x 1 s + 1.75 s of backoff, well inside it; on EC2 the whole run takes milliseconds.
/// The systemd unit's TimeoutStartSec is larger, so the agent always reports its own failure.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(20);

/// Socket timeouts and the overall deadline; tests shrink them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub io: Duration,
    pub deadline: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: CONNECT_TIMEOUT,
            io: IO_TIMEOUT,
            deadline: DEFAULT_DEADLINE,
        }
    }
}

/// Where the endpoint came from, for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointSource {
    Flag,
    EnvEndpoint,
    EnvMode,
    Default,
}

impl fmt::Display for EndpointSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EndpointSource::Flag => "--endpoint",
            EndpointSource::EnvEndpoint => ENV_ENDPOINT,
            EndpointSource::EnvMode => ENV_ENDPOINT_MODE,
            EndpointSource::Default => "default",
        })
    }
}

/// Precedence: `--endpoint`, then `AWS_EC2_METADATA_SERVICE_ENDPOINT`, then
/// `AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE` (`IPv4`/`IPv6`, case-insensitive), then IPv4.
/// Empty values count as unset, as in the AWS SDKs.
pub fn resolve_endpoint(
    flag: Option<&str>,
    env_endpoint: Option<&str>,
    env_mode: Option<&str>,
) -> Result<(Endpoint, EndpointSource), String> {
    fn set(v: Option<&str>) -> Option<&str> {
        v.map(str::trim).filter(|v| !v.is_empty())
    }
    if let Some(url) = set(flag) {
        return Ok((Endpoint::parse(url)?, EndpointSource::Flag));
    }
    if let Some(url) = set(env_endpoint) {
        let endpoint = Endpoint::parse(url).map_err(|e| format!("{ENV_ENDPOINT}: {e}"))?;
        return Ok((endpoint, EndpointSource::EnvEndpoint));
    }
    if let Some(mode) = set(env_mode) {
        let url = match mode.to_ascii_lowercase().as_str() {
            "ipv4" => ENDPOINT_V4,
            "ipv6" => ENDPOINT_V6,
            _ => {
                return Err(format!(
                    "{ENV_ENDPOINT_MODE}={mode:?} is not valid: use IPv4 or IPv6"
                ));
            }
        };
        return Ok((Endpoint::parse(url)?, EndpointSource::EnvMode));
    }
    Ok((Endpoint::parse(ENDPOINT_V4)?, EndpointSource::Default))
}

/// Why metadata could not be read. Every variant names the endpoint and path.
#[derive(Debug)]
pub enum ImdsError {
    /// The overall deadline passed before an answer arrived.
    Deadline {
        endpoint: String,
        path: String,
        deadline: Duration,
        last_error: Option<String>,
    },
    /// All attempts failed at the transport level (refused, reset, timed out, garbage).
    Unreachable {
        endpoint: String,
        path: String,
        attempts: u32,
        source: io::Error,
    },
    /// IMDS answered with a status retrying will not fix (400, 403, or 401 with a fresh token).
    Status {
        endpoint: String,
        method: &'static str,
        path: String,
        status: u16,
        body: String,
    },
    /// IMDS answered 200 with an unusable value.
    BadValue {
        endpoint: String,
        path: String,
        reason: String,
    },
}

impl ImdsError {
    pub fn is_deadline(&self) -> bool {
        matches!(self, ImdsError::Deadline { .. })
    }
}

impl fmt::Display for ImdsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImdsError::Deadline {
                endpoint,
                path,
                deadline,
                last_error,
            } => {
                write!(
                    f,
                    "gave up on {endpoint}{path}: deadline of {} s reached",
                    deadline.as_secs_f32()
                )?;
                if let Some(e) = last_error {
                    write!(f, " (last error: {e})")?;
                }
                Ok(())
            }
            ImdsError::Unreachable {
                endpoint,
                path,
                attempts,
                source,
            } => write!(
                f,
                "cannot reach {endpoint}{path} after {attempts} attempts: {source}"
            ),
            ImdsError::Status {
                endpoint,
                method,
                path,
                status,
                body,
            } => {
                write!(f, "{method} {endpoint}{path} answered HTTP {status}")?;
                let body = body.trim();
                if !body.is_empty() && body.len() <= 200 {
                    write!(f, ": {body}")?;
                }
                if *status == 403 && path == TOKEN_PATH {
                    write!(f, " (is the instance metadata service disabled?)")?;
                }
                Ok(())
            }
            ImdsError::BadValue {
                endpoint,
                path,
                reason,
            } => write!(f, "{endpoint}{path}: {reason}"),
        }
    }
}

impl std::error::Error for ImdsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ImdsError::Unreachable { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// An IMDSv2 session. The deadline starts when the client is created.
pub struct Client<'r> {
    endpoint: Endpoint,
    timeouts: Timeouts,
    deadline: Instant,
    token: Option<String>,
    reporter: &'r dyn Reporter,
}

enum Attempt {
    Done(http::Response),
    Retry(String),
}

impl<'r> Client<'r> {
    pub fn new(endpoint: Endpoint, timeouts: Timeouts, reporter: &'r dyn Reporter) -> Self {
        Client {
            endpoint,
            deadline: Instant::now() + timeouts.deadline,
            timeouts,
            token: None,
            reporter,
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// `GET path`; `Ok(None)` on 404 (for tags: not set, or tags not exposed).
    /// A 401 means the token expired or was revoked: fetch a new one once and ask again.
    pub fn get(&mut self, path: &str) -> Result<Option<String>, ImdsError> {
        let mut refreshed = false;
        loop {
            let token = self.token()?;
            let response = self.send("GET", path, &[(TOKEN_HEADER, &token)])?;
            match response.status {
                200 => {
                    self.reporter.log(
                        Level::Info,
                        &format!("GET {path}: {}", loggable(&response.body)),
                    );
                    return Ok(Some(response.body));
                }
                404 => {
                    self.reporter.log(Level::Info, &format!("GET {path}: 404"));
                    return Ok(None);
                }
                401 if !refreshed => {
                    self.reporter.log(
                        Level::Warn,
                        &format!("GET {path}: 401, token rejected; requesting a new token"),
                    );
                    self.token = None;
                    refreshed = true;
                }
                status => return Err(self.status_error("GET", path, status, response.body)),
            }
        }
    }

    fn token(&mut self) -> Result<String, ImdsError> {
        if let Some(token) = &self.token {
            return Ok(token.clone());
        }
        let ttl = TOKEN_TTL_SECONDS.to_string();
        let response = self.send("PUT", TOKEN_PATH, &[(TOKEN_TTL_HEADER, &ttl)])?;
        if response.status != 200 {
            return Err(self.status_error("PUT", TOKEN_PATH, response.status, response.body));
        }
        let token = response.body.trim().to_owned();
        if token.is_empty() || token.chars().any(|c| c.is_control()) {
            return Err(ImdsError::BadValue {
                endpoint: self.endpoint.to_string(),
                path: TOKEN_PATH.into(),
                reason: "IMDS returned an empty or malformed token".into(),
            });
        }
        self.reporter.log(
            Level::Info,
            &format!("PUT {TOKEN_PATH}: got a session token (ttl {ttl} s)"),
        );
        self.token = Some(token.clone());
        Ok(token)
    }

    fn status_error(
        &self,
        method: &'static str,
        path: &str,
        status: u16,
        body: String,
    ) -> ImdsError {
        ImdsError::Status {
            endpoint: self.endpoint.to_string(),
            method,
            path: path.into(),
            status,
            body,
        }
    }

    /// One request with retries. Retries transport errors and 5xx/429 (throttling); returns
    /// any other response for the caller to interpret.
    fn send(
        &self,
        method: &'static str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<http::Response, ImdsError> {
        let mut last_error: Option<io::Error> = None;
        let mut last_status: Option<http::Response> = None;
        for attempt in 1..=MAX_ATTEMPTS {
            if attempt > 1 {
                let backoff = BACKOFF_INITIAL
                    .saturating_mul(1 << (attempt - 2).min(16))
                    .min(BACKOFF_MAX);
                let left = self.deadline.saturating_duration_since(Instant::now());
                if left <= backoff {
                    return Err(self.deadline_error(
                        path,
                        last_error.as_ref(),
                        last_status.as_ref(),
                    ));
                }
                std::thread::sleep(backoff);
            }
            match self.attempt(method, path, headers) {
                Ok(Attempt::Done(response)) => return Ok(response),
                Ok(Attempt::Retry(reason)) => {
                    self.log_retry(method, path, attempt, &reason);
                    last_status = Some(http::Response {
                        status: 0,
                        body: reason,
                    });
                    last_error = None;
                }
                Err(e) => {
                    if Instant::now() >= self.deadline {
                        return Err(self.deadline_error(path, Some(&e), None));
                    }
                    self.log_retry(method, path, attempt, &e.to_string());
                    last_error = Some(e);
                    last_status = None;
                }
            }
        }
        match (last_error, last_status) {
            (Some(source), _) => Err(ImdsError::Unreachable {
                endpoint: self.endpoint.to_string(),
                path: path.into(),
                attempts: MAX_ATTEMPTS,
                source,
            }),
            (None, Some(status)) => Err(ImdsError::Unreachable {
                endpoint: self.endpoint.to_string(),
                path: path.into(),
                attempts: MAX_ATTEMPTS,
                source: io::Error::other(status.body),
            }),
            (None, None) => unreachable!("MAX_ATTEMPTS is at least 1"),
        }
    }

    fn attempt(
        &self,
        method: &'static str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> io::Result<Attempt> {
        let limits = Limits {
            connect_timeout: self.timeouts.connect,
            io_timeout: self.timeouts.io,
            deadline: self.deadline,
        };
        let response = http::request(&self.endpoint, method, path, headers, limits)?;
        if response.status == 429 || (500..600).contains(&response.status) {
            return Ok(Attempt::Retry(format!("HTTP {}", response.status)));
        }
        Ok(Attempt::Done(response))
    }

    fn log_retry(&self, method: &str, path: &str, attempt: u32, reason: &str) {
        let what = if attempt < MAX_ATTEMPTS {
            "retrying"
        } else {
            "giving up"
        };
        // Info, not Warn: only the final outcome is a warning (one line off EC2).
        self.reporter.log(
            Level::Info,
            &format!(
                "{method} {}{path}: attempt {attempt}/{MAX_ATTEMPTS} failed: {reason}; {what}",
                self.endpoint
            ),
        );
    }

    fn deadline_error(
        &self,
        path: &str,
        error: Option<&io::Error>,
        status: Option<&http::Response>,
    ) -> ImdsError {
        ImdsError::Deadline {
            endpoint: self.endpoint.to_string(),
            path: path.into(),
            deadline: self.timeouts.deadline,
            last_error: error
                .map(ToString::to_string)
                .or_else(|| status.map(|s| s.body.clone())),
        }
    }
}

/// One line, bounded: tag listings are multi-line and tag values are free text.
fn loggable(body: &str) -> String {
    let one_line = body.trim().lines().collect::<Vec<_>>().join(", ");
    match one_line.char_indices().nth(120) {
        Some((cut, _)) => format!("{}...", &one_line[..cut]),
        None => one_line,
    }
}

/// Tags as far as IMDS shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tags {
    /// `/latest/meta-data/tags/instance` is 404: the instance was launched without
    /// "instance metadata tags" (`InstanceMetadataTags=enabled`).
    NotExposed,
    Exposed {
        environment: Option<String>,
        role: Option<String>,
    },
}

/// What the agent reads from IMDS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub instance_id: String,
    pub region: String,
    pub tags: Tags,
}

pub const INSTANCE_ID_PATH: &str = "/latest/meta-data/instance-id";
pub const REGION_PATH: &str = "/latest/meta-data/placement/region";
pub const TAGS_PATH: &str = "/latest/meta-data/tags/instance";
pub const ENVIRONMENT_TAG: &str = "Environment";
pub const ROLE_TAG: &str = "Role";

/// Reads instance id, region and the Environment/Role tags.
pub fn fetch(client: &mut Client<'_>) -> Result<Metadata, ImdsError> {
    let instance_id = required(client, INSTANCE_ID_PATH)?;
    let region = required(client, REGION_PATH)?;
    let tags = match client.get(TAGS_PATH)? {
        None => Tags::NotExposed,
        Some(listing) => {
            let keys: Vec<&str> = listing.lines().map(str::trim).collect();
            let mut tag = |key: &str| -> Result<Option<String>, ImdsError> {
                if !keys.contains(&key) {
                    return Ok(None);
                }
                Ok(client
                    .get(&format!("{TAGS_PATH}/{key}"))?
                    .map(|v| v.trim().to_owned())
                    .filter(|v| !v.is_empty()))
            };
            Tags::Exposed {
                environment: tag(ENVIRONMENT_TAG)?,
                role: tag(ROLE_TAG)?,
            }
        }
    };
    Ok(Metadata {
        instance_id,
        region,
        tags,
    })
}

fn required(client: &mut Client<'_>, path: &str) -> Result<String, ImdsError> {
    let endpoint = client.endpoint().to_string();
    let bad = |reason: &str| ImdsError::BadValue {
        endpoint: endpoint.clone(),
        path: path.into(),
        reason: reason.into(),
    };
    match client.get(path)? {
        None => Err(bad("not found (HTTP 404)")),
        Some(value) => {
            let value = value.trim().to_owned();
            if value.is_empty() || value.contains(char::is_whitespace) {
                Err(bad(&format!("unexpected value {value:?}")))
            } else {
                Ok(value)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_precedence_table() {
        let v4 = "http://169.254.169.254";
        let v6 = "http://[fd00:ec2::254]";
        let local = "http://127.0.0.1:1338";
        for (flag, env, mode, want, source) in [
            (None, None, None, v4, EndpointSource::Default),
            (None, None, Some("IPv6"), v6, EndpointSource::EnvMode),
            (None, None, Some("ipv4"), v4, EndpointSource::EnvMode),
            (None, None, Some(""), v4, EndpointSource::Default),
            (
                None,
                Some(local),
                Some("IPv6"),
                local,
                EndpointSource::EnvEndpoint,
            ),
            (None, Some(""), Some("IPv6"), v6, EndpointSource::EnvMode),
            (
                Some(local),
                Some(v6),
                Some("IPv6"),
                local,
                EndpointSource::Flag,
            ),
        ] {
            let (endpoint, got_source) = resolve_endpoint(flag, env, mode).unwrap();
            assert_eq!((endpoint.to_string().as_str(), got_source), (want, source));
        }
        let err = resolve_endpoint(None, None, Some("ipv5")).unwrap_err();
        assert!(err.contains("IPv4 or IPv6"), "{err}");
        let err = resolve_endpoint(None, Some("https://x"), None).unwrap_err();
        assert!(err.contains(ENV_ENDPOINT), "{err}");
    }

    /// One request whose every attempt connects and then times out waiting for an answer runs
    /// out of attempts before the default deadline, so the log says what failed, not just
    /// "deadline".
    #[test]
    fn backoff_schedule_fits_the_default_deadline() {
        let worst: Duration = (2..=MAX_ATTEMPTS)
            .map(|n| {
                BACKOFF_INITIAL
                    .saturating_mul(1 << (n - 2))
                    .min(BACKOFF_MAX)
            })
            .sum::<Duration>()
            + (CONNECT_TIMEOUT + IO_TIMEOUT) * MAX_ATTEMPTS;
        assert!(worst < DEFAULT_DEADLINE, "{worst:?}");
    }
}
