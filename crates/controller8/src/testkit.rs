//! Test support: a broker with queue semantics in memory, a clock that follows
//! tokio's (paused) time, and a harness assembling an engine over `db8::MemoryStore`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use amqp8::{
    AmqpError, Broker, BrokerHealth, ConsumeOptions, ConsumerControl, ConsumerHandle, Decision,
    Delivery, Handler, OutgoingMessage, PoolStats, PublishOutcome, QueueInfo, Topology,
};
use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use config8::{SchedulerMode, Settings, StageSettings};
use db8::{DomainRepository, MemoryStore};
use model8::{AmqpM8Message, Domain8, PostDomain8, StageJob, StageOutcome, StageResult};
use tokio::sync::watch;

use crate::clock::{Clock, ManualClock};
use crate::engine::{Engine, EngineParts, lock};
use crate::metrics::Metrics;
use crate::role::Role;
use crate::tuning::Tuning;

/// How a routing key behaves when published to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// A queue with this many places (`x-max-length` + `reject-publish`); `None`: unbounded.
    Queue(Option<usize>),
    /// No queue bound.
    Unroutable,
    /// The broker is down.
    Down,
}

/// A broker in memory: every routing key is its own queue unless configured otherwise.
#[derive(Default)]
pub(crate) struct TestBroker {
    routes: Mutex<HashMap<String, Route>>,
    queues: Mutex<BTreeMap<String, VecDeque<OutgoingMessage>>>,
    /// Every confirmed message, in order.
    pub(crate) log: Mutex<Vec<OutgoingMessage>>,
    pub(crate) declared: Mutex<Vec<Topology>>,
    handler: Mutex<Option<(ConsumeOptions, Arc<dyn Handler>)>>,
    stopped: Arc<Mutex<bool>>,
    pub(crate) down: Mutex<bool>,
}

impl TestBroker {
    pub(crate) fn route(&self, routing_key: &str, route: Route) {
        lock(&self.routes).insert(routing_key.to_owned(), route);
    }

    /// Takes every message waiting under `routing_key` (a worker fetching its jobs).
    pub(crate) fn take(&self, routing_key: &str) -> Vec<OutgoingMessage> {
        lock(&self.queues)
            .get_mut(routing_key)
            .map(|q| q.drain(..).collect())
            .unwrap_or_default()
    }

    /// Takes the stage jobs waiting under `routing_key`.
    pub(crate) fn take_jobs(&self, routing_key: &str) -> Vec<StageJob> {
        self.take(routing_key)
            .into_iter()
            .map(|m| {
                AmqpM8Message::<StageJob>::from_slice(&m.body)
                    .expect("a stage job envelope")
                    .payload
                    .expect("a payload")
            })
            .collect()
    }

    /// Confirmed messages published with `routing_key` so far.
    pub(crate) fn count(&self, routing_key: &str) -> usize {
        lock(&self.log)
            .iter()
            .filter(|m| m.routing_key == routing_key)
            .count()
    }

    pub(crate) fn consumer(&self) -> Option<(ConsumeOptions, Arc<dyn Handler>)> {
        lock(&self.handler).clone()
    }

    /// Delivers a message to the consumer and returns its decision (`Requeue` for an
    /// `Err`).
    pub(crate) async fn deliver(&self, routing_key: &str, body: Vec<u8>) -> Decision {
        let (_, handler) = self.consumer().expect("a consumer is running");
        let mut d = Delivery::new(
            body,
            "cptm8".into(),
            routing_key.into(),
            false,
            Box::new(NoAcker),
        );
        match handler.handle(&mut d).await {
            Ok(decision) => decision,
            Err(_) => Decision::Requeue,
        }
    }

    fn publish_one(&self, m: OutgoingMessage) -> Result<PublishOutcome, AmqpError> {
        if *lock(&self.down) {
            return Err(AmqpError::Unavailable {
                host: "test".into(),
                reason: "down".into(),
            });
        }
        let route = lock(&self.routes)
            .get(&m.routing_key)
            .copied()
            .unwrap_or(Route::Queue(None));
        match route {
            Route::Down => Err(AmqpError::Unavailable {
                host: "test".into(),
                reason: "down".into(),
            }),
            Route::Unroutable => Ok(PublishOutcome::Unroutable),
            Route::Queue(cap) => {
                let mut queues = lock(&self.queues);
                let q = queues.entry(m.routing_key.clone()).or_default();
                if cap.is_some_and(|c| q.len() >= c) {
                    return Ok(PublishOutcome::Nacked);
                }
                q.push_back(m.clone());
                lock(&self.log).push(m);
                Ok(PublishOutcome::Confirmed)
            }
        }
    }
}

struct NoAcker;

#[async_trait]
impl amqp8::Acker for NoAcker {
    async fn ack(self: Box<Self>) -> Result<(), AmqpError> {
        Ok(())
    }
    async fn nack(self: Box<Self>, _requeue: bool) -> Result<(), AmqpError> {
        Ok(())
    }
    async fn dead_letter(self: Box<Self>, _reason: String) -> Result<(), AmqpError> {
        Ok(())
    }
}

struct StopFlag(Arc<Mutex<bool>>);

#[async_trait]
impl ConsumerControl for StopFlag {
    async fn stop(&self, _grace: Duration) {
        *lock(&self.0) = true;
    }
}

#[async_trait]
impl Broker for TestBroker {
    async fn declare(&self, topology: &Topology) -> Result<(), AmqpError> {
        if *lock(&self.down) {
            return Err(AmqpError::Unavailable {
                host: "test".into(),
                reason: "down".into(),
            });
        }
        lock(&self.declared).push(topology.clone());
        Ok(())
    }

    async fn publish(&self, message: OutgoingMessage) -> Result<PublishOutcome, AmqpError> {
        self.publish_one(message)
    }

    async fn publish_many(
        &self,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<PublishOutcome>, AmqpError> {
        messages.into_iter().map(|m| self.publish_one(m)).collect()
    }

    async fn consume(
        &self,
        options: ConsumeOptions,
        handler: Arc<dyn Handler>,
    ) -> Result<ConsumerHandle, AmqpError> {
        *lock(&self.handler) = Some((options, handler));
        Ok(ConsumerHandle(Arc::new(StopFlag(self.stopped.clone()))))
    }

    async fn queue_info(&self, queue: &str) -> Result<QueueInfo, AmqpError> {
        Err(AmqpError::NoSuchQueue(queue.into()))
    }

    fn health(&self) -> BrokerHealth {
        BrokerHealth {
            connected: true,
            blocked: false,
            consumers: vec![],
            pool: PoolStats::default(),
        }
    }
}

/// A clock that follows tokio's time (paused in loop tests, so it only moves when
/// every task waits).
#[derive(Debug)]
pub(crate) struct TokioClock {
    base: DateTime<Utc>,
    start: tokio::time::Instant,
}

impl TokioClock {
    pub(crate) fn new() -> Self {
        TokioClock {
            base: t0(),
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        self.base + chrono::Duration::from_std(self.start.elapsed()).unwrap()
    }
}

/// The test epoch.
pub(crate) fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 11, 19, 10, 0, 0).unwrap()
}

/// A stage with short, deterministic settings.
pub(crate) fn stage(name: &str, deps: &[&str]) -> StageSettings {
    let mut s = StageSettings::new(name, "cptm8");
    s.depends_on = deps.iter().map(|d| d.to_string()).collect();
    s.timeout = Duration::from_secs(60);
    s.max_attempts = 3;
    s.backoff.initial = Duration::from_secs(10);
    s.backoff.max = Duration::from_secs(60);
    s
}

/// Managed-mode settings with the given stages.
pub(crate) fn managed(stages: Vec<StageSettings>) -> Settings {
    let mut s = Settings::default();
    s.scheduler.mode = SchedulerMode::Managed;
    s.workflow.stages = stages;
    s
}

/// A 3-stage chain a → b → c.
pub(crate) fn chain() -> Settings {
    managed(vec![
        stage("a", &[]),
        stage("b", &["a"]),
        stage("c", &["b"]),
    ])
}

/// Tuning for tests: small batches.
pub(crate) fn tuning() -> Tuning {
    Tuning {
        batch_size: 3,
        db_outage_patience: Duration::from_millis(50),
        ..Tuning::default()
    }
}

/// An engine over a memory store, a test broker and a manual clock.
pub(crate) struct Harness {
    pub(crate) store: MemoryStore,
    pub(crate) broker: Arc<TestBroker>,
    pub(crate) clock: Arc<ManualClock>,
    pub(crate) settings: watch::Sender<Arc<Settings>>,
    pub(crate) role: watch::Sender<Role>,
    pub(crate) _shutdown: watch::Sender<bool>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) engine: Arc<Engine>,
}

impl Harness {
    pub(crate) fn new(settings: Settings) -> Self {
        Self::with_tuning(settings, tuning())
    }

    pub(crate) fn with_tuning(settings: Settings, tuning: Tuning) -> Self {
        Self::build(
            settings,
            tuning,
            MemoryStore::new(),
            Arc::new(ManualClock::new(t0())),
        )
    }

    /// Another process over the same data (a restart): new engine, new broker.
    pub(crate) fn with_store(
        settings: Settings,
        store: MemoryStore,
        clock: Arc<ManualClock>,
    ) -> Self {
        Self::build(settings, tuning(), store, clock)
    }

    fn build(
        settings: Settings,
        tuning: Tuning,
        store: MemoryStore,
        clock: Arc<ManualClock>,
    ) -> Self {
        let broker = Arc::new(TestBroker::default());
        let (settings_tx, settings_rx) = watch::channel(Arc::new(settings));
        let (role, role_rx) = watch::channel(Role::Leader);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let metrics = Arc::new(Metrics::new());
        let engine = Arc::new(
            Engine::new(EngineParts {
                domains: Arc::new(store.clone()),
                workflows: Arc::new(store.clone()),
                broker: broker.clone(),
                clock: clock.clone(),
                metrics: metrics.clone(),
                settings: settings_rx,
                role: role_rx,
                shutdown: shutdown_rx,
                tuning,
            })
            .expect("valid pipeline"),
        );
        Harness {
            store,
            broker,
            clock,
            settings: settings_tx,
            role,
            _shutdown: shutdown,
            metrics,
            engine,
        }
    }

    /// Registers the engine's result handler with the broker.
    pub(crate) async fn consume(&self) {
        let handler = Arc::new(crate::engine::results::ResultHandler::new(
            self.engine.clone(),
        ));
        self.broker
            .consume(
                ConsumeOptions {
                    queue: model8::RESULT_QUEUE.into(),
                    tag: "t".into(),
                    prefetch: 1,
                    autoack: false,
                    max_redeliveries: 5,
                    dead_letter: None,
                },
                handler,
            )
            .await
            .unwrap();
    }

    pub(crate) async fn add_domain(&self, name: &str) -> Domain8 {
        self.store
            .insert(&PostDomain8 {
                name: name.into(),
                companyname: "ACME".into(),
                enabled: true,
            })
            .await
            .unwrap()
    }

    pub(crate) async fn wf(&self, id: uuid::Uuid) -> Result<model8::WorkflowView, db8::DbError> {
        db8::WorkflowRepository::get(&self.store, id).await
    }

    pub(crate) async fn wfs(&self) -> Result<Vec<model8::WorkflowView>, db8::DbError> {
        db8::WorkflowRepository::list(&self.store, &Default::default()).await
    }

    pub(crate) fn clock_now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    pub(crate) fn advance(&self, d: Duration) {
        self.clock.advance(d);
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut Settings)) {
        let mut s = (**self.settings.borrow()).clone();
        f(&mut s);
        self.settings.send_replace(Arc::new(s));
    }

    /// A worker's report on `job`.
    pub(crate) async fn report(&self, job: &StageJob, outcome: StageOutcome) -> Decision {
        self.report_raw(&job.stage, job.workflow_id, job.attempt, outcome)
            .await
    }

    pub(crate) async fn report_raw(
        &self,
        stage: &str,
        workflow_id: uuid::Uuid,
        attempt: u32,
        outcome: StageOutcome,
    ) -> Decision {
        let key = outcome.routing_key(stage);
        let body = AmqpM8Message::with_source(
            key.clone(),
            Some(StageResult {
                workflow_id,
                stage: stage.into(),
                attempt,
                detail: None,
            }),
            "worker",
        )
        .to_vec()
        .unwrap();
        self.broker.deliver(&key, body).await
    }
}

/// The routing key of stage `name` in the test settings.
pub(crate) fn rk(name: &str) -> String {
    StageSettings::default_routing_key(name)
}
