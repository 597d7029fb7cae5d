//! Debugging a bake (issue 19): `webake shell RECIPE --after STEP`, `webake shell IMAGE`,
//! `bake --on-error shell` and `webake boot IMAGE`, driven through the binary with the shell's commands on stdin (no
//! terminal needed: the shell reads them as a user would type them).

mod common;

use std::io::Write;
use std::process::{Output, Stdio};

use common::*;

fn recipe(env: &Env, name: &str, steps: &str) -> std::path::PathBuf {
    env.recipe(
        name,
        &format!("version: 1\nimage:\n  name: {name}\n{BASE}provisioners:\n{steps}"),
    )
}

const TWO_STEPS: &str = "  - shell:
      name: one
      inline: [\"echo first > /etc/one\"]
  - shell:
      name: two
      inline: [\"echo second > /etc/two\"]
";

const FAILING: &str = "  - shell:
      name: half done
      inline:
        - echo partial > /etc/partial
        - \"false\"
        - echo never > /etc/never
";

/// Run webake with `input` as the shell's stdin.
fn with_input(env: &Env, args: &[&str], input: &str) -> Output {
    let mut child = env
        .cmd()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run webake");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Cached layers holding `path` (the cache is shared with other tests: look for the file).
fn layers_with(env: &Env, path: &str) -> Vec<String> {
    std::fs::read_dir(env.cache.join("layers"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("tree").join(path).exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn shell_after_a_step_sees_that_tree_in_the_sandbox_and_keeps_nothing() {
    require_bake_capabilities();
    let env = Env::new();
    let r = recipe(&env, "shelled", TWO_STEPS);
    let r = r.to_str().unwrap();
    // A canary on the host, next to the recipe: the shell must not see it.
    let canary = env.path().join("host-canary");
    std::fs::write(&canary, "host").unwrap();
    let script = format!(
        "cat /etc/one\ntest -e /etc/two || echo no-two-yet\ntest -e {} || echo host-invisible\necho x > /etc/scribble\nexit 7\n",
        canary.display()
    );
    let o = with_input(&env, &["shell", r, "--after", "1"], &script);
    assert_eq!(
        o.status.code(),
        Some(7),
        "the shell's exit code: {}",
        text(&o)
    );
    let out = stdout(&o);
    for needle in ["first", "no-two-yet", "host-invisible"] {
        assert!(out.contains(needle), "missing {needle:?}: {}", text(&o));
    }
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("shell on the tree after step 1. one (shell), in the step sandbox"),
        "{}",
        text(&o)
    );

    // By name, after the last step: both files; the scribble of the first shell is gone.
    let o = with_input(
        &env,
        &["shell", r, "--after", "two"],
        "cat /etc/one /etc/two\ntest -e /etc/scribble || echo discarded\n",
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = stdout(&o);
    assert!(
        out.contains("first") && out.contains("second") && out.contains("discarded"),
        "{}",
        text(&o)
    );
    assert!(
        layers_with(&env, "etc/scribble").is_empty(),
        "the shell's change reached a cached layer"
    );
    assert!(
        env.scratch_entries().is_empty(),
        "{:?}",
        env.scratch_entries()
    );
    assert_eq!(std::fs::read_to_string(&canary).unwrap(), "host");

    // A step that does not exist: invalid input, the steps listed.
    let o = env.run(&["shell", r, "--after", "three"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("no step of") && text(&o).contains("1. one (shell), 2. two (shell)"),
        "{}",
        text(&o)
    );

    // The baked image, by id: its root filesystem as baked.
    let o = env.run(&["bake", "--json", r]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let id = v["image"]["id"].as_str().unwrap();
    let o = with_input(
        &env,
        &["shell", id],
        "cat /etc/two\ngrep -c UUID= /etc/fstab\n",
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(stdout(&o).contains("second"), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&format!("shell on the tree image {id}")),
        "{}",
        text(&o)
    );
    let o = env.run(&["shell", "no-such-image"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));

    boot_puts_the_serial_console_on_the_terminal(&env, id);
}

/// `webake boot IMAGE`: a throwaway copy boots with root logged in on the serial console,
/// which is webake's stdin/stdout; `poweroff` ends it with exit 0; the image is unchanged.
fn boot_puts_the_serial_console_on_the_terminal(env: &Env, id: &str) {
    require_qemu();
    let o = env.run(&["images", "show", id, "--json"]);
    let img: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let raw = artifact_path(&img, "raw");
    let before = sha256sum(std::path::Path::new(&raw));
    let mut child = env
        .cmd()
        .args(["boot", id])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run webake boot");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // Read the console until root's prompt, then type; the reader keeps draining after.
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut console = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    while !String::from_utf8_lossy(&console).contains("root@") {
        match rx.recv_timeout(std::time::Duration::from_secs(5)) {
            Ok(chunk) => console.extend(chunk),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(_) => break,
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "no root prompt on the console:\n{}",
                String::from_utf8_lossy(&console)
            );
        }
    }
    std::thread::sleep(std::time::Duration::from_secs(1));
    stdin
        .write_all(b"echo WEBAKE-$((6*7)); cat /etc/two; poweroff\n")
        .unwrap();
    let status = child.wait().unwrap();
    reader.join().unwrap();
    console.extend(rx.try_iter().flatten());
    let console = String::from_utf8_lossy(&console);
    assert!(status.success(), "webake boot: {status}\n{console}");
    assert!(
        console.contains("WEBAKE-42") && console.contains("second"),
        "the typed command ran in the guest:\n{console}"
    );
    assert_eq!(
        sha256sum(std::path::Path::new(&raw)),
        before,
        "the image was written"
    );
    assert!(
        env.scratch_entries().is_empty(),
        "{:?}",
        env.scratch_entries()
    );
}

#[test]
fn on_error_shell_opens_the_failed_steps_tree_then_cleans_up() {
    require_bake_capabilities();
    let env = Env::new();
    let r = recipe(&env, "failing", FAILING);
    let o = with_input(
        &env,
        &["bake", "--on-error", "shell", r.to_str().unwrap()],
        "cat /etc/partial\ntest -e /etc/never || echo stopped-there\nls /run/webake/gen\n",
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = stdout(&o);
    for needle in ["partial", "stopped-there", "inline.sh"] {
        assert!(out.contains(needle), "missing {needle:?}: {}", text(&o));
    }
    let err = String::from_utf8_lossy(&o.stderr);
    for needle in [
        "webake: inline command 2 of 3 failed with exit status 1: false",
        "opening a shell in the tree of step 1. half done (shell) as it failed (--on-error shell)",
    ] {
        assert!(err.contains(needle), "missing {needle:?}:\n{err}");
    }
    assert!(
        env.scratch_entries().is_empty(),
        "{:?}",
        env.scratch_entries()
    );
    assert_eq!(env.images_json().as_array().unwrap().len(), 0);

    // Without a shell, the error itself names the command that failed.
    let o = env.run(&["bake", r.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("webake: inline command 2 of 3 failed with exit status 1: false"),
        "{}",
        text(&o)
    );
}

/// A step silent for longer than the heartbeat shows that it is still running, and for how
/// long (issue 19: long steps show elapsed time), in text and in JSON progress.
#[test]
fn a_long_silent_step_shows_it_is_still_running() {
    require_bake_capabilities();
    let env = Env::new();
    let r = recipe(
        &env,
        "slow",
        "  - shell:\n      name: slow\n      inline: [\"sleep 32\"]\n",
    );
    // --no-cache: the layer cache is shared and outlives the test; the step must run.
    let o = env.run(&[
        "--log-format",
        "json",
        "bake",
        "--no-cache",
        r.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let beats: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "progress")
        .collect();
    assert_eq!(
        beats.len(),
        1,
        "one heartbeat in 32 s of silence: {beats:?}"
    );
    assert_eq!(beats[0]["step"], "1. slow (shell)");
    assert!(beats[0]["seconds"].as_f64().unwrap() >= 30.0, "{beats:?}");
}
