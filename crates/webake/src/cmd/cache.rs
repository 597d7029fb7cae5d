//! `webake cache ls|gc|clear`: the bootstrap and layer caches.

use std::fmt::Write as _;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use webake_build::workspace::{CacheLock, evict_lru};
use webake_engine::{Context, Error};
use webake_spec::ByteSize;

use crate::cmd::CmdResult;
use crate::output::Output;
use webake_inventory::human_bytes as human;

/// Default cache size limit for `gc` (override with --max-size or WEBAKE_CACHE_MAX).
pub const DEFAULT_MAX: &str = "20GiB";

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// List cache entries (newest use first) with their size
    Ls,
    /// Evict least-recently-used entries until the cache fits the size limit
    Gc(GcArgs),
    /// Remove every cache entry
    Clear(ClearArgs),
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Size limit, e.g. 20GiB
    #[arg(long, env = "WEBAKE_CACHE_MAX", default_value = DEFAULT_MAX, value_parser = ByteSize::parse)]
    pub max_size: ByteSize,
    /// Only print what would be evicted (works while bakes run)
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct ClearArgs {
    /// Only print what would be removed (works while bakes run)
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, serde::Serialize)]
struct Evicted {
    dry_run: bool,
    removed: Vec<webake_build::workspace::CacheEntry>,
    bytes_left: u64,
}

impl CacheCommand {
    pub fn run(self, ctx: &Context<'_>, out: &Output) -> CmdResult {
        let ws = &ctx.workspace;
        let cache_dir = &ctx.settings.cache_dir;
        let (limit, limit_text, dry_run, what) = match self {
            Self::Ls => {
                let entries = ws.cache_entries();
                out.result(&entries, |entries| ls_text(entries, cache_dir))?;
                return Ok(ExitCode::SUCCESS);
            }
            Self::Gc(a) => (a.max_size.bytes(), a.max_size.to_string(), a.dry_run, "gc"),
            Self::Clear(a) => (0, String::new(), a.dry_run, "clear"),
        };
        // A dry run only reads: it needs no lock and works while bakes run.
        let _lock = if dry_run {
            None
        } else {
            Some(CacheLock::try_exclusive(cache_dir)?.ok_or_else(|| {
                Error::Failed(format!(
                    "bakes are running with this cache ({}); run `cache {what}` when they are done",
                    cache_dir.display()
                ))
            })?)
        };
        let removed = evict_lru(ws.cache_entries(), limit, dry_run)?;
        if let Some(lock) = &_lock {
            ws.remove_entry_locks(lock)?;
        }
        let left: u64 = if dry_run {
            ws.cache_entries().iter().map(|e| e.bytes).sum::<u64>()
                - removed.iter().map(|e| e.bytes).sum::<u64>()
        } else {
            ws.cache_entries().iter().map(|e| e.bytes).sum()
        };
        let result = Evicted {
            dry_run,
            removed,
            bytes_left: left,
        };
        out.result(&result, |r| {
            let mut s = String::new();
            let verb = match (dry_run, what) {
                (true, "gc") => "would evict",
                (false, "gc") => "evicted",
                (true, _) => "would remove",
                (false, _) => "removed",
            };
            for e in &r.removed {
                let _ = writeln!(
                    s,
                    "{verb} {} {} {} {}",
                    e.kind,
                    &e.key[..12.min(e.key.len())],
                    human(e.bytes),
                    e.label
                );
            }
            if what == "gc" {
                let _ = writeln!(s, "cache is {} (limit {limit_text})", human(r.bytes_left));
            } else {
                let _ = writeln!(
                    s,
                    "{verb} {} entries ({})",
                    r.removed.len(),
                    human(r.removed.iter().map(|e| e.bytes).sum())
                );
            }
            s
        })?;
        Ok(ExitCode::SUCCESS)
    }
}

fn ls_text(entries: &[webake_build::workspace::CacheEntry], cache_dir: &std::path::Path) -> String {
    let total: u64 = entries.iter().map(|e| e.bytes).sum();
    let mut s = format!(
        "{:<9} {:<14} {:>10}  {:<17} STEP\n",
        "KIND", "KEY", "SIZE", "LAST USED"
    );
    for e in entries {
        let when = jiff::Timestamp::from_second(e.last_used)
            .map(|t| t.strftime("%Y-%m-%d %H:%M").to_string())
            .unwrap_or_default();
        let _ = writeln!(
            s,
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
    let _ = writeln!(
        s,
        "{} entries, {} in {}",
        entries.len(),
        human(total),
        cache_dir.display()
    );
    s
}
