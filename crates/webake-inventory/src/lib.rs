//! What is in an image: read an inventory from a root tree (packages, kernels, os-release,
//! enabled units, size, provenance), write SBOMs (SPDX 2.3, CycloneDX 1.5), diff two
//! inventories (with what roles recorded through the bake's offline tools), lint a tree for environment-specific state and leaked secrets, and write a
//! Packer-compatible `manifest.json`.
//!
//! The tree is hostile input: paths are resolved inside the root (an absolute symlink
//! target restarts at the root), so nothing outside the root is read. Nothing here prints.

mod diff;
mod dpkg;
mod error;
mod inventory;
mod lint;
mod offline;
mod packer;
mod root;
mod sbom;
mod version;

pub use diff::{
    Change, DiffSummary, InputChange, InventoryDiff, KernelChange, PackageChange, SizeChange, diff,
    human_bytes,
};
pub use dpkg::{Package, parse_status};
pub use error::{Error, Result};
pub use inventory::{
    Dependency, EnabledUnit, INVENTORY_FORMAT, Inventory, Kernel, OsRelease, Provenance, TreeSize,
    collect, enabled_units, kernels, os_release, packages, parse_os_release, tree_size,
};
pub use lint::{Finding, LintConfig, MAX_SCAN_BYTES, MIN_EXTRA_SECRET_LEN, Rule, Severity, lint};
pub use offline::{OFFLINE_STATE, OfflineRecord, parse_offline_state};
pub use packer::{PackerBuild, PackerFile, PackerManifest};
pub use sbom::{DEFAULT_NAMESPACE_BASE, SbomOptions, cyclonedx_json, purl, spdx_json};
pub use version::{DebVersion, compare_versions};
