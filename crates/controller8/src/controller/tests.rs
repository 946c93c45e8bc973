//! Controller tests: the whole loop (`Controller::run`) on the in-memory repositories
//! and the test broker, in tokio's paused time with a clock that follows it.

use std::sync::Arc;
use std::time::Duration;

use amqp8::Decision;
use config8::Settings;
use db8::{DomainRepository, MemoryStore, WorkflowRepository};
use model8::{PostDomain8, StageOutcome, WorkflowStatus};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{Controller, Deps};
use crate::clock::Clock;
use crate::error::ControllerError;
use crate::metrics::Metrics;
use crate::role::{Role, RoleWatch};
use crate::testkit::{TestBroker, TokioClock, chain, rk, stage};
use crate::topology::{
    DEAD_LETTER_EXCHANGE, DEAD_LETTER_ROUTING_KEY, KICKOFF_ROUTING_KEY, NOTIFY_COMPLETED_KEY,
};
use crate::tuning::Tuning;

struct Running {
    broker: Arc<TestBroker>,
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

fn start(settings: Settings, store: &MemoryStore, leader: bool, tuning: Tuning) -> Running {
    start_with_broker(
        settings,
        store,
        leader,
        tuning,
        Arc::new(TestBroker::default()),
    )
}

fn start_with_broker(
    settings: Settings,
    store: &MemoryStore,
    leader: bool,
    tuning: Tuning,
    broker: Arc<TestBroker>,
) -> Running {
    let (settings_tx, settings_rx) = tokio::sync::watch::channel(Arc::new(settings));
    let clock = Arc::new(TokioClock::new());
    let controller = Controller::with_tuning(
        Deps {
            domains: Arc::new(store.clone()),
            workflows: Arc::new(store.clone()),
            broker: broker.clone(),
            leader: leader.then(|| Arc::new(store.clone()) as Arc<dyn db8::LeaderLock>),
            changes: Arc::new(store.clone()),
            clock: clock.clone(),
            settings: settings_rx,
            metrics: Arc::new(Metrics::new()),
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

async fn add(store: &MemoryStore, name: &str) -> model8::Domain8 {
    store
        .insert(&PostDomain8 {
            name: name.into(),
            companyname: "ACME".into(),
            enabled: true,
        })
        .await
        .unwrap()
}

fn no_election(mut s: Settings) -> Settings {
    s.leader_election.enabled = false;
    s
}

#[tokio::test(start_paused = true)]
async fn bootstrap_kicks_off_on_none_to_some_exactly_once_per_transition() {
    let store = MemoryStore::new();
    let r = start(
        no_election(Settings::default()),
        &store,
        false,
        Tuning::default(),
    );
    let b = r.broker.clone();
    eventually("topology declared", Duration::from_secs(5), async || {
        !b.declared.lock().unwrap().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(b.count(KICKOFF_ROUTING_KEY), 0, "no domain, no kick-off");

    // none -> some: published at once (change feed), not at the 15-minute tick.
    let inserted = tokio::time::Instant::now();
    let d = add(&store, "example.com").await;
    eventually("first kick-off", Duration::from_secs(2), async || {
        b.count(KICKOFF_ROUTING_KEY) == 1
    })
    .await;
    assert!(inserted.elapsed() < Duration::from_secs(2));
    let m = b.take(KICKOFF_ROUTING_KEY).remove(0);
    assert_eq!(m.exchange, "cptm8");
    let env = model8::AmqpM8Message::<serde_json::Value>::from_slice(&m.body).unwrap();
    assert_eq!(env.channel, KICKOFF_ROUTING_KEY);
    assert_eq!(env.payload, None);
    assert!(
        !String::from_utf8(m.body.clone())
            .unwrap()
            .contains("payload")
    );

    // some -> more: nothing; through a few ticks: nothing.
    add(&store, "example.org").await;
    tokio::time::sleep(Duration::from_secs(31 * 60)).await;
    assert_eq!(b.count(KICKOFF_ROUTING_KEY), 1);

    // some -> none -> some: exactly one more.
    let all = DomainRepository::list(&store).await.unwrap();
    for x in &all {
        store.set_enabled(x.id, false).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    store.set_enabled(d.id, true).await.unwrap();
    eventually("second kick-off", Duration::from_secs(2), async || {
        b.count(KICKOFF_ROUTING_KEY) == 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(20 * 60)).await;
    assert_eq!(b.count(KICKOFF_ROUTING_KEY), 2);
    r.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn bootstrap_kicks_off_at_start_when_domains_exist_and_a_full_queue_is_not_an_error() {
    let store = MemoryStore::new();
    add(&store, "example.com").await;
    let broker = Arc::new(TestBroker::default());
    broker.route(KICKOFF_ROUTING_KEY, crate::testkit::Route::Queue(Some(0)));
    let r = start_with_broker(
        no_election(Settings::default()),
        &store,
        false,
        Tuning::default(),
        broker.clone(),
    );
    // Refused (pipeline busy): not retried, not an error.
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(broker.count(KICKOFF_ROUTING_KEY), 0);
    r.stop().await.unwrap();

    let store = MemoryStore::new();
    add(&store, "example.com").await;
    let r = start(
        no_election(Settings::default()),
        &store,
        false,
        Tuning::default(),
    );
    let b = r.broker.clone();
    eventually("kick-off at start", Duration::from_secs(2), async || {
        b.count(KICKOFF_ROUTING_KEY) == 1
    })
    .await;
    r.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn bootstrap_retries_a_kick_off_the_broker_could_not_take() {
    let store = MemoryStore::new();
    add(&store, "example.com").await;
    let broker = Arc::new(TestBroker::default());
    broker.route(KICKOFF_ROUTING_KEY, crate::testkit::Route::Down);
    let r = start_with_broker(
        no_election(Settings::default()),
        &store,
        false,
        Tuning::default(),
        broker.clone(),
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    broker.route(KICKOFF_ROUTING_KEY, crate::testkit::Route::Queue(None));
    eventually(
        "kick-off after the outage",
        Duration::from_secs(60),
        async || broker.count(KICKOFF_ROUTING_KEY) == 1,
    )
    .await;
    r.stop().await.unwrap();
}

/// A worker for every stage of `stages`: takes its jobs and reports them completed.
fn workers(broker: Arc<TestBroker>, stages: &'static [&'static str]) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            for s in stages {
                for job in broker.take_jobs(&rk(s)) {
                    if broker.consumer().is_some() {
                        assert_eq!(
                            broker_report(&broker, &job, StageOutcome::Completed).await,
                            Decision::Ack
                        );
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

async fn broker_report(
    broker: &TestBroker,
    job: &model8::StageJob,
    outcome: StageOutcome,
) -> Decision {
    let key = outcome.routing_key(&job.stage);
    let body = model8::AmqpM8Message::with_source(
        key.clone(),
        Some(model8::StageResult {
            workflow_id: job.workflow_id,
            stage: job.stage.clone(),
            attempt: job.attempt,
            detail: None,
        }),
        "worker",
    )
    .to_vec()
    .unwrap();
    broker.deliver(&key, body).await
}

#[tokio::test(start_paused = true)]
async fn managed_mode_runs_workflows_to_completion_driven_by_events_alone() {
    let store = MemoryStore::new();
    // No polling: only wake-ups can make progress quickly.
    let tuning = Tuning {
        due_poll: Duration::from_secs(3600),
        batch_size: 4,
        ..Tuning::default()
    };
    let r = start(no_election(chain()), &store, false, tuning);
    let b = r.broker.clone();
    eventually("consumer started", Duration::from_secs(5), async || {
        b.consumer().is_some()
    })
    .await;
    let (options, _) = b.consumer().unwrap();
    assert_eq!(options.queue, "qorchestratorm8");
    assert!(!options.autoack);
    assert_eq!(
        options.dead_letter,
        Some((
            DEAD_LETTER_EXCHANGE.to_owned(),
            DEAD_LETTER_ROUTING_KEY.to_owned()
        ))
    );
    let w = workers(b.clone(), &["a", "b", "c"]);
    let started = tokio::time::Instant::now();
    for i in 0..10 {
        add(&store, &format!("d{i}.example.com")).await;
    }
    eventually(
        "10 workflows completed",
        Duration::from_secs(10),
        async || b.count(NOTIFY_COMPLETED_KEY) == 10,
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(10));
    let all = WorkflowRepository::list(&store, &Default::default())
        .await
        .unwrap();
    assert_eq!(all.len(), 10);
    assert!(all.iter().all(|v| v.status == WorkflowStatus::Completed));
    for s in ["a", "b", "c"] {
        assert_eq!(b.count(&rk(s)), 10, "stage {s} published once per workflow");
    }
    w.abort();
    r.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_interval_is_read_live() {
    let store = MemoryStore::new();
    let mut s = no_election(crate::testkit::managed(vec![stage("a", &[])]));
    s.scheduler.interval = Duration::from_secs(3600);
    s.workflow.rescan_after = Duration::ZERO;
    let r = start(s, &store, false, Tuning::default());
    let b = r.broker.clone();
    eventually("consumer", Duration::from_secs(5), async || {
        b.consumer().is_some()
    })
    .await;
    add(&store, "example.com").await;
    eventually("first job", Duration::from_secs(2), async || {
        b.count(&rk("a")) == 1
    })
    .await;
    let job = b.take_jobs(&rk("a")).remove(0);
    broker_report(&b, &job, StageOutcome::Completed).await;
    // The next workflow waits for the next tick: an hour away...
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(b.count(&rk("a")), 1);
    // ...until the interval is shortened live.
    let mut s = (**r.settings.borrow()).clone();
    s.scheduler.interval = Duration::from_secs(120);
    r.settings.send_replace(Arc::new(s));
    eventually("second job", Duration::from_secs(70), async || {
        b.count(&rk("a")) == 2
    })
    .await;
    let _ = r.clock.now();
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
    );
    let b = r.broker.clone();
    add(&store, "example.com").await;
    eventually("attempt 1", Duration::from_secs(2), async || {
        b.count(&rk("a")) == 1
    })
    .await;
    // Deadline 30 s, backoff 5..10 s: attempt 2 by ~41 s, failure by ~72 s.
    eventually("attempt 2", Duration::from_secs(45), async || {
        b.count(&rk("a")) == 2
    })
    .await;
    eventually("failed", Duration::from_secs(45), async || {
        b.count(crate::topology::NOTIFY_FAILED_KEY) == 1
    })
    .await;
    let all = WorkflowRepository::list(&store, &Default::default())
        .await
        .unwrap();
    assert_eq!(all[0].status, WorkflowStatus::Failed);
    r.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn only_the_leader_publishes_and_a_standby_takes_over() {
    let store = MemoryStore::new();
    let settings = chain();
    assert!(settings.leader_election.enabled);
    let a = start(settings.clone(), &store, true, Tuning::default());
    let (ra, ba) = (a.role.clone(), a.broker.clone());
    eventually("a leads", Duration::from_secs(5), async || {
        *ra.borrow() == Role::Leader
    })
    .await;
    let b = start(settings, &store.handle(), true, Tuning::default());
    let (rb, bb) = (b.role.clone(), b.broker.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(*rb.borrow(), Role::Standby);

    add(&store, "one.example.com").await;
    eventually("a publishes", Duration::from_secs(2), async || {
        ba.count(&rk("a")) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(bb.count(&rk("a")), 0, "the standby publishes nothing");
    assert_eq!(
        WorkflowRepository::list(&store, &Default::default())
            .await
            .unwrap()
            .len(),
        1
    );

    // The leader stops (and releases the lock): the standby takes over.
    a.stop().await.unwrap();
    eventually("b leads", Duration::from_secs(5), async || {
        *rb.borrow() == Role::Leader
    })
    .await;
    add(&store, "two.example.com").await;
    eventually("b publishes", Duration::from_secs(5), async || {
        bb.count(&rk("a")) == 1
    })
    .await;
    b.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn losing_the_lock_stops_publishing_at_the_next_check() {
    let store = MemoryStore::new();
    let other = store.handle();
    let a = start(chain(), &store, true, Tuning::default());
    let (ra, ba) = (a.role.clone(), a.broker.clone());
    eventually("a leads", Duration::from_secs(5), async || {
        *ra.borrow() == Role::Leader
    })
    .await;
    // The session ends and another replica grabs the lock at once.
    store.revoke_leadership();
    assert!(db8::LeaderLock::try_acquire(&other).await.unwrap());
    eventually("a steps down", Duration::from_secs(3), async || {
        *ra.borrow() == Role::Standby
    })
    .await;
    add(&store, "example.com").await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(ba.count(&rk("a")), 0);
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
    let broker = Arc::new(TestBroker::default());
    *broker.down.lock().unwrap() = true;
    let r = start_with_broker(
        no_election(chain()),
        &store,
        false,
        Tuning::default(),
        broker.clone(),
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(broker.declared.lock().unwrap().is_empty());
    *broker.down.lock().unwrap() = false;
    eventually(
        "declared after the outage",
        Duration::from_secs(60),
        async || !broker.declared.lock().unwrap().is_empty(),
    )
    .await;
    let t = broker.declared.lock().unwrap()[0].clone();
    assert!(t.queues.iter().any(|q| q.name == "qorchestratorm8"));
    r.stop().await.unwrap();

    // Shutdown while still waiting for the broker.
    let broker = Arc::new(TestBroker::default());
    *broker.down.lock().unwrap() = true;
    let r = start_with_broker(
        no_election(chain()),
        &store,
        false,
        Tuning::default(),
        broker,
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    r.stop().await.unwrap();
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
        broker: Arc::new(TestBroker::default()),
        leader: None,
        changes: Arc::new(store.clone()),
        clock: Arc::new(crate::clock::SystemClock),
        settings: rx,
        metrics: Arc::new(Metrics::new()),
    })
    .unwrap_err();
    assert!(
        matches!(e, ControllerError::Config(ref m) if m.contains("cycle")),
        "{e}"
    );
}
