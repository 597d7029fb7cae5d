//! The smallest HTTP/1.1 client that talks to IMDS: plain `http://`, one request per
//! connection (`Connection: close`), every socket operation bounded by a deadline.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// IMDS answers are a few bytes (ids, region, tag values); anything bigger is not IMDS.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Where IMDS lives: `http://host[:port]`, host may be a bracketed IPv6 literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host as written in the URL (IPv6 keeps its brackets); used for the `Host` header.
    host: String,
    port: u16,
}

impl Endpoint {
    /// Parses `http://169.254.169.254`, `http://[fd00:ec2::254]`, `http://127.0.0.1:1338/`.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("endpoint {url:?} must start with http:// (IMDS is plain HTTP)")
        })?;
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(format!(
                "endpoint {url:?} must be http://host[:port] without a path"
            ));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (addr, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("endpoint {url:?}: unterminated '[' in IPv6 address"))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("endpoint {url:?}: junk after IPv6 address"))?,
                ),
            };
            (format!("[{addr}]"), port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host.to_owned(), Some(port)),
                None => (authority.to_owned(), None),
            }
        };
        if host.is_empty() || host == "[]" {
            return Err(format!("endpoint {url:?} has no host"));
        }
        let port = match port {
            None => 80,
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| format!("endpoint {url:?}: invalid port {p:?}"))?,
        };
        Ok(Endpoint { host, port })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn addrs(&self) -> io::Result<Vec<SocketAddr>> {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        Ok((host, self.port).to_socket_addrs()?.collect())
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port == 80 {
            write!(f, "http://{}", self.host)
        } else {
            write!(f, "http://{}:{}", self.host, self.port)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// Per-operation limits; each is further capped by the time left before `deadline`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connect_timeout: Duration,
    pub io_timeout: Duration,
    pub deadline: Instant,
}

impl Limits {
    fn cap(&self, timeout: Duration) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline reached"));
        }
        Ok(timeout.min(left))
    }
}

/// Sends one request and reads the whole response. Errors are I/O errors; a timeout is
/// `ErrorKind::TimedOut` or `WouldBlock` (what the OS reports for a socket timeout).
pub fn request(
    endpoint: &Endpoint,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    limits: Limits,
) -> io::Result<Response> {
    let mut stream = connect(endpoint, limits)?;
    // RFC 9112: Host carries the port when it is not the scheme's default.
    let host = match endpoint.port {
        80 => endpoint.host.clone(),
        port => format!("{}:{port}", endpoint.host),
    };
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: webake-agent/{}\r\nAccept: */*\r\nConnection: close\r\n",
        env!("CARGO_PKG_VERSION")
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if method == "PUT" || method == "POST" {
        head.push_str("Content-Length: 0\r\n");
    }
    head.push_str("\r\n");
    stream.set_write_timeout(Some(limits.cap(limits.io_timeout)?))?;
    stream.write_all(head.as_bytes())?;

    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        stream.set_read_timeout(Some(limits.cap(limits.io_timeout)?))?;
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if raw.len() > MAX_RESPONSE_BYTES {
            return Err(invalid(format!(
                "response larger than {MAX_RESPONSE_BYTES} bytes"
            )));
        }
        if let Some(response) = parse_response(&raw, false)? {
            return Ok(response);
        }
    }
    parse_response(&raw, true)?.ok_or_else(|| invalid("connection closed mid-response"))
}

fn connect(endpoint: &Endpoint, limits: Limits) -> io::Result<TcpStream> {
    let mut last = None;
    for addr in endpoint.addrs()? {
        match TcpStream::connect_timeout(&addr, limits.cap(limits.connect_timeout)?) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| invalid(format!("{} resolves to no address", endpoint.host))))
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Parses a response if `raw` holds a complete one. Without `Content-Length` the body runs to
/// the end of the stream, so it is complete only once `eof` is true.
fn parse_response(raw: &[u8], eof: bool) -> io::Result<Option<Response>> {
    let Some(head_end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head =
        std::str::from_utf8(&raw[..head_end]).map_err(|_| invalid("response head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut words = status_line.splitn(3, ' ');
    let (version, status) = (words.next().unwrap_or_default(), words.next());
    if !version.starts_with("HTTP/1.") {
        return Err(invalid(format!(
            "not an HTTP/1.x response: {status_line:?}"
        )));
    }
    let status = status
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| invalid(format!("bad Content-Length {value:?}")))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            chunked = true;
        }
    }
    let body = &raw[head_end + 4..];
    let body = if chunked {
        match dechunk(body)? {
            Some(body) => body,
            None if eof => return Err(invalid("connection closed mid-chunk")),
            None => return Ok(None),
        }
    } else if let Some(len) = content_length {
        if body.len() < len {
            if eof {
                return Err(invalid("connection closed before Content-Length bytes"));
            }
            return Ok(None);
        }
        body[..len].to_vec()
    } else if eof {
        body.to_vec()
    } else {
        return Ok(None);
    };
    let body = String::from_utf8(body).map_err(|_| invalid("response body is not UTF-8"))?;
    Ok(Some(Response { status, body }))
}

/// Decodes a chunked body; `None` while incomplete.
fn dechunk(mut data: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_text =
            std::str::from_utf8(&data[..line_end]).map_err(|_| invalid("bad chunk size"))?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| invalid(format!("bad chunk size {size_text:?}")))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(Some(out));
        }
        if data.len() < size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_table() {
        for (url, host, port) in [
            ("http://169.254.169.254", "169.254.169.254", 80),
            ("http://169.254.169.254/", "169.254.169.254", 80),
            ("http://[fd00:ec2::254]", "[fd00:ec2::254]", 80),
            ("http://[::1]:1338", "[::1]", 1338),
            ("http://127.0.0.1:1338", "127.0.0.1", 1338),
            ("http://localhost:8080/", "localhost", 8080),
        ] {
            let e = Endpoint::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!((e.host(), e.port()), (host, port), "{url}");
        }
        for url in [
            "https://169.254.169.254",
            "169.254.169.254",
            "http://",
            "http://host:notaport",
            "http://host:99999",
            "http://[fd00:ec2::254",
            "http://[::1]x",
            "http://host/latest",
        ] {
            assert!(Endpoint::parse(url).is_err(), "{url} should be rejected");
        }
        assert_eq!(
            Endpoint::parse("http://[fd00:ec2::254]/")
                .unwrap()
                .to_string(),
            "http://[fd00:ec2::254]"
        );
    }

    #[test]
    fn parses_content_length_chunked_and_eof_bodies() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(
            parse_response(r, false).unwrap(),
            Some(Response {
                status: 200,
                body: "hello".into()
            })
        );
        let partial = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel";
        assert_eq!(parse_response(partial, false).unwrap(), None);
        assert!(parse_response(partial, true).is_err());

        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked, false).unwrap().unwrap().body,
            "abcde"
        );

        let eof = b"HTTP/1.0 404 Not Found\r\n\r\nnope";
        assert_eq!(parse_response(eof, false).unwrap(), None);
        assert_eq!(
            parse_response(eof, true).unwrap(),
            Some(Response {
                status: 404,
                body: "nope".into()
            })
        );
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n", true).is_err());
    }
}
