//! Downloads from a mirror: HTTP(S) through the workspace's `ureq`, or `file:` archives.

use std::io::Read;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::sources::SourceId;

/// Timeouts of one transfer. A mirror that does not accept a connection in `CONNECT` is
/// unreachable; one that stalls for `READ` mid-transfer is too. `TOTAL` bounds one file
/// (the largest, bookworm's main Packages.xz, is ~9 MB).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub read: Duration,
    pub total: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            read: Duration::from_secs(30),
            total: Duration::from_secs(300),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Fetcher {
    agent: ureq::Agent,
}

/// Why a GET did not return a body; mapped onto [`Error`] with the source by [`Fetcher::get`].
enum Failure {
    Status(u16),
    TooLarge,
    Unreachable(String),
}

impl Fetcher {
    pub fn new(t: Timeouts) -> Self {
        let config = ureq::Agent::config_builder()
            .timeout_connect(Some(t.connect))
            .timeout_per_read(Some(t.read))
            .timeout_global(Some(t.total))
            .user_agent(concat!("webake-upstream/", env!("CARGO_PKG_VERSION")))
            .build();
        Fetcher {
            agent: config.into(),
        }
    }

    /// GET `url` (of source `id`), at most `limit` bytes.
    pub fn get(&self, id: &SourceId, url: &str, limit: u64) -> Result<Vec<u8>> {
        tracing::debug!(%url, "fetch");
        let result = match url.strip_prefix("file://") {
            Some(path) => read_file(path, limit),
            None if url.starts_with("file:/") => read_file(&url["file:".len()..], limit),
            None => self.http_get(url, limit),
        };
        result.map_err(|f| match f {
            Failure::Status(status) => Error::HttpStatus {
                source_id: id.clone(),
                url: url.to_owned(),
                status,
            },
            Failure::TooLarge => Error::TooLarge {
                source_id: id.clone(),
                url: url.to_owned(),
                limit,
            },
            Failure::Unreachable(message) => Error::Unreachable {
                source_id: id.clone(),
                url: url.to_owned(),
                message,
            },
        })
    }

    fn http_get(&self, url: &str, limit: u64) -> Result<Vec<u8>, Failure> {
        let classify = |e: ureq::Error| match e {
            ureq::Error::StatusCode(s) => Failure::Status(s),
            ureq::Error::BodyExceedsLimit(_) => Failure::TooLarge,
            other => Failure::Unreachable(other.to_string()),
        };
        let mut response = self.agent.get(url).call().map_err(classify)?;
        response
            .body_mut()
            .with_config()
            .limit(limit)
            .read_to_vec()
            .map_err(classify)
    }
}

fn read_file(path: &str, limit: u64) -> Result<Vec<u8>, Failure> {
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Failure::Status(404),
        _ => Failure::Unreachable(e.to_string()),
    })?;
    let mut buf = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Failure::Unreachable(e.to_string()))?;
    if buf.len() as u64 > limit {
        return Err(Failure::TooLarge);
    }
    Ok(buf)
}
