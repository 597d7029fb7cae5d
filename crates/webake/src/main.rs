//! The `webake` binary: parses the command line, resolves settings, dispatches.
//! Business logic lives in the library crates; this crate prints and maps errors to exit codes.

mod cli;
mod cmd;
mod exit;
mod settings;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // The sandbox helper re-executes this binary inside fresh namespaces; it never returns here.
    if let Some(code) = webake_sys::sandbox::helper_main_if_requested() {
        return ExitCode::from(code);
    }
    if let Some(code) = cmd::test::tcp_pipe_main_if_requested() {
        return ExitCode::from(code);
    }
    let cli = cli::Cli::parse();
    cmd::init_tracing(&cli.global);
    match cmd::dispatch(cli) {
        Ok(code) => code,
        Err(err) => exit::report(&err),
    }
}
