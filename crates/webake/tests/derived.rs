//! Issue 21 end to end: the example hybrid base bakes and boots under SeaBIOS and OVMF, an
//! image derived from it (`base: {image: family:...}`) bakes and boots, and a newer parent makes
//! the child stale: `run --dry-run` says so and the rebake is built on the new parent.

mod common;

use common::{Env, require_bake_capabilities, require_qemu, text};

const CHILD: &str = "version: 1
image:
  name: derived
  family: derived-test
base:
  image: family:debian-12-hardened
disk:
  size: 2GiB
  boot: [uefi]
provisioners:
  - shell:
      name: child marker
      inline:
        - echo derived > /etc/derived-marker
test:
  gate: true
  checks:
    - name: the child's own file
      run: cat /etc/derived-marker
      expect_stdout: derived
    - name: the parent's hardening is inherited
      run: sysctl -n kernel.dmesg_restrict
      expect_stdout: \"1\"
outputs: [raw]
";

fn json(o: &std::process::Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", text(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

/// The hybrid base, gate-tested under both firmwares; returns its image id.
fn bake_hybrid_parent(env: &Env) -> String {
    let o = env.run(&["bake", "recipes/hardened-base.yaml", "--test", "--json"]);
    let out = json(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    for firmware in ["BIOS (SeaBIOS)", "UEFI /usr/share/OVMF"] {
        assert!(
            err.contains("==> boot test: qemu") && err.contains(firmware),
            "no boot under {firmware}:\n{err}"
        );
    }
    assert!(
        err.contains("boot test passed: bios and uefi start the disk's kernel"),
        "{err}"
    );
    let img = &out["image"];
    assert_eq!(img["test_result"], "passed");
    assert_eq!(
        img["provenance"]["boot"],
        serde_json::json!(["bios", "uefi"])
    );
    img["id"].as_str().unwrap().to_string()
}

/// A hybrid image registers as `uefi-preferred` (dry run: no AWS call).
fn ami_boot_mode_follows_the_disk(env: &Env, image: &str) {
    let o = env.run(&[
        "publish",
        image,
        "--to",
        "aws",
        "--region",
        "eu-west-1",
        "--dry-run",
        "--json",
    ]);
    let plan = json(&o);
    assert_eq!(plan["platform"]["boot_mode"], "uefi-preferred", "{plan:#}");
}

fn bake_child(env: &Env, recipe: &std::path::Path, parent: &str) -> String {
    let out = json(&env.run(&["bake", recipe.to_str().unwrap(), "--json"]));
    let img = &out["image"];
    assert_eq!(img["test_result"], "passed", "the gate boot test ran");
    assert_eq!(img["provenance"]["parent"]["id"], parent, "{img:#}");
    assert_eq!(img["provenance"]["parent"]["family"], "debian-12-hardened");
    img["id"].as_str().unwrap().to_string()
}

#[test]
fn hybrid_parent_derived_child_and_a_stale_child_rebaked() {
    require_bake_capabilities();
    require_qemu();
    assert!(
        std::path::Path::new("/usr/share/seabios/bios-256k.bin").is_file(),
        "this test boots under SeaBIOS: apt-get install seabios"
    );
    let env = Env::new();
    let parent = bake_hybrid_parent(&env);
    ami_boot_mode_follows_the_disk(&env, &parent);

    let recipe = env.recipe("derived", CHILD);
    let child = bake_child(&env, &recipe, &parent);
    // The catalog compares parent and child like any two images.
    let o = env.run(&["images", "diff", &parent, &child, "--format", "json"]);
    assert!(o.status.success(), "{}", text(&o));

    // A newer parent: the child is stale, and says why.
    let newer = json(&env.run(&["bake", "recipes/hardened-base.yaml", "--force", "--json"]));
    let newer = newer["image"]["id"].as_str().unwrap().to_string();
    assert_ne!(newer, parent);
    let r = recipe.to_str().unwrap();
    let args = ["--no-rollout", "--publish", "none", "--no-test"];
    let mut dry = vec!["run", r, "--dry-run", "--json"];
    dry.extend(args);
    let preview = json(&env.run(&dry));
    assert_eq!(
        preview["bake"]["reuse"],
        serde_json::Value::Null,
        "{preview:#}"
    );
    let reason = preview["bake"]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&child) && reason.contains(&newer),
        "the reason names the stale child and the new parent: {reason}"
    );
    let mut run = vec!["run", r, "--json"];
    run.extend(args);
    let summary = json(&env.run(&run));
    assert_eq!(summary["bake_skipped"], false, "{summary:#}");
    let rebaked = summary["image"]["id"].as_str().unwrap().to_string();
    let shown = json(&env.run(&["images", "show", &rebaked, "--json"]));
    assert_eq!(
        shown["provenance"]["parent"]["id"], newer,
        "built on the new parent"
    );
    // And now it is up to date.
    let preview = json(&env.run(&dry));
    assert_eq!(preview["bake"]["reuse"], rebaked.as_str(), "{preview:#}");
}
