//! A minimal HTTP/1.1 GET over a plain TCP socket (std only): enough to read the
//! orchestrator's JSON API without an HTTP client dependency. `Connection: close`,
//! `Content-Length` or chunked bodies, no TLS, no redirects.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::str::FromStr;
use std::time::Duration;

/// Where the API listens: `http://host:port` (port 80 when omitted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
}

impl FromStr for Endpoint {
    type Err = HttpError;

    fn from_str(s: &str) -> Result<Self, HttpError> {
        let bad = |why: &str| HttpError::Url(format!("{s:?}: {why}"));
        let rest = s
            .strip_prefix("http://")
            .ok_or_else(|| bad("only http:// URLs are supported"))?;
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.is_empty() {
            return Err(bad("no host"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            match after.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None if after.is_empty() => (h, None),
                None => return Err(bad("junk after ]")),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port = match port {
            Some(p) => p
                .parse()
                .map_err(|_| bad("the port is not a number 1-65535"))?,
            None => 80,
        };
        if host.is_empty() || port == 0 {
            return Err(bad("no host or port 0"));
        }
        Ok(Endpoint {
            host: host.to_owned(),
            port,
        })
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "http://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "http://{}:{}", self.host, self.port)
        }
    }
}

/// A response: status code and (de-chunked) body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body.
    pub body: Vec<u8>,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The URL cannot be used.
    #[error("bad URL {0}")]
    Url(String),
    /// Connecting, writing or reading failed.
    #[error("{endpoint}: {reason}")]
    Io {
        /// The server.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The answer is not HTTP/1.x as expected.
    #[error("{endpoint}: malformed HTTP response: {reason}")]
    Malformed {
        /// The server.
        endpoint: String,
        /// Why.
        reason: String,
    },
}

/// `GET path` with an optional bearer token; waits at most `timeout` for each step.
pub fn get(
    endpoint: &Endpoint,
    path: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<Response, HttpError> {
    let io = |reason: String| HttpError::Io {
        endpoint: endpoint.to_string(),
        reason,
    };
    let addrs: Vec<_> = (endpoint.host.as_str(), endpoint.port)
        .to_socket_addrs()
        .map_err(|e| io(format!("cannot resolve: {e}")))?
        .collect();
    let mut last = String::from("no address");
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e.to_string(),
        }
    }
    let mut stream = stream.ok_or_else(|| io(format!("cannot connect: {last}")))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| io(e.to_string()))?;
    let host = if endpoint.host.contains(':') {
        format!("[{}]:{}", endpoint.host, endpoint.port)
    } else {
        format!("{}:{}", endpoint.host, endpoint.port)
    };
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\nUser-Agent: cptm8-demo-monitor\r\nConnection: close\r\n"
    );
    if let Some(t) = token {
        request.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| io(format!("cannot send the request: {e}")))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| io(format!("cannot read the response: {e}")))?;
    parse_response(&raw).map_err(|reason| HttpError::Malformed {
        endpoint: endpoint.to_string(),
        reason,
    })
}

/// Parses a whole HTTP/1.x response (the connection was closed after it).
pub fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "headers are not UTF-8")?;
    let body = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("status line {status_line:?}"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("status line {status_line:?}"))?;
    let mut chunked = false;
    let mut length: Option<usize> = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse()
                    .map_err(|_| format!("Content-Length {value:?}"))?,
            );
        }
    }
    let body = if chunked {
        dechunk(body)?
    } else if let Some(n) = length {
        body.get(..n)
            .ok_or_else(|| format!("body shorter ({}) than Content-Length {n}", body.len()))?
            .to_vec()
    } else {
        body.to_vec()
    };
    Ok(Response { status, body })
}

/// Decodes a chunked body.
fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunk size line not terminated")?;
        let size_text = std::str::from_utf8(&data[..eol]).map_err(|_| "chunk size not UTF-8")?;
        let size_hex = size_text.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(size_hex, 16).map_err(|_| format!("chunk size {size_text:?}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = data.get(..size).ok_or("chunk shorter than its size")?;
        out.extend_from_slice(chunk);
        data = data
            .get(size..)
            .and_then(|d| d.strip_prefix(b"\r\n"))
            .ok_or("chunk not followed by CRLF")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn endpoints_parse() {
        let e: Endpoint = "http://127.0.0.1:18005".parse().unwrap();
        assert_eq!((e.host.as_str(), e.port), ("127.0.0.1", 18005));
        let e: Endpoint = "http://localhost/".parse().unwrap();
        assert_eq!((e.host.as_str(), e.port), ("localhost", 80));
        let e: Endpoint = "http://[::1]:8005/x".parse().unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 8005));
        assert_eq!(e.to_string(), "http://[::1]:8005");
        for bad in [
            "https://x",
            "http://",
            "http://h:99999",
            "http://h:0",
            "ftp://x",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
    }

    #[test]
    fn content_length_and_chunked_bodies() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n[]").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"[]"[..]));
        let r = parse_response(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3;x=y\r\n:1}\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &br#"{"a":1}"#[..]));
        assert!(parse_response(b"garbage").is_err());
        assert!(parse_response(b"SMTP 220\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n[]").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
    }

    #[test]
    fn a_real_socket_round_trip_sends_the_token() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "client closed early");
                req.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n[]")
                .unwrap();
            String::from_utf8(req).unwrap()
        });
        let e = Endpoint {
            host: "127.0.0.1".into(),
            port,
        };
        let r = get(
            &e,
            "/api/x?status=running",
            Some("s3cret"),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"[]"[..]));
        let req = server.join().unwrap();
        assert!(
            req.starts_with("GET /api/x?status=running HTTP/1.1\r\n"),
            "{req}"
        );
        assert!(req.contains("Authorization: Bearer s3cret\r\n"), "{req}");
    }

    #[test]
    fn a_closed_port_is_an_io_error_naming_the_endpoint() {
        // Bind then drop: the port is (almost certainly) closed right after.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = Endpoint {
            host: "127.0.0.1".into(),
            port,
        };
        let err = get(&e, "/", None, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, HttpError::Io { .. }), "{err}");
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
    }
}
