//! The one AWS test harness: a moto server on loopback (killed in Drop) and a recording,
//! fault-injecting, validating HTTP proxy in front of it.
//!
//! Shared by `cargo test -p webake-aws` (`mod common;`) and the CLI's publish tests
//! (`crates/webake/tests/publish.rs` includes this file with `#[path]`), so it uses only std,
//! `serde_json` and `webake_aws`, which both test targets have.
//!
//! The proxy models documented AWS behaviour that moto 5.2 lacks, so tests exercise what
//! webake meets on AWS:
//! - the EBS direct API contract, checked on every request and answered like AWS when broken
//!   (`ValidationException`): 512 KiB blocks, `x-amz-Data-Length`, the block's base64
//!   SHA-256, the block index inside the volume, `ChangedBlocksCount` equal to the blocks
//!   written, the LINEAR aggregate checksum; blocks for a deleted snapshot get
//!   `ResourceNotFoundException` (moto: HTML 500);
//! - optional "not visible yet": `ResourceNotFoundException` for a snapshot's blocks during
//!   a window after StartSnapshot (coldsnap issue 43);
//! - idempotency tokens of StartSnapshot and CopyImage: a repeated token gets the original
//!   answer, even if that resource was deleted since (moto ignores tokens);
//! - `InvalidAMIName.Duplicate` for RegisterImage / CopyImage of a name this account already
//!   uses in the region (moto accepts duplicates);
//! - tag specifications of RegisterImage (image) and CopyImage (image and snapshot), applied
//!   at creation (moto drops them);
//! - the AMI's root snapshot: moto's RegisterImage invents its own; DescribeImages answers
//!   are rewritten to name the snapshot that was registered;
//! - `InvalidSnapshot.InUse` for a snapshot used by a registered AMI, and optionally for a
//!   few calls after that AMI was deregistered (moto deletes it at once);
//! - `ListSnapshotBlocks` block indexes as integers (moto: strings).
//!
//! Faults: canned answers (N times or during a time window), a lost answer (forwarded, then
//! answered 500), a delay, and a copy deregistered right after CopyImage.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use webake_aws::{ClientSettings, RetryPolicy, Session, StaticCredentials, Timing};

pub const PIP_HINT: &str = "pip install -r crates/webake-aws/requirements-test.txt   (i.e. pip install 'moto[server]'; scripts/setup.sh --test installs it into target/pyenv: export PATH=$PWD/target/pyenv/bin:$PATH)";

const BLOCK: usize = 512 * 1024;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------------------------------
// moto

/// A moto server on 127.0.0.1:<free port>, killed on Drop.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    pub fn start() -> Self {
        Self::start_with_path(None)
    }

    /// Start with `PATH` replaced for the child (to test the "moto missing" message).
    pub fn start_with_path(path: Option<&str>) -> Self {
        let port = free_port();
        let command = |program: &str| {
            let mut c = Command::new(program);
            if let Some(p) = path {
                c.env("PATH", p);
            }
            c
        };
        let has_cli = command("moto_server")
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        let mut cmd = if has_cli {
            command("moto_server")
        } else {
            let ok = command("python3")
                .args(["-c", "import moto.server, flask, werkzeug"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(
                ok,
                "moto server is not installed (neither `moto_server` nor `python3 -m moto.server` works).\nInstall it with:\n    {PIP_HINT}"
            );
            let mut c = command("python3");
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
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(mut s) = child.stderr.take() {
                    let _ = s.read_to_string(&mut err);
                }
                panic!("moto server exited with {status}: {err}\nIs it installed? {PIP_HINT}");
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("moto server did not listen on port {port} within 30 s");
            }
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

    pub fn url(&self) -> String {
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
// recorded requests and canned answers

/// One request seen by the proxy.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub op: String,
    pub region: String,
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, String>,
    /// The body (for PutSnapshotBlock only if the proxy keeps block bodies).
    pub body: Vec<u8>,
    pub body_len: usize,
    /// Answered by a fault rule or the AWS model instead of moto.
    pub faulted: bool,
    pub at: Instant,
}

impl Recorded {
    /// Form fields of an EC2 query request.
    pub fn form(&self) -> BTreeMap<String, String> {
        parse_form(&String::from_utf8_lossy(&self.body))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
    /// The JSON body of an EBS request.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }
}

#[derive(Debug, Clone)]
pub struct Canned {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Canned {
    /// An EC2 (query protocol) error.
    pub fn ec2_error(status: u16, code: &str) -> Self {
        Self::ec2_error_msg(status, code, &format!("injected {code}"))
    }
    pub fn ec2_error_msg(status: u16, code: &str, message: &str) -> Self {
        Canned {
            status,
            headers: vec![("Content-Type".into(), "text/xml".into())],
            body: format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>00000000-0000-0000-0000-000000000000</RequestID></Response>"
            ),
        }
    }
    /// An EBS (REST-JSON) error.
    pub fn ebs_error(status: u16, code: &str) -> Self {
        Self::ebs_error_msg(status, code, &format!("injected {code}"))
    }
    pub fn ebs_error_msg(status: u16, code: &str, message: &str) -> Self {
        Canned {
            status,
            headers: vec![
                ("Content-Type".into(), "application/json".into()),
                ("x-amzn-ErrorType".into(), code.into()),
            ],
            body: serde_json::json!({ "message": message }).to_string(),
        }
    }
    pub fn plain(status: u16) -> Self {
        Canned {
            status,
            headers: vec![],
            body: String::new(),
        }
    }
    pub fn ec2_ok(action: &str) -> Self {
        Canned {
            status: 200,
            headers: vec![("Content-Type".into(), "text/xml".into())],
            body: format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><{action}Response xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>r</requestId><return>true</return></{action}Response>"
            ),
        }
    }
    /// The throttling error of `op`'s protocol.
    pub fn throttled(op: &str) -> Self {
        if is_ebs_op(op) {
            Canned::ebs_error(400, "RequestThrottledException")
        } else {
            Canned::ec2_error(503, "RequestLimitExceeded")
        }
    }
    /// A 500 of `op`'s protocol.
    pub fn internal(op: &str) -> Self {
        if is_ebs_op(op) {
            Canned::ebs_error(500, "InternalServerException")
        } else {
            Canned::ec2_error(500, "InternalError")
        }
    }

    fn to_http(&self) -> Vec<u8> {
        let mut resp = format!(
            "HTTP/1.1 {} Proxy\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.status,
            self.body.len()
        );
        for (k, v) in &self.headers {
            resp.push_str(&format!("{k}: {v}\r\n"));
        }
        resp.push_str("\r\n");
        resp.push_str(&self.body);
        resp.into_bytes()
    }
}

pub fn is_ebs_op(op: &str) -> bool {
    matches!(
        op,
        "StartSnapshot"
            | "PutSnapshotBlock"
            | "CompleteSnapshot"
            | "GetSnapshotBlock"
            | "ListSnapshotBlocks"
            | "ListChangedBlocks"
    )
}

// ---------------------------------------------------------------------------------------
// fault rules

enum Action {
    Answer(Box<dyn Fn() -> Canned + Send>),
    /// Forward (the call takes effect), then answer 500: the answer is lost.
    LoseAnswer,
    /// Hold the request, then forward it.
    Delay(Duration),
    /// After a successful CopyImage, deregister the copy (as if deleted by someone else, or
    /// a repeated token returning a copy deregistered since).
    VanishCopy,
}

struct Rule {
    op: String,
    region: Option<String>,
    remaining: Option<usize>,
    /// Active for this long from its first match.
    window: Option<(Duration, Option<Instant>)>,
    action: Action,
}

impl Rule {
    fn matches(&self, op: &str, region: &str) -> bool {
        self.op == op
            && self.region.as_deref().is_none_or(|r| r == region)
            && self.remaining != Some(0)
            && self
                .window
                .is_none_or(|(d, start)| start.is_none_or(|s| s.elapsed() < d))
    }
    fn take(&mut self) {
        if let Some(n) = self.remaining.as_mut() {
            *n -= 1;
        }
        if let Some((_, start @ None)) = self.window.as_mut() {
            *start = Some(Instant::now());
        }
    }
}

// ---------------------------------------------------------------------------------------
// the AWS model

#[derive(Debug, Clone, PartialEq, Eq)]
enum SnapState {
    Pending,
    Completed,
    Deleted,
}

#[derive(Debug)]
struct EbsSnapshot {
    state: SnapState,
    started_at: Instant,
    volume_gib: u64,
    /// block index -> SHA-256
    blocks: BTreeMap<u64, [u8; 32]>,
}

#[derive(Debug, Clone)]
struct ModelImage {
    region: String,
    /// The snapshots its block device mappings use (as AWS would report them).
    snapshots: Vec<String>,
    /// moto's own invented root snapshots (deleted with the AMI).
    moto_snapshots: Vec<String>,
}

#[derive(Default)]
struct Model {
    snapshots: BTreeMap<String, EbsSnapshot>,
    images: BTreeMap<String, ModelImage>,
    /// snapshot -> DeleteSnapshot calls still refused since the AMI using it was deregistered
    released: BTreeMap<String, usize>,
    /// (region, op, token) -> raw upstream answer
    tokens: BTreeMap<(String, String, String), Vec<u8>>,
    /// moto's invented snapshot id -> the registered one (rewritten in DescribeImages)
    snapshot_alias: BTreeMap<String, String>,
    invisible_after_start: Duration,
    in_use_after_deregister: usize,
}

/// A resource created through the proxy.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Created {
    pub region: String,
    /// "image" or "snapshot"
    pub kind: &'static str,
    pub id: String,
}

#[derive(Default)]
struct ProxyState {
    log: Vec<Recorded>,
    rules: Vec<Rule>,
    in_flight: BTreeMap<String, usize>,
    max_in_flight: BTreeMap<String, usize>,
    model: Model,
    violations: Vec<String>,
    created: Vec<Created>,
    keep_block_bodies: bool,
}

/// HTTP proxy on 127.0.0.1 in front of moto: records, injects faults, validates and models
/// AWS (see the module documentation).
pub struct Proxy {
    pub port: u16,
    upstream: u16,
    state: Arc<Mutex<ProxyState>>,
}

impl Proxy {
    pub fn start(upstream_port: u16) -> Self {
        Self::start_with(upstream_port, true)
    }

    /// `keep_block_bodies: false` records PutSnapshotBlock without its 512 KiB body (for big
    /// disks).
    pub fn start_with(upstream_port: u16, keep_block_bodies: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(ProxyState {
            keep_block_bodies,
            ..ProxyState::default()
        }));
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || {
                    if let Err(e) = handle(conn, upstream_port, &st) {
                        eprintln!("proxy: {e}");
                    }
                });
            }
        });
        Proxy {
            port,
            upstream: upstream_port,
            state,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProxyState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, rule: Rule) {
        self.lock().rules.push(rule);
    }

    /// Answer the next `times` calls of `op` (None: all) with `make()`.
    pub fn fail(&self, op: &str, times: Option<usize>, make: impl Fn() -> Canned + Send + 'static) {
        self.push(Rule {
            op: op.into(),
            region: None,
            remaining: times,
            window: None,
            action: Action::Answer(Box::new(make)),
        });
    }

    /// [`Proxy::fail`] for calls in `region` only.
    pub fn fail_in(
        &self,
        region: &str,
        op: &str,
        times: Option<usize>,
        make: impl Fn() -> Canned + Send + 'static,
    ) {
        self.push(Rule {
            op: op.into(),
            region: Some(region.into()),
            remaining: times,
            window: None,
            action: Action::Answer(Box::new(make)),
        });
    }

    /// Answer every call of `op` with `make()` for `window`, starting at its first call.
    pub fn fail_for(&self, op: &str, window: Duration, make: impl Fn() -> Canned + Send + 'static) {
        self.push(Rule {
            op: op.into(),
            region: None,
            remaining: None,
            window: Some((window, None)),
            action: Action::Answer(Box::new(make)),
        });
    }

    /// Forward the next `times` calls of `op` in `region` (None: any), then answer 500.
    pub fn lose_answer(&self, op: &str, region: Option<&str>, times: Option<usize>) {
        self.push(Rule {
            op: op.into(),
            region: region.map(str::to_string),
            remaining: times,
            window: None,
            action: Action::LoseAnswer,
        });
    }

    /// Hold the next `times` calls of `op` in `region` for `by`, then forward them.
    pub fn delay(&self, op: &str, region: &str, by: Duration, times: Option<usize>) {
        self.push(Rule {
            op: op.into(),
            region: Some(region.into()),
            remaining: times,
            window: None,
            action: Action::Delay(by),
        });
    }

    /// Deregister the copy right after the next CopyImage into `region` succeeds.
    pub fn vanish_copy(&self, region: &str) {
        self.push(Rule {
            op: "CopyImage".into(),
            region: Some(region.into()),
            remaining: Some(1),
            window: None,
            action: Action::VanishCopy,
        });
    }

    /// Model: a snapshot's blocks answer `ResourceNotFoundException` for `window` after its
    /// StartSnapshot.
    pub fn set_invisible_after_start(&self, window: Duration) {
        self.lock().model.invisible_after_start = window;
    }

    /// Model: EC2 takes a moment to release the snapshots of a deregistered AMI; here the
    /// next `calls` DeleteSnapshot calls of each answer `InvalidSnapshot.InUse` (a count, so
    /// tests do not depend on timing).
    pub fn set_in_use_after_deregister(&self, calls: usize) {
        self.lock().model.in_use_after_deregister = calls;
    }

    pub fn clear_rules(&self) {
        self.lock().rules.clear();
    }

    /// Fault rules with a count that still have calls to answer.
    pub fn pending_rules(&self) -> Vec<String> {
        self.lock()
            .rules
            .iter()
            .filter(|r| r.remaining.is_some_and(|n| n > 0))
            .map(|r| r.op.clone())
            .collect()
    }

    pub fn log(&self) -> Vec<Recorded> {
        self.lock().log.clone()
    }

    pub fn ops(&self, op: &str) -> Vec<Recorded> {
        self.lock()
            .log
            .iter()
            .filter(|r| r.op == op)
            .cloned()
            .collect()
    }

    pub fn ops_in(&self, op: &str, region: &str) -> Vec<Recorded> {
        self.lock()
            .log
            .iter()
            .filter(|r| r.op == op && r.region == region)
            .cloned()
            .collect()
    }

    /// The most requests of `op` that were forwarded at the same time.
    pub fn max_in_flight(&self, op: &str) -> usize {
        self.lock().max_in_flight.get(op).copied().unwrap_or(0)
    }

    pub fn clear_log(&self) {
        self.lock().log.clear();
    }

    /// Requests that broke the EBS direct API contract (empty when webake behaved).
    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// Every AMI and snapshot created through the proxy (including copies' snapshots).
    pub fn created(&self) -> Vec<Created> {
        self.lock().created.clone()
    }

    /// Of everything created through the proxy, what still exists, asked from moto directly
    /// (not through webake's code): `["image ami-… in eu-west-1", …]`.
    pub fn remaining(&self) -> Vec<String> {
        let mut out = Vec::new();
        for c in self.created() {
            let alive = match c.kind {
                "image" => {
                    let xml = ec2_query(
                        self.upstream,
                        &c.region,
                        &[("Action", "DescribeImages"), ("ImageId.1", &c.id)],
                    );
                    xml.contains(&format!("<imageId>{}</imageId>", c.id))
                        && !xml.contains("<imageState>deregistered</imageState>")
                }
                _ => {
                    let xml = ec2_query(
                        self.upstream,
                        &c.region,
                        &[("Action", "DescribeSnapshots"), ("SnapshotId.1", &c.id)],
                    );
                    xml.contains(&format!("<snapshotId>{}</snapshotId>", c.id))
                }
            };
            if alive {
                out.push(format!("{} {} in {}", c.kind, c.id, c.region));
            }
        }
        out
    }

    /// AMIs and snapshots owned by this account in `region` tagged `key` = `value`, asked
    /// from moto directly.
    pub fn tagged(&self, region: &str, key: &str, value: &str) -> (Vec<String>, Vec<String>) {
        let filter = format!("tag:{key}");
        let images = ec2_query(
            self.upstream,
            region,
            &[
                ("Action", "DescribeImages"),
                ("Owner.1", "self"),
                ("Filter.1.Name", &filter),
                ("Filter.1.Value.1", value),
            ],
        );
        let snaps = ec2_query(
            self.upstream,
            region,
            &[
                ("Action", "DescribeSnapshots"),
                ("Owner.1", "self"),
                ("Filter.1.Name", &filter),
                ("Filter.1.Value.1", value),
            ],
        );
        (
            xml_values(&images, "imageId"),
            xml_values(&snaps, "snapshotId"),
        )
    }

    /// Fails the test with every EBS contract violation seen.
    pub fn assert_contract_kept(&self) {
        let v = self.violations();
        assert!(v.is_empty(), "EBS contract violations:\n{}", v.join("\n"));
    }

    /// Fails the test if anything created through the proxy still exists, or anything in
    /// `regions` carries `webake:bake-id` = `bake_id`.
    pub fn assert_nothing_left(&self, regions: &[&str], bake_id: &str) {
        let remaining = self.remaining();
        assert!(remaining.is_empty(), "left behind: {remaining:?}");
        for region in regions {
            let (images, snaps) = self.tagged(region, "webake:bake-id", bake_id);
            assert!(
                images.is_empty() && snaps.is_empty(),
                "{region}: tagged {bake_id} left: {images:?} {snaps:?}"
            );
        }
    }
}

/// The API operation of a request: the EC2 `Action`, or the EBS REST route.
fn op_of(method: &str, path: &str, body: &[u8]) -> String {
    if body.starts_with(b"Action=")
        && let Some(a) = parse_form(&String::from_utf8_lossy(body)).get("Action")
    {
        return a.clone();
    }
    let p = path.split('?').next().unwrap_or(path);
    let seg: Vec<&str> = p.trim_matches('/').split('/').collect();
    match (method, seg.as_slice()) {
        ("POST", ["snapshots"]) => "StartSnapshot",
        ("POST", ["snapshots", "completion", _]) => "CompleteSnapshot",
        ("PUT", ["snapshots", _, "blocks", _]) => "PutSnapshotBlock",
        ("GET", ["snapshots", _, "blocks", _]) => "GetSnapshotBlock",
        ("GET", ["snapshots", _, "blocks"]) => "ListSnapshotBlocks",
        _ => "Unknown",
    }
    .to_string()
}

/// The region of a SigV4-signed request (`Credential=…/<date>/<region>/<service>/…`).
fn region_of(headers: &BTreeMap<String, String>) -> String {
    headers
        .get("authorization")
        .and_then(|a| a.split("Credential=").nth(1))
        .and_then(|c| c.split('/').nth(2))
        .unwrap_or_default()
        .to_string()
}

fn handle(client: TcpStream, upstream_port: u16, state: &Mutex<ProxyState>) -> std::io::Result<()> {
    let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
    let mut reader = BufReader::new(client.try_clone()?);
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(()); // connection closed without a request
        }
        let end = line == "\r\n";
        head.push(line);
        if end {
            break;
        }
    }
    let request_line = head[0].trim_end().to_string();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = BTreeMap::new();
    for h in &head[1..head.len() - 1] {
        if let Some((k, v)) = h.trim_end().split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    assert!(
        !headers
            .get("transfer-encoding")
            .is_some_and(|v| v.contains("chunked")),
        "test proxy does not support chunked request bodies"
    );
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    let op = op_of(&method, &path, &body);
    let region = region_of(&headers);
    let req = Req {
        op: op.clone(),
        region: region.clone(),
        method: method.clone(),
        path: path.clone(),
        headers: headers.clone(),
        body,
        head,
    };

    // Fault rules first, then the model's answers.
    let (action, log_index) = {
        let mut s = lock();
        let mut action = None;
        for r in s.rules.iter_mut() {
            if r.matches(&op, &region) {
                r.take();
                action = Some(match &r.action {
                    Action::Answer(make) => Err(make()),
                    Action::LoseAnswer => Ok(Some(Action::LoseAnswer)),
                    Action::Delay(d) => Ok(Some(Action::Delay(*d))),
                    Action::VanishCopy => Ok(Some(Action::VanishCopy)),
                });
                break;
            }
        }
        let keep = op != "PutSnapshotBlock" || s.keep_block_bodies;
        s.log.push(Recorded {
            op: op.clone(),
            region: region.clone(),
            method,
            path,
            headers,
            body: if keep { req.body.clone() } else { Vec::new() },
            body_len: req.body.len(),
            faulted: matches!(action, Some(Err(_))),
            at: Instant::now(),
        });
        (action, s.log.len() - 1)
    };
    let action = match action {
        Some(Err(canned)) => return answer(client, &canned.to_http()),
        Some(Ok(a)) => a,
        None => None,
    };
    if let Some(Action::Delay(d)) = &action {
        std::thread::sleep(*d);
    }
    let model_answer = pre_model(&req, upstream_port, state);
    if let Some(canned) = model_answer {
        lock().log[log_index].faulted = true;
        return answer(client, &canned.to_http());
    }
    if let Some(replay) = replay_token(&req, state) {
        return answer(client, &replay);
    }

    {
        let mut s = lock();
        let n = s.in_flight.entry(op.clone()).or_default();
        *n += 1;
        let n = *n;
        let max = s.max_in_flight.entry(op.clone()).or_default();
        *max = (*max).max(n);
    }
    let forwarded = forward(&req.head, &req.body, upstream_port);
    *lock().in_flight.entry(op.clone()).or_default() -= 1;
    let resp = forwarded?;
    let resp = post_model(
        &req,
        resp,
        upstream_port,
        state,
        matches!(action, Some(Action::VanishCopy)),
    );
    if matches!(action, Some(Action::LoseAnswer)) {
        return answer(client, &Canned::internal(&op).to_http());
    }
    answer(client, &resp)
}

struct Req {
    op: String,
    region: String,
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
    head: Vec<String>,
}

impl Req {
    fn header(&self, k: &str) -> Option<&str> {
        self.headers
            .get(&k.to_ascii_lowercase())
            .map(String::as_str)
    }
    fn form(&self) -> BTreeMap<String, String> {
        parse_form(&String::from_utf8_lossy(&self.body))
    }
    /// The snapshot id in an EBS route (`/snapshots/<id>/blocks/…`, `/snapshots/completion/<id>`).
    fn ebs_snapshot(&self) -> (String, Option<u64>) {
        let p = self.path.split('?').next().unwrap_or_default();
        let seg: Vec<&str> = p.trim_matches('/').split('/').collect();
        match seg.as_slice() {
            ["snapshots", "completion", id] => (id.to_string(), None),
            ["snapshots", id, "blocks", i] => (id.to_string(), i.parse().ok()),
            _ => (String::new(), None),
        }
    }
    fn token(&self) -> Option<String> {
        match self.op.as_str() {
            "StartSnapshot" => serde_json::from_slice::<serde_json::Value>(&self.body)
                .ok()?
                .get("ClientToken")?
                .as_str()
                .map(str::to_string),
            "CopyImage" => self.form().get("ClientToken").cloned(),
            _ => None,
        }
    }
}

fn violation(state: &Mutex<ProxyState>, msg: String) -> Canned {
    state
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .violations
        .push(msg.clone());
    Canned::ebs_error_msg(400, "ValidationException", &msg)
}

/// Answers the model gives instead of moto (contract violations, missing snapshots,
/// duplicates, snapshots in use). `None`: forward.
fn pre_model(req: &Req, upstream: u16, state: &Mutex<ProxyState>) -> Option<Canned> {
    match req.op.as_str() {
        "PutSnapshotBlock" => pre_put_snapshot_block(req, state),
        "CompleteSnapshot" => pre_complete_snapshot(req, state),
        "RegisterImage" | "CopyImage" => pre_register_or_copy(req, upstream, state),
        "DeleteSnapshot" => pre_delete_snapshot(req, state),
        _ => None,
    }
}

fn snapshot_not_found(snap: &str) -> Canned {
    Canned::ebs_error_msg(
        404,
        "ResourceNotFoundException",
        &format!("The snapshot {snap} does not exist."),
    )
}

/// A block for a snapshot that is missing, deleted, completed or not visible yet, or outside
/// the volume, is refused; then the block's length and checksum are checked.
fn pre_put_snapshot_block(req: &Req, state: &Mutex<ProxyState>) -> Option<Canned> {
    let (snap, index) = req.ebs_snapshot();
    let index = index?;
    put_block_target(&snap, index, state).or_else(|| put_block_contract(req, &snap, index, state))
}

fn put_block_target(snap: &str, index: u64, state: &Mutex<ProxyState>) -> Option<Canned> {
    let s = state.lock().unwrap_or_else(|p| p.into_inner());
    let m = &s.model;
    let Some(sn) = m.snapshots.get(snap) else {
        return Some(snapshot_not_found(snap));
    };
    match sn.state {
        SnapState::Deleted => {
            return Some(snapshot_not_found(snap));
        }
        SnapState::Completed => {
            return Some(Canned::ebs_error_msg(
                400,
                "ValidationException",
                &format!("The snapshot {snap} is not in pending state."),
            ));
        }
        SnapState::Pending => {}
    }
    if sn.started_at.elapsed() < m.invisible_after_start {
        return Some(snapshot_not_found(snap));
    }
    if index >= sn.volume_gib * 2048 {
        drop(s);
        return Some(violation(
            state,
            format!("{snap} block {index} is outside the volume"),
        ));
    }
    None
}

fn put_block_contract(
    req: &Req,
    snap: &str,
    index: u64,
    state: &Mutex<ProxyState>,
) -> Option<Canned> {
    let len = req.header("x-amz-data-length");
    if len != Some("524288") || req.body.len() != BLOCK {
        return Some(violation(
            state,
            format!(
                "{snap} block {index}: data length header {len:?}, body {} bytes (must be 524288)",
                req.body.len()
            ),
        ));
    }
    if req.header("x-amz-checksum-algorithm") != Some("SHA256") {
        return Some(violation(
            state,
            format!("{snap} block {index}: checksum algorithm is not SHA256"),
        ));
    }
    let want = webake_aws::block_checksum(&req.body);
    if req.header("x-amz-checksum") != Some(want.as_str()) {
        return Some(violation(
            state,
            format!(
                "{snap} block {index}: checksum {:?} does not match the body ({want})",
                req.header("x-amz-checksum")
            ),
        ));
    }
    None
}

/// Only a pending snapshot completes, with the count of blocks written and (if any) their
/// LINEAR aggregate SHA-256.
fn pre_complete_snapshot(req: &Req, state: &Mutex<ProxyState>) -> Option<Canned> {
    let (snap, _) = req.ebs_snapshot();
    let s = state.lock().unwrap_or_else(|p| p.into_inner());
    let Some(sn) = s.model.snapshots.get(&snap) else {
        return Some(snapshot_not_found(&snap));
    };
    if sn.state != SnapState::Pending {
        return Some(Canned::ebs_error_msg(
            if sn.state == SnapState::Deleted {
                404
            } else {
                400
            },
            if sn.state == SnapState::Deleted {
                "ResourceNotFoundException"
            } else {
                "ValidationException"
            },
            &format!("The snapshot {snap} is not in pending state."),
        ));
    }
    let count = req.header("x-amz-changedblockscount").unwrap_or("");
    let blocks = sn.blocks.len();
    let digests: Vec<[u8; 32]> = sn.blocks.values().copied().collect();
    drop(s);
    if count != blocks.to_string() {
        return Some(violation(
            state,
            format!("{snap}: ChangedBlocksCount {count:?}, but {blocks} blocks were written"),
        ));
    }
    if blocks > 0 {
        let want = webake_aws::aggregate_checksum(digests.iter());
        let checks = [
            (
                req.header("x-amz-checksum"),
                want.as_str(),
                "aggregate checksum",
            ),
            (
                req.header("x-amz-checksum-algorithm"),
                "SHA256",
                "checksum algorithm",
            ),
            (
                req.header("x-amz-checksum-aggregation-method"),
                "LINEAR",
                "aggregation method",
            ),
        ];
        for (got, want, what) in checks {
            if got != Some(want) {
                return Some(violation(
                    state,
                    format!("{snap}: {what} {got:?}, expected {want}"),
                ));
            }
        }
    }
    None
}

/// An AMI name this account already uses in the region is refused (unless a repeated
/// CopyImage token is answered from the token table).
fn pre_register_or_copy(req: &Req, upstream: u16, state: &Mutex<ProxyState>) -> Option<Canned> {
    let form = req.form();
    let name = form.get("Name")?;
    let xml = ec2_query_as(
        upstream,
        req,
        &[
            ("Action", "DescribeImages"),
            ("Owner.1", "self"),
            ("Filter.1.Name", "name"),
            ("Filter.1.Value.1", name),
        ],
    );
    // Only image names are `<name>` elements (tags are key/value); moto does not
    // list deregistered images.
    let taken = xml_values(&xml, "name").contains(name);
    // A repeated CopyImage token is answered from the token table, not refused.
    let replay = req.token().is_some_and(|t| {
        state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .model
            .tokens
            .contains_key(&(req.region.clone(), req.op.clone(), t))
    });
    (taken && !replay).then(|| {
        Canned::ec2_error_msg(
            400,
            "InvalidAMIName.Duplicate",
            &format!("AMI name {name} is already in use by AMI"),
        )
    })
}

/// A snapshot used by a registered AMI, or released by one just deregistered, is in use.
fn pre_delete_snapshot(req: &Req, state: &Mutex<ProxyState>) -> Option<Canned> {
    let form = req.form();
    let snap = form.get("SnapshotId")?;
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    let user = s
        .model
        .images
        .iter()
        .find(|(_, i)| i.region == req.region && i.snapshots.contains(snap))
        .map(|(id, _)| id.clone());
    let released = match s.model.released.get_mut(snap) {
        Some(n) if *n > 0 => {
            *n -= 1;
            true
        }
        _ => false,
    };
    match (user, released) {
        (Some(ami), _) => Some(Canned::ec2_error_msg(
            400,
            "InvalidSnapshot.InUse",
            &format!("The snapshot {snap} is currently in use by {ami}"),
        )),
        (None, true) => Some(Canned::ec2_error_msg(
            400,
            "InvalidSnapshot.InUse",
            &format!("The snapshot {snap} is currently in use by an AMI being deregistered"),
        )),
        _ => None,
    }
}

/// A repeated idempotency token gets the first answer again, without reaching moto.
fn replay_token(req: &Req, state: &Mutex<ProxyState>) -> Option<Vec<u8>> {
    let token = req.token()?;
    state
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .model
        .tokens
        .get(&(req.region.clone(), req.op.clone(), token))
        .cloned()
}

fn status_of(resp: &[u8]) -> u16 {
    String::from_utf8_lossy(&resp[..resp.len().min(16)])
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn split_response(resp: &[u8]) -> (String, Vec<u8>) {
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .unwrap_or(resp.len());
    (
        String::from_utf8_lossy(&resp[..split]).to_string(),
        resp[split..].to_vec(),
    )
}

/// Update the model from a forwarded call's answer, apply what moto skips, and rewrite the
/// answer where moto's differs from AWS's. Returns the answer to send.
fn post_model(
    req: &Req,
    resp: Vec<u8>,
    upstream: u16,
    state: &Mutex<ProxyState>,
    vanish: bool,
) -> Vec<u8> {
    let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
    let ok = (200..300).contains(&status_of(&resp));
    let (head, mut body) = split_response(&resp);
    let text = String::from_utf8_lossy(&body).to_string();
    match req.op.as_str() {
        "StartSnapshot" if ok => snapshot_started(req, &resp, &text, state),
        "PutSnapshotBlock" if ok => {
            let (snap, index) = req.ebs_snapshot();
            if let (Some(sn), Some(i)) = (lock().model.snapshots.get_mut(&snap), index) {
                sn.blocks.insert(i, webake_aws::block_digest(&req.body));
            }
        }
        "CompleteSnapshot" if ok => {
            let (snap, _) = req.ebs_snapshot();
            if let Some(sn) = lock().model.snapshots.get_mut(&snap) {
                sn.state = SnapState::Completed;
            }
        }
        "RegisterImage" if ok => image_registered(req, &text, upstream, state),
        "CopyImage" if ok => image_copied(req, &resp, &text, upstream, state, vanish),
        "DeregisterImage" if ok => {
            if let Some(ami) = req.form().get("ImageId") {
                deregistered(upstream, req, ami, state);
            }
        }
        "DeleteSnapshot" if ok => {
            if let Some(snap) = req.form().get("SnapshotId")
                && let Some(sn) = lock().model.snapshots.get_mut(snap)
            {
                sn.state = SnapState::Deleted;
            }
        }
        "DescribeImages" if ok => {
            let alias = lock().model.snapshot_alias.clone();
            let mut t = text.clone();
            for (moto, ours) in alias {
                t = t.replace(
                    &format!("<snapshotId>{moto}</snapshotId>"),
                    &format!("<snapshotId>{ours}</snapshotId>"),
                );
            }
            body = t.into_bytes();
        }
        "ListSnapshotBlocks" => {
            // moto 5.2 answers `"BlockIndex": "0"` (a string, taken from the URL) where the
            // API has an integer; real EBS and the SDK use integers.
            body = unquote_block_indexes(&text).into_bytes();
        }
        _ => {}
    }
    rebuild(&head, &body)
}

/// A started snapshot is pending, recorded as created, and its token remembers the answer.
fn snapshot_started(req: &Req, resp: &[u8], text: &str, state: &Mutex<ProxyState>) {
    let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    if let Some(id) = v["SnapshotId"].as_str() {
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        s.model.snapshots.insert(
            id.to_string(),
            EbsSnapshot {
                state: SnapState::Pending,
                started_at: Instant::now(),
                volume_gib: v["VolumeSize"].as_u64().unwrap_or(1),
                blocks: BTreeMap::new(),
            },
        );
        s.created.push(Created {
            region: req.region.clone(),
            kind: "snapshot",
            id: id.to_string(),
        });
        if let Some(t) = req.token() {
            s.model
                .tokens
                .insert((req.region.clone(), req.op.clone(), t), resp.to_vec());
        }
    }
}

/// A registered AMI gets its tags, uses the snapshot that was registered (moto's invented
/// one becomes an alias of it), and is recorded as created.
fn image_registered(req: &Req, text: &str, upstream: u16, state: &Mutex<ProxyState>) {
    let Some(ami) = xml_values(text, "imageId").first().cloned() else {
        return;
    };
    let form = req.form();
    let ours: Vec<String> = form
        .iter()
        .filter(|(k, _)| k.starts_with("BlockDeviceMapping.") && k.ends_with(".Ebs.SnapshotId"))
        .map(|(_, v)| v.clone())
        .collect();
    let described = ec2_query_as(
        upstream,
        req,
        &[("Action", "DescribeImages"), ("ImageId.1", &ami)],
    );
    let motos = xml_values(&described, "snapshotId");
    apply_tag_specs(upstream, req, &form, "image", std::slice::from_ref(&ami));
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    if let (Some(m), Some(o)) = (motos.first(), ours.first()) {
        s.model.snapshot_alias.insert(m.clone(), o.clone());
    }
    s.model.images.insert(
        ami.clone(),
        ModelImage {
            region: req.region.clone(),
            snapshots: ours,
            moto_snapshots: motos,
        },
    );
    s.created.push(Created {
        region: req.region.clone(),
        kind: "image",
        id: ami,
    });
}

/// A copied AMI and its snapshots get their tags, its token remembers the answer, both are
/// recorded as created; with `vanish`, the copy is deregistered right away.
fn image_copied(
    req: &Req,
    resp: &[u8],
    text: &str,
    upstream: u16,
    state: &Mutex<ProxyState>,
    vanish: bool,
) {
    let Some(ami) = xml_values(text, "imageId").first().cloned() else {
        return;
    };
    let form = req.form();
    let described = ec2_query_as(
        upstream,
        req,
        &[("Action", "DescribeImages"), ("ImageId.1", &ami)],
    );
    let snaps = xml_values(&described, "snapshotId");
    apply_tag_specs(upstream, req, &form, "image", std::slice::from_ref(&ami));
    apply_tag_specs(upstream, req, &form, "snapshot", &snaps);
    {
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = req.token() {
            s.model
                .tokens
                .insert((req.region.clone(), req.op.clone(), t), resp.to_vec());
        }
        s.model.images.insert(
            ami.clone(),
            ModelImage {
                region: req.region.clone(),
                snapshots: snaps.clone(),
                moto_snapshots: Vec::new(),
            },
        );
        s.created.push(Created {
            region: req.region.clone(),
            kind: "image",
            id: ami.clone(),
        });
        for snap in &snaps {
            s.created.push(Created {
                region: req.region.clone(),
                kind: "snapshot",
                id: snap.clone(),
            });
        }
    }
    if vanish {
        ec2_query_as(
            upstream,
            req,
            &[("Action", "DeregisterImage"), ("ImageId", &ami)],
        );
        deregistered(upstream, req, &ami, state);
    }
}

/// The model after `ami` was deregistered: its snapshots are released (in use for a while),
/// and moto's invented root snapshot goes (AWS has none).
fn deregistered(upstream: u16, req: &Req, ami: &str, state: &Mutex<ProxyState>) {
    let image = state
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .model
        .images
        .remove(ami);
    if let Some(image) = image {
        for m in &image.moto_snapshots {
            ec2_query_as(
                upstream,
                req,
                &[("Action", "DeleteSnapshot"), ("SnapshotId", m)],
            );
        }
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        let calls = s.model.in_use_after_deregister;
        for snap in image.snapshots {
            s.model.released.insert(snap, calls);
        }
    }
}

/// Apply the `TagSpecification.N` of `form` with ResourceType `kind` to `ids` (CreateTags
/// on moto), as AWS does at creation.
fn apply_tag_specs(
    upstream: u16,
    req: &Req,
    form: &BTreeMap<String, String>,
    kind: &str,
    ids: &[String],
) {
    if ids.is_empty() {
        return;
    }
    for n in 1.. {
        let Some(t) = form.get(&format!("TagSpecification.{n}.ResourceType")) else {
            break;
        };
        if t != kind {
            continue;
        }
        let mut params: Vec<(String, String)> = vec![("Action".into(), "CreateTags".into())];
        for (i, id) in ids.iter().enumerate() {
            params.push((format!("ResourceId.{}", i + 1), id.clone()));
        }
        for m in 1.. {
            let Some(k) = form.get(&format!("TagSpecification.{n}.Tag.{m}.Key")) else {
                break;
            };
            let v = form
                .get(&format!("TagSpecification.{n}.Tag.{m}.Value"))
                .cloned()
                .unwrap_or_default();
            params.push((format!("Tag.{m}.Key"), k.clone()));
            params.push((format!("Tag.{m}.Value"), v));
        }
        let refs: Vec<(&str, &str)> = params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        ec2_query_as(upstream, req, &refs);
    }
}

fn rebuild(head: &str, body: &[u8]) -> Vec<u8> {
    let mut new_head = String::new();
    for line in head.split("\r\n").filter(|l| !l.is_empty()) {
        let lower = line.to_ascii_lowercase();
        if !lower.starts_with("connection:") && !lower.starts_with("content-length:") {
            new_head.push_str(line);
            new_head.push_str("\r\n");
        }
    }
    new_head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let mut out = new_head.into_bytes();
    out.extend_from_slice(body);
    out
}

fn answer(mut client: TcpStream, resp: &[u8]) -> std::io::Result<()> {
    client.write_all(resp)?;
    client.flush()?;
    let _ = client.shutdown(Shutdown::Both);
    Ok(())
}

/// Send the request to the upstream with `Connection: close` and read the whole answer.
fn forward(head: &[String], body: &[u8], upstream_port: u16) -> std::io::Result<Vec<u8>> {
    let mut up = TcpStream::connect(("127.0.0.1", upstream_port))?;
    let mut out = Vec::new();
    out.extend_from_slice(head[0].as_bytes());
    for h in &head[1..head.len() - 1] {
        if !h.to_ascii_lowercase().starts_with("connection:") {
            out.extend_from_slice(h.as_bytes());
        }
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out.extend_from_slice(body);
    up.write_all(&out)?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp)?;
    Ok(resp)
}

/// An EC2 query straight to moto in `region` (moto routes by the credential scope and does
/// not check signatures). Returns the answer body.
pub fn ec2_query(upstream: u16, region: &str, params: &[(&str, &str)]) -> String {
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential=testing/20260101/{region}/ec2/aws4_request, SignedHeaders=host, Signature=0"
    );
    raw_ec2(upstream, &auth, params)
}

fn ec2_query_as(upstream: u16, req: &Req, params: &[(&str, &str)]) -> String {
    let auth = req.header("authorization").unwrap_or_default().to_string();
    raw_ec2(upstream, &auth, params)
}

fn raw_ec2(upstream: u16, auth: &str, params: &[(&str, &str)]) -> String {
    let mut body: String = params
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    body.push_str("&Version=2016-11-15");
    let head = vec![
        "POST / HTTP/1.1\r\n".to_string(),
        format!("Host: 127.0.0.1:{upstream}\r\n"),
        "Content-Type: application/x-www-form-urlencoded; charset=utf-8\r\n".to_string(),
        format!("Authorization: {auth}\r\n"),
        "X-Amz-Date: 20260101T000000Z\r\n".to_string(),
        format!("Content-Length: {}\r\n", body.len()),
        "\r\n".to_string(),
    ];
    match forward(&head, body.as_bytes(), upstream) {
        Ok(resp) => String::from_utf8_lossy(&split_response(&resp).1).into_owned(),
        Err(e) => panic!("query to moto failed: {e}"),
    }
}

fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Text of every `<tag>…</tag>` in `xml`, in order.
pub fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(p) = rest.find(&open) {
        let after = &rest[p + open.len()..];
        let Some(end) = after.find(&close) else { break };
        out.push(after[..end].to_string());
        rest = &after[end + close.len()..];
    }
    out
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

pub fn parse_form(s: &str) -> BTreeMap<String, String> {
    s.split('&')
        .filter(|kv| !kv.is_empty())
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (decode(k), decode(v))))
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("3F");
                let h = u8::from_str_radix(hex, 16).unwrap_or(b'?');
                out.push(h);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------
// sessions and disks

/// webake's retry policy scaled down ~200x so fault tests run in seconds: 12 attempts over
/// 0.66 s per call; "not found" for a new resource is "not visible yet" for 1.5 s.
pub fn fast_timing() -> Timing {
    Timing {
        retry: RetryPolicy {
            attempts: 12,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(100),
            not_yet_visible_grace: Duration::from_millis(1500),
        },
        poll_interval: Duration::from_millis(50),
        snapshot_timeout: Duration::from_secs(30),
        image_timeout: Duration::from_secs(30),
        attempt_timeout: Duration::from_secs(20),
        cancel_grace: Duration::from_secs(20),
    }
}

/// A session against `endpoint` with dummy credentials set on the client config (not in the
/// process environment).
pub async fn session(endpoint: &str, region: &str) -> Session {
    session_with(endpoint, region, fast_timing()).await
}

pub async fn session_with(endpoint: &str, region: &str, timing: Timing) -> Session {
    let settings = ClientSettings {
        endpoint_url: Some(endpoint.to_string()),
        profile: None,
        credentials: Some(StaticCredentials {
            access_key_id: "testing".into(),
            secret_access_key: "testing".into(),
        }),
        timing,
    };
    Session::new(region, &settings).await
}

/// Write a small raw disk: `blocks` blocks of 512 KiB plus a partial tail, where every third
/// block is all zeros. Returns the bytes.
pub fn make_disk(path: &Path, blocks: usize) -> Vec<u8> {
    let mut data = vec![0u8; blocks * BLOCK + 100 * 1024];
    let mut x: u32 = 0x1234_5678;
    for (i, chunk) in data.chunks_mut(BLOCK).enumerate() {
        if i % 3 == 1 {
            continue; // all-zero block
        }
        for b in chunk.iter_mut() {
            // xorshift: cheap, deterministic, not compressible to zero
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
    }
    std::fs::write(path, &data).unwrap();
    data
}

/// Distinct values of a set (for messages).
pub fn set<T: Ord + Clone>(v: &[T]) -> BTreeSet<T> {
    v.iter().cloned().collect()
}

// ---------------------------------------------------------------------------------------
// a publish environment (webake-aws tests)

pub const HOME: &str = "us-east-1";
pub const COPY: &str = "eu-west-1";
pub const COPY2: &str = "eu-central-1";
pub const SHARE_ACCOUNT: &str = "111122223333";
pub const ORG: &str = "arn:aws:organizations::111122223333:organization/o-abcdef1234";

/// Upload and register in [`HOME`], copy to [`COPY`], share with an account and an org.
pub fn request(disk: &Path, bake_id: &str, name: &str) -> webake_aws::PublishRequest {
    webake_aws::PublishRequest {
        disk: disk.to_path_buf(),
        region: HOME.into(),
        copy_to: vec![COPY.into()],
        share_with: vec![
            webake_aws::Principal::Account(SHARE_ACCOUNT.into()),
            webake_aws::Principal::Organization(ORG.into()),
        ],
        tags: vec![("team".into(), "platform".into())],
        name: name.into(),
        description: "webake test image".into(),
        platform: webake_aws::ImagePlatform::default(),
        deprecate_at: None,
        kms_key_arn: None,
        copy_kms_keys: BTreeMap::new(),
        volume_size_gib: None,
        bake_id: bake_id.into(),
        inputs_digest: format!("sha256:{bake_id}-inputs"),
        concurrency: 4,
    }
}

/// moto, the proxy in front of it, a fast session through the proxy, and a temp dir; all
/// gone on drop.
pub struct Env {
    pub proxy: Proxy,
    pub session: Session,
    pub dir: tempfile::TempDir,
    _moto: Moto,
}

pub async fn env() -> Env {
    env_with(fast_timing()).await
}

pub async fn env_with(timing: Timing) -> Env {
    let moto = Moto::start();
    let proxy = Proxy::start(moto.port);
    let session = session_with(&proxy.url(), HOME, timing).await;
    Env {
        proxy,
        session,
        dir: tempfile::tempdir().unwrap(),
        _moto: moto,
    }
}

/// A reporter that counts blocks and keeps steps and retries (`"<Op> <reason>"`).
#[derive(Default)]
pub struct Counting {
    pub sent: std::sync::atomic::AtomicU64,
    pub skipped: std::sync::atomic::AtomicU64,
    pub steps: Mutex<Vec<String>>,
    /// "Op reason" of every retry reported.
    pub retries: Mutex<Vec<String>>,
}

impl webake_aws::Reporter for Counting {
    fn step(&self, region: &str, message: &str) {
        self.steps
            .lock()
            .unwrap()
            .push(format!("{region}: {message}"));
    }
    fn block_done(&self, _snapshot_id: &str, _bytes: u64, sent: bool) {
        let c = if sent { &self.sent } else { &self.skipped };
        c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    fn retrying(&self, e: &webake_aws::RetryEvent<'_>) {
        self.retries
            .lock()
            .unwrap()
            .push(format!("{} {}", e.op, e.reason));
    }
}

impl Counting {
    pub fn retries(&self) -> Vec<String> {
        self.retries.lock().unwrap().clone()
    }
}
