//! End-to-end: managed mode with the real binary, PostgreSQL and RabbitMQ, and test
//! workers written on amqp8. Each test has its own database and virtual host.

mod common;
mod e2e_support;

use std::collections::HashSet;
use std::time::Duration;

use amqp8::Broker;
use common::{eventually, http_get};
use e2e_support::{Act, Env, Service, managed, stage};
use model8::{AmqpM8Message, Notification8};

const NO_ARGS: &str = "{}";
const LIMIT: Duration = Duration::from_secs(60);

fn statuses(wfs: &[serde_json::Value]) -> Vec<String> {
    wfs.iter()
        .map(|w| w["status"].as_str().unwrap().to_owned())
        .collect()
}

fn stage_of<'a>(wf: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    wf["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()
}

async fn metrics(svc: &Service) -> String {
    http_get(svc.port, "/metrics").await.unwrap().1
}

fn notifications(got: &[amqp8::Message], key: &str) -> Vec<Notification8> {
    got.iter()
        .filter(|m| m.routing_key == key)
        .map(|m| {
            AmqpM8Message::<Notification8>::from_slice(&m.body)
                .unwrap()
                .payload
                .unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_stage_pipeline_runs_to_completion() {
    let env = Env::new();
    let config = env.pipeline_config("30s", managed);
    let run = env
        .start_pipeline(&config, "svc", Duration::from_millis(20))
        .await;
    let (mut svc, notes, seen) = (run.svc, &run.notes, &run.seen);
    env.insert_domains("pipe", 5);
    eventually("5 workflows completed", LIMIT, async || {
        let wfs = svc.workflows().await;
        wfs.len() == 5 && statuses(&wfs).iter().all(|s| s == "completed")
    })
    .await;
    for wf in svc.workflows().await {
        for s in ["a", "b", "c"] {
            assert_eq!(stage_of(&wf, s)["status"], "completed");
            assert_eq!(stage_of(&wf, s)["attempt"], 1);
        }
        assert_eq!(wf["domains"].as_array().unwrap().len(), 1);
    }
    for (s, jobs) in ["a", "b", "c"].iter().zip(seen) {
        let jobs = jobs.lock().unwrap();
        assert_eq!(jobs.len(), 5, "stage {s}: one job per workflow");
        let ids: HashSet<_> = jobs.iter().map(|j| j.workflow_id).collect();
        assert_eq!(ids.len(), 5);
        assert!(
            jobs.iter()
                .all(|j| j.stage == *s && j.attempt == 1 && j.domains.len() == 1)
        );
    }
    eventually("5 completion notifications", LIMIT, async || {
        notifications(&notes.lock().unwrap(), "app.message.normal").len() == 5
    })
    .await;
    let n = notifications(&notes.lock().unwrap(), "app.message.normal");
    assert!(
        n.iter()
            .all(|n| serde_json::to_value(n).unwrap()["type"] == "message")
    );
    let text = metrics(&svc).await;
    assert!(
        controller8::Metrics::sample(&text, "orchestratorm8_workflows_completed_total")
            == Some(5.0),
        "{text}"
    );
    let (code, _) = svc.terminate();
    assert_eq!(code, Some(0), "{}", svc.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_failing_once_then_succeeding() {
    let env = Env::new();
    let config = env.config(
        &[("a", NO_ARGS), ("b", NO_ARGS)],
        &managed(&(stage("a", &[], "30s", 3) + &stage("b", &["a"], "30s", 3))),
    );
    let mut svc = Service::start(&config, env.dir.path(), "svc").await;
    svc.ready().await;
    let client = env.client().await;
    let (a_jobs, _ha) = client
        .worker("a", Duration::from_millis(10), |j| {
            if j.attempt == 1 {
                Act::Fail
            } else {
                Act::Complete
            }
        })
        .await;
    let (_b_jobs, _hb) = client
        .worker("b", Duration::from_millis(10), |_| Act::Complete)
        .await;
    env.insert_domains("flaky", 1);
    eventually("completed", LIMIT, async || {
        statuses(&svc.workflows().await) == ["completed"]
    })
    .await;
    let wf = svc.workflows().await.remove(0);
    assert_eq!(stage_of(&wf, "a")["attempt"], 2);
    assert_eq!(stage_of(&wf, "b")["attempt"], 1);
    let attempts: Vec<u32> = a_jobs.lock().unwrap().iter().map(|j| j.attempt).collect();
    assert_eq!(attempts, [1, 2]);
    let text = metrics(&svc).await;
    assert!(
        controller8::Metrics::sample(&text, "orchestratorm8_stage_retries_total{stage=\"a\"}")
            == Some(1.0),
        "{text}"
    );
    let (code, _) = svc.terminate();
    assert_eq!(code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_timing_out_until_max_attempts_fails_the_workflow_and_notifies() {
    let env = Env::new();
    let config = env.config(
        &[("a", NO_ARGS), ("b", NO_ARGS)],
        &managed(&(stage("a", &[], "1s", 2) + &stage("b", &["a"], "30s", 3))),
    );
    let mut svc = Service::start(&config, env.dir.path(), "svc").await;
    svc.ready().await;
    let client = env.client().await;
    let (notes, _n) = client.notifications().await;
    // A stuck worker: takes the job, never reports.
    let (a_jobs, _ha) = client.worker("a", Duration::ZERO, |_| Act::Ignore).await;
    env.insert_domains("stuck", 1);
    eventually("failed", LIMIT, async || {
        statuses(&svc.workflows().await) == ["failed"]
    })
    .await;
    let wf = svc.workflows().await.remove(0);
    assert_eq!(stage_of(&wf, "a")["status"], "failed");
    assert_eq!(stage_of(&wf, "a")["attempt"], 2);
    assert_eq!(stage_of(&wf, "b")["status"], "cancelled");
    let attempts: Vec<u32> = a_jobs.lock().unwrap().iter().map(|j| j.attempt).collect();
    assert_eq!(attempts, [1, 2]);
    eventually("failure notification", LIMIT, async || {
        !notifications(&notes.lock().unwrap(), "app.error.high").is_empty()
    })
    .await;
    let n = notifications(&notes.lock().unwrap(), "app.error.high");
    assert_eq!(n.len(), 1);
    let json = serde_json::to_value(&n[0]).unwrap();
    assert_eq!(json["type"], "system_error");
    assert!(n[0].message.contains("timed out"), "{}", n[0].message);
    let text = metrics(&svc).await;
    assert!(
        controller8::Metrics::sample(&text, "orchestratorm8_stage_timeouts_total{stage=\"a\"}")
            == Some(2.0),
        "{text}"
    );
    assert!(
        controller8::Metrics::sample(&text, "orchestratorm8_workflows_failed_total") == Some(1.0),
        "{text}"
    );
    let (code, _) = svc.terminate();
    assert_eq!(code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backpressured_max_length_one_queue_drains() {
    let env = Env::new();
    let config = env.config(
        &[(
            "a",
            "{ \"x-max-length\": 1, \"x-overflow\": \"reject-publish\" }",
        )],
        &managed(&stage("a", &[], "60s", 3)),
    );
    let mut svc = Service::start(&config, env.dir.path(), "svc").await;
    svc.ready().await;
    let client = env.client().await;
    let (jobs, _h) = client
        .worker("a", Duration::from_millis(100), |_| Act::Complete)
        .await;
    env.insert_domains("bp", 10);
    eventually("10 completed", LIMIT, async || {
        let wfs = svc.workflows().await;
        wfs.len() == 10 && statuses(&wfs).iter().all(|s| s == "completed")
    })
    .await;
    let jobs = jobs.lock().unwrap().clone();
    assert_eq!(jobs.len(), 10, "each job delivered exactly once");
    let ids: HashSet<_> = jobs.iter().map(|j| j.workflow_id).collect();
    assert_eq!(ids.len(), 10);
    assert!(
        jobs.iter().all(|j| j.attempt == 1),
        "no job was lost and retried"
    );
    let text = metrics(&svc).await;
    let nacks = controller8::Metrics::sample(
        &text,
        "orchestratorm8_stage_publish_nacks_total{stage=\"a\"}",
    )
    .unwrap_or(0.0);
    assert!(nacks > 0.0, "the queue did push back:\n{text}");
    let (code, _) = svc.terminate();
    assert_eq!(code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_result_is_dead_lettered_while_the_service_keeps_running() {
    let env = Env::new();
    let config = env.config(&[("a", NO_ARGS)], &managed(&stage("a", &[], "30s", 3)));
    let mut svc = Service::start(&config, env.dir.path(), "svc").await;
    svc.ready().await;
    let client = env.client().await;
    for (key, body) in [
        ("cptm8.orchestratorm8.a.completed", &b"{ not json"[..]),
        (
            "cptm8.orchestratorm8.a.completed",
            br#"{"channel":"x","timestamp":"2025-01-01T00:00:00Z","source":"w","payload":{"workflow_id":"00000000-0000-0000-0000-000000000000","stage":"b","attempt":1}}"#,
        ),
    ] {
        let out = client
            .broker
            .publish(amqp8::OutgoingMessage::new("cptm8", key, body.to_vec()))
            .await
            .unwrap();
        assert_eq!(out, amqp8::PublishOutcome::Confirmed);
    }
    eventually("dead-lettered", LIMIT, async || {
        client.ready("qorchestratorm8.dlq").await == 2
    })
    .await;
    assert_eq!(client.depth("qorchestratorm8").await, 0, "not requeued");
    let (dead, h) = client.collect("qorchestratorm8.dlq").await;
    eventually("read the dead letters", LIMIT, async || {
        dead.lock().unwrap().len() == 2
    })
    .await;
    h.stop(Duration::from_secs(1)).await;
    for m in dead.lock().unwrap().iter() {
        let reason = m
            .headers
            .get(amqp8::headers::DEATH_REASON)
            .cloned()
            .unwrap_or_default();
        assert!(!reason.is_empty(), "{m:?}");
    }
    // The service keeps working.
    let (_jobs, _w) = client
        .worker("a", Duration::from_millis(10), |_| Act::Complete)
        .await;
    env.insert_domains("after", 1);
    eventually("completed", LIMIT, async || {
        statuses(&svc.workflows().await) == ["completed"]
    })
    .await;
    let text = metrics(&svc).await;
    assert!(
        controller8::Metrics::sample(&text, "orchestratorm8_messages_dead_lettered_total")
            == Some(2.0),
        "{text}"
    );
    let (code, _) = svc.terminate();
    assert_eq!(code, Some(0));
}
