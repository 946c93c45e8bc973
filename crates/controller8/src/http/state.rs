//! What the HTTP handlers work with: plain data and trait objects, built by the binary.

use std::sync::Arc;
use std::time::Duration;

use amqp8::BrokerProbe;
use config8::HttpSettings;
use db8::{DbHealth, ReplicaRegistry};
use tokio::sync::watch;

use super::WorkflowApi;
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::role::RoleWatch;
use crate::scan_now::ScanNow;

/// Time limits of the HTTP surface, and its cap on open connections. The defaults are
/// what the service runs with (documented in `docs/HTTP.md`, "Limits"); tests shorten
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpTimeouts {
    /// Upper bound of one request's handling, body reading included (10 s). A request
    /// that takes longer gets 503 `timeout`.
    pub request: Duration,
    /// Upper bound of each `/ready` check (database ping, queue checks) (2 s), so that
    /// `/ready` answers quickly when a dependency hangs.
    pub check: Duration,
    /// After the shutdown signal, how long open connections may finish (5 s) before
    /// the server future returns anyway.
    pub drain: Duration,
    /// How long a client has to send a complete request head (request line and
    /// headers), counted from the moment the server waits for it: from the connection's
    /// acceptance, and on a keep-alive connection from the end of the previous
    /// response. So it is also the idle time after which a keep-alive connection is
    /// closed (10 s). A slow or stalled client (slowloris) is disconnected without an
    /// answer.
    pub header_read: Duration,
    /// How long a response write may make no progress (the client does not read)
    /// before the connection is closed (10 s).
    pub write: Duration,
    /// Longest life of a connection (120 s): after it, the connection is closed once
    /// its current request is answered (graceful, like at shutdown); if that takes
    /// longer than `request` + `write`, it is closed anyway. Bounds what a client that
    /// keeps a connection busy (pipelined requests whose responses it reads slowly)
    /// can hold.
    pub max_age: Duration,
    /// Connections served at once (256). Further connections wait in the listen
    /// backlog until one closes; every connection closes within `max_age` + `request`
    /// + `write` at most.
    pub max_connections: usize,
}

impl Default for HttpTimeouts {
    fn default() -> Self {
        HttpTimeouts {
            request: Duration::from_secs(10),
            check: Duration::from_secs(2),
            drain: Duration::from_secs(5),
            header_read: Duration::from_secs(10),
            write: Duration::from_secs(10),
            max_age: Duration::from_secs(120),
            max_connections: 256,
        }
    }
}

/// One configured stage as `GET /api/orchestratorm8/stages` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageInfo {
    /// Stage name (`Workflow.stages[].name`).
    pub name: String,
    /// The queue of the stage's service section, when the configuration has one.
    pub queue: Option<String>,
    /// The queue's `x-max-length` argument, when set (the Go services' backpressure).
    pub queue_max_length: Option<u32>,
    /// `max_in_flight` (0: no limit).
    pub max_in_flight: u32,
}

impl StageInfo {
    /// The stages of `settings`' `Workflow.stages`, in order.
    pub fn from_settings(settings: &config8::Settings) -> Vec<StageInfo> {
        settings
            .workflow
            .stages
            .iter()
            .map(|st| {
                let q = settings.orchestrator.queues.get(&st.name);
                StageInfo {
                    name: st.name.clone(),
                    queue: q.map(|q| q.queue.clone()),
                    queue_max_length: q
                        .and_then(|q| q.max_length())
                        .and_then(|n| u32::try_from(n).ok()),
                    max_in_flight: st.max_in_flight,
                }
            })
            .collect()
    }
}

/// Everything the HTTP handlers need. Cheap to share: it is wrapped in an `Arc` by
/// [`routes`](super::routes) and [`serve`](super::serve).
#[derive(Clone)]
pub struct HttpState {
    /// Workflow state for the API: reads and the operator's controls (any
    /// `db8::WorkflowRepository` is one; the orchestrator's is
    /// [`Controller::workflows`](crate::Controller::workflows)).
    pub workflows: Arc<dyn WorkflowApi>,
    /// "Scan now" (`POST /api/orchestratorm8/workflows`).
    pub scan: Arc<dyn ScanNow>,
    /// Database liveness (`/ready`) and pool statistics (`/metrics`).
    pub db: Arc<dyn DbHealth>,
    /// The replicas list (`GET /api/orchestratorm8/replicas`).
    pub replicas: Arc<dyn ReplicaRegistry>,
    /// Broker health (`/ready`, `/metrics`) and downstream queue counts (`/ready`):
    /// the probe part of the broker only.
    pub broker: Arc<dyn BrokerProbe>,
    /// Current leadership role.
    pub role: RoleWatch,
    /// The metrics registry served on `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Live HTTP settings (API token, body limit), read at every request so that a
    /// configuration change applies without restart. See [`follow_settings`].
    pub settings: watch::Receiver<HttpSettings>,
    /// Clock for the `now` of cancel, pause and resume.
    pub clock: Arc<dyn Clock>,
    /// Queues of the downstream services whose consumer counts `/ready` reports
    /// (informational: they never make the service unready).
    pub downstream_queues: Vec<String>,
    /// Managed mode: `/ready` then also checks the stage-result consumer.
    pub managed: bool,
    /// The configured stages (`GET /api/orchestratorm8/stages`), as at start.
    pub stages: Vec<StageInfo>,
    /// Time limits.
    pub timeouts: HttpTimeouts,
}

impl std::fmt::Debug for HttpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpState")
            .field("role", &*self.role.borrow())
            .field("downstream_queues", &self.downstream_queues)
            .field("managed", &self.managed)
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

/// Whether `settings` leave the workflow API open (no token, or an empty one). The
/// binary warns about it at start.
pub fn api_is_open(settings: &HttpSettings) -> bool {
    settings.api_token.as_ref().is_none_or(|t| t.is_empty())
}

/// A watch of the HTTP part of a larger settings watch: `project` is applied to the
/// current value now and to every new value; the result changes only when the
/// projection does. The forwarding task (spawned on the current Tokio runtime) ends
/// when `source`'s sender is dropped; the last value stays readable.
///
/// ```ignore
/// let http = follow_settings(settings_rx, |s: &Arc<Settings>| s.http.clone());
/// ```
///
/// # Panics
///
/// Outside a Tokio runtime (it spawns the forwarding task).
pub fn follow_settings<T, F>(
    mut source: watch::Receiver<T>,
    project: F,
) -> watch::Receiver<HttpSettings>
where
    T: Send + Sync + 'static,
    F: Fn(&T) -> HttpSettings + Send + 'static,
{
    let first = project(&source.borrow_and_update());
    let (tx, rx) = watch::channel(first);
    tokio::spawn(async move {
        while source.changed().await.is_ok() {
            let next = project(&source.borrow_and_update());
            // Only this task sends: no change can come in between.
            if *tx.borrow() != next {
                tx.send_replace(next);
            }
            if tx.is_closed() {
                break;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use config8::Secret;

    fn http(token: Option<&str>) -> HttpSettings {
        HttpSettings {
            api_token: token.map(Secret::new),
            body_limit: 1024,
        }
    }

    /// The limits `launch` serves with (it takes these defaults), pinned to what
    /// docs/HTTP.md and docs/BAD_INPUT.md §3 promise: the tests of the behaviour run with
    /// shorter ones, so only this test notices a changed default.
    #[test]
    fn the_served_limits_are_the_documented_defaults() {
        let t = HttpTimeouts::default();
        assert_eq!(t.request, Duration::from_secs(10));
        assert_eq!(t.check, Duration::from_secs(2));
        assert_eq!(t.drain, Duration::from_secs(5));
        assert_eq!(t.header_read, Duration::from_secs(10));
        assert_eq!(t.write, Duration::from_secs(10));
        assert_eq!(t.max_age, Duration::from_secs(120));
        assert_eq!(t.max_connections, 256);
        assert_eq!(super::super::server::MAX_HEAD_BYTES, 16 * 1024);
        assert_eq!(HttpSettings::default().body_limit, 64 * 1024);
        assert!(HttpSettings::default().api_token.is_none());
    }

    #[test]
    fn open_when_token_absent_or_empty() {
        assert!(api_is_open(&http(None)));
        assert!(api_is_open(&http(Some(""))));
        assert!(!api_is_open(&http(Some("t"))));
    }

    #[tokio::test]
    async fn follow_settings_forwards_changes() {
        let (tx, rx) = watch::channel((1u32, http(Some("a"))));
        let mut out = follow_settings(rx, |(_, h)| h.clone());
        assert_eq!(out.borrow().api_token, Some(Secret::new("a")));
        tx.send((2, http(Some("b")))).unwrap();
        tokio::time::timeout(Duration::from_secs(5), out.changed())
            .await
            .expect("change forwarded within 5 s")
            .unwrap();
        assert_eq!(out.borrow().api_token, Some(Secret::new("b")));
        drop(tx);
        // The forwarder ends with its source; the last value stays.
        tokio::time::timeout(Duration::from_secs(5), out.changed())
            .await
            .expect("forwarder ends within 5 s")
            .unwrap_err();
        assert_eq!(out.borrow().api_token, Some(Secret::new("b")));
    }
}
