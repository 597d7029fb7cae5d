//! Fresh images every week (issue 17), end to end through the binary, with a real signed apt
//! repository served on loopback as the base's security suite (webake-upstream's test
//! repository: dpkg-deb, apt-ftparchive and gpg, nothing faked) next to Debian's own archive:
//!
//! - the first `run` bakes; unchanged upstream: the next `run` skips the bake and says so;
//! - upstream moves with a package the image does not have: still skipped, with the reason;
//! - a newer version of a package in the image appears in the security suite: `run` rebakes
//!   (a fresh bootstrap of the new base generation), the image holds the new version, the
//!   catalog's provenance, `images diff` and the pull request body list it marked security,
//!   with its changelog entry and tracker link; a bake from empty caches (base bootstrapped
//!   again, no layers) installs exactly the same packages;
//! - a bad signature, an expired Release and an unreachable source each fail with a message
//!   naming the source, bake nothing and leave the bootstrap cache as it was.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;
use webake_upstream::testrepo::{DebSpec, Publish, Signer, TestRepo};

const SUITE: &str = "bookworm-security";
const PKG: &str = "webake-fresh";

struct World {
    env: Env,
    repo: TestRepo,
    recipe: PathBuf,
}

impl World {
    fn new() -> Self {
        require_bake_capabilities();
        assert!(
            Path::new(DEBIAN_KEYRING).is_file(),
            "missing {DEBIAN_KEYRING}: apt-get install debian-archive-keyring"
        );
        let env = Env::new();
        let repo = TestRepo::start().expect("start the test apt repository on loopback");
        let recipe = env.recipe("fresh", &recipe(&repo));
        World { env, repo, recipe }
    }

    /// Publish `PKG` at `version` (with a CVE line in its changelog) into the security suite.
    fn release(&self, name: &str, version: &str) {
        let mut spec = DebSpec::new(name, version);
        spec.distribution = SUITE.into();
        spec.changes = vec![format!("CVE-2026-4242: fix a test overflow ({version}).")];
        self.repo.add(SUITE, &spec).expect("add the package");
        self.repo.publish(SUITE).expect("publish the suite");
    }

    fn webake(&self, args: &[&str]) -> Output {
        self.env.run(args)
    }

    /// `run` without boot test and rollout: the weekly rebake of a recipe.
    fn run(&self) -> Output {
        self.webake(&[
            "run",
            "--no-test",
            "--no-rollout",
            "--publish",
            "local",
            "--json",
            self.recipe.to_str().unwrap(),
        ])
    }

    fn dry_run(&self) -> Output {
        self.webake(&[
            "run",
            "--dry-run",
            "--no-test",
            "--no-rollout",
            self.recipe.to_str().unwrap(),
        ])
    }

    fn image_count(&self) -> usize {
        self.env.images_json().as_array().unwrap().len()
    }

    /// The bootstrap cache entries (shared with other tests: only those of this recipe's
    /// configuration are compared, by their meta.json naming the test repository).
    fn our_bases(&self) -> Vec<String> {
        let dir = self.env.cache.join("bootstrap");
        let uri = self.repo.uri();
        let mut out: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::read_to_string(e.path().join("meta.json"))
                    .map(|m| m.contains(&uri))
                    .unwrap_or(false)
            })
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        out.sort();
        out
    }
}

const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

fn recipe(repo: &TestRepo) -> String {
    format!(
        "version: 1
image:
  name: fresh
base:
  mmdebstrap:
    suite: bookworm
    variant: apt
    updates: false
    security_mirror: {uri}
    keyrings: [{keyring}, {DEBIAN_KEYRING}]
    include:
      - linux-image-cloud-amd64
      - systemd-sysv
      - udev
      - {PKG}
network:
  allow: [\"127.0.0.1:{port}\"]
allow_paths_outside_recipe_dir: true
provisioners:
  - shell:
      name: record the version
      inline: [\"cp /usr/share/webake-test/{PKG}.version /etc/{PKG}-at-bake\"]
",
        uri = repo.uri(),
        keyring = repo.keyring().display(),
        port = repo.uri().rsplit(':').next().unwrap(),
    )
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("JSON on stdout: {e}\n{}", text(o)))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn version_in(image: &serde_json::Value) -> String {
    let raw = artifact_path(image, "raw");
    cat_in_image(
        Path::new(&raw),
        &format!("/usr/share/webake-test/{PKG}.version"),
    )
    .expect("the test package's version file in the image")
    .trim()
    .to_string()
}

#[test]
fn the_weekly_run_rebakes_only_for_updates_of_the_image_and_says_which() {
    let mut w = World::new();
    w.release(PKG, "1.0-1");

    let first = first_run_bakes(&w);
    unchanged_upstream_skips(&w);
    unrelated_update_skips_with_the_reason(&w);
    let second = security_update_rebakes(&w, &first);
    the_rebake_equals_a_bake_from_empty_caches(&w, &second);
    diff_and_pull_request_list_the_update(&w, &first, &second);
    broken_upstream_fails_cleanly(&mut w);
}

fn first_run_bakes(w: &World) -> serde_json::Value {
    let o = w.run();
    assert!(o.status.success(), "first run: {}", text(&o));
    let s = json(&o);
    assert_eq!(s["bake_skipped"], false, "{s:#}");
    let image = s["image"].clone();
    assert_eq!(version_in(&image), "1.0-1");
    assert_eq!(w.our_bases().len(), 1, "one base generation");
    // The image's own apt sources list the same suites.
    let raw = artifact_path(&image, "raw");
    let sources = cat_in_image(Path::new(&raw), "/etc/apt/sources.list").unwrap_or_default();
    assert!(
        sources.contains(&format!("{} {SUITE} main", w.repo.uri()))
            && sources.contains(" bookworm main"),
        "{sources}"
    );
    image
}

fn unchanged_upstream_skips(w: &World) {
    let dry = w.dry_run();
    assert!(dry.status.success(), "{}", text(&dry));
    let out = String::from_utf8_lossy(&dry.stdout);
    assert!(
        out.contains(
            "up to date with upstream (InRelease of bookworm, bookworm-security unchanged"
        ),
        "{out}"
    );
    let o = w.run();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(json(&o)["bake_skipped"], true, "{}", text(&o));
    assert!(
        stderr(&o).contains("up to date with upstream"),
        "{}",
        text(&o)
    );
    assert_eq!(w.image_count(), 1);
}

fn unrelated_update_skips_with_the_reason(w: &World) {
    std::thread::sleep(std::time::Duration::from_secs(1)); // a new Date: for the Release
    w.release("webake-unrelated", "2.0-1");
    let o = w.run();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(json(&o)["bake_skipped"], true, "{}", text(&o));
    let err = stderr(&o);
    assert!(
        err.contains("bookworm-security moved upstream, but none of the image's")
            && err.contains("packages has a newer version"),
        "{err}"
    );
    assert_eq!(w.image_count(), 1);
    assert_eq!(w.our_bases().len(), 1, "the cached base is reused");
}

fn security_update_rebakes(w: &World, first: &serde_json::Value) -> serde_json::Value {
    std::thread::sleep(std::time::Duration::from_secs(1));
    w.release(PKG, "1.1-1");
    let dry = w.dry_run();
    assert!(dry.status.success(), "{}", text(&dry));
    let out = String::from_utf8_lossy(&dry.stdout);
    assert!(
        out.contains(&format!(
            "1 package(s) have updates: {PKG} 1.0-1 -> 1.1-1 ({SUITE})"
        )),
        "{out}"
    );
    let o = w.run();
    assert!(o.status.success(), "{}", text(&o));
    let s = json(&o);
    assert_eq!(s["bake_skipped"], false, "{s:#}");
    let image = s["image"].clone();
    assert_ne!(image["id"], first["id"]);
    assert_eq!(version_in(&image), "1.1-1");
    // A new base generation, bootstrapped fresh (not an upgrade of the old one): the rebake
    // installs what a first bake today would.
    assert_eq!(w.our_bases().len(), 2, "a second base generation");
    let shown = w.webake(&["images", "show", image["id"].as_str().unwrap(), "--json"]);
    assert!(shown.status.success(), "{}", text(&shown));
    let up = &json(&shown)["provenance"]["upstream"];
    let updates = up["updates"]
        .as_array()
        .expect("provenance.upstream.updates");
    assert_eq!(updates.len(), 1, "{up:#}");
    let u = &updates[0];
    assert_eq!(u["name"], PKG);
    assert_eq!(u["old"], "1.0-1");
    assert_eq!(u["new"], "1.1-1");
    assert_eq!(u["suite"], SUITE);
    assert_eq!(u["security"], true);
    assert!(
        u["changelog"]
            .as_str()
            .unwrap_or("")
            .contains("CVE-2026-4242"),
        "{u:#}"
    );
    assert_eq!(
        u["tracker"],
        format!("https://security-tracker.debian.org/tracker/{PKG}")
    );
    image
}

/// A bake that bootstraps the base again and ignores the layer cache installs the same
/// packages, at the same versions, as the weekly rebake did.
fn the_rebake_equals_a_bake_from_empty_caches(w: &World, rebaked: &serde_json::Value) {
    let o = w.webake(&[
        "bake",
        "--refresh-base",
        "--no-cache",
        "--json",
        w.recipe.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let fresh = json(&o)["image"].clone();
    let packages = |img: &serde_json::Value| -> Vec<(String, String, String)> {
        let o = w.webake(&["images", "show", img["id"].as_str().unwrap(), "--json"]);
        assert!(o.status.success(), "{}", text(&o));
        let v = json(&o);
        let mut out: Vec<_> = v["inventory"]["packages"]
            .as_array()
            .expect("inventory packages")
            .iter()
            .map(|p| {
                let f = |k: &str| p[k].as_str().unwrap_or_default().to_string();
                (f("name"), f("version"), f("architecture"))
            })
            .collect();
        out.sort();
        out
    };
    let (a, b) = (packages(rebaked), packages(&fresh));
    assert!(a.len() > 100, "{} packages", a.len());
    assert_eq!(a, b, "the rebake and a bake from empty caches differ");
    assert_eq!(version_in(&fresh), "1.1-1");
}

fn diff_and_pull_request_list_the_update(
    w: &World,
    first: &serde_json::Value,
    second: &serde_json::Value,
) {
    let (a, b) = (
        first["id"].as_str().unwrap(),
        second["id"].as_str().unwrap(),
    );
    let o = w.webake(&["images", "diff", a, b]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for needle in [
        format!("upstream updates in {b}"),
        format!("{PKG} 1.0-1 -> 1.1-1 ({SUITE}) [security]"),
        "CVE-2026-4242: fix a test overflow (1.1-1).".to_string(),
    ] {
        assert!(out.contains(&needle), "missing {needle:?} in:\n{out}");
    }

    let repo = cluster_repo(
        w.env.path(),
        &format!("webake/fresh:{}", first["version"].as_str().unwrap()),
    );
    let o = w.webake(&[
        "rollout",
        b,
        "--repo",
        repo.to_str().unwrap(),
        "--all-instance-groups",
        "--dry-run",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let body = &out[out.find("==> pull request body").expect(&out)..];
    for needle in [
        "**1 with security fixes**".to_string(),
        format!("| `{PKG}` (amd64) | 1.0-1 | 1.1-1 | **security** |"),
        "CVE-2026-4242".to_string(),
    ] {
        assert!(body.contains(&needle), "missing {needle:?} in:\n{body}");
    }
}

fn broken_upstream_fails_cleanly(w: &mut World) {
    let bases = w.our_bases();
    let images = w.image_count();
    let expired = jiff::Timestamp::from_second(1_700_000_000).unwrap();
    for (what, how, needle) in [
        (
            "a foreign signature",
            Publish {
                signer: Signer::ForeignKey,
                ..Default::default()
            },
            "signature",
        ),
        (
            "a tampered Release",
            Publish {
                tamper: true,
                ..Default::default()
            },
            "signature",
        ),
        (
            "an expired Release",
            Publish {
                valid_until: Some(expired),
                ..Default::default()
            },
            "expired",
        ),
    ] {
        std::thread::sleep(std::time::Duration::from_secs(1));
        w.repo.publish_with(SUITE, &how).expect("publish");
        assert_fails_naming_the_source(w, what, needle);
        assert_eq!(
            w.our_bases(),
            bases,
            "{what}: the bootstrap cache is untouched"
        );
        assert_eq!(w.image_count(), images, "{what}: nothing baked");
    }
    w.repo.go_offline();
    assert_fails_naming_the_source(w, "an unreachable source", "");
    assert_eq!(w.our_bases(), bases);
    assert_eq!(w.image_count(), images);
}

fn assert_fails_naming_the_source(w: &World, what: &str, needle: &str) {
    for o in [w.run(), w.dry_run()] {
        assert!(
            !o.status.success(),
            "{what}: expected a failure:\n{}",
            text(&o)
        );
        let err = stderr(&o);
        assert!(
            err.contains(&w.repo.uri()) && err.contains(SUITE),
            "{what}: the error names the source:\n{err}"
        );
        assert!(
            err.to_lowercase().contains(needle),
            "{what}: {needle:?} in:\n{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// A bare cluster repository whose one kops InstanceGroup runs `image`.
fn cluster_repo(dir: &Path, image: &str) -> PathBuf {
    let bare = dir.join("cluster.git");
    let work = dir.join("cluster-work");
    git(
        dir,
        &[
            "init",
            "--bare",
            "--initial-branch=main",
            bare.to_str().unwrap(),
        ],
    );
    git(
        dir,
        &["clone", bare.to_str().unwrap(), work.to_str().unwrap()],
    );
    std::fs::create_dir_all(work.join("clusters/prod")).unwrap();
    std::fs::write(
        work.join("clusters/prod/nodes.yaml"),
        format!(
            "apiVersion: kops.k8s.io/v1alpha2\nkind: InstanceGroup\nmetadata:\n  name: nodes\n  labels:\n    kops.k8s.io/cluster: prod.example.com\nspec:\n  role: Node\n  image: {image}\n  zones: [eu-west-1a]\n"
        ),
    )
    .unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-m", "cluster"]);
    git(&work, &["push", "origin", "HEAD:main"]);
    bare
}

/// A step adds a vendor apt repository (served on loopback, signed with its own key) and
/// installs a package from it: the bake records the source; unchanged, the next run skips;
/// a newer version of that package there makes `run` rebake every step on the same cached
/// base, and the image holds the new version.
#[test]
fn updates_in_a_source_a_step_added_rebake_the_steps() {
    require_bake_capabilities();
    let env = Env::new();
    let repo = TestRepo::start().expect("start the test apt repository on loopback");
    let publish = |version: &str| {
        repo.add("vendor", &DebSpec::new("webake-vendor", version))
            .expect("add the package");
        repo.publish("vendor").expect("publish the suite");
    };
    publish("1.0-1");
    std::fs::create_dir_all(env.path().join("files")).unwrap();
    std::fs::copy(repo.keyring(), env.path().join("files/vendor.gpg")).unwrap();
    let port = repo.uri().rsplit(':').next().unwrap().to_string();
    let recipe = env.recipe(
        "vendored",
        &format!(
            "version: 1\nimage:\n  name: vendored\n{BASE}network:\n  allow: [\"127.0.0.1:{port}\"]\n\
             provisioners:\n  - file:\n      name: vendor key\n      source: files/vendor.gpg\n      destination: /usr/share/keyrings/vendor.gpg\n\
             \x20 - shell:\n      name: vendor package\n      inline:\n\
             \x20       - echo 'deb [signed-by=/usr/share/keyrings/vendor.gpg] {uri} vendor main' > /etc/apt/sources.list.d/vendor.list\n\
             \x20       - apt-get update -o Dir::Etc::sourcelist=/etc/apt/sources.list.d/vendor.list -o Dir::Etc::sourceparts=- -o APT::Get::List-Cleanup=0\n\
             \x20       - apt-get install -y webake-vendor\n",
            uri = repo.uri()
        ),
    );
    let r = recipe.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "--no-test", "--no-rollout", "--publish", "local"];
        args.extend_from_slice(extra);
        args.push(r);
        env.run(&args)
    };
    let bases = || {
        std::fs::read_dir(env.cache.join("bootstrap"))
            .unwrap()
            .count()
    };

    let o = run(&["--json"]);
    assert!(o.status.success(), "first run: {}", text(&o));
    let first = json(&o)["image"].clone();
    assert_eq!(version_of(&first, "webake-vendor"), "1.0-1");
    let shown = env.run(&["images", "show", first["id"].as_str().unwrap(), "--json"]);
    let rec = &json(&shown)["provenance"]["step_sources"];
    assert_eq!(rec["sources"][0]["uri"], repo.uri(), "{rec:#}");
    assert_eq!(rec["sources"][0]["suite"], "vendor");
    assert!(rec["state"].is_object(), "{rec:#}");

    let o = run(&["--json"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(json(&o)["bake_skipped"], true, "{}", text(&o));
    assert!(
        stderr(&o).contains("apt sources added by the steps up to date with upstream"),
        "{}",
        text(&o)
    );

    std::thread::sleep(std::time::Duration::from_secs(1));
    publish("1.1-1");
    let n_bases = bases();
    let o = run(&["--json"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(json(&o)["bake_skipped"], false, "{}", text(&o));
    let err = stderr(&o);
    assert!(
        err.contains("from the apt sources the steps added, 1 package(s) have updates: webake-vendor 1.0-1 -> 1.1-1 (vendor)"),
        "{err}"
    );
    assert!(err.contains("cached base"), "the base is reused:\n{err}");
    assert_eq!(bases(), n_bases, "no new bootstrap");
    let second = json(&o)["image"].clone();
    assert_eq!(version_of(&second, "webake-vendor"), "1.1-1");
    let shown = env.run(&["images", "show", second["id"].as_str().unwrap(), "--json"]);
    let updates = &json(&shown)["provenance"]["upstream"]["updates"];
    assert!(
        updates.as_array().is_some_and(|u| u
            .iter()
            .any(|x| x["name"] == "webake-vendor" && x["new"] == "1.1-1")),
        "{updates:#}"
    );

    // The new generation is recorded: the next run skips again.
    let o = run(&["--json"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(json(&o)["bake_skipped"], true, "{}", text(&o));
}

fn version_of(image: &serde_json::Value, package: &str) -> String {
    let raw = artifact_path(image, "raw");
    cat_in_image(
        Path::new(&raw),
        &format!("/usr/share/webake-test/{package}.version"),
    )
    .expect("the package's version file in the image")
    .trim()
    .to_string()
}
