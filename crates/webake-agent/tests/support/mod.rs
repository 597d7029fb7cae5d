//! A faithful fake of the EC2 instance metadata service on 127.0.0.1, following the documented
//! IMDSv2 protocol with `HttpTokens=required`:
//!
//! - `PUT /latest/api/token` needs `X-aws-ec2-metadata-token-ttl-seconds` between 1 and 21600,
//!   else 400; a request carrying `X-Forwarded-For` is refused with 403; other methods are 405.
//! - Every metadata `GET` needs `X-aws-ec2-metadata-token` naming a live token, else 401.
//! - `/latest/meta-data/tags/instance[/key]` is 404 when instance metadata tags are disabled.
//!
//! Knobs: a delay before answering (slow IMDS), answering 503 to the first N requests
//! (throttling), revoking every token (expiry). The server stops and joins its threads on Drop.
#![allow(dead_code)] // each test crate uses a different subset

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const INSTANCE_ID: &str = "i-07a38e448ad62b4da";
pub const REGION: &str = "eu-west-1";
pub const EXPECTED_HOSTNAME: &str = "kubernetes-prod-euwest1-07a38e448ad62b4da";

#[derive(Debug, Clone)]
pub struct Config {
    pub instance_id: String,
    pub region: String,
    /// `None`: instance metadata tags disabled (404 on the tags paths).
    pub tags: Option<Vec<(String, String)>>,
    /// Sleep this long before answering each request.
    pub delay: Duration,
    /// Answer 503 to this many requests first.
    pub fail_first: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            instance_id: INSTANCE_ID.into(),
            region: REGION.into(),
            tags: Some(vec![("Environment".into(), "prod".into())]),
            delay: Duration::ZERO,
            fail_first: 0,
        }
    }
}

impl Config {
    pub fn tags_disabled() -> Self {
        Config {
            tags: None,
            ..Config::default()
        }
    }
}

/// A request as the fake saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub token: Option<String>,
    pub ttl: Option<String>,
}

struct Token {
    value: String,
    expires: Instant,
}

struct State {
    config: Config,
    tokens: Mutex<Vec<Token>>,
    seen: Mutex<Vec<Seen>>,
    served: AtomicU32,
    issued: AtomicU32,
    stop: AtomicBool,
}

pub struct FakeImds {
    addr: SocketAddr,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

impl FakeImds {
    pub fn start(config: Config) -> FakeImds {
        FakeImds::start_on("127.0.0.1:0", config)
    }

    /// `bind` is a loopback address: `127.0.0.1:0` or `[::1]:0`.
    pub fn start_on(bind: &str, config: Config) -> FakeImds {
        let listener = TcpListener::bind(bind).expect("bind fake IMDS on loopback");
        assert!(listener.local_addr().unwrap().ip().is_loopback());
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            config,
            tokens: Mutex::new(Vec::new()),
            seen: Mutex::new(Vec::new()),
            served: AtomicU32::new(0),
            issued: AtomicU32::new(0),
            stop: AtomicBool::new(false),
        });
        let accept_state = Arc::clone(&state);
        let accept = std::thread::spawn(move || {
            let mut handlers = Vec::new();
            for stream in listener.incoming() {
                if accept_state.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let state = Arc::clone(&accept_state);
                handlers.push(std::thread::spawn(move || handle(&state, stream)));
            }
            for handler in handlers {
                let _ = handler.join();
            }
        });
        FakeImds {
            addr,
            state,
            accept: Some(accept),
        }
    }

    /// `http://127.0.0.1:PORT` or `http://[::1]:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Every token issued so far stops working, as if its TTL ran out.
    pub fn revoke_tokens(&self) {
        self.state.tokens.lock().unwrap().clear();
    }
}

impl Drop for FakeImds {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// A loopback URL where nothing listens (connection refused): IMDS absent.
pub fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

fn handle(state: &State, mut stream: TcpStream) {
    if state.stop.load(Ordering::SeqCst) {
        return;
    }
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let Some((method, path, headers)) = read_head(&mut stream) else {
        return;
    };
    // Slow IMDS: sleep, but stop promptly when the server shuts down.
    let until = Instant::now() + state.config.delay;
    while Instant::now() < until {
        if state.stop.load(Ordering::SeqCst) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let token = header("X-aws-ec2-metadata-token");
    let ttl = header("X-aws-ec2-metadata-token-ttl-seconds");
    let (status, body, extra) =
        if state.served.fetch_add(1, Ordering::SeqCst) < state.config.fail_first {
            (503, String::new(), None)
        } else {
            respond(
                state,
                &method,
                &path,
                token.as_deref(),
                ttl.as_deref(),
                header("X-Forwarded-For").is_some(),
            )
        };
    state.seen.lock().unwrap().push(Seen {
        method,
        path,
        status,
        token,
        ttl,
    });
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let mut response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\nServer: EC2ws\r\n",
        body.len()
    );
    if let Some((name, value)) = extra {
        response.push_str(&format!("{name}: {value}\r\n"));
    }
    response.push_str("\r\n");
    response.push_str(&body);
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.shutdown(Shutdown::Write);
}

type Extra = Option<(&'static str, String)>;

fn respond(
    state: &State,
    method: &str,
    path: &str,
    token: Option<&str>,
    ttl: Option<&str>,
    forwarded: bool,
) -> (u16, String, Extra) {
    if path == "/latest/api/token" {
        if method != "PUT" {
            return (405, String::new(), None);
        }
        if forwarded {
            return (403, String::new(), None);
        }
        let ttl = match ttl.and_then(|t| t.trim().parse::<u64>().ok()) {
            Some(t) if (1..=21600).contains(&t) => t,
            _ => return (400, String::new(), None),
        };
        let n = state.issued.fetch_add(1, Ordering::SeqCst);
        let value = format!(
            "AQAEAFAKE-token-{n}-{}==",
            state.served.load(Ordering::SeqCst)
        );
        state.tokens.lock().unwrap().push(Token {
            value: value.clone(),
            expires: Instant::now() + Duration::from_secs(ttl),
        });
        return (
            200,
            value,
            Some(("X-aws-ec2-metadata-token-ttl-seconds", ttl.to_string())),
        );
    }
    if method != "GET" && method != "HEAD" {
        return (405, String::new(), None);
    }
    let valid = token.is_some_and(|t| {
        state
            .tokens
            .lock()
            .unwrap()
            .iter()
            .any(|k| k.value == t && k.expires > Instant::now())
    });
    if !valid {
        return (401, String::new(), None);
    }
    let config = &state.config;
    let found = match path {
        "/latest/meta-data/instance-id" => Some(config.instance_id.clone()),
        "/latest/meta-data/placement/region" => Some(config.region.clone()),
        "/latest/meta-data/tags/instance" => config.tags.as_ref().map(|tags| {
            tags.iter()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        }),
        p => p
            .strip_prefix("/latest/meta-data/tags/instance/")
            .and_then(|key| {
                config
                    .tags
                    .as_ref()?
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v.clone())
            }),
    };
    match found {
        Some(body) => (200, body, None),
        None => (404, String::new(), None),
    }
}

type Head = (String, String, Vec<(String, String)>);

fn read_head(stream: &mut TcpStream) -> Option<Head> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 1024];
    while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 || raw.len() > 16 * 1024 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8(raw).ok()?;
    let head = text.split("\r\n\r\n").next()?;
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let path = request_line.next()?.to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Some((method, path, headers))
}
