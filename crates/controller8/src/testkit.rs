//! Test support: a harness assembling an engine over `db8::MemoryStore`,
//! `amqp8::memory::MemoryBroker` and a manual clock; settings with one queue per stage;
//! a clock that follows tokio's (paused) time for loop tests.

use std::sync::Arc;
use std::time::Duration;

use amqp8::memory::{MemoryBroker, Settlement, TestAcker};
use amqp8::{ArgValue, Broker, Decision, Handler, OutgoingMessage, PublishOutcome, Topology};
use chrono::{DateTime, TimeZone, Utc};
use config8::{SchedulerMode, ServiceQueue, Settings, StageSettings};
use db8::{
    ClaimedStage, Created, DbError, DomainRepository, InitialClaim, MemoryStore, NewWorkflow,
    StageKey, Transition, WorkflowFilter, WorkflowRepository,
};
use model8::{
    AmqpM8Message, Domain8, Notification8, PostDomain8, StageJob, StageOutcome, StageResult,
};
use tokio::sync::watch;

use crate::clock::{Clock, ManualClock};
use crate::engine::results::ResultHandler;
use crate::engine::{Engine, EngineParts};
use crate::metrics::Metrics;
use crate::role::Role;
use crate::topology::{NOTIFICATION_EXCHANGE, RESULT_EXCHANGE, topology};
use crate::tuning::Tuning;

/// The test queue bound to every notification.
pub(crate) const NOTIFY_QUEUE: &str = "qtest.notifications";

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

/// The queue of stage `name` in test settings.
pub(crate) fn q(name: &str) -> String {
    model8::routing::service_queue(name)
}

/// The routing key of stage `name` in the test settings.
pub(crate) fn rk(name: &str) -> String {
    StageSettings::default_routing_key(name)
}

/// A service section like the Go file's: queue `q<name>` on `cptm8`, bound with
/// `cptm8.<name>.#`.
pub(crate) fn section(name: &str, args: &[(&str, ArgValue)]) -> ServiceQueue {
    ServiceQueue {
        exchange: "cptm8".into(),
        queue: q(name),
        prefetch: 1,
        routing_keys: vec![model8::routing::service_binding(name)],
        queue_arguments: args
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
        consumer: None,
    }
}

/// `x-max-length: n` with `x-overflow: reject-publish`.
pub(crate) fn bounded(n: i64) -> Vec<(&'static str, ArgValue)> {
    vec![
        ("x-max-length", ArgValue::Int(n)),
        ("x-overflow", ArgValue::Str("reject-publish".into())),
    ]
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

/// Managed-mode settings with the given stages, each with its service section.
pub(crate) fn managed(stages: Vec<StageSettings>) -> Settings {
    let mut s = Settings::default();
    s.scheduler.mode = SchedulerMode::Managed;
    for st in &stages {
        s.orchestrator
            .queues
            .insert(st.name.clone(), section(&st.name, &[]));
    }
    s.workflow.stages = stages;
    s
}

/// Bootstrap settings with the Go file's asmm8 section.
pub(crate) fn bootstrap(args: &[(&str, ArgValue)]) -> Settings {
    let mut s = Settings::default();
    s.orchestrator
        .queues
        .insert("asmm8".into(), section("asmm8", args));
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
        create_batch: 3,
        publish_batch: 3,
        db_outage_patience: Duration::from_millis(50),
        chain_error_window: Duration::from_millis(200),
        ..Tuning::default()
    }
}

/// Declares the topology of `settings` plus a queue catching every notification, as
/// the controller does at start.
pub(crate) async fn declare(broker: &MemoryBroker, settings: &Settings) {
    broker.declare(&topology(settings)).await.unwrap();
    broker
        .declare(&Topology::topic_queue(
            NOTIFICATION_EXCHANGE,
            NOTIFY_QUEUE,
            "#",
        ))
        .await
        .unwrap();
}

/// Takes the stage jobs waiting in stage `name`'s queue (a worker fetching them).
pub(crate) fn take_jobs(broker: &MemoryBroker, name: &str) -> Vec<StageJob> {
    broker
        .take(&q(name))
        .into_iter()
        .map(|m| {
            assert_eq!(m.exchange, "cptm8");
            assert_eq!(m.routing_key, rk(name));
            AmqpM8Message::<StageJob>::from_slice(&m.body)
                .expect("a stage job envelope")
                .payload
                .expect("a payload")
        })
        .collect()
}

/// Confirmed publishes with this routing key so far.
pub(crate) fn confirmed(broker: &MemoryBroker, routing_key: &str) -> usize {
    broker
        .published()
        .iter()
        .filter(|(m, o)| m.routing_key == routing_key && *o == PublishOutcome::Confirmed)
        .count()
}

/// Takes the notifications published with `routing_key`.
pub(crate) fn notifications(broker: &MemoryBroker, routing_key: &str) -> Vec<Notification8> {
    let all = broker.take(NOTIFY_QUEUE);
    let (mine, others): (Vec<_>, Vec<_>) =
        all.into_iter().partition(|m| m.routing_key == routing_key);
    for m in others {
        broker.inject(NOTIFY_QUEUE, m).unwrap();
    }
    mine.into_iter()
        .map(|m| {
            AmqpM8Message::<Notification8>::from_slice(&m.body)
                .unwrap()
                .payload
                .unwrap()
        })
        .collect()
}

/// The body of a worker's report.
pub(crate) fn result_body(
    stage: &str,
    workflow_id: uuid::Uuid,
    attempt: u32,
    outcome: StageOutcome,
) -> Vec<u8> {
    AmqpM8Message::with_source(
        outcome.routing_key(stage),
        Some(StageResult {
            workflow_id,
            stage: stage.into(),
            attempt,
            detail: None,
        }),
        "worker",
    )
    .to_vec()
    .unwrap()
}

/// A worker publishing its report on `cptm8`, as a real one does.
pub(crate) async fn publish_report(broker: &MemoryBroker, job: &StageJob, outcome: StageOutcome) {
    let key = outcome.routing_key(&job.stage);
    let out = broker
        .publish(OutgoingMessage::new(
            RESULT_EXCHANGE,
            key,
            result_body(&job.stage, job.workflow_id, job.attempt, outcome),
        ))
        .await
        .unwrap();
    assert_eq!(out, PublishOutcome::Confirmed);
}

/// Adds enabled domain `name` of company `ACME` to `store`.
pub(crate) async fn add_domain(store: &MemoryStore, name: &str) -> Domain8 {
    store
        .insert(&PostDomain8 {
            name: name.into(),
            companyname: "ACME".into(),
            enabled: true,
        })
        .await
        .unwrap()
}

/// An engine over a memory store, a memory broker and a manual clock.
pub(crate) struct Harness {
    pub(crate) store: MemoryStore,
    pub(crate) broker: MemoryBroker,
    pub(crate) clock: Arc<ManualClock>,
    pub(crate) settings: watch::Sender<Arc<Settings>>,
    pub(crate) role: watch::Sender<Role>,
    pub(crate) shutdown: tokio_util::sync::CancellationToken,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) engine: Arc<Engine>,
    handler: ResultHandler,
}

impl Harness {
    pub(crate) async fn new(settings: Settings) -> Self {
        Self::build(
            settings,
            tuning(),
            MemoryStore::new(),
            Arc::new(ManualClock::new(t0())),
            None,
        )
        .await
    }

    /// Another process over the same data (a restart): new engine, new broker.
    pub(crate) async fn with_store(
        settings: Settings,
        store: MemoryStore,
        clock: Arc<ManualClock>,
    ) -> Self {
        Self::build(settings, tuning(), store, clock, None).await
    }

    /// An engine whose workflow repository is `workflows` (a fake over `store`, e.g.
    /// [`FailingResults`]), with `tuning`.
    pub(crate) async fn with_workflows(
        settings: Settings,
        tuning: Tuning,
        store: MemoryStore,
        workflows: Arc<dyn WorkflowRepository>,
    ) -> Self {
        Self::build(
            settings,
            tuning,
            store,
            Arc::new(ManualClock::new(t0())),
            Some(workflows),
        )
        .await
    }

    async fn build(
        settings: Settings,
        tuning: Tuning,
        store: MemoryStore,
        clock: Arc<ManualClock>,
        workflows: Option<Arc<dyn WorkflowRepository>>,
    ) -> Self {
        let broker = MemoryBroker::new();
        declare(&broker, &settings).await;
        let (settings_tx, settings_rx) = watch::channel(Arc::new(settings));
        let (role, role_rx) = watch::channel(Role::Leader);
        let shutdown = tokio_util::sync::CancellationToken::new();
        let metrics = Arc::new(Metrics::new());
        let engine = Arc::new(
            Engine::new(EngineParts {
                domains: Arc::new(store.clone()),
                workflows: workflows.unwrap_or_else(|| Arc::new(store.clone())),
                outbox: Arc::new(store.clone()),
                broker: broker.as_dyn(),
                clock: clock.clone(),
                metrics: metrics.clone(),
                settings: settings_rx,
                role: role_rx,
                shutdown: shutdown.clone(),
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
            shutdown,
            metrics,
            handler: ResultHandler {
                engine: engine.clone(),
            },
            engine,
        }
    }

    pub(crate) async fn add_domain(&self, name: &str) -> Domain8 {
        add_domain(&self.store, name).await
    }

    /// Adds `n` enabled domains, `d0.example.com` to `d<n-1>.example.com`.
    pub(crate) async fn add_domains(&self, n: usize) {
        for i in 0..n {
            self.add_domain(&format!("d{i}.example.com")).await;
        }
    }

    /// Creates a workflow for every idle enabled domain straight in the store, without
    /// claiming their first stages (as "scan now" on chosen domains, or an older
    /// replica, does): due work for the dispatcher. Returns how many.
    pub(crate) async fn create_unclaimed(&self) -> usize {
        let plans = self.engine.plan().stage_plans();
        let now = self.clock_now();
        let batch: Vec<db8::NewWorkflow> =
            db8::WorkflowRepository::idle_domains(&self.store, now, None, usize::MAX)
                .await
                .unwrap()
                .into_iter()
                .map(|d| db8::NewWorkflow {
                    id: uuid::Uuid::new_v4(),
                    domains: vec![d],
                    stages: plans.clone(),
                })
                .collect();
        db8::WorkflowRepository::create_workflows(&self.store, &batch, now)
            .await
            .unwrap()
            .len()
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

    /// Changes the settings as a reload does (no restart); what `config8::diff` reports
    /// of the change.
    pub(crate) fn update(&self, f: impl FnOnce(&mut Settings)) -> config8::ChangeReport {
        let old = self.settings.borrow().clone();
        let mut s = (*old).clone();
        f(&mut s);
        let report = config8::diff(&old, &s);
        self.settings.send_replace(Arc::new(s));
        report
    }

    pub(crate) fn take_jobs(&self, stage: &str) -> Vec<StageJob> {
        take_jobs(&self.broker, stage)
    }

    /// Relays the outbox (what is due now), then takes the notifications published
    /// with `routing_key`.
    pub(crate) async fn notifications(&self, routing_key: &str) -> Vec<Notification8> {
        crate::outbox::relay_due(&self.engine).await;
        notifications(&self.broker, routing_key)
    }

    /// Adds domain `example.com`, starts its workflow (its first stage, `a`, published
    /// as it is created), runs a dispatch round and takes the stage `a` job.
    pub(crate) async fn start_one(&self) -> StageJob {
        self.add_domain("example.com").await;
        self.engine.start_workflows().await.unwrap();
        self.engine.dispatch().await.unwrap();
        self.take_jobs("a").remove(0)
    }

    /// The metrics exposition as scraped now.
    pub(crate) fn metrics_text(&self) -> String {
        self.metrics.encode(&Default::default()).unwrap()
    }

    /// Asserts that the metrics exposition has each of `lines`.
    pub(crate) fn assert_metrics(&self, lines: &[&str]) {
        let text = self.metrics_text();
        for line in lines {
            let (series, want) = expected_sample(line);
            let got = crate::Metrics::sample(&text, series);
            match want {
                Some(v) => assert_eq!(got, Some(v), "{line:?} in\n{text}"),
                None => assert!(got.is_some(), "{series:?} missing in\n{text}"),
            }
        }
    }

    /// Asserts that the metrics exposition does not have the sample `line` (that series
    /// with that value; the series may be absent or have another value).
    pub(crate) fn assert_no_metric(&self, line: &str) {
        let text = self.metrics_text();
        let (series, want) = expected_sample(line);
        let got = crate::Metrics::sample(&text, series);
        assert!(want.is_some(), "{line:?}: name a value");
        assert_ne!(got, want, "{line:?} in\n{text}");
    }

    /// Hands a delivery to the result handler, as the consumer does, and returns how
    /// it was settled (`Err` from the handler is a requeue).
    pub(crate) async fn deliver(&self, routing_key: &str, body: Vec<u8>) -> Settlement {
        let (mut d, settled) = TestAcker::delivery(RESULT_EXCHANGE, routing_key, body);
        match self.handler.handle(&mut d).await {
            Ok(Decision::Ack) => Settlement::Ack,
            Ok(Decision::DeadLetter(reason)) => Settlement::DeadLetter(reason),
            Ok(Decision::Requeue) | Err(_) => Settlement::Nack { requeue: true },
            Ok(Decision::Deferred) => settled.get().expect("settled by the handler"),
        }
    }

    /// A worker's report on `job`.
    pub(crate) async fn report(&self, job: &StageJob, outcome: StageOutcome) -> Settlement {
        self.report_raw(&job.stage, job.workflow_id, job.attempt, outcome)
            .await
    }

    pub(crate) async fn report_raw(
        &self,
        stage: &str,
        workflow_id: uuid::Uuid,
        attempt: u32,
        outcome: StageOutcome,
    ) -> Settlement {
        self.deliver(
            &outcome.routing_key(stage),
            result_body(stage, workflow_id, attempt, outcome),
        )
        .await
    }
}

/// A workflow repository over a [`MemoryStore`] whose result transitions
/// (`complete_stage`, `fail_stage`) fail with a non-transient database error (as a
/// full disk makes PostgreSQL fail) while failures are armed, and which records when
/// (tokio time) they were called. Everything else is the store's.
pub(crate) struct FailingResults {
    inner: MemoryStore,
    /// Calls left to fail; `u32::MAX`: fail until disarmed.
    failures: std::sync::Mutex<u32>,
    calls: std::sync::Mutex<Vec<tokio::time::Instant>>,
    /// A record (`mark_running` arguments) to commit just before the next `get`.
    record_before_get: std::sync::Mutex<Option<PendingRecord>>,
}

/// The arguments of a [`WorkflowRepository::mark_running`] call held back.
type PendingRecord = (StageKey, uuid::Uuid, DateTime<Utc>, DateTime<Utc>);

impl FailingResults {
    pub(crate) fn new(inner: MemoryStore) -> Self {
        FailingResults {
            inner,
            failures: std::sync::Mutex::new(0),
            calls: std::sync::Mutex::new(Vec::new()),
            record_before_get: std::sync::Mutex::new(None),
        }
    }

    /// Records `key` as running (for `owner`, at `now`, with `deadline`) just before
    /// the next `get` reads the workflow: the record of a publish landing between a
    /// result's transaction and the engine's second look.
    pub(crate) fn record_before_next_get(
        &self,
        key: StageKey,
        owner: uuid::Uuid,
        now: DateTime<Utc>,
        deadline: DateTime<Utc>,
    ) {
        *self.record_before_get.lock().unwrap() = Some((key, owner, now, deadline));
    }

    /// The next `n` result transitions fail (`u32::MAX`: all until [`Self::fail`]
    /// is called again).
    pub(crate) fn fail(&self, n: u32) {
        *self.failures.lock().unwrap() = n;
    }

    /// When the result transitions were called.
    pub(crate) fn calls(&self) -> Vec<tokio::time::Instant> {
        self.calls.lock().unwrap().clone()
    }

    fn call(&self) -> Result<(), DbError> {
        self.calls.lock().unwrap().push(tokio::time::Instant::now());
        let mut left = self.failures.lock().unwrap();
        if *left == 0 {
            return Ok(());
        }
        if *left != u32::MAX {
            *left -= 1;
        }
        Err(DbError::Query(
            "could not extend file \"base/16384/16400\": No space left on device".into(),
        ))
    }
}

#[async_trait::async_trait]
impl WorkflowRepository for FailingResults {
    async fn create_workflows(
        &self,
        batch: &[NewWorkflow],
        now: DateTime<Utc>,
    ) -> Result<Vec<uuid::Uuid>, DbError> {
        self.inner.create_workflows(batch, now).await
    }
    async fn create_claimed(
        &self,
        batch: &[NewWorkflow],
        now: DateTime<Utc>,
        claim: &InitialClaim,
    ) -> Result<Created, DbError> {
        self.inner.create_claimed(batch, now, claim).await
    }
    async fn idle_domains(
        &self,
        ended_before: DateTime<Utc>,
        after: Option<uuid::Uuid>,
        limit: usize,
    ) -> Result<Vec<model8::DomainRef>, DbError> {
        self.inner.idle_domains(ended_before, after, limit).await
    }
    async fn any_active(&self) -> Result<bool, DbError> {
        self.inner.any_active().await
    }
    async fn last_ended_at(&self) -> Result<Option<DateTime<Utc>>, DbError> {
        self.inner.last_ended_at().await
    }
    async fn in_flight_counts(
        &self,
        now: DateTime<Utc>,
    ) -> Result<std::collections::HashMap<String, u64>, DbError> {
        self.inner.in_flight_counts(now).await
    }
    async fn prune_finished(
        &self,
        ended_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, DbError> {
        self.inner.prune_finished(ended_before, limit).await
    }

    async fn mark_requested(&self, ids: &[model8::WorkflowId]) -> Result<u64, DbError> {
        self.inner.mark_requested(ids).await
    }

    async fn claim_due(
        &self,
        stage: &str,
        owner: uuid::Uuid,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<ClaimedStage>, DbError> {
        self.inner.claim_due(stage, owner, now, lease, limit).await
    }

    async fn claim_due_fair(
        &self,
        stage: &str,
        owner: uuid::Uuid,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
        weights: &std::collections::BTreeMap<String, u32>,
    ) -> Result<Vec<ClaimedStage>, DbError> {
        self.inner
            .claim_due_fair(stage, owner, now, lease, limit, weights)
            .await
    }
    async fn mark_running(
        &self,
        keys: &[StageKey],
        owner: uuid::Uuid,
        now: DateTime<Utc>,
        deadline: DateTime<Utc>,
    ) -> Result<u64, DbError> {
        self.inner.mark_running(keys, owner, now, deadline).await
    }
    async fn release(
        &self,
        keys: &[StageKey],
        owner: uuid::Uuid,
        not_before: DateTime<Utc>,
    ) -> Result<u64, DbError> {
        self.inner.release(keys, owner, not_before).await
    }
    async fn complete_stage(
        &self,
        key: &StageKey,
        detail: Option<serde_json::Value>,
        now: DateTime<Utc>,
    ) -> Result<Transition, DbError> {
        self.call()?;
        self.inner.complete_stage(key, detail, now).await
    }
    async fn fail_stage(
        &self,
        key: &StageKey,
        detail: Option<serde_json::Value>,
        retry_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Transition, DbError> {
        self.call()?;
        self.inner.fail_stage(key, detail, retry_at, now).await
    }
    async fn time_out(
        &self,
        key: &StageKey,
        detail: Option<serde_json::Value>,
        retry_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Transition, DbError> {
        self.call()?;
        self.inner.time_out(key, detail, retry_at, now).await
    }
    async fn timed_out(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<StageKey>, DbError> {
        self.inner.timed_out(now, limit).await
    }
    async fn list(&self, filter: &WorkflowFilter) -> Result<Vec<model8::WorkflowView>, DbError> {
        WorkflowRepository::list(&self.inner, filter).await
    }
    async fn get(&self, id: uuid::Uuid) -> Result<model8::WorkflowView, DbError> {
        let pending = self.record_before_get.lock().unwrap().take();
        if let Some((key, owner, now, deadline)) = pending {
            let marked = self
                .inner
                .mark_running(std::slice::from_ref(&key), owner, now, deadline)
                .await?;
            assert_eq!(marked, 1, "the held-back record applies");
        }
        WorkflowRepository::get(&self.inner, id).await
    }
    async fn cancel(
        &self,
        id: uuid::Uuid,
        now: DateTime<Utc>,
    ) -> Result<model8::WorkflowView, DbError> {
        self.inner.cancel(id, now).await
    }
    async fn pause(
        &self,
        id: uuid::Uuid,
        now: DateTime<Utc>,
    ) -> Result<model8::WorkflowView, DbError> {
        self.inner.pause(id, now).await
    }
    async fn resume(
        &self,
        id: uuid::Uuid,
        now: DateTime<Utc>,
    ) -> Result<model8::WorkflowView, DbError> {
        self.inner.resume(id, now).await
    }

    async fn retry(
        &self,
        id: uuid::Uuid,
        now: DateTime<Utc>,
    ) -> Result<model8::WorkflowView, DbError> {
        self.inner.retry(id, now).await
    }

    async fn changed_since(
        &self,
        since: DateTime<Utc>,
        after: Option<uuid::Uuid>,
        limit: usize,
    ) -> Result<Vec<model8::WorkflowView>, DbError> {
        self.inner.changed_since(since, after, limit).await
    }
}

/// `name{labels} value` as (series, value); a line without a value names only the
/// series (present with any value).
fn expected_sample(line: &str) -> (&str, Option<f64>) {
    match line.rsplit_once(' ').map(|(s, v)| (s, v.parse::<f64>())) {
        Some((series, Ok(v))) => (series, Some(v)),
        _ => (line, None),
    }
}
