//! Shared fixtures for the CLI integration tests. Everything a test creates lives in a
//! TempDir under CARGO_TARGET_TMPDIR and is removed on drop; the bootstrap and layer caches
//! are shared between tests (they are designed for concurrent use) so the base is
//! bootstrapped once per machine.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BASE: &str = "base:
  mmdebstrap:
    suite: bookworm
    variant: apt
    include:
      - linux-image-cloud-amd64
      - systemd-sysv
      - udev
      - openssh-server
      - ifupdown
      - isc-dhcp-client
";

/// Tests that bake need root, mount namespaces and the host tools: fail loudly otherwise.
pub fn require_bake_capabilities() {
    let uid = unsafe_free_uid();
    assert_eq!(
        uid, 0,
        "this test bakes images (chroot, mount namespaces): run it as root (CI runs as root)"
    );
    for (tool, pkg) in [
        ("mmdebstrap", "mmdebstrap"),
        ("mkfs.ext4", "e2fsprogs"),
        ("sfdisk", "fdisk"),
        ("mkfs.vfat", "dosfstools"),
        ("mcopy", "mtools"),
        ("grub-mkimage", "grub-efi-amd64-bin"),
        ("qemu-img", "qemu-utils"),
        ("debugfs", "e2fsprogs"),
    ] {
        assert!(
            which(tool),
            "missing host tool `{tool}`: apt-get install {pkg} (or run scripts/setup.sh --test)"
        );
    }
}

pub fn require_qemu() {
    assert!(
        which("qemu-system-x86_64"),
        "missing `qemu-system-x86_64` for boot tests: apt-get install qemu-system-x86 ovmf"
    );
    assert!(
        Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd").exists()
            || Path::new("/usr/share/OVMF/OVMF_CODE.fd").exists(),
        "missing UEFI firmware: apt-get install ovmf"
    );
}

fn unsafe_free_uid() -> u32 {
    let out = Command::new("id").arg("-u").output().expect("run id -u");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(u32::MAX)
}

pub fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The parts of a cache directory the tests share.
pub const SHARED: [&str; 3] = ["bootstrap", "layers", "locks"];

pub fn shared_cache() -> PathBuf {
    let p = Path::new(env!("CARGO_TARGET_TMPDIR")).join("webake-cache");
    for d in SHARED {
        std::fs::create_dir_all(p.join(d)).unwrap();
    }
    p
}

impl Env {
    /// An env whose caches are its own, nothing shared with other tests (`which`: the
    /// entries of [`SHARED`] to make private).
    pub fn isolated(which: &[&str]) -> Self {
        let env = Self::new();
        for d in which.iter().chain(["locks"].iter()) {
            let p = env.cache.join(d);
            std::fs::remove_file(&p).unwrap();
            std::fs::create_dir(&p).unwrap();
        }
        env
    }
}

/// One test's world: its own data dir, catalog and scratch, the shared caches.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub cache: PathBuf,
    pub catalog: PathBuf,
}

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("webake-it-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        let data = dir.path().join("data");
        let cache = dir.path().join("cache");
        std::fs::create_dir_all(&cache).unwrap();
        let shared = shared_cache();
        // The entry locks with the entries: one cache, one set of locks (a base or layer being
        // built is waited for, never built twice or taken for a half-written entry).
        for d in SHARED {
            std::os::unix::fs::symlink(shared.join(d), cache.join(d)).unwrap();
        }
        let catalog = data.join("catalog.db");
        Self {
            dir,
            data,
            cache,
            catalog,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_webake"));
        c.arg("--data-dir")
            .arg(&self.data)
            .arg("--cache-dir")
            .arg(&self.cache)
            .arg("--catalog")
            .arg(&self.catalog);
        c.current_dir(repo_root());
        let agent = Path::new(env!("CARGO_BIN_EXE_webake")).with_file_name("webake-agent");
        if agent.is_file() {
            c.env("WEBAKE_AGENT_BINARY", agent);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run webake")
    }

    /// Write a recipe next to this env (files/ for file provisioners are created by the caller).
    pub fn recipe(&self, name: &str, body: &str) -> PathBuf {
        let p = self.path().join(format!("{name}.yaml"));
        std::fs::write(&p, body).unwrap();
        p
    }

    pub fn images_json(&self) -> serde_json::Value {
        let o = self.run(&["images", "list", "--json"]);
        assert!(o.status.success(), "images list failed: {}", text(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    pub fn scratch_entries(&self) -> Vec<String> {
        std::fs::read_dir(self.cache.join("tmp"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// `c` with dummy AWS credentials, AWS at `endpoint`, and nothing from the host's AWS config
/// or environment (a private, empty config home under `home`).
pub fn with_aws_env(mut c: Command, home: &Path, endpoint: &str) -> Command {
    for k in [
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL_EC2",
        "AWS_ENDPOINT_URL_EBS",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "WEBAKE_AWS_ENDPOINT_URL",
    ] {
        c.env_remove(k);
    }
    let home = home.join("aws-home");
    std::fs::create_dir_all(&home).unwrap();
    c.env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_CONFIG_FILE", home.join("config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join("credentials"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ENDPOINT_URL", endpoint);
    c
}

pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Mount points of this mount namespace (the host's, for tests).
pub fn mounts() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().nth(4).unwrap_or_default().to_string())
        .collect();
    v.sort();
    v
}

pub fn loop_devices() -> String {
    let o = Command::new("losetup")
        .arg("-a")
        .output()
        .expect("losetup -a");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Processes whose command line mentions `needle` (e.g. a test's own cache path).
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.parse::<u32>().is_err() || name == std::process::id().to_string() {
                continue;
            }
            if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
                let s = String::from_utf8_lossy(&cmd).replace('\0', " ");
                if s.contains(needle) {
                    v.push(format!("{name}: {s}"));
                }
            }
        }
    }
    v
}

/// Sandbox helpers whose bake is gone (re-parented to PID 1): a killed bake must not leave
/// any, whatever their command line says.
pub fn orphaned_sandbox_helpers() -> Vec<String> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let ppid = std::fs::read_to_string(e.path().join("status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("PPid:").map(|p| p.trim().to_string()))
            });
        if cmd.contains("__webake-sandbox") && ppid.as_deref() == Some("1") {
            v.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
        }
    }
    v
}

/// Extract the root filesystem of a raw disk into `dir/root` (offline, debugfs).
pub fn extract_root(raw: &Path, dir: &Path) -> PathBuf {
    let start = root_offset(raw);
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let o = Command::new("debugfs")
        .arg("-R")
        .arg(format!("rdump / {}", root.display()))
        .arg(format!("{}?offset={start}", raw.display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "debugfs rdump: {}", text(&o));
    root
}

pub fn partitions(raw: &Path) -> serde_json::Value {
    let o = Command::new("sfdisk")
        .arg("--json")
        .arg(raw)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

pub fn root_offset(raw: &Path) -> u64 {
    partition_offset(raw, "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709")
}

/// The byte offset of the EFI system partition.
pub fn esp_offset(raw: &Path) -> u64 {
    partition_offset(raw, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B")
}

/// The byte offset of the first partition of GPT type `ty`.
pub fn partition_offset(raw: &Path, ty: &str) -> u64 {
    let v = partitions(raw);
    let p = v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["type"].as_str().unwrap().eq_ignore_ascii_case(ty))
        .unwrap_or_else(|| panic!("no partition of type {ty} on {}", raw.display()));
    p["start"].as_u64().unwrap() * 512
}

/// `debugfs -R "cat PATH"` from the root filesystem of a raw disk.
pub fn cat_in_image(raw: &Path, path: &str) -> Option<String> {
    let o = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(format!("{}?offset={}", raw.display(), root_offset(raw)))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    if err.contains("File not found") {
        return None;
    }
    Some(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// `debugfs -R "dump PATH OUT"` from the root filesystem of a raw disk (the file's bytes,
/// binary safe). Returns debugfs's output, for messages.
pub fn dump_from_image(raw: &Path, path: &str, out: &Path) -> Output {
    Command::new("debugfs")
        .arg("-R")
        .arg(format!("dump {path} {}", out.display()))
        .arg(format!("{}?offset={}", raw.display(), root_offset(raw)))
        .output()
        .unwrap()
}

pub fn sha256sum(p: &Path) -> String {
    let o = Command::new("sha256sum").arg(p).output().unwrap();
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The path of an image's artifact in `format` (`raw`, `qcow2`), from the `image` object of
/// `webake bake --json` or `webake images show --json`.
pub fn artifact_path(image: &serde_json::Value, format: &str) -> String {
    image["artifacts"]
        .as_array()
        .expect("artifacts")
        .iter()
        .find(|a| a["format"] == format)
        .unwrap_or_else(|| panic!("no {format} artifact in {image}"))["path"]
        .as_str()
        .expect("artifact path")
        .to_string()
}

/// `git -C dir ARGS` with a fixed identity and no system or user config; panics with its
/// output on failure. Returns stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let o = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .expect("run git");
    assert!(o.status.success(), "git {args:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}
