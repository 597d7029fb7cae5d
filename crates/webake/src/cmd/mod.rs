//! One module per subcommand; each has an args struct and a `run()`.

pub mod agent;
pub mod bake;
pub mod base_ami;
pub mod cache;
pub mod clean;
pub mod images;
pub mod lint;
pub mod pipeline;
pub mod publish;
pub mod publish_aws;
pub mod rollout;
pub mod run;
pub mod test;
pub mod validate;

use std::process::ExitCode;

use crate::cli::{Cli, Command, GlobalArgs, LogFormat};
use crate::settings::Settings;

pub fn init_tracing(global: &GlobalArgs) {
    use tracing_subscriber::EnvFilter;
    let default = if global.quiet {
        "error"
    } else {
        match global.verbose {
            0 => "warn",
            1 => "info",
            2 => "debug",
            _ => "trace",
        }
    };
    let filter = EnvFilter::try_from_env("WEBAKE_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match global.log_format {
        LogFormat::Text => builder.with_target(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}

pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = Settings::resolve(&cli.global)?;
    match cli.command {
        Command::Validate(args) => args.run(&settings),
        Command::Bake(args) => args.run(&settings),
        Command::Images(cmd) => cmd.run(&settings),
        Command::Clean(args) => args.run(&settings),
        Command::Test(args) => args.run(&settings),
        Command::Lint(args) => args.run(&settings),
        Command::Pipeline(cmd) => cmd.run(&settings),
        Command::Publish(args) => args.run(&settings),
        Command::PublishAws(args) => args.run(&settings),
        Command::Rollout(args) => args.run(&settings),
        Command::Run(args) => args.run(&settings),
        Command::Cache(cmd) => cmd.run(&settings),
        Command::Schema => {
            println!("{}", webake_spec::schema_json());
            Ok(ExitCode::SUCCESS)
        }
    }
}
