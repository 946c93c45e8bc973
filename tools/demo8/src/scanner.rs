//! A faithful stand-in for the CPTM8 Go scanners (asmm8, naabum8, katanam8, num8) as
//! `../shared/CPTM8-PLATFORM.md` describes them on the wire, built on the public crates
//! only (`model8`, `amqp8`, `db8` to read the targets).
//!
//! What each [`Scanner`] does, like the Go service:
//!
//! - declares its own queue `q<svc>`: durable, `x-max-length: 1` (an integer),
//!   `x-overflow: reject-publish`, bound with `cptm8.<svc>.#` on `cptm8`
//!   ([`go_topology`]); consumes it with prefetch 1 and manual ack;
//! - ignores the message (payload, body, even an empty body): any delivery is a scan;
//! - scans every enabled `cptm8domain` row it reads from PostgreSQL
//!   ([`db8::DomainRepository`]);
//! - when the scan ends, publishes its [`Publisher`] message `[exchange, routing key,
//!   source]` (default: the next scanner's kick-off, the ring) with the outcome of
//!   the table "What a scanner publishes when it ends", then acks the kick-off.
//!
//! Failures come on demand, deterministically, from a [`FaultPlan`] (`--fail
//! naabum8:soft:1`: the first run of naabum8 fails softly); see [`Fault`].

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use amqp8::{
    ArgValue, Broker, ConsumeOptions, ConsumerHandle, Decision, ExchangeDecl, Handler,
    HandlerError, Message, OutgoingMessage, QueueDecl, Topology, handler_fn,
};
use db8::DomainRepository;
use model8::chain::{FAILOVER_APP_ID, FAILOVER_ROUTING_KEY, ScanPayload, ScanStatus};
use model8::{AmqpM8Message, Notification8, NotificationEvent, Severity};

use crate::report::{RetryPolicy, publish_confirmed};

/// The four platform scanners, in ring order.
pub const RING: [&str; 4] = ["asmm8", "naabum8", "katanam8", "num8"];

/// The exchange the scanners consume from and chain on.
pub const CPTM8_EXCHANGE: &str = "cptm8";

/// The exchange of the platform's notifications.
pub const NOTIFICATION_EXCHANGE: &str = "notification";

/// A scanner's `Publisher` entry: `[exchange, routing_key, source]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publisher {
    /// Exchange.
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
    /// The envelope's `source`.
    pub source: String,
}

impl Publisher {
    /// The out-of-the-box `Publisher` of `scanner`: the next scanner's kick-off in
    /// [`RING`] (num8 kicks asmm8); a scanner outside the ring kicks asmm8.
    pub fn ring(scanner: &str) -> Publisher {
        let next = RING
            .iter()
            .position(|s| *s == scanner)
            .map_or(RING[0], |i| RING[(i + 1) % RING.len()]);
        Publisher {
            exchange: CPTM8_EXCHANGE.into(),
            routing_key: model8::routing::stage_job_key(next),
            source: scanner.into(),
        }
    }
}

impl FromStr for Publisher {
    type Err = String;

    /// `EXCHANGE,ROUTING_KEY,SOURCE`, as the Go configuration's three-element list.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        match parts.as_slice() {
            [e, k, src] if !e.is_empty() && !k.is_empty() && !src.is_empty() => Ok(Publisher {
                exchange: (*e).into(),
                routing_key: (*k).into(),
                source: (*src).into(),
            }),
            _ => Err(format!(
                "publisher {s:?}: expected EXCHANGE,ROUTING_KEY,SOURCE, e.g. cptm8,cptm8.orchestratorm8.asmm8.done,asmm8"
            )),
        }
    }
}

/// How one run of a scanner goes wrong (or differently), on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// Soft failure (naabum8's httpx, nmap parsing, database update): nothing published,
    /// only an `app.warning.normal` notification; the kick-off is acked.
    Soft,
    /// A panic (naabum8, num8): nothing at all is published.
    Silent,
    /// Hard error (database, tool set-up, engine start): an `app.error.<severity>`
    /// notification, then the `Publisher` message with no payload.
    Hard,
    /// Finished with errors: payload status `warning`.
    Warning,
    /// naabum8's retry path that gave nothing: payload status `incomplete`.
    Incomplete,
    /// No targets: the `Publisher` message with no payload (as with no enabled domain).
    Empty,
    /// The scan takes the slow duration instead of the normal one, then completes.
    Slow,
    /// The consumer's channel closes mid-scan: the hard-coded failover message
    /// (`cptm8.naabum8.get.scan`, empty body, `app_id: asmm8`) goes out and the
    /// kick-off returns to the queue (redelivered: the next run).
    Failover,
    /// The Go ack problem: the scan completes and publishes, but the kick-off stays
    /// unacked (the final ack is refused) for the unacked duration (standing in for the
    /// broker's consumer timeout), then returns to the queue and is redelivered.
    Unacked,
}

impl Fault {
    /// Every fault with its flag name.
    pub const ALL: [(&'static str, Fault); 9] = [
        ("soft", Fault::Soft),
        ("silent", Fault::Silent),
        ("hard", Fault::Hard),
        ("warning", Fault::Warning),
        ("incomplete", Fault::Incomplete),
        ("empty", Fault::Empty),
        ("slow", Fault::Slow),
        ("failover", Fault::Failover),
        ("unacked", Fault::Unacked),
    ];
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = Fault::ALL
            .iter()
            .find(|(_, x)| x == self)
            .map_or("?", |(n, _)| n);
        f.write_str(name)
    }
}

/// Which runs of a scanner a fault hits: `N`, `N-M` or every run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runs {
    /// Every run.
    All,
    /// Runs `from..=to` (1 is the first run; a redelivery is a run).
    Range(u64, u64),
}

impl Runs {
    fn contains(&self, run: u64) -> bool {
        match *self {
            Runs::All => true,
            Runs::Range(a, b) => (a..=b).contains(&run),
        }
    }
}

/// One `--fail SCANNER:KIND[:RUNS]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRule {
    /// Scanner name.
    pub scanner: String,
    /// What goes wrong.
    pub fault: Fault,
    /// Which runs.
    pub runs: Runs,
}

impl FromStr for FaultRule {
    type Err = String;

    /// `SCANNER:KIND[:RUNS]` where `RUNS` is `N`, `N-M` or `*` (default `*`), e.g.
    /// `naabum8:soft:1` (the first run of naabum8 fails softly).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let kinds = Fault::ALL.map(|(n, _)| n).join("|");
        let bad = |why: &str| format!("--fail {s:?}: {why} (expected SCANNER:{kinds}[:N|N-M|*])");
        let parts: Vec<&str> = s.split(':').collect();
        let (scanner, kind, runs) = match parts.as_slice() {
            [sc, k] => (*sc, *k, "*"),
            [sc, k, r] => (*sc, *k, *r),
            _ => return Err(bad("wrong number of parts")),
        };
        if scanner.is_empty() || scanner.contains(['.', '#', '*', ' ']) {
            return Err(bad("bad scanner name"));
        }
        let fault = Fault::ALL
            .iter()
            .find(|(n, _)| *n == kind)
            .map(|(_, f)| *f)
            .ok_or_else(|| bad("unknown kind"))?;
        let num = |x: &str| {
            x.parse::<u64>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| bad("runs are counted from 1"))
        };
        let runs = match runs.split_once('-') {
            _ if runs == "*" => Runs::All,
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(bad("empty run range"));
                }
                Runs::Range(a, b)
            }
            None => {
                let n = num(runs)?;
                Runs::Range(n, n)
            }
        };
        Ok(FaultRule {
            scanner: scanner.into(),
            fault,
            runs,
        })
    }
}

/// Every fault rule; the first rule matching a run decides it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultPlan(pub Vec<FaultRule>);

impl FaultPlan {
    /// The fault of run `run` (1 for the first) of `scanner`, if any.
    pub fn fault(&self, scanner: &str, run: u64) -> Option<Fault> {
        self.0
            .iter()
            .find(|r| r.scanner == scanner && r.runs.contains(run))
            .map(|r| r.fault)
    }
}

/// How the scanners run.
#[derive(Debug, Clone)]
pub struct ScannerConfig {
    /// A normal scan's duration.
    pub scan: Duration,
    /// A [`Fault::Slow`] scan's duration.
    pub slow: Duration,
    /// How long a [`Fault::Unacked`] kick-off stays unacked before it returns to the
    /// queue (the broker's consumer timeout, 30 minutes by default, in the real case).
    pub unacked: Duration,
    /// Severity of a hard error's `app.error.<severity>` notification.
    pub severity: Severity,
    /// Failures on demand.
    pub faults: FaultPlan,
    /// How long to keep publishing the `Publisher` message while the next queue is full
    /// (`reject-publish`).
    pub retry: RetryPolicy,
    /// Drop copies: a kick-off whose AMQP `message_id` matches one this scanner already
    /// scanned to the end is acked without a scan (docs/AMQP.md, "Message identity").
    /// Off by default: the Go scanners scan every delivery (a redelivered kick-off is
    /// scanned again), and the stand-ins stay faithful. Copies are counted either way
    /// ([`Scanner::copies`]).
    pub drop_copies: bool,
}

impl Default for ScannerConfig {
    /// 500 ms scans, 10 s slow scans, 3 s unacked, severity `high`, no faults.
    fn default() -> Self {
        ScannerConfig {
            scan: Duration::from_millis(500),
            slow: Duration::from_secs(10),
            unacked: Duration::from_secs(3),
            severity: Severity::High,
            faults: FaultPlan::default(),
            retry: RetryPolicy {
                give_up_after: Duration::from_secs(300),
                ..RetryPolicy::default()
            },
            drop_copies: false,
        }
    }
}

/// How a run ended, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    /// Scanner.
    pub scanner: String,
    /// Run number (1 for the first).
    pub run: u64,
    /// Whether the kick-off was a redelivery.
    pub redelivered: bool,
    /// The injected fault, if any.
    pub fault: Option<Fault>,
    /// Enabled targets found (`None`: the database failed).
    pub targets: Option<usize>,
    /// The `status` published (`complete`, `warning`, `incomplete`), `"none"` for a
    /// message without payload, `"-"` when nothing was published.
    pub published: String,
}

/// One Go-style scanner.
pub struct Scanner {
    name: String,
    publisher: Publisher,
    broker: Arc<dyn Broker>,
    targets: Arc<dyn DomainRepository>,
    config: Arc<ScannerConfig>,
    runs: AtomicU64,
    records: Arc<Mutex<Vec<RunRecord>>>,
    /// The `message_id`s of kick-offs scanned to the end, bounded.
    scanned: Mutex<crate::dedup::SeenIds>,
    copies: AtomicU64,
}

impl fmt::Debug for Scanner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scanner")
            .field("name", &self.name)
            .field("publisher", &self.publisher)
            .finish_non_exhaustive()
    }
}

/// The queue the Go service `scanner` declares: `q<scanner>`, durable,
/// `x-max-length: 1` (integer), `x-overflow: reject-publish`.
pub fn go_queue(scanner: &str) -> QueueDecl {
    let mut arguments = BTreeMap::new();
    arguments.insert("x-max-length".to_owned(), ArgValue::Int(1));
    arguments.insert(
        "x-overflow".to_owned(),
        ArgValue::Str("reject-publish".into()),
    );
    QueueDecl {
        name: model8::routing::service_queue(scanner),
        arguments,
    }
}

/// What the Go services declare: the `cptm8` and `notification` topic exchanges and,
/// per scanner, its [`go_queue`] bound with `cptm8.<scanner>.#` on `cptm8`.
pub fn go_topology(scanners: &[String]) -> Topology {
    let mut t = Topology {
        exchanges: [CPTM8_EXCHANGE, NOTIFICATION_EXCHANGE]
            .map(|name| ExchangeDecl {
                name: name.into(),
                kind: "topic".into(),
            })
            .to_vec(),
        ..Topology::default()
    };
    for s in scanners {
        let q = go_queue(s);
        t.bindings.push(amqp8::BindingDecl {
            exchange: CPTM8_EXCHANGE.into(),
            queue: q.name.clone(),
            routing_key: model8::routing::service_binding(s),
        });
        t.queues.push(q);
    }
    t
}

/// The consumer of a Go service: prefetch 1, manual ack, no dead-letter queue.
pub fn go_consume(scanner: &str) -> ConsumeOptions {
    let queue = model8::routing::service_queue(scanner);
    ConsumeOptions {
        // The Go services have no redelivery limit.
        max_redeliveries: u32::MAX,
        ..ConsumeOptions::new(queue, format!("c{scanner}"), 1)
    }
}

impl Scanner {
    /// Scanner `name` publishing `publisher` when a scan ends, reading its targets from
    /// `targets`; its runs are appended to `records`.
    pub fn new(
        name: &str,
        publisher: Publisher,
        broker: Arc<dyn Broker>,
        targets: Arc<dyn DomainRepository>,
        config: Arc<ScannerConfig>,
        records: Arc<Mutex<Vec<RunRecord>>>,
    ) -> Arc<Scanner> {
        Arc::new(Scanner {
            name: name.into(),
            publisher,
            broker,
            targets,
            config,
            runs: AtomicU64::new(0),
            records,
            scanned: Mutex::new(crate::dedup::SeenIds::default()),
            copies: AtomicU64::new(0),
        })
    }

    /// This scanner as the handler [`amqp8::Broker::consume`] takes.
    pub fn handler(self: &Arc<Self>) -> Arc<dyn Handler> {
        let me = Arc::clone(self);
        Arc::new(handler_fn(move |m: Message| {
            let me = Arc::clone(&me);
            async move { me.handle(m).await }
        }))
    }

    /// Runs started so far.
    pub fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    /// Kick-offs received again after a scan of the same `message_id` ended (copies:
    /// a redelivery, a re-published kick-off).
    pub fn copies(&self) -> u64 {
        self.copies.load(Ordering::Relaxed)
    }

    /// Handles one kick-off: whatever the body, a full scan (a copy of one already
    /// scanned is counted, and dropped with [`ScannerConfig::drop_copies`]).
    pub async fn handle(&self, m: Message) -> Result<Decision, HandlerError> {
        let id = m.message_id.clone().filter(|id| !id.is_empty());
        if let Some(id) = &id
            && self.scanned.lock().contains(id)
        {
            self.copies.fetch_add(1, Ordering::Relaxed);
            if self.config.drop_copies {
                tracing::info!(scanner = %self.name, message_id = %id, "copy of a kick-off already scanned: acked without a scan");
                return Ok(Decision::Ack);
            }
        }
        let decision = self.scan(m).await;
        if let (Some(id), Ok(Decision::Ack)) = (id, &decision) {
            self.scanned.lock().insert(id);
        }
        decision
    }

    async fn scan(&self, m: Message) -> Result<Decision, HandlerError> {
        let run = self.runs.fetch_add(1, Ordering::Relaxed) + 1;
        let fault = self.config.faults.fault(&self.name, run);
        tracing::info!(scanner = %self.name, run, routing_key = %m.routing_key,
            redelivered = m.redelivered, fault = ?fault, "scan started (payload ignored)");
        let mut record = RunRecord {
            scanner: self.name.clone(),
            run,
            redelivered: m.redelivered,
            fault,
            targets: None,
            published: "-".into(),
        };
        if fault == Some(Fault::Failover) {
            let mut failover =
                OutgoingMessage::new(CPTM8_EXCHANGE, FAILOVER_ROUTING_KEY, Vec::new());
            failover.app_id = Some(FAILOVER_APP_ID.into());
            self.publish(failover).await?;
            record.published = "failover".into();
            self.record(record);
            tracing::warn!(scanner = %self.name, run, "consumer channel closed: failover message sent, kick-off returned");
            return Ok(Decision::Requeue);
        }
        let targets = match self.targets.list().await {
            Ok(all) => Ok(all.iter().filter(|d| d.enabled).count()),
            Err(e) => Err(e.to_string()),
        };
        record.targets = targets.as_ref().ok().copied();
        // The ack problem happens whatever the scan found.
        let ack_refused = fault == Some(Fault::Unacked);
        let fault = match (&targets, fault) {
            (Err(_), _) => Some(Fault::Hard),
            (Ok(_), f @ Some(Fault::Soft | Fault::Silent | Fault::Hard)) => f,
            // No targets: an early exit with no payload.
            (Ok(0), _) => Some(Fault::Empty),
            (_, f) => f,
        };
        match fault {
            Some(Fault::Hard | Fault::Empty) => {}
            Some(Fault::Slow) => tokio::time::sleep(self.config.slow).await,
            _ => tokio::time::sleep(self.config.scan).await,
        }
        let n = targets.as_ref().copied().unwrap_or(0);
        let status = |status: ScanStatus, message: String| Some(ScanPayload { status, message });
        // What goes out through the Publisher, if anything (`Some(None)`: no payload).
        let chain: Option<Option<ScanPayload>> = match fault {
            Some(Fault::Soft) => {
                self.notify(
                    NotificationEvent::SystemWarning,
                    Severity::Normal,
                    format!("{}: httpx run failed, scan abandoned", self.name),
                )
                .await?;
                None
            }
            Some(Fault::Silent) => {
                tracing::warn!(scanner = %self.name, run, "panic: nothing published");
                None
            }
            Some(Fault::Hard) => {
                let why = match &targets {
                    Err(e) => format!("{}: database error: {e}", self.name),
                    Ok(_) => format!("{}: tool set-up failed", self.name),
                };
                self.notify(NotificationEvent::SystemError, self.config.severity, why)
                    .await?;
                Some(None)
            }
            Some(Fault::Empty) => Some(None),
            Some(Fault::Warning) => Some(status(
                ScanStatus::Warning,
                format!("{} finished with errors on {n} targets", self.name),
            )),
            Some(Fault::Incomplete) => Some(status(
                ScanStatus::Incomplete,
                format!("{}: the retry gave no result", self.name),
            )),
            None | Some(Fault::Slow) | Some(Fault::Unacked) | Some(Fault::Failover) => {
                Some(status(
                    ScanStatus::Complete,
                    format!("{} scanned {n} targets", self.name),
                ))
            }
        };
        if let Some(payload) = &chain {
            record.published = payload.as_ref().map_or("none".into(), |p| {
                serde_json::to_value(p.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            });
        }
        tracing::info!(scanner = %self.name, run, published = %record.published, "scan ended");
        // Recorded before the publish: a publish refused by the next scanner's full queue
        // (and retried) has reached every other bound queue already.
        self.record(record);
        if let Some(payload) = chain {
            self.chain(payload).await?;
        }
        if ack_refused {
            tracing::warn!(scanner = %self.name, run, after = ?self.config.unacked,
                "final ack refused: the kick-off stays unacked, then returns to the queue");
            tokio::time::sleep(self.config.unacked).await;
            return Ok(Decision::Requeue);
        }
        Ok(Decision::Ack)
    }

    fn record(&self, r: RunRecord) {
        self.records.lock().push(r);
    }

    /// Publishes the `Publisher` message with `payload`.
    async fn chain(&self, payload: Option<ScanPayload>) -> Result<(), HandlerError> {
        let p = &self.publisher;
        let body = AmqpM8Message::with_source(&p.routing_key, payload, &p.source)
            .to_vec()
            .map_err(|e| HandlerError(e.to_string()))?;
        self.publish(OutgoingMessage::new(&p.exchange, &p.routing_key, body))
            .await
    }

    /// Publishes a platform notification from this scanner.
    async fn notify(
        &self,
        kind: NotificationEvent,
        severity: Severity,
        message: String,
    ) -> Result<(), HandlerError> {
        let n = Notification8::platform(kind, severity, message);
        let key = n.platform_routing_key();
        let body = AmqpM8Message::with_source(&key, Some(n), &self.name)
            .to_vec()
            .map_err(|e| HandlerError(e.to_string()))?;
        self.publish(OutgoingMessage::new(NOTIFICATION_EXCHANGE, key, body))
            .await
    }

    async fn publish(&self, mut m: OutgoingMessage) -> Result<(), HandlerError> {
        // A Go publish is not mandatory: nobody bound is no error.
        m.mandatory = false;
        let key = m.routing_key.clone();
        match publish_confirmed(self.broker.as_ref(), m, self.config.retry).await {
            Ok(()) => {
                tracing::info!(scanner = %self.name, routing_key = %key, "published");
                Ok(())
            }
            Err(e) => {
                tracing::error!(scanner = %self.name, error = %e, "publish failed");
                Err(HandlerError(e.to_string()))
            }
        }
    }
}

/// Scanners running in this process.
pub struct Scanners {
    scanners: Vec<Arc<Scanner>>,
    consumers: Vec<ConsumerHandle>,
    records: Arc<Mutex<Vec<RunRecord>>>,
}

impl fmt::Debug for Scanners {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scanners")
            .field("scanners", &self.scanners)
            .finish_non_exhaustive()
    }
}

impl Scanners {
    /// Declares [`go_topology`] and starts one consumer per `(name, publisher)`.
    pub async fn start(
        broker: Arc<dyn Broker>,
        targets: Arc<dyn DomainRepository>,
        scanners: &[(String, Publisher)],
        config: ScannerConfig,
    ) -> Result<Scanners, amqp8::AmqpError> {
        let names: Vec<String> = scanners.iter().map(|(n, _)| n.clone()).collect();
        broker.declare(&go_topology(&names)).await?;
        let config = Arc::new(config);
        let records = Arc::new(Mutex::new(Vec::new()));
        let mut out = Scanners {
            scanners: Vec::new(),
            consumers: Vec::new(),
            records: Arc::clone(&records),
        };
        for (name, publisher) in scanners {
            let s = Scanner::new(
                name,
                publisher.clone(),
                Arc::clone(&broker),
                Arc::clone(&targets),
                Arc::clone(&config),
                Arc::clone(&records),
            );
            out.consumers
                .push(broker.consume(go_consume(name), s.handler()).await?);
            tracing::info!(scanner = %name, publisher = ?publisher, "Go-style scanner consuming");
            out.scanners.push(s);
        }
        Ok(out)
    }

    /// Every run so far, in the order they ended.
    pub fn records(&self) -> Vec<RunRecord> {
        self.records.lock().clone()
    }

    /// Stops consuming: in-flight scans may finish within `grace`, the others return
    /// to their queue. Returns every run recorded.
    pub async fn stop(self, grace: Duration) -> Vec<RunRecord> {
        for c in &self.consumers {
            c.stop(grace).await;
        }
        self.records()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn copies_of_a_kick_off_are_counted_and_dropped_on_request() {
        let broker = amqp8::memory::MemoryBroker::new();
        broker
            .declare(&go_topology(&["asmm8".into(), "naabum8".into()]))
            .await
            .unwrap();
        let store = db8::MemoryStore::new();
        store
            .insert(&model8::PostDomain8 {
                name: "example.com".into(),
                companyname: "ACME".into(),
                enabled: true,
            })
            .await
            .unwrap();
        let config = ScannerConfig {
            scan: Duration::ZERO,
            drop_copies: true,
            ..ScannerConfig::default()
        };
        let s = Scanner::new(
            "asmm8",
            Publisher::ring("asmm8"),
            broker.as_dyn(),
            Arc::new(store),
            Arc::new(config),
            Arc::default(),
        );
        let kick = |id: &str| Message {
            body: Vec::new(),
            exchange: CPTM8_EXCHANGE.into(),
            routing_key: "cptm8.asmm8.get.scan".into(),
            redelivered: false,
            delivery_count: None,
            headers: BTreeMap::new(),
            app_id: None,
            message_id: Some(id.into()),
        };
        assert_eq!(s.handle(kick("kickoff:1")).await.unwrap(), Decision::Ack);
        assert_eq!(broker.take("qnaabum8").len(), 1, "scanned and chained");
        // A copy (same message_id): counted, acked, not scanned again.
        assert_eq!(s.handle(kick("kickoff:1")).await.unwrap(), Decision::Ack);
        assert_eq!((s.runs(), s.copies()), (1, 1));
        assert!(broker.take("qnaabum8").is_empty());
        // Another kick-off is scanned.
        s.handle(kick("kickoff:2")).await.unwrap();
        assert_eq!((s.runs(), s.copies()), (2, 1));
    }

    #[test]
    fn fault_rules_parse() {
        let r: FaultRule = "naabum8:soft:1".parse().unwrap();
        assert_eq!(
            r,
            FaultRule {
                scanner: "naabum8".into(),
                fault: Fault::Soft,
                runs: Runs::Range(1, 1)
            }
        );
        let r: FaultRule = "num8:hard:2-3".parse().unwrap();
        assert_eq!(r.runs, Runs::Range(2, 3));
        let r: FaultRule = "asmm8:slow".parse().unwrap();
        assert_eq!((r.fault, r.runs), (Fault::Slow, Runs::All));
        for bad in [
            "naabum8",
            "naabum8:boom:1",
            "naabum8:soft:0",
            "naabum8:soft:3-1",
            "a.b:soft",
            "x:soft:1:2",
        ] {
            assert!(bad.parse::<FaultRule>().is_err(), "{bad}");
        }
        let plan = FaultPlan(vec![
            "naabum8:soft:1".parse().unwrap(),
            "naabum8:hard:2-3".parse().unwrap(),
        ]);
        assert_eq!(plan.fault("naabum8", 1), Some(Fault::Soft));
        assert_eq!(plan.fault("naabum8", 3), Some(Fault::Hard));
        assert_eq!(plan.fault("naabum8", 4), None);
        assert_eq!(plan.fault("asmm8", 1), None);
        for (name, f) in Fault::ALL {
            assert_eq!(f.to_string(), name);
        }
    }

    #[test]
    fn the_ring_and_publisher_lines() {
        let next: Vec<String> = RING
            .iter()
            .map(|s| Publisher::ring(s).routing_key)
            .collect();
        assert_eq!(
            next,
            [
                "cptm8.naabum8.get.scan",
                "cptm8.katanam8.get.scan",
                "cptm8.num8.get.scan",
                "cptm8.asmm8.get.scan"
            ]
        );
        let p: Publisher = "cptm8, cptm8.orchestratorm8.asmm8.done, asmm8"
            .parse()
            .unwrap();
        assert_eq!(p.routing_key, "cptm8.orchestratorm8.asmm8.done");
        assert!("cptm8,x".parse::<Publisher>().is_err());
        let t = go_topology(&["naabum8".into()]);
        assert_eq!(t.queues[0].name, "qnaabum8");
        assert_eq!(t.queues[0].arguments["x-max-length"], ArgValue::Int(1));
        assert_eq!(t.bindings[0].routing_key, "cptm8.naabum8.#");
    }
}
