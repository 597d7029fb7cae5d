//! Settings resolution: command line > environment > defaults (XDG directories). An empty
//! variable counts as unset.

use std::path::PathBuf;

use webake_engine::{Error, Settings};

use crate::cli::GlobalArgs;

fn env(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.is_empty())
}

pub fn resolve(global: &GlobalArgs) -> Result<Settings, Error> {
    let xdg = |var: &str, fallback: &str| -> Result<PathBuf, Error> {
        if let Some(v) = env(var) {
            return Ok(PathBuf::from(v));
        }
        let home = env("HOME").ok_or_else(|| {
            Error::Invalid("neither $HOME nor an explicit directory is set".into())
        })?;
        Ok(PathBuf::from(home).join(fallback))
    };
    let given = |p: &Option<PathBuf>| p.clone().filter(|p| !p.as_os_str().is_empty());
    let data_dir = match given(&global.data_dir) {
        Some(d) => d,
        None => xdg("XDG_DATA_HOME", ".local/share")?.join("webake"),
    };
    let cache_dir = match given(&global.cache_dir) {
        Some(d) => d,
        None => xdg("XDG_CACHE_HOME", ".cache")?.join("webake"),
    };
    let catalog = given(&global.catalog).unwrap_or_else(|| data_dir.join("catalog.db"));
    // Absolute paths: the sandbox and overlay mounts see them from other directories.
    let abs = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
    let mut s = Settings::new(&abs(data_dir), &abs(cache_dir), &abs(catalog))?;
    if let Some(agent) = env("WEBAKE_AGENT_BINARY") {
        s.agent_binary = Some(PathBuf::from(agent));
    }
    for a in webake_spec::Architecture::ALL {
        if let Some(agent) = env(&format!(
            "WEBAKE_AGENT_BINARY_{}",
            a.as_str().to_uppercase()
        )) {
            s.foreign_agents.insert(a, PathBuf::from(agent));
        }
    }
    s.mirror = env("WEBAKE_MIRROR");
    s.aws_endpoint = env("WEBAKE_AWS_ENDPOINT_URL");
    if let Some(a) = env("WEBAKE_ACCEL") {
        s.accel = Some(
            a.parse()
                .map_err(|e: String| Error::Invalid(format!("WEBAKE_ACCEL: {e}")))?,
        );
    }
    Ok(s)
}
