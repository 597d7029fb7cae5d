//! Test fixtures: a moto server on loopback (killed in Drop) and a recording, fault-injecting
//! HTTP proxy in front of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use webake_aws::{ClientSettings, Session, StaticCredentials, Timing};

pub const PIP_HINT: &str =
    "pip install -r crates/webake-aws/requirements-test.txt   (i.e. pip install 'moto[server]')";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

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

/// One request seen by the proxy.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub op: String,
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    /// Answered by a fault rule instead of moto.
    pub faulted: bool,
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
}

pub struct Canned {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Canned {
    /// An EC2 (query protocol) error.
    pub fn ec2_error(status: u16, code: &str) -> Self {
        Canned {
            status,
            headers: vec![("Content-Type".into(), "text/xml".into())],
            body: format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error><Code>{code}</Code><Message>injected {code}</Message></Error></Errors><RequestID>00000000-0000-0000-0000-000000000000</RequestID></Response>"
            ),
        }
    }
    /// An EBS (REST-JSON) error.
    pub fn ebs_error(status: u16, code: &str) -> Self {
        Canned {
            status,
            headers: vec![
                ("Content-Type".into(), "application/json".into()),
                ("x-amzn-ErrorType".into(), code.into()),
            ],
            body: format!("{{\"message\":\"injected {code}\"}}"),
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
}

struct Rule {
    op: String,
    remaining: Option<usize>,
    make: Box<dyn Fn() -> Canned + Send>,
}

#[derive(Default)]
struct ProxyState {
    log: Vec<Recorded>,
    rules: Vec<Rule>,
    /// Requests of each operation being forwarded right now, and the most seen at once.
    in_flight: BTreeMap<String, usize>,
    max_in_flight: BTreeMap<String, usize>,
}

/// HTTP proxy on 127.0.0.1 that records every request, answers some from fault rules, and
/// forwards the rest to `upstream`.
pub struct Proxy {
    pub port: u16,
    state: Arc<Mutex<ProxyState>>,
}

impl Proxy {
    pub fn start(upstream_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(ProxyState::default()));
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
        Proxy { port, state }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Answer the next `times` calls of `op` (None: all) with `make()`.
    pub fn fail(&self, op: &str, times: Option<usize>, make: impl Fn() -> Canned + Send + 'static) {
        self.state.lock().unwrap().rules.push(Rule {
            op: op.into(),
            remaining: times,
            make: Box::new(make),
        });
    }

    pub fn clear_rules(&self) {
        self.state.lock().unwrap().rules.clear();
    }

    /// Fault rules that still have calls to answer.
    pub fn pending_rules(&self) -> Vec<String> {
        let s = self.state.lock().unwrap();
        s.rules
            .iter()
            .filter(|r| r.remaining.is_some_and(|n| n > 0))
            .map(|r| r.op.clone())
            .collect()
    }

    pub fn log(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().log.clone()
    }

    pub fn ops(&self, op: &str) -> Vec<Recorded> {
        self.log().into_iter().filter(|r| r.op == op).collect()
    }

    /// The most requests of `op` that were forwarded at the same time.
    pub fn max_in_flight(&self, op: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .max_in_flight
            .get(op)
            .copied()
            .unwrap_or(0)
    }

    pub fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
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

fn handle(
    mut client: TcpStream,
    upstream_port: u16,
    state: &Mutex<ProxyState>,
) -> std::io::Result<()> {
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

    let canned = {
        let mut s = state.lock().unwrap();
        let mut canned = None;
        for r in s.rules.iter_mut() {
            if r.op == op && r.remaining != Some(0) {
                if let Some(n) = r.remaining.as_mut() {
                    *n -= 1;
                }
                canned = Some((r.make)());
                break;
            }
        }
        s.log.push(Recorded {
            op: op.clone(),
            method: method.clone(),
            path: path.clone(),
            headers: headers.clone(),
            body: body.clone(),
            faulted: canned.is_some(),
        });
        canned
    };

    if let Some(c) = canned {
        let mut resp = format!(
            "HTTP/1.1 {} Injected\r\nConnection: close\r\nContent-Length: {}\r\n",
            c.status,
            c.body.len()
        );
        for (k, v) in &c.headers {
            resp.push_str(&format!("{k}: {v}\r\n"));
        }
        resp.push_str("\r\n");
        resp.push_str(&c.body);
        client.write_all(resp.as_bytes())?;
        client.flush()?;
        let _ = client.shutdown(Shutdown::Both);
        return Ok(());
    }

    {
        let mut s = state.lock().unwrap();
        let n = s.in_flight.entry(op.clone()).or_default();
        *n += 1;
        let n = *n;
        let max = s.max_in_flight.entry(op.clone()).or_default();
        *max = (*max).max(n);
    }
    let forwarded = forward(&head, &body, upstream_port);
    *state
        .lock()
        .unwrap()
        .in_flight
        .entry(op.clone())
        .or_default() -= 1;
    let resp = forwarded?;
    rewrite_and_answer(client, &op, resp)
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

fn rewrite_and_answer(mut client: TcpStream, op: &str, resp: Vec<u8>) -> std::io::Result<()> {
    // Rewrite the response head: this proxy serves one request per connection.
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .unwrap_or(resp.len());
    let head_text = String::from_utf8_lossy(&resp[..split]).to_string();
    let mut resp_body = resp[split..].to_vec();
    if op == "ListSnapshotBlocks" {
        // moto 5.2 answers `"BlockIndex": "0"` (a string, taken from the URL) where the API
        // has an integer; real EBS and the SDK use integers. Normalise it here so the test
        // exercises our download code rather than moto's serialisation bug.
        resp_body = unquote_block_indexes(&String::from_utf8_lossy(&resp_body)).into_bytes();
    }
    let mut new_head = String::new();
    for line in head_text.split("\r\n").filter(|l| !l.is_empty()) {
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

/// Short waits and backoffs so fault tests run in seconds.
pub fn fast_timing() -> Timing {
    Timing {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        poll_interval: Duration::from_millis(100),
        snapshot_timeout: Duration::from_secs(30),
        image_timeout: Duration::from_secs(30),
    }
}

/// A session against `endpoint` with dummy credentials set on the client config (not in the
/// process environment).
pub async fn session(endpoint: &str, region: &str) -> Session {
    let settings = ClientSettings {
        endpoint_url: Some(endpoint.to_string()),
        profile: None,
        credentials: Some(StaticCredentials {
            access_key_id: "testing".into(),
            secret_access_key: "testing".into(),
        }),
        timing: fast_timing(),
    };
    Session::new(region, &settings).await
}

/// Write a small raw disk: `blocks` blocks of 512 KiB plus a partial tail, where every third
/// block is all zeros. Returns the bytes.
pub fn make_disk(path: &Path, blocks: usize) -> Vec<u8> {
    const B: usize = 512 * 1024;
    let mut data = vec![0u8; blocks * B + 100 * 1024];
    let mut x: u32 = 0x1234_5678;
    for (i, chunk) in data.chunks_mut(B).enumerate() {
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
