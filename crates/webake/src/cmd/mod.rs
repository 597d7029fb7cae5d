//! One module per subcommand: its clap arguments, their conversion into the engine's options,
//! the engine call, and how the result prints.

pub mod bake;
pub mod bake_many;
pub mod boot;
pub mod cache;
pub mod clean;
pub mod gc;
pub mod images;
pub mod lint;
pub mod pipeline;
pub mod publish;
pub mod rollout;
pub mod run;
pub mod run_many;
pub mod shell;
pub mod test;
pub mod validate;
pub mod verify;

use std::process::ExitCode;

use webake_engine::{Context, Error};

use crate::cli::{Cli, Command};
use crate::output::Output;

pub type CmdResult = Result<ExitCode, Error>;

pub fn dispatch(mut cli: Cli) -> ExitCode {
    if let Command::Run(r) = &cli.command
        && r.progress == run::Progress::Json
    {
        cli.global.log_format = crate::cli::LogFormat::Json;
    }
    let out = Output::new(&cli.global, cli.command.name());
    let result = crate::settings::resolve(&cli.global).and_then(|mut settings| {
        settings.source_date_epoch = match &cli.command {
            Command::Bake(b) => b.flags.source_date_epoch,
            Command::Run(r) => r.flags.source_date_epoch,
            _ => None,
        };
        if matches!(
            cli.command,
            Command::Bake(_)
                | Command::Shell(_)
                | Command::Test(_)
                | Command::Verify(_)
                | Command::Publish(_)
                | Command::PublishAws(_)
                | Command::Rollout(_)
                | Command::Run(_)
                | Command::Clean(_)
                | Command::Gc(_)
        ) {
            // The first Ctrl-C / SIGTERM stops the command cleanly (exit 130); the second exits.
            webake_sys::cancel::install_signal_handlers();
        }
        let ctx = Context::new(settings, &out, webake_sys::CancelToken::new());
        run(cli.command, &ctx, &out)
    });
    result.unwrap_or_else(|e| out.error(&e))
}

fn run(command: Command, ctx: &Context<'_>, out: &Output) -> CmdResult {
    match command {
        Command::Validate(a) => a.run(ctx, out),
        Command::Bake(a) => a.run(ctx, out),
        Command::Shell(a) => a.run(ctx),
        Command::Images(c) => c.run(ctx, out),
        Command::Clean(a) => a.run(ctx, out),
        Command::Gc(a) => a.run(ctx, out),
        Command::Test(a) => a.run(ctx, out),
        Command::Boot(a) => a.run(ctx),
        Command::Verify(a) => a.run(ctx, out),
        Command::Lint(a) => a.run(ctx, out),
        Command::Publish(a) => a.run(ctx, out),
        Command::PublishAws(a) => a.run(ctx, out),
        Command::Rollout(a) => a.run(ctx, out),
        Command::Run(a) => a.run(ctx, out),
        Command::Pipeline(c) => c.run(out),
        Command::Cache(c) => c.run(ctx, out),
        Command::Schema => {
            println!("{}", webake_spec::schema_json());
            Ok(ExitCode::SUCCESS)
        }
    }
}
