//! The command line itself, without bakes: the documented exit codes, `--json` as one JSON
//! document on stdout, `--log-format json` errors, help and messages (issue 19).

mod common;

use std::path::Path;
use std::process::Output;

use common::{Env, text, with_aws_env};

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// A directory that looks like a root filesystem with a machine id (a lint error).
fn tree_with_machine_id(root: &Path) {
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("usr")).unwrap();
    std::fs::write(
        root.join("etc/machine-id"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
}

/// Every exit code of the README's table that can be provoked without a bake; 3 (boot test
/// failed), 5 (rollout failed) and 130 (interrupted) are asserted by boot.rs, rollout_cli.rs,
/// run.rs and bake.rs where those failures really happen.
#[test]
fn exit_codes_follow_the_documented_table() {
    let env = Env::new();
    let tree = env.path().join("tree");
    tree_with_machine_id(&tree);
    let tree_s = tree.to_str().unwrap();
    let bad_recipe = env.recipe("bad", "version: 1\nimage:\n  nme: x\n");
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["schema"], 0, "schema"),
        (
            vec!["lint", tree_s, "--allow", "machine-id"],
            0,
            "an allowed finding",
        ),
        (vec!["lint", tree_s], 1, "a lint error"),
        (
            vec!["validate", bad_recipe.to_str().unwrap()],
            2,
            "an invalid recipe",
        ),
        (
            vec!["lint", tree_s, "--allow", "no-such-rule"],
            2,
            "an unknown lint rule",
        ),
        (
            vec!["lint", "/nonexistent/tree"],
            2,
            "a missing lint target",
        ),
        (vec!["test", "/missing.raw"], 2, "a missing disk"),
        (vec!["images", "show", "img-nope"], 2, "an unknown image"),
        (
            vec!["bake", "--no-such-flag", "r.yaml"],
            2,
            "an unknown flag",
        ),
        (
            vec!["rollout", "img-x"],
            2,
            "a rollout without a repository",
        ),
        (
            vec!["publish", "img-x", "--copy-to", "us-east-1"],
            2,
            "AWS options without --to aws",
        ),
    ];
    for (args, want, what) in cases {
        let o = env.run(&args);
        assert_eq!(code(&o), want, "{what}: webake {args:?}\n{}", text(&o));
    }
}

/// An EC2 endpoint on loopback that refuses every call with a client error (not retried):
/// the publish fails at its first call.
struct RefusingEc2 {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RefusingEc2 {
    fn start() -> Self {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                let Ok((mut s, _)) = listener.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    continue;
                };
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                    .unwrap();
                let mut buf = [0u8; 65536];
                let _ = s.read(&mut buf);
                let body = "<Response><Errors><Error><Code>AuthFailure</Code>\
                            <Message>refused by the test</Message></Error></Errors>\
                            <RequestID>test</RequestID></Response>";
                let _ = write!(
                    s,
                    "HTTP/1.1 401 Unauthorized\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Self {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for RefusingEc2 {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_refused_publish_exits_4() {
    let env = Env::new();
    let disk = env.path().join("disk.raw");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let ec2 = RefusingEc2::start();
    let port = ec2.port;
    let endpoint = format!("http://127.0.0.1:{port}");
    let o = with_aws_env(env.cmd(), env.path(), &endpoint)
        .args(["publish-aws", "--disk", disk.to_str().unwrap()])
        .args(["--name", "x", "--family", "x", "--version", "1"])
        .args(["--bake-id", "bake-1", "--inputs-digest", "sha256:0"])
        .args(["--region", "eu-west-1", "--endpoint-url", &endpoint])
        .output()
        .unwrap();
    assert_eq!(code(&o), 4, "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("refused by the test"),
        "{}",
        text(&o)
    );
}

#[test]
fn json_is_one_document_on_stdout_for_every_command() {
    let env = Env::new();
    let tree = env.path().join("tree");
    tree_with_machine_id(&tree);
    let recipe = env.recipe(
        "ok",
        "version: 1\nimage:\n  name: ok\nbase:\n  mmdebstrap:\n    suite: bookworm\n",
    );
    for args in [
        vec!["images", "list", "--json"],
        vec!["images", "bakes", "--json"],
        vec!["cache", "ls", "--json"],
        vec!["clean", "--dry-run", "--json"],
        vec!["validate", recipe.to_str().unwrap(), "--json"],
        vec!["bake", recipe.to_str().unwrap(), "--dry-run", "--json"],
        vec![
            "lint",
            tree.to_str().unwrap(),
            "--allow",
            "machine-id",
            "--json",
        ],
    ] {
        let o = env.run(&args);
        assert!(o.status.success(), "webake {args:?}: {}", text(&o));
        let v: Result<serde_json::Value, _> = serde_json::from_slice(&o.stdout);
        assert!(
            v.is_ok(),
            "webake {args:?}: stdout is not one JSON document:\n{}",
            text(&o)
        );
    }
    // The plan as JSON names the steps and the digest.
    let o = env.run(&["bake", recipe.to_str().unwrap(), "--dry-run", "--json"]);
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(plan["family"], "ok");
    assert!(
        plan["inputs_digest"]
            .as_str()
            .is_some_and(|d| d.len() == 64),
        "{plan:#}"
    );
    // validate --json says what is wrong, located, and still exits 2.
    let bad = env.recipe("bad", "version: 1\nimage:\n  nme: x\n");
    let o = env.run(&["validate", bad.to_str().unwrap(), "--json"]);
    assert_eq!(code(&o), 2, "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["ok"], false);
    let err = v[0]["errors"][0].as_str().unwrap();
    assert!(err.contains("bad.yaml:3") && err.contains("name"), "{err}");
}

#[test]
fn log_format_json_makes_errors_json_lines() {
    let env = Env::new();
    let o = env.run(&["--log-format", "json", "images", "show", "img-nope"]);
    assert_eq!(code(&o), 2, "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let err = lines
        .iter()
        .find(|l| l["event"] == "error")
        .unwrap_or_else(|| panic!("no error event:\n{stderr}"));
    assert_eq!(err["exit_code"], 2);
    assert_eq!(err["kind"], "invalid");
    assert_eq!(err["source"], "webake images");
    assert!(
        err["message"].as_str().unwrap().contains("img-nope"),
        "{err}"
    );
}

#[test]
fn help_groups_global_options_and_describes_every_flag() {
    let env = Env::new();
    for cmd in [
        vec!["--help"],
        vec!["bake", "--help"],
        vec!["images", "diff", "--help"],
        vec!["images", "bakes", "--help"],
        vec!["cache", "gc", "--help"],
        vec!["run", "--help"],
        vec!["publish", "--help"],
    ] {
        let o = env.run(&cmd);
        assert!(o.status.success(), "{}", text(&o));
        let help = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(help.contains("Global options:"), "webake {cmd:?}:\n{help}");
        // Every option has a description: after its name, or on the next line.
        let lines: Vec<&str> = help.lines().collect();
        let mut in_options = false;
        for (i, line) in lines.iter().enumerate() {
            if !line.is_empty() && !line.starts_with(' ') {
                // A heading ("Options:", "Global options:") or free text (after_help).
                in_options = line.ends_with("ptions:");
                continue;
            }
            let rest = line.trim_start();
            let option_indent = line.len() - rest.len() <= 6;
            let is_option =
                rest.starts_with("--") || rest.starts_with('-') && rest.get(2..4) == Some(", ");
            if !(in_options && option_indent && is_option) {
                continue;
            }
            let inline = rest
                .split_once("  ")
                .is_some_and(|(_, d)| !d.trim().is_empty());
            let below = lines.get(i + 1).is_some_and(|next| {
                let indent = next.len() - next.trim_start().len();
                indent > line.len() - rest.len() && !next.trim().is_empty()
            });
            assert!(
                inline || below,
                "webake {cmd:?}: undescribed option {line:?}\n{help}"
            );
        }
    }
}

#[test]
fn messages_say_what_is_wrong_once() {
    let env = Env::new();
    // An empty WEBAKE_CATALOG is unset (the default catalog under the data dir).
    let o = env
        .cmd()
        .env("WEBAKE_CATALOG", "")
        .args(["images", "list", "--family", "nope"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no image of family nope"), "{err}");
    // No doubled prefixes and no internal usage lines in errors.
    let o = env.run(&["images", "show", "img-nope"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("error: error:"), "{err}");
    assert!(!err.contains("Usage:"), "{err}");
}
