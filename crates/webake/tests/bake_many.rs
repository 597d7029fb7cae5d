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
    // The bakes ran side by side: at least one waited for the layer another was building.
    assert!(
        err.contains("waiting for a concurrent bake that builds the same layer"),
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
