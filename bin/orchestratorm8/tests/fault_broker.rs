//! Fault injection on RabbitMQ (docs/FAULTS.md): a broker restart during a bulk
//! publish, the broker away for 30 s under a running orchestrator, and a memory alarm
//! (`connection.blocked`). Real binary, real PostgreSQL and RabbitMQ; each test holds
//! the EXCLUSIVE service lock and always gives the broker back (drop guards).
//!
//! Ignored by default (they stop the shared broker): `bash scripts/fault.sh`.

mod common;
mod e2e_support;
mod fault_support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use amqp8::{Broker, OutgoingMessage, PublishOutcome, RabbitBroker};
use common::{eventually, http_get, ready};
use e2e_support::{Act, Service, bind_queue, consume_each, stage};
use fault_support::{MemoryAlarm, Outcome, RabbitApp, managed_once, metric, ready_until};

const NO_ARGS: &str = "{}";

/// One `publish_many` call of the bulk publisher.
struct Batch {
    first: u64,
    len: u64,
    started: Instant,
    ended: Instant,
    result: Result<Vec<PublishOutcome>, String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault injection (restarts RabbitMQ): bash scripts/fault.sh"]
async fn a_broker_restart_during_a_bulk_publish_loses_no_confirmed_message() {
    const AT_LEAST: u64 = 20_000;
    const BATCH: u64 = 1_000;
    let (env, _timing) = fault_support::env(
        "a_broker_restart_during_a_bulk_publish_loses_no_confirmed_message",
        true,
    );
    let mut settings = env.rabbit_settings();
    // Long enough that no publish gives up while the broker restarts on a loaded
    // machine: the test is about what was confirmed, not about the deadline.
    settings.pool.connection_timeout = Duration::from_secs(120);
    let broker = Arc::new(RabbitBroker::connect(&settings).await.unwrap());
    bind_queue(&broker, "fault.bulk", "qbulk", "bulk.#").await;

    // The publisher: batches of BATCH messages, one publish_many each, back to back,
    // until the broker has been restarted and at least AT_LEAST were published.
    let restarted = Arc::new(AtomicBool::new(false));
    let publisher = {
        let broker = broker.clone();
        let restarted = restarted.clone();
        tokio::spawn(async move {
            let mut batches = Vec::new();
            let mut next = 0u64;
            while !(restarted.load(Ordering::SeqCst) && next >= AT_LEAST) {
                let messages = (next..next + BATCH)
                    .map(|i| {
                        OutgoingMessage::new("fault.bulk", "bulk.m", format!("{i}").into_bytes())
                            .with_message_id(format!("bulk-{i}"))
                    })
                    .collect();
                let started = Instant::now();
                let result = broker
                    .publish_many(messages)
                    .await
                    .map_err(|e| e.to_string());
                batches.push(Batch {
                    first: next,
                    len: BATCH,
                    started,
                    ended: Instant::now(),
                    result,
                });
                next += BATCH;
            }
            batches
        })
    };
    // Mid-way: once a few batches are through.
    eventually(
        "3 batches in the queue",
        Duration::from_secs(60),
        async || {
            broker
                .queue_info("qbulk")
                .await
                .is_ok_and(|i| i.messages >= 3 * BATCH as u32)
        },
    )
    .await;
    let app = RabbitApp::stop();
    eventually(
        "the publisher's broker to notice",
        Duration::from_secs(30),
        async || !broker.health().connected,
    )
    .await;
    let down_at = Instant::now();
    // The broker stays away for a moment (the scenario, not a synchronisation).
    tokio::time::sleep(Duration::from_secs(2)).await;
    app.start();
    restarted.store(true, Ordering::SeqCst);
    let batches = tokio::time::timeout(Duration::from_secs(300), publisher)
        .await
        .expect("the publisher finishes after the restart")
        .unwrap();

    let failed: Vec<String> = batches
        .iter()
        .filter_map(|b| {
            b.result
                .as_ref()
                .err()
                .map(|e| format!("[{}..]: {e}", b.first))
        })
        .collect();
    assert!(
        failed.is_empty(),
        "publishes should wait for the broker, not fail: {failed:?}"
    );
    assert!(
        batches
            .iter()
            .any(|b| b.started < down_at && b.ended > down_at),
        "no batch was in flight when the broker went away: the restart was not mid-publish"
    );
    let mut confirmed = HashSet::new();
    for b in &batches {
        let outcomes = b.result.as_ref().unwrap();
        assert_eq!(outcomes.len() as u64, b.len);
        for (i, o) in outcomes.iter().enumerate() {
            assert_eq!(
                *o,
                PublishOutcome::Confirmed,
                "message {}",
                b.first + i as u64
            );
            confirmed.insert(b.first + i as u64);
        }
    }
    let depth = broker.queue_info("qbulk").await.unwrap().messages as usize;
    eprintln!(
        "bulk publish: {} batches, {} messages confirmed, {depth} in the queue ({} duplicates)",
        batches.len(),
        confirmed.len(),
        depth.saturating_sub(confirmed.len())
    );
    assert!(depth >= confirmed.len(), "{depth} < {}", confirmed.len());

    // Read the queue back: every confirmed message is there (duplicates allowed:
    // copies re-published after the restart, recognised by their message_id).
    let seen: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let received = Arc::new(AtomicU64::new(0));
    let mismatched = Arc::new(AtomicU64::new(0));
    let sink = seen.clone();
    let (count, wrong) = (received.clone(), mismatched.clone());
    let consumer = consume_each(&broker, "qbulk", "fault-bulk-reader", 1000, move |m| {
        let n = String::from_utf8_lossy(&m.body).parse().unwrap_or(u64::MAX);
        count.fetch_add(1, Ordering::SeqCst);
        if m.message_id.as_deref() != Some(format!("bulk-{n}").as_str()) {
            wrong.fetch_add(1, Ordering::SeqCst);
        }
        sink.lock().unwrap().insert(n);
    })
    .await;
    // Until every confirmed message was seen, or the queue stays empty with nothing
    // new arriving for 5 s (nothing more will come), at most 2 minutes.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut last_len, mut last_change) = (0, Instant::now());
    loop {
        let (missing, len) = {
            let seen = seen.lock().unwrap();
            (confirmed.difference(&seen).count(), seen.len())
        };
        if missing == 0 {
            break;
        }
        if len != last_len {
            (last_len, last_change) = (len, Instant::now());
        }
        let drained = broker
            .queue_info("qbulk")
            .await
            .is_ok_and(|i| i.messages == 0)
            && last_change.elapsed() > Duration::from_secs(5);
        if drained || Instant::now() > deadline {
            let seen = seen.lock().unwrap();
            let mut missing: Vec<u64> = confirmed.difference(&seen).copied().collect();
            missing.sort_unstable();
            panic!(
                "{} confirmed messages are not in the queue (first: {:?})",
                missing.len(),
                &missing[..missing.len().min(20)]
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The copies still queued behind.
    eventually("the queue drained", Duration::from_secs(60), async || {
        broker
            .queue_info("qbulk")
            .await
            .is_ok_and(|i| i.messages == 0)
    })
    .await;
    consumer.stop(Duration::from_secs(5)).await;
    assert!(
        !seen.lock().unwrap().contains(&u64::MAX),
        "a message that was never published"
    );
    assert_eq!(
        mismatched.load(Ordering::SeqCst),
        0,
        "a message whose message_id is not the one it was published with"
    );
    let received = received.load(Ordering::SeqCst);
    let distinct = seen.lock().unwrap().len() as u64;
    eprintln!(
        "bulk publish read back: {received} messages, {distinct} distinct message_ids, \
         {} copies (same message_id)",
        received - distinct
    );
    broker.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault injection (stops RabbitMQ for 30 s): bash scripts/fault.sh"]
async fn the_broker_away_for_30_s_the_service_stays_up_unready_then_publishes_what_became_due() {
    let (env, _timing) = fault_support::env(
        "the_broker_away_for_30_s_the_service_stays_up_unready_then_publishes_what_became_due",
        true,
    );
    let stages = stage("a", &[], "120s", 3) + &stage("b", &["a"], "120s", 3);
    let config = env.config(&[("a", NO_ARGS), ("b", NO_ARGS)], &managed_once(&stages));
    let mut svc = Service::start(&config, env.dir.path(), "svc").await;
    svc.ready().await;
    let client = env.client().await;
    let (a_jobs, _ha) = client
        .worker("a", Duration::from_millis(20), |_| Act::Complete)
        .await;
    let (b_jobs, _hb) = client
        .worker("b", Duration::from_millis(20), |_| Act::Complete)
        .await;
    // Before: the pipeline works.
    env.insert_domains("before", 2);
    fault_support::all_completed(&env, 2, Duration::from_secs(60)).await;

    let app = RabbitApp::stop();
    let stopped = Instant::now();
    let (status, body) = ready_until(
        svc.port,
        "503 naming rabbitmq unhealthy",
        Duration::from_secs(30),
        |s, b| s == 503 && b["checks"]["rabbitmq"] == "unhealthy",
    )
    .await;
    eprintln!(
        "/ready {status} {:.1?} after stop_app: {body}",
        stopped.elapsed()
    );
    assert_eq!(body["status"], "not ready");
    assert_eq!(body["checks"]["database"], "healthy", "{body}");

    // Work becomes due during the outage: the workflows are created (PostgreSQL is
    // up), their stage-1 jobs cannot go out.
    env.insert_domains("outage", 5);
    eventually(
        "7 workflows in the database",
        Duration::from_secs(30),
        async || fault_support::count(&env, "SELECT count(*) FROM orchestratorm8_workflow") == 7,
    )
    .await;
    // The service stays up and unready for the whole outage.
    while stopped.elapsed() < Duration::from_secs(30) {
        let (h, _) = http_get(svc.port, "/health")
            .await
            .expect("/health answers");
        assert_eq!(h, 200);
        let (s, b) = ready(svc.port).await.expect("/ready answers");
        assert!(
            s == 503 && b["checks"]["rabbitmq"] == "unhealthy",
            "{s} {b}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Nothing went out during the outage. (The test workers cannot tell: the stopped
    // broker cuts them off too.) The database can: a job is marked running only once
    // the broker confirmed it, so the outage's 5 stage-1 attempts are all still
    // pending; one marked running would be a job the service believes sent into the
    // void (it would come back only when its 120 s time-out expired).
    let outage_stage_a = |status: &str| {
        fault_support::count(
            &env,
            &format!(
                "SELECT count(*) FROM orchestratorm8_stage_run s \
                 JOIN orchestratorm8_workflow_domain d USING (workflow_id) \
                 WHERE d.name LIKE '%.outage.example.com' AND s.stage = 'a' \
                 AND s.status = '{status}'"
            ),
        )
    };
    assert_eq!(
        outage_stage_a("pending"),
        5,
        "nothing went out during the outage"
    );
    assert_eq!(
        outage_stage_a("running"),
        0,
        "nothing went out during the outage"
    );
    app.start();
    let started = Instant::now();
    svc.ready().await;
    eprintln!("ready again {:.1?} after start_app", started.elapsed());
    fault_support::all_completed(&env, 7, Duration::from_secs(120)).await;
    eprintln!(
        "the 5 workflows due during the outage completed {:.1?} after start_app",
        started.elapsed()
    );
    assert_eq!(Outcome::read(&env), Outcome::clean(7));
    let a = a_jobs.lock().unwrap().clone();
    let b = b_jobs.lock().unwrap().clone();
    assert_eq!(a.len(), 7, "one stage-1 job per workflow: {a:?}");
    assert_eq!(b.len(), 7, "one stage-2 job per workflow: {b:?}");
    assert_eq!(
        a.iter()
            .map(|j| j.workflow_id)
            .collect::<HashSet<_>>()
            .len(),
        7
    );
    let (code, _) = svc.terminate();
    assert_eq!(code, Some(0), "{}", svc.logs());
    fault_support::keep_logs(&env, "broker_away");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault injection (raises a RabbitMQ memory alarm): bash scripts/fault.sh"]
async fn a_memory_alarm_pauses_publishing_ready_stays_200_with_a_warning_then_jobs_go_out() {
    /// How long the alarm lasts: less than the publish deadline
    /// (`RabbitMQ.pool.connection_timeout`, 30 s), so a publish that waits never fails.
    const ALARM: Duration = Duration::from_secs(12);
    let (env, _timing) = fault_support::env(
        "a_memory_alarm_pauses_publishing_ready_stays_200_with_a_warning_then_jobs_go_out",
        true,
    );
    let config = env.config(
        &[("a", NO_ARGS)],
        &managed_once(&stage("a", &[], "120s", 3)),
    );
    let mut svc = Service::start(&config, env.dir.path(), "svc").await;
    svc.ready().await;
    let client = env.client().await;
    let (jobs, _h) = client
        .worker("a", Duration::from_millis(20), |_| Act::Complete)
        .await;

    let alarm = MemoryAlarm::raise();
    let raised = Instant::now();
    env.insert_domains("alarm", 3);
    eventually(
        "3 workflows in the database",
        Duration::from_secs(30),
        async || fault_support::count(&env, "SELECT count(*) FROM orchestratorm8_workflow") == 3,
    )
    .await;
    // During the alarm (the scenario lasts ALARM): the service stays ready, nothing
    // goes out; what /ready and /metrics say about the blocked broker is recorded.
    let (mut warned, mut gauge) = (None, false);
    while raised.elapsed() < ALARM {
        let (s, b) = ready(svc.port).await.expect("/ready answers");
        assert_eq!(
            s, 200,
            "a blocked broker does not make the service unready: {b}"
        );
        assert_eq!(b["checks"]["rabbitmq"], "healthy", "{b}");
        if warned.is_none() && b.get("warnings").is_some() {
            warned = Some((raised.elapsed(), b));
        }
        let text = http_get(svc.port, "/metrics").await.unwrap().1;
        gauge |= metric(&text, "orchestratorm8_amqp_blocked") == Some(1.0);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        jobs.lock().unwrap().is_empty(),
        "published during the alarm"
    );
    alarm.clear();
    let cleared = Instant::now();
    fault_support::all_completed(&env, 3, Duration::from_secs(60)).await;
    eprintln!(
        "3 workflows completed {:.1?} after the alarm cleared",
        cleared.elapsed()
    );
    assert_eq!(Outcome::read(&env), Outcome::clean(3));
    // The waiting publish completed: one job per workflow, never failed and retried.
    let got = jobs.lock().unwrap().clone();
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got.iter().all(|j| j.attempt == 1));
    let logs = svc.logs();
    assert!(
        !logs.contains("publishing stage jobs failed"),
        "the publish failed instead of waiting:\n{logs}"
    );
    let (_, body) = ready(svc.port).await.unwrap();
    assert!(body.get("warnings").is_none(), "{body}");
    let text = http_get(svc.port, "/metrics").await.unwrap().1;
    assert_eq!(
        metric(&text, "orchestratorm8_amqp_blocked"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "orchestratorm8_stage_publishes_total{stage=\"a\"}"),
        Some(3.0),
        "{text}"
    );
    let (code, _) = svc.terminate();
    assert_eq!(code, Some(0), "{}", svc.logs());
    fault_support::keep_logs(&env, "memory_alarm");

    // What /ready and /metrics said during the alarm (docs/HTTP.md): checked last, so
    // that a failure here comes after the recovery above was proven.
    let Some((after, body)) = warned else {
        panic!(
            "during the {ALARM:?} memory alarm /ready never carried the \"rabbitmq is blocking \
             publishers\" warning and orchestratorm8_amqp_blocked was {} 1: the service never \
             learnt that RabbitMQ blocked it (connection.blocked not received; RabbitMQ sends it \
             only to clients that announce the capability \"connection.blocked\" in their \
             client properties). Work still resumed when the alarm cleared.",
            if gauge { "" } else { "never" }
        );
    };
    eprintln!("/ready warned {after:.1?} after the alarm: {body}");
    assert!(
        body["warnings"][0]
            .as_str()
            .unwrap_or("")
            .contains("blocking publishers"),
        "{body}"
    );
    assert!(
        gauge,
        "orchestratorm8_amqp_blocked never 1 during the alarm"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fault injection (stops RabbitMQ for 10 s): bash scripts/fault.sh"]
async fn a_notification_written_while_the_broker_is_away_is_relayed_once_it_returns() {
    let (env, _timing) = fault_support::env(
        "a_notification_written_while_the_broker_is_away_is_relayed_once_it_returns",
        true,
    );
    // One stage whose worker takes the job and never reports: the attempt times out
    // after 5 s with none left, and the workflow fails.
    let stages = stage("a", &[], "5s", 1);
    let config = env.config(&[("a", NO_ARGS)], &managed_once(&stages));
    let mut svc = Service::start(&config, env.dir.path(), "svc").await;
    svc.ready().await;
    let client = env.client().await;
    let (notes, _hn) = client.notifications().await;
    let (a_jobs, _ha) = client
        .worker("a", Duration::from_millis(20), |_| Act::Ignore)
        .await;
    env.insert_domains("relay", 1);
    eventually(
        "the stage-1 job taken",
        Duration::from_secs(30),
        async || !a_jobs.lock().unwrap().is_empty(),
    )
    .await;
    let workflow = a_jobs.lock().unwrap()[0].workflow_id.to_string();

    let app = RabbitApp::stop();
    let stopped = Instant::now();
    // The time-out fails the workflow while the broker is away (a database-only
    // transition); its notification is written to the outbox in the same transaction.
    let failed = format!(
        "SELECT count(*) FROM orchestratorm8_workflow WHERE id = '{workflow}' AND status = 'failed'"
    );
    eventually(
        "the workflow failed during the outage",
        Duration::from_secs(30),
        async || fault_support::count(&env, &failed) == 1,
    )
    .await;
    let row = env.psql("SELECT id FROM orchestratorm8_outbox");
    assert_eq!(
        row.lines().count(),
        1,
        "one outbox row, the failure notification: {row:?}"
    );
    // It stays there while the broker is away (the relay keeps trying).
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(stopped.elapsed())).await;
    assert_eq!(env.psql("SELECT id FROM orchestratorm8_outbox"), row);

    app.start();
    let started = Instant::now();
    svc.ready().await;
    eventually(
        "the outbox relayed and emptied",
        Duration::from_secs(60),
        async || fault_support::count(&env, "SELECT count(*) FROM orchestratorm8_outbox") == 0,
    )
    .await;
    let of_workflow = || {
        notes
            .lock()
            .unwrap()
            .iter()
            .filter(|m| String::from_utf8_lossy(&m.body).contains(&workflow))
            .cloned()
            .collect::<Vec<_>>()
    };
    eventually(
        "the failure notification received",
        Duration::from_secs(30),
        async || !of_workflow().is_empty(),
    )
    .await;
    eprintln!(
        "failure notification relayed {:.1?} after start_app",
        started.elapsed()
    );
    let got = of_workflow();
    assert_eq!(got.len(), 1, "exactly one copy: {got:?}");
    assert!(
        got[0].routing_key.starts_with("app.error."),
        "{}",
        got[0].routing_key
    );
    assert_eq!(
        got[0].message_id.as_deref(),
        Some(row.as_str()),
        "its message_id is the outbox row's id"
    );
    let (code, _) = svc.terminate();
    assert_eq!(code, Some(0), "{}", svc.logs());
    fault_support::keep_logs(&env, "relay_broker_away");
}
