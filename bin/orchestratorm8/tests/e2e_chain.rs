//! Managed mode on the platform as it is (CONTRACT 3b, issue 13): the real binary,
//! RabbitMQ and PostgreSQL, and the Go-scanner stand-in (tools/demo8/src/scanner.rs)
//! whose only change is its `Publisher` line, driven through `protocol: chain` stages
//! asmm8 → naabum8 → katanam8 → num8 with `granularity: per_cycle`.

mod chain_support;
mod common;
mod e2e_support;

use std::time::{Duration, Instant};

use chain_support::*;
use common::{eventually, http_request};
use demo8::scanner::RING;
use demo8::scanner::Scanners;
use e2e_support::{Env, Service};

const SCAN: Duration = Duration::from_millis(200);

/// Starts the service with the chain pipeline and waits until it leads.
async fn service(env: &Env, timeout: &str, max_attempts: u32) -> (Service, std::path::PathBuf) {
    let config = env.chain_config(timeout, max_attempts);
    let svc = Service::start(&config, env.dir.path(), "orchestratorm8").await;
    svc.ready().await;
    (svc, config)
}

async fn post(svc: &Service, path: &str, body: &str) -> (u16, serde_json::Value) {
    let (status, text) = http_request(svc.port, "POST", path, Some(body))
        .await
        .expect("HTTP request");
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// A cycle over two domains with `fault` injected into `stage`'s first run, stage
/// timeouts of `timeout`: it completes, `stage` at its second attempt.
async fn recovered(fault: &str, stage: &str, timeout: &str) -> (Env, Service, Scanners) {
    let env = Env::new();
    let (svc, config) = service(&env, timeout, 3).await;
    let scanners = env.scanners(&config, &[fault], SCAN).await;
    env.insert_domains(stage, 2);
    let w = cycle_is(&svc, "completed").await;
    assert!(
        stages(&w).contains(&(stage.into(), "completed".into(), 2)),
        "{w:#}"
    );
    (env, svc, scanners)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_kicks_each_scanner_once_in_order_and_notifies_app_consumers() {
    let env = Env::new();
    let (svc, config) = service(&env, "30s", 3).await;
    let client = env.client().await;
    let (notes_got, _n) = client.notifications().await;
    let scanners = env.scanners(&config, &[], SCAN).await;
    env.insert_domains("cycle", 3);
    completed_with_one_kick_each(&svc).await;
    each_once_in_order(&scanners);
    eventually(
        "the completion notification on app.message.normal",
        LIMIT,
        async || {
            notes(&notes_got, "app.message.normal")
                .iter()
                .any(|m| m.contains("completed"))
        },
    )
    .await;

    // No second cycle before rescan_after (1 h), whatever the domains do.
    env.insert_domains("later", 1);
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert_eq!(svc.workflows().await.len(), 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(runs(&scanners).len(), 4, "no scanner ran again");

    // Scan now starts a cycle at once.
    let (status, body) = post(&svc, "/api/orchestratorm8/workflows", "{}").await;
    assert_eq!(status, 202, "{body}");
    eventually("a second cycle completed", LIMIT, async || {
        let w = svc.workflows().await;
        w.len() == 2 && w.iter().all(|w| w["status"] == "completed")
    })
    .await;
    assert_eq!(runs(&scanners).len(), 8);
    scanners.stop(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_failure_times_out_and_the_scanner_is_kicked_again() {
    let (_env, svc, scanners) = recovered("naabum8:soft:1", "naabum8", "3s").await;
    assert_eq!(stage_metric(&svc, "stage_timeouts", "naabum8").await, 1.0);
    let n: Vec<String> = runs(&scanners)
        .into_iter()
        .filter(|(s, _)| s == "naabum8")
        .map(|(_, p)| p)
        .collect();
    assert_eq!(n, ["-", "complete"], "nothing published, then re-kicked");
    scanners.stop(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_failure_fails_the_attempt_and_it_is_retried_with_backoff() {
    let (_env, svc, scanners) = recovered("katanam8:hard:1", "katanam8", "30s").await;
    assert_eq!(stage_metric(&svc, "stage_retries", "katanam8").await, 1.0);
    assert_eq!(
        stage_metric(&svc, "stage_timeouts", "katanam8").await,
        0.0,
        "failed by its report and app.error, not by the timeout"
    );
    scanners.stop(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incomplete_fails_and_the_failure_reaches_app_consumers_naming_the_scanner() {
    let env = Env::new();
    let (svc, config) = service(&env, "30s", 2).await;
    let client = env.client().await;
    let (notes_got, _n) = client.notifications().await;
    let scanners = env.scanners(&config, &["naabum8:incomplete:*"], SCAN).await;
    env.insert_domains("incomplete", 2);
    let w = cycle_is(&svc, "failed").await;
    let s = stages(&w);
    assert!(s.contains(&("naabum8".into(), "failed".into(), 2)), "{w:#}");
    assert!(
        s.contains(&("katanam8".into(), "cancelled".into(), 0)),
        "{w:#}"
    );
    eventually(
        "the failure notification on app.error.high",
        LIMIT,
        async || {
            notes(&notes_got, "app.error.high").iter().any(|m| {
                m.starts_with("orchestratorm8: workflow")
                    && m.contains("naabum8")
                    && m.contains("incomplete")
            })
        },
    )
    .await;
    assert!(!run_names(&scanners).contains(&"katanam8".to_owned()));
    scanners.stop(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_while_none_runs_is_counted_and_changes_nothing() {
    let env = Env::new();
    let (svc, _config) = service(&env, "30s", 3).await;
    let client = env.client().await;
    // No scanner runs: asmm8's kick-off waits in its queue.
    env.insert_domains("unsolicited", 1);
    eventually("asmm8 running", LIMIT, async || {
        let w = svc.workflows().await;
        w.len() == 1 && stages(&w[0])[0] == ("asmm8".into(), "running".into(), 1)
    })
    .await;
    fake_report(
        &client,
        "naabum8",
        serde_json::json!({"status": "complete", "message": "not asked"}),
    )
    .await;
    eventually("counted as unsolicited", LIMIT, async || {
        stage_metric(&svc, "stage_reports_unsolicited", "naabum8").await == 1.0
    })
    .await;
    let w = the_cycle(&svc).await;
    assert_eq!(
        stages(&w)[..2],
        [
            ("asmm8".into(), "running".into(), 1),
            ("naabum8".into(), "waiting".into(), 0)
        ]
    );
    assert_eq!(client.depth("qasmm8").await, 1, "one kick-off, waiting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_scanner_is_backpressure_and_no_kick_is_lost_or_doubled() {
    let env = Env::new();
    let (svc, config) = service(&env, "30s", 3).await;
    let client = env.client().await;
    // Someone else's kick-off fills asmm8's queue (x-max-length 1).
    let foreign = model8::AmqpM8Message::<()>::with_source("cptm8.asmm8.get.scan", None, "num8")
        .to_vec()
        .unwrap();
    let out = amqp8::Broker::publish(
        client.broker.as_ref(),
        amqp8::OutgoingMessage::new("cptm8", "cptm8.asmm8.get.scan", foreign),
    )
    .await
    .unwrap();
    assert_eq!(out, amqp8::PublishOutcome::Confirmed);
    env.insert_domains("busy", 1);
    eventually("the kick-off refused (busy)", LIMIT, async || {
        stage_metric(&svc, "stage_publish_nacks", "asmm8").await >= 1.0
    })
    .await;
    let w = the_cycle(&svc).await;
    assert_eq!(stages(&w)[0], ("asmm8".into(), "pending".into(), 0));
    // The scanner comes back: it takes the foreign kick-off, then ours.
    let scanners = env.scanners(&config, &[], SCAN).await;
    completed_with_one_kick_each(&svc).await;
    scanners.stop(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_the_next_kick_and_cancel_ends_the_cycle() {
    let env = Env::new();
    let (svc, config) = service(&env, "30s", 3).await;
    let scanners = env
        .scanners(&config, &[], Duration::from_millis(1500))
        .await;
    env.insert_domains("pause", 1);
    eventually("asmm8 running", LIMIT, async || {
        let w = svc.workflows().await;
        w.len() == 1 && stages(&w[0])[0].1 == "running"
    })
    .await;
    let id = the_cycle(&svc).await["id"].as_str().unwrap().to_owned();
    let (status, body) = post(
        &svc,
        &format!("/api/orchestratorm8/workflows/{id}/pause"),
        "{}",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // asmm8's scan ends and applies; naabum8 is not kicked while paused.
    eventually("asmm8 completed while paused", LIMIT, async || {
        stages(&the_cycle(&svc).await)[0].1 == "completed"
    })
    .await;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert_eq!(run_names(&scanners), ["asmm8"]);
        assert_eq!(
            env.client().await.depth("qnaabum8").await,
            0,
            "no kick while paused"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (status, _) = post(
        &svc,
        &format!("/api/orchestratorm8/workflows/{id}/resume"),
        "{}",
    )
    .await;
    assert_eq!(status, 200);
    eventually("naabum8 kicked after resume", LIMIT, async || {
        stages(&the_cycle(&svc).await)[1].1 == "running"
    })
    .await;
    let (status, _) = post(
        &svc,
        &format!("/api/orchestratorm8/workflows/{id}/cancel"),
        "{}",
    )
    .await;
    assert_eq!(status, 200);
    // naabum8's report arrives after the cancel: no attempt runs any more, so it is
    // unsolicited and changes nothing; katanam8 never runs.
    eventually("naabum8's report seen as unsolicited", LIMIT, async || {
        stage_metric(&svc, "stage_reports_unsolicited", "naabum8").await == 1.0
    })
    .await;
    let w = the_cycle(&svc).await;
    assert_eq!(w["status"], "cancelled");
    assert!(!run_names(&scanners).contains(&"katanam8".to_owned()));
    scanners.stop(Duration::from_secs(2)).await;
}

/// The rollout of docs/OPERATIONS.md, step by step: with only the last scanners
/// re-pointed, the first stage's kick-off goes to asmm8 (its `routing_key`) and the
/// scanners not yet re-pointed still chain on their own, so the stage spans them.
async fn rollout_step(repointed: &[&str]) {
    let env = Env::new();
    let mut stages_yaml = String::new();
    let mut prev: Option<&str> = None;
    for name in repointed {
        let routing_key = if prev.is_none() {
            "\n      routing_key: cptm8.asmm8.get.scan"
        } else {
            ""
        };
        stages_yaml.push_str(&format!(
            "    - name: {name}\n      protocol: chain{routing_key}\n      depends_on: [{}]\n      timeout: \"30s\"\n",
            prev.unwrap_or("")
        ));
        prev = Some(name);
    }
    let sections: Vec<(&str, &str)> = RING.iter().map(|n| (*n, GO_QUEUE_ARGS)).collect();
    let config = env.config(
        &sections,
        &format!(
            "Scheduler:\n  mode: managed\n  interval: \"1h\"\nWorkflow:\n  granularity: per_cycle\n  \
             rescan_after: \"1h\"\n  stages:\n{stages_yaml}"
        ),
    );
    let svc = Service::start(&config, env.dir.path(), "orchestratorm8").await;
    svc.ready().await;
    let scanners = env.scanners_repointed(&config, repointed, &[], SCAN).await;
    env.insert_domains("rollout", 2);
    let w = cycle_is(&svc, "completed").await;
    let names: Vec<String> = stages(&w).into_iter().map(|(n, _, _)| n).collect();
    assert_eq!(names, repointed);
    each_once_in_order(&scanners);
    scanners.stop(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_first_step_only_num8_repointed_one_stage_spans_the_ring() {
    rollout_step(&["num8"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_middle_step_naabum8_katanam8_num8_repointed() {
    rollout_step(&["naabum8", "katanam8", "num8"]).await;
}
