//! The host ids that root and the other users of a sandbox are on the build host.
//!
//! Inside the sandbox ids 0..65535 exist; on the host they are `base..base+65535`, a range no
//! real account uses. Root in the sandbox is therefore an unprivileged user on the host: every
//! check of the form "is this uid 0" fails for it (sysctl writes, /proc/sysrq-trigger, files a
//! step should never have reached). Idmapped mounts translate the ids of the image tree, so
//! files on disk keep their real owners (0, 42, ...), and the image needs no chown afterwards.

use std::fmt;

/// How many ids the sandbox maps (0..65535: every id a Debian image uses, nobody included).
pub const COUNT: u32 = 65536;
/// Default first host id: far above any account, far below the 32-bit limit.
pub const DEFAULT_BASE: u32 = 0x6000_0000;
/// Override: `WEBAKE_SANDBOX_IDS=BASE` (decimal or 0x hex).
pub const ENV: &str = "WEBAKE_SANDBOX_IDS";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub base: u32,
}

impl fmt::Display for IdRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.base, self.base as u64 + COUNT as u64 - 1)
    }
}

impl IdRange {
    /// The range to use, from the environment or the default, checked against the ids this
    /// process's own user namespace has (`/proc/self/uid_map`).
    pub fn resolve() -> Result<Self, String> {
        let base = match std::env::var(ENV) {
            Ok(v) if !v.trim().is_empty() => parse_base(v.trim())
                .ok_or_else(|| format!("{ENV}={v:?}: expected a host uid (decimal or 0x hex)"))?,
            _ => DEFAULT_BASE,
        };
        if base == 0 || base.checked_add(COUNT).is_none() {
            return Err(format!(
                "{ENV}: the range {base}+{COUNT} must not contain uid 0 nor pass 2^32"
            ));
        }
        let r = Self { base };
        let map = std::fs::read_to_string("/proc/self/uid_map")
            .map_err(|e| format!("reading /proc/self/uid_map: {e}"))?;
        if !covered(&map, base, COUNT) {
            return Err(format!(
                "the sandbox maps host ids {r}, which this process's user namespace does not have \
                 (/proc/self/uid_map: {}); set {ENV} to the first of {COUNT} ids it has",
                map.split_whitespace().collect::<Vec<_>>().join(" ")
            ));
        }
        Ok(r)
    }

    /// The `uid_map`/`gid_map` line.
    pub fn map_line(&self) -> String {
        format!("0 {} {COUNT}\n", self.base)
    }
}

fn parse_base(s: &str) -> Option<u32> {
    match s.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Does an id map (`inside outside count` lines) give this namespace `base..base+count`?
fn covered(map: &str, base: u32, count: u32) -> bool {
    let (lo, hi) = (base as u64, base as u64 + count as u64);
    map.lines().any(|l| {
        let f: Vec<u64> = l
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        f.len() == 3 && f[0] <= lo && hi <= f[0] + f[2]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_initial_namespace_covers_the_default_range() {
        assert!(covered(
            "         0          0 4294967295\n",
            DEFAULT_BASE,
            COUNT
        ));
    }

    #[test]
    fn a_pod_with_65536_ids_does_not() {
        assert!(!covered("0 100000 65536\n", DEFAULT_BASE, COUNT));
        assert!(covered("0 100000 200000\n", 65536, COUNT));
    }

    #[test]
    fn bases_parse_in_decimal_and_hex() {
        assert_eq!(parse_base("0x60000000"), Some(0x6000_0000));
        assert_eq!(parse_base("100000"), Some(100000));
        assert_eq!(parse_base("x"), None);
    }
}
