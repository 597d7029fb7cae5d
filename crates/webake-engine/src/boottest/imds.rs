//! The instance metadata the guest sees during a boot test: a faithful IMDSv2 fake on the
//! host's loopback, reached from the guest at 169.254.169.254 through qemu's guestfwd and a
//! per-connection bridge (this executable, re-run as `__webake-tcp-pipe ADDR`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use webake_spec::ImdsFixture;

use crate::{Error, Result};

/// argv[1] of the per-connection bridge qemu's guestfwd runs: stdin/stdout <-> a TCP address.
pub const TCP_PIPE_ARG: &str = "__webake-tcp-pipe";

/// The bridge: copy stdin to the TCP peer and the peer to stdout until either side closes.
pub fn tcp_pipe_main_if_requested() -> Option<u8> {
    let mut args = std::env::args();
    let _ = args.next();
    if args.next().as_deref() != Some(TCP_PIPE_ARG) {
        return None;
    }
    let addr = args.next()?;
    let Ok(sock) = TcpStream::connect(&addr) else {
        return Some(1);
    };
    let Ok(mut up) = sock.try_clone() else {
        return Some(1);
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut up);
        let _ = up.shutdown(std::net::Shutdown::Write);
    });
    let mut down = sock;
    let _ = std::io::copy(&mut down, &mut std::io::stdout().lock());
    let _ = std::io::stdout().flush();
    Some(0)
}

/// A faithful IMDSv2 fake (token PUT with TTL header; GETs need the token) on 127.0.0.1.
pub struct FakeImds {
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeImds {
    pub fn start(f: &ImdsFixture) -> Result<Self> {
        let io = |e| Error::io("the IMDS fake on 127.0.0.1", e);
        let listener = TcpListener::bind("127.0.0.1:0").map_err(io)?;
        listener.set_nonblocking(true).map_err(io)?;
        let port = listener.local_addr().map_err(io)?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let mut data: BTreeMap<String, String> = BTreeMap::new();
        data.insert(
            "/latest/meta-data/instance-id".into(),
            f.instance_id.clone(),
        );
        data.insert(
            "/latest/meta-data/placement/region".into(),
            f.region.clone(),
        );
        data.insert(
            "/latest/meta-data/placement/availability-zone".into(),
            format!("{}a", f.region),
        );
        if !f.tags.is_empty() {
            data.insert(
                "/latest/meta-data/tags/instance".into(),
                f.tags.keys().cloned().collect::<Vec<_>>().join("\n"),
            );
            for (k, v) in &f.tags {
                data.insert(format!("/latest/meta-data/tags/instance/{k}"), v.clone());
            }
        }
        let token = format!("webake-test-token-{port}");
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = serve_imds(stream, &data, &token);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(Self {
            port,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for FakeImds {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_imds(
    stream: TcpStream,
    data: &BTreeMap<String, String>,
    token: &str,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut r = BufReader::new(stream.try_clone()?);
    let mut w = stream;
    loop {
        let mut request = String::new();
        if r.read_line(&mut request)? == 0 {
            return Ok(());
        }
        let mut headers = BTreeMap::new();
        loop {
            let mut l = String::new();
            r.read_line(&mut l)?;
            let l = l.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        if let Some(n) = headers
            .get("content-length")
            .and_then(|v| v.parse::<usize>().ok())
        {
            let mut b = vec![0; n.min(1 << 16)];
            r.read_exact(&mut b)?;
        }
        let mut parts = request.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let (status, body) = if method == "PUT" && path == "/latest/api/token" {
            match headers
                .get("x-aws-ec2-metadata-token-ttl-seconds")
                .and_then(|v| v.parse::<u32>().ok())
            {
                Some(t) if (1..=21600).contains(&t) => ("200 OK", token.to_string()),
                _ => ("400 Bad Request", String::new()),
            }
        } else if method == "GET" {
            if headers.get("x-aws-ec2-metadata-token").map(String::as_str) != Some(token) {
                ("401 Unauthorized", String::new())
            } else {
                match data.get(path.trim_end_matches('/')) {
                    Some(v) => ("200 OK", v.clone()),
                    None => ("404 Not Found", String::new()),
                }
            }
        } else {
            ("405 Method Not Allowed", String::new())
        };
        write!(
            w,
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nServer: EC2ws\r\n\r\n{body}",
            body.len()
        )?;
        w.flush()?;
        if headers
            .get("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"))
        {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_imds_follows_the_protocol() {
        let f = FakeImds::start(&ImdsFixture {
            instance_id: "i-1".into(),
            region: "eu-west-1".into(),
            tags: [("Environment".to_string(), "prod".to_string())].into(),
        })
        .unwrap();
        let req = |s: &str| -> String {
            let mut c = TcpStream::connect(("127.0.0.1", f.port)).unwrap();
            c.write_all(s.as_bytes()).unwrap();
            let mut out = String::new();
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let _ = c.read_to_string(&mut out);
            out
        };
        assert!(
            req("PUT /latest/api/token HTTP/1.1\r\nConnection: close\r\n\r\n")
                .starts_with("HTTP/1.1 400")
        );
        let tok = req(
            "PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\nConnection: close\r\n\r\n",
        );
        let token = tok.rsplit("\r\n\r\n").next().unwrap().to_string();
        assert!(
            req("GET /latest/meta-data/instance-id HTTP/1.1\r\nConnection: close\r\n\r\n")
                .starts_with("HTTP/1.1 401")
        );
        let ok = req(&format!(
            "GET /latest/meta-data/tags/instance/Environment HTTP/1.1\r\nX-aws-ec2-metadata-token: {token}\r\nConnection: close\r\n\r\n"
        ));
        assert!(
            ok.starts_with("HTTP/1.1 200") && ok.ends_with("prod"),
            "{ok}"
        );
    }
}
