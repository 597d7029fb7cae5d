//! Documented exit codes and error printing.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the operation failed (bake, provisioner, I/O, ...) |
//! | 2 | invalid input: recipe or command line |
//! | 3 | boot test failed |
//! | 4 | publish failed |
//! | 5 | rollout failed |
//! | 130 | interrupted (Ctrl-C / SIGTERM) |

use std::process::ExitCode;

pub const FAILURE: u8 = 1;
pub const INVALID_INPUT: u8 = 2;
#[allow(dead_code)]
pub const TEST_FAILED: u8 = 3;
#[allow(dead_code)]
pub const PUBLISH_FAILED: u8 = 4;
#[allow(dead_code)]
pub const ROLLOUT_FAILED: u8 = 5;
pub const INTERRUPTED: u8 = 130;

/// An error that carries the exit code it should map to. Displays as its source's top
/// message; the rest of the chain follows through `source()`.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct CodedError {
    pub code: u8,
    #[source]
    pub source: anyhow::Error,
}

pub fn coded(code: u8, source: impl Into<anyhow::Error>) -> anyhow::Error {
    CodedError {
        code,
        source: source.into(),
    }
    .into()
}

/// Print the error chain (each cause once) and return the exit code.
pub fn report(err: &anyhow::Error) -> ExitCode {
    let code = code_of(err);
    let mut msgs: Vec<String> = Vec::new();
    for cause in err.chain() {
        if cause.downcast_ref::<CodedError>().is_some() {
            continue;
        }
        let m = cause.to_string();
        // Wrappers such as "step X: <source>" already contain their source's text.
        if msgs.last().is_some_and(|prev| prev.contains(m.as_str())) {
            continue;
        }
        msgs.push(m);
    }
    let mut it = msgs.into_iter();
    eprintln!("error: {}", it.next().unwrap_or_default());
    for m in it {
        eprintln!("  caused by: {m}");
    }
    ExitCode::from(code)
}

pub fn code_of(err: &anyhow::Error) -> u8 {
    if let Some(c) = err.downcast_ref::<CodedError>() {
        return c.code;
    }
    for cause in err.chain() {
        if let Some(c) = cause.downcast_ref::<CodedError>() {
            return c.code;
        }
        if cause.downcast_ref::<webake_spec::SpecError>().is_some() {
            return INVALID_INPUT;
        }
        if let Some(b) = cause.downcast_ref::<webake_build::BuildError>()
            && b.is_cancelled()
        {
            return INTERRUPTED;
        }
    }
    FAILURE
}
