//! What roles did to a live system during the bake, as the sandbox's offline tools recorded it
//! in `/var/lib/webake/offline-state` (services started or stopped, modules loaded, file
//! systems mounted, firewall rules, a hostname): nothing of it ran on the build host, and
//! each record says what happens at boot instead.

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::inventory::EnabledUnit;
use crate::root::Root;

/// The state file the offline tools write, relative to the image root.
pub const OFFLINE_STATE: &str = "var/lib/webake/offline-state";

/// One recorded runtime action of the bake.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OfflineRecord {
    /// `unit`, `module`, `mount`, `hostname`, `firewall` (or another kind a tool records).
    pub kind: String,
    /// The unit, module, mount point, hostname kind (`static`, `transient`) or firewall family.
    pub name: String,
    /// The recorded state: `active`, `inactive`, the module's options, `mounted`, the
    /// hostname, a firewall rule (`filter -A INPUT ...`).
    pub value: String,
    /// What it means for the booted image (`would start nginx.service at boot`).
    pub summary: String,
}

pub(crate) fn read_offline(r: &Root, units: &[EnabledUnit]) -> Result<Vec<OfflineRecord>> {
    let Some(bytes) = r.read(OFFLINE_STATE, 16 * 1024 * 1024)? else {
        return Ok(Vec::new());
    };
    let masked = |u: &str| {
        !u.contains('/')
            && r.lstat(&format!("etc/systemd/system/{u}"))
                .ok()
                .flatten()
                .filter(|f| f.meta.file_type().is_symlink())
                .and_then(|f| std::fs::read_link(&f.host_path).ok())
                .is_some_and(|t| t == std::path::Path::new("/dev/null"))
    };
    Ok(parse_offline_state(
        &String::from_utf8_lossy(&bytes),
        |u| units.iter().any(|e| e.unit == u),
        masked,
    ))
}

/// Parse the offline state (`KIND NAME VALUE...` lines, `#` comments); `enabled` and `masked`
/// say how a unit is set up for boot.
pub fn parse_offline_state(
    text: &str,
    enabled: impl Fn(&str) -> bool,
    masked: impl Fn(&str) -> bool,
) -> Vec<OfflineRecord> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut it = line.splitn(3, ' ');
        let kind = it.next().unwrap_or_default().to_string();
        let name = it.next().unwrap_or_default().to_string();
        let value = it.next().unwrap_or_default().trim().to_string();
        let summary = summary(&kind, &name, &value, &enabled, &masked);
        out.push(OfflineRecord {
            kind,
            name,
            value,
            summary,
        });
    }
    out
}

fn summary(
    kind: &str,
    name: &str,
    value: &str,
    enabled: &dyn Fn(&str) -> bool,
    masked: &dyn Fn(&str) -> bool,
) -> String {
    match (kind, value) {
        ("unit", "active") if masked(name) => {
            format!("started during the bake, but masked: {name} does not start at boot")
        }
        ("unit", "active") if enabled(name) => format!("would start {name} at boot (enabled)"),
        ("unit", "active") => format!(
            "started during the bake, but not enabled: {name} does not start at boot unless another unit pulls it in"
        ),
        ("unit", _) if enabled(name) && !masked(name) => {
            format!("stopped during the bake; {name} is enabled and starts at boot")
        }
        ("unit", _) => format!("stopped during the bake; {name} does not start at boot"),
        ("module", _) => format!(
            "module {name} loaded during the bake (not into any kernel); loaded at boot only if listed in /etc/modules-load.d"
        ),
        ("mount", _) => {
            format!(
                "{name} mounted during the bake (nothing was mounted); /etc/fstab mounts it at boot"
            )
        }
        ("hostname", _) => format!(
            "{name} hostname {value} set during the bake: environment-specific, not kept (the agent sets the hostname at boot)"
        ),
        ("firewall", _) => format!(
            "{name} rule recorded, no firewall changed: {value}; applied at boot only if the role saved the rules for a boot service"
        ),
        _ => format!("{kind} {name} {value}: recorded during the bake"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_say_what_happens_at_boot() {
        let text = "# webake offline state: header\n\
unit nginx.service active\n\
unit lonely.service active\n\
unit hidden.service active\n\
unit cron.service inactive\n\
module br_netfilter \n\
mount /srv/data mounted\n\
hostname static web-1\n\
firewall iptables filter -A INPUT -p tcp --dport 22 -j ACCEPT\n";
        let recs = parse_offline_state(
            text,
            |u| ["nginx.service", "cron.service", "hidden.service"].contains(&u),
            |u| u == "hidden.service",
        );
        let s: Vec<&str> = recs.iter().map(|r| r.summary.as_str()).collect();
        assert_eq!(recs.len(), 8);
        assert_eq!(s[0], "would start nginx.service at boot (enabled)");
        assert!(
            s[1].contains("not enabled: lonely.service does not start"),
            "{}",
            s[1]
        );
        assert!(
            s[2].contains("masked: hidden.service does not start"),
            "{}",
            s[2]
        );
        assert!(
            s[3].contains("cron.service is enabled and starts at boot"),
            "{}",
            s[3]
        );
        assert_eq!(recs[4].kind, "module");
        assert_eq!(recs[4].name, "br_netfilter");
        assert_eq!(recs[4].value, "");
        assert!(s[5].contains("/etc/fstab mounts it at boot"), "{}", s[5]);
        assert_eq!(recs[6].value, "web-1");
        assert_eq!(recs[7].name, "iptables");
        assert_eq!(recs[7].value, "filter -A INPUT -p tcp --dport 22 -j ACCEPT");
    }
}
