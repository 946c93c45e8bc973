//! Prometheus metrics of the orchestrator (`/metrics`), on `prometheus-client`.
//!
//! [`Metrics`] owns a [`Registry`] of typed handles the engine increments through
//! methods named after what happened (`metrics.stage_published("asmm8")`). Pool and
//! consumer gauges are not kept here: they are read from [`DbHealth::pool_stats`] and
//! [`Broker::health`] at scrape time and passed in as a [`ScrapeSnapshot`], so they are
//! never stale and a consumer that disappeared disappears from the output.
//!
//! Every name is prefixed `orchestratorm8_`. Label values are stage names, consumer
//! names, queue names and fixed outcome words: configuration identifiers, never secrets
//! or hosts. The output is the OpenMetrics text format ([`Metrics::CONTENT_TYPE`]),
//! which Prometheus negotiates and parses natively.
//!
//! [`DbHealth::pool_stats`]: db8::DbHealth::pool_stats
//! [`Broker::health`]: amqp8::Broker::health

use std::fmt;
use std::time::Duration;

use amqp8::BrokerHealth;
use model8::StageOutcome;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry, Unit};

use crate::role::Role;

/// The prefix of every metric name.
pub const PREFIX: &str = "orchestratorm8";

/// The label of a series by stage (also the observed ring's, by scanner).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StageLabel {
    stage: String,
}

/// The label of a series by outcome (also the outbox relay's).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabel {
    pub(crate) outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConsumerLabels {
    consumer: String,
    queue: String,
}

/// Health read at scrape time from the database pool and the broker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrapeSnapshot {
    /// Database pool statistics, when a database is attached.
    pub db_pool: Option<db8::PoolStats>,
    /// Broker connection, pool and consumer health, when a broker is attached.
    pub broker: Option<BrokerHealth>,
}

/// The orchestrator's metrics. Share it as `Arc<Metrics>`; every method takes `&self`
/// and is cheap (atomic increments).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    workflows_started: Counter,
    workflows_completed: Counter,
    workflows_failed: Counter,
    workflows_cancelled: Counter,
    workflows_pruned: Counter,
    stage_publishes: Family<StageLabel, Counter>,
    stage_publish_nacks: Family<StageLabel, Counter>,
    stage_publish_unroutable: Family<StageLabel, Counter>,
    stage_retries: Family<StageLabel, Counter>,
    stage_timeouts: Family<StageLabel, Counter>,
    stage_reports_unsolicited: Family<StageLabel, Counter>,
    results_consumed: Family<OutcomeLabel, Counter>,
    results_stale: Counter,
    messages_dead_lettered: Counter,
    bootstrap_kickoffs: Counter,
    config_reloads: Family<OutcomeLabel, Counter>,
    tick_duration: Histogram,
    leader: Gauge,
    http_requests: Family<HttpLabels, Counter>,
    /// The observed ring's metrics (bootstrap mode).
    pub(crate) ring: crate::ring_metrics::RingMetrics,
    /// The outbox relay's metrics.
    pub(crate) outbox: crate::outbox::OutboxMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The content type of [`Metrics::encode`]'s output.
    pub const CONTENT_TYPE: &'static str =
        "application/openmetrics-text; version=1.0.0; charset=utf-8";

    /// A registry with every metric at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let r = &mut registry;
        Metrics {
            ring: crate::ring_metrics::RingMetrics::registered(r),
            outbox: crate::outbox::OutboxMetrics::registered(r),
            workflows_started: registered(r, "workflows_started", "Workflows created"),
            workflows_pruned: registered(
                r,
                "workflows_pruned",
                "Finished workflows deleted by retention (Workflow.retention)",
            ),
            workflows_completed: registered(
                r,
                "workflows_completed",
                "Workflows whose every stage completed",
            ),
            workflows_failed: registered(
                r,
                "workflows_failed",
                "Workflows failed because a stage ran out of attempts",
            ),
            workflows_cancelled: registered(
                r,
                "workflows_cancelled",
                "Workflows cancelled by an operator",
            ),
            stage_publishes: registered(
                r,
                "stage_publishes",
                "Stage jobs published and confirmed by the broker",
            ),
            stage_publish_nacks: registered(
                r,
                "stage_publish_nacks",
                "Stage job publishes nacked by the broker (backpressure: a full queue with x-overflow reject-publish)",
            ),
            stage_publish_unroutable: registered(
                r,
                "stage_publish_unroutable",
                "Stage job publishes returned unroutable (no queue bound for the routing key)",
            ),
            stage_retries: registered(
                r,
                "stage_retries",
                "Stage attempts that failed or timed out and were scheduled again",
            ),
            stage_timeouts: registered(
                r,
                "stage_timeouts",
                "Stage attempts that passed their deadline without a result",
            ),
            stage_reports_unsolicited: registered(
                r,
                "stage_reports_unsolicited",
                "Reports of a chain stage that arrived while none of its attempts was running (acked, never applied)",
            ),
            results_consumed: registered(
                r,
                "results_consumed",
                "Stage results applied, by reported outcome",
            ),
            results_stale: registered(
                r,
                "results_stale",
                "Stage results that were duplicates or stale and changed nothing",
            ),
            messages_dead_lettered: registered(
                r,
                "messages_dead_lettered",
                "Messages sent to the dead-letter queue (malformed or redelivered too often)",
            ),
            bootstrap_kickoffs: registered(
                r,
                "bootstrap_kickoffs",
                "Bootstrap kick-off messages published (cptm8.asmm8.get.scan)",
            ),
            config_reloads: registered(
                r,
                "config_reloads",
                "Configuration file changes, by outcome (applied or rejected)",
            ),
            tick_duration: registered_seconds(
                r,
                "tick_duration",
                "Duration of one scheduler tick",
                // 1 ms .. ~33 s
                Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            ),
            leader: registered(
                r,
                "leader",
                "1 when this replica is the leader, 0 when standby",
            ),
            http_requests: registered(
                r,
                "http_requests",
                "HTTP requests answered, by route and status code",
            ),
            registry,
        }
    }

    /// Pre-creates the per-stage series at zero so that dashboards show every
    /// configured stage before its first event.
    pub fn declare_stages<'a>(&self, stages: impl IntoIterator<Item = &'a str>) {
        for stage in stages {
            let l = stage_label(stage);
            for f in [
                &self.stage_publishes,
                &self.stage_publish_nacks,
                &self.stage_publish_unroutable,
                &self.stage_retries,
                &self.stage_timeouts,
                &self.stage_reports_unsolicited,
            ] {
                drop(f.get_or_create(&l));
            }
        }
    }

    /// `count` workflows were created.
    pub fn workflows_started(&self, count: u64) {
        self.workflows_started.inc_by(count);
    }

    /// `count` finished workflows were deleted by retention.
    pub fn workflows_pruned(&self, count: u64) {
        self.workflows_pruned.inc_by(count);
    }

    /// A workflow completed (its last stage completed).
    pub fn workflow_completed(&self) {
        self.workflows_completed.inc();
    }

    /// A workflow failed (a stage ran out of attempts).
    pub fn workflow_failed(&self) {
        self.workflows_failed.inc();
    }

    /// A workflow was cancelled.
    pub fn workflow_cancelled(&self) {
        self.workflows_cancelled.inc();
    }

    /// A stage job of `stage` was published and confirmed.
    pub fn stage_published(&self, stage: &str) {
        self.stage_publishes
            .get_or_create(&stage_label(stage))
            .inc();
    }

    /// A stage job publish of `stage` was nacked (backpressure).
    pub fn stage_publish_nacked(&self, stage: &str) {
        self.stage_publish_nacks
            .get_or_create(&stage_label(stage))
            .inc();
    }

    /// A stage job publish of `stage` came back unroutable.
    pub fn stage_publish_unroutable(&self, stage: &str) {
        self.stage_publish_unroutable
            .get_or_create(&stage_label(stage))
            .inc();
    }

    /// A failed or timed-out attempt of `stage` was scheduled again.
    pub fn stage_retry_scheduled(&self, stage: &str) {
        self.stage_retries.get_or_create(&stage_label(stage)).inc();
    }

    /// An attempt of `stage` passed its deadline.
    pub fn stage_timed_out(&self, stage: &str) {
        self.stage_timeouts.get_or_create(&stage_label(stage)).inc();
    }

    /// A report of chain stage `stage` arrived while none of its attempts was running.
    pub fn stage_report_unsolicited(&self, stage: &str) {
        self.stage_reports_unsolicited
            .get_or_create(&stage_label(stage))
            .inc();
    }

    /// A stage result with this outcome was applied.
    pub fn result_consumed(&self, outcome: StageOutcome) {
        let outcome = outcome.as_str();
        self.results_consumed
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// A duplicate or stale stage result was acked without effect.
    pub fn result_stale(&self) {
        self.results_stale.inc();
    }

    /// A message went to the dead-letter queue.
    pub fn message_dead_lettered(&self) {
        self.messages_dead_lettered.inc();
    }

    /// A bootstrap kick-off message was published.
    pub fn bootstrap_kickoff_sent(&self) {
        self.bootstrap_kickoffs.inc();
    }

    /// A configuration change was applied (`true`) or rejected as invalid (`false`).
    pub fn config_reload(&self, applied: bool) {
        let outcome = if applied { "applied" } else { "rejected" };
        self.config_reloads
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// A scheduler tick took `elapsed`.
    pub fn tick_finished(&self, elapsed: Duration) {
        self.tick_duration.observe(elapsed.as_secs_f64());
    }

    /// The replica's role is now `role`.
    pub fn set_role(&self, role: Role) {
        self.leader.set(i64::from(role == Role::Leader));
    }

    /// An HTTP request on `route` (a fixed route name such as `workflows.list`, never
    /// the raw path) was answered with `status`.
    pub fn http_request(&self, route: &'static str, status: u16) {
        self.http_requests
            .get_or_create(&HttpLabels { route, status })
            .inc();
    }

    /// The whole exposition: the registry plus the scrape-time gauges of `snapshot`,
    /// in the OpenMetrics text format ([`Metrics::CONTENT_TYPE`]).
    pub fn encode(&self, snapshot: &ScrapeSnapshot) -> Result<String, fmt::Error> {
        let mut out = String::with_capacity(8 * 1024);
        encode_registry(&mut out, &self.registry)?;
        encode_registry(&mut out, &scrape_registry(snapshot))?;
        encode_eof(&mut out)?;
        Ok(out)
    }

    /// The value of one sample of an exposition `text` (what [`Metrics::encode`] writes):
    /// the line whose series, `name` or `name{labels}` exactly as written, is `series`.
    /// `None` when there is no such line or its value is not a number. An exact match,
    /// unlike a prefix or substring search (`…_total 5` would also find `…_total 50`):
    /// for tests and tools that read `/metrics`.
    pub fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .find(|(s, _)| *s == series)
            .and_then(|(_, v)| v.trim().parse().ok())
    }
}

/// A new `M`, registered in `r` as `name` with `help`.
pub(crate) fn registered<M: Metric + Clone + Default>(
    r: &mut Registry,
    name: &str,
    help: &str,
) -> M {
    let m = M::default();
    r.register(name, help, m.clone());
    m
}

/// `metric`, registered in `r` as `name` with `help`, in seconds.
pub(crate) fn registered_seconds<M: Metric + Clone>(
    r: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    r.register_with_unit(name, help, Unit::Seconds, metric.clone());
    metric
}

/// The label of `stage`.
pub(crate) fn stage_label(stage: &str) -> StageLabel {
    StageLabel {
        stage: stage.to_owned(),
    }
}

/// A throw-away registry holding this scrape's pool and consumer values.
fn scrape_registry(s: &ScrapeSnapshot) -> Registry {
    let mut r = Registry::with_prefix(PREFIX);
    let mut gauges: Vec<(&str, &str, i64)> = Vec::new();
    if let Some(db) = s.db_pool {
        gauges.extend([
            (
                "db_pool_connections",
                "Database connections open",
                i64::from(db.connections),
            ),
            (
                "db_pool_idle_connections",
                "Database connections open and idle",
                i64::from(db.idle),
            ),
        ]);
    }
    if let Some(b) = &s.broker {
        gauges.extend([
            (
                "amqp_connected",
                "1 when a RabbitMQ connection is open",
                i64::from(b.connected),
            ),
            (
                "amqp_blocked",
                "1 when RabbitMQ blocks publishers (memory or disk alarm)",
                i64::from(b.blocked),
            ),
            (
                "amqp_pool_connections",
                "RabbitMQ connections open",
                i64::from(b.pool.size),
            ),
            (
                "amqp_pool_idle_connections",
                "RabbitMQ connections open and idle",
                i64::from(b.pool.idle),
            ),
            (
                "amqp_pool_in_use_connections",
                "RabbitMQ connections open and in use",
                i64::from(b.pool.in_use),
            ),
        ]);
    }
    for (name, help, v) in gauges {
        registered::<Gauge>(&mut r, name, help).set(v);
    }
    if let Some(b) = &s.broker {
        for (name, help, v) in [
            (
                "amqp_pool_connections_created",
                "RabbitMQ connections created since start",
                b.pool.created,
            ),
            (
                "amqp_pool_connect_failures",
                "RabbitMQ connection attempts that failed since start",
                b.pool.failed,
            ),
        ] {
            registered::<Counter>(&mut r, name, help).inc_by(v);
        }
        let messages: Family<ConsumerLabels, Counter> = registered(
            &mut r,
            "consumer_messages",
            "Deliveries handled by each consumer",
        );
        let errors: Family<ConsumerLabels, Counter> = registered(
            &mut r,
            "consumer_errors",
            "Handler errors and panics of each consumer",
        );
        let restarts: Family<ConsumerLabels, Counter> = registered(
            &mut r,
            "consumer_restarts",
            "Times each consumer was subscribed again after the first",
        );
        let active: Family<ConsumerLabels, Gauge> = registered(
            &mut r,
            "consumer_active",
            "1 when the consumer is subscribed now",
        );
        for c in &b.consumers {
            let l = ConsumerLabels {
                consumer: c.name.clone(),
                queue: c.queue.clone(),
            };
            messages.get_or_create(&l).inc_by(c.messages);
            errors.get_or_create(&l).inc_by(c.errors);
            restarts.get_or_create(&l).inc_by(c.restarts);
            active.get_or_create(&l).set(i64::from(c.active));
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_matches_the_series_exactly() {
        let text = "# HELP a_total A.\n# TYPE a_total counter\na_total 50\n\
                    a_total{stage=\"a\"} 5\na_total{stage=\"ab\"} 7\nb 1.5\n# EOF\n";
        assert_eq!(Metrics::sample(text, "a_total"), Some(50.0));
        assert_eq!(Metrics::sample(text, "a_total{stage=\"a\"}"), Some(5.0));
        assert_eq!(Metrics::sample(text, "a_total{stage=\"ab\"}"), Some(7.0));
        assert_eq!(Metrics::sample(text, "b"), Some(1.5));
        assert_eq!(Metrics::sample(text, "a"), None, "a prefix is not a series");
        assert_eq!(Metrics::sample(text, "a_total{stage="), None);
        assert_eq!(Metrics::sample(text, "EOF"), None);
    }
    use amqp8::{ConsumerHealth, PoolStats};
    use chrono::Utc;

    fn line_value(text: &str, series: &str) -> Option<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ').map(str::to_owned))
    }

    #[test]
    fn counters_appear_with_prefix_labels_and_values() {
        let m = Metrics::new();
        m.workflows_started(3);
        m.workflow_completed();
        m.workflow_failed();
        m.workflow_cancelled();
        m.stage_published("asmm8");
        m.stage_published("asmm8");
        m.stage_publish_nacked("naabum8");
        m.stage_publish_unroutable("katanam8");
        m.stage_retry_scheduled("asmm8");
        m.stage_timed_out("asmm8");
        m.result_consumed(StageOutcome::Completed);
        m.result_consumed(StageOutcome::Failed);
        m.result_stale();
        m.message_dead_lettered();
        m.bootstrap_kickoff_sent();
        m.config_reload(false);
        m.tick_finished(Duration::from_millis(3));
        m.set_role(Role::Leader);
        m.http_request("health", 200);
        let text = m.encode(&ScrapeSnapshot::default()).unwrap();
        for (series, value) in [
            ("orchestratorm8_workflows_started_total", "3"),
            ("orchestratorm8_workflows_completed_total", "1"),
            ("orchestratorm8_workflows_failed_total", "1"),
            ("orchestratorm8_workflows_cancelled_total", "1"),
            ("orchestratorm8_stage_publishes_total{stage=\"asmm8\"}", "2"),
            (
                "orchestratorm8_stage_publish_nacks_total{stage=\"naabum8\"}",
                "1",
            ),
            (
                "orchestratorm8_stage_publish_unroutable_total{stage=\"katanam8\"}",
                "1",
            ),
            ("orchestratorm8_stage_retries_total{stage=\"asmm8\"}", "1"),
            ("orchestratorm8_stage_timeouts_total{stage=\"asmm8\"}", "1"),
            (
                "orchestratorm8_results_consumed_total{outcome=\"completed\"}",
                "1",
            ),
            (
                "orchestratorm8_results_consumed_total{outcome=\"failed\"}",
                "1",
            ),
            ("orchestratorm8_results_stale_total", "1"),
            ("orchestratorm8_messages_dead_lettered_total", "1"),
            ("orchestratorm8_bootstrap_kickoffs_total", "1"),
            (
                "orchestratorm8_config_reloads_total{outcome=\"rejected\"}",
                "1",
            ),
            ("orchestratorm8_tick_duration_seconds_count", "1"),
            ("orchestratorm8_leader", "1"),
            (
                "orchestratorm8_http_requests_total{route=\"health\",status=\"200\"}",
                "1",
            ),
        ] {
            assert_eq!(
                line_value(&text, series).as_deref(),
                Some(value),
                "{series} in\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1);
        m.set_role(Role::Standby);
        let text = m.encode(&ScrapeSnapshot::default()).unwrap();
        assert_eq!(
            line_value(&text, "orchestratorm8_leader").as_deref(),
            Some("0")
        );
    }

    #[test]
    fn declared_stages_show_zero() {
        let m = Metrics::new();
        m.declare_stages(["asmm8", "naabum8"]);
        let text = m.encode(&ScrapeSnapshot::default()).unwrap();
        assert_eq!(
            line_value(
                &text,
                "orchestratorm8_stage_publish_nacks_total{stage=\"naabum8\"}"
            )
            .as_deref(),
            Some("0")
        );
    }

    #[test]
    fn scrape_snapshot_gauges_are_current_each_scrape() {
        let m = Metrics::new();
        let consumer = |name: &str, active| ConsumerHealth {
            name: name.into(),
            queue: "qorchestratorm8".into(),
            autoack: false,
            active,
            last_seen: None,
            messages: 7,
            errors: 2,
            restarts: 1,
            created_at: Utc::now(),
        };
        let snap = ScrapeSnapshot {
            db_pool: Some(db8::PoolStats {
                connections: 4,
                idle: 3,
            }),
            broker: Some(BrokerHealth {
                connected: true,
                blocked: false,
                refused: None,
                consumers: vec![consumer("corchestratorm8", true)],
                pool: PoolStats {
                    size: 2,
                    idle: 1,
                    in_use: 1,
                    created: 5,
                    failed: 9,
                },
            }),
        };
        let text = m.encode(&snap).unwrap();
        let c = "{consumer=\"corchestratorm8\",queue=\"qorchestratorm8\"}";
        for (series, value) in [
            ("orchestratorm8_db_pool_connections".to_owned(), "4"),
            ("orchestratorm8_db_pool_idle_connections".to_owned(), "3"),
            ("orchestratorm8_amqp_connected".to_owned(), "1"),
            ("orchestratorm8_amqp_blocked".to_owned(), "0"),
            ("orchestratorm8_amqp_pool_connections".to_owned(), "2"),
            ("orchestratorm8_amqp_pool_idle_connections".to_owned(), "1"),
            (
                "orchestratorm8_amqp_pool_in_use_connections".to_owned(),
                "1",
            ),
            (
                "orchestratorm8_amqp_pool_connections_created_total".to_owned(),
                "5",
            ),
            (
                "orchestratorm8_amqp_pool_connect_failures_total".to_owned(),
                "9",
            ),
            (format!("orchestratorm8_consumer_messages_total{c}"), "7"),
            (format!("orchestratorm8_consumer_errors_total{c}"), "2"),
            (format!("orchestratorm8_consumer_restarts_total{c}"), "1"),
            (format!("orchestratorm8_consumer_active{c}"), "1"),
        ] {
            assert_eq!(
                line_value(&text, &series).as_deref(),
                Some(value),
                "{series} in\n{text}"
            );
        }
        // A consumer gone from the broker's health is gone from the next scrape.
        let text = m
            .encode(&ScrapeSnapshot {
                db_pool: None,
                broker: Some(BrokerHealth {
                    consumers: vec![],
                    ..snap.broker.clone().unwrap()
                }),
            })
            .unwrap();
        assert!(!text.contains("corchestratorm8"), "{text}");
        assert!(!text.contains("db_pool"), "{text}");
    }
}
