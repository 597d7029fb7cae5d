//! What every stage works in: settings resolved once, the workspace, the catalog (opened once
//! per command), the reporter and the cancellation token.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use webake_build::Workspace;
use webake_catalog::Catalog;
use webake_sys::CancelToken;

use crate::events::Reporter;
use crate::{Error, Result};

/// Plain settings (the CLI resolves them: command line > environment > defaults).
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub catalog: PathBuf,
    /// The executable that serves as sandbox helper (the webake binary).
    pub helper_exe: PathBuf,
    /// The webake-agent binary installed into images of the host's architecture (None: the
    /// recipe may not install it).
    pub agent_binary: Option<PathBuf>,
    /// The agent for the other architectures ([`Settings::agent_for`]).
    pub foreign_agents: std::collections::BTreeMap<webake_spec::Architecture, PathBuf>,
    /// Debian mirror when a recipe names none (`WEBAKE_MIRROR`).
    pub mirror: Option<String>,
    /// AWS endpoint override (tests: moto).
    pub aws_endpoint: Option<String>,
    /// The boot test's accelerator when a command does not force one (None: probe KVM).
    pub accel: Option<crate::boottest::Accel>,
    /// The bakes' source date (`--source-date-epoch`, `SOURCE_DATE_EPOCH`), over the recipe's
    /// and the base's ([`crate::source_date`]).
    pub source_date_epoch: Option<i64>,
}

impl Settings {
    /// Settings for data and cache directories, with the running executable as sandbox helper
    /// and the agent binary next to it.
    pub fn new(data_dir: &Path, cache_dir: &Path, catalog: &Path) -> Result<Self> {
        let helper_exe =
            std::env::current_exe().map_err(|e| Error::io("the running executable", e))?;
        let agent_binary = helper_exe
            .parent()
            .map(|d| d.join("webake-agent"))
            .filter(|p| p.is_file());
        let foreign_agents = webake_spec::Architecture::ALL
            .into_iter()
            .filter(|a| *a != webake_spec::Architecture::host())
            .filter_map(|a| Some((a, agent_next_to(&helper_exe, a)?)))
            .collect();
        Ok(Self {
            foreign_agents,
            data_dir: data_dir.to_path_buf(),
            cache_dir: cache_dir.to_path_buf(),
            catalog: catalog.to_path_buf(),
            helper_exe,
            agent_binary,
            mirror: None,
            aws_endpoint: None,
            accel: None,
            source_date_epoch: None,
        })
    }
}

impl Settings {
    /// The agent binary for images of `arch`.
    pub fn agent_for(&self, arch: webake_spec::Architecture) -> Option<&Path> {
        if arch == webake_spec::Architecture::host() {
            self.agent_binary.as_deref()
        } else {
            self.foreign_agents.get(&arch).map(PathBuf::as_path)
        }
    }
}

/// The agent for another architecture next to webake: `webake-agent-ARCH` (a release
/// install, the container image), else cargo's cross build beside it
/// (`target/aarch64-unknown-linux-gnu/release/webake-agent` for `target/release/webake`).
fn agent_next_to(exe: &Path, arch: webake_spec::Architecture) -> Option<PathBuf> {
    let dir = exe.parent()?;
    let named = dir.join(format!("webake-agent-{arch}"));
    if named.is_file() {
        return Some(named);
    }
    let profile = dir.file_name()?;
    let triple = format!("{}-unknown-linux-gnu", arch.qemu());
    let cross = dir
        .parent()?
        .join(triple)
        .join(profile)
        .join("webake-agent");
    cross.is_file().then_some(cross)
}

/// The context of one command.
pub struct Context<'r> {
    pub settings: Settings,
    pub workspace: Workspace,
    pub reporter: &'r dyn Reporter,
    pub cancel: CancelToken,
    catalog: Mutex<Option<Catalog>>,
}

impl<'r> Context<'r> {
    pub fn new(settings: Settings, reporter: &'r dyn Reporter, cancel: CancelToken) -> Self {
        let workspace = Workspace::new(&settings.data_dir, &settings.cache_dir);
        Self {
            settings,
            workspace,
            reporter,
            cancel,
            catalog: Mutex::new(None),
        }
    }

    /// The catalog, opened on first use (once per command).
    pub fn catalog(&self) -> Result<CatalogGuard<'_>> {
        let mut g = self
            .catalog
            .lock()
            .map_err(|_| Error::Failed("the catalog lock is poisoned".into()))?;
        if g.is_none() {
            *g = Some(Catalog::open(&self.settings.catalog)?);
        }
        Ok(CatalogGuard(g))
    }

    /// Does the catalog exist yet (read-only commands do not create one)?
    pub fn catalog_exists(&self) -> bool {
        self.settings.catalog.exists()
    }

    /// Stop here if the user asked to (Ctrl-C, SIGTERM).
    pub fn check_cancel(&self) -> Result<()> {
        if self.cancel.is_cancelled() || webake_sys::cancel::signalled() {
            return Err(Error::Interrupted);
        }
        Ok(())
    }
}

/// The open catalog, locked for the caller.
pub struct CatalogGuard<'a>(MutexGuard<'a, Option<Catalog>>);

impl std::ops::Deref for CatalogGuard<'_> {
    type Target = Catalog;
    fn deref(&self) -> &Catalog {
        self.0.as_ref().expect("opened in Context::catalog")
    }
}

impl std::ops::DerefMut for CatalogGuard<'_> {
    fn deref_mut(&mut self) -> &mut Catalog {
        self.0.as_mut().expect("opened in Context::catalog")
    }
}
