//! Ansible provisioning, for real (as root): bake the example recipes, read the image offline
//! and check every role's effect, re-run the playbook against the baked tree (nothing may
//! change), and make a failing task fail the bake cleanly.
//!
//! Every bake uses `$CARGO_TARGET_TMPDIR/webake-cache` as its cache, shared with the other
//! integration tests: the base is bootstrapped once, and a second bake of the same recipe
//! only exports and assembles. Data dirs and catalogs live in per-test temp dirs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const FAILING_TASK: &str = "webake test task that always fails";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// Root and the host tools, or a clear failure (never a skip).
fn require_host() {
    let out = Command::new("id").arg("-u").output().expect("run id -u");
    let uid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        uid, "0",
        "the ansible tests bake images (chroot, mount namespaces, overlays): run them as root"
    );
    for (tool, pkg) in [
        ("mmdebstrap", "mmdebstrap"),
        ("ansible-playbook", "ansible"),
        ("debugfs", "e2fsprogs"),
        ("mkfs.ext4", "e2fsprogs"),
        ("sfdisk", "fdisk"),
        ("mkfs.vfat", "dosfstools"),
        ("mcopy", "mtools"),
        ("qemu-img", "qemu-utils"),
        ("unshare", "util-linux"),
        ("losetup", "mount"),
    ] {
        assert!(
            which(tool),
            "missing host tool `{tool}`: apt-get install {pkg} (or scripts/setup.sh --test)"
        );
    }
    let chroot_plugin = Path::new(
        "/usr/lib/python3/dist-packages/ansible_collections/community/general/plugins/connection/chroot.py",
    );
    assert!(
        chroot_plugin.is_file(),
        "the community.general.chroot connection is missing: apt-get install ansible (not only ansible-core)"
    );
}

/// The webake-agent binary (kubernetes-node installs it): next to webake, else built once.
fn agent_binary() -> &'static Path {
    static AGENT: OnceLock<PathBuf> = OnceLock::new();
    AGENT.get_or_init(|| {
        let agent = Path::new(env!("CARGO_BIN_EXE_webake")).with_file_name("webake-agent");
        if !agent.is_file() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let o = Command::new(cargo)
                .args(["build", "-p", "webake-agent"])
                .current_dir(repo_root())
                .output()
                .expect("run cargo build -p webake-agent");
            assert!(
                o.status.success() && agent.is_file(),
                "webake-agent is needed next to webake ({}): `cargo build -p webake-agent` failed:\n{}",
                agent.display(),
                text(&o)
            );
        }
        agent
    })
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// One test's data dir and catalog (removed on drop), with the shared cache.
struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> Self {
        require_host();
        let dir = tempfile::Builder::new()
            .prefix("webake-ansible-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("temp dir");
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn webake(&self, args: &[&str]) -> Output {
        let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("webake-cache");
        std::fs::create_dir_all(&cache).expect("cache dir");
        Command::new(env!("CARGO_BIN_EXE_webake"))
            .arg("--data-dir")
            .arg(self.path().join("data"))
            .arg("--catalog")
            .arg(self.path().join("catalog.db"))
            .arg("--cache-dir")
            .arg(&cache)
            .args(args)
            .env("WEBAKE_AGENT_BINARY", agent_binary())
            .current_dir(repo_root())
            .output()
            .expect("run webake")
    }

    /// Bake `recipe` (must succeed) and return the raw artifact.
    fn bake(&self, recipe: &Path) -> PathBuf {
        let o = self.webake(&["bake", "--json", &recipe.display().to_string()]);
        assert!(
            o.status.success(),
            "bake of {} failed:\n{}",
            recipe.display(),
            text(&o)
        );
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("bake --json output");
        let raw = v["image"]["artifacts"]
            .as_array()
            .expect("artifacts")
            .iter()
            .find(|a| a["format"] == "raw")
            .expect("a raw artifact")["path"]
            .as_str()
            .expect("path")
            .to_string();
        PathBuf::from(raw)
    }

    /// The root filesystem of a raw disk, extracted offline into this world.
    fn extract(&self, raw: &Path) -> PathBuf {
        let root = self.path().join("root");
        extract_root(raw, &root);
        root
    }

    fn images(&self) -> serde_json::Value {
        let o = self.webake(&["images", "list", "--json"]);
        assert!(o.status.success(), "images list: {}", text(&o));
        serde_json::from_slice(&o.stdout).expect("images list --json")
    }
}

/// Root partition of a GPT raw disk -> `dir` with debugfs rdump (no loop device, no mount).
fn extract_root(raw: &Path, dir: &Path) {
    let o = Command::new("sfdisk")
        .arg("--json")
        .arg(raw)
        .output()
        .expect("sfdisk");
    assert!(o.status.success(), "sfdisk --json: {}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("sfdisk json");
    let start = v["partitiontable"]["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .find(|p| {
            p["type"].as_str().is_some_and(|t| {
                t.eq_ignore_ascii_case("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709")
                    || t.eq_ignore_ascii_case("0FC63DAF-8483-4772-8E79-3D69D8477DE4")
            })
        })
        .and_then(|p| p["start"].as_u64())
        .expect("a Linux root partition");
    std::fs::create_dir_all(dir).expect("mkdir root");
    let o = Command::new("debugfs")
        .arg("-R")
        .arg(format!("rdump / {}", dir.display()))
        .arg(format!("{}?offset={}", raw.display(), start * 512))
        .output()
        .expect("debugfs");
    assert!(o.status.success(), "debugfs rdump: {}", text(&o));
    assert!(
        dir.join("etc/os-release").exists(),
        "nothing extracted from {}",
        raw.display()
    );
}

fn read(root: &Path, rel: &str) -> String {
    std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("/{rel} in the image: {e}"))
}

/// Installed packages from var/lib/dpkg/status.
fn installed_packages(root: &Path) -> BTreeSet<String> {
    read(root, "var/lib/dpkg/status")
        .split("\n\n")
        .filter(|p| p.lines().any(|l| l == "Status: install ok installed"))
        .filter_map(|p| p.lines().find_map(|l| l.strip_prefix("Package: ")))
        .map(str::to_string)
        .collect()
}

/// A unit enabled offline: a symlink in etc/systemd/system/TARGET.wants.
fn assert_enabled(root: &Path, target: &str, unit: &str) {
    let link = root.join(format!("etc/systemd/system/{target}.wants/{unit}"));
    let md = std::fs::symlink_metadata(&link)
        .unwrap_or_else(|_| panic!("{unit} is not enabled ({target}.wants has no link)"));
    assert!(
        md.file_type().is_symlink(),
        "{} is not a symlink",
        link.display()
    );
    let dest = std::fs::read_link(&link).expect("readlink");
    let resolved = root.join(dest.strip_prefix("/").unwrap_or(&dest));
    let resolved = if dest.is_absolute() {
        resolved
    } else {
        link.parent().expect("parent").join(&dest)
    };
    assert!(
        resolved.exists(),
        "{unit} is enabled but its link points at {} which is not in the image",
        dest.display()
    );
}

fn recipe(name: &str) -> PathBuf {
    repo_root().join("recipes").join(name)
}

/// The mount points of this mount namespace.
fn mounts() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .map(|l| l.split_whitespace().nth(4).unwrap_or_default().to_string())
        .collect();
    v.sort();
    v
}

fn loop_devices() -> String {
    let o = Command::new("losetup")
        .arg("-a")
        .output()
        .expect("losetup -a");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The counters of the last PLAY RECAP line of ansible output, summed over hosts.
fn recap(output: &str) -> std::collections::BTreeMap<String, u64> {
    let mut m = std::collections::BTreeMap::new();
    let Some(at) = output.rfind("PLAY RECAP") else {
        return m;
    };
    for line in output[at..].lines().skip(1) {
        if !line.contains(" : ") {
            continue;
        }
        for kv in line.split_whitespace() {
            if let Some((k, v)) = kv.split_once('=')
                && let Ok(n) = v.parse::<u64>()
            {
                *m.entry(k.to_string()).or_insert(0) += n;
            }
        }
    }
    m
}

#[test]
fn recipes_share_the_minimal_base() {
    // Same base block -> same bootstrap cache key: one bootstrap for every example image.
    let world = World::new();
    let key = |r: &str| {
        let o = world.webake(&["bake", "--dry-run", &recipe(r).display().to_string()]);
        assert!(o.status.success(), "dry run of {r}: {}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with("bootstrap"))
            .unwrap_or_else(|| panic!("no bootstrap line in the plan of {r}:\n{out}"))
            .to_string();
        line.split_whitespace()
            .skip_while(|w| *w != "key")
            .nth(1)
            .expect("bootstrap key")
            .to_string()
    };
    let minimal = key("debian-minimal.yaml");
    assert_eq!(key("kubernetes-node.yaml"), minimal);
    assert_eq!(key("bastion.yaml"), minimal);
    let o = world.webake(&[
        "validate",
        &recipe("kubernetes-node.yaml").display().to_string(),
        &recipe("bastion.yaml").display().to_string(),
    ]);
    assert!(o.status.success(), "validate: {}", text(&o));
}

#[test]
fn kubernetes_node_roles_take_effect() {
    let world = World::new();
    let raw = world.bake(&recipe("kubernetes-node.yaml"));
    let root = world.extract(&raw);
    assert_packages_without_recommends(&root);
    assert_timezone_logrotate_syslog_and_ulimits(&root);
    assert_unbound_caches_dns(&root);
    assert_network_and_sshd(&root);
    assert_kubelet_prerequisites_and_containerd(&root);

    // The agent (recipe `agent: {install: true}`) and its role.
    assert!(read(&root, "etc/webake/agent.conf").contains("role = kubernetes"));
    assert_enabled(&root, "multi-user.target", "webake-agent.service");
}

fn assert_packages_without_recommends(root: &Path) {
    let pkgs = installed_packages(root);
    for p in [
        "ansible-core", // the shell step: the only thing it does
        "python3-apt",
        "ca-certificates", // base_packages
        "tzdata",
        "logrotate",
        "rsyslog",
        "unbound",
        "dns-root-data", // unbound's trust anchor: only a recommend, installed explicitly
        "containerd",
        "runc",
        "openssh-server",
    ] {
        assert!(
            pkgs.contains(p),
            "package {p} is not installed in the image"
        );
    }
    // No recommends: the full `ansible` collection bundle and docs stay out.
    for p in ["ansible", "python3-argcomplete", "python3-jmespath"] {
        assert!(
            !pkgs.contains(p),
            "package {p} (a recommend) is in the image"
        );
    }
}

fn assert_timezone_logrotate_syslog_and_ulimits(root: &Path) {
    // timezone
    let lt = std::fs::read_link(root.join("etc/localtime")).expect("/etc/localtime is a symlink");
    assert_eq!(lt, Path::new("/usr/share/zoneinfo/Etc/UTC"));
    assert!(root.join("usr/share/zoneinfo/Etc/UTC").is_file());
    assert_eq!(read(root, "etc/timezone"), "Etc/UTC\n");

    // logrotate
    let lr = read(root, "etc/logrotate.conf");
    assert!(
        lr.contains("rotate 7")
            && lr.contains("\ncompress\n")
            && lr.contains("include /etc/logrotate.d"),
        "{lr}"
    );
    assert_enabled(root, "timers.target", "logrotate.timer");

    // syslog
    assert!(read(root, "etc/rsyslog.d/10-webake.conf").contains("$FileCreateMode 0640"));
    assert_enabled(root, "multi-user.target", "rsyslog.service");

    // ulimits
    let lim = read(root, "etc/security/limits.d/90-webake.conf");
    assert!(
        lim.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["*", "-", "nofile", "65536"]),
        "{lim}"
    );
}

/// unbound caches DNS on 127.0.0.1 and forwards to the VPC resolver; resolv.conf points at it.
fn assert_unbound_caches_dns(root: &Path) {
    let ub = read(root, "etc/unbound/unbound.conf.d/webake-cache.conf");
    assert!(
        ub.contains("interface: 127.0.0.1") && ub.contains("forward-addr: 169.254.169.253"),
        "{ub}"
    );
    assert_eq!(
        read(root, "etc/unbound/resolv.conf").lines().nth(1),
        Some("nameserver 127.0.0.1")
    );
    assert!(
        read(root, "etc/tmpfiles.d/unbound-resolv.conf")
            .contains("L+ /etc/resolv.conf - - - - /etc/unbound/resolv.conf")
    );
    assert_enabled(root, "multi-user.target", "unbound.service");
    // The configuration unbound starts with at boot is valid: its start helper installs the
    // trust anchor (from dns-root-data), then unbound-checkconf reads the whole config.
    let o = Command::new("chroot")
        .arg(root)
        .args([
            "sh",
            "-c",
            "/usr/libexec/unbound-helper root_trust_anchor_update && unbound-checkconf",
        ])
        .output()
        .expect("chroot unbound-checkconf");
    assert!(
        o.status.success(),
        "unbound's configuration is invalid: {}",
        text(&o)
    );
}

fn assert_network_and_sshd(root: &Path) {
    // network: networkd DHCP on en*, network-online waits for it (the agent needs it)
    let net = read(root, "etc/systemd/network/10-dhcp.network");
    assert!(
        net.contains("[Match]\nName=en*\n") && net.contains("DHCP=yes"),
        "{net}"
    );
    assert_enabled(root, "multi-user.target", "systemd-networkd.service");
    assert_enabled(
        root,
        "network-online.target",
        "systemd-networkd-wait-online.service",
    );

    // sshd hardening: a drop-in that sshd_config includes
    assert!(read(root, "etc/ssh/sshd_config").contains("Include /etc/ssh/sshd_config.d/*.conf"));
    let ssh = read(root, "etc/ssh/sshd_config.d/50-hardening.conf");
    for l in [
        "PermitRootLogin no",
        "PasswordAuthentication no",
        "AllowTcpForwarding no",
        "X11Forwarding no",
    ] {
        assert!(
            ssh.lines().any(|x| x == l),
            "{l:?} not in the sshd drop-in:\n{ssh}"
        );
    }
    assert_enabled(root, "multi-user.target", "ssh.service");
}

fn assert_kubelet_prerequisites_and_containerd(root: &Path) {
    // kubelet prerequisites
    let mods: Vec<String> = read(root, "etc/modules-load.d/kubernetes.conf")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    assert_eq!(mods, ["overlay", "br_netfilter"]);
    let sysctl = read(root, "etc/sysctl.d/90-kubernetes.conf");
    for l in [
        "net.ipv4.ip_forward = 1",
        "net.bridge.bridge-nf-call-iptables = 1",
    ] {
        assert!(
            sysctl.lines().any(|x| x == l),
            "{l:?} not in sysctl.d:\n{sysctl}"
        );
    }

    // containerd with the systemd cgroup driver
    let ctd = read(root, "etc/containerd/config.toml");
    assert!(ctd.contains("version = 2"), "{ctd}");
    let opts = ctd
        .find("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]")
        .expect("runc options table");
    assert!(ctd[opts..].contains("SystemdCgroup = true"), "{ctd}");
    assert_enabled(root, "multi-user.target", "containerd.service");
}

#[test]
fn staging_dir_is_not_in_the_image() {
    let world = World::new();
    let raw = world.bake(&recipe("kubernetes-node.yaml"));
    let root = world.extract(&raw);
    assert!(
        !root.join("run/webake").exists(),
        "/run/webake is in the image"
    );
    for dir in ["run", "tmp", "var/tmp"] {
        let left: Vec<String> = std::fs::read_dir(root.join(dir))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| {
                        n.starts_with(".ansible")
                            || n.contains("webake")
                            || n.starts_with("ansible")
                    })
                    .collect()
            })
            .unwrap_or_default();
        assert!(left.is_empty(), "/{dir} holds staging leftovers: {left:?}");
    }
    for p in ["root/.ansible", "root/.cache", "usr/sbin/policy-rc.d"] {
        assert!(
            std::fs::symlink_metadata(root.join(p)).is_err(),
            "/{p} is in the image"
        );
    }
    // Nothing of the staged content (playbooks, inventory, extra vars) anywhere in the tree.
    let o = Command::new("grep")
        .args([
            "-rlF",
            "--exclude-dir=proc",
            "--exclude-dir=sys",
            "--exclude-dir=usr",
            "--exclude-dir=dpkg",
        ])
        .arg("webake_image_version")
        .arg(&root)
        .output()
        .expect("grep");
    assert!(
        o.stdout.is_empty(),
        "bake extra vars left in the image: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = Command::new("grep")
        .args([
            "-rlF",
            "--exclude-dir=proc",
            "--exclude-dir=sys",
            "--exclude-dir=dpkg",
        ])
        .arg("composable roles")
        .arg(&root)
        .output()
        .expect("grep");
    assert!(
        o.stdout.is_empty(),
        "a staged playbook is in the image: {}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn kubernetes_node_playbook_is_idempotent() {
    let world = World::new();
    let raw = world.bake(&recipe("kubernetes-node.yaml"));
    let root = world.extract(&raw);
    // The same playbook, again, against the baked (finalized) tree: from the host through the
    // chroot connection, in a private mount and PID namespace with the API filesystems the
    // modules need. Nothing may change.
    let playbook = repo_root().join("examples/ansible/kubernetes-node.yml");
    let inv = world.path().join("inventory");
    std::fs::write(
        &inv,
        format!(
            "image ansible_connection=community.general.chroot ansible_host={} ansible_python_interpreter=/usr/bin/python3\n",
            root.display()
        ),
    )
    .expect("inventory");
    let script = r#"set -e
R="$1"; shift
mount --make-rprivate /
mount -t proc proc "$R/proc"
mount -t tmpfs tmpfs "$R/tmp"
mount -t tmpfs tmpfs "$R/run"
mount -t tmpfs -o mode=755 tmpfs "$R/dev"
for d in null zero random urandom; do touch "$R/dev/$d"; mount --bind "/dev/$d" "$R/dev/$d"; done
exec "$@"
"#;
    let o = Command::new("unshare")
        .args([
            "--mount",
            "--pid",
            "--fork",
            "--kill-child",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(&root)
        .arg("ansible-playbook")
        .arg("-i")
        .arg(&inv)
        .args(["--extra-vars", r#"{"webake_build": true}"#])
        .arg(&playbook)
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_RETRY_FILES_ENABLED", "0")
        .env("ANSIBLE_LOCAL_TEMP", world.path().join("ansible-local"))
        .env("ANSIBLE_REMOTE_TEMP", "/tmp/.ansible-remote")
        .output()
        .expect("run ansible-playbook");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "second run of the playbook failed:\n{}",
        text(&o)
    );
    let r = recap(&out);
    assert!(
        r.get("ok").copied().unwrap_or(0) >= 20,
        "no PLAY RECAP with the roles' tasks:\n{out}"
    );
    assert_eq!(r.get("failed"), Some(&0), "{out}");
    let changed: Vec<&str> = out
        .split("\n\n")
        .filter(|b| b.lines().any(|l| l.starts_with("changed:")))
        .collect();
    assert_eq!(
        r.get("changed"),
        Some(&0),
        "tasks changed on the second run:\n{}",
        changed.join("\n\n")
    );
}

/// A failing task fails the bake: the error names the task, nothing stays mounted, no loop
/// device, no image in the catalog, no scratch directory.
fn assert_failing_playbook_fails_cleanly(world: &World, recipe: &Path) {
    let before_mounts = mounts();
    let before_loops = loop_devices();
    let o = world.webake(&["bake", &recipe.display().to_string()]);
    assert!(
        !o.status.success(),
        "a bake with a failing task succeeded:\n{}",
        text(&o)
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    // The error itself (not only the streamed output before it) names the task.
    let at = err
        .find("error: bake ")
        .unwrap_or_else(|| panic!("no error message:\n{err}"));
    let message = &err[at..];
    assert!(
        message.contains(&format!("TASK [{FAILING_TASK}]")),
        "the error does not name the task:\n{message}"
    );
    assert!(message.contains("fatal:"), "{message}");
    let bakes = world.webake(&["images", "bakes", "--json"]);
    assert!(bakes.status.success(), "{}", text(&bakes));
    let v: serde_json::Value = serde_json::from_slice(&bakes.stdout).expect("bakes json");
    let b = &v.as_array().expect("bakes")[0];
    assert_eq!(b["status"], "failed");
    assert!(
        b["error"]
            .as_str()
            .unwrap_or_default()
            .contains(FAILING_TASK),
        "catalog error: {b}"
    );
    assert_eq!(
        world.images(),
        serde_json::json!([]),
        "a failed bake left an image in the catalog"
    );
    assert_eq!(
        mounts(),
        before_mounts,
        "mounts changed across a failed bake"
    );
    assert_eq!(
        loop_devices(),
        before_loops,
        "loop devices changed across a failed bake"
    );
    let images = world.path().join("data/images");
    let left: Vec<_> = std::fs::read_dir(&images)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "artifacts left behind: {left:?}");
}

/// `DIR/playbooks/fail.yml` (its own directory: a playbook's directory is staged and hashed).
fn failing_playbook(dir: &Path) {
    std::fs::create_dir_all(dir.join("playbooks")).expect("mkdir playbooks");
    std::fs::write(
        dir.join("playbooks/fail.yml"),
        format!(
            "- name: failing play\n  hosts: all\n  gather_facts: false\n  tasks:\n    - name: a task that works\n      ansible.builtin.raw: 'true'\n    - name: {FAILING_TASK}\n      ansible.builtin.raw: 'echo about to fail; exit 3'\n    - name: never reached\n      ansible.builtin.raw: 'touch /never'\n"
        ),
    )
    .expect("write playbook");
}

#[test]
fn failing_task_fails_the_bake_ansible_local() {
    let world = World::new();
    failing_playbook(world.path());
    // The kubernetes-node recipe up to its ansible-local step (the shell step's layer is
    // shared through the cache), then the failing playbook.
    let k8s = std::fs::read_to_string(recipe("kubernetes-node.yaml")).expect("recipe");
    let head = &k8s[..k8s.find("  - ansible-local:").expect("ansible-local step")];
    let body = format!(
        "{head}  - ansible-local:\n      name: failing roles\n      playbook_file: playbooks/fail.yml\noutputs: [raw]\n"
    );
    let r = world.path().join("failing-local.yaml");
    std::fs::write(&r, body).expect("write recipe");
    assert_failing_playbook_fails_cleanly(&world, &r);
}

#[test]
fn failing_task_fails_the_bake_ansible_host() {
    let world = World::new();
    failing_playbook(world.path());
    let k8s = std::fs::read_to_string(recipe("kubernetes-node.yaml")).expect("recipe");
    let head = &k8s[..k8s.find("provisioners:").expect("provisioners")];
    let body = format!(
        "{head}provisioners:\n  - ansible:\n      name: failing roles\n      playbook_file: playbooks/fail.yml\noutputs: [raw]\n"
    );
    let r = world.path().join("failing-host.yaml");
    std::fs::write(&r, body).expect("write recipe");
    assert_failing_playbook_fails_cleanly(&world, &r);
}

#[test]
fn bastion_is_provisioned_from_the_host_without_ansible_in_the_image() {
    let world = World::new();
    let raw = world.bake(&recipe("bastion.yaml"));
    let root = world.extract(&raw);
    let pkgs = installed_packages(&root);
    for p in [
        "python3",
        "python3-apt",
        "rsyslog",
        "logrotate",
        "unbound",
        "tzdata",
    ] {
        assert!(
            pkgs.contains(p),
            "package {p} is not installed in the bastion image"
        );
    }
    for p in ["ansible", "ansible-core", "containerd"] {
        assert!(!pkgs.contains(p), "package {p} is in the bastion image");
    }
    let ssh = read(&root, "etc/ssh/sshd_config.d/50-hardening.conf");
    assert!(ssh.lines().any(|l| l == "AllowTcpForwarding yes"), "{ssh}");
    assert!(
        ssh.lines().any(|l| l == "PasswordAuthentication no"),
        "{ssh}"
    );
    assert!(read(&root, "etc/security/limits.d/90-webake.conf").contains("nofile\t16384"));
    assert!(!root.join("etc/modules-load.d/kubernetes.conf").exists());
    assert_enabled(&root, "multi-user.target", "systemd-networkd.service");
    assert_enabled(
        &root,
        "network-online.target",
        "systemd-networkd-wait-online.service",
    );
    assert_enabled(&root, "multi-user.target", "rsyslog.service");
    // Host mode: the policy-rc.d webake puts in the tree kept apt from starting daemons, and
    // it is gone; nothing the daemons would have written at install time is there.
    assert!(std::fs::symlink_metadata(root.join("usr/sbin/policy-rc.d")).is_err());
    let syslog = root.join("var/log/syslog");
    assert!(
        std::fs::metadata(&syslog)
            .map(|m| m.len() == 0)
            .unwrap_or(true),
        "rsyslogd ran during the bake: /var/log/syslog has content"
    );
    for p in ["root/.ansible", "tmp/.ansible-remote"] {
        assert!(
            std::fs::symlink_metadata(root.join(p)).is_err(),
            "/{p} is in the image"
        );
    }
}

#[test]
fn editing_a_role_changes_the_ansible_step_key() {
    // Roles next to the playbook are staged with it: a change to one must re-run the step
    // (a stale cached layer would silently ship the old role).
    let world = World::new();
    let copy = world.path().join("ansible");
    let o = Command::new("cp")
        .arg("-a")
        .arg(repo_root().join("examples/ansible"))
        .arg(&copy)
        .output()
        .expect("cp");
    assert!(o.status.success(), "{}", text(&o));
    let k8s = std::fs::read_to_string(recipe("kubernetes-node.yaml")).expect("recipe");
    let r = world.path().join("copy.yaml");
    std::fs::write(
        &r,
        k8s.replace(
            "playbook_file: ../examples/ansible/kubernetes-node.yml",
            "playbook_file: ansible/kubernetes-node.yml",
        ),
    )
    .expect("write recipe");
    let keys = || -> Vec<String> {
        let o = world.webake(&["bake", "--dry-run", &r.display().to_string()]);
        assert!(o.status.success(), "dry run: {}", text(&o));
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.trim_start().starts_with("step"))
            .map(|l| {
                l.split_whitespace()
                    .skip_while(|w| *w != "key")
                    .nth(1)
                    .expect("step key")
                    .to_string()
            })
            .collect()
    };
    let before = keys();
    assert_eq!(before.len(), 2, "{before:?}");
    let tasks = copy.join("roles/ulimits/defaults/main.yml");
    let text_before = std::fs::read_to_string(&tasks).expect("role defaults");
    std::fs::write(&tasks, text_before.replace("65536", "65535")).expect("edit role");
    let after = keys();
    assert_eq!(
        after[0], before[0],
        "the shell step does not read the roles"
    );
    assert_ne!(
        after[1], before[1],
        "editing a role did not change the ansible step's key"
    );
}
