//! Command-line types (clap). Each subcommand's arguments live in its own module under `cmd/`;
//! options shared by several commands in `args`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "webake",
    version,
    about = "Bake, test, publish and roll out machine images",
    after_help = "Exit codes: 0 ok, 1 failed, 2 invalid input, 3 boot test failed, 4 publish failed, 5 rollout failed, 130 interrupted."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// SQLite catalog of images and bakes [default: $XDG_DATA_HOME/webake/catalog.db]
    #[arg(long, global = true, env = "WEBAKE_CATALOG", value_name = "FILE")]
    pub catalog: Option<PathBuf>,
    /// Directory for image artifacts and bake logs [default: $XDG_DATA_HOME/webake]
    #[arg(long, global = true, env = "WEBAKE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Directory for the bootstrap and layer cache [default: $XDG_CACHE_HOME/webake]
    #[arg(long, global = true, env = "WEBAKE_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Print the result as one JSON document on stdout
    #[arg(long, global = true)]
    pub json: bool,
    /// Progress and diagnostics on stderr: text lines, or one JSON object per line
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "WEBAKE_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// More diagnostics (-v: info, -vv: debug, -vvv: trace)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors: no progress
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a recipe; errors name file:line:col and the field (exit code 2)
    Validate(crate::cmd::validate::ValidateArgs),
    /// Bake a recipe into an image in the local catalog
    Bake(crate::cmd::bake::BakeArgs),
    /// A shell in the step sandbox: on a recipe's tree after a step, or on a catalog image
    Shell(crate::cmd::shell::ShellArgs),
    /// List, show and compare baked images
    #[command(subcommand)]
    Images(crate::cmd::images::ImagesCommand),
    /// Remove what a crash can leave behind (temp dirs, stale bake records)
    Clean(crate::cmd::clean::CleanArgs),
    /// Retire old images nothing uses (catalog, local files, AMIs); says why each is kept
    Gc(crate::cmd::gc::GcArgs),
    /// Boot an image under qemu (UEFI) and run the recipe's checks
    Test(crate::cmd::test::TestArgs),
    /// Boot a copy of an image under qemu with its serial console on this terminal
    Boot(crate::cmd::boot::BootArgs),
    /// Rebake an image from its recorded inputs and compare the raw disks byte for byte
    Verify(crate::cmd::verify::VerifyArgs),
    /// Hygiene lint of an image or a directory tree
    Lint(crate::cmd::lint::LintArgs),
    /// Publish a catalog image: locally (default) or to AWS as an AMI
    Publish(crate::cmd::publish::PublishArgs),
    /// Publish a raw disk to AWS directly (low level; `publish --to aws` takes these from the catalog)
    PublishAws(crate::cmd::publish::PublishAwsArgs),
    /// Open or update a pull request that rolls an image out in a cluster repository
    Rollout(crate::cmd::rollout::RolloutArgs),
    /// Bake, boot-test, publish and roll out a recipe in one go (skips an unchanged bake)
    Run(crate::cmd::run::RunArgs),
    /// Render Kubernetes Job / CronJob / Tekton pipelines that run webake
    #[command(subcommand)]
    Pipeline(crate::cmd::pipeline::PipelineCommand),
    /// The bootstrap and step-layer cache: ls, gc (LRU to a size limit), clear
    #[command(subcommand)]
    Cache(crate::cmd::cache::CacheCommand),
    /// Print the JSON Schema of the recipe format
    Schema,
}

impl Cli {
    /// Parse the command line. An environment variable that is set but empty counts as unset
    /// (clap would take it as an empty value).
    pub fn parse_args() -> Self {
        use clap::{CommandFactory as _, FromArgMatches as _};
        let matches = ignore_empty_env(Self::command()).get_matches();
        Self::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

fn ignore_empty_env(mut cmd: clap::Command) -> clap::Command {
    let empty: Vec<clap::Id> = cmd
        .get_arguments()
        .filter(|a| {
            a.get_env()
                .is_some_and(|var| std::env::var_os(var).is_some_and(|v| v.is_empty()))
        })
        .map(|a| a.get_id().clone())
        .collect();
    for id in empty {
        cmd = cmd.mut_arg(id, |a| a.env(None));
    }
    let subs: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    for name in subs {
        cmd = cmd.mut_subcommand(name, ignore_empty_env);
    }
    cmd
}

impl Command {
    /// The command's name, as progress and errors in JSON name their source.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Validate(_) => "validate",
            Command::Bake(_) => "bake",
            Command::Shell(_) => "shell",
            Command::Images(_) => "images",
            Command::Clean(_) => "clean",
            Command::Gc(_) => "gc",
            Command::Test(_) => "test",
            Command::Boot(_) => "boot",
            Command::Verify(_) => "verify",
            Command::Lint(_) => "lint",
            Command::Publish(_) => "publish",
            Command::PublishAws(_) => "publish-aws",
            Command::Rollout(_) => "rollout",
            Command::Run(_) => "run",
            Command::Pipeline(_) => "pipeline",
            Command::Cache(_) => "cache",
            Command::Schema => "schema",
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }

    /// Every argument of every command says what it is (`--help` describes every flag).
    #[test]
    fn every_argument_is_described() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "webake", &mut missing);
        assert!(missing.is_empty(), "arguments without help: {missing:?}");
    }

    /// Every long flag of a command and of its subcommands, and the global ones.
    fn flags(cmd: &clap::Command, out: &mut Vec<String>) {
        out.extend(
            cmd.get_arguments()
                .filter_map(|a| a.get_long().map(|l| format!("--{l}"))),
        );
        for sub in cmd.get_subcommands() {
            flags(sub, out);
        }
    }

    /// The README's command table names every command, and every flag it shows exists on
    /// that command (docs match behaviour).
    #[test]
    fn the_readme_command_table_matches_the_cli() {
        let readme = include_str!("../../../README.md");
        let cli = super::Cli::command();
        let rows: Vec<String> = readme
            .lines()
            .filter(|l| l.starts_with("| `webake ") && !l.starts_with("| `webake-"))
            .map(|l| {
                l.split(" | ")
                    .next()
                    .unwrap_or_default()
                    .replace("\\|", "|")
            })
            .collect();
        assert!(rows.len() > 10, "the README's command table: {rows:?}");
        let mut named = Vec::new();
        for row in &rows {
            for alt in row.split(" / ") {
                let words: Vec<&str> = alt
                    .trim_matches(['|', ' ', '`'])
                    .split_whitespace()
                    .collect();
                assert_eq!(words.first(), Some(&"webake"), "{row}");
                let name = words[1].trim_matches('`');
                let cmd = cli.find_subcommand(name).unwrap_or_else(|| {
                    panic!("README names `webake {name}`, which does not exist")
                });
                named.push(name.to_string());
                let mut known = Vec::new();
                flags(cmd, &mut known);
                flags(&cli, &mut known);
                for w in &words[2..] {
                    let w = w.trim_matches(|c: char| "[]`|".contains(c));
                    if w.starts_with("--") {
                        let flag = w.split('=').next().unwrap_or(w);
                        assert!(
                            known.iter().any(|k| k == flag),
                            "README: `webake {name}` has no {flag}"
                        );
                    }
                }
            }
        }
        for sub in cli.get_subcommands() {
            let name = sub.get_name();
            assert!(
                named.iter().any(|n| n == name) || name == "publish-aws",
                "`webake {name}` is missing from the README's command table"
            );
        }
    }
}
