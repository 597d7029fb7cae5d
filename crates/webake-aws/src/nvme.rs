//! Attach mode (parity with Packer's amazon-chroot builder on EC2): find the block device of
//! an attached EBS volume by its NVMe controller serial, never by guessing "the next device".
//!
//! On Nitro instances every EBS volume is an NVMe controller whose serial is the volume id
//! without the dash (`vol0123456789abcdef0`) and whose model is "Amazon Elastic Block Store".
//! udev (when present) also links `/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol…`; we
//! cross-check it, but do not need it (pods often have no udev).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// The model string of EBS NVMe controllers.
pub const EBS_NVME_MODEL: &str = "Amazon Elastic Block Store";
/// First poll delay while the device has not appeared; doubled up to [`NVME_MAX_POLL`].
/// Attachments usually show up within a second; polling fast first keeps the common case quick.
pub const NVME_FIRST_POLL: Duration = Duration::from_millis(50);
/// Longest pause between two looks at sysfs.
pub const NVME_MAX_POLL: Duration = Duration::from_secs(1);

/// `vol-0123456789abcdef0` -> `vol0123456789abcdef0` (the NVMe serial form).
pub fn nvme_serial_of(volume_id: &str) -> Result<String> {
    let hex = volume_id
        .strip_prefix("vol-")
        .ok_or_else(|| Error::Invalid(format!("{volume_id:?} is not an EBS volume id (vol-…)")))?;
    if !(hex.len() == 8 || hex.len() == 17) || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Invalid(format!(
            "{volume_id:?} is not an EBS volume id (vol- and 8 or 17 hex digits)"
        )));
    }
    Ok(format!("vol{hex}"))
}

/// Resolve the block device (e.g. `/dev/nvme1n1`) of attached EBS volume `volume_id`.
///
/// `sysfs_root` is normally `/sys`, `dev_root` normally `/dev`; tests pass a fabricated tree.
/// Waits (polling with backoff) until the controller and its device node exist, up to
/// `timeout`. If the udev by-id link exists it must point at the same node.
pub fn resolve_nvme_device(
    volume_id: &str,
    sysfs_root: &Path,
    dev_root: &Path,
    timeout: Duration,
) -> Result<PathBuf> {
    let serial = nvme_serial_of(volume_id)?;
    let start = Instant::now();
    let mut pause = NVME_FIRST_POLL;
    loop {
        let state = look(&serial, sysfs_root, dev_root)?;
        if let Look::Found(dev) = state {
            cross_check(volume_id, &serial, dev_root, &dev)?;
            tracing::info!(%volume_id, device = %dev.display(), "resolved EBS volume by NVMe serial");
            return Ok(dev);
        }
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            let detail = match state {
                Look::NoController => format!(
                    "no NVMe controller under {} has serial {serial} and model {EBS_NVME_MODEL:?}",
                    sysfs_root.join("class/nvme").display()
                ),
                Look::NoNode(c, p) => {
                    format!("controller {c} matches but {} does not exist", p.display())
                }
                Look::Found(_) => unreachable!(),
            };
            return Err(Error::NvmeTimeout {
                volume_id: volume_id.to_string(),
                waited: elapsed,
                detail,
            });
        }
        std::thread::sleep(pause.min(timeout - elapsed));
        pause = (pause * 2).min(NVME_MAX_POLL);
    }
}

enum Look {
    NoController,
    /// Controller name and the device node we expect.
    NoNode(String, PathBuf),
    Found(PathBuf),
}

fn read_trimmed(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

fn look(serial: &str, sysfs_root: &Path, dev_root: &Path) -> Result<Look> {
    let class = sysfs_root.join("class/nvme");
    let entries = match std::fs::read_dir(&class) {
        Ok(e) => e,
        // No NVMe at all (yet): keep waiting.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Look::NoController),
        Err(e) => {
            return Err(Error::Io {
                what: "listing",
                path: class,
                source: e,
            });
        }
    };
    let mut controllers: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    controllers.sort();
    let mut matches = Vec::new();
    for c in controllers {
        // The controller may be half-populated while the kernel probes it: skip unreadable.
        let (Some(s), Some(m)) = (
            read_trimmed(&c.join("serial")),
            read_trimmed(&c.join("model")),
        ) else {
            continue;
        };
        if s == serial && m == EBS_NVME_MODEL {
            matches.push(c);
        }
    }
    let Some(ctrl) = matches.first() else {
        return Ok(Look::NoController);
    };
    if matches.len() > 1 {
        let names: Vec<String> = matches.iter().map(|c| c.display().to_string()).collect();
        return Err(Error::NvmeMismatch {
            volume_id: serial.to_string(),
            detail: format!(
                "several controllers carry serial {serial}: {}",
                names.join(", ")
            ),
        });
    }
    let ctrl_name = ctrl
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ns = namespace_of(ctrl, &ctrl_name);
    let node = dev_root.join(&ns);
    if node.exists() {
        Ok(Look::Found(node))
    } else {
        Ok(Look::NoNode(ctrl_name, node))
    }
}

/// The namespace block device of controller `nvmeN`: the `nvmeNnM` entry in its sysfs
/// directory (EBS volumes have one namespace), else `nvmeNn1`.
fn namespace_of(ctrl: &Path, ctrl_name: &str) -> String {
    let is_ns = |n: &str| {
        n.strip_prefix(ctrl_name)
            .and_then(|r| r.strip_prefix('n'))
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
    };
    let mut names: Vec<String> = std::fs::read_dir(ctrl)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| is_ns(n))
        .collect();
    names.sort();
    names
        .into_iter()
        .next()
        .unwrap_or_else(|| format!("{ctrl_name}n1"))
}

fn cross_check(volume_id: &str, serial: &str, dev_root: &Path, dev: &Path) -> Result<()> {
    let link = dev_root
        .join("disk/by-id")
        .join(format!("nvme-Amazon_Elastic_Block_Store_{serial}"));
    if std::fs::symlink_metadata(&link).is_err() {
        return Ok(()); // no udev: the serial match is authoritative
    }
    let a = std::fs::canonicalize(&link).map_err(Error::io("resolving", &link))?;
    let b = std::fs::canonicalize(dev).map_err(Error::io("resolving", dev))?;
    if a != b {
        return Err(Error::NvmeMismatch {
            volume_id: volume_id.to_string(),
            detail: format!(
                "sysfs serial points at {} but {} points at {}",
                dev.display(),
                link.display(),
                a.display()
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_form() {
        assert_eq!(
            nvme_serial_of("vol-0123456789abcdef0").unwrap(),
            "vol0123456789abcdef0"
        );
        assert_eq!(nvme_serial_of("vol-0123abcd").unwrap(), "vol0123abcd");
        assert!(nvme_serial_of("vol0123456789abcdef0").is_err());
        assert!(nvme_serial_of("vol-xyz").is_err());
    }
}
