//! `webake run` end to end: a real bake of recipes/debian-minimal.yaml, local publish, and a
//! rollout into a git repository in a temp dir (bare remote + kops InstanceGroup); then a second
//! run with unchanged inputs that skips the bake; then exit codes of failing stages.
//!
//! Needs root (the bake uses chroot and mount namespaces) and the host tools of
//! scripts/setup.sh --test. The bootstrap and layer cache is shared by every integration test
//! (`$CARGO_TARGET_TMPDIR/webake-cache`), so the base is bootstrapped once per machine.

mod common;
use common::git;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FAMILY: &str = "debian-12-minimal";
const BRANCH: &str = "webake/debian-12-minimal";
const OLD_IMAGE: &str =
    "099720109477/ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-20240101";

const INSTANCE_GROUPS: &str = "\
# Nodes of the test cluster (kops).
apiVersion: kops.k8s.io/v1alpha2
kind: InstanceGroup
metadata:
  name: nodes-a
  labels:
    kops.k8s.io/cluster: test.k8s.local
spec:
  role: Node
  image: 099720109477/ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-20240101 # pinned
  machineType: t3.medium
  minSize: 1
  maxSize: 3
";

const ROLLOUT_CONFIG: &str = "\
rules:
  - kind: instance-group
    family: \"debian-12-*\"
    roles: [Node]
";

fn require_root_and_tools() {
    let out = Command::new("id").arg("-u").output().expect("run id -u");
    let uid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        uid, "0",
        "`webake run` bakes an image (chroot, mount namespaces): run this test as root (CI runs as root)"
    );
    for (tool, pkg) in [
        ("mmdebstrap", "mmdebstrap"),
        ("mkfs.ext4", "e2fsprogs"),
        ("sfdisk", "fdisk"),
        ("mkfs.vfat", "dosfstools"),
        ("mcopy", "mtools"),
        ("qemu-img", "qemu-utils"),
        ("git", "git"),
    ] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        assert!(
            found,
            "missing host tool `{tool}`: apt-get install {pkg} (or run scripts/setup.sh --test)"
        );
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A bare "remote" cluster repository with one kops InstanceGroup and a rollout config.
fn cluster_repo(dir: &Path) -> PathBuf {
    let bare = dir.join("cluster.git");
    let work = dir.join("cluster-work");
    std::fs::create_dir_all(&bare).unwrap();
    git(&bare, &["init", "--bare", "--initial-branch=main"]);
    git(
        dir,
        &["clone", bare.to_str().unwrap(), work.to_str().unwrap()],
    );
    git(&work, &["checkout", "-B", "main"]);
    std::fs::create_dir_all(work.join("clusters/test.k8s.local")).unwrap();
    std::fs::write(
        work.join("clusters/test.k8s.local/instancegroups.yaml"),
        INSTANCE_GROUPS,
    )
    .unwrap();
    std::fs::create_dir_all(work.join(".webake")).unwrap();
    std::fs::write(work.join(".webake/rollout.yaml"), ROLLOUT_CONFIG).unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-m", "cluster"]);
    git(&work, &["push", "origin", "main"]);
    bare
}

struct World {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    data: PathBuf,
    catalog: PathBuf,
    cache: PathBuf,
    cluster: PathBuf,
}

impl World {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("webake-run-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        let path = dir.path().to_path_buf();
        let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("webake-cache");
        std::fs::create_dir_all(&cache).unwrap();
        Self {
            data: path.join("data"),
            catalog: path.join("data/catalog.db"),
            cluster: cluster_repo(&path),
            cache,
            dir: path,
            _dir: dir,
        }
    }

    fn webake(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_webake"))
            .arg("--data-dir")
            .arg(&self.data)
            .arg("--catalog")
            .arg(&self.catalog)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(args)
            .current_dir(repo_root())
            .env_remove("WEBAKE_LOG_FORMAT")
            .output()
            .expect("run webake")
    }

    fn result_file(&self, name: &str) -> PathBuf {
        self.dir.join("results").join(name)
    }

    fn run_recipe(&self, extra: &[&str]) -> Output {
        let recipe = repo_root().join("recipes/debian-minimal.yaml");
        let mut args = vec![
            "run",
            recipe.to_str().unwrap(),
            "--no-test",
            "--publish",
            "local",
            "--json",
        ];
        args.extend_from_slice(extra);
        self.webake(&args)
    }

    fn images(&self) -> Vec<serde_json::Value> {
        let o = self.webake(&["images", "list", "--json"]);
        assert!(o.status.success(), "images list: {}", text(&o));
        serde_json::from_slice::<Vec<serde_json::Value>>(&o.stdout).unwrap()
    }
}

fn summary(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("summary JSON on stdout: {e}\n{}", text(o)))
}

fn statuses(s: &serde_json::Value) -> Vec<(String, String)> {
    s["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["stage"].as_str().unwrap().to_string(),
                r["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// Where `run` writes its results for pipelines.
struct ResultFiles {
    image_id: PathBuf,
    ami_ids: PathBuf,
    pr_url: PathBuf,
}

impl ResultFiles {
    fn in_world(w: &World) -> Self {
        Self {
            image_id: w.result_file("image-id"),
            ami_ids: w.result_file("ami-ids.json"),
            pr_url: w.result_file("pr-url"),
        }
    }

    /// The options of a run into `cluster` that write these files.
    fn args<'a>(&'a self, cluster: &'a str) -> [&'a str; 8] {
        [
            "--cluster-repo",
            cluster,
            "--image-id-file",
            self.image_id.to_str().unwrap(),
            "--ami-ids-file",
            self.ami_ids.to_str().unwrap(),
            "--pr-url-file",
            self.pr_url.to_str().unwrap(),
        ]
    }
}

#[test]
fn run_bakes_publishes_rolls_out_then_skips_unchanged_inputs() {
    require_root_and_tools();
    let w = World::new();
    let cluster = w.cluster.to_str().unwrap().to_string();
    let results = ResultFiles::in_world(&w);
    let files = results.args(&cluster);

    // 1. The whole pipeline: bake, (no test), publish locally, roll out.
    let s = first_run_does_every_stage(&w, &files, &results);
    let image_id = s["image"]["id"].as_str().unwrap().to_string();
    let version = s["image"]["version"].as_str().unwrap();
    assert_branch_pushed_with_only_the_new_reference(&w, version);
    assert_catalog_holds_one_image_published_locally(&w, &image_id);

    // 2. Unchanged inputs: the bake is skipped and says why; the rest runs idempotently.
    second_run_skips_the_bake(&w, &files, &results, &s);
    human_summary_names_the_skip(&w, &image_id);

    // 3. Exit codes per failing stage.
    failing_stages_exit_with_their_codes(&w, &cluster);
}

/// Bake, (no test), publish locally, roll out: the summary, the result files and the
/// progress lines. Returns the summary.
fn first_run_does_every_stage(
    w: &World,
    files: &[&str],
    results: &ResultFiles,
) -> serde_json::Value {
    let started = std::time::Instant::now();
    let o = w.run_recipe(files);
    eprintln!("first run: {:.1}s", started.elapsed().as_secs_f64());
    assert!(o.status.success(), "first run: {}", text(&o));
    let s = summary(&o);
    assert_eq!(s["ok"], true, "{s:#}");
    assert_eq!(s["exit_code"], 0);
    assert_eq!(s["bake_skipped"], false);
    assert_eq!(s["family"], FAMILY);
    assert_eq!(
        statuses(&s),
        pairs(&[
            ("bake", "done"),
            ("test", "skipped"),
            ("publish", "done"),
            ("rollout", "done")
        ])
    );
    let image_id = s["image"]["id"].as_str().unwrap().to_string();
    assert!(image_id.starts_with("img-"), "{s:#}");
    assert_eq!(s["image"]["inputs_digest"], s["inputs_digest"]);
    assert_eq!(s["ami_ids"], serde_json::json!({}));
    assert_eq!(s["rollout"]["branch"], BRANCH);
    assert_eq!(s["rollout"]["status"], "created");
    assert_eq!(s["rollout"]["base_branch"], "main");
    assert_eq!(
        s["rollout"]["changed_files"],
        serde_json::json!(["clusters/test.k8s.local/instancegroups.yaml"])
    );
    // Result files for pipelines.
    assert_eq!(
        std::fs::read_to_string(&results.image_id).unwrap(),
        image_id
    );
    assert_eq!(std::fs::read_to_string(&results.ami_ids).unwrap(), "{}");
    assert_eq!(std::fs::read_to_string(&results.pr_url).unwrap(), "");
    // Line-oriented progress on stderr.
    let err = String::from_utf8_lossy(&o.stderr);
    for line in [
        "==> run: bake",
        "<== run: bake done",
        "<== run: test skipped",
        "<== run: publish done",
        "<== run: rollout done",
    ] {
        assert!(err.contains(line), "missing {line:?} in stderr:\n{err}");
    }
    s
}

/// The branch was pushed to the bare remote with the new reference, nothing else changed.
fn assert_branch_pushed_with_only_the_new_reference(w: &World, version: &str) {
    let new_ref = format!("webake/debian-minimal:{version}");
    let pushed = git(
        &w.cluster,
        &[
            "show",
            &format!("{BRANCH}:clusters/test.k8s.local/instancegroups.yaml"),
        ],
    );
    assert_eq!(
        pushed,
        INSTANCE_GROUPS.replace(OLD_IMAGE, &new_ref),
        "only the reference changes"
    );
    let main = git(
        &w.cluster,
        &["show", "main:clusters/test.k8s.local/instancegroups.yaml"],
    );
    assert_eq!(main, INSTANCE_GROUPS, "main is untouched");
}

/// The catalog: one image, published locally.
fn assert_catalog_holds_one_image_published_locally(w: &World, image_id: &str) {
    let imgs = w.images();
    assert_eq!(imgs.len(), 1, "{imgs:#?}");
    assert_eq!(imgs[0]["id"], image_id);
    assert_eq!(imgs[0]["family"], FAMILY);
    let pubs = imgs[0]["publications"].as_array().unwrap();
    assert!(
        pubs.iter().any(|p| p["target"] == "local"),
        "published locally: {pubs:#?}"
    );
}

/// Unchanged inputs (`first` is the first run's summary): the bake is skipped and says why;
/// publish and rollout run again and change nothing.
fn second_run_skips_the_bake(
    w: &World,
    files: &[&str],
    results: &ResultFiles,
    first: &serde_json::Value,
) {
    let image_id = first["image"]["id"].as_str().unwrap();
    std::fs::remove_file(&results.image_id).unwrap();
    let started = std::time::Instant::now();
    let o = w.run_recipe(files);
    eprintln!("second run: {:.1}s", started.elapsed().as_secs_f64());
    assert!(o.status.success(), "second run: {}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let digest = first["inputs_digest"].as_str().unwrap();
    let why = format!(
        "skipping the bake: image {image_id} was baked from the same inputs (digest {digest})"
    );
    assert!(err.contains(&why), "missing {why:?} in stderr:\n{err}");
    assert!(!err.contains("==> run: bake"), "no bake started:\n{err}");
    let s2 = summary(&o);
    assert_eq!(s2["ok"], true);
    assert_eq!(s2["bake_skipped"], true);
    assert_eq!(s2["image"]["id"], image_id);
    assert_eq!(
        statuses(&s2),
        pairs(&[
            ("bake", "skipped"),
            ("test", "skipped"),
            ("publish", "done"),
            ("rollout", "done")
        ])
    );
    assert_eq!(
        s2["rollout"]["status"], "unchanged",
        "the branch already holds this change: {s2:#}"
    );
    assert_eq!(
        std::fs::read_to_string(&results.image_id).unwrap(),
        image_id
    );
    assert_eq!(w.images().len(), 1, "still one image in the catalog");
}

/// Human summary (no --json) names the skip too.
fn human_summary_names_the_skip(w: &World, image_id: &str) {
    let recipe = repo_root().join("recipes/debian-minimal.yaml");
    let o = w.webake(&[
        "run",
        recipe.to_str().unwrap(),
        "--no-test",
        "--no-rollout",
        "--publish",
        "none",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("run {}: ok", recipe.display())),
        "{out}"
    );
    assert!(
        out.contains(&format!("image {image_id} was baked from the same inputs")),
        "{out}"
    );
}

/// A rollout into a repository that does not exist is 5, with a summary naming the stage;
/// options that cannot work are 2, before any bake.
fn failing_stages_exit_with_their_codes(w: &World, cluster: &str) {
    let missing = w.dir.join("no-such-repo");
    let o = w.run_recipe(&["--cluster-repo", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    let s3 = summary(&o);
    assert_eq!(s3["ok"], false);
    assert_eq!(s3["exit_code"], 5);
    assert_eq!(s3["failed_stage"], "rollout");
    assert_eq!(
        statuses(&s3),
        pairs(&[
            ("bake", "skipped"),
            ("test", "skipped"),
            ("publish", "done"),
            ("rollout", "failed")
        ])
    );

    let o = w.run_recipe(&["--no-rollout", "--", "--region", "eu-west-1"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "AWS options without --publish aws: {}",
        text(&o)
    );
    let o = w.run_recipe(&["--cluster-repo", cluster, "--github", "not-a-slug"]);
    assert_eq!(o.status.code(), Some(2), "bad --github: {}", text(&o));
    assert_eq!(w.images().len(), 1, "still one image in the catalog");
}

/// With the test stage: the image is booted under qemu (UEFI) once; a second run reuses the image
/// and skips the test because it already passed.
#[test]
fn run_boot_tests_the_image_once() {
    require_root_and_tools();
    let qemu = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("qemu-system-x86_64").is_file()))
        .unwrap_or(false);
    assert!(
        qemu,
        "missing `qemu-system-x86_64` for the boot test: apt-get install qemu-system-x86 qemu-utils ovmf"
    );
    assert!(
        Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd").is_file()
            || Path::new("/usr/share/OVMF/OVMF_CODE.fd").is_file(),
        "missing UEFI firmware: apt-get install ovmf"
    );
    let w = World::new();
    let recipe = repo_root().join("recipes/debian-minimal.yaml");
    let args = [
        "run",
        recipe.to_str().unwrap(),
        "--publish",
        "none",
        "--no-rollout",
        "--json",
    ];

    let started = std::time::Instant::now();
    let o = w.webake(&args);
    eprintln!(
        "run with the boot test: {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert!(o.status.success(), "{}", text(&o));
    let s = summary(&o);
    assert_eq!(
        statuses(&s),
        pairs(&[
            ("bake", "done"),
            ("test", "done"),
            ("publish", "skipped"),
            ("rollout", "skipped")
        ])
    );
    assert_eq!(s["image"]["test_result"], "passed", "{s:#}");
    let imgs = w.images();
    assert_eq!(imgs.len(), 1);
    assert_eq!(imgs[0]["test_result"], "passed", "recorded in the catalog");

    let o = w.webake(&args);
    assert!(o.status.success(), "{}", text(&o));
    let s = summary(&o);
    assert_eq!(s["bake_skipped"], true);
    let test = &s["stages"][1];
    assert_eq!(test["status"], "skipped", "{s:#}");
    assert_eq!(test["detail"], "the image already passed its boot test");
    assert_eq!(w.images().len(), 1);
}
