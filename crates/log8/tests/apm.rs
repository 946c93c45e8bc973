//! APM export against a local HTTP listener standing in for the APM server's intake
//! endpoint (there is no APM server on the test machine): INFO spans are posted with the
//! secret token, and error events inside spans that are not exported never panic.
#![cfg(feature = "apm")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use config8::{LogLevel, Secret};
use log8::{ApmOutput, Format, LogConfig};

/// A request received by the listener: its headers and body.
struct Request {
    headers: String,
    body: String,
}

/// Accepts HTTP/1.1 requests on 127.0.0.1 and answers 202 to each.
fn intake_server() -> (String, mpsc::Receiver<Request>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut stream = stream;
                loop {
                    let mut headers = String::new();
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        headers.push_str(&line);
                    }
                    let len = headers
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    let mut body = vec![0; len];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let _ = stream.write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n");
                    let body = String::from_utf8_lossy(&body).into_owned();
                    if tx.send(Request { headers, body }).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, rx)
}

#[test]
fn info_spans_are_exported_and_unexported_parents_never_panic() {
    let (url, requests) = intake_server();
    let cfg = LogConfig {
        format: Format::Text,
        level: LogLevel::Debug,
        console: false,
        file: None,
        apm: Some(ApmOutput {
            server_url: url,
            secret_token: Some(Secret::new("apm-t0ken")),
            service_name: "orchestratorm8-test".into(),
            environment: "test".into(),
            flush_timeout: Duration::from_millis(200),
        }),
    };
    let (dispatch, guard) = log8::build(&cfg).unwrap();
    tracing::dispatcher::with_default(&dispatch, || {
        // A per-message span (debug) with an error inside: not exported, and the error
        // event's parent is unknown to the exporter, which must not panic.
        {
            let msg = tracing::debug_span!("per_message_debug_span");
            let _e = msg.enter();
            tracing::error!("error inside a debug span");
        }
        // A debug span inside an exported span, with an error inside: no panic either.
        let cycle = tracing::info_span!("scheduler_cycle_marker", cycle = 1);
        {
            let _c = cycle.enter();
            let inner = tracing::debug_span!("inner_debug_span");
            let _i = inner.enter();
            tracing::error!("error inside a nested debug span");
        }
        {
            let _c = cycle.enter();
            tracing::error!("error_in_exported_span_marker");
        }
        drop(cycle);
    });

    // Wait (with a deadline) for both the span and the error to arrive.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let got = |seen: &Vec<Request>, needle: &str| seen.iter().any(|r| r.body.contains(needle));
    while !(got(&seen, "scheduler_cycle_marker") && got(&seen, "error_in_exported_span_marker")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match requests.recv_timeout(left) {
            Ok(r) => seen.push(r),
            Err(_) => panic!(
                "APM requests not received; got {:?}",
                seen.iter().map(|r| &r.body).collect::<Vec<_>>()
            ),
        }
    }
    let span = seen
        .iter()
        .find(|r| r.body.contains("scheduler_cycle_marker"))
        .unwrap();
    assert!(
        span.headers.starts_with("POST /intake/v2/events "),
        "{}",
        span.headers
    );
    assert!(
        span.headers
            .to_ascii_lowercase()
            .contains("authorization: bearer apm-t0ken"),
        "{}",
        span.headers
    );
    assert!(span.body.contains("orchestratorm8-test"), "{}", span.body);
    // Whatever arrived so far, no debug span was among it.
    assert!(!got(&seen, "per_message_debug_span") && !got(&seen, "inner_debug_span"));
    assert!(!got(&seen, "error inside a debug span"));

    guard.shutdown(); // bounded wait for sends in flight
    drop(dispatch);
}
