//! The `webake` binary: parses the command line, resolves settings, calls the engine, prints
//! the result and maps errors to the documented exit codes. No business logic lives here.

mod args;
mod cli;
mod cmd;
mod output;
mod settings;

use std::process::ExitCode;

fn main() -> ExitCode {
    // The sandbox helper re-executes this binary inside fresh namespaces; it never returns here.
    if let Some(code) = webake_sys::sandbox::helper_main_if_requested() {
        return ExitCode::from(code);
    }
    // The boot test's metadata relay re-executes it too.
    if let Some(code) = webake_engine::boottest::imds::tcp_pipe_main_if_requested() {
        return ExitCode::from(code);
    }
    let cli = cli::Cli::parse_args();
    init_tracing(&cli.global);
    cmd::dispatch(cli)
}

/// Diagnostics of the libraries (`tracing`) on stderr, as text or JSON lines.
fn init_tracing(global: &cli::GlobalArgs) {
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
        cli::LogFormat::Text => builder.with_target(false).init(),
        cli::LogFormat::Json => builder.json().init(),
    }
}
