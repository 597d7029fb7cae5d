//! `webake publish` end to end: a real bake, published locally and to a moto server on
//! loopback (EBS direct upload, RegisterImage, CopyImage, tags), recorded in the catalog,
//! idempotent on a second run; then a bake that starts from the published AMI
//! (`base: {ami: …}`), its root filesystem downloaded through the EBS direct APIs.
//!
//! Needs root (the bakes) and moto (`pip install 'moto[server]'`); fails, never skips,
//! without them. Nothing talks to real AWS: every endpoint is 127.0.0.1 and the credentials
//! are dummies.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const PIP_HINT: &str =
    "pip install -r crates/webake-aws/requirements-test.txt   (i.e. pip install 'moto[server]')";

// ---------------------------------------------------------------------------------------
// moto on loopback, killed on Drop

struct Moto {
    child: Child,
    port: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Moto {
    fn start() -> Self {
        let port = free_port();
        let works = |program: &str, args: &[&str]| {
            Command::new(program)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        let mut cmd = if works("moto_server", &["--help"]) {
            Command::new("moto_server")
        } else {
            assert!(
                works("python3", &["-c", "import moto.server, flask, werkzeug"]),
                "moto server is not installed (neither `moto_server` nor `python3 -m moto.server` works).\nInstall it with:\n    {PIP_HINT}\n(scripts/setup.sh --test installs it into target/pyenv: export PATH=$PWD/target/pyenv/bin:$PATH)"
            );
            let mut c = Command::new("python3");
            c.args(["-m", "moto.server"]);
            c
        };
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!("starting moto server: {e}\nInstall it with:\n    {PIP_HINT}")
        });
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(mut s) = child.stderr.take() {
                    let _ = s.read_to_string(&mut err);
                }
                panic!("moto server exited with {status}: {err}\nIs it installed? {PIP_HINT}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "moto server did not listen on port {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // Drain stderr so moto never blocks on a full pipe.
        if let Some(mut s) = child.stderr.take() {
            std::thread::spawn(move || {
                let mut sink = Vec::new();
                let _ = s.read_to_end(&mut sink);
            });
        }
        Moto { child, port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// helpers

/// `webake …` with dummy credentials and nothing from the host's AWS configuration.
fn aws_cmd(env: &Env, endpoint: &str) -> Command {
    let mut c = env.cmd();
    for k in [
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL_EC2",
        "AWS_ENDPOINT_URL_EBS",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
    ] {
        c.env_remove(k);
    }
    let home = env.path().join("aws-home");
    std::fs::create_dir_all(&home).unwrap();
    c.env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_CONFIG_FILE", home.join("config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join("credentials"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ENDPOINT_URL", endpoint);
    c
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
    let raw = v["image"]["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["format"] == "raw")
        .expect("raw artifact")["path"]
        .as_str()
        .unwrap()
        .into();
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
    let env = Env::new();
    let (id, _raw) = bake(&env, &recipe_a(&env), None);

    // Nowhere yet.
    assert!(
        show_json(&env, &id)["publications"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // --to local (the default) records the local artifact.
    let o = env.run(&["publish", &id]);
    assert!(o.status.success(), "publish (local): {}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&format!("published {id} locally")),
        "{}",
        text(&o)
    );
    let show = show_json(&env, &id);
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

    // --to aws against moto: upload + register in eu-west-1, copy to us-east-1.
    let args = [
        "publish",
        &id,
        "--to",
        "aws",
        "--region",
        "eu-west-1",
        "--copy-to",
        "us-east-1",
        "--endpoint-url",
        &moto.url(),
        "--tag",
        "team=platform",
    ];
    let o = run(aws_cmd(&env, &moto.url()), &args);
    assert!(o.status.success(), "publish --to aws: {}", text(&o));
    let first = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        first.contains(&format!("published {id} as pub-a-")),
        "{}",
        text(&o)
    );
    assert!(!first.contains("already published"), "{}", text(&o));

    let show = show_json(&env, &id);
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
        let tags = ami_tags(&moto.url(), region, ami);
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

    // The text view shows both regions with their ids.
    let o = env.run(&["images", "show", &id]);
    assert!(o.status.success(), "{}", text(&o));
    let shown = String::from_utf8_lossy(&o.stdout).to_string();
    for (region, (ami, snap)) in &pubs {
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

    // Again: nothing new, the same AMIs, said so.
    let o = run(aws_cmd(&env, &moto.url()), &args);
    assert!(o.status.success(), "second publish: {}", text(&o));
    let second = String::from_utf8_lossy(&o.stdout).to_string();
    for (region, (ami, _)) in &pubs {
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
    // The catalog still holds the same AMIs. (The snapshot id of the home region may change:
    // a reused AMI reports its root mapping, and moto's RegisterImage invents its own root
    // snapshot instead of keeping ours; on AWS both are the uploaded snapshot.)
    let again = aws_publications(&show_json(&env, &id));
    assert_eq!(
        again
            .iter()
            .map(|(r, (a, _))| (r.clone(), a.clone()))
            .collect::<Vec<_>>(),
        pubs.iter()
            .map(|(r, (a, _))| (r.clone(), a.clone()))
            .collect::<Vec<_>>(),
    );
    assert!(
        again.values().all(|(_, s)| s.starts_with("snap-")),
        "{again:?}"
    );
    assert_eq!(again["us-east-1"], pubs["us-east-1"]);
}
