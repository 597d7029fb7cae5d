//! End to end: the built `webake-agent` binary against the loopback fake IMDS, on a temp root.
//! Never talks to anything but 127.0.0.1: every run passes --endpoint or sets
//! AWS_EC2_METADATA_SERVICE_ENDPOINT to the fake.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::{Config, EXPECTED_HOSTNAME, FakeImds};

const DEBIAN_HOSTS: &str = "127.0.0.1\tlocalhost\n127.0.1.1\tdebian\n\n# The following lines are desirable for IPv6 capable hosts\n::1     localhost ip6-localhost ip6-loopback\nff02::1 ip6-allnodes\nff02::2 ip6-allrouters\n";

struct Root {
    dir: tempfile::TempDir,
}

impl Root {
    /// An image-like root: /etc/hosts as Debian ships it, the agent config with a role.
    fn new(config: Option<&str>) -> Root {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("etc/webake")).unwrap();
        fs::write(dir.path().join("etc/hosts"), DEBIAN_HOSTS).unwrap();
        if let Some(config) = config {
            fs::write(dir.path().join("etc/webake/agent.conf"), config).unwrap();
        }
        Root { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn hostname(&self) -> Option<String> {
        fs::read_to_string(self.path().join("etc/hostname")).ok()
    }

    fn hosts(&self) -> String {
        fs::read_to_string(self.path().join("etc/hosts")).unwrap()
    }
}

fn agent() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_webake-agent"));
    // Nothing from the test environment may point the agent elsewhere.
    cmd.env_remove("AWS_EC2_METADATA_SERVICE_ENDPOINT")
        .env_remove("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE")
        .env_remove("JOURNAL_STREAM");
    cmd
}

fn run(root: &Root, endpoint: &str, extra: &[&str]) -> Output {
    let mut cmd = agent();
    cmd.arg("--root")
        .arg(root.path())
        .arg("--no-sethostname")
        .arg("--endpoint")
        .arg(endpoint)
        .args(extra);
    cmd.output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn expected_hosts(hostname: &str) -> String {
    DEBIAN_HOSTS.replace("127.0.1.1\tdebian", &format!("127.0.1.1 {hostname}"))
}

#[test]
fn sets_hostname_files_from_imds() {
    let fake = FakeImds::start(Config::default());
    let root = Root::new(Some("# baked by webake\nrole = kubernetes\n"));
    let out = run(&root, &fake.url(), &[]);
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert_eq!(
        root.hostname().as_deref(),
        Some(&*format!("{EXPECTED_HOSTNAME}\n"))
    );
    assert_eq!(root.hosts(), expected_hosts(EXPECTED_HOSTNAME));

    // the log says what was queried and what was set
    for line in [
        "webake-agent: info: querying instance metadata at http://127.0.0.1:",
        "GET /latest/meta-data/instance-id: i-07a38e448ad62b4da",
        "GET /latest/meta-data/placement/region: eu-west-1",
        "GET /latest/meta-data/tags/instance/Environment: prod",
        &format!(
            "hostname {EXPECTED_HOSTNAME} from template {{role}}-{{env}}-{{region_compact}}-{{instance_id_short}}"
        ),
        "updated ",
        "not setting the kernel hostname (--no-sethostname)",
    ] {
        assert!(log.contains(line), "missing {line:?} in:\n{log}");
    }
    assert!(
        !log.contains("AQAEAFAKE"),
        "token leaked into the log:\n{log}"
    );

    // a second boot changes nothing
    let out = run(&root, &fake.url(), &[]);
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(
        log.contains("unchanged ") && !log.contains("updated "),
        "{log}"
    );
    assert_eq!(root.hosts(), expected_hosts(EXPECTED_HOSTNAME));
}

#[test]
fn endpoint_from_the_environment() {
    let fake = FakeImds::start(Config::default());
    let root = Root::new(None);
    let out = agent()
        .args(["--no-sethostname", "--role", "kubernetes", "--root"])
        .arg(root.path())
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", fake.url())
        // the explicit endpoint wins over the mode
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "IPv6")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        root.hostname().as_deref(),
        Some(&*format!("{EXPECTED_HOSTNAME}\n"))
    );
}

#[test]
fn role_tag_overrides_the_image_role() {
    let fake = FakeImds::start(Config {
        tags: Some(vec![
            ("Environment".into(), "Staging".into()),
            ("Role".into(), "Ingress_GW".into()),
        ]),
        ..Config::default()
    });
    let root = Root::new(Some("role = kubernetes\n"));
    let out = run(&root, &fake.url(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        root.hostname().as_deref(),
        Some("ingress-gw-staging-euwest1-07a38e448ad62b4da\n")
    );
    assert!(stderr(&out).contains("overrides the image's role \"kubernetes\""));
}

#[test]
fn tags_disabled_drops_the_env_segment_and_warns() {
    let fake = FakeImds::start(Config::tags_disabled());
    let root = Root::new(Some("role = kubernetes\n"));
    let out = run(&root, &fake.url(), &[]);
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert_eq!(
        root.hostname().as_deref(),
        Some("kubernetes-euwest1-07a38e448ad62b4da\n")
    );
    assert!(
        log.contains("warning: instance metadata tags are not exposed"),
        "{log}"
    );
    assert!(log.contains("the {env} segment is dropped"), "{log}");
}

#[test]
fn template_and_role_from_the_command_line() {
    let fake = FakeImds::start(Config::default());
    let root = Root::new(Some("role = kubernetes\ntemplate = {role}-{env}\n"));
    let out = run(
        &root,
        &fake.url(),
        &[
            "--role",
            "bastion",
            "--template",
            "{role}-{region}-{instance_id}",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        root.hostname().as_deref(),
        Some("bastion-eu-west-1-i-07a38e448ad62b4da\n")
    );
}

#[test]
fn dry_run_prints_the_hostname_and_writes_nothing() {
    let fake = FakeImds::start(Config::default());
    let root = Root::new(Some("role = kubernetes\n"));
    let out = run(&root, &fake.url(), &["--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{EXPECTED_HOSTNAME}\n")
    );
    assert!(stderr(&out).contains("dry run: would write"));
    assert_eq!(root.hostname(), None);
    assert_eq!(root.hosts(), DEBIAN_HOSTS);
}

#[test]
fn absent_imds_exits_zero_and_changes_nothing() {
    let url = support::closed_port_url();
    let root = Root::new(Some("role = kubernetes\n"));
    let started = Instant::now();
    let out = run(&root, &url, &["--deadline", "10"]);
    let log = stderr(&out);
    assert!(started.elapsed() < Duration::from_secs(10 + 3), "{log}");
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(
        log.contains("warning: instance metadata unavailable, hostname left unchanged"),
        "{log}"
    );
    assert_eq!(root.hostname(), None);
    assert_eq!(root.hosts(), DEBIAN_HOSTS);
    // retries are logged as info: off EC2 there is exactly one warning, no error
    let warnings = log.lines().filter(|l| l.contains(": warning: ")).count();
    assert_eq!(warnings, 1, "{log}");
    assert!(!log.contains(": error: "), "{log}");
}

#[test]
fn absent_imds_with_fail_exits_3() {
    let url = support::closed_port_url();
    let root = Root::new(Some("role = kubernetes\non_failure = fail\n"));
    let out = run(&root, &url, &[]);
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{log}");
    assert!(
        log.contains("error: instance metadata unavailable: cannot reach"),
        "{log}"
    );
    assert_eq!(root.hostname(), None);

    let root = Root::new(Some("role = kubernetes\n"));
    let out = run(&root, &url, &["--fail"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}

#[test]
fn slow_imds_gives_up_within_the_deadline_and_falls_back() {
    let fake = FakeImds::start(Config {
        delay: Duration::from_secs(60),
        ..Config::default()
    });
    let root = Root::new(Some("role = kubernetes\ndeadline_seconds = 2\n"));
    let started = Instant::now();
    let out = run(&root, &fake.url(), &[]);
    let elapsed = started.elapsed();
    let log = stderr(&out);
    assert!(elapsed < Duration::from_secs(2 + 3), "{elapsed:?}\n{log}");
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains("deadline of 2 s reached"), "{log}");
    assert!(log.contains("hostname left unchanged"), "{log}");
    assert_eq!(root.hostname(), None);
    assert_eq!(root.hosts(), DEBIAN_HOSTS);
}

#[test]
fn config_errors_exit_2_with_file_and_line() {
    let root = Root::new(Some("role = kubernetes\ntemplate = {role}-{environment}\n"));
    // --check never touches the network; the endpoint is a closed port anyway
    let out = run(&root, &support::closed_port_url(), &["--check"]);
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert!(
        log.contains("etc/webake/agent.conf:2: template: unknown placeholder {environment}"),
        "{log}"
    );

    let root = Root::new(None);
    let out = run(&root, &support::closed_port_url(), &["--bogus"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unknown argument \"--bogus\""));

    let out = agent()
        .args(["--check", "--root"])
        .arg(root.path())
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "IPv5")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("use IPv4 or IPv6"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn check_prints_the_resolved_settings() {
    let root = Root::new(Some("role = kubernetes\n"));
    let out = agent()
        .args(["--check", "--root"])
        .arg(root.path())
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "IPv6")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("role: kubernetes"), "{stdout}");
    assert!(stdout.contains("on_failure: continue"), "{stdout}");
    assert!(stdout.contains("template: {role}-{env}-{region_compact}-{instance_id_short}"));
    assert!(
        stdout
            .contains("endpoint: http://[fd00:ec2::254] (AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE)"),
        "{stdout}"
    );
}

/// The real sethostname(2) path, in a private UTS namespace so the host keeps its name.
/// Needs root (CAP_SYS_ADMIN) and util-linux `unshare`; CI runs as root. Fails, never skips.
#[test]
fn sets_the_kernel_hostname_in_a_private_uts_namespace() {
    let fake = FakeImds::start(Config::default());
    let root = Root::new(Some("role = kubernetes\n"));
    let before = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let out = Command::new("unshare")
        .args([
            "--uts",
            "--",
            "sh",
            "-c",
            r#""$@" && cat /proc/sys/kernel/hostname"#,
            "sh",
        ])
        .arg(env!("CARGO_BIN_EXE_webake-agent"))
        .arg("--root")
        .arg(root.path())
        .arg("--endpoint")
        .arg(fake.url())
        .env_remove("AWS_EC2_METADATA_SERVICE_ENDPOINT")
        .env_remove("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE")
        .env_remove("JOURNAL_STREAM")
        .output()
        .expect("run unshare (util-linux)");
    let log = stderr(&out);
    assert!(
        out.status.success(),
        "unshare --uts + agent failed (this test needs root): {log}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{EXPECTED_HOSTNAME}\n")
    );
    assert!(
        log.contains(&format!("set kernel hostname to {EXPECTED_HOSTNAME}")),
        "{log}"
    );
    assert_eq!(
        root.hostname().as_deref(),
        Some(&*format!("{EXPECTED_HOSTNAME}\n"))
    );
    assert_eq!(
        fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        before,
        "the host's hostname must not change"
    );
}

#[test]
fn systemd_unit_matches_the_documented_install() {
    let unit_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("systemd/webake-agent.service");
    let unit = fs::read_to_string(&unit_path).unwrap();
    for line in [
        "Type=oneshot",
        "RemainAfterExit=yes",
        "Wants=network-online.target",
        "After=network-online.target",
        "ExecStart=/usr/local/bin/webake-agent",
        "WantedBy=multi-user.target",
    ] {
        assert!(
            unit.lines().any(|l| l.trim() == line),
            "unit lacks {line:?}"
        );
    }
    assert!(
        !unit
            .lines()
            .any(|l| l.trim_start().starts_with("ProtectHostname=")),
        "ProtectHostname would give the agent a private UTS namespace: sethostname would not stick"
    );
    let timeout: u64 = unit
        .lines()
        .find_map(|l| l.trim().strip_prefix("TimeoutStartSec="))
        .expect("TimeoutStartSec is set")
        .parse()
        .unwrap();
    assert!(
        Duration::from_secs(timeout)
            > webake_agent::imds::DEFAULT_DEADLINE + Duration::from_secs(5),
        "the agent's own deadline must fire before systemd kills it"
    );
    let readme =
        fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    assert!(readme.contains("/usr/local/bin/webake-agent"));
    assert!(readme.contains("/etc/systemd/system/webake-agent.service"));
}

/// `systemd-analyze verify` on the shipped unit, with ExecStart pointed at the built binary.
#[test]
fn systemd_unit_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let unit = fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("systemd/webake-agent.service"),
    )
    .unwrap()
    .replace(
        "/usr/local/bin/webake-agent",
        env!("CARGO_BIN_EXE_webake-agent"),
    );
    let path = dir.path().join("webake-agent.service");
    fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("run systemd-analyze (systemd package)");
    let messages = String::from_utf8_lossy(&out.stderr);
    // Only messages about our unit count; the host's own units may be noisy in a container.
    let ours: Vec<&str> = messages
        .lines()
        .filter(|l| l.contains("webake-agent.service"))
        .collect();
    assert!(ours.is_empty(), "systemd-analyze verify:\n{messages}");
}
