//! `webake gc` end to end through the binary, without a bake: catalog images recorded through
//! webake-catalog with real files, cluster repositories as bare git repositories, and AWS as a
//! moto server on loopback behind webake-aws's recording, fault-injecting proxy (the one
//! harness, compiled here from its source file). AMIs are really published into moto by
//! webake-aws (upload, register, copy to a second region), then used by a launch template, an
//! instance and an Auto Scaling group's launch configuration created straight in moto.
//!
//! Needs moto (`pip install 'moto[server]'`, or `PATH=$PWD/target/pyenv/bin:$PATH`) and git;
//! fails, never skips, without them. Nothing talks to real AWS: every endpoint is 127.0.0.1
//! and the credentials are dummies.

mod common;
use common::{git, with_aws_env};

#[path = "../../webake-aws/tests/common/mod.rs"]
mod aws_harness;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use aws_harness::{COPY, Canned, HOME, Moto, Proxy};
use webake_catalog::{
    Artifact, ArtifactFormat, Catalog, Image, Provenance, Publication, Removed, TestResult,
};

const DAY: i64 = 86_400;

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A kops InstanceGroup running `image`.
fn instance_group(name: &str, image: &str) -> String {
    format!(
        "apiVersion: kops.k8s.io/v1alpha2\nkind: InstanceGroup\nmetadata:\n  name: {name}\n  labels:\n    kops.k8s.io/cluster: prod.example.com\nspec:\n  role: Node\n  image: {image}\n  zones: [eu-west-1a]\n"
    )
}

/// One test's world: a temp dir with a data dir, a catalog and a private cache dir.
struct World {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    data: PathBuf,
    catalog: PathBuf,
}

/// What a catalog image is made of in these tests.
struct Fixture<'a> {
    id: &'a str,
    family: &'a str,
    version: &'a str,
    created_at: i64,
    /// region, AMI, snapshot
    amis: Vec<(String, String, String)>,
}

impl World {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("webake-gc-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        let path = dir.path().to_path_buf();
        Self {
            data: path.join("data"),
            catalog: path.join("data/catalog.db"),
            dir: path,
            _dir: dir,
        }
    }

    fn webake(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run webake")
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_webake"));
        c.arg("--data-dir")
            .arg(&self.data)
            .arg("--cache-dir")
            .arg(self.dir.join("cache"))
            .arg("--catalog")
            .arg(&self.catalog);
        c
    }

    /// `webake …` with dummy credentials, AWS at `endpoint`, nothing from the host's config.
    fn aws(&self, endpoint: &str, args: &[&str]) -> Output {
        with_aws_env(self.cmd(), &self.dir, endpoint)
            .args(args)
            .output()
            .expect("run webake")
    }

    /// Record `f` with a raw and a qcow2 artifact and both SBOMs on disk; returns its files.
    fn record(&self, cat: &mut Catalog, f: &Fixture<'_>) -> Vec<PathBuf> {
        let dir = self.data.join("images").join(f.id);
        std::fs::create_dir_all(&dir).unwrap();
        let base = format!("{}-{}", f.family, f.version);
        let files: Vec<PathBuf> = ["raw", "qcow2", "spdx.json", "cdx.json"]
            .iter()
            .map(|ext| dir.join(format!("{base}.{ext}")))
            .collect();
        for (i, p) in files.iter().enumerate() {
            std::fs::write(p, vec![b'x'; 1000 * (i + 1)]).unwrap();
        }
        let artifact = |format, path: &PathBuf, size| Artifact {
            format,
            path: path.clone(),
            sha256: "00".into(),
            size,
        };
        let img = Image {
            id: f.id.into(),
            bake_id: format!("bake-{}", f.id).into(),
            name: f.family.into(),
            family: f.family.into(),
            version: f.version.into(),
            arch: "x86_64".into(),
            created_at: f.created_at,
            inputs_digest: format!("sha256:{}", f.id),
            recipe_digest: "sha256:r".into(),
            kernel: None,
            tree_size: 1,
            inventory: None,
            provenance: Provenance::default(),
            test_result: Some(TestResult::Passed),
            artifacts: vec![
                artifact(ArtifactFormat::Raw, &files[0], 1000),
                artifact(ArtifactFormat::Qcow2, &files[1], 2000),
            ],
            publications: Vec::new(),
        };
        cat.record_image(&img, f.created_at).unwrap();
        for (region, ami, snap) in &f.amis {
            let p = Publication::Aws {
                region: region.clone(),
                ami_id: ami.clone(),
                snapshot_id: Some(snap.clone()),
                name: format!("{base}-x86_64"),
                created_at: f.created_at,
                run_id: None,
            };
            cat.add_publication(&img.id, &p).unwrap();
        }
        files
    }

    /// A bare cluster repository: `main` with `files`, and each `(branch, files)` on top.
    fn cluster(&self, main: &[(&str, String)], branches: &[(&str, &[(&str, String)])]) -> PathBuf {
        let bare = self.dir.join("cluster.git");
        let work = self.dir.join("cluster-work");
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
        let commit = |files: &[(&str, String)], msg: &str| {
            for (path, body) in files {
                let p = work.join(path);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, body).unwrap();
            }
            git(&work, &["add", "-A"]);
            git(&work, &["commit", "--quiet", "-m", msg]);
        };
        commit(main, "cluster");
        git(&work, &["push", "--quiet", "origin", "main"]);
        for (branch, files) in branches {
            git(&work, &["checkout", "--quiet", "-B", branch, "main"]);
            commit(files, branch);
            git(&work, &["push", "--quiet", "origin", branch]);
        }
        bare
    }

    fn open(&self) -> Catalog {
        Catalog::open(&self.catalog).unwrap()
    }
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{}", text(o)))
}

/// image id -> (reason names, action names) of a `gc --json` plan.
fn decisions(plan: &serde_json::Value) -> BTreeMap<String, (Vec<String>, Vec<String>)> {
    let names = |v: &serde_json::Value, key: &str| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x[key].as_str().unwrap().to_string())
            .collect()
    };
    plan["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap().to_string(),
                (names(&i["keep"], "reason"), names(&i["actions"], "action")),
            )
        })
        .collect()
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------
// local

/// The local scenario: six k8s-node images (two referenced by the cluster repository, two
/// young, two old and unreferenced) and an old image of another family, each with its files.
struct Local {
    w: World,
    /// When the fixtures were made; their ages count from here.
    t: i64,
    files: BTreeMap<&'static str, Vec<PathBuf>>,
    /// The bare cluster repository.
    repo: PathBuf,
}

const LOCAL_FAMILY: &str = "k8s-node";

impl Local {
    fn setup() -> Self {
        let w = World::new();
        let t = now();
        let files = Self::record_fixtures(&w, t);
        let repo = Self::cluster_repo(&w);
        Self { w, t, files, repo }
    }

    fn record_fixtures(w: &World, t: i64) -> BTreeMap<&'static str, Vec<PathBuf>> {
        let fixtures = [
            ("img-a", "2026.10.01", t - 60 * DAY),
            ("img-b", "2026.10.08", t - 53 * DAY),
            ("img-c", "2026.10.15", t - 46 * DAY),
            ("img-d", "2026.10.22", t - 39 * DAY),
            ("img-e", "2026.11.28", t - 2 * DAY),
            ("img-f", "2026.11.29", t - DAY),
        ];
        let mut cat = w.open();
        let mut files = BTreeMap::new();
        for (id, version, created_at) in fixtures {
            let f = Fixture {
                id,
                family: LOCAL_FAMILY,
                version,
                created_at,
                amis: Vec::new(),
            };
            files.insert(id, w.record(&mut cat, &f));
        }
        // Another family, old and unreferenced: not collected with --family k8s-node.
        let other = Fixture {
            id: "img-o",
            family: "bastion",
            version: "2026.01.01",
            created_at: t - 300 * DAY,
            amis: Vec::new(),
        };
        files.insert("img-o", w.record(&mut cat, &other));
        files
    }

    /// main runs img-a; the open rollout branch proposes img-b; a feature branch mentions img-d
    /// (not read: only the default, base and webake/* branches reach a cluster).
    fn cluster_repo(w: &World) -> PathBuf {
        w.cluster(
            &[(
                "clusters/prod/nodes.yaml",
                instance_group("nodes", "webake/k8s-node:2026.10.01"),
            )],
            &[
                (
                    "webake/k8s-node",
                    &[(
                        "clusters/prod/nodes.yaml",
                        instance_group("nodes", "webake/k8s-node:2026.10.08"),
                    )],
                ),
                (
                    "feature/x",
                    &[("notes.txt", "try webake/k8s-node:2026.10.22\n".into())],
                ),
            ],
        )
    }

    /// `gc --family k8s-node --keep 1 --older-than 30d --repo <cluster>`, then `extra`.
    fn args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![
            "gc",
            "--family",
            LOCAL_FAMILY,
            "--keep",
            "1",
            "--older-than",
            "30d",
            "--repo",
            self.repo.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args
    }

    /// How many images the catalog lists and which files exist; asserts there is no tombstone.
    fn snapshot(&self) -> (usize, Vec<bool>) {
        let c = self.w.open();
        let n = c.list_images(None).unwrap().len();
        let exist = self.files.values().flatten().map(|p| p.exists()).collect();
        assert!(c.tombstones(None).unwrap().is_empty());
        (n, exist)
    }
}

#[test]
fn local_gc_keeps_what_clusters_reference_and_the_newest_and_removes_the_rest() {
    let s = Local::setup();
    let before = s.snapshot();
    local_dry_run_text_says_what_where_why(&s);
    local_dry_run_json_is_the_same_plan_and_changes_nothing(&s, &before);
    local_real_run_removes_the_unreferenced_old_and_leaves_tombstones(&s);
    local_rerun_has_nothing_left_to_do(&s);
}

/// Dry run, text: what, where, why.
fn local_dry_run_text_says_what_where_why(s: &Local) {
    let o = s.w.webake(&s.args(&["--dry-run"]));
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "keep    img-a k8s-node 2026.10.01: referenced by",
        "clusters/prod/nodes.yaml:9 at branch main (webake/k8s-node:2026.10.01)",
        "clusters/prod/nodes.yaml:9 at branch webake/k8s-node (webake/k8s-node:2026.10.08)",
        "keep    img-e k8s-node 2026.11.28: younger than 30d (2d old)",
        "keep    img-f k8s-node 2026.11.29: newest 1 of 1",
        "retire  img-c k8s-node 2026.10.15:",
        "retire  img-d k8s-node 2026.10.22:",
        "keep a tombstone in the catalog",
        "would retire 2 of 6 image(s)",
        "(dry run: nothing changed)",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    assert!(!out.contains("img-o"), "{out}");
}

/// Dry run, JSON: the same plan as data; and nothing changes (since `before`).
fn local_dry_run_json_is_the_same_plan_and_changes_nothing(s: &Local, before: &(usize, Vec<bool>)) {
    let o = s.w.webake(&s.args(&["--dry-run", "--json"]));
    assert!(o.status.success(), "{}", text(&o));
    let v = json(&o);
    assert_eq!(v["dry_run"], true);
    assert!(v.get("report").is_none(), "{v:#}");
    let d = decisions(&v["plan"]);
    let delete4 = strs(&["delete_file"; 4]);
    let mut retire = delete4.clone();
    retire.push("tombstone".into());
    assert_eq!(d["img-a"], (strs(&["referenced"]), vec![]));
    assert_eq!(d["img-b"], (strs(&["referenced"]), vec![]));
    assert_eq!(d["img-c"], (vec![], retire.clone()));
    assert_eq!(d["img-d"], (vec![], retire.clone()));
    assert_eq!(d["img-e"], (strs(&["younger"]), vec![]));
    assert_eq!(d["img-f"], (strs(&["newest", "younger"]), vec![]));
    assert_eq!(d.len(), 6);
    let referenced = &v["plan"]["images"][5]["keep"][0];
    assert_eq!(referenced["file"], "clusters/prod/nodes.yaml", "{v:#}");
    assert_eq!(referenced["line"], 9);
    assert_eq!(
        referenced["what"],
        "InstanceGroup nodes (cluster prod.example.com) spec.image"
    );
    assert_eq!(&s.snapshot(), before, "a dry run changes nothing");
}

/// The real run: img-c and img-d lose their files and directories and become tombstones
/// listing those files; every other image is whole.
fn local_real_run_removes_the_unreferenced_old_and_leaves_tombstones(s: &Local) {
    let o = s.w.webake(&s.args(&[]));
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("tombstone img-c") && out.contains("tombstone img-d"),
        "{out}"
    );
    assert!(
        out.contains("freed 19.5 KiB locally, 2 image(s) retired"),
        "{out}"
    );
    for (id, paths) in &s.files {
        let gone = ["img-c", "img-d"].contains(id);
        for p in paths {
            assert_eq!(!p.exists(), gone, "{}", p.display());
        }
        let dir = s.w.data.join("images").join(id);
        assert_eq!(!dir.exists(), gone, "{}", dir.display());
    }
    let c = s.w.open();
    let left: Vec<String> = c
        .list_images(None)
        .unwrap()
        .iter()
        .map(|i| i.id.to_string())
        .collect();
    assert_eq!(left, ["img-f", "img-e", "img-b", "img-a", "img-o"]);
    let stones = c.tombstones(Some(LOCAL_FAMILY)).unwrap();
    assert_eq!(stones.len(), 2);
    for stone in &stones {
        assert!(
            stone.reason.contains("not among the newest 1 of k8s-node"),
            "{}",
            stone.reason
        );
        let mut removed: Vec<&Path> = stone
            .removed
            .iter()
            .map(|r| match &r.removed {
                Removed::File { path, .. } => path.as_path(),
                other => panic!("{other:?}"),
            })
            .collect();
        removed.sort();
        let mut want: Vec<&Path> = s.files[stone.image_id.as_str()]
            .iter()
            .map(|p| p.as_path())
            .collect();
        want.sort();
        assert_eq!(removed, want, "{stone:?}");
        assert!(stone.removed_at >= s.t);
    }
}

/// The re-run: nothing left to do.
fn local_rerun_has_nothing_left_to_do(s: &Local) {
    let o = s.w.webake(&s.args(&[]));
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("retiring 0 of 4 image(s)"),
        "{}",
        text(&o)
    );
}

// ---------------------------------------------------------------------------------------
// AWS

/// moto, the proxy in front of it, and AMIs published into both regions.
struct Aws {
    moto: Moto,
    proxy: Proxy,
}

impl Aws {
    fn start() -> Self {
        let moto = Moto::start();
        let proxy = Proxy::start(moto.port);
        // moto lacks EnableImageDeprecation: answered here, and the requests asserted.
        proxy.fail("EnableImageDeprecation", None, || {
            Canned::ec2_ok("EnableImageDeprecation")
        });
        Self { moto, proxy }
    }

    /// Publish one small disk per name through webake-aws into HOME with a copy in COPY;
    /// returns region -> (AMI, snapshot) for each.
    fn publish(&self, dir: &Path, names: &[String]) -> Vec<Vec<(String, String, String)>> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let disk = dir.join("disk.raw");
        aws_harness::make_disk(&disk, 3);
        rt.block_on(async {
            let session = aws_harness::session(&self.proxy.url(), HOME).await;
            let mut out = Vec::new();
            for name in names {
                let mut req = aws_harness::request(&disk, &format!("bake-{name}"), name);
                req.share_with.clear();
                let p = webake_aws::publish(&session, &req, &webake_aws::NoReporter)
                    .await
                    .unwrap_or_else(|e| panic!("publish {name}: {e}"));
                out.push(
                    p.regions
                        .into_iter()
                        .map(|(r, i)| (r, i.ami_id, i.snapshot_id))
                        .collect(),
                );
            }
            out
        })
    }

    fn ec2(&self, region: &str, params: &[(&str, &str)]) -> String {
        aws_harness::ec2_query(self.moto.port, region, params)
    }

    /// An Auto Scaling query straight to moto (it routes by the credential scope).
    fn autoscaling(&self, region: &str, params: &[(&str, &str)]) -> String {
        use std::io::{Read as _, Write as _};
        let mut body: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{k}={}", v.replace('/', "%2F")))
            .collect();
        body.push("Version=2011-01-01".into());
        let body = body.join("&");
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.moto.port)).unwrap();
        write!(
            s,
            "POST / HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/x-www-form-urlencoded\r\nAuthorization: AWS4-HMAC-SHA256 Credential=testing/20260101/{region}/autoscaling/aws4_request, SignedHeaders=host, Signature=0\r\nX-Amz-Date: 20260101T000000Z\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.moto.port,
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{params:?}: {out}");
        out
    }

    /// Is `ami` registered in `region`, asked from moto directly?
    fn ami_exists(&self, region: &str, ami: &str) -> bool {
        let xml = self.ec2(region, &[("Action", "DescribeImages"), ("ImageId.1", ami)]);
        xml.contains(&format!("<imageId>{ami}</imageId>"))
            && !xml.contains("<imageState>deregistered</imageState>")
    }

    fn snapshot_exists(&self, region: &str, snap: &str) -> bool {
        let xml = self.ec2(
            region,
            &[("Action", "DescribeSnapshots"), ("SnapshotId.1", snap)],
        );
        xml.contains(&format!("<snapshotId>{snap}</snapshotId>"))
    }

    /// Operations that change something in AWS, as the proxy saw them.
    fn mutations(&self) -> Vec<String> {
        self.proxy
            .log()
            .iter()
            .filter(|r| {
                [
                    "EnableImageDeprecation",
                    "DeregisterImage",
                    "DeleteSnapshot",
                ]
                .contains(&r.op.as_str())
            })
            .map(|r| format!("{} {}", r.op, r.region))
            .collect()
    }
}

fn ami_in(amis: &[(String, String, String)], region: &str) -> (String, String) {
    let (_, a, s) = amis.iter().find(|(r, _, _)| r == region).unwrap();
    (a.clone(), s.clone())
}

/// Record `amis[i]` as image `ids[i]` of `family`, one day apart, the first oldest.
fn record_published(
    w: &World,
    family: &str,
    ids: &[&str],
    amis: &[Vec<(String, String, String)>],
) -> BTreeMap<String, Vec<PathBuf>> {
    let mut cat = w.open();
    let t = now();
    let mut files = BTreeMap::new();
    for (i, (id, amis)) in ids.iter().zip(amis).enumerate() {
        let f = Fixture {
            id,
            family,
            version: &format!("2026.11.{:02}", i + 1),
            created_at: t - (40 - i as i64) * DAY,
            amis: amis.clone(),
        };
        files.insert(id.to_string(), w.record(&mut cat, &f));
    }
    files
}

/// The AWS scenario: six images published into both regions, four of them in use.
struct AwsScene {
    // Declared first so moto stops before the world's temp dir goes.
    aws: Aws,
    w: World,
    ids: [&'static str; 6],
    amis: Vec<Vec<(String, String, String)>>,
    files: BTreeMap<String, Vec<PathBuf>>,
    /// p1's AMI in us-east-1: the default version of launch template gc-nodes.
    p1: String,
    /// p2's AMI in eu-west-1: a running instance.
    p2_copy: String,
    /// p3's AMI in eu-west-1: only a terminated instance.
    p3_copy: String,
    /// p4's AMI in us-east-1: the latest version of gc-nodes.
    p4: String,
    /// p5's AMI in us-east-1: the launch configuration of Auto Scaling group gc-asg.
    p5: String,
}

const AWS_GC: [&str; 5] = ["gc", "--aws", "--keep", "1", "--json"];

impl AwsScene {
    fn setup() -> Self {
        let w = World::new();
        let aws = Aws::start();
        let ids = ["img-p1", "img-p2", "img-p3", "img-p4", "img-p5", "img-p6"];
        let names: Vec<String> = ids.iter().map(|i| format!("gc-{i}")).collect();
        let amis = aws.publish(&w.dir, &names);
        let files = record_published(&w, "k8s-node", &ids, &amis);
        let (p1, _) = ami_in(&amis[0], HOME);
        let (p4, _) = ami_in(&amis[3], HOME);
        in_a_launch_template(&aws, &p1, &p4);
        let (p2_copy, _) = ami_in(&amis[1], COPY);
        let (p3_copy, _) = ami_in(&amis[2], COPY);
        in_instances(&aws, &p2_copy, &p3_copy);
        let (p5, _) = ami_in(&amis[4], HOME);
        in_an_auto_scaling_group(&aws, &p5);
        aws.proxy.clear_log();
        Self {
            aws,
            w,
            ids,
            amis,
            files,
            p1,
            p2_copy,
            p3_copy,
            p4,
            p5,
        }
    }
}

/// `p1`: the default version of a launch template; `p4`: its latest version (us-east-1).
fn in_a_launch_template(aws: &Aws, p1: &str, p4: &str) {
    let lt = aws.ec2(
        HOME,
        &[
            ("Action", "CreateLaunchTemplate"),
            ("LaunchTemplateName", "gc-nodes"),
            ("LaunchTemplateData.ImageId", p1),
            ("LaunchTemplateData.InstanceType", "t3.micro"),
        ],
    );
    assert!(lt.contains("<launchTemplateId>"), "{lt}");
    let v2 = aws.ec2(
        HOME,
        &[
            ("Action", "CreateLaunchTemplateVersion"),
            ("LaunchTemplateName", "gc-nodes"),
            ("LaunchTemplateData.ImageId", p4),
        ],
    );
    assert!(v2.contains("<versionNumber>2</versionNumber>"), "{v2}");
}

/// `p2`: a running instance in eu-west-1; `p3`: only a terminated one (does not count).
fn in_instances(aws: &Aws, p2_copy: &str, p3_copy: &str) {
    for (ami, terminate) in [(p2_copy, false), (p3_copy, true)] {
        let run = aws.ec2(
            COPY,
            &[
                ("Action", "RunInstances"),
                ("ImageId", ami),
                ("MinCount", "1"),
                ("MaxCount", "1"),
                ("InstanceType", "t3.micro"),
            ],
        );
        let id = aws_harness::xml_values(&run, "instanceId")[0].clone();
        if terminate {
            aws.ec2(
                COPY,
                &[("Action", "TerminateInstances"), ("InstanceId.1", &id)],
            );
        }
    }
}

/// `p5`: the launch configuration of an Auto Scaling group (us-east-1).
fn in_an_auto_scaling_group(aws: &Aws, p5: &str) {
    aws.autoscaling(
        HOME,
        &[
            ("Action", "CreateLaunchConfiguration"),
            ("LaunchConfigurationName", "gc-lc"),
            ("ImageId", p5),
            ("InstanceType", "t3.micro"),
        ],
    );
    aws.autoscaling(
        HOME,
        &[
            ("Action", "CreateAutoScalingGroup"),
            ("AutoScalingGroupName", "gc-asg"),
            ("LaunchConfigurationName", "gc-lc"),
            ("MinSize", "0"),
            ("MaxSize", "1"),
            ("DesiredCapacity", "0"),
            ("AvailabilityZones.member.1", "us-east-1a"),
        ],
    );
}

#[test]
fn aws_gc_keeps_amis_in_use_and_retires_the_rest_in_every_region() {
    let s = AwsScene::setup();
    aws_dry_run_says_why_each_is_kept_and_changes_nothing(&s);
    aws_real_run_deprecates_then_removes_p3_in_both_regions(&s);
    aws_catalog_has_p3_as_a_tombstone_and_the_others_whole(&s);
}

/// Dry run: the plan says why each is kept, every region's users were looked at, and nothing
/// changes.
fn aws_dry_run_says_why_each_is_kept_and_changes_nothing(s: &AwsScene) {
    let aws = &s.aws;
    let mut dry = AWS_GC.to_vec();
    dry.push("--dry-run");
    let o = s.w.aws(&aws.proxy.url(), &dry);
    assert!(o.status.success(), "{}", text(&o));
    let v = json(&o);
    check_aws_plan(&v["plan"], &s.p1, &s.p2_copy, &s.p4, &s.p5);
    assert_eq!(
        aws.mutations(),
        Vec::<String>::new(),
        "a dry run changes nothing"
    );
    for ops in [
        "DescribeInstances",
        "DescribeLaunchTemplateVersions",
        "DescribeAutoScalingGroups",
        "DescribeLaunchConfigurations",
    ] {
        let regions: Vec<String> = aws
            .proxy
            .ops(ops)
            .iter()
            .map(|r| r.region.clone())
            .collect();
        assert!(regions.contains(&HOME.to_string()), "{ops}: {regions:?}");
        if ops != "DescribeLaunchConfigurations" {
            assert!(regions.contains(&COPY.to_string()), "{ops}: {regions:?}");
        }
    }
    for id in s.ids {
        assert!(s.files[id].iter().all(|p| p.exists()));
    }
}

/// The real run: p3 deprecated first, in both regions, with a time; then deregistered and its
/// snapshots deleted. Every other AMI and snapshot stays.
fn aws_real_run_deprecates_then_removes_p3_in_both_regions(s: &AwsScene) {
    let (aws, amis, ids) = (&s.aws, &s.amis, &s.ids);
    let o = s.w.aws(&aws.proxy.url(), &AWS_GC);
    assert!(o.status.success(), "{}", text(&o));
    let v = json(&o);
    assert_eq!(
        v["report"]["tombstones"],
        serde_json::json!(["img-p3"]),
        "{v:#}"
    );
    let (p3_home, p3_home_snap) = ami_in(&amis[2], HOME);
    let (_, p3_copy_snap) = ami_in(&amis[2], COPY);
    let p3_copy = &s.p3_copy;
    let deprecations = aws.proxy.ops("EnableImageDeprecation");
    let deprecated: Vec<(String, String)> = deprecations
        .iter()
        .map(|r| (r.region.clone(), r.form()["ImageId"].clone()))
        .collect();
    assert_eq!(
        deprecated,
        [
            (COPY.to_string(), p3_copy.clone()),
            (HOME.to_string(), p3_home.clone())
        ]
    );
    assert!(
        deprecations
            .iter()
            .all(|r| r.form().contains_key("DeprecateAt"))
    );
    assert!(!aws.ami_exists(HOME, &p3_home) && !aws.ami_exists(COPY, p3_copy));
    assert!(!aws.snapshot_exists(HOME, &p3_home_snap) && !aws.snapshot_exists(COPY, &p3_copy_snap));
    for (i, img) in amis.iter().enumerate().filter(|(i, _)| *i != 2) {
        for (region, ami, snap) in img {
            assert!(aws.ami_exists(region, ami), "{} {region} {ami}", ids[i]);
            assert!(
                aws.snapshot_exists(region, snap),
                "{} {region} {snap}",
                ids[i]
            );
        }
    }
}

/// After the real run, the catalog: p3 is a tombstone listing what was removed, its files
/// gone; the others are whole.
fn aws_catalog_has_p3_as_a_tombstone_and_the_others_whole(s: &AwsScene) {
    let (p3_home, p3_home_snap) = ami_in(&s.amis[2], HOME);
    let (_, p3_copy_snap) = ami_in(&s.amis[2], COPY);
    let p3_copy = &s.p3_copy;
    let c = s.w.open();
    let stone = c.tombstone(&"img-p3".into()).unwrap().expect("tombstone");
    let removed: Vec<String> = stone
        .removed
        .iter()
        .map(|r| r.removed.to_string())
        .collect();
    for needle in [
        format!("AMI {p3_copy} in {COPY}"),
        format!("snapshot {p3_copy_snap} in {COPY}"),
        format!("AMI {p3_home} in {HOME}"),
        format!("snapshot {p3_home_snap} in {HOME}"),
    ] {
        assert!(removed.contains(&needle), "{needle} not in {removed:?}");
    }
    assert_eq!(removed.len(), 8, "{removed:?}");
    assert!(s.files["img-p3"].iter().all(|p| !p.exists()));
    for id in s.ids.iter().filter(|i| **i != "img-p3") {
        let img = c.get_image(&(*id).into()).unwrap().expect(id);
        assert_eq!(
            img.publications.iter().filter_map(|p| p.ami()).count(),
            2,
            "{id}"
        );
        assert!(s.files[*id].iter().all(|p| p.exists()));
    }
}

/// The keep reasons of the AWS plan.
fn check_aws_plan(plan: &serde_json::Value, p1: &str, p2: &str, p4: &str, p5: &str) {
    let d = decisions(plan);
    let in_use = (strs(&["in_use"]), vec![]);
    assert_eq!(d["img-p1"], in_use, "{plan:#}");
    assert_eq!(d["img-p2"], in_use);
    assert_eq!(d["img-p4"], in_use);
    assert_eq!(d["img-p5"], in_use);
    assert_eq!(d["img-p6"].0, strs(&["newest"]));
    let mut retire = strs(&["deprecate", "deregister", "deprecate", "deregister"]);
    retire.extend(strs(&["delete_file"; 4]));
    retire.push("tombstone".into());
    assert_eq!(d["img-p3"], (vec![], retire));
    let by = |id: &str| -> (String, String) {
        let img = plan["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == id)
            .unwrap();
        let k = &img["keep"][0];
        (
            k["ami_id"].as_str().unwrap().to_string(),
            k["by"].as_str().unwrap().to_string(),
        )
    };
    let (ami, who) = by("img-p1");
    assert!(
        ami == p1
            && who.starts_with("launch template gc-nodes")
            && who.ends_with("version 1 (default)"),
        "{who}"
    );
    let (ami, who) = by("img-p4");
    assert!(ami == p4 && who.ends_with("version 2 (latest)"), "{who}");
    let (ami, who) = by("img-p2");
    assert!(
        ami == p2 && who.starts_with("instance i-") && who.ends_with("(running)"),
        "{who}"
    );
    let (ami, who) = by("img-p5");
    assert!(
        ami == p5 && who == "launch configuration gc-lc of Auto Scaling group(s) gc-asg",
        "{who}"
    );
    assert_eq!(plan["regions"], serde_json::json!([COPY, HOME]));
}

#[test]
fn a_fault_in_the_middle_leaves_a_truthful_catalog_and_a_rerun_finishes() {
    let w = World::new();
    let aws = Aws::start();
    let ids = ["img-q1", "img-q2"];
    let names: Vec<String> = ids.iter().map(|i| format!("gc-{i}")).collect();
    let amis = aws.publish(&w.dir, &names);
    let files = record_published(&w, "k8s-node", &ids, &amis);
    let (old_copy, old_copy_snap) = ami_in(&amis[0], COPY);
    let (old_home, old_home_snap) = ami_in(&amis[0], HOME);
    // eu-west-1 goes first: its AMI is deregistered, then deleting its snapshot is refused.
    aws.proxy.fail_in(COPY, "DeleteSnapshot", None, || {
        Canned::ec2_error(403, "UnauthorizedOperation")
    });
    let endpoint = aws.proxy.url();
    let o = w.aws(&endpoint, &["gc", "--aws", "--keep", "1", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("UnauthorizedOperation") && err.contains(&old_copy_snap),
        "{err}"
    );
    let v = json(&o);
    let report = &v["report"];
    assert_eq!(report["failures"].as_array().unwrap().len(), 1, "{v:#}");
    assert_eq!(report["tombstones"], serde_json::json!([]));
    // AWS: eu-west-1's AMI is gone but its snapshot is not; us-east-1 is done.
    assert!(!aws.ami_exists(COPY, &old_copy) && aws.snapshot_exists(COPY, &old_copy_snap));
    assert!(!aws.ami_exists(HOME, &old_home) && !aws.snapshot_exists(HOME, &old_home_snap));
    // The catalog says exactly that, and the files are kept.
    let c = w.open();
    let img = c
        .get_image(&"img-q1".into())
        .unwrap()
        .expect("still in the catalog");
    let raw = &files["img-q1"][0];
    let qcow2 = &files["img-q1"][1];
    assert_eq!(
        c.remains(&img).unwrap(),
        [
            format!("file {}", qcow2.display()),
            format!("file {}", raw.display()),
            format!("snapshot {old_copy_snap} in {COPY}"),
        ]
    );
    assert!(
        matches!(
            &img.publications[..],
            [Publication::Aws { region, ami_id, snapshot_id: Some(s), .. }]
                if region == COPY && ami_id.is_empty() && s == &old_copy_snap
        ),
        "{:?}",
        img.publications
    );
    assert_eq!(
        report["remains"][0]["remains"],
        serde_json::json!(c.remains(&img).unwrap())
    );
    assert_eq!(
        c.deprecations(&img.id).unwrap().len(),
        1,
        "the remaining row keeps its deprecation"
    );
    assert!(files["img-q1"].iter().all(|p| p.exists()));
    drop(c);

    // The fault is gone: a re-run deletes what remains and buries the image.
    aws.proxy.clear_rules();
    let o = w.aws(&endpoint, &["gc", "--aws", "--keep", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("delete {old_copy_snap} in {COPY}")),
        "{out}"
    );
    assert!(out.contains("tombstone img-q1"), "{out}");
    assert!(!aws.snapshot_exists(COPY, &old_copy_snap));
    assert!(files["img-q1"].iter().all(|p| !p.exists()));
    let c = w.open();
    assert!(c.get_image(&"img-q1".into()).unwrap().is_none());
    let stone = c.tombstone(&"img-q1".into()).unwrap().unwrap();
    assert_eq!(stone.removed.len(), 4 + 4, "{:?}", stone.removed);
    // The newest is untouched.
    for (region, ami, snap) in &amis[1] {
        assert!(aws.ami_exists(region, ami) && aws.snapshot_exists(region, snap));
    }
}

#[test]
fn deprecate_only_then_a_grace_period_then_deregistration() {
    let w = World::new();
    let aws = Aws::start();
    let ids = ["img-r1", "img-r2"];
    let names: Vec<String> = ids.iter().map(|i| format!("gc-{i}")).collect();
    let amis = aws.publish(&w.dir, &names);
    let files = record_published(&w, "k8s-node", &ids, &amis);
    let endpoint = aws.proxy.url();
    let (old_copy, _) = ami_in(&amis[0], COPY);
    let (old_home, _) = ami_in(&amis[0], HOME);

    // --deprecate-only: both AMIs of the old image deprecated, nothing removed.
    let o = w.aws(
        &endpoint,
        &["gc", "--aws", "--keep", "1", "--deprecate-only", "--json"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let d = decisions(&json(&o)["plan"]);
    assert_eq!(
        d["img-r1"],
        (strs(&["deprecate_only"]), strs(&["deprecate", "deprecate"]))
    );
    assert_eq!(
        aws.mutations(),
        [
            format!("EnableImageDeprecation {COPY}"),
            format!("EnableImageDeprecation {HOME}")
        ]
    );
    let c = w.open();
    let deprecated = c.deprecations(&"img-r1".into()).unwrap();
    assert_eq!(deprecated.keys().collect::<Vec<_>>(), [COPY, HOME]);
    drop(c);
    assert!(aws.ami_exists(COPY, &old_copy) && aws.ami_exists(HOME, &old_home));
    assert!(files["img-r1"].iter().all(|p| p.exists()));

    // --grace 1d right after: kept until the grace ends, nothing sent.
    aws.proxy.clear_log();
    let o = w.aws(
        &endpoint,
        &["gc", "--aws", "--keep", "1", "--grace", "1d", "--json"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let v = json(&o);
    let d = decisions(&v["plan"]);
    assert_eq!(d["img-r1"], (strs(&["grace", "grace"]), vec![]));
    let grace = &v["plan"]["images"][1]["keep"][0];
    assert_eq!(
        grace["until"].as_i64().unwrap() - grace["deprecated_at"].as_i64().unwrap(),
        DAY
    );
    assert_eq!(aws.mutations(), Vec::<String>::new());

    // Two days later (the deprecation recorded as older): deregistered, and the rest follows.
    let c = w.open();
    for region in [COPY, HOME] {
        let (ami, _) = ami_in(&amis[0], region);
        c.mark_deprecated(&"img-r1".into(), region, &ami, now() - 2 * DAY)
            .unwrap();
    }
    drop(c);
    let o = w.aws(&endpoint, &["gc", "--aws", "--keep", "1", "--grace", "1d"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!aws.ami_exists(COPY, &old_copy) && !aws.ami_exists(HOME, &old_home));
    assert_eq!(
        aws.proxy.ops("EnableImageDeprecation").len(),
        0,
        "already deprecated: not again"
    );
    assert!(w.open().tombstone(&"img-r1".into()).unwrap().is_some());
    assert!(files["img-r1"].iter().all(|p| !p.exists()));
}
