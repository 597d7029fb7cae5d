//! The agent's configuration file (`/etc/webake/agent.conf`, written at bake time) and its
//! command line. Precedence: command line > environment (endpoint only) > file > defaults.
//!
//! File format: one `key = value` per line, `#` starts a comment (also after a value, unless
//! inside double quotes), blank lines are ignored, values may be wrapped in double quotes. Unknown keys are errors, so a typo in an
//! image is caught by `webake-agent --check` at bake time rather than ignored at boot.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::hostname::{DEFAULT_TEMPLATE, Template};

/// Relative to `--root`.
pub const DEFAULT_CONFIG_PATH: &str = "etc/webake/agent.conf";

/// What to do when instance metadata cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Log, change nothing, exit 0: boot continues with whatever hostname the image has.
    Continue,
    /// Log and exit 3, so the unit shows as failed.
    Fail,
}

impl fmt::Display for OnFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OnFailure::Continue => "continue",
            OnFailure::Fail => "fail",
        })
    }
}

impl OnFailure {
    fn parse(value: &str) -> Option<OnFailure> {
        match value {
            "continue" => Some(OnFailure::Continue),
            "fail" => Some(OnFailure::Fail),
            _ => None,
        }
    }
}

/// Settings from the config file; `None` means "not set there".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileConfig {
    pub role: Option<String>,
    pub template: Option<Template>,
    pub on_failure: Option<OnFailure>,
    pub deadline: Option<Duration>,
}

/// An error that names the file and line, or the flag, at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub origin: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.origin, self.message)
    }
}

impl std::error::Error for ConfigError {}

pub const FILE_KEYS: [&str; 4] = ["role", "template", "on_failure", "deadline_seconds"];

impl FileConfig {
    /// Reads `path`. A missing file is fine unless `required` (it was named with `--config`).
    pub fn load(path: &Path, required: bool) -> Result<Option<FileConfig>, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => FileConfig::parse(&text, &path.display().to_string()).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(None),
            Err(e) => Err(ConfigError {
                origin: path.display().to_string(),
                message: format!("cannot read: {e}"),
            }),
        }
    }

    /// Parses the text of a config file; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<FileConfig, ConfigError> {
        let mut config = FileConfig::default();
        let mut seen: Vec<&str> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let err = |message: String| ConfigError {
                origin: format!("{origin}:{}", index + 1),
                message,
            };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| err(format!("expected key = value, found {line:?}")))?;
            let key = key.trim();
            let value = unquote(value.trim()).map_err(&err)?;
            let known = FILE_KEYS.iter().find(|k| **k == key).ok_or_else(|| {
                err(format!(
                    "unknown key {key:?}; known keys: {}",
                    FILE_KEYS.join(", ")
                ))
            })?;
            if seen.contains(known) {
                return Err(err(format!("key {key:?} is set twice")));
            }
            seen.push(known);
            match key {
                "role" => config.role = Some(value.to_owned()),
                "template" => {
                    config.template =
                        Some(Template::parse(value).map_err(|e| err(format!("template: {e}")))?);
                }
                "on_failure" => {
                    config.on_failure = Some(OnFailure::parse(value).ok_or_else(|| {
                        err(format!(
                            "on_failure must be continue or fail, not {value:?}"
                        ))
                    })?);
                }
                "deadline_seconds" => {
                    config.deadline = Some(parse_seconds(value).map_err(&err)?);
                }
                _ => unreachable!("key checked against FILE_KEYS"),
            }
        }
        Ok(config)
    }
}

/// The value part of `key = value`: `#` starts a comment unless inside double quotes.
fn unquote(value: &str) -> Result<&str, String> {
    match value.strip_prefix('"') {
        None => Ok(value.split('#').next().unwrap_or_default().trim_end()),
        Some(rest) => {
            let (inner, after) = rest
                .split_once('"')
                .ok_or_else(|| format!("unterminated quote in {value:?}"))?;
            let after = after.trim_start();
            if after.is_empty() || after.starts_with('#') {
                Ok(inner)
            } else {
                Err(format!("unexpected text after the quoted value: {after:?}"))
            }
        }
    }
}

fn parse_seconds(value: &str) -> Result<Duration, String> {
    match value.parse::<u64>() {
        Ok(secs) if (1..=3600).contains(&secs) => Ok(Duration::from_secs(secs)),
        _ => Err(format!(
            "deadline_seconds must be a whole number from 1 to 3600, not {value:?}"
        )),
    }
}

/// What the command line asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cli {
    pub root: Option<PathBuf>,
    pub config: Option<PathBuf>,
    pub endpoint: Option<String>,
    pub role: Option<String>,
    pub template: Option<Template>,
    pub on_failure: Option<OnFailure>,
    pub deadline: Option<Duration>,
    pub dry_run: bool,
    pub no_sethostname: bool,
    pub check: bool,
    pub help: bool,
    pub version: bool,
}

pub const USAGE: &str = "\
Usage: webake-agent [OPTIONS]

Sets this machine's hostname from EC2 instance metadata (IMDSv2) at boot.

Options:
  --root DIR             Operate on DIR/etc/hostname, DIR/etc/hosts, DIR/etc/webake/agent.conf
                         (default: /)
  --config FILE          Config file (default: ROOT/etc/webake/agent.conf; may be absent)
  --endpoint URL         IMDS endpoint, e.g. http://169.254.169.254 (overrides
                         AWS_EC2_METADATA_SERVICE_ENDPOINT and ..._ENDPOINT_MODE)
  --role ROLE            Role for {role} (overrides the config file; the Role tag overrides both)
  --template TEMPLATE    Hostname template (default: {role}-{env}-{region_compact}-{instance_id_short})
  --deadline SECONDS     Give up on IMDS after this long (default: 20)
  --fail                 Exit 3 when metadata is unavailable (default: log and exit 0)
  --no-sethostname       Write the files but do not set the kernel hostname
  --dry-run              Query IMDS and print the plan; change nothing
  --check                Validate the configuration and exit (no network)
  -h, --help             Print this help
  -V, --version          Print the version
";

impl Cli {
    /// Parses arguments (without the program name). Accepts `--flag value` and `--flag=value`.
    pub fn parse<I, S>(args: I) -> Result<Cli, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let err = |message: String| ConfigError {
            origin: "command line".into(),
            message,
        };
        let mut cli = Cli::default();
        let mut args = args.into_iter().map(Into::into);
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
                _ => (arg.clone(), None),
            };
            let takes_value = matches!(
                flag.as_str(),
                "--root" | "--config" | "--endpoint" | "--role" | "--template" | "--deadline"
            );
            let value = if takes_value {
                match inline {
                    Some(v) => Some(v),
                    None => Some(
                        args.next()
                            .ok_or_else(|| err(format!("{flag} needs a value")))?,
                    ),
                }
            } else {
                if inline.is_some() {
                    return Err(err(format!("{flag} takes no value")));
                }
                None
            };
            let value = value.unwrap_or_default();
            match flag.as_str() {
                "--root" => cli.root = Some(PathBuf::from(value)),
                "--config" => cli.config = Some(PathBuf::from(value)),
                "--endpoint" => cli.endpoint = Some(value),
                "--role" => cli.role = Some(value),
                "--template" => {
                    cli.template =
                        Some(Template::parse(&value).map_err(|e| err(format!("--template: {e}")))?);
                }
                "--deadline" => {
                    cli.deadline = Some(
                        parse_seconds(&value)
                            .map_err(|e| err(e.replace("deadline_seconds", "--deadline")))?,
                    );
                }
                "--fail" => cli.on_failure = Some(OnFailure::Fail),
                "--no-sethostname" => cli.no_sethostname = true,
                "--dry-run" => cli.dry_run = true,
                "--check" => cli.check = true,
                "-h" | "--help" => cli.help = true,
                "-V" | "--version" => cli.version = true,
                other => return Err(err(format!("unknown argument {other:?} (see --help)"))),
            }
        }
        Ok(cli)
    }
}

/// Everything resolved: what `run` works from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub root: PathBuf,
    pub config_path: PathBuf,
    pub config_found: bool,
    /// The image's role (file, or `--role`); the Role tag may still override it at run time.
    pub role: Option<String>,
    pub template: Template,
    pub on_failure: OnFailure,
    pub deadline: Duration,
    pub dry_run: bool,
    pub set_kernel_hostname: bool,
}

impl Settings {
    /// Merges the command line over the config file over defaults.
    pub fn resolve(cli: &Cli) -> Result<Settings, ConfigError> {
        let root = cli.root.clone().unwrap_or_else(|| PathBuf::from("/"));
        let (config_path, required) = match &cli.config {
            Some(path) => (path.clone(), true),
            None => (root.join(DEFAULT_CONFIG_PATH), false),
        };
        let file = FileConfig::load(&config_path, required)?;
        let config_found = file.is_some();
        let file = file.unwrap_or_default();
        let template = match (&cli.template, file.template) {
            (Some(t), _) => t.clone(),
            (None, Some(t)) => t,
            (None, None) => Template::parse(DEFAULT_TEMPLATE).expect("default template parses"),
        };
        let role = cli
            .role
            .clone()
            .or(file.role)
            .map(|r| r.trim().to_owned())
            .filter(|r| !r.is_empty());
        Ok(Settings {
            root,
            config_path,
            config_found,
            role,
            template,
            on_failure: cli
                .on_failure
                .or(file.on_failure)
                .unwrap_or(OnFailure::Continue),
            deadline: cli
                .deadline
                .or(file.deadline)
                .unwrap_or(crate::imds::DEFAULT_DEADLINE),
            dry_run: cli.dry_run,
            set_kernel_hostname: !cli.no_sethostname && !cli.dry_run,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_config_file() {
        let text = "\
# written by webake at bake time
role = kubernetes
template = \"{role}-{instance_id_short}\"

on_failure=fail   # exit 3 off EC2
deadline_seconds = 5#
";
        let c = FileConfig::parse(text, "agent.conf").unwrap();
        assert_eq!(c.role.as_deref(), Some("kubernetes"));
        assert_eq!(c.template.unwrap().as_str(), "{role}-{instance_id_short}");
        assert_eq!(c.on_failure, Some(OnFailure::Fail));
        assert_eq!(c.deadline, Some(Duration::from_secs(5)));

        let c = FileConfig::parse("role = \"a#b\"  # comment\n", "agent.conf").unwrap();
        assert_eq!(c.role.as_deref(), Some("a#b"));
    }

    #[test]
    fn readme_example_config_parses() {
        let readme = include_str!("../README.md");
        let example: String = readme
            .lines()
            .skip_while(|l| *l != "    # /etc/webake/agent.conf")
            .take_while(|l| l.starts_with("    "))
            .map(|l| format!("{}\n", &l[4..]))
            .collect();
        assert!(
            example.contains("role = kubernetes"),
            "example not found in README"
        );
        let c = FileConfig::parse(&example, "README.md").unwrap();
        assert_eq!(c.role.as_deref(), Some("kubernetes"));
        assert_eq!(c.template.unwrap().as_str(), DEFAULT_TEMPLATE);
        assert_eq!(c.on_failure, Some(OnFailure::Continue));
        assert_eq!(c.deadline, Some(crate::imds::DEFAULT_DEADLINE));
    }

    #[test]
    fn config_error_table() {
        for (text, want) in [
            ("role kubernetes", "agent.conf:1: expected key = value"),
            (
                "\nrol = x",
                "agent.conf:2: unknown key \"rol\"; known keys: role, template",
            ),
            (
                "role = a\nrole = b",
                "agent.conf:2: key \"role\" is set twice",
            ),
            (
                "template = {role}-{environment}",
                "agent.conf:1: template: unknown placeholder {environment} at column 8",
            ),
            (
                "template = {role",
                "agent.conf:1: template: '{' at column 1 is never closed",
            ),
            (
                "on_failure = maybe",
                "agent.conf:1: on_failure must be continue or fail",
            ),
            (
                "deadline_seconds = 0",
                "agent.conf:1: deadline_seconds must be a whole number",
            ),
            (
                "deadline_seconds = 1.5",
                "agent.conf:1: deadline_seconds must be a whole number",
            ),
            ("role = \"kubernetes", "agent.conf:1: unterminated quote"),
            (
                "role = \"a\" b",
                "agent.conf:1: unexpected text after the quoted value",
            ),
        ] {
            let got = FileConfig::parse(text, "agent.conf")
                .unwrap_err()
                .to_string();
            assert!(
                got.starts_with(want),
                "{text:?}: got {got:?}, want {want:?}"
            );
        }
    }

    #[test]
    fn parses_the_command_line() {
        let cli = Cli::parse([
            "--root",
            "/tmp/x",
            "--endpoint=http://127.0.0.1:1338",
            "--role",
            "web",
            "--template={role}-{instance_id}",
            "--deadline",
            "3",
            "--fail",
            "--no-sethostname",
            "--dry-run",
        ])
        .unwrap();
        assert_eq!(cli.root, Some(PathBuf::from("/tmp/x")));
        assert_eq!(cli.endpoint.as_deref(), Some("http://127.0.0.1:1338"));
        assert_eq!(cli.role.as_deref(), Some("web"));
        assert_eq!(cli.template.unwrap().as_str(), "{role}-{instance_id}");
        assert_eq!(cli.deadline, Some(Duration::from_secs(3)));
        assert_eq!(cli.on_failure, Some(OnFailure::Fail));
        assert!(cli.no_sethostname && cli.dry_run && !cli.check);

        for (args, want) in [
            (vec!["--root"], "--root needs a value"),
            (vec!["--bogus"], "unknown argument \"--bogus\""),
            (vec!["--fail=yes"], "--fail takes no value"),
            (
                vec!["--template", "{nope}"],
                "--template: unknown placeholder {nope}",
            ),
            (vec!["--deadline", "x"], "--deadline must be a whole number"),
        ] {
            let got = Cli::parse(args.clone()).unwrap_err().to_string();
            assert!(got.contains(want), "{args:?}: {got}");
        }
    }

    #[test]
    fn command_line_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join(DEFAULT_CONFIG_PATH);
        std::fs::create_dir_all(conf.parent().unwrap()).unwrap();
        std::fs::write(
            &conf,
            "role = kubernetes\ntemplate = {role}-{instance_id_short}\n",
        )
        .unwrap();

        let cli = Cli::parse(["--root", dir.path().to_str().unwrap()]).unwrap();
        let s = Settings::resolve(&cli).unwrap();
        assert!(s.config_found);
        assert_eq!(s.role.as_deref(), Some("kubernetes"));
        assert_eq!(s.template.as_str(), "{role}-{instance_id_short}");
        assert_eq!(s.on_failure, OnFailure::Continue);
        assert_eq!(s.deadline, crate::imds::DEFAULT_DEADLINE);
        assert!(s.set_kernel_hostname);

        let cli = Cli::parse([
            "--root",
            dir.path().to_str().unwrap(),
            "--role",
            "web",
            "--template",
            "{role}",
            "--dry-run",
        ])
        .unwrap();
        let s = Settings::resolve(&cli).unwrap();
        assert_eq!(s.role.as_deref(), Some("web"));
        assert_eq!(s.template.as_str(), "{role}");
        assert!(!s.set_kernel_hostname, "dry run never sets the hostname");
    }

    #[test]
    fn missing_default_config_is_fine_but_a_named_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let cli = Cli::parse(["--root", dir.path().to_str().unwrap()]).unwrap();
        let s = Settings::resolve(&cli).unwrap();
        assert!(!s.config_found);
        assert_eq!(s.template.as_str(), DEFAULT_TEMPLATE);
        assert_eq!(s.role, None);

        let missing = dir.path().join("nope.conf");
        let cli = Cli::parse(["--config", missing.to_str().unwrap()]).unwrap();
        let err = Settings::resolve(&cli).unwrap_err().to_string();
        assert!(err.contains("nope.conf: cannot read"), "{err}");
    }
}
