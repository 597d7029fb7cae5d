//! Test support: fixture repositories with a bare remote, snapshot files, a fake GitHub.

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
    pub labels: Vec<String>,
}

#[derive(Default)]
pub struct FakeState {
    pub requests: Vec<Recorded>,
    pub pulls: Vec<FakePull>,
}

pub struct FakeGitHub {
    pub base: String,
    pub state: Arc<Mutex<FakeState>>,
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl FakeGitHub {
    /// Serve `/repos/{owner}/{repo}/...`, accepting only `Bearer {token}`.
    pub fn start(owner: &str, repo: &str, token: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(FakeState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let prefix = format!("/repos/{owner}/{repo}");
        let (owner, token) = (owner.to_string(), token.to_string());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                serve(stream, &st, &prefix, &owner, &token);
            }
        });
        Self {
            base: format!("http://{addr}"),
            state,
            stop,
            addr,
            thread: Some(thread),
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn pulls(&self) -> Vec<FakePull> {
        self.state.lock().unwrap().pulls.clone()
    }
}

impl Drop for FakeGitHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
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
    })
}

fn serve(mut stream: TcpStream, state: &Mutex<FakeState>, prefix: &str, owner: &str, token: &str) {
    let Some(req) = read_request(&mut stream) else {
        return;
    };
    let mut st = state.lock().unwrap();
    st.requests.push(req.clone());
    let slug = prefix.trim_start_matches("/repos/").to_string();
    let (status, body): (u16, serde_json::Value) = if req
        .headers
        .get("authorization")
        .map(String::as_str)
        != Some(&format!("Bearer {token}"))
    {
        (
            401,
            serde_json::json!({"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"}),
        )
    } else {
        let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
        let query: BTreeMap<String, String> = query
            .split('&')
            .filter(|q| !q.is_empty())
            .filter_map(|q| q.split_once('='))
            .map(|(k, v)| (k.to_string(), percent_decode(v)))
            .collect();
        let rest = path.strip_prefix(prefix).unwrap_or("/unknown");
        let segs: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
        match (req.method.as_str(), segs.as_slice()) {
            ("GET", ["pulls"]) => {
                let head = query.get("head").cloned().unwrap_or_default();
                let want_state = query.get("state").cloned().unwrap_or_else(|| "open".into());
                let list: Vec<_> = st
                    .pulls
                    .iter()
                    .filter(|p| format!("{owner}:{}", p.head) == head && p.state == want_state)
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
    };
    drop(st);
    let body = body.to_string();
    let reason = match status {
        200 => "OK",
        201 => "Created",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Unprocessable Entity",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.flush();
}
