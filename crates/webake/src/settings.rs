//! Settings resolution: command line > environment > defaults (XDG directories).

use std::path::PathBuf;

use anyhow::Context as _;

use crate::cli::GlobalArgs;

#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub catalog: PathBuf,
    pub quiet: bool,
}

impl Settings {
    pub fn resolve(global: &GlobalArgs) -> anyhow::Result<Self> {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let xdg = |var: &str, fallback: &str| -> anyhow::Result<PathBuf> {
            if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
                return Ok(PathBuf::from(v));
            }
            let home = home
                .clone()
                .context("neither $HOME nor an explicit directory is set")?;
            Ok(home.join(fallback))
        };
        let data_dir = match &global.data_dir {
            Some(d) => d.clone(),
            None => xdg("XDG_DATA_HOME", ".local/share")?.join("webake"),
        };
        let cache_dir = match &global.cache_dir {
            Some(d) => d.clone(),
            None => xdg("XDG_CACHE_HOME", ".cache")?.join("webake"),
        };
        let catalog = global
            .catalog
            .clone()
            .unwrap_or_else(|| data_dir.join("catalog.db"));
        // Absolute paths: the sandbox and overlay mounts see them from other directories.
        let abs = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
        Ok(Self {
            data_dir: abs(data_dir),
            cache_dir: abs(cache_dir),
            catalog: abs(catalog),
            quiet: global.quiet,
        })
    }
}
