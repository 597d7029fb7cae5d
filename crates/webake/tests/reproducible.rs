//! Reproducible images (issue 24), end to end through the binary with the README example
//! (`recipes/debian-minimal.yaml`, Debian's own archive):
//!
//! - two bakes from empty caches (each its own bootstrap, layers and package downloads) give
//!   the same raw disk and the same qcow2, byte for byte, with the same inputs digest;
//! - two more bakes with warm layers give that disk again;
//! - `webake verify` rebakes the image from empty caches and finds it identical (exit 0);
//! - a disk with one file changed (written in offline with debugfs) is not reproduced: exit 6,
//!   naming the file, with diffoscope's report of its content;
//! - a recipe input changed since the bake: verify says which and exits 6 before baking.
//!
//! Debian's archive moves (several times a day for the security suite): when the inputs
//! digests of the two cold bakes differ, upstream published in between, and the second bake
//! is repeated once (the test says so).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

/// An env with its own, empty caches (nothing shared with the other tests).
fn isolated() -> Env {
    Env::isolated(&["bootstrap", "layers"])
}

fn bake(env: &Env, recipe: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["bake", "--json"];
    args.extend_from_slice(extra);
    args.push(recipe.to_str().unwrap());
    let o = env.run(&args);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["image"].clone()
}

fn digest_of(image: &serde_json::Value, format: &str) -> String {
    image["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["format"] == format)
        .unwrap_or_else(|| panic!("no {format} in {image}"))["sha256"]
        .as_str()
        .unwrap()
        .to_string()
}

fn inputs(image: &serde_json::Value) -> String {
    image["inputs_digest"].as_str().unwrap().to_string()
}

#[test]
fn the_same_inputs_give_the_same_disk_and_verify_proves_it() {
    require_bake_capabilities();
    assert!(
        which("diffoscope"),
        "missing diffoscope: apt-get install --no-install-recommends diffoscope-minimal (scripts/setup.sh installs it)"
    );
    let readme = repo_root().join("recipes/debian-minimal.yaml");
    let (one, mut two) = (isolated(), isolated());
    let a = bake(&one, &readme, &[]);
    let mut b = bake(&two, &readme, &[]);
    if inputs(&a) != inputs(&b) {
        eprintln!(
            "upstream moved between the two cold bakes (inputs differ): baking the second again"
        );
        two = isolated();
        b = bake(&two, &readme, &[]);
    }
    assert_eq!(
        inputs(&a),
        inputs(&b),
        "upstream moved twice during the test"
    );
    assert_eq!(
        a["provenance"]["source_date"], b["provenance"]["source_date"],
        "the same upstream state gives the same source date"
    );
    assert!(a["provenance"]["source_date"]["epoch"].as_i64().unwrap() > 1_600_000_000);
    assert_eq!(
        digest_of(&a, "raw"),
        digest_of(&b, "raw"),
        "two bakes from empty caches gave different raw disks"
    );
    assert_eq!(digest_of(&a, "qcow2"), digest_of(&b, "qcow2"));
    assert_eq!(
        a["version"], b["version"],
        "the version renders the source date"
    );
    // The file on disk is what the catalog says.
    assert_eq!(
        sha256sum(Path::new(&artifact_path(&a, "raw"))),
        digest_of(&a, "raw")
    );

    // Warm layers, twice (in both caches): the same disk again.
    for env in [&one, &two] {
        let warm = bake(env, &readme, &["--force"]);
        assert_eq!(inputs(&warm), inputs(&a));
        assert_eq!(
            digest_of(&warm, "raw"),
            digest_of(&a, "raw"),
            "a warm bake differs"
        );
    }

    verify_passes_from_empty_caches(&one, &a);
    verify_names_a_changed_file(&one, &a);
    verify_names_a_changed_input(&one);
    assert!(
        std::fs::read_dir(one.data.join("verify"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0,
        "verify left its scratch workspace behind"
    );
}

fn verify(env: &Env, args: &[&str]) -> Output {
    let mut all = vec!["verify"];
    all.extend_from_slice(args);
    env.run(&all)
}

fn verify_passes_from_empty_caches(env: &Env, image: &serde_json::Value) {
    let id = image["id"].as_str().unwrap();
    let o = verify(env, &[id, "--json"]);
    assert!(
        o.status.success(),
        "verify of a fresh image failed: {}",
        text(&o)
    );
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["identical"], true);
    assert_eq!(r["from_empty_caches"], true);
    assert_eq!(r["rebaked_sha256"], digest_of(image, "raw"));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("from empty caches"),
        "{}",
        text(&o)
    );
}

/// A copy of the image's raw disk with /etc/motd replaced (debugfs, offline).
fn tampered_copy(env: &Env, image: &serde_json::Value) -> PathBuf {
    let raw = PathBuf::from(artifact_path(image, "raw"));
    let copy = env.path().join("tampered.raw");
    std::fs::copy(&raw, &copy).unwrap();
    let motd = env.path().join("motd");
    std::fs::write(&motd, "not what the recipe says\n").unwrap();
    let dev = format!("{}?offset={}", copy.display(), root_offset(&copy));
    for cmd in [
        "rm /etc/motd".to_string(),
        format!("write {} /etc/motd", motd.display()),
    ] {
        let o = Command::new("debugfs")
            .args(["-w", "-R", &cmd, &dev])
            .output()
            .unwrap();
        assert!(o.status.success(), "debugfs {cmd}: {}", text(&o));
    }
    copy
}

fn verify_names_a_changed_file(env: &Env, image: &serde_json::Value) {
    let id = image["id"].as_str().unwrap();
    let copy = tampered_copy(env, image);
    let o = verify(
        env,
        &[id, "--reuse-cache", "--artifact", copy.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("NOT REPRODUCED"), "{out}");
    assert!(out.contains("/etc/motd  (content)"), "{out}");
    assert!(out.contains("partition 2, root"), "{out}");
    assert!(
        out.contains("-not what the recipe says")
            && out.contains("+Debian 12 image baked by webake."),
        "diffoscope's report of the file: {out}"
    );
    assert_eq!(
        out.matches("(content)").count(),
        1,
        "only /etc/motd differs: {out}"
    );
}

fn verify_names_a_changed_input(env: &Env) {
    // The README recipe, copied with its files; baked, then its motd edited.
    let dir = env.path().join("recipe");
    std::fs::create_dir_all(dir.join("files")).unwrap();
    let src = repo_root().join("recipes");
    std::fs::copy(src.join("debian-minimal.yaml"), dir.join("r.yaml")).unwrap();
    std::fs::copy(src.join("files/motd"), dir.join("files/motd")).unwrap();
    let recipe = dir.join("r.yaml");
    let img = bake(env, &recipe, &["--force"]);
    std::fs::write(dir.join("files/motd"), "edited after the bake\n").unwrap();
    let o = verify(env, &[img["id"].as_str().unwrap(), "--reuse-cache"]);
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("input source:files/motd of step 1. message of the day (file)"),
        "verify names the input that changed: {err}"
    );
}
