//! webake-build: from a validated recipe to disk images.
//!
//! bootstrap (mmdebstrap, cached) -> provision (each step an overlay layer, cached by its
//! inputs) -> export (the merged tree, once) -> finalize (environment-agnostic) ->
//! assemble (GPT disk offline: ext4 root, GRUB for BIOS and/or UEFI) -> artifacts (raw, qcow2, sha256).
//! It never talks to clouds or git.

pub mod agent;
pub mod assemble;
pub mod bake;
pub mod bootstrap;
pub mod debug;
pub mod digest;
pub mod error;
pub mod export;
pub mod extract;
pub mod finalize;
pub mod initramfs;
pub mod provision;
pub mod qcow2;
pub mod reporter;
pub mod steps;
pub mod workspace;

pub use bake::{BakeRequest, DiskImage, RootFs, assemble_disk, build_root, shell};
pub use error::BuildError;
pub use reporter::{CacheStatus, Reporter};
pub use workspace::Workspace;
