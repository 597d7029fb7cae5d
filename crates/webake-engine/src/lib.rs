//! webake-engine: the stages of webake over one context, with typed values between them.
//!
//! ```text
//! Recipe --plan--> Plan --bake--> Image (DiskImage + inventory, recorded in the catalog)
//!        --test--> TestResult --publish--> Vec<Publication> --rollout--> ChangeProposal
//! run = bake -> test -> publish -> rollout, each stage optional, skipped when up to date.
//! ```
//!
//! Stage functions never print: they report [`events::Event`]s to the context's reporter,
//! which the CLI renders as text or JSON. Options are plain structs; errors are typed
//! ([`Error`]) and classified ([`ErrorKind`]) for the documented exit codes.

pub mod aws;
pub mod bake;
pub mod base;
pub mod boottest;
pub mod clean;
pub mod context;
pub mod error;
pub mod events;
pub mod gc;
pub mod lint;
pub mod manifest;
pub mod plan;
pub mod publish;
pub mod rollout;
pub mod run;
pub mod shell;
pub mod source_date;
pub mod step_sources;
pub mod upstream;
pub mod verify;

pub use context::{Context, Settings};
pub use error::{Error, ErrorKind, Result, ResultExt};
pub use events::{Event, Reporter, Stage, StageStatus};
