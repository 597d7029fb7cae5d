//! `webake bake A B C` (issue 25): several recipes in one invocation. Three recipes share their
//! base and a slow first step: the bakes run side by side, the step is built once (the others
//! wait for it), each line says which recipe it belongs to, a third recipe fails without losing
//! the other two images, and the exit code is the failure's.

mod common;

use common::*;

fn recipe(name: &str, nonce: &str, last: &str) -> String {
    format!(
        "version: 1
image:
  name: {name}
{BASE}provisioners:
  - shell:
      name: shared
      inline:
        - sleep 5
        - echo {nonce} > /etc/shared-step
  - shell:
      name: own
      inline:
        - {last}
outputs: [raw]
"
    )
}

#[test]
fn several_recipes_bake_at_once_share_a_step_and_keep_going_after_a_failure() {
    require_bake_capabilities();
    let env = Env::new();
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        .to_string();
    let a = env.recipe("a", &recipe("many-a", &nonce, "echo a > /etc/who"));
    let b = env.recipe("b", &recipe("many-b", &nonce, "echo b > /etc/who"));
    let bad = env.recipe("bad", &recipe("many-bad", &nonce, "exit 3"));
    let o = env.run(&[
        "bake",
        "--jobs",
        "3",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        bad.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));

    // Every progress line names its recipe.
    for l in err
        .lines()
        .filter(|l| l.contains("==>") || l.contains("<=="))
    {
        assert!(
            l.starts_with("[many-a] ")
                || l.starts_with("[many-b] ")
                || l.starts_with("[many-bad] "),
            "a progress line without its recipe: {l}\n{err}"
        );
    }
    // The shared step ran once; the other two bakes used its layer.
    let built = err
        .lines()
        .filter(|l| l.contains("<== 1. shared (shell): done in") && !l.ends_with("(cached)"))
        .count();
    let cached = err
        .lines()
        .filter(|l| l.contains("<== 1. shared (shell): done in") && l.ends_with("(cached)"))
        .count();
    assert_eq!((built, cached), (1, 2), "{err}");
    // The bakes ran side by side: at least one waited for the layer another was building (or,
    // when one of them bootstrapped the base, for the base: its steps then start while the
    // base's initramfs is built, and may be done before the base is complete for the others).
    assert!(
        err.contains("waiting for a concurrent bake that builds the same layer")
            || err.contains("waiting for a concurrent bake that bootstraps the same base"),
        "{err}"
    );

    // The failure is reported and the others are recorded.
    assert!(out.contains("2 of 3 recipe(s) baked"), "{out}");
    assert!(
        out.contains("[many-bad]") && out.contains("FAILED (exit 1)"),
        "{out}"
    );
    assert!(err.contains("[many-bad] error:"), "{err}");
    let images = env.images_json();
    let mut names: Vec<&str> = images
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["many-a", "many-b"]);
    for img in images.as_array().unwrap() {
        let raw = artifact_path(img, "raw");
        let who = cat_in_image(std::path::Path::new(&raw), "/etc/who").unwrap();
        assert_eq!(who.trim(), &img["name"].as_str().unwrap()[5..]);
    }
    assert!(
        env.scratch_entries().is_empty(),
        "{:?}",
        env.scratch_entries()
    );
}

/// `webake run A B C`: the bakes run at once (sharing their step), then each image is
/// published in turn; the failing recipe does not stop the others, its stages after the bake
/// do not run, and the exit code is the failure's. Run again: every bake is skipped.
#[test]
fn several_recipes_run_at_once_and_a_failure_keeps_the_others() {
    require_bake_capabilities();
    let env = Env::new();
    let nonce = format!("run-{}", std::process::id());
    let a = env.recipe("a", &recipe("run-a", &nonce, "echo a > /etc/who"));
    let b = env.recipe("b", &recipe("run-b", &nonce, "echo b > /etc/who"));
    let bad = env.recipe("bad", &recipe("run-bad", &nonce, "exit 3"));
    let args = |recipes: &[&std::path::Path]| {
        let mut v: Vec<String> = ["run", "--jobs", "2", "--no-test", "--no-rollout", "--json"]
            .map(String::from)
            .to_vec();
        v.extend(recipes.iter().map(|p| p.display().to_string()));
        v
    };
    let argv = args(&[&a, &b, &bad]);
    let o = env.run(&argv.iter().map(String::as_str).collect::<Vec<_>>());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        err.contains("run: baking 3 of 3 image(s), up to 2 at a time"),
        "{err}"
    );
    let built = err
        .lines()
        .filter(|l| l.contains("<== 1. shared (shell): done in") && !l.ends_with("(cached)"))
        .count();
    assert_eq!(built, 1, "the shared step was built more than once:\n{err}");
    assert!(err.contains("[run-bad] error:"), "{err}");
    let runs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let by_label = |l: &str| {
        runs.as_array()
            .unwrap()
            .iter()
            .find(|r| r["label"] == l)
            .unwrap_or_else(|| panic!("no run of {l}: {runs:#}"))
            .clone()
    };
    for name in ["run-a", "run-b"] {
        let r = by_label(name);
        assert_eq!(r["ok"], true, "{r:#}");
        let stages: Vec<(&str, &str)> = r["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["stage"].as_str().unwrap(), s["status"].as_str().unwrap()))
            .collect();
        assert_eq!(
            stages,
            [
                ("bake", "done"),
                ("test", "skipped"),
                ("publish", "done"),
                ("rollout", "skipped")
            ],
            "{r:#}"
        );
        assert!(r["stages"][0]["seconds"].as_f64().unwrap() > 1.0, "{r:#}");
    }
    let failed = by_label("run-bad");
    assert_eq!(
        (&failed["ok"], &failed["failed_stage"], &failed["exit_code"]),
        (
            &serde_json::json!(false),
            &serde_json::json!("bake"),
            &serde_json::json!(1)
        ),
        "{failed:#}"
    );
    assert_eq!(failed["stages"][2]["status"], "not_run", "{failed:#}");

    // Nothing changed: nothing is baked again.
    let argv = args(&[&a, &b]);
    let again = env.run(&argv.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(again.status.success(), "{}", text(&again));
    let runs: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    for r in runs.as_array().unwrap() {
        assert_eq!(r["bake_skipped"], true, "{r:#}");
    }
    assert!(
        !String::from_utf8_lossy(&again.stderr).contains("run: baking"),
        "{}",
        text(&again)
    );
    assert!(
        env.scratch_entries().is_empty(),
        "{:?}",
        env.scratch_entries()
    );
}
