//! Make the tree environment-agnostic: nothing that identifies a machine, an environment or
//! the build host stays in the image. Every path is resolved inside the tree
//! ([`webake_sys::Tree`]): a symlink planted by a step never leads a write out of it.

use std::path::Path;

use webake_sys::Tree;

use crate::error::Result;

/// What finalize changed, for the bake log.
#[derive(Debug, Default, Clone)]
pub struct FinalizeReport {
    pub actions: Vec<String>,
}

fn p(s: &str) -> &Path {
    Path::new(s)
}

/// Is `inner` a regular file (not followed if a symlink)?
fn is_file(t: &Tree, inner: &str) -> Result<bool> {
    Ok(t.metadata(p(inner))?.is_some_and(|m| m.is_file()))
}

/// Remove the children of directory `dir` (followed inside the tree) for which `keep` is
/// false; returns how many were removed.
fn clear_dir(t: &Tree, dir: &str, keep: &dyn Fn(&str) -> bool) -> Result<usize> {
    if !t.is_dir(p(dir)) {
        return Ok(0);
    }
    let mut n = 0;
    for name in t.read_dir(p(dir))? {
        let name = name.to_string_lossy().into_owned();
        if !keep(&name) && t.remove(&p(dir).join(&name))? {
            n += 1;
        }
    }
    Ok(n)
}

/// The name of [`SSH_KEYGEN_UNIT`] in /etc/systemd/system.
pub const KEYGEN_UNIT_NAME: &str = "webake-ssh-keygen.service";

pub const SSH_KEYGEN_UNIT: &str = "[Unit]
Description=Generate SSH host keys (webake images ship without them)
Documentation=https://github.com/webake/webake
# As early as the root filesystem is writable, not after basic.target: on a slow first boot
# (an emulated CPU) the RSA key takes seconds and gates sshd and multi-user.
DefaultDependencies=no
After=local-fs.target systemd-remount-fs.service
Before=ssh.service shutdown.target
Conflicts=shutdown.target
# Whichever key is missing (ssh-keygen -A makes only those).
ConditionPathExists=|!/etc/ssh/ssh_host_rsa_key
ConditionPathExists=|!/etc/ssh/ssh_host_ecdsa_key
ConditionPathExists=|!/etc/ssh/ssh_host_ed25519_key

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
    let t = Tree::open(root)?;
    let mut r = FinalizeReport::default();
    ssh_host_keys(&t, &mut r)?;
    machine_id(&t, &mut r)?;
    hostname(&t, &mut r)?;
    resolv_conf(&t, host_resolv_conf, &mut r)?;
    apt_lists_and_caches(&t, &mut r)?;
    histories_and_instance_state(&t, &mut r)?;
    build_logs(&t)?;
    temp_files(&t, &mut r)?;
    Ok(r)
}

impl FinalizeReport {
    fn did(&mut self, action: String) {
        self.actions.push(action);
    }
}

/// SSH host keys: removed; regenerated on first boot by a oneshot unit.
fn ssh_host_keys(t: &Tree, r: &mut FinalizeReport) -> Result<()> {
    if !t.is_dir(p("etc/ssh")) {
        return Ok(());
    }
    let n = clear_dir(t, "etc/ssh", &|name| {
        !(name.starts_with("ssh_host_") && (name.ends_with("_key") || name.ends_with("_key.pub")))
    })?;
    if n > 0 {
        r.did(format!("removed {n} SSH host key files"));
    }
    if t.exists(p("usr/sbin/sshd")) || t.exists(p("lib/systemd/system/ssh.service")) {
        t.create_dir_all(p("etc/systemd/system"), 0o755)?;
        t.write(
            &p("etc/systemd/system").join(KEYGEN_UNIT_NAME),
            SSH_KEYGEN_UNIT.as_bytes(),
            0o644,
        )?;
        for wants in ["multi-user.target.wants", "ssh.service.wants"] {
            let d = Path::new("etc/systemd/system").join(wants);
            t.create_dir_all(&d, 0o755)?;
            t.symlink(
                &p("/etc/systemd/system").join(KEYGEN_UNIT_NAME),
                &d.join(KEYGEN_UNIT_NAME),
            )?;
        }
        r.did("installed webake-ssh-keygen.service (host keys are generated on first boot)".into());
    }
    Ok(())
}

/// machine-id: empty, so systemd generates one on first boot.
fn machine_id(t: &Tree, r: &mut FinalizeReport) -> Result<()> {
    if t.is_dir(p("etc")) {
        t.write(p("etc/machine-id"), b"", 0o444)?;
        r.did("emptied /etc/machine-id".into());
    }
    if is_file(t, "var/lib/dbus/machine-id")? {
        t.remove(p("var/lib/dbus/machine-id"))?;
        r.did("removed /var/lib/dbus/machine-id".into());
    }
    Ok(())
}

/// Hostname: none baked in; the agent (or DHCP) sets it at boot.
fn hostname(t: &Tree, r: &mut FinalizeReport) -> Result<()> {
    if t.remove(p("etc/hostname"))? {
        r.did("removed /etc/hostname".into());
    }
    if t.is_dir(p("etc")) {
        let keep = is_file(t, "etc/hosts")?
            && t.read(p("etc/hosts"))
                .map(|b| !String::from_utf8_lossy(&b).contains("127.0.1.1"))
                .unwrap_or(false);
        if !keep {
            t.write(p("etc/hosts"), DEFAULT_HOSTS.as_bytes(), 0o644)?;
            r.did("wrote a generic /etc/hosts".into());
        }
    }
    Ok(())
}

/// resolv.conf: a regular file comes from the builder; a symlink (systemd-resolved) is the
/// image's own and stays.
fn resolv_conf(t: &Tree, host_resolv_conf: Option<&[u8]>, r: &mut FinalizeReport) -> Result<()> {
    if is_file(t, "etc/resolv.conf")? {
        let content = t.read(p("etc/resolv.conf"))?;
        if host_resolv_conf.is_none_or(|h| h == content.as_slice()) || !content.is_empty() {
            t.write(p("etc/resolv.conf"), b"", 0o644)?;
            r.did("emptied /etc/resolv.conf (DNS is configured at boot)".into());
        }
    }
    Ok(())
}

/// apt lists and caches.
fn apt_lists_and_caches(t: &Tree, r: &mut FinalizeReport) -> Result<()> {
    let n = clear_dir(t, "var/lib/apt/lists", &|n| n == "lock" || n == "partial")?;
    clear_dir(t, "var/lib/apt/lists/partial", &|_| false)?;
    if n > 0 {
        r.did(format!("removed {n} apt list files"));
    }
    if t.is_dir(p("var/cache/apt")) {
        let n = clear_dir(t, "var/cache/apt", &|n| !n.ends_with(".bin"))?;
        let m = clear_dir(t, "var/cache/apt/archives", &|n| {
            n == "lock" || n == "partial"
        })?;
        clear_dir(t, "var/cache/apt/archives/partial", &|_| false)?;
        if n + m > 0 {
            r.did(format!("removed {} apt cache files", n + m));
        }
    }
    Ok(())
}

/// Shell histories, ansible leftovers, cloud-init instance state, policy-rc.d.
fn histories_and_instance_state(t: &Tree, r: &mut FinalizeReport) -> Result<()> {
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
        // ldconfig's cache of the build host's inode numbers and change times (it rebuilds
        // it); mmdebstrap removes it, a step that installs libraries writes it again.
        "var/cache/ldconfig/aux-cache",
    ] {
        if t.remove(p(rel))? {
            r.did(format!("removed /{rel}"));
        }
    }
    if t.is_dir(p("home")) {
        for user in t.read_dir(p("home"))? {
            let home = Path::new("home").join(&user);
            if !t.metadata(&home)?.is_some_and(|m| m.is_dir()) {
                continue;
            }
            for f in [".bash_history", ".ansible"] {
                if t.remove(&home.join(f))? {
                    r.did(format!("removed /{}", home.join(f).display()));
                }
            }
        }
    }
    Ok(())
}

/// What the build left in `/tmp` (the tmpfs at boot hides it anyway): a step's `/tmp` is a
/// tmpfs of its own, but the bootstrap's is not, and mkinitramfs's scratch directories there
/// would make two bakes of the same inputs differ.
fn temp_files(t: &Tree, r: &mut FinalizeReport) -> Result<()> {
    let n = clear_dir(t, "tmp", &|_| false)?;
    if n > 0 {
        r.did(format!("removed {n} entries from /tmp"));
    }
    Ok(())
}

/// Logs of the build itself.
fn build_logs(t: &Tree) -> Result<()> {
    for rel in ["var/log/apt", "var/log/installer"] {
        clear_dir(t, rel, &|_| false)?;
    }
    for rel in [
        "var/log/dpkg.log",
        "var/log/alternatives.log",
        "var/log/bootstrap.log",
    ] {
        if is_file(t, rel)? {
            t.write(p(rel), b"", 0o644)?;
        }
    }
    Ok(())
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
    fn a_symlinked_etc_keeps_every_write_inside_the_tree() {
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("machine-id"), "host id").unwrap();
        std::fs::write(host.path().join("hosts"), "host hosts").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(host.path(), root.path().join("etc")).unwrap();
        // /etc points at a host directory: resolved inside the tree it does not exist, so
        // nothing is written anywhere.
        finalize(root.path(), None).unwrap();
        assert_eq!(
            std::fs::read_to_string(host.path().join("machine-id")).unwrap(),
            "host id"
        );
        assert_eq!(
            std::fs::read_to_string(host.path().join("hosts")).unwrap(),
            "host hosts"
        );
    }
}
