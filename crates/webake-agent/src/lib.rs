//! webake-agent: runs once at boot inside a baked image, reads the instance's identity from the
//! EC2 instance metadata service (IMDSv2) and sets the hostname from a template.
//!
//! The library never prints: it reports through [`Reporter`]; the binary decides the format.
//! See README.md for configuration, fallbacks and exit codes.

pub mod apply;
pub mod config;
pub mod hostname;
pub mod http;
pub mod imds;

use std::fmt;

use apply::{ApplyError, FileChange};
use config::{ConfigError, OnFailure, Settings};
use hostname::{Facts, Placeholder, RenderError};
use imds::{ImdsError, Metadata, Tags};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Error,
    Warn,
    Info,
}

/// Where the library's log lines go.
pub trait Reporter {
    fn log(&self, level: Level, message: &str);
}

/// Process exit codes (documented in README.md).
pub mod exit {
    /// Hostname set, or dry run done, or metadata unavailable with `on_failure = continue`.
    pub const OK: i32 = 0;
    /// A hostname could not be computed or applied (file write, sethostname).
    pub const APPLY_FAILED: i32 = 1;
    /// Bad command line, config file or environment.
    pub const USAGE: i32 = 2;
    /// Metadata unavailable and `on_failure = fail` / `--fail`.
    pub const METADATA_UNAVAILABLE: i32 = 3;
}

#[derive(Debug)]
pub enum Error {
    Config(ConfigError),
    Metadata(ImdsError),
    Render(RenderError),
    Apply(ApplyError),
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) => exit::USAGE,
            Error::Metadata(_) => exit::METADATA_UNAVAILABLE,
            Error::Render(_) | Error::Apply(_) => exit::APPLY_FAILED,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(e) => write!(f, "configuration error: {e}"),
            Error::Metadata(e) => write!(f, "instance metadata unavailable: {e}"),
            Error::Render(e) => e.fmt(f),
            Error::Apply(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Config(e) => Some(e),
            Error::Metadata(e) => Some(e),
            Error::Render(e) => Some(e),
            Error::Apply(e) => Some(e),
        }
    }
}

impl From<ApplyError> for Error {
    fn from(e: ApplyError) -> Self {
        Error::Apply(e)
    }
}

/// How a run ended without error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied {
        hostname: String,
    },
    DryRun {
        hostname: String,
    },
    /// IMDS could not be read and `on_failure = continue`: nothing was changed.
    Skipped {
        reason: String,
    },
}

/// Turns metadata plus the image's settings into template values, logging every fallback.
pub fn facts(metadata: &Metadata, settings: &Settings, reporter: &dyn Reporter) -> Facts {
    let uses = |p| settings.template.uses(p);
    let (env_tag, role_tag) = match &metadata.tags {
        Tags::Exposed { environment, role } => (environment.clone(), role.clone()),
        Tags::NotExposed => {
            if uses(Placeholder::Env) || uses(Placeholder::Role) {
                reporter.log(
                    Level::Warn,
                    "instance metadata tags are not exposed (404 on /latest/meta-data/tags/instance; \
                     launch with InstanceMetadataTags=enabled): no Environment or Role tag",
                );
            }
            (None, None)
        }
    };
    let role = match (role_tag, &settings.role) {
        (Some(tag), image) => {
            if let Some(image) = image.as_ref().filter(|image| **image != tag) {
                reporter.log(
                    Level::Info,
                    &format!("role {tag:?} from the Role tag overrides the image's role {image:?}"),
                );
            }
            tag
        }
        (None, Some(image)) => image.clone(),
        (None, None) => {
            if uses(Placeholder::Role) {
                reporter.log(
                    Level::Warn,
                    "no role: neither the config file nor --role sets one and there is no Role tag; \
                     the {role} segment is dropped",
                );
            }
            String::new()
        }
    };
    let env = env_tag.unwrap_or_else(|| {
        if uses(Placeholder::Env) {
            let why = match metadata.tags {
                Tags::NotExposed => "tags are not exposed",
                Tags::Exposed { .. } => "the instance has no Environment tag",
            };
            reporter.log(
                Level::Warn,
                &format!("no environment ({why}): the {{env}} segment is dropped"),
            );
        }
        String::new()
    });
    Facts {
        role,
        env,
        region: metadata.region.clone(),
        instance_id: metadata.instance_id.clone(),
    }
}

/// One boot-time run: query IMDS, render the hostname, apply it (or print the plan).
pub fn run(
    settings: &Settings,
    client: &mut imds::Client<'_>,
    reporter: &dyn Reporter,
) -> Result<Outcome, Error> {
    reporter.log(
        Level::Info,
        &format!(
            "querying instance metadata at {} (IMDSv2, deadline {} s)",
            client.endpoint(),
            settings.deadline.as_secs()
        ),
    );
    let metadata = match imds::fetch(client) {
        Ok(m) => m,
        Err(e) => {
            return match settings.on_failure {
                OnFailure::Fail => Err(Error::Metadata(e)),
                OnFailure::Continue => {
                    let reason = format!(
                        "instance metadata unavailable, hostname left unchanged \
                         (not on EC2, or IMDS disabled?): {e}"
                    );
                    reporter.log(Level::Warn, &reason);
                    Ok(Outcome::Skipped { reason })
                }
            };
        }
    };
    let facts = facts(&metadata, settings, reporter);
    let hostname = settings.template.render(&facts).map_err(Error::Render)?;
    let previous = apply::kernel_hostname().unwrap_or_default();
    reporter.log(
        Level::Info,
        &format!(
            "hostname {hostname} from template {} (current kernel hostname: {previous})",
            settings.template.as_str()
        ),
    );

    let hostname_path = settings.root.join(apply::HOSTNAME_PATH);
    let hosts_path = settings.root.join(apply::HOSTS_PATH);
    let hosts = apply::edit_hosts(apply::read_optional(&hosts_path)?.as_deref(), &hostname);
    if settings.dry_run {
        reporter.log(
            Level::Info,
            &format!(
                "dry run: would write {} and the {} line of {}{}",
                hostname_path.display(),
                apply::SELF_ADDRESS,
                hosts_path.display(),
                if settings.set_kernel_hostname {
                    ", and set the kernel hostname"
                } else {
                    ""
                }
            ),
        );
        return Ok(Outcome::DryRun { hostname });
    }

    let change = apply::write_if_changed(&hostname_path, format!("{hostname}\n").as_bytes())?;
    log_change(reporter, &hostname_path, change);
    let change = apply::write_if_changed(&hosts_path, &hosts)?;
    log_change(reporter, &hosts_path, change);
    if settings.set_kernel_hostname {
        if previous == hostname {
            reporter.log(Level::Info, "kernel hostname already set");
        } else {
            apply::set_kernel_hostname(&hostname)?;
            reporter.log(Level::Info, &format!("set kernel hostname to {hostname}"));
        }
    } else {
        reporter.log(
            Level::Info,
            "not setting the kernel hostname (--no-sethostname)",
        );
    }
    Ok(Outcome::Applied { hostname })
}

fn log_change(reporter: &dyn Reporter, path: &std::path::Path, change: FileChange) {
    let what = match change {
        FileChange::Unchanged => "unchanged",
        FileChange::Created => "created",
        FileChange::Updated => "updated",
    };
    reporter.log(Level::Info, &format!("{what} {}", path.display()));
}
