//! `webake cache ls|gc|clear`: the bootstrap and layer caches.

use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, Subcommand};
use webake_build::Workspace;
use webake_build::workspace::{CacheLock, evict_lru};
use webake_spec::ByteSize;

use crate::cmd::images::human;
use crate::settings::Settings;

/// Default cache size limit for `gc` (override with --max-size or WEBAKE_CACHE_MAX).
pub const DEFAULT_MAX: &str = "20GiB";

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// List cache entries (newest use first) with their size
    Ls(LsArgs),
    /// Evict least-recently-used entries until the cache fits the size limit
    Gc(GcArgs),
    /// Remove every cache entry
    Clear(ClearArgs),
}

#[derive(Debug, Args)]
pub struct LsArgs {
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Size limit, e.g. 20GiB
    #[arg(long, env = "WEBAKE_CACHE_MAX", default_value = DEFAULT_MAX, value_parser = parse_size)]
    pub max_size: ByteSize,
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct ClearArgs {
    #[arg(long)]
    pub dry_run: bool,
}

fn parse_size(s: &str) -> Result<ByteSize, String> {
    ByteSize::parse(s)
}

impl CacheCommand {
    pub fn run(self, settings: &Settings) -> anyhow::Result<ExitCode> {
        let ws = Workspace::new(&settings.data_dir, &settings.cache_dir);
        match self {
            Self::Ls(a) => {
                let entries = ws.cache_entries();
                if a.json {
                    println!("{}", serde_json::to_string_pretty(&entries)?);
                } else {
                    let total: u64 = entries.iter().map(|e| e.bytes).sum();
                    println!(
                        "{:<9} {:<14} {:>10}  {:<17} STEP",
                        "KIND", "KEY", "SIZE", "LAST USED"
                    );
                    for e in &entries {
                        let when = jiff::Timestamp::from_second(e.last_used)
                            .map(|t| t.strftime("%Y-%m-%d %H:%M").to_string())
                            .unwrap_or_default();
                        println!(
                            "{:<9} {:<14} {:>10}  {:<17} {}{}",
                            e.kind,
                            &e.key[..12.min(e.key.len())],
                            human(e.bytes),
                            when,
                            e.label,
                            if e.complete {
                                ""
                            } else {
                                "  (incomplete: ignored)"
                            }
                        );
                    }
                    println!(
                        "{} entries, {} in {}",
                        entries.len(),
                        human(total),
                        settings.cache_dir.display()
                    );
                }
            }
            Self::Gc(a) => {
                let Some(_lock) = CacheLock::try_exclusive(&settings.cache_dir)? else {
                    bail!(
                        "bakes are running with this cache ({}); run gc when they are done",
                        settings.cache_dir.display()
                    );
                };
                let removed = evict_lru(ws.cache_entries(), a.max_size.bytes(), a.dry_run)?;
                for e in &removed {
                    println!(
                        "{} {} {} {} {}",
                        if a.dry_run { "would evict" } else { "evicted" },
                        e.kind,
                        &e.key[..12.min(e.key.len())],
                        human(e.bytes),
                        e.label
                    );
                }
                let left: u64 = ws.cache_entries().iter().map(|e| e.bytes).sum();
                println!("cache is {} (limit {})", human(left), a.max_size);
            }
            Self::Clear(a) => {
                let Some(_lock) = CacheLock::try_exclusive(&settings.cache_dir)? else {
                    bail!(
                        "bakes are running with this cache ({}); clear it when they are done",
                        settings.cache_dir.display()
                    );
                };
                let removed = evict_lru(ws.cache_entries(), 0, a.dry_run)?;
                println!(
                    "{} {} entries ({})",
                    if a.dry_run { "would remove" } else { "removed" },
                    removed.len(),
                    human(removed.iter().map(|e| e.bytes).sum())
                );
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
