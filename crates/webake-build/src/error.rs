use std::path::PathBuf;

/// Why a bake failed. Every variant names the step, path or command involved.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("step {step}: {source}")]
    Step {
        step: String,
        #[source]
        source: Box<BuildError>,
    },
    #[error(transparent)]
    Process(#[from] webake_sys::ProcessError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// An operation on an image tree (path-safe, see webake_sys::tree).
    #[error(transparent)]
    Tree(#[from] webake_sys::TreeError),
    #[error("the bake was cancelled")]
    Cancelled,
    #[error("missing host tool `{tool}`: {hint}")]
    MissingTool { tool: String, hint: String },
    #[error("{0}")]
    Invalid(String),
    #[error("not enough space: {0}")]
    NoSpace(String),
}

impl BuildError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.raw_os_error() == Some(libc_enospc()) {
            return Self::NoSpace(format!("{}: {source}", path.display()));
        }
        Self::Io { path, source }
    }

    pub fn in_step(self, step: impl Into<String>) -> Self {
        match self {
            Self::Cancelled => Self::Cancelled,
            other => Self::Step {
                step: step.into(),
                source: Box::new(other),
            },
        }
    }

    pub fn is_cancelled(&self) -> bool {
        match self {
            Self::Cancelled => true,
            Self::Process(p) => p.is_cancelled(),
            Self::Step { source, .. } => source.is_cancelled(),
            _ => false,
        }
    }

    /// The last lines of output of the failing command, if any.
    pub fn tail(&self) -> &[String] {
        match self {
            Self::Process(p) => p.tail(),
            Self::Step { source, .. } => source.tail(),
            _ => &[],
        }
    }
}

const fn libc_enospc() -> i32 {
    28
}

pub type Result<T, E = BuildError> = std::result::Result<T, E>;
