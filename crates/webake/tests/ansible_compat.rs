//! Roles written for live hosts run unmodified in a bake (issue 16), in both Ansible modes.
//!
//! The roles of `tests/fixtures/ansible-compat` start and restart services, mask units, set
//! kernel parameters with `sysctl_set` and `reload`, load a module, set the time zone, the
//! hostname and the locale, add firewall rules, mount file systems, add limits, cron jobs, a
//! user and a group: no `webake_build` guard anywhere. Each test bakes them once, running the
//! playbook twice inside the same step (the first run changes the image, the second changes
//! nothing), then boots the image under qemu (the recipe's gated boot test): the enabled
//! services ran, the masked one did not, the sysctls and the time zone are applied. The bake
//! log carries the offline tools' records, the catalog's inventory what they mean at boot,
//! and the build host's kernel parameters and modules are untouched.
//!
//! The bootstrap and the `install ansible` layer are shared with the other tests (same base
//! and step as recipes/kubernetes-node.yaml); the Ansible step is new every run (a per-run
//! extra var), so the runs are real.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;

const COLLECTIONS: &str = "/usr/lib/python3/dist-packages/ansible_collections";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/ansible-compat")
        .canonicalize()
        .expect("tests/fixtures/ansible-compat")
}

/// Root, the bake tools, qemu and the host's full Ansible (host mode's controller, and the
/// collections ansible-local stages), or a clear failure (never a skip).
fn require_host() {
    require_bake_capabilities();
    require_qemu();
    assert!(
        which("ansible-playbook"),
        "missing `ansible-playbook` on the build host: apt-get install ansible"
    );
    for c in [
        "community/general/plugins/connection/chroot.py",
        "community/general/plugins/modules/timezone.py",
        "ansible/posix/plugins/modules/sysctl.py",
        "ansible/posix/plugins/modules/mount.py",
    ] {
        assert!(
            Path::new(COLLECTIONS).join(c).is_file(),
            "{COLLECTIONS}/{c} is missing: apt-get install ansible (not only ansible-core)"
        );
    }
}

/// The gated boot test: what the roles set up for boot, checked on the booted image.
const BOOT_TEST: &str = r#"test:
  gate: true
  timeout_secs: 240
  checks:
    - name: enabled service ran
      run: systemctl is-active webake-compat.service && cat /var/lib/webake-compat/enabled-ran
      expect_stdout: "active\nhello from the compat role"
    - name: masked service did not run
      run: systemctl is-enabled webake-compat-masked.service; systemctl is-active webake-compat-masked.service; test -e /var/lib/webake-compat/masked-ran || echo never-ran
      expect_stdout: "masked\ninactive\nnever-ran"
    - name: cron runs, the apt timers are masked
      run: systemctl is-enabled apt-daily.timer apt-daily-upgrade.timer; systemctl is-active cron.service
      expect_stdout: "masked\nmasked\nactive"
    - name: sysctls applied at boot
      run: sysctl -n net.ipv4.ip_forward vm.swappiness
      expect_stdout: "1\n13"
    - name: time zone
      run: readlink /etc/localtime; date +%Z | grep -qxE 'CES?T' && echo berlin-time
      expect_stdout: "/usr/share/zoneinfo/Europe/Berlin\nberlin-time"
    - name: the role's tmpfs mounted from fstab
      run: findmnt -no FSTYPE /srv/scratch; findmnt -no OPTIONS /srv/scratch | tr , '\n' | grep -x noexec
      expect_stdout: "tmpfs\nnoexec"
    - name: the baked hostname is not kept
      run: test "$(hostname)" != compat-host && echo not-baked
      expect_stdout: not-baked
outputs: [raw]
"#;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Local,
    Host,
}

/// The recipe of `mode`: the fixture's site.yml twice in one step, then the boot test.
fn recipe(env: &Env, mode: Mode) -> PathBuf {
    let f = fixtures();
    let run_id = env
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let site = f.join("site.yml").display().to_string();
    let steps = match mode {
        Mode::Local => {
            // The collections beyond ansible-core, staged from the recipe (not installed).
            let col = env.path().join("collections/ansible_collections");
            for c in ["ansible/posix", "community/general"] {
                let to = col.join(c);
                std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                let o = std::process::Command::new("cp")
                    .arg("-a")
                    .arg(Path::new(COLLECTIONS).join(c))
                    .arg(&to)
                    .output()
                    .unwrap();
                assert!(o.status.success(), "staging {c}: {}", text(&o));
            }
            format!(
                "  - shell:
      name: install ansible
      inline:
        - apt-get update -q
        - apt-get install -y -q --no-install-recommends ansible-core python3-apt
  - ansible-local:
      name: live roles, twice
      playbook_file: [{site}, {site}]
      collection_paths: [{}]
      extra_vars: {{webake_compat_run: {run_id}}}
",
                env.path().join("collections").display()
            )
        }
        Mode::Host => format!(
            "  - ansible:
      name: live roles from the host, twice
      playbook_file: [{}, {site}, {site}]
      extra_vars: {{webake_compat_run: {run_id}}}
",
            f.join("python.yml").display()
        ),
    };
    let name = match mode {
        Mode::Local => "compat-local",
        Mode::Host => "compat-host-mode",
    };
    env.recipe(
        name,
        &format!(
            "version: 1\nimage:\n  name: {name}\n  family: {name}\n{BASE}allow_paths_outside_recipe_dir: true\nprovisioners:\n{steps}{BOOT_TEST}"
        ),
    )
}

/// `(ok, changed, failed)` of every PLAY RECAP in the output, in order.
fn recaps(log: &str) -> Vec<(u64, u64, u64)> {
    let mut out = Vec::new();
    for block in log.split("PLAY RECAP").skip(1) {
        let line = block
            .lines()
            .find(|l| l.contains(" : ok="))
            .unwrap_or_else(|| panic!("a PLAY RECAP without counters:\n{block}"));
        let n = |k: &str| -> u64 {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {k}= in {line:?}"))
        };
        out.push((n("ok"), n("changed"), n("failed")));
    }
    out
}

/// The first run changed the image, the second (same step) changed nothing. Host mode runs
/// python.yml and site.yml twice in one ansible-playbook, whose recaps are cumulative.
fn assert_second_run_changes_nothing(mode: Mode, log: &str) {
    let r = recaps(log);
    let (first, second) = match mode {
        Mode::Local => {
            assert_eq!(r.len(), 2, "two runs, two recaps:\n{log}");
            (r[0], r[1])
        }
        Mode::Host => {
            assert_eq!(r.len(), 3, "python.yml and two runs, three recaps:\n{log}");
            let d = |a: (u64, u64, u64), b: (u64, u64, u64)| (a.0 - b.0, a.1 - b.1, a.2 - b.2);
            (d(r[1], r[0]), d(r[2], r[1]))
        }
    };
    assert_eq!(first.2, 0, "the first run failed:\n{log}");
    assert!(
        first.1 >= 20,
        "the first run changed only {} things:\n{log}",
        first.1
    );
    assert_eq!(second.2, 0, "the second run failed:\n{log}");
    assert!(
        second.0 >= 30,
        "the second run ran only {} tasks:\n{log}",
        second.0
    );
    let second_run = &log[log.rfind("PLAY [Roles written for live hosts]").unwrap()..];
    let changed: Vec<&str> = second_run
        .split("TASK [")
        .filter(|t| t.lines().any(|l| l.contains("changed: [")))
        .collect();
    assert_eq!(
        second.1,
        0,
        "the second run changed:\n{}",
        changed.join("TASK [")
    );
}

/// The offline tools' records in the bake log (what PID 1 of the step printed).
fn assert_bake_log_records(log: &str) {
    for want in [
        "webake offline: systemctl start webake-compat.service: nothing started during the bake; recorded active; it runs at boot (enabled)",
        "webake offline: systemctl restart webake-compat.service: nothing started",
        "webake offline: systemctl mask webake-compat-masked.service: done offline",
        "webake offline: modprobe br_netfilter: recorded, nothing loaded into the build host's kernel",
        "webake offline: timedatectl set-timezone Europe/Berlin",
        "webake offline: hostnamectl set-hostname compat-host: recorded",
        "webake offline: iptables -t filter -P FORWARD DROP: recorded, no firewall changed",
    ] {
        assert!(log.contains(want), "the bake log lacks {want:?}:\n{log}");
    }
}

/// The image: settings files, the recorded state, no offline tools left; the catalog's
/// inventory says what the records mean at boot.
fn assert_image_and_inventory(env: &Env, image: &serde_json::Value) {
    let raw = PathBuf::from(artifact_path(image, "raw"));
    let cat = |p: &str| cat_in_image(&raw, p).unwrap_or_else(|| panic!("{p} is not in the image"));
    let sysctl = cat("/etc/sysctl.d/60-webake-compat.conf");
    assert!(
        sysctl.contains("net.ipv4.ip_forward=1") && sysctl.contains("vm.swappiness=13"),
        "{sysctl}"
    );
    assert_eq!(cat("/etc/timezone").trim(), "Europe/Berlin");
    assert!(cat("/etc/default/locale").contains("LANG=en_US.UTF-8"));
    assert!(cat("/etc/modules-load.d/webake-compat.conf").contains("br_netfilter"));
    let rules = cat("/etc/iptables.rules");
    assert!(
        rules.contains(":FORWARD DROP") && rules.contains("--destination-port 22"),
        "{rules}"
    );
    let fstab = cat("/etc/fstab");
    assert!(
        fstab.contains("LABEL=webake-data /srv/data ext4 defaults,nofail"),
        "{fstab}"
    );
    assert!(cat("/etc/security/limits.conf").contains("32768"));
    assert!(cat("/etc/passwd").contains("compat:"));
    let state = cat("/var/lib/webake/offline-state");
    assert!(
        state.contains("unit webake-compat.service active"),
        "{state}"
    );
    assert!(
        cat_in_image(&raw, "/usr/lib/webake-offline/lib.sh").is_none(),
        "the offline tools are in the image"
    );
    let id = image["id"].as_str().expect("image id");
    let o = env.run(&["images", "show", id, "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let shown: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(shown["test_result"], "passed", "{shown}");
    let summaries: Vec<&str> = shown["inventory"]["offline"]
        .as_array()
        .unwrap_or_else(|| panic!("no offline records in the inventory: {shown}"))
        .iter()
        .filter_map(|r| r["summary"].as_str())
        .collect();
    for want in [
        "would start webake-compat.service at boot (enabled)",
        "would start cron.service at boot (enabled)",
    ] {
        assert!(summaries.contains(&want), "{want:?} not in {summaries:#?}");
    }
    assert!(
        summaries
            .iter()
            .any(|s| s.starts_with("module br_netfilter")),
        "{summaries:#?}"
    );
}

/// The build host's kernel: parameters and modules as before the bake.
fn host_kernel() -> (String, String, bool) {
    let r = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let modules = r("/proc/modules");
    (
        r("/proc/sys/net/ipv4/ip_forward"),
        r("/proc/sys/vm/swappiness"),
        modules.lines().any(|l| l.starts_with("br_netfilter ")),
    )
}

/// Removes the layers of this test's Ansible steps from the shared cache on drop (they are
/// new every run, so they would only pile up: 70 to 200 MB each).
struct DropLayers(&'static str);

impl Drop for DropLayers {
    fn drop(&mut self) {
        let layers = shared_cache().join("layers");
        for e in std::fs::read_dir(&layers).into_iter().flatten().flatten() {
            let meta = std::fs::read_to_string(e.path().join("meta.json")).unwrap_or_default();
            let label = serde_json::from_str::<serde_json::Value>(&meta)
                .ok()
                .and_then(|v| v["label"].as_str().map(str::to_string))
                .unwrap_or_default();
            if label.ends_with(self.0) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

fn bake_and_check(mode: Mode) {
    require_host();
    let env = Env::new();
    let _layers = DropLayers(match mode {
        Mode::Local => "live roles, twice (ansible-local)",
        Mode::Host => "live roles from the host, twice (ansible)",
    });
    let r = recipe(&env, mode);
    let before = host_kernel();
    let o: Output = env.run(&["bake", "--json", r.to_str().unwrap()]);
    let log = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "bake failed:\n{}", text(&o));
    assert_eq!(
        host_kernel(),
        before,
        "the bake changed the build host's kernel"
    );
    assert_second_run_changes_nothing(mode, &log);
    // The bake log file: the offline records and the lint's warning about the hostname.
    let bakes: Vec<PathBuf> = std::fs::read_dir(env.data.join("bakes"))
        .expect("the bakes directory")
        .flatten()
        .map(|e| e.path().join("bake.log"))
        .collect();
    assert_eq!(bakes.len(), 1, "{bakes:?}");
    let bake_log = std::fs::read_to_string(&bakes[0]).expect("bake.log");
    assert_bake_log_records(&bake_log);
    assert!(
        bake_log.contains(
            "Warning role-hostname /var/lib/webake/offline-state: a role set the hostname \"compat-host\""
        ),
        "no role-hostname warning in {}",
        bakes[0].display()
    );
    for check in [
        "enabled service ran",
        "masked service did not run",
        "sysctls applied at boot",
        "time zone",
    ] {
        assert!(
            log.contains(&format!("check {check}: rc=0")),
            "{check}:\n{log}"
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("bake --json");
    assert_image_and_inventory(&env, &v["image"]);
}

#[test]
fn live_host_roles_run_unmodified_with_ansible_local() {
    bake_and_check(Mode::Local);
}

#[test]
fn live_host_roles_run_unmodified_in_host_mode() {
    bake_and_check(Mode::Host);
}
