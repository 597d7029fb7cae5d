//! `webake rollout` end to end without a bake: catalog images recorded through webake-catalog
//! (inventories, an AWS publication each), cluster repositories as bare git remotes in a temp
//! dir. Checks the glue the library cannot: the catalog answers "which image does this AMI id
//! point at", `--dry-run` prints the diff then the title and body, the guards exit 5 with
//! `file:line`, and `--targets` proposes in two repositories and prints the table.

mod common;
use common::git;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use webake_catalog::{
    Artifact, ArtifactFormat, Catalog, Image, Provenance, Publication, TestResult,
};

const OLD_AMI: &str = "ami-0a1b2c3d4e5f60718";
const NEW_AMI: &str = "ami-0123456789abcdef0";
const NOV_18: i64 = 1_794_974_400;
const DEC_02: i64 = 1_796_184_780;
const FILE: &str = "clusters/prod/instancegroups.yaml";

fn instance_groups(image: &str) -> String {
    format!(
        "# prod nodes\n\
         apiVersion: kops.k8s.io/v1alpha2\n\
         kind: InstanceGroup\n\
         metadata:\n  name: nodes-eu-west-1a\n  labels:\n    kops.k8s.io/cluster: prod.example.com\n\
         spec:\n  role: Node\n  image: {image} # pinned\n  zones: [eu-west-1a]\n"
    )
}

const ROLLOUT_CONFIG: &str = "rules:\n  - kind: instance-group\n    roles: [Node]\n";

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn inventory(packages: &[(&str, &str)], kernel: &str, bytes: u64) -> serde_json::Value {
    let packages: Vec<serde_json::Value> = packages
        .iter()
        .map(|(n, v)| {
            serde_json::json!({"name": n, "version": v, "architecture": "amd64", "source": n, "source_version": v})
        })
        .collect();
    serde_json::json!({
        "format": 1,
        "os": {"id": "debian", "version_id": "12"},
        "packages": packages,
        "kernels": [{"version": kernel, "image": null, "modules": true}],
        "units": [],
        "size": {"bytes": bytes, "files": 1000},
        "provenance": {"recipe_digest": "sha256:00"},
    })
}

/// A temp dir with a catalog (three images), and helpers to make cluster repositories.
struct World {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    data: PathBuf,
    catalog: PathBuf,
}

impl World {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("webake-rollout-cli-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        let path = dir.path().to_path_buf();
        let data = path.join("data");
        let catalog = data.join("catalog.db");
        let w = Self {
            _dir: dir,
            dir: path,
            data,
            catalog,
        };
        let mut cat = Catalog::open(&w.catalog).unwrap();
        w.record(
            &mut cat,
            "img-old",
            "k8s-node",
            "2026.11.18",
            NOV_18,
            &[("bash", "5.2.15-2"), ("openssl", "3.0.14-1~deb12u2")],
            "6.1.0-26-cloud-amd64",
            Some(OLD_AMI),
            "x86_64",
        );
        w.record(
            &mut cat,
            "img-new",
            "k8s-node",
            "2026.12.02",
            DEC_02,
            &[
                ("bash", "5.2.15-2"),
                ("containerd", "1.7.24"),
                ("openssl", "3.0.15-1~deb12u1"),
            ],
            "6.1.0-27-cloud-amd64",
            Some(NEW_AMI),
            "x86_64",
        );
        // Published nowhere: its reference is the local name.
        w.record(
            &mut cat,
            "img-local",
            "debian-minimal",
            "20261130.181739",
            DEC_02 + 60,
            &[("bash", "5.2.15-2")],
            "6.1.0-27-cloud-amd64",
            None,
            "x86_64",
        );
        w
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        cat: &mut Catalog,
        id: &str,
        name: &str,
        version: &str,
        created_at: i64,
        packages: &[(&str, &str)],
        kernel: &str,
        ami: Option<&str>,
        arch: &str,
    ) {
        let dir = self.data.join("images").join(id);
        std::fs::create_dir_all(&dir).unwrap();
        let raw = dir.join(format!("{name}-{version}.raw"));
        std::fs::write(&raw, b"disk").unwrap();
        std::fs::write(dir.join(format!("{name}-{version}.spdx.json")), b"{}").unwrap();
        let img = Image {
            id: id.into(),
            bake_id: format!("bake-{id}").into(),
            name: name.into(),
            family: name.into(),
            version: version.into(),
            arch: arch.into(),
            created_at,
            inputs_digest: format!("sha256:{id}"),
            recipe_digest: "sha256:r".into(),
            kernel: Some(kernel.into()),
            tree_size: 800_000_000,
            inventory: Some(
                serde_json::from_value(inventory(packages, kernel, 800_000_000)).unwrap(),
            ),
            provenance: Provenance::default(),
            test_result: Some(TestResult::Passed),
            artifacts: vec![Artifact {
                format: ArtifactFormat::Raw,
                path: raw,
                sha256: "00".into(),
                size: 4,
            }],
            publications: Vec::new(),
        };
        cat.record_image(&img, created_at).unwrap();
        if let Some(ami) = ami {
            cat.add_publication(
                &id.into(),
                &Publication::Aws {
                    region: "eu-west-1".into(),
                    ami_id: ami.into(),
                    snapshot_id: Some("snap-0".into()),
                    name: format!("{name}-{version}"),
                    created_at,
                    run_id: None,
                },
            )
            .unwrap();
        }
    }

    /// A bare cluster repository whose nodes run `image`.
    fn cluster(&self, name: &str, image: &str) -> PathBuf {
        self.cluster_with(name, &instance_groups(image))
    }

    /// A bare cluster repository with these InstanceGroups in [`FILE`].
    fn cluster_with(&self, name: &str, groups: &str) -> PathBuf {
        let bare = self.dir.join(format!("{name}.git"));
        let work = self.dir.join(format!("{name}-work"));
        std::fs::create_dir_all(&bare).unwrap();
        git(
            &bare,
            &["init", "--quiet", "--bare", "--initial-branch=main"],
        );
        git(
            &self.dir,
            &[
                "clone",
                "--quiet",
                bare.to_str().unwrap(),
                work.to_str().unwrap(),
            ],
        );
        git(&work, &["checkout", "--quiet", "-B", "main"]);
        std::fs::create_dir_all(work.join("clusters/prod")).unwrap();
        std::fs::write(work.join(FILE), groups).unwrap();
        std::fs::create_dir_all(work.join(".webake")).unwrap();
        std::fs::write(work.join(".webake/rollout.yaml"), ROLLOUT_CONFIG).unwrap();
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "--quiet", "-m", "cluster"]);
        git(&work, &["push", "--quiet", "origin", "main"]);
        bare
    }

    fn webake(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_webake"))
            .arg("--data-dir")
            .arg(&self.data)
            .arg("--catalog")
            .arg(&self.catalog)
            .args(args)
            .env_remove("WEBAKE_FORGE_TOKEN")
            .output()
            .expect("run webake")
    }
}

fn branches(bare: &Path) -> String {
    git(
        bare,
        &["for-each-ref", "--format=%(refname)", "refs/heads/webake/"],
    )
}

#[test]
fn dry_run_prints_the_diff_then_title_and_body_with_the_real_before_after() {
    let w = World::new();
    let repo = w.cluster("platform", OLD_AMI);
    let o = w.webake(&[
        "rollout",
        "img-new",
        "--repo",
        repo.to_str().unwrap(),
        "--dry-run",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let diff = format!(
        "--- a/{FILE}\n+++ b/{FILE}\n@@ -7,5 +7,5 @@\n \x20   kops.k8s.io/cluster: prod.example.com\n spec:\n   role: Node\n-  image: {OLD_AMI} # pinned\n+  image: {NEW_AMI} # pinned\n   zones: [eu-west-1a]\n"
    );
    assert!(out.starts_with(&diff), "{out}");
    let title_at = out
        .find("\n==> pull request title\nRoll out k8s-node 2026.12.02\n")
        .expect(&out);
    let body_at = out.find("\n==> pull request body\n").expect(&out);
    assert!(diff.len() <= title_at && title_at < body_at, "{out}");
    let body = &out[body_at..];
    // What prod runs now, found in the catalog by its AMI id, against the new image.
    for needle in [
        "Baked by webake: bake `bake-img-new`",
        &format!("#### `{OLD_AMI}` (eu-west-1) → `{NEW_AMI}`"),
        &format!("At `{FILE}:10`."),
        "Runs now: k8s-node 2026.11.18 (`img-old`) of family `k8s-node`, made 2026-11-18 04:00 UTC.",
        "| kernel (changed) | 6.1.0-26-cloud-amd64 | 6.1.0-27-cloud-amd64 |",
        "| boot test | passed | passed |",
        "Packages: 1 upgraded, 1 added, 0 removed, 0 downgraded.",
        "| `openssl` (amd64) | 3.0.14-1~deb12u2 | 3.0.15-1~deb12u1 |  |",
        &format!(
            "{}",
            w.data
                .join("images/img-old/k8s-node-2026.11.18.spdx.json")
                .display()
        ),
        &format!(
            "{}",
            w.data
                .join("images/img-new/k8s-node-2026.12.02.spdx.json")
                .display()
        ),
        "<!-- webake-rollout family=k8s-node image=img-new -->",
    ] {
        assert!(body.contains(needle), "missing {needle:?} in:\n{body}");
    }
    assert_eq!(branches(&repo), "", "a dry run pushes nothing");
}

#[test]
fn a_downgrade_exits_5_with_file_and_line_unless_allowed() {
    let w = World::new();
    let repo = w.cluster("platform", NEW_AMI);
    let o = w.webake(&["rollout", "img-old", "--repo", repo.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "{FILE}:10: {NEW_AMI} is k8s-node 2026.12.02 (img-new), newer than k8s-node 2026.11.18 (img-old)"
        )) && err.contains("--allow-downgrade"),
        "{}",
        text(&o)
    );
    assert_eq!(branches(&repo), "");

    let o = w.webake(&[
        "rollout",
        "img-old",
        "--repo",
        repo.to_str().unwrap(),
        "--allow-downgrade",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("branch webake/k8s-node created"), "{out}");
    assert_eq!(branches(&repo).trim(), "refs/heads/webake/k8s-node");
}

#[test]
fn an_image_published_nowhere_is_refused_for_an_ami_reference_with_exit_5() {
    let w = World::new();
    let repo = w.cluster("platform", OLD_AMI);
    for extra in [&[][..], &["--dry-run"][..]] {
        let mut args = vec!["rollout", "img-local", "--repo", repo.to_str().unwrap()];
        args.extend_from_slice(extra);
        let o = w.webake(&args);
        assert_eq!(o.status.code(), Some(5), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!(
                "{FILE}:10: InstanceGroup nodes-eu-west-1a (cluster prod.example.com) spec.image: \
                 refusing to replace the AMI id {OLD_AMI} with the local name \
                 webake/debian-minimal:20261130.181739"
            )),
            "{}",
            text(&o)
        );
    }
    assert_eq!(branches(&repo), "");
}

#[test]
fn targets_propose_in_two_repositories_and_print_a_table() {
    let w = World::new();
    let a = w.cluster("platform", OLD_AMI);
    let b = w.cluster("edge", OLD_AMI);
    let targets = w.dir.join("rollout-targets.yaml");
    std::fs::write(
        &targets,
        format!(
            "repositories:\n  - repo: {}\n  - repo: {}\n    base-branch: main\n",
            a.display(),
            b.display()
        ),
    )
    .unwrap();
    let urls = w.dir.join("pr-urls");
    let o = w.webake(&[
        "rollout",
        "img-new",
        "--targets",
        targets.to_str().unwrap(),
        "--pr-url-file",
        urls.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with("REPOSITORY") && lines[0].ends_with("STATUS"),
        "{out}"
    );
    for (line, repo) in lines[1..].iter().zip([&a, &b]) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols, [repo.to_str().unwrap(), "-", "1", "created"], "{out}");
    }
    for repo in [&a, &b] {
        assert_eq!(branches(repo).trim(), "refs/heads/webake/k8s-node");
    }
    // Local mode: no pull request, an empty URL file.
    assert_eq!(std::fs::read_to_string(&urls).unwrap(), "");

    // A repository that fails does not hide the others; the run exits 5.
    std::fs::write(
        &targets,
        format!(
            "repositories:\n  - repo: {}\n  - repo: {}\n",
            w.dir.join("missing.git").display(),
            a.display()
        ),
    )
    .unwrap();
    let o = w.webake(&["rollout", "img-new", "--targets", targets.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("failed: repository") && out.contains("unchanged"),
        "{out}"
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("the rollout failed in 1 of 2 repositories"),
        "{}",
        text(&o)
    );

    // --targets and --repo do not mix; a bad targets file is invalid input (2).
    let o = w.webake(&[
        "rollout",
        "img-new",
        "--targets",
        targets.to_str().unwrap(),
        "--repo",
        a.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    std::fs::write(&targets, "repositories:\n  - repo: x\n    github: nope\n").unwrap();
    let o = w.webake(&["rollout", "img-new", "--targets", targets.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("OWNER/REPO"),
        "{}",
        text(&o)
    );
}

/// The command line `webake pipeline render` puts in the pods for several cluster repositories
/// (`contract::rollout_targets`, the image id read from the bake's file) is accepted by this
/// binary and does what it says.
#[test]
fn the_pipeline_contract_for_several_repositories_runs() {
    use webake_pipeline::render::contract::{RolloutImage, rollout_targets};
    let w = World::new();
    let a = w.cluster("platform", OLD_AMI);
    let targets = w.dir.join("targets.yaml");
    std::fs::write(
        &targets,
        format!("repositories:\n  - repo: {}\n", a.display()),
    )
    .unwrap();
    let id_file = w.dir.join("image-id");
    std::fs::write(&id_file, "img-new\n").unwrap();
    let urls = w.dir.join("pull-request");
    let args = rollout_targets(
        RolloutImage::IdFile(id_file.to_str().unwrap()),
        targets.to_str().unwrap(),
        Some(urls.to_str().unwrap()),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = w.webake(&args);
    assert!(o.status.success(), "{args:?}: {}", text(&o));
    assert_eq!(branches(&a).trim(), "refs/heads/webake/k8s-node");
    let pushed = git(&a, &["show", &format!("webake/k8s-node:{FILE}")]);
    assert_eq!(pushed, instance_groups(NEW_AMI));
    assert_eq!(std::fs::read_to_string(&urls).unwrap(), "");
}

#[test]
fn a_repository_without_rules_names_the_selection_flags() {
    let w = World::new();
    let repo = w.cluster("norules", OLD_AMI);
    let work = w.dir.join("norules-work");
    git(&work, &["rm", "--quiet", ".webake/rollout.yaml"]);
    git(&work, &["commit", "--quiet", "-m", "no rules"]);
    git(&work, &["push", "--quiet", "origin", "main"]);
    let o = w.webake(&[
        "rollout",
        "img-new",
        "--repo",
        repo.to_str().unwrap(),
        "--dry-run",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    for flag in [
        "--role ROLE",
        "--instance-group NAME",
        "--all-instance-groups",
        ".webake/rollout.yaml",
    ] {
        assert!(err.contains(flag), "missing {flag:?}:\n{err}");
    }
    // The flag it names works.
    let o = w.webake(&[
        "rollout",
        "img-new",
        "--repo",
        repo.to_str().unwrap(),
        "--all-instance-groups",
        "--dry-run",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(NEW_AMI),
        "{}",
        text(&o)
    );
}

const ARM_AMI: &str = "ami-0fedcba9876543210";

/// An InstanceGroup on `machine_type` running `image`.
fn group(name: &str, machine_type: &str, image: &str) -> String {
    format!(
        "apiVersion: kops.k8s.io/v1alpha2\n\
         kind: InstanceGroup\n\
         metadata:\n  name: {name}\n  labels:\n    kops.k8s.io/cluster: prod.example.com\n\
         spec:\n  role: Node\n  image: {image}\n  machineType: {machine_type}\n  zones: [eu-west-1a]\n"
    )
}

#[test]
fn each_instance_group_gets_the_build_of_its_architecture() {
    let w = World::new();
    let mut cat = Catalog::open(&w.catalog).unwrap();
    // The arm64 build of the same version (baked from the same recipe).
    w.record(
        &mut cat,
        "img-new-arm",
        "k8s-node",
        "2026.12.02",
        DEC_02 + 1,
        &[("bash", "5.2.15-2"), ("openssl", "3.0.15-1~deb12u1")],
        "6.1.0-27-cloud-arm64",
        Some(ARM_AMI),
        "arm64",
    );
    drop(cat);
    let groups = format!(
        "{}---\n{}",
        group("nodes-amd64", "m5.large", OLD_AMI),
        group("nodes-graviton", "m6g.large", OLD_AMI)
    );
    let repo = w.cluster_with("platform", &groups);
    let o = w.webake(&[
        "rollout",
        "family:k8s-node",
        "--repo",
        repo.to_str().unwrap(),
        "--dry-run",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let new_at = out.find(&format!("+  image: {NEW_AMI}")).expect(&out);
    let arm_at = out.find(&format!("+  image: {ARM_AMI}")).expect(&out);
    assert!(new_at < arm_at, "amd64 group first in the file:\n{out}");
    assert!(
        out.contains("arm64"),
        "the body names the architecture:\n{out}"
    );
    // The two builds side by side: the diff says they are of different architectures.
    let o = w.webake(&["images", "diff", "img-new", "img-new-arm"]);
    assert!(o.status.success(), "{}", text(&o));
    let diff = String::from_utf8_lossy(&o.stdout);
    assert!(
        diff.starts_with("k8s-node 2026.12.02 x86_64 (img-new) -> k8s-node 2026.12.02 arm64 (img-new-arm)\nnote: the images are of different architectures (x86_64 and arm64)"),
        "{diff}"
    );
    let list = w.webake(&["images", "list"]);
    assert!(
        String::from_utf8_lossy(&list.stdout).contains(" arm64 "),
        "{}",
        text(&list)
    );

    // A group mixing architectures is refused at its line; nothing is pushed.
    let mixed = format!(
        "{}  mixedInstancesPolicy:\n    instances:\n    - m6g.large\n    - m5.large\n",
        group("nodes-mixed", "m6g.large", OLD_AMI)
    );
    let repo = w.cluster_with("mixed", &mixed);
    let o = w.webake(&[
        "rollout",
        "family:k8s-node",
        "--repo",
        repo.to_str().unwrap(),
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("{FILE}:15:"))
            && err.contains("mixes arm64 (m6g.large) and x86_64 (m5.large)"),
        "{}",
        text(&o)
    );
    assert_eq!(branches(&repo), "");
}
