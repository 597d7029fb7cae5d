//! `webake publish` end to end: a real bake, published locally and to a moto server on
//! loopback behind webake-aws's validating proxy (EBS direct upload checked block by block,
//! RegisterImage, CopyImage, tags), recorded in the catalog, idempotent on a second run,
//! then `webake clean --aws` sweeping what no publication accounts for; and a bake that
//! starts from the published AMI (`base: {ami: …}`), its root filesystem downloaded through
//! the EBS direct APIs.
//!
//! Needs root (the bakes) and moto (`pip install 'moto[server]'`); fails, never skips,
//! without them. Nothing talks to real AWS: every endpoint is 127.0.0.1 and the credentials
//! are dummies.

/// The AWS test harness of webake-aws (moto on loopback and the recording, validating proxy
/// that models what moto lacks), compiled here from its one source file.
#[path = "../../webake-aws/tests/common/mod.rs"]
mod aws_harness;
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use aws_harness::{Moto, Proxy};
use common::*;

// ---------------------------------------------------------------------------------------
// helpers

/// `webake …` with dummy credentials and nothing from the host's AWS configuration.
fn aws_cmd(env: &Env, endpoint: &str) -> Command {
    with_aws_env(env.cmd(), env.path(), endpoint)
}

/// `webake clean …` on `env`'s catalog and data, but with a private empty cache: `clean`
/// also removes the cache's staging entries of bakes its catalog does not know as running,
/// and the tests share one cache (another test may be baking into it right now).
fn clean_cmd(env: &Env, endpoint: &str) -> Command {
    let cache = env.path().join("clean-cache");
    std::fs::create_dir_all(&cache).unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_webake"));
    c.arg("--data-dir")
        .arg(&env.data)
        .arg("--cache-dir")
        .arg(&cache)
        .arg("--catalog")
        .arg(&env.catalog)
        .current_dir(repo_root());
    with_aws_env(c, env.path(), endpoint)
}

fn run(mut c: Command, args: &[&str]) -> Output {
    c.args(args).output().expect("run webake")
}

/// Bake `recipe` and return (image id, raw disk path).
fn bake(env: &Env, recipe: &Path, extra_env: Option<Command>) -> (String, PathBuf) {
    let c = extra_env.unwrap_or_else(|| env.cmd());
    let o = run(c, &["bake", recipe.to_str().unwrap(), "--json"]);
    assert!(
        o.status.success(),
        "bake of {} failed: {}",
        recipe.display(),
        text(&o)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let id = v["image"]["id"].as_str().unwrap().to_string();
    let raw = artifact_path(&v["image"], "raw").into();
    (id, raw)
}

fn show_json(env: &Env, id: &str) -> serde_json::Value {
    let o = env.run(&["images", "show", id, "--json"]);
    assert!(o.status.success(), "images show --json: {}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// region -> (ami id, snapshot id) of the image's AWS publications.
fn aws_publications(show: &serde_json::Value) -> BTreeMap<String, (String, String)> {
    show["publications"]
        .as_array()
        .expect("publications array")
        .iter()
        .filter(|p| p["target"] == "aws")
        .map(|p| {
            (
                p["region"].as_str().unwrap().to_string(),
                (
                    p["ami_id"].as_str().unwrap_or_default().to_string(),
                    p["snapshot_id"].as_str().unwrap_or_default().to_string(),
                ),
            )
        })
        .collect()
}

fn recipe_a(env: &Env) -> PathBuf {
    env.recipe(
        "pub-a",
        &format!(
            "version: 1\nimage:\n  name: pub-a\n{BASE}provisioners:\n  - shell:\n      name: mark a\n      inline:\n        - echo written-by-a > /etc/webake-a\noutputs: [raw]\n"
        ),
    )
}

/// Tags of `ami` in `region` of the moto server (through the library's own clients).
fn ami_tags(endpoint: &str, region: &str, ami: &str) -> BTreeMap<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let settings = webake_aws::ClientSettings {
            endpoint_url: Some(endpoint.to_string()),
            profile: None,
            credentials: Some(webake_aws::StaticCredentials {
                access_key_id: "testing".into(),
                secret_access_key: "testing".into(),
            }),
            timing: webake_aws::Timing::default(),
        };
        let session = webake_aws::Session::new(region, &settings).await;
        let out = session
            .region(region)
            .ec2
            .describe_images()
            .image_ids(ami)
            .send()
            .await
            .unwrap_or_else(|e| panic!("DescribeImages {ami} in {region}: {e:?}"));
        let image = out
            .images()
            .first()
            .unwrap_or_else(|| panic!("{ami} not in {region}"));
        image
            .tags()
            .iter()
            .map(|t| {
                (
                    t.key().unwrap_or_default().to_string(),
                    t.value().unwrap_or_default().to_string(),
                )
            })
            .collect()
    })
}

// ---------------------------------------------------------------------------------------
// tests

#[test]
fn publish_locally_and_to_moto_idempotently() {
    require_bake_capabilities();
    let moto = Moto::start();
    let proxy = Proxy::start_with(moto.port, false);
    let env = Env::new();
    let (id, _raw) = bake(&env, &recipe_a(&env), None);

    // Nowhere yet.
    assert!(
        show_json(&env, &id)["publications"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    publish_locally(&env, &id);
    let (show, pubs) = first_publish_to_moto(&env, &proxy, &id);
    assert_text_view_shows_both_regions(&env, &id, &pubs);
    assert_second_publish_changes_nothing(&env, &proxy, &id, &pubs);
    assert_clean_sweeps_only_the_stray_snapshot(&env, &proxy, &show, &pubs);
}

/// --to local (the default) records the local artifact.
fn publish_locally(env: &Env, id: &str) {
    let o = env.run(&["publish", id]);
    assert!(o.status.success(), "publish (local): {}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&format!("published {id} locally")),
        "{}",
        text(&o)
    );
    let show = show_json(env, id);
    let local: Vec<_> = show["publications"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["target"] == "local")
        .collect();
    assert_eq!(local.len(), 1, "{show:#}");
    assert!(
        Path::new(local[0]["name"].as_str().unwrap()).is_file(),
        "local publication names the artifact: {show:#}"
    );
}

/// `publish --to aws` against moto: upload + register in eu-west-1, copy to us-east-1.
fn publish_to_moto(env: &Env, proxy: &Proxy, id: &str) -> Output {
    let url = proxy.url();
    let args = [
        "publish",
        id,
        "--to",
        "aws",
        "--region",
        "eu-west-1",
        "--copy-to",
        "us-east-1",
        "--endpoint-url",
        &url,
        "--tag",
        "team=platform",
    ];
    run(aws_cmd(env, &url), &args)
}

/// The first publish to moto: both regions recorded, each AMI printed and tagged in moto.
/// Returns the image as shown and its AWS publications.
fn first_publish_to_moto(
    env: &Env,
    proxy: &Proxy,
    id: &str,
) -> (serde_json::Value, BTreeMap<String, (String, String)>) {
    let o = publish_to_moto(env, proxy, id);
    assert!(o.status.success(), "publish --to aws: {}", text(&o));
    let first = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        first.contains(&format!("published {id} as pub-a-")),
        "{}",
        text(&o)
    );
    assert!(!first.contains("already published"), "{}", text(&o));

    let show = show_json(env, id);
    let pubs = aws_publications(&show);
    assert_eq!(
        pubs.keys().map(String::as_str).collect::<Vec<_>>(),
        ["eu-west-1", "us-east-1"],
        "{show:#}"
    );
    for (region, (ami, snap)) in &pubs {
        assert!(ami.starts_with("ami-"), "{region}: {ami}");
        assert!(snap.starts_with("snap-"), "{region}: {snap}");
        assert!(first.contains(ami.as_str()), "{ami} not printed:\n{first}");
        // The AMI exists in moto with our tags.
        let tags = ami_tags(&proxy.url(), region, ami);
        assert_eq!(
            tags.get("team").map(String::as_str),
            Some("platform"),
            "{region} {tags:?}"
        );
        assert_eq!(
            tags.get("webake:inputs-digest"),
            show["inputs_digest"].as_str().map(str::to_string).as_ref(),
            "{region} {tags:?}"
        );
        assert!(tags.contains_key("webake:bake-id"), "{region} {tags:?}");
    }
    assert_ne!(
        pubs["eu-west-1"].0, pubs["us-east-1"].0,
        "the copy is another AMI"
    );
    (show, pubs)
}

/// The text view shows both regions with their ids.
fn assert_text_view_shows_both_regions(
    env: &Env,
    id: &str,
    pubs: &BTreeMap<String, (String, String)>,
) {
    let o = env.run(&["images", "show", id]);
    assert!(o.status.success(), "{}", text(&o));
    let shown = String::from_utf8_lossy(&o.stdout).to_string();
    for (region, (ami, snap)) in pubs {
        let line = shown
            .lines()
            .find(|l| l.contains(region.as_str()) && l.contains("aws"))
            .unwrap_or_else(|| panic!("no aws line for {region}:\n{shown}"));
        assert!(
            line.contains(ami.as_str()) && line.contains(snap.as_str()),
            "{line}"
        );
    }
    assert!(shown.contains("local"), "{shown}");
}

/// Again: nothing new, the same AMIs, said so.
fn assert_second_publish_changes_nothing(
    env: &Env,
    proxy: &Proxy,
    id: &str,
    pubs: &BTreeMap<String, (String, String)>,
) {
    let o = publish_to_moto(env, proxy, id);
    assert!(o.status.success(), "second publish: {}", text(&o));
    let second = String::from_utf8_lossy(&o.stdout).to_string();
    for (region, (ami, _)) in pubs {
        let line = second
            .lines()
            .find(|l| l.contains(region.as_str()))
            .unwrap_or_else(|| panic!("no line for {region}:\n{second}"));
        assert!(
            line.contains(ami.as_str()) && line.contains("already published"),
            "{region}: {line}\n{}",
            text(&o)
        );
    }
    // The catalog still holds the same AMIs and snapshots (the proxy reports an AMI's
    // registered root snapshot, as AWS does; moto alone invents its own).
    let again = aws_publications(&show_json(env, id));
    assert_eq!(&again, pubs);
    proxy.assert_contract_kept();
}

/// `clean --aws`: the published AMIs are accounted for by the catalog; a snapshot of the
/// same bake that no publication names (what a killed publish leaves) is swept, whatever
/// the bake's status, after the plan is printed.
fn assert_clean_sweeps_only_the_stray_snapshot(
    env: &Env,
    proxy: &Proxy,
    show: &serde_json::Value,
    pubs: &BTreeMap<String, (String, String)>,
) {
    let bake_id = show["bake_id"].as_str().expect("bake_id").to_string();
    let stray = stray_snapshot(&proxy.url(), "eu-west-1", &bake_id);
    let clean = |dry: bool| {
        let mut args = vec!["clean", "--aws", "--region", "eu-west-1,us-east-1"];
        if dry {
            args.push("--dry-run");
        }
        run(clean_cmd(env, &proxy.url()), &args)
    };
    let o = clean(true);
    assert!(o.status.success(), "clean --aws --dry-run: {}", text(&o));
    let plan = String::from_utf8_lossy(&o.stdout).to_string();
    let planned: Vec<&str> = plan
        .lines()
        .filter(|l| l.starts_with("would delete: "))
        .collect();
    assert_eq!(planned.len(), 1, "{plan}");
    assert!(
        planned[0].contains(&stray) && planned[0].contains(&bake_id),
        "{plan}"
    );
    assert!(
        proxy.ops("DeleteSnapshot").is_empty(),
        "a dry run deletes nothing"
    );
    let o = clean(false);
    assert!(o.status.success(), "clean --aws: {}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        out.contains(&format!("deleted: snapshot {stray} in eu-west-1")),
        "{out}"
    );
    assert!(
        proxy.ops("DeregisterImage").is_empty(),
        "published AMIs are kept"
    );
    for (region, (ami, snap)) in pubs {
        let (images, snaps) = proxy.tagged(region, "webake:bake-id", &bake_id);
        assert_eq!(images, vec![ami.clone()], "{region}");
        assert_eq!(snaps, vec![snap.clone()], "{region}");
    }
}

/// Upload a one-block snapshot tagged with `bake_id` (through the library), as a killed
/// publish would leave it. Returns its id.
fn stray_snapshot(endpoint: &str, region: &str, bake_id: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("stray.raw");
    std::fs::write(&disk, vec![1u8; 4096]).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let session = aws_harness::session(endpoint, region).await;
        let opts = webake_aws::UploadOptions {
            tags: vec![("webake:bake-id".into(), bake_id.into())],
            ..Default::default()
        };
        webake_aws::upload_snapshot(
            &session.region(region),
            &disk,
            &opts,
            &webake_aws::NoReporter,
            &|_: &str| {},
        )
        .await
        .unwrap()
        .snapshot_id
    })
}

/// Removes what a bake from a moto AMI leaves in the shared cache (moto's ids are new on
/// every run, so these entries would never be used again): the base entry of that AMI and
/// the layers built by the given bakes.
struct SharedCacheCleanup {
    ami: String,
    bake_ids: Vec<String>,
}

impl Drop for SharedCacheCleanup {
    fn drop(&mut self) {
        let cache = shared_cache();
        let meta = |p: &Path| -> serde_json::Value {
            std::fs::read_to_string(p.join("meta.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default()
        };
        for e in std::fs::read_dir(cache.join("bootstrap"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if meta(&e.path())["ami"] == self.ami.as_str() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        for e in std::fs::read_dir(cache.join("layers"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let m = meta(&e.path());
            if self.bake_ids.iter().any(|b| m["bake_id"] == b.as_str()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Mode and type lines of `path` in the root filesystem of a raw disk (`debugfs stat`).
fn stat_in_image(raw: &Path, path: &str) -> String {
    let o = Command::new("debugfs")
        .arg("-R")
        .arg(format!("stat {path}"))
        .arg(format!("{}?offset={}", raw.display(), root_offset(raw)))
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn bake_from_a_published_ami() {
    require_bake_capabilities();
    let moto = Moto::start();
    let proxy = Proxy::start_with(moto.port, false);
    let env = Env::new();

    // Image A, published to eu-west-1.
    let (a, a_raw) = bake(&env, &recipe_a(&env), None);
    let (ami, snap) = publish_to_eu_west_1(&env, &proxy, &a);
    let mut cleanup = SharedCacheCleanup {
        ami: ami.clone(),
        bake_ids: vec![],
    };

    let b_recipe = recipe_from_ami(&env, &ami);
    let (b, b_raw) = bake_from_ami(&env, &proxy, &b_recipe, &ami, &snap, &mut cleanup);
    assert_b_holds_a_and_its_own_files(&a_raw, &b_raw);
    // The base is in the bootstrap cache, keyed by the AMI, with its provenance.
    let show = show_json(&env, &b);
    assert!(show["publications"].as_array().unwrap().is_empty());
    assert_second_plan_finds_the_cached_base(&env, &proxy, &b_recipe, &ami, &snap);
}

/// Publish `id` to eu-west-1 of moto; returns its (AMI, snapshot) there.
fn publish_to_eu_west_1(env: &Env, proxy: &Proxy, id: &str) -> (String, String) {
    let o = run(
        aws_cmd(env, &proxy.url()),
        &[
            "publish",
            id,
            "--to",
            "aws",
            "--region",
            "eu-west-1",
            "--endpoint-url",
            &proxy.url(),
        ],
    );
    assert!(o.status.success(), "publish A: {}", text(&o));
    let pubs = aws_publications(&show_json(env, id));
    let (ami, snap) = pubs
        .get("eu-west-1")
        .expect("eu-west-1 publication")
        .clone();
    assert!(
        ami.starts_with("ami-") && snap.starts_with("snap-"),
        "{pubs:?}"
    );
    (ami, snap)
}

/// Image B starts from A's AMI. Its step needs a working chroot: /bin/sh, apt-get (with
/// the network), the file A wrote.
fn recipe_from_ami(env: &Env, ami: &str) -> PathBuf {
    env.recipe(
        "from-ami",
        &format!(
            "version: 1\nimage:\n  name: from-ami\nbase:\n  ami:\n    id: {ami}\n    region: eu-west-1\nprovisioners:\n  - shell:\n      name: mark b\n      inline:\n        - test -x /bin/sh && test -L /bin\n        - cat /etc/webake-a > /etc/webake-b-saw-a\n        - apt-get -q update\n        - echo written-by-b > /etc/webake-b\noutputs: [raw]\n"
        ),
    )
}

/// `webake …` against moto, the base AMI looked up there too.
fn aws_base_cmd(env: &Env, proxy: &Proxy) -> Command {
    let mut c = aws_cmd(env, &proxy.url());
    c.env("WEBAKE_AWS_ENDPOINT_URL", proxy.url());
    c
}

/// Bake B: the AMI's root snapshot is downloaded block by block. Its bake id goes to
/// `cleanup` before anything is asserted. Returns (image id, raw disk path).
fn bake_from_ami(
    env: &Env,
    proxy: &Proxy,
    b_recipe: &Path,
    ami: &str,
    snap: &str,
    cleanup: &mut SharedCacheCleanup,
) -> (String, PathBuf) {
    let o = run(
        aws_base_cmd(env, proxy),
        &["bake", b_recipe.to_str().unwrap(), "--json"],
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    if let Some(id) = v["bake_id"].as_str() {
        cleanup.bake_ids.push(id.to_string());
    }
    assert!(o.status.success(), "bake from {ami}: {}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        stderr.contains(&format!(
            "==> base: download AMI {ami} (eu-west-1) root snapshot {snap}"
        )),
        "{stderr}"
    );
    assert!(
        !proxy.ops("GetSnapshotBlock").is_empty(),
        "no block was downloaded"
    );
    let b_raw = PathBuf::from(
        v["image"]["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["format"] == "raw")
            .unwrap()["path"]
            .as_str()
            .unwrap(),
    );
    (v["image"]["id"].as_str().unwrap().to_string(), b_raw)
}

/// B holds A's file and its own; what `debugfs rdump` alone would lose survives: setuid
/// bits and device nodes.
fn assert_b_holds_a_and_its_own_files(a_raw: &Path, b_raw: &Path) {
    assert_eq!(
        cat_in_image(b_raw, "/etc/webake-a").as_deref(),
        Some("written-by-a\n")
    );
    assert_eq!(
        cat_in_image(b_raw, "/etc/webake-b-saw-a").as_deref(),
        Some("written-by-a\n")
    );
    assert_eq!(
        cat_in_image(b_raw, "/etc/webake-b").as_deref(),
        Some("written-by-b\n")
    );
    for (path, want) in [
        ("/usr/bin/su", "Mode:  04755"),
        ("/usr/bin/passwd", "Mode:  04755"),
    ] {
        let (sa, sb) = (stat_in_image(a_raw, path), stat_in_image(b_raw, path));
        assert!(sa.contains(want), "A {path}: {sa}");
        assert!(sb.contains(want), "B {path}: {sb}");
    }
    let null = stat_in_image(b_raw, "/dev/null");
    assert!(
        null.contains("Type: character special")
            && null.contains("Device major/minor number: 01:03"),
        "B /dev/null: {null}"
    );
}

/// A second plan finds the cached base: nothing is downloaded again; the cache entry holds
/// the tree, not the downloaded disk.
fn assert_second_plan_finds_the_cached_base(
    env: &Env,
    proxy: &Proxy,
    b_recipe: &Path,
    ami: &str,
    snap: &str,
) {
    let blocks = proxy.ops("GetSnapshotBlock").len();
    let o = run(
        aws_base_cmd(env, proxy),
        &["bake", b_recipe.to_str().unwrap(), "--dry-run"],
    );
    assert!(o.status.success(), "dry run: {}", text(&o));
    let plan = String::from_utf8_lossy(&o.stdout).to_string();
    let line = plan
        .lines()
        .find(|l| l.trim_start().starts_with("base "))
        .unwrap_or_else(|| panic!("no base line:\n{plan}"));
    assert!(
        line.contains(ami) && line.contains(snap) && line.ends_with("cache hit"),
        "{line}"
    );
    assert_eq!(proxy.ops("GetSnapshotBlock").len(), blocks);
    let entry = std::fs::read_dir(env.cache.join("bootstrap"))
        .unwrap()
        .flatten()
        .find(|e| {
            std::fs::read_to_string(e.path().join("meta.json")).is_ok_and(|m| m.contains(ami))
        })
        .expect("a bootstrap cache entry for the AMI");
    assert!(entry.path().join("rootfs/etc/webake-a").is_file());
    assert!(
        !entry.path().join("disk.raw").exists(),
        "the downloaded disk is not kept"
    );
}
