//! [`Controller`]: assembles the engine from trait objects and runs it until shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use amqp8::{AmqpError, Broker, ConsumeOptions, ConsumerHandle, Handler};
use config8::{SchedulerMode, Settings};
use db8::{
    ChangeFeed, DomainRepository, LeaderLock, OutboxRepository, RingRepository, WorkflowRepository,
};
use futures::FutureExt;
use futures::future::BoxFuture;
use model8::RESULT_QUEUE;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

use crate::bootstrap::Bootstrap;
use crate::clock::Clock;
use crate::engine::backoff::{Doubling, PRESSURE};
use crate::engine::error_feed::ErrorFeedHandler;
use crate::engine::results::ResultHandler;
use crate::engine::starter::EngineScanNow;
use crate::engine::{Engine, EngineParts};
use crate::error::ControllerError;
use crate::leader::Leadership;
use crate::metrics::Metrics;
use crate::ring::{RingHandler, ring_stages, stall_loop};
use crate::role::{Role, RoleWatch};
use crate::scan_now::ScanNow;
use crate::scheduler;
use crate::topology::{
    CHAIN_NOTIFY_QUEUE, DEAD_LETTER_EXCHANGE, DEAD_LETTER_ROUTING_KEY, RING_QUEUE, has_chain_stage,
    topology,
};
use crate::tuning::Tuning;
use crate::waking::WakingWorkflows;

/// What the controller is built from: the repositories, the broker, the clock and the
/// live settings, as trait objects and handles (the binary builds the PostgreSQL and
/// RabbitMQ implementations; tests use the in-memory ones).
pub struct Deps {
    /// `cptm8domain`.
    pub domains: Arc<dyn DomainRepository>,
    /// Managed-mode workflow state.
    pub workflows: Arc<dyn WorkflowRepository>,
    /// The outbox the workflow and ring transitions write their notifications into
    /// (the same store as `workflows` and `ring`); every replica relays it.
    pub outbox: Arc<dyn OutboxRepository>,
    /// RabbitMQ.
    pub broker: Arc<dyn Broker>,
    /// The leader lock, when `LeaderElection.enabled`; `None` makes this replica the
    /// leader unconditionally.
    pub leader: Option<Arc<dyn LeaderLock>>,
    /// Domain change events.
    pub changes: Arc<dyn ChangeFeed>,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// The live configuration. Read live (as `config8::diff` classifies them):
    /// `Scheduler.interval`, `Workflow.rescan_after`, the stages' `timeout`,
    /// `max_attempts`, `backoff` and `max_in_flight`, and
    /// `LeaderElection.check_interval`. Everything else is read once at start:
    /// `Scheduler.mode`, `Workflow.granularity`, the stages' names, dependencies,
    /// exchanges and routing keys, `LeaderElection.enabled` and the RabbitMQ topology.
    pub settings: watch::Receiver<Arc<Settings>>,
    /// Metrics to update.
    pub metrics: Arc<Metrics>,
    /// Where bootstrap mode records the scanners' ring (`Scheduler.observe`); `None`
    /// does not follow it.
    pub ring: Option<Arc<dyn RingRepository>>,
}

impl std::fmt::Debug for Deps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deps")
            .field("leader_election", &self.leader.is_some())
            .finish_non_exhaustive()
    }
}

/// The orchestrator: bootstrap scheduler or managed workflow engine, with leadership.
///
/// Build it with [`Controller::new`], hand [`Controller::role`],
/// [`Controller::scan_now`] and [`Controller::workflows`] to the HTTP layer, then
/// [`Controller::run`] it.
pub struct Controller {
    engine: Arc<Engine>,
    mode: SchedulerMode,
    leader: Option<Arc<dyn LeaderLock>>,
    changes: Arc<dyn ChangeFeed>,
    ring: Option<Arc<dyn RingRepository>>,
    role: watch::Sender<Role>,
}

/// The ring a bootstrap controller follows: where it is recorded, and its stages.
type Ring = (Arc<dyn RingRepository>, Vec<db8::RingStage>);

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("mode", &self.mode)
            .field("role", &*self.role.borrow())
            .finish_non_exhaustive()
    }
}

impl Controller {
    /// A controller with the default [`Tuning`]. Fails when the pipeline
    /// (`Workflow.stages`) is invalid.
    pub fn new(deps: Deps) -> Result<Controller, ControllerError> {
        Self::with_tuning(deps, Tuning::default())
    }

    /// A controller with the given [`Tuning`].
    pub fn with_tuning(deps: Deps, tuning: Tuning) -> Result<Controller, ControllerError> {
        let settings = deps.settings.borrow().clone();
        let mode = settings.scheduler.mode;
        let leader = deps.leader.filter(|_| settings.leader_election.enabled);
        let initial = if leader.is_some() {
            Role::Candidate
        } else {
            Role::Leader
        };
        let (role, role_rx) = watch::channel(initial);
        deps.metrics.set_role(initial);
        let engine = Engine::new(EngineParts {
            domains: deps.domains,
            workflows: deps.workflows,
            outbox: deps.outbox,
            broker: deps.broker,
            clock: deps.clock,
            metrics: deps.metrics,
            settings: deps.settings,
            role: role_rx,
            shutdown: CancellationToken::new(),
            tuning,
        })
        .map_err(|e| ControllerError::Config(e.to_string()))?;
        if mode == SchedulerMode::Managed {
            engine
                .metrics
                .declare_stages(engine.plan().stages().iter().map(|s| s.name.as_str()));
        }
        Ok(Controller {
            engine: Arc::new(engine),
            mode,
            leader,
            changes: deps.changes,
            ring: deps.ring,
            role,
        })
    }

    /// The role of this replica, for `/ready` and `/metrics`.
    pub fn role(&self) -> RoleWatch {
        self.role.subscribe()
    }

    /// "Scan now" for `POST /api/orchestratorm8/workflows`.
    pub fn scan_now(&self) -> Arc<dyn ScanNow> {
        Arc::new(EngineScanNow(self.engine.clone()))
    }

    /// The workflow repository for the HTTP layer: the engine's, waking the engine
    /// after a resume or a cancel so that it acts at once.
    pub fn workflows(&self) -> Arc<dyn crate::http::WorkflowApi> {
        Arc::new(WakingWorkflows {
            engine: self.engine.clone(),
        })
    }

    /// Runs until `shutdown` completes: declares the topology (retrying while RabbitMQ
    /// is unavailable), takes part in leader election, starts the result consumer
    /// (managed mode) and the loops. On shutdown it stops taking new work, lets what
    /// is in progress finish (a publish and its recording, results being applied)
    /// within [`Tuning::shutdown_grace`], returns unfinished deliveries to the broker,
    /// gives the leader lock up, and returns `Ok`.
    pub async fn run<F>(self, shutdown: F) -> Result<(), ControllerError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let signal = self.engine.shutdown.clone();
        let _watcher = AbortOnDropHandle::new(tokio::spawn(async move {
            shutdown.await;
            signal.cancel();
        }));
        self.run_until_stopped().await
    }

    /// Declares the topology, takes leadership (when elected), starts the consumers
    /// and the loops of the mode, then waits for shutdown and winds them down.
    async fn run_until_stopped(self) -> Result<(), ControllerError> {
        let engine = self.engine.clone();
        let settings = engine.start_settings().clone();
        tracing::info!(
            mode = ?self.mode, leader_election = self.leader.is_some(),
            "orchestrator starting"
        );
        if !self.declare_topology(&settings).await? {
            return Ok(());
        }
        // Leadership first, so the first checks know their role.
        let leadership = self.leader.clone().map(|lock| {
            Leadership::new(
                lock,
                self.role.clone(),
                engine.metrics.clone(),
                engine.settings.clone(),
            )
        });
        if let Some(l) = &leadership {
            l.step().await;
        }
        // Bootstrap mode follows the ring (CONTRACT 3c) when it observes.
        let ring = match (&self.ring, self.mode) {
            (Some(repo), SchedulerMode::Bootstrap) if settings.scheduler.observe => {
                Some((repo.clone(), ring_stages(&settings)))
            }
            _ => None,
        };
        let Some(consumers) = self.start_consumers(&settings, ring.as_ref()).await? else {
            return Ok(());
        };
        // Leadership is given up last, after the work in progress is finished.
        let resign = CancellationToken::new();
        let leader_task = leadership.map(|l| tokio::spawn(l.run(resign.clone())));
        let abandon = CancellationToken::new();
        let tasks = self.spawn_loops(&settings, ring, &abandon);
        tracing::info!(mode = ?self.mode, "orchestrator running");

        engine.shutdown.cancelled().await;
        self.wind_down(consumers, tasks, abandon).await;
        resign.cancel();
        if let Some(t) = leader_task {
            // It resigns (releases the lock).
            if tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .is_err()
            {
                tracing::warn!("leader lock release did not finish in time");
            }
        }
        self.role.send_replace(Role::Standby);
        tracing::info!("orchestrator stopped");
        Ok(())
    }

    /// The consumers of the mode: managed mode consumes the results (and, with a
    /// chain stage, the platform's error notifications, for empty reports); bootstrap
    /// mode the ring when it observes. `None` when shutdown came first.
    async fn start_consumers(
        &self,
        settings: &Settings,
        ring: Option<&Ring>,
    ) -> Result<Option<Vec<ConsumerHandle>>, ControllerError> {
        let (engine, tuning) = (&self.engine, &self.engine.tuning);
        let mut wanted: Vec<(ConsumeOptions, Arc<dyn Handler>)> = Vec::new();
        if self.mode == SchedulerMode::Managed {
            let handler = Arc::new(ResultHandler {
                engine: engine.clone(),
            });
            wanted.push((result_options(settings, tuning), handler));
            if has_chain_stage(settings) {
                let tag = "corchestratorm8-notifications";
                let options = ConsumeOptions::new(CHAIN_NOTIFY_QUEUE, tag, tuning.result_prefetch);
                let handler = Arc::new(ErrorFeedHandler {
                    engine: engine.clone(),
                });
                wanted.push((options, handler));
            }
        } else if let Some((repo, stages)) = ring {
            let handler = RingHandler::new(engine.clone(), repo.clone(), stages.clone());
            let options = ConsumeOptions::new(RING_QUEUE, "corchestratorm8.ring", 1);
            wanted.push((options, Arc::new(handler)));
        }
        let mut consumers = Vec::new();
        for (options, handler) in wanted {
            let options = ConsumeOptions {
                max_redeliveries: tuning.max_redeliveries,
                ..options
            };
            match self.consume_retrying(options, handler).await? {
                Some(c) => consumers.push(c),
                None => return Ok(None),
            }
        }
        Ok(Some(consumers))
    }

    /// Spawns the loops every mode runs (domain changes, retention, outbox relay) and
    /// those of this mode, tracked; cancelling `abandon` drops them where they wait.
    fn spawn_loops(
        &self,
        settings: &Settings,
        ring: Option<Ring>,
        abandon: &CancellationToken,
    ) -> TaskTracker {
        let (engine, tasks) = (&self.engine, TaskTracker::new());
        let spawn = |task: BoxFuture<'static, ()>| {
            tasks.spawn(abandon.clone().run_until_cancelled_owned(task));
        };
        spawn(scheduler::feed_loop(engine.clone(), self.changes.clone()).boxed());
        spawn(scheduler::retention_loop(engine.clone()).boxed());
        spawn(crate::outbox::relay_loop(engine.clone(), engine.outbox.clone()).boxed());
        match self.mode {
            SchedulerMode::Bootstrap => {
                spawn(scheduler::tick_loop(engine.clone(), Some(Bootstrap::default())).boxed());
                if let Some((repo, stages)) = ring {
                    let heal = settings.scheduler.heal;
                    spawn(stall_loop(engine.clone(), repo, stages, heal).boxed());
                }
            }
            SchedulerMode::Managed => {
                spawn(scheduler::tick_loop(engine.clone(), None).boxed());
                spawn(scheduler::dispatch_loop(engine.clone()).boxed());
            }
        }
        tasks.close();
        tasks
    }

    /// Stops the consumers (their unacknowledged deliveries go back) and waits for the
    /// loops, within the shutdown grace; what is still running after it is abandoned
    /// (`abandon` cancelled).
    async fn wind_down(
        &self,
        consumers: Vec<ConsumerHandle>,
        tasks: TaskTracker,
        abandon: CancellationToken,
    ) {
        let grace = self.engine.tuning.shutdown_grace;
        tracing::info!(?grace, "orchestrator stopping");
        let stop_consumers = async {
            for c in &consumers {
                c.stop(grace).await;
            }
        };
        let finished = tokio::time::timeout(
            grace + Duration::from_secs(1),
            futures::future::join(stop_consumers, tasks.wait()),
        )
        .await;
        if finished.is_err() {
            tracing::warn!(
                ?grace,
                "work still in progress at the end of the shutdown grace period was abandoned; \
                 claims expire and unacknowledged results are redelivered"
            );
            abandon.cancel();
        }
    }

    /// Declares the topology, retrying while RabbitMQ is unavailable. `Ok(false)` when
    /// shutdown came first.
    async fn declare_topology(&self, settings: &Settings) -> Result<bool, ControllerError> {
        let t = topology(settings);
        let declared = self
            .retrying(
                || self.engine.broker.declare(&t),
                |e, d| tracing::warn!(error = %e, retry_in = ?d, "cannot declare the RabbitMQ topology; retrying"),
            )
            .await
            .map_err(ControllerError::Topology)?;
        if declared.is_some() {
            tracing::info!(
                exchanges = t.exchanges.len(),
                queues = t.queues.len(),
                bindings = t.bindings.len(),
                "RabbitMQ topology declared"
            );
        }
        Ok(declared.is_some())
    }

    /// Starts a consumer, retrying while RabbitMQ is unavailable. `Ok(None)` when
    /// shutdown came first.
    async fn consume_retrying(
        &self,
        options: ConsumeOptions,
        handler: Arc<dyn Handler>,
    ) -> Result<Option<ConsumerHandle>, ControllerError> {
        let queue = &options.queue;
        let consumer = self
            .retrying(
                || self.engine.broker.consume(options.clone(), handler.clone()),
                |e, d| tracing::warn!(%queue, error = %e, retry_in = ?d, "cannot start a consumer; retrying"),
            )
            .await
            .map_err(|source| ControllerError::Consume {
                queue: queue.clone(),
                source,
            })?;
        if consumer.is_some() {
            tracing::info!(%queue, prefetch = options.prefetch, "consuming");
        }
        Ok(consumer)
    }

    /// `op` until it succeeds, its transient failures (each `logged`) retried after
    /// [`PRESSURE`] delays. `Ok(None)` when shutdown came first.
    async fn retrying<T, F>(
        &self,
        op: impl Fn() -> F,
        logged: impl Fn(&AmqpError, Duration),
    ) -> Result<Option<T>, AmqpError>
    where
        F: Future<Output = Result<T, AmqpError>>,
    {
        let mut failures = Doubling::new(PRESSURE);
        loop {
            let attempt = tokio::select! {
                r = op() => r,
                _ = self.engine.shutdown.cancelled() => return Ok(None),
            };
            match attempt {
                Ok(v) => return Ok(Some(v)),
                Err(e) if e.is_transient() => {
                    let d = failures.next_delay();
                    logged(&e, d);
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = self.engine.shutdown.cancelled() => return Ok(None),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// The options of the result consumer: the tag and prefetch of the service section of
/// [`RESULT_QUEUE`] when there is one, its dead letters to [`DEAD_LETTER_EXCHANGE`].
fn result_options(settings: &Settings, tuning: &Tuning) -> ConsumeOptions {
    let section = settings
        .orchestrator
        .queues
        .values()
        .find(|q| q.queue == RESULT_QUEUE);
    let tag = section
        .and_then(|s| s.consumer.as_ref())
        .map_or("corchestratorm8", |c| c.tag.as_str());
    let prefetch = section
        .map(|s| s.prefetch)
        .filter(|p| *p > 0)
        .unwrap_or(tuning.result_prefetch);
    ConsumeOptions::new(RESULT_QUEUE, tag, prefetch)
        .dead_letter_to(DEAD_LETTER_EXCHANGE, DEAD_LETTER_ROUTING_KEY)
}

#[cfg(test)]
mod tests;
