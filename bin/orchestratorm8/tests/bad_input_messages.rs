//! Bad stage reports on `qorchestratorm8`, sent to the real binary over the real
//! RabbitMQ (own database and virtual host per test, e2e_support): malformed ones are
//! dead-lettered to `qorchestratorm8.dlq` with their reason, never requeued; stale,
//! duplicate and unknown ones are acknowledged and change nothing; the service stays
//! ready. Catalogued in docs/BAD_INPUT.md. (The e2e suite has the first two malformed
//! cases: e2e_managed.rs `a_malformed_result_is_dead_lettered_while_the_service_keeps_running`.)

mod common;
mod e2e_support;

use std::time::Duration;

use amqp8::{Broker, OutgoingMessage, PublishOutcome};
use common::{eventually, http_get};
use e2e_support::{Act, Client, Env, Service, managed, stage};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(60);
const TS: &str = "2025-11-19T10:00:00Z";

async fn publish(client: &Client, key: &str, body: Vec<u8>) {
    let out = client
        .broker
        .publish(OutgoingMessage::new("cptm8", key, body))
        .await
        .unwrap();
    assert_eq!(out, PublishOutcome::Confirmed, "{key}");
}

fn result(workflow: &str, stage: &str, attempt: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "channel": "x", "timestamp": TS, "source": "test",
        "payload": {"workflow_id": workflow, "stage": stage, "attempt": attempt},
    }))
    .unwrap()
}

/// Waits until the service consumes `qorchestratorm8` (so the result topology exists):
/// `/ready` alone is 200 for a standby too, before the topology is declared.
async fn consuming(svc: &Service) {
    eventually("the result consumer", LIMIT, async || {
        let (_, v) = svc.get("/ready").await;
        v["checks"]["result_consumer"] == "healthy"
    })
    .await;
}

async fn metric(svc: &Service, name: &str) -> String {
    let text = http_get(svc.port, "/metrics").await.unwrap().1;
    text.lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("{name} in {text}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_reports_are_dead_lettered_with_their_reason() {
    let env = Env::new();
    let config = env.config(&[("a", "{}")], &managed(&stage("a", &[], "30s", 3)));
    let mut svc = Service::start(&config, env.dir.path(), "svc").await;
    svc.ready().await;
    consuming(&svc).await;
    let client = env.client().await;
    let id = uuid::Uuid::new_v4().to_string();
    let deep = format!(
        r#"{{"channel":"x","timestamp":"{TS}","source":"t","payload":{{"workflow_id":"{id}","stage":"a","attempt":1,"detail":{}{}}}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let garbage: Vec<u8> = (0..256 * 1024u32).map(|i| (i * 7919 % 251) as u8).collect();
    // (routing key, body, what the reason must say)
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "cptm8.orchestratorm8.a.exploded",
            result(&id, "a", json!(1)),
            "routing key",
        ),
        (
            "cptm8.orchestratorm8.a",
            result(&id, "a", json!(1)),
            "routing key",
        ),
        (
            "cptm8.orchestratorm8.a.completed",
            Vec::new(),
            "malformed message body",
        ),
        (
            "cptm8.orchestratorm8.a.completed",
            garbage,
            "malformed message body",
        ),
        (
            "cptm8.orchestratorm8.a.completed",
            deep.into_bytes(),
            "recursion limit",
        ),
        (
            "cptm8.orchestratorm8.a.completed",
            format!(r#"{{"channel":"x","timestamp":"{TS}","source":"t"}}"#).into_bytes(),
            "no payload",
        ),
        (
            "cptm8.orchestratorm8.a.completed",
            result(&id, "a", json!(0)),
            "attempt 0",
        ),
        (
            "cptm8.orchestratorm8.a.completed",
            result(&id, "a", json!(-1)),
            "malformed",
        ),
        (
            "cptm8.orchestratorm8.a.completed",
            result(&id, "a", json!("1")),
            "malformed",
        ),
        (
            "cptm8.orchestratorm8.a.completed",
            result("not-a-uuid", "a", json!(1)),
            "malformed",
        ),
        (
            "cptm8.orchestratorm8.a.completed",
            result(&id, "b", json!(1)),
            "payload names stage",
        ),
        (
            "cptm8.orchestratorm8.a.completed",
            result(&id, "a", json!(1))
                .into_iter()
                .chain(*b" trailing")
                .collect(),
            "malformed",
        ),
    ];
    for (key, body, _) in &cases {
        publish(&client, key, body.clone()).await;
    }
    let n = cases.len() as u32;
    eventually("every bad report dead-lettered", LIMIT, async || {
        client.ready("qorchestratorm8.dlq").await == n
    })
    .await;
    assert_eq!(client.depth("qorchestratorm8").await, 0, "none requeued");

    let (dead, h) = client.collect("qorchestratorm8.dlq").await;
    eventually("read the dead letters", LIMIT, async || {
        dead.lock().unwrap().len() == cases.len()
    })
    .await;
    h.stop(Duration::from_secs(1)).await;
    let dead = dead.lock().unwrap().clone();
    for (key, body, says) in &cases {
        // Each is found by its body and the routing key it was sent with, which the
        // dead letter keeps in a header.
        let m = dead
            .iter()
            .find(|m| {
                &m.body == body
                    && m.headers
                        .get(amqp8::headers::ORIGINAL_ROUTING_KEY)
                        .is_some_and(|k| k == key)
            })
            .unwrap_or_else(|| panic!("{key} {says}: not dead-lettered"));
        let reason = m
            .headers
            .get(amqp8::headers::DEATH_REASON)
            .cloned()
            .unwrap_or_default();
        assert!(reason.contains(says), "{key}: {says:?} not in {reason:?}");
    }
    assert_eq!(
        metric(&svc, "orchestratorm8_messages_dead_lettered_total").await,
        format!("orchestratorm8_messages_dead_lettered_total {n}")
    );
    // Still ready, still working.
    let (status, body) = svc.get("/ready").await;
    assert_eq!(status, 200, "{body}");
    let (code, _) = svc.terminate();
    assert_eq!(code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_duplicate_and_unknown_reports_change_nothing() {
    let env = Env::new();
    let config = env.config(&[("a", "{}")], &managed(&stage("a", &[], "1h", 3)));
    let mut svc = Service::start(&config, env.dir.path(), "svc").await;
    svc.ready().await;
    consuming(&svc).await;
    let client = env.client().await;
    // A worker that takes the job and never reports: attempt 1 stays running.
    let (jobs, _w) = client.worker("a", Duration::ZERO, |_| Act::Ignore).await;
    env.insert_domains("stale", 1);
    eventually("the job taken", LIMIT, async || {
        !jobs.lock().unwrap().is_empty()
    })
    .await;
    let job = jobs.lock().unwrap()[0].clone();
    let wf = job.workflow_id.to_string();
    let snapshot = async || {
        let (_, v) = svc
            .get(&format!("/api/orchestratorm8/workflows/{wf}"))
            .await;
        (v["status"].clone(), v["stages"].clone())
    };
    let before = snapshot().await;
    assert_eq!(before.0, "running");

    let key = "cptm8.orchestratorm8.a.completed";
    let stale_reports = [
        (
            key,
            result(&uuid::Uuid::new_v4().to_string(), "a", json!(1)),
        ), // unknown workflow
        (key, result(&wf, "a", json!(7))), // future attempt
        (
            "cptm8.orchestratorm8.zz.completed",
            result(&wf, "zz", json!(1)),
        ), // unknown stage
    ];
    for (k, body) in &stale_reports {
        publish(&client, k, body.clone()).await;
    }
    eventually("the stale reports acknowledged", LIMIT, async || {
        metric(&svc, "orchestratorm8_results_stale_total").await
            == "orchestratorm8_results_stale_total 3"
    })
    .await;
    assert_eq!(snapshot().await, before, "nothing changed");

    // The real report completes the stage; repeating it, or failing the same attempt
    // afterwards, changes nothing.
    e2e_support::report(&client.broker, &job, model8::StageOutcome::Completed).await;
    eventually("completed", LIMIT, async || {
        snapshot().await.0 == "completed"
    })
    .await;
    let done = snapshot().await;
    e2e_support::report(&client.broker, &job, model8::StageOutcome::Completed).await;
    e2e_support::report(&client.broker, &job, model8::StageOutcome::Failed).await;
    eventually("the duplicates acknowledged", LIMIT, async || {
        metric(&svc, "orchestratorm8_results_stale_total").await
            == "orchestratorm8_results_stale_total 5"
    })
    .await;
    assert_eq!(snapshot().await, done);
    assert_eq!(client.depth("qorchestratorm8").await, 0);
    assert_eq!(
        client.depth("qorchestratorm8.dlq").await,
        0,
        "not malformed"
    );
    let (code, _) = svc.terminate();
    assert_eq!(code, Some(0));
}
