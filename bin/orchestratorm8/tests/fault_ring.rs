//! Fault injection on bootstrap mode following the ring (issue 14, docs/FAULTS.md):
//! two replicas observe the Go-scanner stand-ins' ring; the leader is killed with
//! `kill -9` mid-cycle; the standby takes over, and in the end every chain message the
//! scanners published is recorded exactly once (none lost with the killed process,
//! none doubled by its redelivery) and the ring is still followed.
//!
//! Also: RabbitMQ and then PostgreSQL restarted mid-cycle under one observing replica:
//! every chain message is still recorded exactly once and the ring is still followed.
//!
//! The kill test disrupts only its own processes, so it holds the SHARED service lock
//! (like the e2e tests); the restart tests hold it EXCLUSIVELY. Ignored by default:
//! `bash scripts/fault.sh`.

mod common;
mod e2e_support;
mod fault_support;

use std::sync::Arc;
use std::time::Duration;

use common::{eventually, poll};
use demo8::scanner::{Publisher, RING, ScannerConfig, Scanners};
use e2e_support::{Env, Service};
use serde_json::Value;

const GO_QUEUE_ARGS: &str = "{ \"x-max-length\": 1, \"x-overflow\": \"reject-publish\" }";
const LEADING: &str = "this replica is now the leader";

fn observed(wfs: &[Value]) -> Vec<Value> {
    wfs.iter()
        .filter(|w| w["kind"] == "observed")
        .cloned()
        .collect()
}

fn running_stage(wf: &Value) -> Option<String> {
    wf["stages"]
        .as_array()?
        .iter()
        .find(|s| s["status"] == "running")
        .and_then(|s| s["name"].as_str().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault injection (kill -9 of the leader mid-cycle): bash scripts/fault.sh"]
async fn kill_9_of_the_leader_mid_cycle_loses_and_doubles_no_chain_message() {
    let env = Env::new();
    let sections: Vec<(&str, &str)> = RING.iter().map(|s| (*s, GO_QUEUE_ARGS)).collect();
    let config = env.config(&sections, "LeaderElection:\n  check_interval: \"1s\"\n");
    let mut a = Service::start(&config, env.dir.path(), "a").await;
    a.ready().await;
    let b = Service::start(&config, env.dir.path(), "b").await;

    let settings = config8::load(&config).unwrap().settings;
    let store = db8::PgStore::connect(&settings.database).await.unwrap();
    let client = env.client().await;
    let list: Vec<(String, Publisher)> = RING
        .iter()
        .map(|s| (s.to_string(), Publisher::ring(s)))
        .collect();
    let scanners = Scanners::start(
        client.broker.clone(),
        Arc::new(store),
        &list,
        ScannerConfig {
            scan: Duration::from_millis(400),
            ..ScannerConfig::default()
        },
    )
    .await
    .unwrap();
    env.insert_domains("ring", 1);

    // Mid-cycle: katanam8 running in the first cycle.
    let mid = poll(
        Duration::from_secs(30),
        Duration::from_millis(20),
        async || {
            let wfs = observed(&a.workflows().await);
            (wfs.len() == 1 && running_stage(&wfs[0]).as_deref() == Some("katanam8")).then_some(())
        },
    )
    .await;
    assert!(mid.is_some(), "no cycle reached katanam8:\n{}", a.logs());
    a.kill9();

    // The standby leads and follows the ring: two more cycles complete.
    eventually("b leads", Duration::from_secs(30), async || {
        b.logs().contains(LEADING)
    })
    .await;
    let done_before = observed(&b.workflows().await)
        .iter()
        .filter(|w| w["status"] == "completed")
        .count();
    eventually(
        "the ring is followed after the kill",
        Duration::from_secs(60),
        async || {
            observed(&b.workflows().await)
                .iter()
                .filter(|w| w["status"] == "completed")
                .count()
                >= done_before + 2
        },
    )
    .await;

    // Stop the scanners, let the observer drain its queue, then compare what they
    // published with what is recorded.
    let runs = scanners.stop(Duration::from_secs(5)).await;
    let chained = runs
        .iter()
        .filter(|r| ["complete", "warning", "incomplete", "none"].contains(&r.published.as_str()))
        .count();
    eventually("ring queue drained", Duration::from_secs(30), async || {
        client.depth("qorchestratorm8.ring").await == 0
    })
    .await;
    let recorded = env.chain_messages_recorded();
    assert!(chained >= 8, "{chained} chain messages: the ring ran");
    assert_eq!(
        recorded,
        chained,
        "every chain message recorded exactly once\na:\n{}\nb:\n{}",
        a.logs(),
        b.logs()
    );
}

/// One observing replica, the four stand-ins with `scan`-long scans, one domain. The
/// stand-ins read their target from a store of their own in memory, so that a
/// PostgreSQL restart tests the observer, not the scanners (a real scanner whose
/// database is down ends with a hard error and the ring stops: healing's case).
async fn observed_ring(env: &Env, scan: Duration) -> (Service, Scanners, e2e_support::Client) {
    use db8::DomainRepository;
    let sections: Vec<(&str, &str)> = RING.iter().map(|s| (*s, GO_QUEUE_ARGS)).collect();
    let config = env.config(&sections, "");
    let svc = Service::start(&config, env.dir.path(), "svc").await;
    svc.ready().await;
    let store = db8::MemoryStore::new();
    store
        .insert(&model8::PostDomain8 {
            name: "d0.ring.example.com".into(),
            companyname: "ring".into(),
            enabled: true,
        })
        .await
        .unwrap();
    let client = env.client().await;
    let list: Vec<(String, Publisher)> = RING
        .iter()
        .map(|s| (s.to_string(), Publisher::ring(s)))
        .collect();
    let scanners = Scanners::start(
        client.broker.clone(),
        Arc::new(store),
        &list,
        ScannerConfig {
            scan,
            ..ScannerConfig::default()
        },
    )
    .await
    .unwrap();
    env.insert_domains("ring", 1);
    (svc, scanners, client)
}

fn completed(wfs: &[Value]) -> usize {
    observed(wfs)
        .iter()
        .filter(|w| w["status"] == "completed")
        .count()
}

/// Waits until a stage other than asmm8 has just started in the first cycle (the next
/// chain message is a whole scan away) and nothing waits in the observer's queue: the
/// moment to take a server away without taking a message with it.
async fn mid_scan(svc: &Service, client: &e2e_support::Client) {
    let at = poll(
        Duration::from_secs(60),
        Duration::from_millis(20),
        async || {
            let wfs = observed(&svc.workflows().await);
            let running = wfs.first().and_then(running_stage);
            (wfs.len() == 1 && running.as_deref() == Some("naabum8")).then_some(())
        },
    )
    .await;
    assert!(at.is_some(), "no cycle reached naabum8:\n{}", svc.logs());
    eventually(
        "the ring queue empty",
        Duration::from_secs(30),
        async || client.depth("qorchestratorm8.ring").await == 0,
    )
    .await;
}

/// Two more cycles complete, then the scanners stop and every chain message they
/// published is recorded exactly once.
async fn every_chain_message_recorded_once(
    env: &Env,
    svc: &Service,
    scanners: Scanners,
    client: &e2e_support::Client,
    done_before: usize,
) {
    eventually(
        "the ring is followed after the restart",
        Duration::from_secs(120),
        async || completed(&svc.workflows().await) >= done_before + 2,
    )
    .await;
    let runs = scanners.stop(Duration::from_secs(5)).await;
    let chained = runs
        .iter()
        .filter(|r| ["complete", "warning", "incomplete", "none"].contains(&r.published.as_str()))
        .count();
    eventually("ring queue drained", Duration::from_secs(30), async || {
        client.depth("qorchestratorm8.ring").await == 0
    })
    .await;
    assert!(chained >= 8, "{chained} chain messages: the ring ran");
    assert_eq!(
        env.chain_messages_recorded(),
        chained,
        "every chain message recorded exactly once\n{}",
        svc.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault injection (RabbitMQ restarted mid-cycle): bash scripts/fault.sh"]
async fn broker_restart_mid_cycle_loses_and_doubles_no_chain_message() {
    let (env, timing) = fault_support::env("ring broker restart", true);
    let (svc, scanners, client) = observed_ring(&env, Duration::from_secs(4)).await;
    mid_scan(&svc, &client).await;
    let done_before = completed(&svc.workflows().await);

    let app = fault_support::RabbitApp::stop();
    app.start();

    every_chain_message_recorded_once(&env, &svc, scanners, &client, done_before).await;
    let logs = svc.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("consumer subscribed again")
                && l.contains("queue=qorchestratorm8.ring")),
        "the observer lost the broker and subscribed again:\n{logs}"
    );
    fault_support::keep_logs(&env, "ring_broker_restart");
    drop(timing);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault injection (PostgreSQL restarted mid-cycle): bash scripts/fault.sh"]
async fn postgres_restart_mid_cycle_loses_and_doubles_no_chain_message() {
    let (env, timing) = fault_support::env("ring postgres restart", true);
    let (svc, scanners, client) = observed_ring(&env, Duration::from_secs(2)).await;
    mid_scan(&svc, &client).await;
    let done_before = completed(&svc.workflows().await);

    // Down across the scanner's chain message: the observer holds it until it can
    // record it.
    let pg = fault_support::Postgres::stop();
    eventually(
        "a chain message waits",
        Duration::from_secs(30),
        async || client.depth("qorchestratorm8.ring").await >= 1,
    )
    .await;
    pg.start();

    every_chain_message_recorded_once(&env, &svc, scanners, &client, done_before).await;
    fault_support::keep_logs(&env, "ring_postgres_restart");
    drop(timing);
}
