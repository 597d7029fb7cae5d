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
// A small HTTP proxy in front of moto for the base download. moto 5.2 has two quirks that
// real AWS does not: RegisterImage invents its own root snapshot (with no EBS direct blocks)
// instead of keeping the one we uploaded, and ListSnapshotBlocks answers `"BlockIndex": "0"`
// (a string) where the API has an integer. The proxy maps the AMI's root snapshot back to the
// uploaded one in DescribeImages answers and unquotes the block indexes; everything else is
// passed through unchanged. It counts the operations it forwarded.

struct MotoFix {
    port: u16,
    /// AMI id -> the snapshot really uploaded for it.
    roots: Arc<Mutex<BTreeMap<String, String>>>,
    ops: Arc<Mutex<BTreeMap<String, usize>>>,
}

impl MotoFix {
    fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let roots: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
        let ops: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
        let (r, o) = (roots.clone(), ops.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (r, o) = (r.clone(), o.clone());
                std::thread::spawn(move || {
                    if let Err(e) = proxy_one(conn, upstream, &r, &o) {
                        eprintln!("proxy: {e}");
                    }
                });
            }
        });
        MotoFix { port, roots, ops }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn map_root(&self, ami: &str, snapshot: &str) {
        self.roots
            .lock()
            .unwrap()
            .insert(ami.to_string(), snapshot.to_string());
    }

    fn count(&self, op: &str) -> usize {
        self.ops.lock().unwrap().get(op).copied().unwrap_or(0)
    }
}

fn proxy_one(
    mut client: TcpStream,
    upstream: u16,
    roots: &Mutex<BTreeMap<String, String>>,
    ops: &Mutex<BTreeMap<String, usize>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let end = line == "\r\n";
        head.push(line);
        if end {
            break;
        }
    }
    let len: usize = head
        .iter()
        .find_map(|h| {
            let (k, v) = h.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    let form = String::from_utf8_lossy(&body).to_string();
    let path = head[0].split(' ').nth(1).unwrap_or_default().to_string();
    let route = path.split('?').next().unwrap_or_default().to_string();
    let op = if let Some(a) = form.split('&').find_map(|kv| kv.strip_prefix("Action=")) {
        a.to_string()
    } else if head[0].starts_with("GET ") && route.ends_with("/blocks") {
        "ListSnapshotBlocks".into()
    } else if head[0].starts_with("GET ") && route.contains("/blocks/") {
        "GetSnapshotBlock".into()
    } else {
        "Other".into()
    };
    *ops.lock().unwrap().entry(op.clone()).or_default() += 1;

    // Forward with `Connection: close` and read the whole answer.
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    let mut out = Vec::new();
    out.extend_from_slice(head[0].as_bytes());
    for h in &head[1..head.len() - 1] {
        if !h.to_ascii_lowercase().starts_with("connection:") {
            out.extend_from_slice(h.as_bytes());
        }
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out.extend_from_slice(&body);
    up.write_all(&out)?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp)?;

    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .unwrap_or(resp.len());
    let resp_head = String::from_utf8_lossy(&resp[..split]).to_string();
    let mut resp_body = resp[split..].to_vec();
    if op == "ListSnapshotBlocks" {
        resp_body = unquote_block_indexes(&String::from_utf8_lossy(&resp_body)).into_bytes();
    }
    if op == "DescribeImages" {
        let roots = roots.lock().unwrap().clone();
        for (ami, snap) in roots {
            if form.contains(&format!("ImageId.1={ami}")) {
                resp_body =
                    replace_snapshot_ids(&String::from_utf8_lossy(&resp_body), &snap).into_bytes();
            }
        }
    }
    let mut new_head = String::new();
    for line in resp_head.split("\r\n").filter(|l| !l.is_empty()) {
        let lower = line.to_ascii_lowercase();
        if !lower.starts_with("connection:") && !lower.starts_with("content-length:") {
            new_head.push_str(line);
            new_head.push_str("\r\n");
        }
    }
    new_head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        resp_body.len()
    ));
    client.write_all(new_head.as_bytes())?;
    client.write_all(&resp_body)?;
    client.flush()?;
    let _ = client.shutdown(Shutdown::Both);
    Ok(())
}

/// `"BlockIndex": "12"` -> `"BlockIndex": 12`.
fn unquote_block_indexes(json: &str) -> String {
    const KEY: &str = "\"BlockIndex\": \"";
    let mut out = String::with_capacity(json.len());
    let mut rest = json;
    while let Some(pos) = rest.find(KEY) {
        out.push_str(&rest[..pos]);
        out.push_str("\"BlockIndex\": ");
        let after = &rest[pos + KEY.len()..];
        let end = after.find('"').unwrap_or(after.len());
        out.push_str(&after[..end]);
        rest = after.get(end + 1..).unwrap_or("");
    }
    out.push_str(rest);
    out
}

/// Every `<snapshotId>…</snapshotId>` of an EC2 answer -> `<snapshotId>{snap}</snapshotId>`.
fn replace_snapshot_ids(xml: &str, snap: &str) -> String {
    const OPEN: &str = "<snapshotId>";
    const CLOSE: &str = "</snapshotId>";
    let mut out = String::with_capacity(xml.len());
    let mut rest = xml;
    while let Some(pos) = rest.find(OPEN) {
        out.push_str(&rest[..pos + OPEN.len()]);
        out.push_str(snap);
        let after = &rest[pos + OPEN.len()..];
        rest = &after[after.find(CLOSE).unwrap_or(after.len())..];
    }
    out.push_str(rest);
    out
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
    let raw = artifact_path(&v["image"], "raw").into();
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

/// Removes what a bake from a moto AMI leaves in the shared cache (moto's ids are new on
/// every run, so these entries would never be used again): the base entry of that AMI and
/// the layers built by the given bakes.
struct SharedCacheCleanup {
    ami: String,
    bake_ids: Vec<String>,
}

impl Drop for SharedCacheCleanup {
    fn drop(&mut self) {
        let cache = shared_cache();
        let meta = |p: &Path| -> serde_json::Value {
            std::fs::read_to_string(p.join("meta.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default()
        };
        for e in std::fs::read_dir(cache.join("bootstrap"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if meta(&e.path())["ami"] == self.ami.as_str() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        for e in std::fs::read_dir(cache.join("layers"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let m = meta(&e.path());
            if self.bake_ids.iter().any(|b| m["bake_id"] == b.as_str()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Mode and type lines of `path` in the root filesystem of a raw disk (`debugfs stat`).
fn stat_in_image(raw: &Path, path: &str) -> String {
    let o = Command::new("debugfs")
        .arg("-R")
        .arg(format!("stat {path}"))
        .arg(format!("{}?offset={}", raw.display(), root_offset(raw)))
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn bake_from_a_published_ami() {
    require_bake_capabilities();
    let moto = Moto::start();
    let fix = MotoFix::start(moto.port);
    let env = Env::new();

    // Image A, published to eu-west-1.
    let (a, a_raw) = bake(&env, &recipe_a(&env), None);
    let o = run(
        aws_cmd(&env, &moto.url()),
        &[
            "publish",
            &a,
            "--to",
            "aws",
            "--region",
            "eu-west-1",
            "--endpoint-url",
            &moto.url(),
        ],
    );
    assert!(o.status.success(), "publish A: {}", text(&o));
    let pubs = aws_publications(&show_json(&env, &a));
    let (ami, snap) = pubs
        .get("eu-west-1")
        .expect("eu-west-1 publication")
        .clone();
    assert!(
        ami.starts_with("ami-") && snap.starts_with("snap-"),
        "{pubs:?}"
    );
    fix.map_root(&ami, &snap);
    let mut cleanup = SharedCacheCleanup {
        ami: ami.clone(),
        bake_ids: vec![],
    };

    // Image B starts from A's AMI. Its step needs a working chroot: /bin/sh, apt-get (with
    // the network), the file A wrote.
    let b_recipe = env.recipe(
        "from-ami",
        &format!(
            "version: 1\nimage:\n  name: from-ami\nbase:\n  ami:\n    id: {ami}\n    region: eu-west-1\nprovisioners:\n  - shell:\n      name: mark b\n      inline:\n        - test -x /bin/sh && test -L /bin\n        - cat /etc/webake-a > /etc/webake-b-saw-a\n        - apt-get -q update\n        - echo written-by-b > /etc/webake-b\noutputs: [raw]\n"
        ),
    );
    let mut c = aws_cmd(&env, &fix.url());
    c.env("WEBAKE_AWS_ENDPOINT_URL", fix.url());
    let o = run(c, &["bake", b_recipe.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    if let Some(id) = v["bake_id"].as_str() {
        cleanup.bake_ids.push(id.to_string());
    }
    assert!(o.status.success(), "bake from {ami}: {}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        stderr.contains(&format!(
            "==> base: download AMI {ami} (eu-west-1) root snapshot {snap}"
        )),
        "{stderr}"
    );
    assert!(fix.count("GetSnapshotBlock") > 0, "no block was downloaded");
    let b_raw = PathBuf::from(
        v["image"]["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["format"] == "raw")
            .unwrap()["path"]
            .as_str()
            .unwrap(),
    );

    // B holds A's file and its own.
    assert_eq!(
        cat_in_image(&b_raw, "/etc/webake-a").as_deref(),
        Some("written-by-a\n")
    );
    assert_eq!(
        cat_in_image(&b_raw, "/etc/webake-b-saw-a").as_deref(),
        Some("written-by-a\n")
    );
    assert_eq!(
        cat_in_image(&b_raw, "/etc/webake-b").as_deref(),
        Some("written-by-b\n")
    );
    // What `debugfs rdump` alone would lose survives: setuid bits and device nodes.
    for (path, want) in [
        ("/usr/bin/su", "Mode:  04755"),
        ("/usr/bin/passwd", "Mode:  04755"),
    ] {
        let (sa, sb) = (stat_in_image(&a_raw, path), stat_in_image(&b_raw, path));
        assert!(sa.contains(want), "A {path}: {sa}");
        assert!(sb.contains(want), "B {path}: {sb}");
    }
    let null = stat_in_image(&b_raw, "/dev/null");
    assert!(
        null.contains("Type: character special")
            && null.contains("Device major/minor number: 01:03"),
        "B /dev/null: {null}"
    );
    // The base is in the bootstrap cache, keyed by the AMI, with its provenance.
    let show = show_json(&env, v["image"]["id"].as_str().unwrap());
    assert!(show["publications"].as_array().unwrap().is_empty());

    // A second plan finds the cached base: nothing is downloaded again.
    let blocks = fix.count("GetSnapshotBlock");
    let mut c = aws_cmd(&env, &fix.url());
    c.env("WEBAKE_AWS_ENDPOINT_URL", fix.url());
    let o = run(c, &["bake", b_recipe.to_str().unwrap(), "--dry-run"]);
    assert!(o.status.success(), "dry run: {}", text(&o));
    let plan = String::from_utf8_lossy(&o.stdout).to_string();
    let line = plan
        .lines()
        .find(|l| l.trim_start().starts_with("base "))
        .unwrap_or_else(|| panic!("no base line:\n{plan}"));
    assert!(
        line.contains(&ami) && line.contains(&snap) && line.ends_with("cache hit"),
        "{line}"
    );
    assert_eq!(fix.count("GetSnapshotBlock"), blocks);
    let entry = std::fs::read_dir(env.cache.join("bootstrap"))
        .unwrap()
        .flatten()
        .find(|e| {
            std::fs::read_to_string(e.path().join("meta.json")).is_ok_and(|m| m.contains(&ami))
        })
        .expect("a bootstrap cache entry for the AMI");
    assert!(entry.path().join("rootfs/etc/webake-a").is_file());
    assert!(
        !entry.path().join("disk.raw").exists(),
        "the downloaded disk is not kept"
    );
}
