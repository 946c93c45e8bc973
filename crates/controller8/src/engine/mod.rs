//! The managed-mode workflow engine: workflow creation, stage dispatch (claim →
//! publish → mark), result handling, timeouts, retries and notifications.
//!
//! Every operation here is one step that reads the time from the [`Clock`] and the
//! state from the repositories; the loops that call them live in
//! [`crate::scheduler`]. The steps are unit-tested on the in-memory implementations.

pub(crate) mod backoff;
pub(crate) mod dispatcher;
pub(crate) mod notify;
pub(crate) mod pipeline;
pub(crate) mod results;
pub(crate) mod starter;
#[cfg(test)]
mod tests;
pub(crate) mod timeouts;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use amqp8::Broker;
use chrono::{DateTime, TimeDelta, Utc};
use config8::{Settings, StageSettings};
use db8::{DomainRepository, WorkflowRepository};
use tokio::sync::{Notify, watch};
use uuid::Uuid;

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::role::Role;
use crate::tuning::Tuning;
use dispatcher::StagePressure;
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

    /// Wakes the loop at `t` (or now, if `t` is past).
    pub(crate) fn at(&self, t: DateTime<Utc>) {
        let mut due = lock(&self.due);
        due.insert(t);
        while due.len() > Self::CAPACITY {
            due.pop_last();
        }
        drop(due);
        self.notify.notify_one();
    }

    /// The earliest remembered due time after `now`, forgetting those at or before it
    /// (the round that runs at `now` handles them).
    pub(crate) fn next_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut due = lock(&self.due);
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
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) settings: watch::Receiver<Arc<Settings>>,
    pub(crate) role: watch::Receiver<Role>,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) tuning: Tuning,
    /// This process's claim owner id (new at every start).
    pub(crate) owner: Uuid,
    /// Wakes the dispatcher (new due work).
    pub(crate) dispatch_wake: Wake,
    /// Wakes the workflow starter / bootstrap check (domains changed).
    pub(crate) start_wake: Wake,
    /// Per-stage backpressure state.
    pub(crate) pressure: Mutex<HashMap<String, StagePressure>>,
    /// The last valid pipeline, and every stage seen since start (so that work of a
    /// stage removed from the file by a live change is still published).
    plans: Mutex<PlanCache>,
}

struct PlanCache {
    last: Plan,
    known: BTreeMap<String, StageSettings>,
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
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) settings: watch::Receiver<Arc<Settings>>,
    pub(crate) role: watch::Receiver<Role>,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) tuning: Tuning,
}

impl Engine {
    /// An engine over `parts`; fails when the current pipeline is invalid.
    pub(crate) fn new(parts: EngineParts) -> Result<Engine, pipeline::PipelineError> {
        let plan = Plan::new(&parts.settings.borrow().workflow)?;
        let known = plan
            .stages()
            .iter()
            .map(|s| (s.name.clone(), s.clone()))
            .collect();
        Ok(Engine {
            domains: parts.domains,
            workflows: parts.workflows,
            broker: parts.broker,
            clock: parts.clock,
            metrics: parts.metrics,
            settings: parts.settings,
            role: parts.role,
            shutdown: parts.shutdown,
            tuning: parts.tuning,
            owner: Uuid::new_v4(),
            dispatch_wake: Wake::default(),
            start_wake: Wake::default(),
            pressure: Mutex::new(HashMap::new()),
            plans: Mutex::new(PlanCache { last: plan, known }),
        })
    }

    /// The settings of this moment.
    pub(crate) fn settings(&self) -> Arc<Settings> {
        self.settings.borrow().clone()
    }

    /// The pipeline of this moment: the current settings' if valid, else the last
    /// valid one (a broken live edit never replaces a good pipeline).
    pub(crate) fn plan(&self) -> Plan {
        let settings = self.settings();
        let mut cache = lock(&self.plans);
        match Plan::new(&settings.workflow) {
            Ok(plan) => {
                if plan != cache.last {
                    for s in plan.stages() {
                        cache.known.insert(s.name.clone(), s.clone());
                    }
                    cache.last = plan.clone();
                }
                plan
            }
            Err(e) => {
                tracing::error!(error = %e, "ignoring an invalid pipeline; keeping the last valid one");
                cache.last.clone()
            }
        }
    }

    /// The stages to dispatch: the current pipeline's, then any stage removed from it
    /// by a live change (existing workflows may still hold pending attempts of it).
    pub(crate) fn dispatch_stages(&self) -> Vec<StageSettings> {
        let plan = self.plan();
        let cache = lock(&self.plans);
        let mut out: Vec<StageSettings> = plan.stages().to_vec();
        for (name, s) in &cache.known {
            if plan.stage(name).is_none() {
                out.push(s.clone());
            }
        }
        out
    }

    /// The settings of stage `name`: the current pipeline's, else the last known, else
    /// the defaults.
    pub(crate) fn stage_settings(&self, name: &str) -> StageSettings {
        if let Some(s) = self.plan().stage(name) {
            return s.clone();
        }
        lock(&self.plans)
            .known
            .get(name)
            .cloned()
            .unwrap_or_else(|| StageSettings::new(name, config8::DEFAULT_EXCHANGE))
    }

    /// Whether this replica may schedule and publish now.
    pub(crate) fn is_leader(&self) -> bool {
        *self.role.borrow() == Role::Leader
    }

    /// Whether shutdown has begun.
    pub(crate) fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Now, from the engine's clock.
    pub(crate) fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }
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

/// Locks a mutex, recovering from poisoning.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
