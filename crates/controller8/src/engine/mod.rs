//! The managed-mode workflow engine: workflow creation, stage dispatch (claim →
//! publish → mark), result handling, timeouts, retries and notifications (written to
//! the outbox with their transition, relayed by [`crate::outbox`]).
//!
//! Every operation here is one step that reads the time from the [`Clock`] and the
//! state from the repositories; the loops that call them live in
//! [`crate::scheduler`]. The steps are unit-tested on the in-memory implementations.

pub(crate) mod backoff;
#[cfg(test)]
mod chain_tests;
pub(crate) mod creation;
pub(crate) mod dispatcher;
pub(crate) mod error_feed;
#[cfg(test)]
mod fairness_tests;
#[cfg(test)]
mod live_tests;
pub(crate) mod nacks;
pub(crate) mod notify;
#[cfg(test)]
mod outbox_tests;
pub(crate) mod pipeline;
pub(crate) mod protocol;
pub(crate) mod results;
pub(crate) mod retention;
#[cfg(test)]
mod retention_tests;
pub(crate) mod starter;
#[cfg(test)]
mod tests;
pub(crate) mod timeouts;
#[cfg(test)]
mod window_tests;

use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use amqp8::Broker;
use chrono::{DateTime, TimeDelta, Utc};
use config8::{LiveSettings, Settings, StageSettings};
use db8::{DomainRepository, OutboxRepository, WorkflowRepository};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::role::Role;
use crate::tuning::Tuning;
use dispatcher::{StagePressure, Unsettled};
use pipeline::Plan;

/// Wakes a loop early: now, or at a known due time (a retry, a deadline, the end of a
/// backpressure pause). The due times are a hint kept in memory; the loop also polls.
#[derive(Debug, Default)]
pub(crate) struct Wake {
    notify: Notify,
    due: Mutex<BTreeSet<DateTime<Utc>>>,
}

impl Wake {
    /// Most due times remembered; beyond, the latest are dropped (the poll covers them).
    const CAPACITY: usize = 4096;

    /// Wakes the loop as soon as possible (remembered if it is busy).
    pub(crate) fn now(&self) {
        self.notify.notify_one();
    }

    /// Wakes the loop at `t` (or now, if `t` is past). The loop is woken now only
    /// when `t` comes before every time it already knows of: it computes its next
    /// wake-up from the remembered times whenever it goes to sleep, so a later `t`
    /// is seen in time without waking it (a batch of 2,000 deadlines recorded during a
    /// bulk publish is then one wake-up, not one per batch).
    pub(crate) fn at(&self, t: DateTime<Utc>) {
        let mut due = self.due.lock();
        let earlier = due.first().is_none_or(|first| t < *first);
        due.insert(t);
        while due.len() > Self::CAPACITY {
            due.pop_last();
        }
        drop(due);
        if earlier {
            self.notify.notify_one();
        }
    }

    /// The earliest remembered due time after `now`, forgetting those at or before it
    /// (the round that runs at `now` handles them).
    pub(crate) fn next_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut due = self.due.lock();
        while due.first().is_some_and(|t| *t <= now) {
            due.pop_first();
        }
        due.first().copied()
    }

    /// Waits for [`Wake::now`] or [`Wake::at`].
    pub(crate) async fn notified(&self) {
        self.notify.notified().await;
    }
}

/// Everything the engine steps share.
pub(crate) struct Engine {
    pub(crate) domains: Arc<dyn DomainRepository>,
    pub(crate) workflows: Arc<dyn WorkflowRepository>,
    /// The outbox the transitions write their notifications into (relayed by
    /// [`crate::outbox::relay_loop`]).
    pub(crate) outbox: Arc<dyn OutboxRepository>,
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) settings: watch::Receiver<Arc<Settings>>,
    pub(crate) role: watch::Receiver<Role>,
    /// Cancelled when shutdown begins.
    pub(crate) shutdown: CancellationToken,
    pub(crate) tuning: Tuning,
    /// Wakes the outbox relay (a transition wrote a row).
    pub(crate) outbox_wake: Wake,
    /// This process's claim owner id (new at every start).
    pub(crate) owner: Uuid,
    /// Wakes the dispatcher (new due work).
    pub(crate) dispatch_wake: Wake,
    /// Wakes the workflow starter / bootstrap check (domains changed).
    pub(crate) start_wake: Wake,
    /// Per-stage backpressure state.
    pub(crate) pressure: Mutex<HashMap<String, StagePressure>>,
    /// Nacks per attempt ([`nacks`]).
    pub(crate) nacks: nacks::NackCounts,
    /// Sequence of the workflow ids this process made (see [`Engine::new_workflow_id`]).
    id_seq: AtomicU64,
    /// Claimed attempts whose outcome could not be recorded (database away), recorded
    /// at the next dispatch round.
    pub(crate) unsettled: Mutex<Vec<Unsettled>>,
    /// The settings at start: what needs a restart to change (mode, granularity, the
    /// pipeline's stages, dependencies, exchanges and routing keys) is read from here.
    start: Arc<Settings>,
    /// The live part of the settings last read (see [`Engine::live`]), with the
    /// settings it was taken from.
    live: Mutex<(Arc<Settings>, Arc<LiveSettings>)>,
    /// The pipeline at start.
    plan: Plan,
    /// Recent `app.error.*` notifications per source (chain stages' hard failures).
    pub(crate) recent_errors: Mutex<model8::chain::RecentErrors>,
    /// Woken when an `app.error.*` notification is recorded.
    pub(crate) error_seen: Notify,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// The parts an [`Engine`] is made of.
pub(crate) struct EngineParts {
    pub(crate) domains: Arc<dyn DomainRepository>,
    pub(crate) workflows: Arc<dyn WorkflowRepository>,
    pub(crate) outbox: Arc<dyn OutboxRepository>,
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) settings: watch::Receiver<Arc<Settings>>,
    pub(crate) role: watch::Receiver<Role>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tuning: Tuning,
}

impl Engine {
    /// An engine over `parts`; fails when the current pipeline is invalid.
    pub(crate) fn new(parts: EngineParts) -> Result<Engine, pipeline::PipelineError> {
        let start = parts.settings.borrow().clone();
        let plan = Plan::new(&start.workflow)?;
        let live = Mutex::new((start.clone(), Arc::new(start.live())));
        Ok(Engine {
            domains: parts.domains,
            workflows: parts.workflows,
            outbox: parts.outbox,
            outbox_wake: Wake::default(),
            broker: parts.broker,
            clock: parts.clock,
            metrics: parts.metrics,
            settings: parts.settings,
            role: parts.role,
            shutdown: parts.shutdown,
            owner: Uuid::new_v4(),
            dispatch_wake: Wake::default(),
            start_wake: Wake::default(),
            pressure: Mutex::new(HashMap::new()),
            nacks: nacks::NackCounts::default(),
            unsettled: Mutex::new(Vec::new()),
            id_seq: AtomicU64::new(0),
            recent_errors: Mutex::new(model8::chain::RecentErrors::new(
                parts.tuning.chain_error_window,
            )),
            error_seen: Notify::new(),
            tuning: parts.tuning,
            start,
            live,
            plan,
        })
    }

    /// The live settings of this moment ([`LiveSettings`]: the keys a reload applies
    /// without a restart). What needs a restart is read from
    /// [`Engine::start_settings`]; the types keep the two apart.
    pub(crate) fn live(&self) -> Arc<LiveSettings> {
        let now = self.settings.borrow().clone();
        let mut cached = self.live.lock();
        if !Arc::ptr_eq(&cached.0, &now) {
            let live = Arc::new(now.live());
            *cached = (now, live);
        }
        cached.1.clone()
    }

    /// The settings at start (for what needs a restart to change).
    pub(crate) fn start_settings(&self) -> &Settings {
        &self.start
    }

    /// The pipeline's structure, as at start.
    pub(crate) fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The stages with their live settings: name, dependencies, exchange and routing
    /// key as at start (changing them needs a restart, like the topology they rely
    /// on); `timeout`, `max_attempts`, `backoff` and `max_in_flight` as configured now.
    pub(crate) fn stages(&self) -> Vec<StageSettings> {
        let live = self.live();
        self.plan
            .stages()
            .iter()
            .map(|s| with_live_tunables(s, &live))
            .collect()
    }

    /// The settings of stage `name` (see [`Engine::stages`]); the defaults for a stage
    /// the pipeline does not have.
    pub(crate) fn stage_settings(&self, name: &str) -> StageSettings {
        match self.plan.stage(name) {
            Some(s) => with_live_tunables(s, &self.live()),
            None => StageSettings::new(name, config8::DEFAULT_EXCHANGE),
        }
    }

    /// When stage `name` may not publish at `now` (outside every one of its scan
    /// windows, read live): the time its next window opens. `None`: it may publish.
    pub(crate) fn window_closed_until(
        &self,
        name: &str,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let live = self.live();
        config8::window::closed_until(live.workflow.windows_of(name), now)
    }

    /// Sets [`model8::StageView::waiting_for_window_until`] on the due (`pending`)
    /// stages of active (`pending` or `running`) workflows that are outside their scan
    /// windows now.
    pub(crate) fn annotate_windows(&self, views: &mut [model8::WorkflowView]) {
        use model8::{GoTime, StageStatus, WorkflowStatus};
        let settings = self.live();
        let now = self.now();
        if settings.workflow.windows.is_empty()
            && settings
                .workflow
                .stages
                .0
                .iter()
                .all(|(_, s)| s.windows.is_none())
        {
            return;
        }
        let mut closed: HashMap<String, Option<DateTime<Utc>>> = HashMap::new();
        for v in views {
            if !matches!(v.status, WorkflowStatus::Pending | WorkflowStatus::Running) {
                continue;
            }
            for s in &mut v.stages {
                if s.status != StageStatus::Pending {
                    continue;
                }
                let until = *closed.entry(s.name.clone()).or_insert_with(|| {
                    config8::window::closed_until(settings.workflow.windows_of(&s.name), now)
                });
                s.waiting_for_window_until = until.map(GoTime::from_utc);
            }
        }
    }

    /// Whether this replica may schedule and publish now.
    pub(crate) fn is_leader(&self) -> bool {
        *self.role.borrow() == Role::Leader
    }

    /// Whether shutdown has begun.
    pub(crate) fn stopping(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Now, from the engine's clock.
    pub(crate) fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// A new workflow id: a time-ordered UUID (version 7 layout: the clock's
    /// milliseconds, then this process's sequence number, then 32 random bits), so
    /// that the rows of new workflows land at the end of the tables' primary-key
    /// indexes instead of on random pages (creating 100,000 workflows took about 40%
    /// longer with random ids).
    pub(crate) fn new_workflow_id(&self) -> Uuid {
        let ms = u64::try_from(self.now().timestamp_millis()).unwrap_or(0) & 0xffff_ffff_ffff;
        let seq = self.id_seq.fetch_add(1, Ordering::Relaxed);
        let random = u128::from(rand::random::<u32>());
        Uuid::from_u128(
            (u128::from(ms) << 80)
                | (0x7 << 76)
                | (u128::from((seq >> 30) & 0xfff) << 64)
                | (0b10 << 62)
                | (u128::from(seq & 0x3fff_ffff) << 32)
                | random,
        )
    }
}

/// `start` with the live values of the settings that apply without restart.
/// The in-flight limit is the one the stage's protocol implies (a chain stage: 1).
fn with_live_tunables(start: &StageSettings, live: &LiveSettings) -> StageSettings {
    let mut s = start.clone();
    if let Some(l) = live.workflow.stages.get(&start.name) {
        s.timeout = l.timeout;
        s.max_attempts = l.max_attempts.max(1);
        s.backoff = l.backoff.clone();
        s.max_in_flight = l.max_in_flight;
    }
    s.max_in_flight = protocol::of(s.protocol).in_flight_limit(s.max_in_flight);
    s
}

/// `t + d`, saturating.
pub(crate) fn plus(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `t - d`, saturating.
pub(crate) fn minus(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(d)
        .ok()
        .and_then(|d| t.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// How long from `now` until `t` (zero when past).
pub(crate) fn until(now: DateTime<Utc>, t: DateTime<Utc>) -> Duration {
    (t - now).to_std().unwrap_or(Duration::ZERO)
}
