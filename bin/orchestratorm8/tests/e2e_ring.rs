//! End-to-end: bootstrap mode follows the scanners' own ring (CONTRACT 3c, issue 14)
//! with the real binary, PostgreSQL, RabbitMQ and the Go-scanner stand-ins
//! (`demo8::scanner`, run in this process) in their ring configuration.

mod common;
mod e2e_support;

use std::sync::Arc;
use std::time::Duration;

use common::{eventually, http_get};
use demo8::scanner::{FaultPlan, FaultRule, Publisher, RING, ScannerConfig, Scanners};
use e2e_support::{Env, Service};
use serde_json::Value;

const GO_QUEUE_ARGS: &str = "{ \"x-max-length\": 1, \"x-overflow\": \"reject-publish\" }";

/// The Go file's shape with the four scanners' sections and `extra` sections.
fn ring_config(env: &Env, extra: &str) -> std::path::PathBuf {
    let sections: Vec<(&str, &str)> = RING.iter().map(|s| (*s, GO_QUEUE_ARGS)).collect();
    env.config(&sections, extra)
}

/// `Workflow.stages`: the ring with `timeout` each (naabum8: `naabum8_timeout`).
fn stages(timeout: &str, naabum8_timeout: &str) -> String {
    let mut y = String::from("Workflow:\n  stages:\n");
    for s in RING {
        let t = if s == "naabum8" {
            naabum8_timeout
        } else {
            timeout
        };
        y.push_str(&format!("    - {{ name: {s}, timeout: \"{t}\" }}\n"));
    }
    y
}

/// The stand-ins on this test's virtual host and database, with `faults`; `publishers`
/// replaces some scanners' `Publisher`.
async fn scanners(env: &Env, faults: &[&str], publishers: &[(&str, &str)]) -> Scanners {
    let client = env.client().await;
    // The configuration the test wrote (rewriting it would be a live change).
    let settings = config8::load(&env.dir.path().join("configuration.yaml"))
        .unwrap()
        .settings;
    let store = db8::PgStore::connect(&settings.database).await.unwrap();
    let list: Vec<(String, Publisher)> = RING
        .iter()
        .map(|s| {
            let p = publishers
                .iter()
                .find(|(n, _)| n == s)
                .map_or_else(|| Publisher::ring(s), |(_, p)| p.parse().unwrap());
            (s.to_string(), p)
        })
        .collect();
    let config = ScannerConfig {
        scan: Duration::from_millis(300),
        faults: FaultPlan(
            faults
                .iter()
                .map(|f| f.parse::<FaultRule>().unwrap())
                .collect(),
        ),
        ..ScannerConfig::default()
    };
    Scanners::start(client.broker.clone(), Arc::new(store), &list, config)
        .await
        .expect("start the scanners")
}

fn observed(wfs: &[Value]) -> Vec<Value> {
    wfs.iter()
        .filter(|w| w["kind"] == "observed")
        .cloned()
        .collect()
}

fn stage<'a>(wf: &'a Value, name: &str) -> &'a Value {
    wf["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("stage {name} in {wf}"))
}

fn time(v: &Value) -> chrono::DateTime<chrono::Utc> {
    v.as_str()
        .unwrap_or_else(|| panic!("a time: {v}"))
        .parse()
        .unwrap()
}

async fn metrics(svc: &Service) -> String {
    http_get(svc.port, "/metrics").await.unwrap().1
}

fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{line_start} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_full_cycles_recorded_in_ring_order_with_durations() {
    let env = Env::new();
    let config = ring_config(&env, &stages("2h", "2h"));
    let svc = Service::start(&config, env.dir.path(), "svc").await;
    svc.ready().await;
    let ring = scanners(&env, &[], &[]).await;
    env.insert_domains("ring", 1);
    eventually(
        "two cycles completed",
        Duration::from_secs(60),
        async || {
            observed(&svc.workflows().await)
                .iter()
                .filter(|w| w["status"] == "completed")
                .count()
                >= 2
        },
    )
    .await;
    let all = observed(&svc.workflows().await);
    let done: Vec<&Value> = all.iter().filter(|w| w["status"] == "completed").collect();
    // Newest first: the two oldest cycles, in order.
    let (second, first) = (done[done.len() - 2], done[done.len() - 1]);
    let mut last_end = None;
    for wf in [first, second] {
        let names: Vec<&str> = wf["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, RING, "{wf}");
        for s in RING {
            let st = stage(wf, s);
            assert_eq!(
                (st["status"].as_str(), st["attempt"].as_u64()),
                (Some("completed"), Some(1)),
                "{wf}"
            );
            let (start, end) = (time(&st["started_at"]), time(&st["finished_at"]));
            // Each stage starts when the previous one's chain message arrives and
            // lasts about a scan (300 ms).
            if let Some(prev) = last_end {
                assert_eq!(start, prev, "{s} starts when the previous stage ends: {wf}");
            }
            assert!(end > start, "{wf}");
            last_end = Some(end);
        }
        assert!(
            stage(wf, "asmm8")["detail"]
                .as_str()
                .unwrap()
                .contains("scanned 1 targets")
        );
    }
    // The API's kind filter lists them, and only them.
    let (status, listed) = svc
        .get("/api/orchestratorm8/workflows?kind=observed&status=completed")
        .await;
    assert_eq!(status, 200, "{listed}");
    let listed = listed.as_array().unwrap();
    assert!(listed.len() >= 2 && listed.iter().all(|w| w["kind"] == "observed"));
    let (_, managed) = svc.get("/api/orchestratorm8/workflows?kind=managed").await;
    assert_eq!(managed.as_array().map(Vec::len), Some(0), "{managed}");
    let m = metrics(&svc).await;
    assert!(metric(&m, "orchestratorm8_ring_cycles_total{status=\"completed\"}") >= 2.0);
    assert!(
        metric(
            &m,
            "orchestratorm8_ring_stage_duration_seconds_count{stage=\"katanam8\"}"
        ) >= 2.0
    );
    // One kick-off from the orchestrator, nothing else published by it.
    assert_eq!(metric(&m, "orchestratorm8_bootstrap_kickoffs_total"), 1.0);
    ring.stop(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_failure_of_naabum8_is_reported_stalled_within_its_timeout() {
    let env = Env::new();
    let config = ring_config(&env, &stages("2h", "3s"));
    let svc = Service::start(&config, env.dir.path(), "svc").await;
    svc.ready().await;
    let client = env.client().await;
    let (notes, _n) = client.notifications().await;
    let ring = scanners(&env, &["naabum8:soft:1"], &[]).await;
    env.insert_domains("ring", 1);
    let stalled = common::poll(
        Duration::from_secs(30),
        Duration::from_millis(100),
        async || {
            let wfs = observed(&svc.workflows().await);
            let wf = wfs.last()?;
            let n = stage(wf, "naabum8");
            (n["status"] == "stalled").then(|| (chrono::Utc::now(), n.clone()))
        },
    )
    .await;
    let (seen_at, naabum8) = stalled.expect("naabum8 stalled");
    let silent = seen_at - time(&naabum8["started_at"]);
    assert!(
        silent <= chrono::TimeDelta::milliseconds(4_000 + 300),
        "reported after {silent} (timeout 3 s, plus 1 s, plus a poll)"
    );
    // The scanner's own warning is kept, and the operator is told.
    assert!(naabum8["detail"].to_string().contains("httpx"), "{naabum8}");
    eventually("stall notification", Duration::from_secs(10), async || {
        notes.lock().unwrap().iter().any(|m| {
            m.routing_key == "app.warning.high"
                && String::from_utf8_lossy(&m.body).contains("naabum8 has sent no chain message")
        })
    })
    .await;
    let m = metrics(&svc).await;
    assert_eq!(
        metric(&m, "orchestratorm8_ring_stalls_total{stage=\"naabum8\"}"),
        1.0
    );
    // Healing is off: nothing kicks naabum8 again, the ring stays where it died.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let wfs = observed(&svc.workflows().await);
    assert_eq!(wfs.len(), 1);
    assert_eq!(stage(&wfs[0], "naabum8")["attempt"], 1);
    assert_eq!(stage(&wfs[0], "katanam8")["status"], "waiting");
    ring.stop(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_failover_message_is_counted_and_not_mistaken_for_a_stage_end() {
    let env = Env::new();
    let config = ring_config(&env, &stages("2h", "2h"));
    let svc = Service::start(&config, env.dir.path(), "svc").await;
    svc.ready().await;
    // asmm8's first run loses its channel: the failover message (empty body on
    // naabum8's key), then the kick-off comes back and run 2 chains. naabum8 reports
    // to a key nobody follows, so the observed ring stops at naabum8.
    let ring = scanners(
        &env,
        &["asmm8:failover:1"],
        &[("naabum8", "cptm8,cptm8.test.sink,naabum8")],
    )
    .await;
    env.insert_domains("ring", 1);
    eventually("asmm8 completed", Duration::from_secs(30), async || {
        let wfs = observed(&svc.workflows().await);
        wfs.len() == 1 && stage(&wfs[0], "asmm8")["status"] == "completed"
    })
    .await;
    let wfs = observed(&svc.workflows().await);
    let asmm8 = stage(&wfs[0], "asmm8");
    assert_eq!(asmm8["attempt"], 1, "{asmm8}");
    assert_eq!(stage(&wfs[0], "naabum8")["status"], "running");
    let m = metrics(&svc).await;
    assert_eq!(metric(&m, "orchestratorm8_ring_failover_kicks_total"), 1.0);
    // The failover made naabum8 scan once more than the ring asked; its messages went
    // to the sink: no stage of the cycle moved because of it.
    assert_eq!(stage(&wfs[0], "katanam8")["status"], "waiting");
    ring.stop(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healing_rekicks_naabum8_then_kicks_katanam8_and_the_ring_goes_on() {
    let env = Env::new();
    let mut extra = String::from("Scheduler:\n  heal: true\nWorkflow:\n  stages:\n");
    for s in RING {
        let t = if s == "naabum8" { "2s" } else { "2h" };
        extra.push_str(&format!(
            "    - {{ name: {s}, timeout: \"{t}\", max_attempts: 2, backoff: {{ initial: \"1s\", max: \"1s\" }} }}\n"
        ));
    }
    let config = ring_config(&env, &extra);
    let svc = Service::start(&config, env.dir.path(), "svc").await;
    svc.ready().await;
    // Both attempts of naabum8 fail softly (nothing published); its third run, in the
    // next cycle, completes.
    let ring = scanners(&env, &["naabum8:soft:1-2"], &[]).await;
    env.insert_domains("ring", 1);
    eventually(
        "the ring goes on into a second cycle",
        Duration::from_secs(60),
        async || {
            let wfs = observed(&svc.workflows().await);
            wfs.len() >= 2 && stage(&wfs[wfs.len() - 2], "naabum8")["status"] == "completed"
        },
    )
    .await;
    let wfs = observed(&svc.workflows().await);
    let first = &wfs[wfs.len() - 1];
    assert_eq!(first["status"], "failed", "{first}");
    let n = stage(first, "naabum8");
    assert_eq!(
        (n["status"].as_str(), n["attempt"].as_u64()),
        (Some("failed"), Some(2)),
        "{first}"
    );
    assert!(
        n["detail"]
            .as_str()
            .unwrap()
            .contains("healing kicked katanam8"),
        "{n}"
    );
    for s in ["asmm8", "katanam8", "num8"] {
        assert_eq!(stage(first, s)["status"], "completed", "{first}");
    }
    let m = metrics(&svc).await;
    assert_eq!(
        metric(&m, "orchestratorm8_ring_heals_total{stage=\"naabum8\"}"),
        1.0
    );
    assert_eq!(
        metric(&m, "orchestratorm8_ring_heals_total{stage=\"katanam8\"}"),
        1.0
    );
    assert_eq!(
        metric(&m, "orchestratorm8_ring_stalls_total{stage=\"naabum8\"}"),
        2.0
    );
    ring.stop(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_go_file_with_no_new_section_observes_and_publishes_only_the_kick_off() {
    let env = Env::new();
    // The Go file's shape, no Scheduler or Workflow section.
    let config = ring_config(&env, "");
    let svc = Service::start(&config, env.dir.path(), "svc").await;
    svc.ready().await;
    let client = env.client().await;
    // Everything on cptm8 and notification, from anyone.
    e2e_support::bind_queue(&client.broker, "cptm8", "qtest.wire", "#").await;
    e2e_support::bind_queue(&client.broker, "notification", "qtest.wire", "app.#").await;
    let (wire, _h) = client.collect("qtest.wire").await;
    let ring = scanners(&env, &[], &[]).await;
    env.insert_domains("ring", 1);
    eventually("a cycle observed", Duration::from_secs(60), async || {
        observed(&svc.workflows().await)
            .iter()
            .any(|w| w["status"] == "completed")
    })
    .await;
    ring.stop(Duration::from_secs(1)).await;
    let ours: Vec<String> = wire
        .lock()
        .unwrap()
        .iter()
        .filter(|m| String::from_utf8_lossy(&m.body).contains("\"source\":\"orchestratorm8\""))
        .map(|m| format!("{} {}", m.exchange, m.routing_key))
        .collect();
    assert_eq!(
        ours,
        ["cptm8 cptm8.asmm8.get.scan"],
        "what the orchestrator published"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_record_each_chain_message_and_each_cycle_once() {
    let env = Env::new();
    let config = ring_config(&env, "LeaderElection:\n  check_interval: \"1s\"\n");
    let a = Service::start(&config, env.dir.path(), "a").await;
    a.ready().await;
    let _b = Service::start(&config, env.dir.path(), "b").await;
    let ring = scanners(&env, &[], &[]).await;
    env.insert_domains("ring", 1);
    eventually(
        "three cycles completed",
        Duration::from_secs(60),
        async || {
            observed(&a.workflows().await)
                .iter()
                .filter(|w| w["status"] == "completed")
                .count()
                >= 3
        },
    )
    .await;
    let runs = ring.stop(Duration::from_secs(5)).await;
    let chained = runs.iter().filter(|r| r.published != "-").count();
    let client = env.client().await;
    eventually("ring queue drained", Duration::from_secs(30), async || {
        client.depth("qorchestratorm8.ring").await == 0
    })
    .await;
    assert_eq!(env.chain_messages_recorded(), chained);
    // Both replicas consumed the ring queue; one cycle at a time, each stage once.
    let wfs = observed(&a.workflows().await);
    assert_eq!(
        wfs.iter().filter(|w| w["status"] == "running").count(),
        1,
        "one open cycle"
    );
    for wf in wfs.iter().filter(|w| w["status"] == "completed") {
        for s in RING {
            assert_eq!(stage(wf, s)["attempt"], 1, "{wf}");
        }
    }
    let m = metrics(&a).await;
    assert_eq!(
        metric(&m, "orchestratorm8_ring_reruns_total{stage=\"asmm8\"}"),
        0.0
    );
}
