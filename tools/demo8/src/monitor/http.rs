//! A blocking `GET` of the orchestrator's JSON API with `reqwest` (the workspace's one
//! HTTP client): plain `http://` only, no redirects followed.

use std::str::FromStr;
use std::time::Duration;

use reqwest::Url;
use reqwest::blocking::Client;
use reqwest::header::{ACCEPT, AUTHORIZATION, USER_AGENT};
use reqwest::redirect::Policy;

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
        let url = Url::parse(s).map_err(|e| bad(&e.to_string()))?;
        if url.scheme() != "http" {
            return Err(bad("only http:// URLs are supported"));
        }
        // An IPv6 address comes bracketed: `[::1]`.
        let host = url.host_str().ok_or_else(|| bad("no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        match url.port_or_known_default() {
            Some(0) | None => Err(bad("port 0")),
            Some(port) => Ok(Endpoint { host, port }),
        }
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
    /// Connecting, sending or reading failed.
    #[error("{endpoint}: {reason}")]
    Io {
        /// The server.
        endpoint: String,
        /// Why (the client's error and its causes).
        reason: String,
    },
}

/// `GET path` with an optional bearer token; waits at most `timeout` to connect and
/// at most `timeout` for the whole exchange.
pub fn get(
    endpoint: &Endpoint,
    path: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<Response, HttpError> {
    let io = |e: reqwest::Error| {
        let mut reason = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            reason.push_str(&format!(": {c}"));
            cause = c.source();
        }
        HttpError::Io {
            endpoint: endpoint.to_string(),
            reason,
        }
    };
    let client = Client::builder()
        .no_proxy()
        .redirect(Policy::none())
        .http1_title_case_headers()
        .connect_timeout(timeout)
        .timeout(timeout)
        .build()
        .map_err(io)?;
    let mut request = client
        .get(format!("{endpoint}{path}"))
        .header(ACCEPT, "application/json")
        .header(USER_AGENT, "cptm8-demo-monitor");
    if let Some(t) = token {
        request = request.header(AUTHORIZATION, format!("Bearer {t}"));
    }
    let response = request.send().map_err(io)?;
    let status = response.status().as_u16();
    let body = response.bytes().map_err(io)?.to_vec();
    Ok(Response { status, body })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
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

    /// Serves one canned `response` on a free port of 127.0.0.1 (a raw socket on
    /// purpose: it sends malformed answers no server library would); the request
    /// it read, once answered.
    fn serve_once(response: &'static [u8]) -> (Endpoint, std::thread::JoinHandle<String>) {
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
            s.write_all(response).unwrap();
            String::from_utf8(req).unwrap()
        });
        let e = Endpoint {
            host: "127.0.0.1".into(),
            port,
        };
        (e, server)
    }

    fn get_canned(response: &'static [u8]) -> Result<Response, HttpError> {
        let (e, server) = serve_once(response);
        let r = get(&e, "/", None, Duration::from_secs(10));
        server.join().unwrap();
        r
    }

    #[test]
    fn content_length_and_chunked_bodies() {
        let r = get_canned(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n[]").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"[]"[..]));
        let r = get_canned(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3;x=y\r\n:1}\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &br#"{"a":1}"#[..]));
        assert!(get_canned(b"garbage").is_err());
        assert!(get_canned(b"SMTP 220\r\n\r\n").is_err());
        assert!(get_canned(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n[]").is_err());
        assert!(
            get_canned(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
    }

    #[test]
    fn a_real_socket_round_trip_sends_the_token() {
        let (e, server) =
            serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n[]");
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
