//! Typed errors. Every error names the file, path and line it is about; none holds a token.

use std::path::PathBuf;

use crate::forge::ForgeError;
use crate::git::GitError;

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("invalid rollout request: {0}")]
    InvalidRequest(String),

    #[error("repository {path} does not exist or is not a git repository")]
    RepoNotFound { path: PathBuf },

    #[error("repository {path} has uncommitted changes; commit or stash them first:\n{status}")]
    RepoDirty { path: PathBuf, status: String },

    #[error("cannot clone repository {location}: {stderr}")]
    RepoUnreachable { location: String, stderr: String },

    #[error("base branch {branch:?} does not exist in {location}")]
    BaseBranchMissing { location: String, branch: String },

    #[error(transparent)]
    Git(#[from] GitError),

    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{file}:{line}:{col}: invalid YAML: {message}")]
    Yaml {
        file: String,
        line: usize,
        col: usize,
        message: String,
    },

    #[error("rollout config {file}: {message}")]
    Config { file: String, message: String },

    #[error(
        "no rollout rules: select the InstanceGroups with --role ROLE, --instance-group NAME or --all-instance-groups, or add {config} to the repository"
    )]
    NoRules { config: String },

    #[error("no image reference found in {location} for family {family:?} (rules: {rules})")]
    NoReferenceFound {
        location: String,
        family: String,
        rules: String,
    },

    #[error(
        "{file}:{line}: {what} matches more than one rule: rule {first} ({first_rule}) and rule {second} ({second_rule})"
    )]
    Ambiguous {
        file: String,
        line: usize,
        what: String,
        first: usize,
        first_rule: String,
        second: usize,
        second_rule: String,
    },

    #[error("{file}:{line}: {what}: {message}")]
    CannotEdit {
        file: String,
        line: usize,
        what: String,
        message: String,
    },

    #[error(
        "{file}:{line}: {what}: cannot tell its region for a per-region AMI (published in {available}); \
         set `region:` on the rule"
    )]
    RegionUnknown {
        file: String,
        line: usize,
        what: String,
        available: String,
    },

    #[error(
        "{file}:{line}: {what} is in {region}, where the image is not published (published in {available})"
    )]
    RegionNotPublished {
        file: String,
        line: usize,
        what: String,
        region: String,
        available: String,
    },

    #[error(
        "{file}:{line}: {what} needs an {architecture} build of the image, which the rollout \
         does not have (it has {available})"
    )]
    ArchitectureNotPublished {
        file: String,
        line: usize,
        /// What needs it and why: `InstanceGroup NAME (cluster C) on m6g.large`, a rule's match
        /// `(the rule's architecture:)`.
        what: String,
        architecture: String,
        available: String,
    },

    #[error("{file}:{line}: {what} mixes {found}; an InstanceGroup gets one image")]
    MixedArchitectures {
        file: String,
        line: usize,
        what: String,
        /// `x86_64 (m5.large) and arm64 (m6g.large)`.
        found: String,
    },

    #[error("{file}:{line}: {what}: cannot tell which build of the image it gets: {message}")]
    ArchitectureUnknown {
        file: String,
        line: usize,
        what: String,
        message: String,
    },

    #[error(
        "{ami} is an AMI id, valid in one region, but the matched references are in {regions}; \
         pass one AMI per region, or narrow the selection"
    )]
    AmiInSeveralRegions { ami: String, regions: String },

    #[error(
        "{file}:{line}: {what}: refusing to replace the AMI id {old} with the local name {new}, \
         which no node can boot: an AMI reference needs the image's AWS publication in that \
         reference's region (publish the image to AWS there first)"
    )]
    Unresolvable {
        file: String,
        line: usize,
        what: String,
        old: String,
        new: String,
    },

    #[error(
        "{file}:{line}: {reference} is {current}, newer than {new} of the same family: refusing \
         to roll back; pass --allow-downgrade to do it on purpose"
    )]
    Downgrade {
        file: String,
        line: usize,
        reference: String,
        current: String,
        new: String,
    },

    #[error("{file}:{line}: cannot look up which image {reference} is: {message}")]
    Lookup {
        file: String,
        line: usize,
        reference: String,
        message: String,
    },

    #[error("rollout targets {file}: {message}")]
    Targets { file: String, message: String },

    #[error(transparent)]
    Forge(#[from] ForgeError),
}

impl RolloutError {
    /// Errors in the caller's input (request, rules, config), as opposed to failures of the
    /// rollout itself; the CLI maps them to its "invalid input" exit code.
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            Self::InvalidRequest(_)
                | Self::Config { .. }
                | Self::NoRules { .. }
                | Self::Targets { .. }
        )
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
