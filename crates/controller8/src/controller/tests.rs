//! Controller tests: the whole loop (`Controller::run`) on the in-memory repositories
//! and the test broker, in tokio's paused time with a clock that follows it.

use std::sync::Arc;
use std::time::Duration;

use amqp8::memory::MemoryBroker;
use amqp8::{Broker, OutgoingMessage};
use config8::Settings;
use db8::{DomainRepository, MemoryStore, WorkflowRepository};
use model8::{StageOutcome, WorkflowStatus};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{Controller, Deps};
use crate::clock::Clock;
use crate::error::ControllerError;
use crate::metrics::Metrics;
use crate::role::{Role, RoleWatch};
use crate::testkit::{
    NOTIFY_QUEUE, TokioClock, add_domain, bootstrap, bounded, chain, confirmed, declare,
    publish_report, q, rk, stage, take_jobs,
};
use crate::topology::{
    DEAD_LETTER_QUEUE, KICKOFF_ROUTING_KEY, NOTIFY_COMPLETED_KEY, NOTIFY_FAILED_KEY,
};
use crate::tuning::Tuning;

struct Running {
    broker: MemoryBroker,
    role: RoleWatch,
    settings: tokio::sync::watch::Sender<Arc<Settings>>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ControllerError>>,
    clock: Arc<TokioClock>,
}

impl Running {
    async fn stop(mut self) -> Result<(), ControllerError> {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("stops within its grace period")
            .unwrap()
    }
}

/// A broker with the topology of `settings` declared, as the controller declares it.
async fn declared(settings: &Settings) -> MemoryBroker {
    let broker = MemoryBroker::new();
    declare(&broker, settings).await;
    broker
}

async fn start(settings: Settings, store: &MemoryStore, leader: bool, tuning: Tuning) -> Running {
    let broker = declared(&settings).await;
    start_with_broker(settings, store, leader, tuning, broker)
}

/// Starts a controller (the chain, no leader election) while its broker is down.
fn start_during_a_broker_outage(store: &MemoryStore) -> Running {
    let broker = MemoryBroker::new();
    broker.set_outage(true);
    start_with_broker(
        no_election(chain()),
        store,
        false,
        Tuning::default(),
        broker,
    )
}

fn start_with_broker(
    settings: Settings,
    store: &MemoryStore,
    leader: bool,
    tuning: Tuning,
    broker: MemoryBroker,
) -> Running {
    let (settings_tx, settings_rx) = tokio::sync::watch::channel(Arc::new(settings));
    let clock = Arc::new(TokioClock::new());
    let controller = Controller::with_tuning(
        Deps {
            domains: Arc::new(store.clone()),
            workflows: Arc::new(store.clone()),
            outbox: Arc::new(store.clone()),
            broker: broker.as_dyn(),
            leader: leader.then(|| Arc::new(store.clone()) as Arc<dyn db8::LeaderLock>),
            changes: Arc::new(store.clone()),
            clock: clock.clone(),
            settings: settings_rx,
            metrics: Arc::new(Metrics::new()),
            ring: Some(Arc::new(store.clone())),
        },
        tuning,
    )
    .unwrap();
    let role = controller.role();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(controller.run(async move {
        let _ = stopped.await;
    }));
    Running {
        broker,
        role,
        settings: settings_tx,
        stop: Some(stop),
        task,
        clock,
    }
}

/// Waits (in virtual time) until `f` holds, for at most `limit`.
async fn eventually(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if f().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Waits (in virtual time) until `role` is `want`, for at most `limit`.
async fn role_is(role: &RoleWatch, want: Role, what: &str, limit: Duration) {
    eventually(what, limit, async || *role.borrow() == want).await;
}

/// Waits (in virtual time) until `n` publishes with `routing_key` were confirmed, for
/// at most `limit`.
async fn confirmed_n(b: &MemoryBroker, routing_key: &str, n: usize, what: &str, limit: Duration) {
    eventually(what, limit, async || confirmed(b, routing_key) == n).await;
}

/// Waits (in virtual time) until `n` kick-offs were confirmed, for at most `limit`.
async fn kicked_off(b: &MemoryBroker, n: usize, what: &str, limit: Duration) {
    confirmed_n(b, KICKOFF_ROUTING_KEY, n, what, limit).await;
}

/// Waits `d` (virtual time): the kick-offs confirmed are still `n`.
async fn no_more_kick_offs(b: &MemoryBroker, n: usize, d: Duration) {
    tokio::time::sleep(d).await;
    assert_eq!(confirmed(b, KICKOFF_ROUTING_KEY), n);
}

/// Waits (in virtual time) until `n` notifications with `key` were published, for at
/// most `limit`.
async fn notified_n(b: &MemoryBroker, key: &str, n: usize, what: &str, limit: Duration) {
    eventually(what, limit, async || notified(b, key) == n).await;
}

/// A store holding one enabled domain, `example.com`.
async fn store_with_a_domain() -> MemoryStore {
    let store = MemoryStore::new();
    add_domain(&store, "example.com").await;
    store
}

fn no_election(mut s: Settings) -> Settings {
    s.leader_election.enabled = false;
    s
}

fn consuming(b: &MemoryBroker) -> bool {
    b.health().consumers.iter().any(|c| c.active)
}

#[tokio::test(start_paused = true)]
async fn bootstrap_kicks_off_on_none_to_some_exactly_once_per_transition() {
    let store = MemoryStore::new();
    let r = start(
        no_election(bootstrap(&[])),
        &store,
        false,
        Tuning::default(),
    )
    .await;
    let b = r.broker.clone();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        confirmed(&b, KICKOFF_ROUTING_KEY),
        0,
        "no domain, no kick-off"
    );
    assert!(
        b.health()
            .consumers
            .iter()
            .all(|c| c.queue == crate::topology::RING_QUEUE),
        "bootstrap mode consumes nothing but its ring queue"
    );

    // none -> some: published at once (change feed), not at the 15-minute tick.
    let inserted = tokio::time::Instant::now();
    let d = add_domain(&store, "example.com").await;
    kicked_off(&b, 1, "first kick-off", secs(2)).await;
    assert!(inserted.elapsed() < Duration::from_secs(2));
    let m = b.take(&q("asmm8")).remove(0);
    assert_eq!(m.exchange, "cptm8");
    assert_eq!(m.routing_key, KICKOFF_ROUTING_KEY);
    let env = model8::AmqpM8Message::<serde_json::Value>::from_slice(&m.body).unwrap();
    assert_eq!(env.channel, KICKOFF_ROUTING_KEY);
    assert_eq!(env.source, "orchestratorm8");
    assert_eq!(env.payload, None);
    assert!(
        !String::from_utf8(m.body.clone())
            .unwrap()
            .contains("payload")
    );

    // some -> more: nothing; through two 15-minute ticks: nothing.
    add_domain(&store, "example.org").await;
    no_more_kick_offs(&b, 1, Duration::from_secs(31 * 60)).await;

    // some -> none -> some: exactly one more.
    let all = DomainRepository::list(&store).await.unwrap();
    for x in &all {
        store.set_enabled(x.id, false).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    store.set_enabled(d.id, true).await.unwrap();
    kicked_off(&b, 2, "second kick-off", secs(2)).await;
    no_more_kick_offs(&b, 2, Duration::from_secs(20 * 60)).await;
    r.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn bootstrap_kicks_off_at_start_and_a_full_queue_means_busy() {
    // The Go file's asmm8 queue (x-max-length 1, reject-publish) already holds a job:
    // the kick-off is nacked, which means the pipeline is busy: not an error, no retry.
    let store = store_with_a_domain().await;
    let settings = no_election(bootstrap(&bounded(1)));
    let broker = declared(&settings).await;
    broker
        .publish(OutgoingMessage::new(
            "cptm8",
            KICKOFF_ROUTING_KEY,
            b"{}".to_vec(),
        ))
        .await
        .unwrap();
    let r = start_with_broker(
        settings.clone(),
        &store,
        false,
        Tuning::default(),
        broker.clone(),
    );
    tokio::time::sleep(Duration::from_secs(120)).await;
    let nacked = broker
        .published()
        .iter()
        .filter(|(_, o)| *o == amqp8::PublishOutcome::Nacked)
        .count();
    assert_eq!(nacked, 1, "one attempt, refused, not retried");
    r.stop().await.unwrap();

    // With room: published at start.
    let broker = declared(&settings).await;
    let r = start_with_broker(settings, &store, false, Tuning::default(), broker.clone());
    kicked_off(&broker, 1, "kick-off at start", secs(2)).await;
    r.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn bootstrap_with_leader_election_kicks_off_once_it_leads_and_again_after_a_failover() {
    // A replica starting alone waits out the takeover grace as a standby before it
    // leads (leader.rs): the domains it saw meanwhile must still get their kick-off.
    let store = store_with_a_domain().await;
    let settings = bootstrap(&[]);
    assert!(settings.leader_election.enabled);
    let broker = declared(&settings).await;
    let a = start_with_broker(
        settings.clone(),
        &store,
        true,
        Tuning::default(),
        broker.clone(),
    );
    role_is(&a.role, Role::Leader, "a leads", secs(10)).await;
    kicked_off(&broker, 1, "kick-off once a leads", secs(2)).await;

    // A second replica (its own lock session) stays a standby and publishes nothing
    // while a leads.
    let b = start_with_broker(
        settings.clone(),
        &store.handle(),
        true,
        Tuning::default(),
        broker.clone(),
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(*b.role.borrow(), Role::Standby);
    assert_eq!(confirmed(&broker, KICKOFF_ROUTING_KEY), 1);

    // a stops (releasing the lock): b leads and, like a restarted Go orchestrator,
    // kicks off once while domains are enabled; then nothing more.
    a.stop().await.unwrap();
    role_is(&b.role, Role::Leader, "b leads", secs(10)).await;
    kicked_off(&broker, 2, "kick-off once b leads", secs(2)).await;
    no_more_kick_offs(&broker, 2, Duration::from_secs(31 * 60)).await;
    b.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn bootstrap_retries_a_kick_off_the_broker_could_not_take() {
    let store = store_with_a_domain().await;
    let settings = no_election(bootstrap(&[]));
    let broker = declared(&settings).await;
    broker.fail_next_publishes(3);
    let r = start_with_broker(settings, &store, false, Tuning::default(), broker.clone());
    kicked_off(&broker, 1, "kick-off after the failures", secs(60)).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        broker.messages_in(&q("asmm8")).len(),
        1,
        "exactly one kick-off"
    );
    r.stop().await.unwrap();
}

/// Workers for `stages`: take their jobs and report them completed on `cptm8`.
fn workers(broker: MemoryBroker, stages: &'static [&'static str]) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            for s in stages {
                for job in take_jobs(&broker, s) {
                    publish_report(&broker, &job, StageOutcome::Completed).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

fn notified(b: &MemoryBroker, key: &str) -> usize {
    b.messages_in(NOTIFY_QUEUE)
        .iter()
        .filter(|m| m.routing_key == key)
        .count()
}

#[tokio::test(start_paused = true)]
async fn managed_mode_runs_workflows_to_completion_driven_by_events_alone() {
    let store = MemoryStore::new();
    // No polling: only wake-ups can make progress quickly.
    let tuning = Tuning {
        due_poll: Duration::from_secs(3600),
        create_batch: 4,
        publish_batch: 4,
        ..Tuning::default()
    };
    let r = start(no_election(chain()), &store, false, tuning).await;
    let b = r.broker.clone();
    eventually("consumer started", Duration::from_secs(5), async || {
        consuming(&b)
    })
    .await;
    let c = &b.health().consumers[0];
    assert_eq!(c.queue, "qorchestratorm8");
    assert!(!c.autoack);
    let w = workers(b.clone(), &["a", "b", "c"]);
    let started = tokio::time::Instant::now();
    for i in 0..10 {
        add_domain(&store, &format!("d{i}.example.com")).await;
    }
    notified_n(
        &b,
        NOTIFY_COMPLETED_KEY,
        10,
        "10 workflows completed",
        secs(10),
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(10));
    let all = WorkflowRepository::list(&store, &Default::default())
        .await
        .unwrap();
    assert_eq!(all.len(), 10);
    assert!(all.iter().all(|v| v.status == WorkflowStatus::Completed));
    for s in ["a", "b", "c"] {
        assert_eq!(
            confirmed(&b, &rk(s)),
            10,
            "stage {s} published once per workflow"
        );
    }
    // Every result was acknowledged.
    assert!(b.messages_in("qorchestratorm8").is_empty());
    assert_eq!(b.unacked("qorchestratorm8"), 0);
    w.abort();
    r.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_malformed_result_is_dead_lettered_and_the_service_keeps_running() {
    let store = MemoryStore::new();
    let r = start(no_election(chain()), &store, false, Tuning::default()).await;
    let b = r.broker.clone();
    eventually("consumer started", Duration::from_secs(5), async || {
        consuming(&b)
    })
    .await;
    b.publish(OutgoingMessage::new(
        "cptm8",
        "cptm8.orchestratorm8.a.completed",
        b"{\"not\": \"an envelope\"".to_vec(),
    ))
    .await
    .unwrap();
    eventually("dead-lettered", Duration::from_secs(5), async || {
        b.messages_in(DEAD_LETTER_QUEUE).len() == 1
    })
    .await;
    let dead = b.messages_in(DEAD_LETTER_QUEUE).remove(0);
    assert!(
        dead.headers
            .get(amqp8::headers::DEATH_REASON)
            .is_some_and(|r| r.contains("malformed")),
        "{dead:?}"
    );
    assert!(b.messages_in("qorchestratorm8").is_empty());
    // Still working.
    let w = workers(b.clone(), &["a", "b", "c"]);
    add_domain(&store, "example.com").await;
    notified_n(&b, NOTIFY_COMPLETED_KEY, 1, "completed", secs(10)).await;
    w.abort();
    r.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_interval_is_read_live() {
    let store = MemoryStore::new();
    // With leader election: its periodic checks must not count as ticks.
    let mut s = crate::testkit::managed(vec![stage("a", &[])]);
    assert!(s.leader_election.enabled);
    s.scheduler.interval = Duration::from_secs(3600);
    s.workflow.rescan_after = Duration::ZERO;
    let r = start(s, &store, true, Tuning::default()).await;
    let b = r.broker.clone();
    eventually("consumer", Duration::from_secs(5), async || consuming(&b)).await;
    // It leads once the takeover grace has passed (leader.rs).
    role_is(&r.role, Role::Leader, "leads", secs(10)).await;
    add_domain(&store, "example.com").await;
    confirmed_n(&b, &rk("a"), 1, "first job", secs(2)).await;
    let job = take_jobs(&b, "a").remove(0);
    publish_report(&b, &job, StageOutcome::Completed).await;
    notified_n(&b, NOTIFY_COMPLETED_KEY, 1, "completed", secs(2)).await;
    // The next workflow waits for the next tick: an hour away...
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(confirmed(&b, &rk("a")), 1);
    // ...until the interval is shortened live.
    let old = r.settings.borrow().clone();
    let mut s = (*old).clone();
    s.scheduler.interval = Duration::from_secs(120);
    let report = config8::diff(&old, &s);
    assert_eq!(report.live, ["Scheduler.interval"]);
    assert!(!report.needs_restart(), "{report:?}");
    r.settings.send_replace(Arc::new(s));
    confirmed_n(&b, &rk("a"), 2, "second job", secs(70)).await;
    assert!(r.clock.now() > crate::testkit::t0());
    r.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn timeouts_are_detected_without_any_event() {
    let store = MemoryStore::new();
    let mut s = no_election(crate::testkit::managed(vec![stage("a", &[])]));
    s.workflow.stages[0].timeout = Duration::from_secs(30);
    s.workflow.stages[0].max_attempts = 2;
    let r = start(
        s,
        &store,
        false,
        Tuning {
            due_poll: Duration::from_secs(3600),
            ..Tuning::default()
        },
    )
    .await;
    let b = r.broker.clone();
    add_domain(&store, "example.com").await;
    confirmed_n(&b, &rk("a"), 1, "attempt 1", secs(2)).await;
    // Deadline 30 s, backoff 5..10 s: attempt 2 by ~41 s, failure by ~72 s.
    confirmed_n(&b, &rk("a"), 2, "attempt 2", secs(45)).await;
    notified_n(&b, NOTIFY_FAILED_KEY, 1, "failed", secs(45)).await;
    let all = WorkflowRepository::list(&store, &Default::default())
        .await
        .unwrap();
    assert_eq!(all[0].status, WorkflowStatus::Failed);
    r.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_full_stage_queue_drains_as_its_worker_reports() {
    let store = MemoryStore::new();
    let mut s = no_election(crate::testkit::managed(vec![stage("a", &[])]));
    s.orchestrator
        .queues
        .insert("a".into(), crate::testkit::section("a", &bounded(1)));
    let r = start(s, &store, false, Tuning::default()).await;
    let b = r.broker.clone();
    for i in 0..5 {
        add_domain(&store, &format!("d{i}.example.com")).await;
    }
    // A slow worker: one job at a time, reported 3 s after it was taken.
    let wb = b.clone();
    let worker = tokio::spawn(async move {
        loop {
            if let Some(job) = take_jobs(&wb, "a").pop() {
                tokio::time::sleep(Duration::from_secs(3)).await;
                publish_report(&wb, &job, StageOutcome::Completed).await;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    notified_n(&b, NOTIFY_COMPLETED_KEY, 5, "all drained", secs(60)).await;
    assert_eq!(confirmed(&b, &rk("a")), 5, "each job accepted exactly once");
    worker.abort();
    r.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn only_the_leader_publishes_and_a_standby_takes_over() {
    let store = MemoryStore::new();
    let settings = chain();
    assert!(settings.leader_election.enabled);
    let a = start(settings.clone(), &store, true, Tuning::default()).await;
    let (ra, ba) = (a.role.clone(), a.broker.clone());
    role_is(&ra, Role::Leader, "a leads", secs(5)).await;
    let b = start(settings, &store.handle(), true, Tuning::default()).await;
    let (rb, bb) = (b.role.clone(), b.broker.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(*rb.borrow(), Role::Standby);

    add_domain(&store, "one.example.com").await;
    confirmed_n(&ba, &rk("a"), 1, "a publishes", secs(2)).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(confirmed(&bb, &rk("a")), 0, "the standby publishes nothing");
    assert_eq!(
        WorkflowRepository::list(&store, &Default::default())
            .await
            .unwrap()
            .len(),
        1
    );

    // The leader stops (and releases the lock): the standby takes over.
    a.stop().await.unwrap();
    role_is(&rb, Role::Leader, "b leads", secs(5)).await;
    add_domain(&store, "two.example.com").await;
    confirmed_n(&bb, &rk("a"), 1, "b publishes", secs(5)).await;
    b.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn losing_the_lock_stops_publishing_at_the_next_check() {
    let store = MemoryStore::new();
    let other = store.handle();
    let a = start(chain(), &store, true, Tuning::default()).await;
    let (ra, ba) = (a.role.clone(), a.broker.clone());
    role_is(&ra, Role::Leader, "a leads", secs(5)).await;
    // The session ends and another replica grabs the lock at once.
    store.revoke_leadership();
    assert!(db8::LeaderLock::try_acquire(&other).await.unwrap());
    role_is(&ra, Role::Standby, "a steps down", secs(3)).await;
    add_domain(&store, "example.com").await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(confirmed(&ba, &rk("a")), 0);
    assert!(
        WorkflowRepository::list(&store, &Default::default())
            .await
            .unwrap()
            .is_empty()
    );
    a.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn start_up_waits_for_the_broker_and_shutdown_is_prompt() {
    let store = MemoryStore::new();
    let r = start_during_a_broker_outage(&store);
    let broker = r.broker.clone();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(broker.topology().queues.is_empty());
    broker.set_outage(false);
    eventually(
        "declared after the outage",
        Duration::from_secs(60),
        async || consuming(&broker),
    )
    .await;
    let t = broker.topology();
    for name in ["qorchestratorm8", DEAD_LETTER_QUEUE, "qa", "qb", "qc"] {
        assert!(t.queues.iter().any(|q| q.name == name), "{name} in {t:?}");
    }
    r.stop().await.unwrap();

    // Shutdown while still waiting for the broker.
    let r = start_during_a_broker_outage(&store);
    tokio::time::sleep(Duration::from_secs(5)).await;
    r.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_refused_topology_is_a_fatal_error() {
    let store = MemoryStore::new();
    let broker = MemoryBroker::new();
    // qa exists with other arguments: RabbitMQ refuses the redeclaration.
    broker
        .declare(&amqp8::Topology {
            queues: vec![amqp8::QueueDecl {
                name: q("a"),
                arguments: [("x-max-length".to_owned(), amqp8::ArgValue::Int(5))].into(),
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    let mut r = start_with_broker(
        no_election(chain()),
        &store,
        false,
        Tuning::default(),
        broker,
    );
    let e = tokio::time::timeout(Duration::from_secs(10), &mut r.task)
        .await
        .expect("fails at once")
        .unwrap()
        .unwrap_err();
    assert!(matches!(e, ControllerError::Topology(_)), "{e}");
}

#[tokio::test]
async fn an_invalid_pipeline_is_a_configuration_error() {
    let store = MemoryStore::new();
    let mut s = chain();
    s.workflow.stages[0].depends_on = vec!["c".into()];
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(s));
    let e = Controller::new(Deps {
        domains: Arc::new(store.clone()),
        workflows: Arc::new(store.clone()),
        outbox: Arc::new(store.clone()),
        broker: MemoryBroker::new().as_dyn(),
        leader: None,
        changes: Arc::new(store.clone()),
        clock: Arc::new(crate::clock::SystemClock),
        settings: rx,
        metrics: Arc::new(Metrics::new()),
        ring: None,
    })
    .unwrap_err();
    assert!(
        matches!(e, ControllerError::Config(ref m) if m.contains("cycle")),
        "{e}"
    );
}
