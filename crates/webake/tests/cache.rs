//! The layer cache (issue 9): a corrupt entry is never used, and a cached bake yields the same
//! image contents as an uncached one.

mod common;

use common::*;

fn recipe(env: &Env) -> std::path::PathBuf {
    std::fs::create_dir_all(env.path().join("files")).unwrap();
    std::fs::write(env.path().join("files/hello"), "hello from a layer\n").unwrap();
    env.recipe(
        "cached",
        &format!(
            "version: 1\nimage:\n  name: cached\n{BASE}provisioners:\n  - file:\n      name: hello\n      source: files/hello\n      destination: /etc/hello\n  - shell:\n      name: marker\n      inline: [\"echo marker > /etc/marker\"]\n"
        ),
    )
}

fn inventory(env: &Env, id: &str) -> serde_json::Value {
    let o = env.run(&["images", "show", id, "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["inventory"].clone()
}

#[test]
fn killed_mid_write_entry_is_ignored_and_cache_never_changes_results() {
    require_bake_capabilities();
    let env = Env::new();
    let r = recipe(&env);
    let first = env.run(&["bake", r.to_str().unwrap(), "--json"]);
    assert!(first.status.success(), "{}", text(&first));
    let first: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();

    // Find the layer of step 1 and damage it the way a kill during a copy would: the tree
    // half there, no meta.json.
    let plan = env.run(&["bake", r.to_str().unwrap(), "--dry-run"]);
    let plan = String::from_utf8_lossy(&plan.stdout).into_owned();
    assert!(
        plan.contains("1. hello (file)") && plan.contains("cache hit"),
        "{plan}"
    );
    let key_prefix = plan
        .lines()
        .find(|l| l.contains("1. hello (file)"))
        .unwrap()
        .split("key ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let layers = env.cache.join("layers");
    let entry = std::fs::read_dir(&layers)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(&key_prefix))
        .unwrap()
        .path();
    std::fs::remove_file(entry.join("meta.json")).unwrap();
    std::fs::remove_file(entry.join("tree/etc/hello")).unwrap();

    let ls = env.run(&["cache", "ls"]);
    assert!(
        String::from_utf8_lossy(&ls.stdout).contains("incomplete: ignored"),
        "{}",
        text(&ls)
    );
    let dry = env.run(&["bake", r.to_str().unwrap(), "--dry-run"]);
    let dry = String::from_utf8_lossy(&dry.stdout).into_owned();
    assert!(
        dry.lines()
            .any(|l| l.contains("1. hello (file)") && l.contains("would run")),
        "a corrupt entry counted as a hit:\n{dry}"
    );

    let second = env.run(&["bake", "--force", r.to_str().unwrap(), "--json"]);
    assert!(second.status.success(), "{}", text(&second));
    let second: serde_json::Value = serde_json::from_slice(&second.stdout).unwrap();
    let raw = artifact_path(&second["image"], "raw");
    assert_eq!(
        cat_in_image(std::path::Path::new(&raw), "/etc/hello").as_deref(),
        Some("hello from a layer\n"),
        "the damaged layer was used"
    );

    // Uncached bake of the same inputs: same packages, units and kernels as the cached one.
    let third = env.run(&["bake", r.to_str().unwrap(), "--no-cache", "--json"]);
    assert!(third.status.success(), "{}", text(&third));
    let third: serde_json::Value = serde_json::from_slice(&third.stdout).unwrap();
    let (a, b) = (
        inventory(&env, first["image"]["id"].as_str().unwrap()),
        inventory(&env, third["image"]["id"].as_str().unwrap()),
    );
    for k in ["packages", "units", "kernels", "os"] {
        assert_eq!(a[k], b[k], "cached and uncached bakes differ in {k}");
    }
    assert_eq!(
        first["image"]["inputs_digest"],
        third["image"]["inputs_digest"]
    );

    // gc to a tiny limit evicts least-recently-used entries; the next bake still works.
    let gc = env
        .cmd()
        .env("WEBAKE_CACHE_MAX", "1")
        .args(["cache", "gc", "--dry-run"])
        .output()
        .unwrap();
    assert!(
        gc.status.success() && String::from_utf8_lossy(&gc.stdout).contains("would evict"),
        "{}",
        text(&gc)
    );
}
