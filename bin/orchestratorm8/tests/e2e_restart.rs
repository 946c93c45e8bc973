//! End-to-end: `kill -9` of the orchestrator in the middle of running workflows, then a
//! restart: every workflow completes (state is in PostgreSQL, results wait in the
//! durable result queue, claims of the dead process expire).

mod common;
mod e2e_support;

use std::time::Duration;

use common::eventually;
use e2e_support::{Env, PIPELINE, Service, managed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_workflow_and_restart_then_every_workflow_completes() {
    let env = Env::new();
    let config = env.pipeline_config("60s", managed);
    let mut first = Service::start(&config, env.dir.path(), "first").await;
    first.ready().await;
    let client = env.client().await;
    let (seen, _handles) = client
        .completing_workers(&PIPELINE, Duration::from_millis(150))
        .await;
    env.insert_domains("crash", 10);
    eventually("work under way", Duration::from_secs(60), async || {
        seen[0].lock().unwrap().len() >= 3
    })
    .await;
    let before = first.workflows().await;
    assert!(
        before.iter().any(|w| w["status"] != "completed"),
        "killed mid-workflow"
    );
    first.kill9();
    // Workers keep reporting while the orchestrator is down.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = Service::start(&config, env.dir.path(), "second").await;
    second.ready().await;
    eventually("all 10 completed", Duration::from_secs(180), async || {
        let wfs = second.workflows().await;
        wfs.len() == 10 && wfs.iter().all(|w| w["status"] == "completed")
    })
    .await;
    // No domain got a second workflow, and nothing failed.
    let wfs = second.workflows().await;
    assert_eq!(wfs.len(), 10);
    drop(second);
}
