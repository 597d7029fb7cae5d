//! Make the tree environment-agnostic: nothing that identifies a machine, an environment or
//! the build host stays in the image. Runs on the exported tree (a plain directory), never
//! following a symlink out of it.

use std::path::{Component, Path, PathBuf};

use crate::error::{BuildError, Result};

/// What finalize changed, for the bake log.
#[derive(Debug, Default, Clone)]
pub struct FinalizeReport {
    pub actions: Vec<String>,
}

/// `root` joined with `rel`, provided no directory on the way is a symlink (the last
/// component may be anything; callers never follow it).
pub fn inner(root: &Path, rel: &str) -> Option<PathBuf> {
    let mut cur = root.to_path_buf();
    let comps: Vec<_> = Path::new(rel)
        .components()
        .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
        .collect();
    for (i, c) in comps.iter().enumerate() {
        let Component::Normal(n) = c else { return None };
        cur.push(n);
        if i + 1 < comps.len() {
            match std::fs::symlink_metadata(&cur) {
                Ok(md) if md.is_dir() => {}
                _ => return None,
            }
        }
    }
    Some(cur)
}

/// Remove a file, symlink or directory tree (never following a symlink); absent is `false`.
pub(crate) fn remove_any(p: &Path) -> Result<bool> {
    match std::fs::symlink_metadata(p) {
        Err(_) => Ok(false),
        Ok(md) if md.is_dir() => std::fs::remove_dir_all(p)
            .map(|_| true)
            .map_err(|e| BuildError::io(p, e)),
        Ok(_) => std::fs::remove_file(p)
            .map(|_| true)
            .map_err(|e| BuildError::io(p, e)),
    }
}

fn write_file(p: &Path, content: &[u8], mode: u32) -> Result<()> {
    // A new inode: never written through a symlink planted in the image, nor into a file
    // hard-linked from the layer cache (see crate::export).
    crate::export::replace_file(p, content, mode)
}

/// Remove the children of a directory matching `keep == false`.
fn clear_dir(dir: &Path, keep: &dyn Fn(&str) -> bool) -> Result<usize> {
    let mut n = 0;
    match std::fs::symlink_metadata(dir) {
        Ok(md) if md.is_dir() => {}
        _ => return Ok(0),
    }
    for e in std::fs::read_dir(dir)
        .map_err(|e| BuildError::io(dir, e))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if !keep(&name) && remove_any(&e.path())? {
            n += 1;
        }
    }
    Ok(n)
}

pub const SSH_KEYGEN_UNIT: &str = "[Unit]
Description=Generate SSH host keys (webake images ship without them)
Documentation=https://github.com/webake/webake
Before=ssh.service
ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target ssh.service
";

const DEFAULT_HOSTS: &str = "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\nff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n";

/// Apply the environment-agnostic rules. `host_resolv_conf` is the build host's resolv.conf.
pub fn finalize(root: &Path, host_resolv_conf: Option<&[u8]>) -> Result<FinalizeReport> {
    let mut r = FinalizeReport::default();
    let mut did = |s: String| r.actions.push(s);

    // SSH host keys: removed; regenerated on first boot by a oneshot unit.
    if let Some(ssh) = inner(root, "etc/ssh") {
        let n = clear_dir(&ssh, &|name| {
            !(name.starts_with("ssh_host_")
                && (name.ends_with("_key") || name.ends_with("_key.pub")))
        })?;
        if n > 0 {
            did(format!("removed {n} SSH host key files"));
        }
        if inner(root, "usr/sbin/sshd").is_some_and(|p| p.exists())
            || inner(root, "lib/systemd/system/ssh.service").is_some_and(|p| p.exists())
        {
            let unit_dir = webake_sys::sandbox::safe_mkdir_in_root(
                root,
                Path::new("/etc/systemd/system"),
                true,
            )
            .map_err(BuildError::Invalid)?;
            write_file(
                &unit_dir.join("webake-ssh-keygen.service"),
                SSH_KEYGEN_UNIT.as_bytes(),
                0o644,
            )?;
            for wants in ["multi-user.target.wants", "ssh.service.wants"] {
                let d = unit_dir.join(wants);
                if std::fs::symlink_metadata(&d)
                    .map(|m| m.file_type().is_symlink())
                    .unwrap_or(false)
                {
                    return Err(BuildError::Invalid(format!(
                        "{} in the image is a symlink",
                        d.display()
                    )));
                }
                std::fs::create_dir_all(&d).map_err(|e| BuildError::io(&d, e))?;
                let link = d.join("webake-ssh-keygen.service");
                let _ = std::fs::remove_file(&link);
                std::os::unix::fs::symlink("/etc/systemd/system/webake-ssh-keygen.service", &link)
                    .map_err(|e| BuildError::io(&link, e))?;
            }
            did(
                "installed webake-ssh-keygen.service (host keys are generated on first boot)"
                    .into(),
            );
        }
    }

    // machine-id: empty, so systemd generates one on first boot.
    if let Some(p) = inner(root, "etc/machine-id") {
        write_file(&p, b"", 0o444)?;
        did("emptied /etc/machine-id".into());
    }
    if let Some(p) = inner(root, "var/lib/dbus/machine-id")
        && std::fs::symlink_metadata(&p)
            .map(|m| m.is_file())
            .unwrap_or(false)
    {
        remove_any(&p)?;
        did("removed /var/lib/dbus/machine-id".into());
    }

    // Hostname: none baked in; the agent (or DHCP) sets it at boot.
    if let Some(p) = inner(root, "etc/hostname")
        && remove_any(&p)?
    {
        did("removed /etc/hostname".into());
    }
    if let Some(p) = inner(root, "etc/hosts") {
        let keep = std::fs::symlink_metadata(&p)
            .map(|m| m.is_file())
            .unwrap_or(false)
            && std::fs::read_to_string(&p)
                .map(|t| !t.contains("127.0.1.1"))
                .unwrap_or(false);
        if !keep {
            write_file(&p, DEFAULT_HOSTS.as_bytes(), 0o644)?;
            did("wrote a generic /etc/hosts".into());
        }
    }

    // resolv.conf: a regular file comes from the builder (mmdebstrap copies the host's); a
    // symlink (systemd-resolved) is the image's own and stays.
    if let Some(p) = inner(root, "etc/resolv.conf")
        && let Ok(md) = std::fs::symlink_metadata(&p)
        && md.is_file()
    {
        let content = std::fs::read(&p).map_err(|e| BuildError::io(&p, e))?;
        if host_resolv_conf.is_none_or(|h| h == content.as_slice()) || !content.is_empty() {
            write_file(&p, b"", 0o644)?;
            did("emptied /etc/resolv.conf (DNS is configured at boot)".into());
        }
    }

    // apt lists and caches.
    if let Some(p) = inner(root, "var/lib/apt/lists") {
        let n = clear_dir(&p, &|n| n == "lock" || n == "partial")?;
        if let Some(partial) = inner(root, "var/lib/apt/lists/partial") {
            clear_dir(&partial, &|_| false)?;
        }
        if n > 0 {
            did(format!("removed {n} apt list files"));
        }
    }
    if let Some(p) = inner(root, "var/cache/apt") {
        let n = clear_dir(&p, &|n| !n.ends_with(".bin"))?;
        if let Some(a) = inner(root, "var/cache/apt/archives") {
            let m = clear_dir(&a, &|n| n == "lock" || n == "partial")?;
            if let Some(partial) = inner(root, "var/cache/apt/archives/partial") {
                clear_dir(&partial, &|_| false)?;
            }
            if n + m > 0 {
                did(format!("removed {} apt cache files", n + m));
            }
        }
    }

    // Shell histories, ansible leftovers, cloud-init instance state, policy-rc.d.
    for rel in [
        "root/.bash_history",
        "root/.ansible",
        "root/.cache",
        "root/.wget-hsts",
        "var/lib/cloud/instances",
        "var/lib/cloud/instance",
        "var/lib/cloud/data",
        "var/lib/cloud/sem",
        "usr/sbin/policy-rc.d",
    ] {
        if let Some(p) = inner(root, rel)
            && remove_any(&p)?
        {
            did(format!("removed /{rel}"));
        }
    }
    for dir in ["home"] {
        if let Some(h) = inner(root, dir)
            && let Ok(rd) = std::fs::read_dir(&h)
        {
            for e in rd.flatten() {
                if std::fs::symlink_metadata(e.path())
                    .map(|m| m.is_dir())
                    .unwrap_or(false)
                {
                    for f in [".bash_history", ".ansible"] {
                        let p = e.path().join(f);
                        if remove_any(&p)? {
                            did(format!(
                                "removed {}",
                                p.strip_prefix(root).unwrap_or(&p).display()
                            ));
                        }
                    }
                }
            }
        }
    }
    // Logs of the build itself.
    for rel in ["var/log/apt", "var/log/installer"] {
        if let Some(p) = inner(root, rel) {
            clear_dir(&p, &|_| false)?;
        }
    }
    for rel in [
        "var/log/dpkg.log",
        "var/log/alternatives.log",
        "var/log/bootstrap.log",
    ] {
        if let Some(p) = inner(root, rel)
            && std::fs::symlink_metadata(&p)
                .map(|m| m.is_file())
                .unwrap_or(false)
        {
            write_file(&p, b"", 0o644)?;
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_identity_and_never_follows_symlinks_out() {
        let host = tempfile::tempdir().unwrap();
        let victim = host.path().join("victim");
        std::fs::write(&victim, "host data").unwrap();
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for d in [
            "etc/ssh",
            "var/lib/apt/lists/partial",
            "var/cache/apt/archives/partial",
            "usr/sbin",
            "root",
        ] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        std::fs::write(r.join("etc/ssh/ssh_host_ed25519_key"), "k").unwrap();
        std::fs::write(r.join("etc/ssh/ssh_host_ed25519_key.pub"), "k").unwrap();
        std::fs::write(r.join("etc/ssh/sshd_config"), "x").unwrap();
        std::fs::write(r.join("usr/sbin/sshd"), "").unwrap();
        std::fs::write(r.join("etc/machine-id"), "abc\n").unwrap();
        std::fs::write(r.join("etc/hostname"), "builder\n").unwrap();
        std::fs::write(r.join("etc/resolv.conf"), "nameserver 10.0.0.2\n").unwrap();
        std::fs::write(
            r.join("var/lib/apt/lists/deb.debian.org_dists_bookworm_InRelease"),
            "x",
        )
        .unwrap();
        std::fs::write(r.join("var/cache/apt/archives/foo.deb"), "x").unwrap();
        std::fs::write(r.join("root/.bash_history"), "aws configure").unwrap();
        // hostile: /etc/hosts points at a host file
        std::os::unix::fs::symlink(&victim, r.join("etc/hosts")).unwrap();

        let rep = finalize(r, Some(b"nameserver 10.0.0.2\n")).unwrap();
        assert!(!rep.actions.is_empty());
        assert!(!r.join("etc/ssh/ssh_host_ed25519_key").exists());
        assert!(!r.join("etc/ssh/ssh_host_ed25519_key.pub").exists());
        assert!(r.join("etc/ssh/sshd_config").exists());
        assert!(
            r.join("etc/systemd/system/multi-user.target.wants/webake-ssh-keygen.service")
                .symlink_metadata()
                .is_ok()
        );
        assert_eq!(std::fs::read(r.join("etc/machine-id")).unwrap(), b"");
        assert!(!r.join("etc/hostname").exists());
        assert_eq!(std::fs::read(r.join("etc/resolv.conf")).unwrap(), b"");
        assert!(
            !r.join("var/lib/apt/lists/deb.debian.org_dists_bookworm_InRelease")
                .exists()
        );
        assert!(r.join("var/lib/apt/lists/partial").is_dir());
        assert!(!r.join("var/cache/apt/archives/foo.deb").exists());
        assert!(!r.join("root/.bash_history").exists());
        assert_eq!(
            std::fs::read_to_string(&victim).unwrap(),
            "host data",
            "host file was written through a symlink"
        );
        assert!(
            !std::fs::symlink_metadata(r.join("etc/hosts"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn inner_refuses_symlinked_parents() {
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", root.path().join("etc")).unwrap();
        assert!(inner(root.path(), "etc/machine-id").is_none());
        assert!(inner(root.path(), "etc").is_some());
    }
}
