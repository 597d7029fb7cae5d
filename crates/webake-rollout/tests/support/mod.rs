//! Test support: fixture repositories with a bare remote, snapshot files, fakes of GitHub and
//! GitLab on 127.0.0.1.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Run git in `dir` with a fixed identity, assert success, return stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Fixture Author")
        .env("GIT_AUTHOR_EMAIL", "fixture@example.com")
        .env("GIT_COMMITTER_NAME", "Fixture Author")
        .env("GIT_COMMITTER_EMAIL", "fixture@example.com")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 git output")
}

/// Every file of a directory tree (not `.git`), relative `/` paths -> bytes.
pub fn tree_files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                if entry.file_name() != ".git" {
                    dirs.push(path);
                }
            } else {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

fn copy_tree(from: &Path, to: &Path) {
    for (rel, bytes) in tree_files(from) {
        let dest = to.join(&rel);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::write(dest, bytes).unwrap();
    }
}

/// A fixture committed on `main` in a working clone, pushed to a bare "remote" repository.
/// Everything lives in one temp dir, removed on drop.
pub struct FixtureRepo {
    pub tmp: tempfile::TempDir,
    pub work: PathBuf,
    pub bare: PathBuf,
    pub fixture: PathBuf,
}

impl FixtureRepo {
    pub fn new(fixture: &str) -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("webake-rollout-test-")
            .tempdir()
            .unwrap();
        let fixture = fixtures().join(fixture);
        let work = tmp.path().join("work");
        let bare = tmp.path().join("remote.git");
        std::fs::create_dir_all(&work).unwrap();
        copy_tree(&fixture, &work);
        git(&work, &["init", "--quiet", "--initial-branch=main"]);
        git(&work, &["add", "--all"]);
        git(
            &work,
            &[
                "-c",
                "commit.gpgsign=false",
                "commit",
                "--quiet",
                "--message",
                "Cluster specs",
            ],
        );
        git(
            tmp.path(),
            &["clone", "--quiet", "--bare", "work", "remote.git"],
        );
        Self {
            tmp,
            work,
            bare,
            fixture,
        }
    }

    pub fn main_sha(&self) -> String {
        git(&self.bare, &["rev-parse", "refs/heads/main"])
            .trim()
            .to_string()
    }

    /// Branches under `refs/heads/webake/` in the remote.
    pub fn webake_branches(&self) -> Vec<String> {
        git(
            &self.bare,
            &["for-each-ref", "--format=%(refname)", "refs/heads/webake/"],
        )
        .lines()
        .map(str::to_string)
        .collect()
    }

    /// A file's bytes on a branch of the remote.
    pub fn show(&self, rev: &str, path: &str) -> Vec<u8> {
        let out = Command::new("git")
            .args(["show", &format!("{rev}:{path}")])
            .current_dir(&self.bare)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git show {rev}:{path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// All file paths on a branch of the remote.
    pub fn ls_tree(&self, rev: &str) -> Vec<String> {
        git(&self.bare, &["ls-tree", "-r", "--name-only", rev])
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// Compare with a committed expected file; `UPDATE_EXPECT=1` rewrites it. Missing files fail.
pub fn assert_expected(name: &str, actual: &str) {
    let path = fixtures().join("expected").join(name);
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "expected file {} is missing ({e}); run with UPDATE_EXPECT=1 and review it",
            path.display()
        )
    });
    if expected != actual {
        panic!(
            "{} differs from the result (run with UPDATE_EXPECT=1 to accept):\n{}",
            path.display(),
            webake_rollout::unified_diff(name, &expected, actual)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A fake of the GitHub REST endpoints webake uses.

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query as sent.
    pub target: String,
    /// Lower-case header names.
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl Recorded {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body of {} {}: {e}", self.method, self.target))
    }
}

#[derive(Debug, Clone)]
pub struct FakePull {
    pub number: u64,
    pub head: String,
    pub base: String,
    pub title: String,
    pub body: String,
    pub state: String,
    pub merged: bool,
    pub labels: Vec<String>,
}

#[derive(Default)]
pub struct FakeState {
    pub pulls: Vec<FakePull>,
}

/// A local HTTP/1.1 server (one request per connection) that records every request and answers
/// with `handler`; stopped and joined on drop.
pub struct FakeServer<S: Send + 'static> {
    pub base: String,
    pub state: Arc<Mutex<S>>,
    requests: Arc<Mutex<Vec<Recorded>>>,
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
    thread: Option<JoinHandle<()>>,
}

type Handler<S> = Box<dyn Fn(&Recorded, &mut S) -> (u16, serde_json::Value) + Send>;

impl<S: Send + 'static> FakeServer<S> {
    pub fn start(state: S, handler: Handler<S>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(state));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, rq, sp) = (state.clone(), requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                let Some(req) = read_request(&mut stream) else {
                    continue;
                };
                rq.lock().unwrap().push(req.clone());
                let (status, body) = handler(&req, &mut st.lock().unwrap());
                respond(&mut stream, status, &body);
            }
        });
        Self {
            base: format!("http://{addr}"),
            state,
            requests,
            stop,
            addr,
            thread: Some(thread),
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// `(method, target)` of each request since the `from`th.
    pub fn calls(&self, from: usize) -> Vec<(String, String)> {
        self.requests()[from..]
            .iter()
            .map(|r| (r.method.clone(), r.target.clone()))
            .collect()
    }
}

impl<S: Send + 'static> Drop for FakeServer<S> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `(method, target)` pairs from string literals.
pub fn calls(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect()
}

fn split_query(target: &str) -> (&str, BTreeMap<String, String>) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = query
        .split('&')
        .filter(|q| !q.is_empty())
        .filter_map(|q| q.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect();
    (path, query)
}

fn respond(stream: &mut TcpStream, status: u16, body: &serde_json::Value) {
    let body = body.to_string();
    let reason = match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        409 => "Conflict",
        _ => "Unprocessable Entity",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.flush();
}

// --- GitHub ---------------------------------------------------------------------------------

/// A fake of the GitHub REST endpoints webake uses (pulls: list by head and state, create,
/// update; issue labels), accepting only `Bearer {token}`.
pub struct FakeGitHub {
    pub server: FakeServer<FakeState>,
    pub base: String,
}

impl FakeGitHub {
    /// Serve `/repos/{owner}/{repo}/...`, accepting only `Bearer {token}`.
    pub fn start(owner: &str, repo: &str, token: &str) -> Self {
        let prefix = format!("/repos/{owner}/{repo}");
        let (owner, token) = (owner.to_string(), token.to_string());
        let server = FakeServer::start(
            FakeState::default(),
            Box::new(move |req, st| github_answer(req, st, &prefix, &owner, &token)),
        );
        let base = server.base.clone();
        Self { server, base }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.server.requests()
    }

    pub fn pulls(&self) -> Vec<FakePull> {
        self.server.state.lock().unwrap().pulls.clone()
    }

    /// A reviewer closes pull request `number` (without merging it).
    pub fn close(&self, number: u64) {
        let mut st = self.server.state.lock().unwrap();
        let p = st.pulls.iter_mut().find(|p| p.number == number).unwrap();
        p.state = "closed".into();
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn read_request(stream: &mut TcpStream) -> Option<Recorded> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    assert!(
        !headers.contains_key("transfer-encoding"),
        "the fake reads Content-Length bodies only"
    );
    let len: usize = headers
        .get("content-length")
        .map(|v| v.parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(Recorded {
        method,
        target,
        headers,
        body: String::from_utf8(body).unwrap(),
    })
}

fn pull_json(p: &FakePull, base: &str) -> serde_json::Value {
    serde_json::json!({
        "number": p.number,
        "html_url": format!("https://github.example/{base}/pull/{}", p.number),
        "state": p.state,
        "title": p.title,
        "body": p.body,
        "merged_at": if p.merged { serde_json::json!("2026-12-01T10:00:00Z") } else { serde_json::Value::Null },
    })
}

fn github_answer(
    req: &Recorded,
    st: &mut FakeState,
    prefix: &str,
    owner: &str,
    token: &str,
) -> (u16, serde_json::Value) {
    let slug = prefix.trim_start_matches("/repos/").to_string();
    if req.headers.get("authorization").map(String::as_str) != Some(&format!("Bearer {token}")) {
        return (
            401,
            serde_json::json!({"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"}),
        );
    }
    let (path, query) = split_query(&req.target);
    let rest = path.strip_prefix(prefix).unwrap_or("/unknown");
    let segs: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    match (req.method.as_str(), segs.as_slice()) {
        ("GET", ["pulls"]) => {
            let head = query.get("head").cloned().unwrap_or_default();
            let want_state = query.get("state").cloned().unwrap_or_else(|| "open".into());
            // Newest first, as with sort=updated&direction=desc.
            let list: Vec<_> = st
                .pulls
                .iter()
                .rev()
                .filter(|p| format!("{owner}:{}", p.head) == head)
                .filter(|p| want_state == "all" || p.state == want_state)
                .map(|p| pull_json(p, &slug))
                .collect();
            (200, serde_json::Value::Array(list))
        }
        ("POST", ["pulls"]) => {
            let b = req.json();
            let head = b["head"].as_str().unwrap().to_string();
            if st.pulls.iter().any(|p| p.head == head && p.state == "open") {
                (
                    422,
                    serde_json::json!({"message": "Validation Failed", "errors": [{"message": "A pull request already exists"}]}),
                )
            } else {
                let p = FakePull {
                    number: st.pulls.len() as u64 + 1,
                    head,
                    base: b["base"].as_str().unwrap().to_string(),
                    title: b["title"].as_str().unwrap().to_string(),
                    body: b["body"].as_str().unwrap().to_string(),
                    state: "open".into(),
                    merged: false,
                    labels: Vec::new(),
                };
                let json = pull_json(&p, &slug);
                st.pulls.push(p);
                (201, json)
            }
        }
        ("PATCH", ["pulls", n]) => {
            let b = req.json();
            let n: u64 = n.parse().unwrap();
            match st.pulls.iter_mut().find(|p| p.number == n) {
                Some(p) => {
                    if let Some(t) = b["title"].as_str() {
                        p.title = t.to_string();
                    }
                    if let Some(t) = b["body"].as_str() {
                        p.body = t.to_string();
                    }
                    let p = p.clone();
                    (200, pull_json(&p, &slug))
                }
                None => (404, serde_json::json!({"message": "Not Found"})),
            }
        }
        ("POST", ["issues", n, "labels"]) => {
            let b = req.json();
            let n: u64 = n.parse().unwrap();
            match st.pulls.iter_mut().find(|p| p.number == n) {
                Some(p) => {
                    for l in b["labels"].as_array().unwrap() {
                        let l = l.as_str().unwrap().to_string();
                        if !p.labels.contains(&l) {
                            p.labels.push(l);
                        }
                    }
                    let labels: Vec<_> = p
                        .labels
                        .iter()
                        .map(|l| serde_json::json!({"name": l}))
                        .collect();
                    (200, serde_json::Value::Array(labels))
                }
                None => (404, serde_json::json!({"message": "Not Found"})),
            }
        }
        _ => (404, serde_json::json!({"message": "Not Found"})),
    }
}

// --- GitLab ---------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct FakeMergeRequest {
    pub iid: u64,
    pub source_branch: String,
    pub target_branch: String,
    pub title: String,
    pub description: String,
    /// `opened`, `closed` or `merged`.
    pub state: String,
    pub labels: Vec<String>,
}

#[derive(Default)]
pub struct GitLabState {
    pub merge_requests: Vec<FakeMergeRequest>,
}

/// A fake of the GitLab REST v4 merge request endpoints webake uses, under
/// `/api/v4/projects/{url-encoded GROUP/PROJECT}`, accepting only `PRIVATE-TOKEN: {token}`.
/// It follows GitLab's documented behaviour: `state=opened|closed|merged|all` filters,
/// `labels`/`add_labels` as comma-separated strings, 409 for a second open merge request
/// from one source branch, 400 when a required attribute is missing.
pub struct FakeGitLab {
    pub server: FakeServer<GitLabState>,
    /// API base: `http://127.0.0.1:PORT/api/v4`.
    pub base: String,
}

impl FakeGitLab {
    pub fn start(project: &str, token: &str) -> Self {
        let encoded = project.replace('/', "%2F");
        let prefix = format!("/api/v4/projects/{encoded}");
        let (project, token) = (project.to_string(), token.to_string());
        let server = FakeServer::start(
            GitLabState::default(),
            Box::new(move |req, st| gitlab_answer(req, st, &prefix, &project, &token)),
        );
        let base = format!("{}/api/v4", server.base);
        Self { server, base }
    }

    pub fn merge_requests(&self) -> Vec<FakeMergeRequest> {
        self.server.state.lock().unwrap().merge_requests.clone()
    }

    /// A reviewer closes merge request `iid`.
    pub fn close(&self, iid: u64) {
        let mut st = self.server.state.lock().unwrap();
        st.merge_requests
            .iter_mut()
            .find(|m| m.iid == iid)
            .unwrap()
            .state = "closed".into();
    }
}

fn mr_json(m: &FakeMergeRequest, project: &str) -> serde_json::Value {
    serde_json::json!({
        "id": 1000 + m.iid,
        "iid": m.iid,
        "project_id": 42,
        "title": m.title,
        "description": m.description,
        "state": m.state,
        "source_branch": m.source_branch,
        "target_branch": m.target_branch,
        "labels": m.labels,
        "web_url": format!("https://gitlab.example/{project}/-/merge_requests/{}", m.iid),
    })
}

fn gitlab_answer(
    req: &Recorded,
    st: &mut GitLabState,
    prefix: &str,
    project: &str,
    token: &str,
) -> (u16, serde_json::Value) {
    if req.headers.get("private-token").map(String::as_str) != Some(token) {
        return (401, serde_json::json!({"message": "401 Unauthorized"}));
    }
    let (path, query) = split_query(&req.target);
    let Some(rest) = path.strip_prefix(prefix) else {
        return (404, serde_json::json!({"message": "404 Project Not Found"}));
    };
    let segs: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    let split_labels = |s: &str| -> Vec<String> {
        s.split(',')
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    };
    match (req.method.as_str(), segs.as_slice()) {
        ("GET", ["merge_requests"]) => {
            let state = query.get("state").cloned().unwrap_or_else(|| "all".into());
            let list: Vec<_> = st
                .merge_requests
                .iter()
                .rev()
                .filter(|m| {
                    query
                        .get("source_branch")
                        .is_none_or(|b| *b == m.source_branch)
                })
                .filter(|m| state == "all" || m.state == state)
                .map(|m| mr_json(m, project))
                .collect();
            (200, serde_json::Value::Array(list))
        }
        ("POST", ["merge_requests"]) => {
            let b = req.json();
            let field = |k: &str| b[k].as_str().map(String::from);
            let (Some(source), Some(target), Some(title)) = (
                field("source_branch"),
                field("target_branch"),
                field("title"),
            ) else {
                return (
                    400,
                    serde_json::json!({"error": "source_branch, target_branch, title are missing"}),
                );
            };
            if let Some(open) = st
                .merge_requests
                .iter()
                .find(|m| m.source_branch == source && m.state == "opened")
            {
                return (
                    409,
                    serde_json::json!({"message": [format!("Another open merge request already exists for this source branch: !{}", open.iid)]}),
                );
            }
            let m = FakeMergeRequest {
                iid: st.merge_requests.len() as u64 + 1,
                source_branch: source,
                target_branch: target,
                title,
                description: field("description").unwrap_or_default(),
                state: "opened".into(),
                labels: field("labels")
                    .map(|l| split_labels(&l))
                    .unwrap_or_default(),
            };
            let json = mr_json(&m, project);
            st.merge_requests.push(m);
            (201, json)
        }
        ("PUT", ["merge_requests", iid]) => {
            let b = req.json();
            let iid: u64 = iid.parse().unwrap();
            let Some(m) = st.merge_requests.iter_mut().find(|m| m.iid == iid) else {
                return (404, serde_json::json!({"message": "404 Not found"}));
            };
            if let Some(t) = b["title"].as_str() {
                m.title = t.to_string();
            }
            if let Some(t) = b["description"].as_str() {
                m.description = t.to_string();
            }
            if let Some(t) = b["target_branch"].as_str() {
                m.target_branch = t.to_string();
            }
            if let Some(l) = b["add_labels"].as_str() {
                for l in split_labels(l) {
                    if !m.labels.contains(&l) {
                        m.labels.push(l);
                    }
                }
            }
            match b["state_event"].as_str() {
                Some("close") => m.state = "closed".into(),
                Some("reopen") => m.state = "opened".into(),
                _ => {}
            }
            (200, mr_json(m, project))
        }
        _ => (404, serde_json::json!({"error": "404 Not Found"})),
    }
}

// --- images ---------------------------------------------------------------------------------

/// An inventory with these `(name, version)` packages (amd64), one kernel and a size.
pub fn inventory(
    packages: &[(&str, &str)],
    kernel: &str,
    bytes: u64,
) -> webake_inventory::Inventory {
    let packages: Vec<serde_json::Value> = packages
        .iter()
        .map(|(name, version)| {
            serde_json::json!({
                "name": name, "version": version, "architecture": "amd64",
                "source": name, "source_version": version,
            })
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "format": 1,
        "os": {"id": "debian", "version_id": "12", "version_codename": "bookworm", "pretty_name": "Debian GNU/Linux 12 (bookworm)"},
        "packages": packages,
        "kernels": [{"version": kernel, "image": format!("/boot/vmlinuz-{kernel}"), "modules": true}],
        "units": [],
        "size": {"bytes": bytes, "files": 20000},
        "provenance": {"recipe_digest": "sha256:00"},
    }))
    .expect("inventory JSON")
}

/// Facts of a catalog image of family `k8s-node`.
pub fn image_facts(
    id: &str,
    version: &str,
    created_at: i64,
    packages: &[(&str, &str)],
    kernel: &str,
    bytes: u64,
) -> webake_rollout::ImageFacts {
    webake_rollout::ImageFacts {
        id: id.into(),
        name: "k8s-node".into(),
        family: "k8s-node".into(),
        version: version.into(),
        created_at,
        kernel: Some(kernel.into()),
        size_bytes: Some(bytes),
        boot_test: Some("passed".into()),
        sbom_paths: vec![
            format!("/var/lib/webake/images/{id}/k8s-node-{version}.spdx.json"),
            format!("/var/lib/webake/images/{id}/k8s-node-{version}.cdx.json"),
        ],
        inventory: Some(inventory(packages, kernel, bytes)),
        package_notes: Default::default(),
    }
}
