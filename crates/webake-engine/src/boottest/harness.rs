//! The test harness injected into a throw-away copy of the disk: a oneshot unit that, once
//! multi-user is reached, runs the checks, records the results in the guest's filesystem and
//! powers off. The results are read back offline after power-off (the serial console
//! interleaves with systemd's status output and cannot be parsed reliably).

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
// The unit finalize installs to make the SSH host keys on first boot.
use webake_build::finalize::KEYGEN_UNIT_NAME as KEYGEN_UNIT;
use webake_spec::BootCheck;
use webake_sys::process::{Cmd, capture};

use crate::{Error, Result};

const HARNESS_UNIT: &str = "[Unit]
Description=webake boot test harness (test copy only)
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/bin/sh /usr/local/lib/webake-test/run.sh
StandardOutput=tty
StandardError=tty
TTYPath=/dev/@CONSOLE@
[Install]
WantedBy=multi-user.target
";

/// Where the harness writes its results inside the guest.
const RESULTS: &str = "/var/lib/webake-test/results";

/// The drop-in that points the agent at the fake metadata address during the test.
pub const IMDS_DROPIN: &str =
    "[Service]\nEnvironment=AWS_EC2_METADATA_SERVICE_ENDPOINT=http://169.254.169.254\n";

pub fn script(checks: &[BootCheck]) -> String {
    let mut s = String::from(
        "#!/bin/sh\n# webake boot test harness: runs the checks, records results, powers off.\n",
    );
    s.push_str(&format!("R={RESULTS}\nmkdir -p \"$(dirname $R)\"\n: > $R\necho BEGIN >> $R\necho WEBAKE-TEST-BEGIN\n"));
    s.push_str("echo \"FAILED-UNITS $(systemctl --failed --no-legend --plain 2>/dev/null | awk '{print $1}' | tr '\\n' ' ')\" >> $R\n");
    // webake's first-boot host key unit (images webake finalized), unless a step disabled or
    // masked it (keys from elsewhere): its state and the keys there.
    s.push_str(&format!("if systemctl -q is-enabled {KEYGEN_UNIT} 2>/dev/null; then echo \"KEYGEN $(systemctl is-active {KEYGEN_UNIT}) $(cd /etc/ssh && ls ssh_host_*_key 2>/dev/null | tr '\\n' ' ')\" >> $R; fi\n"));
    for (i, c) in checks.iter().enumerate() {
        let b64 = B64.encode(c.run.as_bytes());
        s.push_str(&format!("out=$(echo {b64} | base64 -d | sh 2>&1); rc=$?; echo \"CHECK {i} rc=$rc out=$(printf %s \"$out\" | base64 -w0)\" >> $R; echo \"WEBAKE-CHECK {i} rc=$rc\"\n"));
    }
    s.push_str("echo END >> $R\nsync\necho WEBAKE-TEST-END\nsystemctl poweroff --force\n");
    s
}

fn offset(raw: &Path) -> Result<u64> {
    Ok(webake_build::extract::root_offset(raw)?)
}

/// Inject the harness into a raw copy with debugfs (offline, no mount; debugfs resolves paths
/// inside the filesystem image, never on the host).
pub fn inject(
    raw: &Path,
    checks: &[BootCheck],
    scratch: &Path,
    imds_dropin: Option<&str>,
    console: &str,
) -> Result<()> {
    let write = |name: &str, body: &str| -> Result<std::path::PathBuf> {
        let p = scratch.join(name);
        std::fs::write(&p, body).map_err(|e| Error::io(&p, e))?;
        Ok(p)
    };
    let unit = write(
        "webake-test.service",
        &HARNESS_UNIT.replace("@CONSOLE@", console),
    )?;
    let run = write("run.sh", &script(checks))?;
    let mut cmds = format!(
        "mkdir /usr/local/lib/webake-test\nwrite {} /usr/local/lib/webake-test/run.sh\nwrite {} /etc/systemd/system/webake-test.service\nmkdir /etc/systemd/system/multi-user.target.wants\nsymlink /etc/systemd/system/multi-user.target.wants/webake-test.service /etc/systemd/system/webake-test.service\n",
        run.display(),
        unit.display()
    );
    if let Some(d) = imds_dropin {
        let f = write("imds.conf", d)?;
        cmds.push_str(&format!(
            "mkdir /etc/systemd/system/webake-agent.service.d\nwrite {} /etc/systemd/system/webake-agent.service.d/webake-test-imds.conf\n",
            f.display()
        ));
    }
    debugfs_write(raw, scratch, &cmds)
}

/// Run debugfs write commands (`mkdir`, `write HOST-FILE PATH`, `symlink`, ...) against the root
/// filesystem of a raw disk copy, offline: debugfs resolves every path inside the filesystem
/// image, never on the host. The command file goes to `scratch`.
pub fn debugfs_write(raw: &Path, scratch: &Path, cmds: &str) -> Result<()> {
    let off = offset(raw)?;
    let cmdfile = scratch.join("debugfs.cmds");
    std::fs::write(&cmdfile, cmds).map_err(|e| Error::io(&cmdfile, e))?;
    // debugfs reports most command errors on stderr but exits 0 ("mkdir: file exists" is fine).
    let out = capture(
        &Cmd::new("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(&cmdfile)
            .arg(format!("{}?offset={off}", raw.display())),
    )?;
    tracing::debug!(%out, "debugfs");
    Ok(())
}

/// The host keys `ssh-keygen -A` makes (OpenSSH 7.0 and later).
pub const HOST_KEYS: [&str; 3] = [
    "ssh_host_rsa_key",
    "ssh_host_ecdsa_key",
    "ssh_host_ed25519_key",
];

/// What [`preseed_rsa_host_key`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Preseed {
    /// The RSA host key was made on the host and put into the copy.
    Done,
    /// Nothing to do: the image has no first-boot key unit, or already an RSA key.
    NotNeeded,
    /// No key from the host (why): the guest makes its RSA key itself.
    NoKey(String),
}

/// An RSA-3072 host key made on the host by `ssh-keygen`, in a private temporary directory of
/// its own (gone on drop); why not, when ssh-keygen is missing or failed. Natively this takes
/// well under a second, so [`super::Prepared`] makes it beside the disk copy.
pub fn make_rsa_host_key() -> std::result::Result<tempfile::TempDir, String> {
    if webake_sys::process::which("ssh-keygen").is_none() {
        return Err("no ssh-keygen on this host (apt-get install openssh-client)".into());
    }
    let dir = tempfile::Builder::new()
        .prefix("webake-test-hostkey-")
        .tempdir()
        .map_err(|e| format!("a temporary directory: {e}"))?;
    capture(
        &Cmd::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "rsa",
                "-b",
                "3072",
                "-N",
                "",
                "-C",
                "root@webake-test",
                "-f",
            ])
            .arg(dir.path().join(HOST_KEYS[0])),
    )
    .map_err(|e| format!("ssh-keygen: {e}"))?;
    Ok(dir)
}

/// Under emulation, put the RSA host key made on the host ([`make_rsa_host_key`]) into the test
/// copy (mode 0600, the public half 0644, root's), so that the image's first-boot unit, which
/// still runs, makes only the ECDSA and Ed25519 keys. An RSA-3072 prime search takes 3 to 60 s
/// and more under TCG and gates sshd and multi-user (docs/boot-test.md). Only the throw-away
/// copy gets it.
pub fn preseed_rsa_host_key(
    raw: &Path,
    scratch: &Path,
    key: &std::result::Result<tempfile::TempDir, String>,
) -> Result<Preseed> {
    let device = format!("{}?offset={}", raw.display(), offset(raw)?);
    let debugfs =
        |request: String| capture(&Cmd::new("debugfs").arg("-R").arg(request).arg(&device));
    let is_file = |path: &str| -> Result<bool> {
        Ok(debugfs(format!("stat {path}"))?.contains("Type: regular"))
    };
    let guest_key = format!("/etc/ssh/{}", HOST_KEYS[0]);
    // Images baked before the unit made each missing key (one glob condition for all) would
    // skip it with an RSA key present: those make all their keys in the guest.
    let unit = debugfs(format!("cat /etc/systemd/system/{KEYGEN_UNIT}"))?;
    if !unit.contains(&format!("ConditionPathExists=|!{guest_key}\n")) || is_file(&guest_key)? {
        return Ok(Preseed::NotNeeded);
    }
    let dir = match key {
        Ok(dir) => dir.path(),
        Err(why) => return Ok(Preseed::NoKey(why.clone())),
    };
    let mut cmds = String::new();
    for (name, mode) in [
        (HOST_KEYS[0].to_string(), "0100600"),
        (format!("{}.pub", HOST_KEYS[0]), "0100644"),
    ] {
        let guest = format!("/etc/ssh/{name}");
        cmds.push_str(&format!(
            "write \"{}\" {guest}\nsif {guest} mode {mode}\nsif {guest} uid 0\nsif {guest} gid 0\n",
            dir.join(&name).display()
        ));
    }
    debugfs_write(raw, scratch, &cmds)?;
    if !is_file(&guest_key)? || !is_file(&format!("{guest_key}.pub"))? {
        return Err(Error::Failed(format!(
            "debugfs did not put the test copy's RSA host key at {guest_key}"
        )));
    }
    Ok(Preseed::Done)
}

/// What the harness recorded.
#[derive(Debug, Default)]
pub struct Recorded {
    pub began: bool,
    pub ended: bool,
    pub failed_units: String,
    /// The first-boot host key unit's state (`systemctl is-active`) and the host keys in
    /// /etc/ssh, when the image has that unit enabled.
    pub keygen: Option<(String, Vec<String>)>,
    /// check index -> (exit code, output)
    pub checks: BTreeMap<usize, (i32, String)>,
}

/// Read the harness results from the test disk after the VM stopped.
pub fn read(raw: &Path) -> Result<Recorded> {
    let off = offset(raw)?;
    let text = capture(
        &Cmd::new("debugfs")
            .arg("-R")
            .arg(format!("cat {RESULTS}"))
            .arg(format!("{}?offset={off}", raw.display())),
    )?;
    Ok(parse(&text))
}

pub fn parse(text: &str) -> Recorded {
    let mut r = Recorded::default();
    for line in text.lines() {
        if line == "BEGIN" {
            r.began = true;
        } else if line == "END" {
            r.ended = true;
        } else if let Some(rest) = line.strip_prefix("FAILED-UNITS") {
            r.failed_units = rest.trim().to_string();
        } else if let Some(rest) = line.strip_prefix("KEYGEN ") {
            let mut words = rest.split_whitespace().map(str::to_string);
            let state = words.next().unwrap_or_default();
            r.keygen = Some((state, words.collect()));
        } else if let Some(rest) = line.strip_prefix("CHECK ") {
            let mut it = rest.splitn(3, ' ');
            let i: usize = it.next().and_then(|s| s.parse().ok()).unwrap_or(usize::MAX);
            let rc: i32 = it
                .next()
                .and_then(|s| s.strip_prefix("rc="))
                .and_then(|s| s.parse().ok())
                .unwrap_or(-1);
            let out = it
                .next()
                .and_then(|s| s.strip_prefix("out="))
                .and_then(|b| B64.decode(b.trim()).ok())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            r.checks.insert(i, (rc, out));
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_harness_reports_each_check_and_its_output_round_trips() {
        let s = script(&[BootCheck {
            name: "h".into(),
            run: "hostname -f\n".into(),
            expect_stdout: None,
        }]);
        assert!(s.contains("WEBAKE-CHECK 0"));
        assert!(s.contains("systemctl poweroff"));
        assert!(s.contains(&B64.encode("hostname -f\n")));
        let out = B64.encode("kubernetes-prod-euwest1-07a38e448ad62b4da");
        let r = parse(&format!(
            "BEGIN\nFAILED-UNITS a.service \nKEYGEN active ssh_host_ecdsa_key ssh_host_rsa_key \nCHECK 0 rc=0 out={out}\nEND\n"
        ));
        assert_eq!(
            r.keygen,
            Some((
                "active".to_string(),
                vec![
                    "ssh_host_ecdsa_key".to_string(),
                    "ssh_host_rsa_key".to_string()
                ]
            ))
        );
        assert!(s.contains("KEYGEN $(systemctl is-active webake-ssh-keygen.service)"));
        assert!(r.began && r.ended);
        assert_eq!(r.failed_units, "a.service");
        assert_eq!(
            r.checks[&0],
            (0, "kubernetes-prod-euwest1-07a38e448ad62b4da".to_string())
        );
    }

    /// The unit finalize installs is the one the harness reads, and it runs for a missing
    /// ECDSA or Ed25519 key when the RSA key was put into the test copy.
    #[test]
    fn the_harness_knows_finalizes_host_key_unit() {
        let unit = webake_build::finalize::SSH_KEYGEN_UNIT;
        for key in HOST_KEYS {
            assert!(
                unit.contains(&format!("ConditionPathExists=|!/etc/ssh/{key}\n")),
                "{unit}"
            );
        }
        assert!(unit.contains("ExecStart=/usr/bin/ssh-keygen -A\n"));
    }
}
