//! Managed mode driving the Go-scanner stand-in (tools/demo8/src/scanner.rs, in-process)
//! through `protocol: chain` stages: configuration, start-up and probes shared by
//! tests/e2e_chain.rs and tests/fault_chain.rs. Built on `common` and `e2e_support`.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use amqp8::{Broker, ConsumerHandle, OutgoingMessage, PublishOutcome};
use demo8::scanner::{FaultPlan, FaultRule, Publisher, RING, RunRecord, ScannerConfig, Scanners};

use crate::common::{eventually, http_get};
use crate::e2e_support::{Client, Collected, Env, Service};

/// The Go queue arguments of a scanner's own queue.
pub const GO_QUEUE_ARGS: &str = r#"{ "x-max-length": 1, "x-overflow": "reject-publish" }"#;

/// How long the tests wait for anything.
pub const LIMIT: Duration = Duration::from_secs(60);

/// The chain pipeline asmm8 → naabum8 → katanam8 → num8 per cycle, each stage with
/// `timeout` and `max_attempts`, short backoffs; `rescan_after` an hour.
pub fn chain_workflow(timeout: &str, max_attempts: u32) -> String {
    let mut yaml = String::from(
        "Scheduler:\n  mode: managed\n  interval: \"1h\"\nWorkflow:\n  granularity: per_cycle\n  \
         rescan_after: \"1h\"\n  stages:\n",
    );
    let mut prev: Option<&str> = None;
    for name in RING {
        yaml.push_str(&format!(
            "    - name: {name}\n      protocol: chain\n      depends_on: [{}]\n      timeout: \"{timeout}\"\n      \
             max_attempts: {max_attempts}\n      backoff: {{ initial: \"500ms\", max: \"1s\", multiplier: 2.0 }}\n",
            prev.unwrap_or("")
        ));
        prev = Some(name);
    }
    yaml
}

impl Env {
    /// The Go file's four scanner sections (their own queues with the Go arguments) and
    /// [`chain_workflow`].
    pub fn chain_config(&self, timeout: &str, max_attempts: u32) -> PathBuf {
        let sections: Vec<(&str, &str)> = RING.iter().map(|n| (*n, GO_QUEUE_ARGS)).collect();
        self.config(&sections, &chain_workflow(timeout, max_attempts))
    }

    /// Starts the four stand-in scanners in this process, each re-pointed at the
    /// orchestrator (`Publisher: ["cptm8", "cptm8.orchestratorm8.<svc>.done", "<svc>"]`,
    /// the one change per scanner), with `faults` (`SCANNER:KIND[:RUNS]`) and scans of
    /// `scan`.
    pub async fn scanners(
        &self,
        config: &std::path::Path,
        faults: &[&str],
        scan: Duration,
    ) -> Scanners {
        self.scanners_repointed(config, &RING, faults, scan).await
    }

    /// [`Env::scanners`] with only the scanners of `repointed` re-pointed; the others
    /// keep the ring's `Publisher` (the next scanner's kick-off).
    pub async fn scanners_repointed(
        &self,
        config: &std::path::Path,
        repointed: &[&str],
        faults: &[&str],
        scan: Duration,
    ) -> Scanners {
        let settings = config8::load(config)
            .expect("the test configuration")
            .settings;
        let store = db8::PgStore::connect(&settings.database)
            .await
            .expect("connect the scanners to PostgreSQL");
        let client = self.client().await;
        let scanners: Vec<(String, Publisher)> = RING
            .iter()
            .map(|n| {
                if !repointed.contains(n) {
                    return ((*n).to_owned(), Publisher::ring(n));
                }
                let line = format!("cptm8,{},{n}", model8::chain::report_routing_key(n));
                ((*n).to_owned(), line.parse().expect("a Publisher"))
            })
            .collect();
        let config = ScannerConfig {
            scan,
            slow: Duration::from_secs(30),
            faults: FaultPlan(
                faults
                    .iter()
                    .map(|f| f.parse::<FaultRule>().expect("a fault rule"))
                    .collect(),
            ),
            ..ScannerConfig::default()
        };
        let broker: Arc<dyn Broker> = client.broker.clone();
        Scanners::start(broker, Arc::new(store), &scanners, config)
            .await
            .expect("start the scanners")
    }
}

/// The scanners' runs as `(scanner, published)`, in the order they ended.
pub fn runs(s: &Scanners) -> Vec<(String, String)> {
    s.records()
        .into_iter()
        .map(|r: RunRecord| (r.scanner, r.published))
        .collect()
}

/// The scanner names of the runs, in order.
pub fn run_names(s: &Scanners) -> Vec<String> {
    runs(s).into_iter().map(|(n, _)| n).collect()
}

/// `/metrics` of the service.
pub async fn metrics(svc: &Service) -> String {
    http_get(svc.port, "/metrics")
        .await
        .expect("GET /metrics")
        .1
}

/// The value of the metric line starting with `series` (0 when absent).
pub async fn metric(svc: &Service, series: &str) -> f64 {
    metrics(svc)
        .await
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .map(|v| v.trim().parse().unwrap_or(0.0))
        })
        .unwrap_or(0.0)
}

/// The only workflow (a cycle), as the API shows it.
pub async fn the_cycle(svc: &Service) -> serde_json::Value {
    let w = svc.workflows().await;
    assert_eq!(w.len(), 1, "one cycle: {w:#?}");
    w[0].clone()
}

/// Waits until the only workflow has status `status`; returns it.
pub async fn cycle_is(svc: &Service, status: &str) -> serde_json::Value {
    eventually(&format!("the cycle {status}"), LIMIT, async || {
        let w = svc.workflows().await;
        w.len() == 1 && w[0]["status"] == status
    })
    .await;
    the_cycle(svc).await
}

/// `(stage, status, attempt)` of each stage of `w`.
pub fn stages(w: &serde_json::Value) -> Vec<(String, String, u64)> {
    w["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["status"].as_str().unwrap().to_owned(),
                s["attempt"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The notifications collected with routing key `key`: their messages.
pub fn notes(got: &Collected, key: &str) -> Vec<String> {
    got.lock()
        .unwrap()
        .iter()
        .filter(|m| m.routing_key == key)
        .map(|m| {
            model8::AmqpM8Message::<model8::Notification8>::from_slice(&m.body)
                .expect("a notification envelope")
                .payload
                .expect("a Notification8")
                .message
        })
        .collect()
}

/// A scanner's `Publisher` message sent by the test (no scanner runs it).
pub async fn fake_report(client: &Client, stage: &str, payload: serde_json::Value) {
    let key = model8::chain::report_routing_key(stage);
    let body = model8::AmqpM8Message::with_source(key.clone(), Some(payload), stage)
        .to_vec()
        .unwrap();
    let out = client
        .broker
        .publish(OutgoingMessage::new("cptm8", key, body))
        .await
        .unwrap();
    assert_eq!(out, PublishOutcome::Confirmed);
}

/// Keeps consumers alive for a test.
pub type Handles = Vec<ConsumerHandle>;

/// `orchestratorm8_<name>_total{stage="<stage>"}` of the service.
pub async fn stage_metric(svc: &Service, name: &str, stage: &str) -> f64 {
    metric(
        svc,
        &format!("orchestratorm8_{name}_total{{stage=\"{stage}\"}}"),
    )
    .await
}

/// Every stage of `w` completed at its first attempt.
pub fn all_completed_first_time(w: &serde_json::Value) {
    assert!(
        stages(w)
            .iter()
            .all(|(_, status, attempt)| status == "completed" && *attempt == 1),
        "{w:#}"
    );
}

/// The scanners ran each exactly once, in `RING` order, all complete.
pub fn each_once_in_order(scanners: &Scanners) {
    let want: Vec<(String, String)> = RING
        .iter()
        .map(|n| ((*n).to_owned(), "complete".to_owned()))
        .collect();
    assert_eq!(runs(scanners), want, "each scanner ran once, in order");
}

/// The cycle completed, every stage at its first attempt, each scanner kicked off
/// exactly once (one confirmed publish per stage).
pub async fn completed_with_one_kick_each(svc: &Service) {
    all_completed_first_time(&cycle_is(svc, "completed").await);
    for stage in RING {
        assert_eq!(
            stage_metric(svc, "stage_publishes", stage).await,
            1.0,
            "{stage} kicked off once"
        );
    }
}
