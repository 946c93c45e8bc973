//! Chain stages (CONTRACT 3b): the platform's Go scanners as they are.
//!
//! An unmodified CPTM8 scanner takes the Go kick-off (`cptm8.<stage>.get.scan`, no
//! payload), scans every enabled target, and publishes its `Publisher` message when it
//! ends. Re-pointed at the orchestrator (`Publisher: ["cptm8",
//! "cptm8.orchestratorm8.<stage>.done", "<stage>"]`), that message is the stage's
//! report. This module is the pure part: routing keys, the report's payload, the
//! outcome table, the window in which an `app.error.*` notification of the same source
//! turns an empty report into a failure, and the Go services' hard-coded empty-body
//! failover message. No I/O; times are passed in.
//!
//! ```
//! use model8::chain::{ChainOutcome, ChainReport};
//!
//! let body = br#"{"channel":"cptm8.orchestratorm8.asmm8.done",
//!     "payload":{"status":"warning","message":"amass timed out"},
//!     "timestamp":"2025-11-19T10:00:00Z","source":"asmm8"}"#;
//! let report = ChainReport::decode("cptm8.orchestratorm8.asmm8.done", body).unwrap();
//! assert_eq!(report.stage, "asmm8");
//! assert_eq!(
//!     report.outcome(None),
//!     ChainOutcome::Completed { detail: Some("warning: amass timed out".into()) }
//! );
//! ```

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::envelope::{AmqpM8Message, EnvelopeError};

/// The exchange scanners publish their `Publisher` message on.
pub const CHAIN_EXCHANGE: &str = crate::routing::EXCHANGE;

/// The prefix of every report routing key: `cptm8.orchestratorm8.<stage>.<word>`.
pub const REPORT_KEY_PREFIX: &str = crate::routing::REPORT_KEY_PREFIX;

/// The last word of the report routing key this service tells operators to configure
/// (any word is accepted).
pub const REPORT_KEY_WORD: &str = "done";

/// The routing key of the Go services' hard-coded failover message (sent when a
/// consumer's channel closes), whatever service sends it.
pub const FAILOVER_ROUTING_KEY: &str = "cptm8.naabum8.get.scan";

/// The AMQP `app_id` of the failover message, whatever service sends it.
pub const FAILOVER_APP_ID: &str = "asmm8";

/// How far apart (either way) an empty report and an `app.error.*` notification from
/// the same source may arrive and still be one hard failure.
pub const ERROR_WINDOW: Duration = Duration::from_secs(5);

/// The kick-off routing key of a chain stage: `cptm8.<stage>.get.scan`.
pub fn kickoff_routing_key(stage: &str) -> String {
    crate::routing::stage_job_key(stage)
}

/// The report routing key a chain stage's scanner is configured with:
/// `cptm8.orchestratorm8.<stage>.done`.
pub fn report_routing_key(stage: &str) -> String {
    format!("{REPORT_KEY_PREFIX}{stage}.{REPORT_KEY_WORD}")
}

/// The exact line of the scanner's configuration (`ORCHESTRATORM8.<stage>.Publisher`)
/// that makes it report to the orchestrator.
pub fn publisher_line(stage: &str) -> String {
    format!(
        "Publisher: [\"{CHAIN_EXCHANGE}\", \"{}\", \"{stage}\"]",
        report_routing_key(stage)
    )
}

/// Splits `cptm8.orchestratorm8.<stage>.<word>` into stage and last word; `None` for any
/// other key (or an empty stage or word).
pub fn parse_report_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(REPORT_KEY_PREFIX)?;
    let (stage, word) = rest.rsplit_once('.')?;
    (!stage.is_empty() && !word.is_empty()).then_some((stage, word))
}

/// Whether a delivery is the Go services' hard-coded failover message: routing key
/// [`FAILOVER_ROUTING_KEY`], an empty body (not JSON) and `app_id` [`FAILOVER_APP_ID`].
/// It is never a kick-off a scanner chose to send, nor a stage's end.
pub fn is_failover(routing_key: &str, body: &[u8], app_id: Option<&str>) -> bool {
    routing_key == FAILOVER_ROUTING_KEY
        && body.iter().all(u8::is_ascii_whitespace)
        && app_id == Some(FAILOVER_APP_ID)
}

/// The `status` of a scanner's report payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScanStatus {
    /// The scan succeeded.
    Complete,
    /// The scan finished with errors (asmm8).
    Warning,
    /// A retry path that gave nothing (naabum8).
    Incomplete,
}

/// A scanner's report payload: `{"status": ..., "message": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanPayload {
    /// How the scan ended.
    pub status: ScanStatus,
    /// The scanner's own words.
    #[serde(default)]
    pub message: String,
}

/// What a chain report means for the stage's running attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainOutcome {
    /// The stage completed; `detail` is kept as the stage's detail.
    Completed {
        /// A warning's message, or why nothing was scanned.
        detail: Option<String>,
    },
    /// The attempt failed (it is retried while attempts are left).
    Failed {
        /// The scanner's message (its report's, or its `app.error.*` notification's).
        message: String,
    },
}

/// The detail of a report without payload and without a nearby error.
pub const NOTHING_TO_SCAN: &str = "nothing to scan";

/// Why a delivery on a report key is not a chain report.
#[derive(Debug, thiserror::Error)]
pub enum ChainReportError {
    /// The routing key is not `cptm8.orchestratorm8.<stage>.<word>`.
    #[error("routing key {0:?} is not of the form cptm8.orchestratorm8.<stage>.<word>")]
    RoutingKey(String),
    /// The body is not an envelope.
    #[error("{0}")]
    Envelope(#[from] EnvelopeError),
    /// The envelope's `source` is not the stage named by the routing key.
    #[error("report on {routing_key:?} comes from source {source_name:?}, expected {stage:?}")]
    Source {
        /// The delivery's routing key.
        routing_key: String,
        /// The stage the key names.
        stage: String,
        /// The envelope's source.
        source_name: String,
    },
    /// The payload is present but not `{"status": complete|warning|incomplete, "message"}`.
    #[error(
        "report payload of stage {stage:?} is not {{status: complete|warning|incomplete, message}}: {error}"
    )]
    Payload {
        /// The stage.
        stage: String,
        /// What serde said.
        error: String,
    },
}

/// A scanner's `Publisher` message, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// The stage (= the scanner, = the envelope's source).
    pub stage: String,
    /// The routing key's last word (`done` as configured; any word is accepted).
    pub word: String,
    /// The payload; `None` for an early exit.
    pub payload: Option<ScanPayload>,
}

impl ChainReport {
    /// Decodes a delivery on `cptm8.orchestratorm8.<stage>.<word>` whose envelope's
    /// `source` is `<stage>`.
    pub fn decode(routing_key: &str, body: &[u8]) -> Result<ChainReport, ChainReportError> {
        let (stage, word) = parse_report_key(routing_key)
            .ok_or_else(|| ChainReportError::RoutingKey(routing_key.to_owned()))?;
        let env = AmqpM8Message::<serde_json::Value>::from_slice(body)?;
        if env.source != stage {
            return Err(ChainReportError::Source {
                routing_key: routing_key.to_owned(),
                stage: stage.to_owned(),
                source_name: env.source,
            });
        }
        let payload = match env.payload {
            None => None,
            Some(v) => Some(serde_json::from_value::<ScanPayload>(v).map_err(|e| {
                ChainReportError::Payload {
                    stage: stage.to_owned(),
                    error: e.to_string(),
                }
            })?),
        };
        Ok(ChainReport {
            stage: stage.to_owned(),
            word: word.to_owned(),
            payload,
        })
    }

    /// Whether the outcome depends on an `app.error.*` notification from the same
    /// source (the report has no payload).
    pub fn needs_error_check(&self) -> bool {
        self.payload.is_none()
    }

    /// The outcome table of CONTRACT 3b. `error` is the message of an `app.error.*`
    /// notification from the same source within [`ERROR_WINDOW`], if one arrived; it
    /// only matters for a report without payload.
    pub fn outcome(&self, error: Option<&str>) -> ChainOutcome {
        outcome(self.payload.as_ref(), error)
    }
}

/// The outcome table of CONTRACT 3b:
///
/// | payload | `app.error.*` from the source in the window | outcome |
/// |---|---|---|
/// | `complete` | (ignored) | completed |
/// | `warning` | (ignored) | completed, the message kept as detail |
/// | `incomplete` | (ignored) | failed with the message |
/// | none | no | completed, detail "nothing to scan" |
/// | none | yes | failed with the notification's message |
pub fn outcome(payload: Option<&ScanPayload>, error: Option<&str>) -> ChainOutcome {
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    match payload {
        Some(ScanPayload {
            status: ScanStatus::Complete,
            message,
        }) => ChainOutcome::Completed {
            detail: non_empty(message),
        },
        Some(ScanPayload {
            status: ScanStatus::Warning,
            message,
        }) => ChainOutcome::Completed {
            detail: Some(format!("warning: {message}")),
        },
        Some(ScanPayload {
            status: ScanStatus::Incomplete,
            message,
        }) => ChainOutcome::Failed {
            message: if message.is_empty() {
                "incomplete".to_owned()
            } else {
                format!("incomplete: {message}")
            },
        },
        None => match error {
            Some(e) => ChainOutcome::Failed {
                message: e.to_owned(),
            },
            None => ChainOutcome::Completed {
                detail: Some(NOTHING_TO_SCAN.to_owned()),
            },
        },
    }
}

/// The recent `app.error.*` notifications per source, to decide whether an empty report
/// was a hard failure. Times are arrival times on the caller's clock.
#[derive(Debug, Clone)]
pub struct RecentErrors {
    window: chrono::Duration,
    by_source: HashMap<String, VecDeque<(DateTime<Utc>, String)>>,
}

impl RecentErrors {
    /// Remembers errors for `window` (either side of a report).
    pub fn new(window: Duration) -> Self {
        RecentErrors {
            window: chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX),
            by_source: HashMap::new(),
        }
    }

    /// The window.
    pub fn window(&self) -> Duration {
        self.window.to_std().unwrap_or(Duration::MAX)
    }

    /// Records an `app.error.*` notification from `source` that arrived `at`; forgets
    /// what is older than the window before `at`.
    pub fn record(&mut self, source: &str, at: DateTime<Utc>, message: impl Into<String>) {
        self.prune(at);
        self.by_source
            .entry(source.to_owned())
            .or_default()
            .push_back((at, message.into()));
    }

    /// The message of the error from `source` that arrived within the window of `at`
    /// (before or after), the closest first.
    pub fn find(&self, source: &str, at: DateTime<Utc>) -> Option<&str> {
        self.by_source
            .get(source)?
            .iter()
            .map(|(t, m)| ((*t - at).abs(), m))
            .filter(|(d, _)| *d <= self.window)
            .min_by_key(|(d, _)| *d)
            .map(|(_, m)| m.as_str())
    }

    /// Forgets errors that arrived more than the window before `now`.
    pub fn prune(&mut self, now: DateTime<Utc>) {
        let window = self.window;
        self.by_source.retain(|_, q| {
            while q.front().is_some_and(|(t, _)| now - *t > window) {
                q.pop_front();
            }
            !q.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(payload: &str) -> Vec<u8> {
        format!(
            r#"{{"channel":"cptm8.orchestratorm8.naabum8.done",{payload}"timestamp":"2025-11-19T10:00:00Z","source":"naabum8"}}"#
        )
        .into_bytes()
    }

    const KEY: &str = "cptm8.orchestratorm8.naabum8.done";

    #[test]
    fn golden_lines_and_keys() {
        assert_eq!(
            publisher_line("naabum8"),
            r#"Publisher: ["cptm8", "cptm8.orchestratorm8.naabum8.done", "naabum8"]"#
        );
        assert_eq!(kickoff_routing_key("num8"), "cptm8.num8.get.scan");
        assert_eq!(
            parse_report_key(&report_routing_key("a")),
            Some(("a", "done"))
        );
        assert_eq!(
            parse_report_key("cptm8.orchestratorm8.katanam8.anything"),
            Some(("katanam8", "anything"))
        );
        for bad in [
            "cptm8.orchestratorm8.x",
            "cptm8.orchestratorm8..done",
            "cptm8.orchestratorm8.x.",
            "cptm8.naabum8.get.scan",
        ] {
            assert_eq!(parse_report_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_outcome_table() {
        let cases: [(&str, Option<&str>, ChainOutcome); 8] = [
            (
                r#""payload":{"status":"complete","message":"12 hosts"},"#,
                Some("ignored"),
                ChainOutcome::Completed {
                    detail: Some("12 hosts".into()),
                },
            ),
            (
                r#""payload":{"status":"complete","message":""},"#,
                None,
                ChainOutcome::Completed { detail: None },
            ),
            (
                r#""payload":{"status":"warning","message":"subfinder failed"},"#,
                None,
                ChainOutcome::Completed {
                    detail: Some("warning: subfinder failed".into()),
                },
            ),
            (
                r#""payload":{"status":"incomplete","message":"no ports"},"#,
                None,
                ChainOutcome::Failed {
                    message: "incomplete: no ports".into(),
                },
            ),
            (
                r#""payload":{"status":"incomplete"},"#,
                None,
                ChainOutcome::Failed {
                    message: "incomplete".into(),
                },
            ),
            (
                "",
                None,
                ChainOutcome::Completed {
                    detail: Some(NOTHING_TO_SCAN.into()),
                },
            ),
            (
                r#""payload":null,"#,
                Some("database unreachable"),
                ChainOutcome::Failed {
                    message: "database unreachable".into(),
                },
            ),
            (
                "",
                Some("nmap not found"),
                ChainOutcome::Failed {
                    message: "nmap not found".into(),
                },
            ),
        ];
        for (payload, error, want) in cases {
            let r = ChainReport::decode(KEY, &report(payload)).unwrap();
            assert_eq!(r.needs_error_check(), r.payload.is_none());
            assert_eq!(r.outcome(error), want, "{payload} / {error:?}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_chain_report() {
        assert!(matches!(
            ChainReport::decode("cptm8.naabum8.get.scan", &report("")),
            Err(ChainReportError::RoutingKey(_))
        ));
        assert!(matches!(
            ChainReport::decode(KEY, b""),
            Err(ChainReportError::Envelope(_))
        ));
        let other = String::from_utf8(report(""))
            .unwrap()
            .replace("\"source\":\"naabum8\"", "\"source\":\"asmm8\"");
        let e = ChainReport::decode(KEY, other.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("asmm8"), "{e}");
        for p in [
            r#""payload":{"status":"done"},"#,
            r#""payload":"text","#,
            r#""payload":{"message":"x"},"#,
        ] {
            assert!(
                matches!(
                    ChainReport::decode(KEY, &report(p)),
                    Err(ChainReportError::Payload { .. })
                ),
                "{p}"
            );
        }
    }

    #[test]
    fn recognises_the_failover_message() {
        assert!(is_failover("cptm8.naabum8.get.scan", b"", Some("asmm8")));
        assert!(!is_failover("cptm8.naabum8.get.scan", b"", None));
        assert!(!is_failover("cptm8.naabum8.get.scan", b"{}", Some("asmm8")));
        assert!(!is_failover("cptm8.asmm8.get.scan", b"", Some("asmm8")));
    }

    #[test]
    fn errors_count_within_the_window_either_side() {
        let t0: DateTime<Utc> = "2025-11-19T10:00:00Z".parse().unwrap();
        let s = |n: i64| t0 + chrono::Duration::seconds(n);
        let mut e = RecentErrors::new(Duration::from_secs(5));
        e.record("naabum8", t0, "first");
        assert_eq!(e.find("naabum8", s(4)), Some("first"));
        assert_eq!(e.find("naabum8", s(-5)), Some("first"));
        assert_eq!(e.find("naabum8", s(6)), None);
        assert_eq!(e.find("asmm8", t0), None);
        e.record("naabum8", s(3), "second");
        assert_eq!(e.find("naabum8", s(3)), Some("second"));
        e.prune(s(20));
        assert_eq!(e.find("naabum8", s(3)), None);
        assert!(e.by_source.is_empty());
    }
}
