//! The engine's error: what went wrong (typed, from the crate that failed), and what kind of
//! failure it is (the documented exit codes follow the kind).

use std::path::PathBuf;

use crate::events::Stage;

/// How a failure is classified (the CLI maps each to its documented exit code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The operation failed (bake, provisioner, I/O, ...): exit 1.
    Failure,
    /// Invalid input, recipe or options: exit 2.
    Invalid,
    /// The boot test failed: exit 3.
    TestFailed,
    /// Publishing failed: exit 4.
    PublishFailed,
    /// The rollout failed: exit 5.
    RolloutFailed,
    /// A rebake did not reproduce the image, or its inputs cannot be had again: exit 6.
    NotReproduced,
    /// Interrupted (Ctrl-C, SIGTERM): exit 130.
    Interrupted,
}

impl ErrorKind {
    /// The documented exit code (README, "Exit codes").
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Failure => 1,
            Self::Invalid => 2,
            Self::TestFailed => 3,
            Self::PublishFailed => 4,
            Self::RolloutFailed => 5,
            Self::NotReproduced => 6,
            Self::Interrupted => 130,
        }
    }
}

/// An error of webake. Library errors are boxed: the error stays small on every `Result`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Spec(Box<webake_spec::SpecError>),
    #[error(transparent)]
    Build(Box<webake_build::BuildError>),
    #[error(transparent)]
    Catalog(Box<webake_catalog::CatalogError>),
    #[error(transparent)]
    Inventory(Box<webake_inventory::Error>),
    #[error(transparent)]
    Aws(Box<webake_aws::Error>),
    #[error(transparent)]
    Rollout(Box<webake_rollout::RolloutError>),
    #[error(transparent)]
    Tree(Box<webake_sys::TreeError>),
    #[error(transparent)]
    Extract(Box<webake_build::extract::ExtractError>),
    #[error(transparent)]
    Process(Box<webake_sys::ProcessError>),
    #[error(transparent)]
    Upstream(Box<webake_upstream::Error>),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Invalid input that no library type describes (conflicting options, a missing file).
    #[error("{0}")]
    Invalid(String),
    /// A failure that no library type describes.
    #[error("{0}")]
    Failed(String),
    /// The boot test ran and failed.
    #[error("{0}")]
    TestFailed(String),
    /// `webake verify`: the image was not reproduced (or its inputs are gone).
    #[error("{0}")]
    NotReproduced(String),
    /// Cancelled (Ctrl-C, SIGTERM): the context above it says what was.
    #[error("cancelled")]
    Interrupted,
    /// What was being done when `source` happened.
    #[error("{message}")]
    Context {
        message: String,
        #[source]
        source: Box<Error>,
    },
    /// A stage of `run` failed: the kind follows the stage unless the cause says otherwise
    /// (invalid input, interrupted).
    #[error("the {stage} stage failed")]
    Stage {
        stage: Stage,
        #[source]
        source: Box<Error>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

macro_rules! boxed_from {
    ($($variant:ident($ty:ty),)*) => {
        $(impl From<$ty> for Error {
            fn from(e: $ty) -> Self {
                Self::$variant(Box::new(e))
            }
        })*
    };
}

boxed_from! {
    Spec(webake_spec::SpecError),
    Build(webake_build::BuildError),
    Catalog(webake_catalog::CatalogError),
    Inventory(webake_inventory::Error),
    Aws(webake_aws::Error),
    Rollout(webake_rollout::RolloutError),
    Tree(webake_sys::TreeError),
    Extract(webake_build::extract::ExtractError),
    Process(webake_sys::ProcessError),
    Upstream(webake_upstream::Error),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub fn context(self, message: impl Into<String>) -> Self {
        Self::Context {
            message: message.into(),
            source: Box::new(self),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Spec(_) | Self::Invalid(_) => ErrorKind::Invalid,
            Self::Interrupted => ErrorKind::Interrupted,
            Self::TestFailed(_) => ErrorKind::TestFailed,
            Self::NotReproduced(_) => ErrorKind::NotReproduced,
            Self::Build(b) if b.is_cancelled() => ErrorKind::Interrupted,
            Self::Process(p) if p.is_cancelled() => ErrorKind::Interrupted,
            Self::Aws(e) if e.is_cancelled() => ErrorKind::Interrupted,
            Self::Aws(_) => ErrorKind::PublishFailed,
            Self::Rollout(r) if r.is_invalid_input() => ErrorKind::Invalid,
            Self::Rollout(_) => ErrorKind::RolloutFailed,
            Self::Context { source, .. } => source.kind(),
            Self::Stage { stage, source } => match source.kind() {
                k @ (ErrorKind::Invalid | ErrorKind::Interrupted | ErrorKind::TestFailed) => k,
                _ => stage.failure_kind(),
            },
            _ => ErrorKind::Failure,
        }
    }
}

/// `.context(...)` on results whose error converts into [`Error`].
pub trait ResultExt<T> {
    fn context(self, message: impl Into<String>) -> Result<T>;
    fn with_context<M: Into<String>>(self, message: impl FnOnce() -> M) -> Result<T>;
}

impl<T, E: Into<Error>> ResultExt<T> for std::result::Result<T, E> {
    fn context(self, message: impl Into<String>) -> Result<T> {
        self.map_err(|e| e.into().context(message))
    }
    fn with_context<M: Into<String>>(self, message: impl FnOnce() -> M) -> Result<T> {
        self.map_err(|e| e.into().context(message()))
    }
}

/// The error and its causes, each once (a wrapper such as "step X: <source>" already
/// contains its source's text).
pub fn causes(e: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut msgs: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        let m = c.to_string();
        if !m.is_empty() && !msgs.last().is_some_and(|prev| prev.contains(m.as_str())) {
            msgs.push(m);
        }
        cur = c.source();
    }
    msgs
}

/// The error and its causes as one text, each cause once.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    causes(e).join(": ")
}
