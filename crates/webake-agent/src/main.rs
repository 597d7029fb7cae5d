//! `webake-agent`: parse the command line, resolve settings, run, map errors to exit codes.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::process::ExitCode;

use webake_agent::config::{Cli, Settings, USAGE};
use webake_agent::imds::{self, ENV_ENDPOINT, ENV_ENDPOINT_MODE, Timeouts};
use webake_agent::{Error, Level, Outcome, Reporter, exit};

/// Log lines on stderr. Under systemd (stderr is the journal stream named by `JOURNAL_STREAM`)
/// each line starts with a `<N>` syslog priority, which journald turns into the entry's
/// priority; on a terminal the level is spelled out.
struct StderrReporter {
    journal: bool,
}

impl StderrReporter {
    fn new() -> Self {
        StderrReporter {
            journal: stderr_is_journal(),
        }
    }
}

impl Reporter for StderrReporter {
    fn log(&self, level: Level, message: &str) {
        let line = if self.journal {
            let priority = match level {
                Level::Error => 3,
                Level::Warn => 4,
                Level::Info => 6,
            };
            format!("<{priority}>{message}\n")
        } else {
            let level = match level {
                Level::Error => "error",
                Level::Warn => "warning",
                Level::Info => "info",
            };
            format!("webake-agent: {level}: {message}\n")
        };
        // Logging must never be why boot fails.
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
}

fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    stream == format!("{}:{}", meta.dev(), meta.ino())
}

fn main() -> ExitCode {
    let reporter = StderrReporter::new();
    let code = match real_main(&reporter) {
        Ok(code) => code,
        Err(e) => {
            // Every error's Display already carries its cause (path, endpoint, OS error).
            reporter.log(Level::Error, &e.to_string());
            e.exit_code()
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn real_main(reporter: &StderrReporter) -> Result<i32, Error> {
    let cli = Cli::parse(std::env::args().skip(1)).map_err(Error::Config)?;
    if cli.help {
        print!("{USAGE}");
        return Ok(exit::OK);
    }
    if cli.version {
        println!("webake-agent {}", env!("CARGO_PKG_VERSION"));
        return Ok(exit::OK);
    }
    let settings = Settings::resolve(&cli).map_err(Error::Config)?;
    let env = |name| std::env::var(name).ok();
    let (endpoint, source) = imds::resolve_endpoint(
        cli.endpoint.as_deref(),
        env(ENV_ENDPOINT).as_deref(),
        env(ENV_ENDPOINT_MODE).as_deref(),
    )
    .map_err(|message| {
        Error::Config(webake_agent::config::ConfigError {
            origin: "endpoint".into(),
            message,
        })
    })?;

    if cli.check {
        let config = if settings.config_found {
            settings.config_path.display().to_string()
        } else {
            format!("{} (absent, defaults used)", settings.config_path.display())
        };
        println!("config: {config}");
        println!("role: {}", settings.role.as_deref().unwrap_or("(none)"));
        println!("template: {}", settings.template.as_str());
        println!("endpoint: {endpoint} ({source})");
        println!("deadline: {} s", settings.deadline.as_secs());
        println!("on_failure: {}", settings.on_failure);
        return Ok(exit::OK);
    }

    let timeouts = Timeouts {
        deadline: settings.deadline,
        ..Timeouts::default()
    };
    let mut client = imds::Client::new(endpoint, timeouts, reporter);
    match webake_agent::run(&settings, &mut client, reporter)? {
        Outcome::Applied { hostname } => {
            reporter.log(Level::Info, &format!("done: hostname is {hostname}"));
        }
        Outcome::DryRun { hostname } => println!("{hostname}"),
        Outcome::Skipped { .. } => {}
    }
    Ok(exit::OK)
}
