//! Knowing what is in an image (issue 5) and keeping secrets out of it (issue 10), on real bakes.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn bake_json(env: &Env, recipe: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["bake", recipe.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let o = env.run(&args);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["image"].clone()
}

#[test]
fn inventory_matches_dpkg_and_diff_shows_exactly_the_added_package() {
    require_bake_capabilities();
    let env = Env::new();
    let plain = env.recipe("plain", &format!("version: 1\nimage:\n  name: inv\n  family: inv\n{BASE}provisioners:\n  - shell:\n      inline: [\"true\"]\n"));
    let plus = env.recipe(
        "plus",
        // While a step runs, apt fetches no translated descriptions (the sandbox's apt drop-in).
        &format!("version: 1\nimage:\n  name: inv\n  family: inv\n{BASE}provisioners:\n  - shell:\n      inline:\n        - apt-get update -qq\n        - if ls /var/lib/apt/lists | grep -q Translation; then echo 'apt fetched Translation lists during the step' >&2; exit 1; fi\n        - apt-get install -y -qq --no-install-recommends less\n"),
    );
    let a = bake_json(&env, &plain, &[]);
    // --no-cache: apt must really run, so the shared package cache is exercised.
    let b = bake_json(&env, &plus, &["--no-cache"]);

    // The recorded inventory equals what dpkg itself says about the image's tree.
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let root = extract_root(Path::new(&artifact_path(&b, "raw")), tmp.path());
    let from_dpkg = packages_per_dpkg(&root);
    let recorded = packages_in_catalog(&env, b["id"].as_str().unwrap());
    assert_eq!(
        recorded, from_dpkg,
        "catalog inventory differs from dpkg-query in the image"
    );
    assert!(recorded.iter().any(|p| p.starts_with("less ")));

    assert_diff_names_exactly_less(&env, &a, &b);
    assert_lint_sbom_and_package_cache(&env, &b, &root);
}

/// `name version architecture` of every installed package, as dpkg-query reads the tree's
/// database; sorted.
fn packages_per_dpkg(root: &Path) -> Vec<String> {
    let q = Command::new("dpkg-query")
        .arg(format!(
            "--admindir={}",
            root.join("var/lib/dpkg").display()
        ))
        .args([
            "-W",
            "-f",
            "${db:Status-Abbrev}\t${Package}\t${Version}\t${Architecture}\n",
        ])
        .output()
        .unwrap();
    assert!(q.status.success(), "{}", text(&q));
    let mut from_dpkg: Vec<String> = String::from_utf8_lossy(&q.stdout)
        .lines()
        .filter(|l| l.starts_with("ii") || l.starts_with("hi"))
        .map(|l| l.split('\t').skip(1).collect::<Vec<_>>().join(" "))
        .collect();
    from_dpkg.sort();
    from_dpkg
}

/// `name version architecture` of every package in the catalog's inventory; sorted.
fn packages_in_catalog(env: &Env, id: &str) -> Vec<String> {
    let show = env.run(&["images", "show", id, "--json"]);
    let shown: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    let mut recorded: Vec<String> = shown["inventory"]["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{} {} {}",
                p["name"].as_str().unwrap(),
                p["version"].as_str().unwrap(),
                p["architecture"].as_str().unwrap()
            )
        })
        .collect();
    recorded.sort();
    recorded
}

/// The diff of the two bakes names exactly that package, in every format.
fn assert_diff_names_exactly_less(env: &Env, a: &serde_json::Value, b: &serde_json::Value) {
    let (a, b) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    let diff = env.run(&["images", "diff", a, b, "--format", "json"]);
    assert!(diff.status.success(), "{}", text(&diff));
    let d: serde_json::Value = serde_json::from_slice(&diff.stdout).unwrap();
    let added: Vec<&str> = d["packages"]["added"]
        .as_array()
        .or(d["added"].as_array())
        .unwrap_or_else(|| panic!("no added list in {d}"))
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(added, vec!["less"], "diff: {d}");
    for k in ["removed", "upgraded", "downgraded"] {
        assert!(
            d[k].as_array().unwrap().is_empty(),
            "{k} should be empty: {d}"
        );
    }
    let md = env.run(&["images", "diff", a, b, "--format", "markdown"]);
    assert!(
        String::from_utf8_lossy(&md.stdout).contains("less"),
        "{}",
        text(&md)
    );
    let txt = env.run(&["images", "diff", a, b]);
    assert!(
        String::from_utf8_lossy(&txt.stdout).contains("less"),
        "{}",
        text(&txt)
    );
}

/// The clean baked image passes the lint; the SBOM names the package; the .debs apt
/// downloaded went to the shared package cache, not into the image (extracted at `root`).
fn assert_lint_sbom_and_package_cache(env: &Env, b: &serde_json::Value, root: &Path) {
    let lint = env.run(&["lint", b["id"].as_str().unwrap()]);
    assert!(
        lint.status.success(),
        "a clean baked image fails the lint: {}",
        text(&lint)
    );
    let dir = Path::new(&artifact_path(b, "raw"))
        .parent()
        .unwrap()
        .to_path_buf();
    let spdx = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".spdx.json"))
        .unwrap()
        .path();
    assert!(
        std::fs::read_to_string(spdx)
            .unwrap()
            .contains("pkg:deb/debian/less@")
    );
    assert!(
        std::fs::read_dir(env.cache.join("packages"))
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("less_")),
        "package cache not shared"
    );
    assert!(
        !std::fs::read_dir(root.join("var/cache/apt/archives"))
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".deb")),
        ".debs left in the image"
    );
}

#[test]
fn secret_values_never_reach_logs_catalog_or_image() {
    require_bake_capabilities();
    let env = Env::new();
    let secret = "s3cr3t-Token-4f9a8b7c6d5e";
    let r = env.recipe(
        "secret",
        &format!("version: 1\nimage:\n  name: secret\n{BASE}provisioners:\n  - shell:\n      name: uses a secret\n      secret_env: [WEBAKE_TEST_SECRET]\n      inline:\n        - echo \"the token is $WEBAKE_TEST_SECRET\"\n        - echo \"$WEBAKE_TEST_SECRET\" > /etc/leaked-token\n  - shell:\n      name: reads the leaked file\n      inline:\n        - echo \"a later step prints $(cat /etc/leaked-token)\"\n"),
    );
    // Without the operator's allowlist the recipe may not read the variable at all.
    let o = env
        .cmd()
        .env("WEBAKE_TEST_SECRET", secret)
        .env_remove("WEBAKE_SECRET_ENV")
        .args(["bake", r.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("does not allow recipes to read WEBAKE_TEST_SECRET"),
        "{}",
        text(&o)
    );
    let o = env
        .cmd()
        .env("WEBAKE_TEST_SECRET", secret)
        .env("WEBAKE_SECRET_ENV", "WEBAKE_TEST_*")
        .args(["bake", r.to_str().unwrap()])
        .output()
        .unwrap();
    let all = text(&o);
    assert!(
        !o.status.success(),
        "a secret written into the image passed the lint: {all}"
    );
    assert!(
        all.contains("a later step prints [REDACTED]"),
        "a later step's output was not redacted: {all}"
    );
    assert!(
        all.contains("secret-value") && all.contains("/etc/leaked-token"),
        "the lint does not name the rule and file: {all}"
    );
    assert!(
        all.contains("the token is [REDACTED]"),
        "output not redacted: {all}"
    );
    assert!(!all.contains(secret), "the secret reached the output");
    // Not in the bake log, not in the catalog.
    for e in walk(&env.data) {
        let bytes = std::fs::read(&e).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(secret),
            "the secret is in {}",
            e.display()
        );
    }
}

fn walk(p: &Path) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                v.extend(walk(&path));
            } else {
                v.push(path);
            }
        }
    }
    v
}
