//! webake-sys: the only crate with `unsafe`. Namespaces and mounts (the sandbox), the process
//! runner, cancellation, and small filesystem helpers. It knows nothing about recipes.
#![allow(unsafe_code)]

pub mod cancel;
pub mod fsutil;
pub mod process;
pub mod sandbox;
pub mod tree;

pub use cancel::CancelToken;
pub use process::{Cmd, ProcessError};
pub use tree::{Tree, TreeError};
