//! [`WorkflowRepository`] in memory: the same state machine as the SQL of
//! `crate::pg::workflows`, written in Rust.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use model8::{
    DomainRef, GoTime, StageStatus, StageView, WorkflowId, WorkflowKind, WorkflowStatus,
    WorkflowView,
};
use uuid::Uuid;

use super::MemoryStore;
use crate::error::DbError;
use crate::plan::{active_domain, validate_batch};
use crate::ring::{Cycle, CycleStage};
use crate::shared::workflows::{DEFAULT_LIST_LIMIT, invalid_state, not_found};
use crate::time::{db_precision, plus};
use crate::traits::{
    ClaimedStage, Created, InitialClaim, NewWorkflow, RingApplied, RingEvent, RingRepository,
    RingStage, RingStall, StageKey, StalledStage, Transition, WorkflowFilter, WorkflowRepository,
};
use crate::transitions::{self, StageEvent};

/// Every workflow, with the indexes the queries need.
#[derive(Default)]
pub(super) struct Workflows {
    by_id: HashMap<WorkflowId, Wf>,
    /// Every workflow (active or not) holding a domain.
    by_domain: HashMap<Uuid, Vec<WorkflowId>>,
    /// The active single-domain workflow of a domain.
    active_single: HashMap<Uuid, WorkflowId>,
    /// The keys of the ring messages applied, with when each was received
    /// (`orchestratorm8_ring_message`).
    ring_keys: HashMap<String, DateTime<Utc>>,
    /// Per domain, the latest end of its workflows deleted by retention
    /// (`orchestratorm8_domain_last_ended`).
    last_ended: HashMap<Uuid, DateTime<Utc>>,
}

impl Workflows {
    /// Claims stage `stage` of the workflows `ids` (which have it) for `owner` until
    /// `until`, in that order.
    fn claim(
        &mut self,
        ids: impl Iterator<Item = WorkflowId>,
        stage: &str,
        owner: Uuid,
        until: DateTime<Utc>,
    ) -> Vec<ClaimedStage> {
        ids.map(|id| {
            let wf = self.by_id.get_mut(&id).expect("listed by the caller");
            let s = wf.stage_mut(stage).expect("listed by the caller");
            // A due attempt gets the next number; an expired one keeps its own.
            if StageEvent::Claim.apply(&mut s.status) {
                s.attempt += 1;
            } else {
                StageEvent::Reclaim.apply(&mut s.status);
            }
            s.claim_owner = Some(owner);
            s.claim_until = Some(until);
            ClaimedStage {
                key: StageKey {
                    workflow_id: id,
                    stage: stage.to_owned(),
                    attempt: s.attempt,
                },
                domains: wf.domains.clone(),
            }
        })
        .collect()
    }
}

struct Wf {
    id: WorkflowId,
    kind: WorkflowKind,
    status: WorkflowStatus,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    ended_at: Option<DateTime<Utc>>,
    active_domain: Option<Uuid>,
    /// Started on request ("scan now"): ahead of the backlog in fair claims.
    requested: bool,
    domains: Vec<DomainRef>,
    stages: Vec<Stage>,
}

struct Stage {
    name: String,
    depends_on: Vec<String>,
    status: StageStatus,
    attempt: u32,
    not_before: Option<DateTime<Utc>>,
    deadline: Option<DateTime<Utc>>,
    claim_owner: Option<Uuid>,
    claim_until: Option<DateTime<Utc>>,
    detail: Option<serde_json::Value>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    /// An observed stage's stall time.
    stall_at: Option<DateTime<Utc>>,
}

impl Stage {
    fn clear_claim(&mut self) {
        self.claim_owner = None;
        self.claim_until = None;
    }

    /// Whether `key` is the attempt this stage has in flight (dispatched or running).
    fn runs(&self, key: &StageKey) -> bool {
        transitions::in_flight(self.status) && self.attempt == key.attempt
    }

    /// Whether `key` is the attempt `owner` dispatched.
    fn claimed(&self, key: &StageKey, owner: Uuid) -> bool {
        self.status == StageStatus::Dispatched
            && self.claim_owner == Some(owner)
            && self.attempt == key.attempt
    }

    /// Whether a claim at `now` takes this stage: due, or dispatched under a lease
    /// that ended.
    fn claimable(&self, now: DateTime<Utc>) -> bool {
        let lease_over = self.claim_until.is_none_or(|u| u <= now);
        (StageEvent::Claim.allows(self.status)
            || StageEvent::Reclaim.allows(self.status) && lease_over)
            && self.not_before.is_some_and(|nb| nb <= now)
    }

    /// Whether this stage's attempt is in flight at `now`: dispatched under a live
    /// lease, or running.
    fn busy(&self, now: DateTime<Utc>) -> bool {
        self.status == StageStatus::Running
            || self.status == StageStatus::Dispatched && self.claim_until.is_some_and(|u| u > now)
    }

    /// A result of its in-flight attempt: ends the claim (an early result, before the
    /// publisher's record, also starts the attempt now).
    fn settle(&mut self, now: DateTime<Utc>) {
        if self.status == StageStatus::Dispatched {
            self.started_at = Some(now);
        }
        self.clear_claim();
        self.deadline = None;
        self.finished_at = Some(now);
    }
}

impl Wf {
    fn view(&self) -> WorkflowView {
        WorkflowView {
            id: self.id,
            kind: self.kind,
            status: self.status,
            created_at: GoTime::from_utc(self.created_at),
            updated_at: GoTime::from_utc(self.updated_at),
            domains: self.domains.iter().map(|d| d.name.clone()).collect(),
            stages: self
                .stages
                .iter()
                .map(|s| StageView {
                    name: s.name.clone(),
                    status: s.status,
                    attempt: s.attempt,
                    started_at: s.started_at.map(GoTime::from_utc),
                    finished_at: s.finished_at.map(GoTime::from_utc),
                    detail: s.detail.clone(),
                    waiting_for_window_until: None,
                })
                .collect(),
        }
    }

    /// The names of its completed stages.
    fn completed_stages(&self) -> Vec<String> {
        self.stages
            .iter()
            .filter(|s| s.status == StageStatus::Completed)
            .map(|s| s.name.clone())
            .collect()
    }

    fn stage_mut(&mut self, name: &str) -> Option<&mut Stage> {
        self.stages.iter_mut().find(|s| s.name == name)
    }

    /// The stage `key` names when it has that attempt in flight and the workflow is
    /// not terminal. A result applies to it: the workflow has started.
    fn running_stage(&mut self, key: &StageKey, now: DateTime<Utc>) -> Option<&mut Stage> {
        if self.status.is_terminal() || !self.stage_mut(&key.stage)?.runs(key) {
            return None;
        }
        if self.status == WorkflowStatus::Pending {
            self.status = WorkflowStatus::Running;
        }
        self.updated_at = now;
        self.stage_mut(&key.stage)
    }
}

impl Workflows {
    /// Ends a workflow: terminal status, unfinished stages cancelled, domain freed.
    fn finish(&mut self, id: WorkflowId, status: WorkflowStatus, now: DateTime<Utc>) {
        let Some(wf) = self.by_id.get_mut(&id) else {
            return;
        };
        wf.status = status;
        wf.updated_at = now;
        wf.ended_at = Some(now);
        for s in &mut wf.stages {
            if StageEvent::Cancel.apply(&mut s.status) {
                s.deadline = None;
                s.clear_claim();
                // A stage the PostgreSQL store has a row for (one that was ever due).
                if s.not_before.is_some() || s.attempt > 0 {
                    s.finished_at = Some(now);
                }
            }
        }
        if let Some(d) = wf.active_domain.take() {
            self.active_single.remove(&d);
        }
    }

    fn get(&self, id: WorkflowId) -> Result<&Wf, DbError> {
        self.by_id.get(&id).ok_or_else(|| not_found(id))
    }

    fn get_mut(&mut self, id: WorkflowId) -> Result<&mut Wf, DbError> {
        self.by_id.get_mut(&id).ok_or_else(|| not_found(id))
    }
}

impl MemoryStore {
    /// A failed attempt (`leader`: a time-out, fenced): see
    /// [`WorkflowRepository::fail_stage`].
    fn fail(
        &self,
        key: &StageKey,
        detail: Option<serde_json::Value>,
        retry_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        leader: bool,
    ) -> Result<Transition, DbError> {
        let now = db_precision(now);
        let mut state = if leader {
            self.leader_state()?
        } else {
            self.state()?
        };
        let wfs = &mut state.workflows;
        let Some(wf) = wfs.by_id.get_mut(&key.workflow_id) else {
            return Ok(Transition::Stale);
        };
        let Some(s) = wf.running_stage(key, now) else {
            return Ok(Transition::Stale);
        };
        if detail.is_some() {
            s.detail = detail.clone();
        }
        s.settle(now);
        match retry_at {
            Some(at) => {
                let at = db_precision(at);
                StageEvent::FailRetry.apply(&mut s.status);
                s.not_before = Some(at);
                Ok(Transition::Retrying { at })
            }
            None => {
                StageEvent::FailFinal.apply(&mut s.status);
                let domains = wf.domains.iter().map(|d| d.name.clone()).collect();
                wfs.finish(key.workflow_id, WorkflowStatus::Failed, now);
                // Its notification, with the transition (the outbox).
                let event = crate::outbox::failed_event(key, domains, detail);
                state.outbox.insert(&event, now);
                Ok(Transition::WorkflowFailed)
            }
        }
    }

    /// Creates the workflows of `batch` that do not conflict, claiming the first
    /// attempts `claim` names (see [`WorkflowRepository::create_claimed`]).
    fn create(
        &self,
        batch: &[NewWorkflow],
        now: DateTime<Utc>,
        claim: Option<&InitialClaim>,
    ) -> Result<Created, DbError> {
        validate_batch(batch)?;
        let now = db_precision(now);
        let until = claim.map(|c| db_precision(plus(now, c.lease)));
        let mut state = self.leader_state()?;
        let wfs = &mut state.workflows;
        let mut created = Created::default();
        for new in batch {
            if wfs.by_id.contains_key(&new.id) {
                continue;
            }
            let single = active_domain(&new.domains);
            if let Some(d) = single {
                if wfs.active_single.contains_key(&d) {
                    continue;
                }
                wfs.active_single.insert(d, new.id);
            }
            for d in &new.domains {
                wfs.by_domain.entry(d.id).or_default().push(new.id);
            }
            let stages = new
                .stages
                .iter()
                .map(|p| {
                    let ready = p.depends_on.is_empty();
                    let claimed = ready && claim.is_some_and(|c| c.stages.contains(&p.name));
                    if claimed {
                        created.claimed.push(ClaimedStage {
                            key: StageKey {
                                workflow_id: new.id,
                                stage: p.name.clone(),
                                attempt: 1,
                            },
                            domains: new.domains.clone(),
                        });
                    }
                    let mut status = if ready {
                        StageStatus::Pending
                    } else {
                        StageStatus::Waiting
                    };
                    if claimed {
                        StageEvent::Claim.apply(&mut status);
                    }
                    Stage {
                        name: p.name.clone(),
                        depends_on: p.depends_on.clone(),
                        status,
                        attempt: u32::from(claimed),
                        not_before: ready.then_some(now),
                        deadline: None,
                        claim_owner: claim.filter(|_| claimed).map(|c| c.owner),
                        claim_until: until.filter(|_| claimed),
                        detail: None,
                        started_at: None,
                        finished_at: None,
                        stall_at: None,
                    }
                })
                .collect();
            wfs.by_id.insert(
                new.id,
                Wf {
                    id: new.id,
                    kind: WorkflowKind::Managed,
                    status: WorkflowStatus::Pending,
                    created_at: now,
                    updated_at: now,
                    ended_at: None,
                    active_domain: single,
                    requested: false,
                    domains: new.domains.clone(),
                    stages,
                },
            );
            created.ids.push(new.id);
        }
        Ok(created)
    }
}

#[async_trait]
impl WorkflowRepository for MemoryStore {
    async fn create_workflows(
        &self,
        batch: &[NewWorkflow],
        now: DateTime<Utc>,
    ) -> Result<Vec<WorkflowId>, DbError> {
        Ok(self.create(batch, now, None)?.ids)
    }

    async fn create_claimed(
        &self,
        batch: &[NewWorkflow],
        now: DateTime<Utc>,
        claim: &InitialClaim,
    ) -> Result<Created, DbError> {
        self.create(batch, now, Some(claim))
    }

    async fn idle_domains(
        &self,
        ended_before: DateTime<Utc>,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<DomainRef>, DbError> {
        let ended_before = db_precision(ended_before);
        let state = self.state()?;
        let wfs = &state.workflows;
        let busy = |id: &Uuid| {
            wfs.last_ended.get(id).is_some_and(|e| *e > ended_before)
                || wfs.by_domain.get(id).is_some_and(|ids| {
                    ids.iter().any(|w| {
                        wfs.by_id[w]
                            .ended_at
                            .is_none_or(|ended| ended > ended_before)
                    })
                })
        };
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(state
            .domains
            .range((start, Bound::Unbounded))
            .map(|(_, d)| d)
            .filter(|d| d.enabled && !busy(&d.id))
            .take(limit)
            .map(|d| DomainRef::from(d.clone()))
            .collect())
    }

    async fn any_active(&self) -> Result<bool, DbError> {
        Ok(self
            .state()?
            .workflows
            .by_id
            .values()
            .any(|w| !w.status.is_terminal()))
    }

    async fn last_ended_at(&self) -> Result<Option<DateTime<Utc>>, DbError> {
        let state = self.state()?;
        let wfs = &state.workflows;
        Ok(wfs
            .by_id
            .values()
            .filter_map(|w| w.ended_at)
            .chain(wfs.last_ended.values().copied())
            .max())
    }

    async fn mark_requested(&self, ids: &[WorkflowId]) -> Result<u64, DbError> {
        let mut state = self.state()?;
        let mut n = 0;
        for id in ids {
            if let Some(w) = state.workflows.by_id.get_mut(id) {
                w.requested = true;
                n += 1;
            }
        }
        Ok(n)
    }

    async fn prune_finished(
        &self,
        ended_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, DbError> {
        let ended_before = db_precision(ended_before);
        let mut state = self.leader_state()?;
        let wfs = &mut state.workflows;
        let mut old: Vec<(DateTime<Utc>, WorkflowId)> = wfs
            .by_id
            .values()
            .filter_map(|w| w.ended_at.filter(|e| *e < ended_before).map(|e| (e, w.id)))
            .collect();
        old.sort();
        old.truncate(limit);
        for (ended, id) in &old {
            let w = wfs.by_id.remove(id).expect("listed above");
            for d in &w.domains {
                let last = wfs.last_ended.entry(d.id).or_insert(*ended);
                *last = (*last).max(*ended);
                if let Some(ids) = wfs.by_domain.get_mut(&d.id) {
                    ids.retain(|x| x != id);
                    if ids.is_empty() {
                        wfs.by_domain.remove(&d.id);
                    }
                }
            }
        }
        let mut keys: Vec<(DateTime<Utc>, String)> = wfs
            .ring_keys
            .iter()
            .filter(|(_, at)| **at < ended_before)
            .map(|(k, at)| (*at, k.clone()))
            .collect();
        keys.sort();
        for (_, k) in keys.into_iter().take(limit) {
            wfs.ring_keys.remove(&k);
        }
        Ok(old.len() as u64)
    }

    async fn in_flight_counts(&self, now: DateTime<Utc>) -> Result<HashMap<String, u64>, DbError> {
        let now = db_precision(now);
        let state = self.state()?;
        let mut counts = HashMap::new();
        for s in state.workflows.by_id.values().flat_map(|w| &w.stages) {
            if s.busy(now) {
                *counts.entry(s.name.clone()).or_insert(0) += 1;
            }
        }
        Ok(counts)
    }

    async fn claim_due(
        &self,
        stage: &str,
        owner: Uuid,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<ClaimedStage>, DbError> {
        let now = db_precision(now);
        let until = db_precision(plus(now, lease));
        let mut state = self.leader_state()?;
        let wfs = &mut state.workflows;
        let mut due: Vec<(DateTime<Utc>, WorkflowId)> = wfs
            .by_id
            .values()
            .filter(|w| matches!(w.status, WorkflowStatus::Pending | WorkflowStatus::Running))
            .filter_map(|w| {
                let s = w.stages.iter().find(|s| s.name == stage)?;
                s.claimable(now).then_some((s.not_before?, w.id))
            })
            .collect();
        due.sort();
        due.truncate(limit);
        Ok(wfs.claim(due.into_iter().map(|(_, id)| id), stage, owner, until))
    }

    async fn claim_due_fair(
        &self,
        stage: &str,
        owner: Uuid,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
        weights: &BTreeMap<String, u32>,
    ) -> Result<Vec<ClaimedStage>, DbError> {
        let now = db_precision(now);
        let until = db_precision(plus(now, lease));
        let mut state = self.leader_state()?;
        let wfs = &mut state.workflows;
        let company = |w: &Wf| {
            w.domains
                .first()
                .map(|d| d.companyname.clone())
                .unwrap_or_default()
        };
        // Per company: attempts of `stage` claimed or running now, and the due ones.
        let mut busy: HashMap<String, u64> = HashMap::new();
        let mut due: HashMap<String, Vec<(DateTime<Utc>, WorkflowId, bool)>> = HashMap::new();
        for w in wfs.by_id.values() {
            let Some(s) = w.stages.iter().find(|s| s.name == stage) else {
                continue;
            };
            if s.busy(now) {
                *busy.entry(company(w)).or_insert(0) += 1;
            }
            if matches!(w.status, WorkflowStatus::Pending | WorkflowStatus::Running)
                && s.claimable(now)
                && let Some(nb) = s.not_before
            {
                due.entry(company(w))
                    .or_default()
                    .push((nb, w.id, w.requested));
            }
        }
        // Requested first, then rank (in_flight + k) / weight, then oldest first: as the
        // PostgreSQL query.
        let mut ranked: Vec<(bool, f64, DateTime<Utc>, WorkflowId)> = Vec::new();
        for (c, mut items) in due {
            items.sort();
            let b = busy.get(&c).copied().unwrap_or(0) as f64;
            let w = f64::from(weights.get(&c).copied().unwrap_or(1).max(1));
            for (k, (nb, id, requested)) in items.into_iter().enumerate() {
                ranked.push((!requested, (b + k as f64) / w, nb, id));
            }
        }
        ranked.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then(a.1.total_cmp(&b.1))
                .then(a.2.cmp(&b.2))
                .then(a.3.cmp(&b.3))
        });
        ranked.truncate(limit);
        Ok(wfs.claim(
            ranked.into_iter().map(|(_, _, _, id)| id),
            stage,
            owner,
            until,
        ))
    }

    async fn mark_running(
        &self,
        keys: &[StageKey],
        owner: Uuid,
        now: DateTime<Utc>,
        deadline: DateTime<Utc>,
    ) -> Result<u64, DbError> {
        let now = db_precision(now);
        let deadline = db_precision(deadline);
        let mut state = self.leader_state()?;
        let mut changed = 0;
        for key in keys {
            let Some(wf) = state.workflows.by_id.get_mut(&key.workflow_id) else {
                continue;
            };
            let Some(s) = wf.stage_mut(&key.stage).filter(|s| s.claimed(key, owner)) else {
                continue;
            };
            StageEvent::PublishConfirmed.apply(&mut s.status);
            s.deadline = Some(deadline);
            s.clear_claim();
            s.started_at = Some(now);
            s.finished_at = None;
            if wf.status == WorkflowStatus::Pending {
                wf.status = WorkflowStatus::Running;
            }
            wf.updated_at = now;
            changed += 1;
        }
        Ok(changed)
    }

    async fn release(
        &self,
        keys: &[StageKey],
        owner: Uuid,
        not_before: DateTime<Utc>,
    ) -> Result<u64, DbError> {
        let not_before = db_precision(not_before);
        let mut state = self.leader_state()?;
        let mut changed = 0;
        for key in keys {
            let Some(wf) = state.workflows.by_id.get_mut(&key.workflow_id) else {
                continue;
            };
            let Some(s) = wf.stage_mut(&key.stage).filter(|s| s.claimed(key, owner)) else {
                continue;
            };
            StageEvent::Release.apply(&mut s.status);
            s.attempt -= 1;
            s.clear_claim();
            s.not_before = Some(not_before);
            changed += 1;
        }
        Ok(changed)
    }

    async fn complete_stage(
        &self,
        key: &StageKey,
        detail: Option<serde_json::Value>,
        now: DateTime<Utc>,
    ) -> Result<Transition, DbError> {
        let now = db_precision(now);
        let mut state = self.state()?;
        let wfs = &mut state.workflows;
        let Some(wf) = wfs.by_id.get_mut(&key.workflow_id) else {
            return Ok(Transition::Stale);
        };
        let Some(s) = wf.running_stage(key, now) else {
            return Ok(Transition::Stale);
        };
        s.settle(now);
        StageEvent::Complete.apply(&mut s.status);
        if detail.is_some() {
            s.detail = detail;
        }
        let completed = wf.completed_stages();
        for s in &mut wf.stages {
            if s.depends_on.iter().all(|d| completed.contains(d))
                && StageEvent::Due.apply(&mut s.status)
            {
                s.not_before = Some(now);
            }
        }
        let done = completed.len() == wf.stages.len();
        if done {
            let domains = wf.domains.iter().map(|d| d.name.clone()).collect();
            wfs.finish(key.workflow_id, WorkflowStatus::Completed, now);
            // Its notification, with the transition (the outbox).
            let event = crate::OutboxEvent::WorkflowCompleted {
                workflow_id: key.workflow_id,
                domains,
            };
            state.outbox.insert(&event, now);
        }
        Ok(Transition::StageCompleted {
            workflow_completed: done,
        })
    }

    async fn fail_stage(
        &self,
        key: &StageKey,
        detail: Option<serde_json::Value>,
        retry_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Transition, DbError> {
        self.fail(key, detail, retry_at, now, false)
    }

    async fn time_out(
        &self,
        key: &StageKey,
        detail: Option<serde_json::Value>,
        retry_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Transition, DbError> {
        self.fail(key, detail, retry_at, now, true)
    }

    async fn timed_out(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<StageKey>, DbError> {
        let now = db_precision(now);
        let state = self.state()?;
        // By deadline, workflow and stage name in byte order (`COLLATE "C"`).
        let mut late: Vec<(DateTime<Utc>, WorkflowId, &str, u32)> = state
            .workflows
            .by_id
            .values()
            .filter(|w| !w.status.is_terminal())
            .flat_map(|w| w.stages.iter().map(move |s| (w.id, s)))
            .filter(|(_, s)| s.status == StageStatus::Running)
            .filter_map(|(id, s)| Some((s.deadline.filter(|d| *d < now)?, id, &*s.name, s.attempt)))
            .collect();
        late.sort();
        Ok(late
            .into_iter()
            .take(limit)
            .map(|(_, workflow_id, stage, attempt)| StageKey {
                workflow_id,
                stage: stage.to_owned(),
                attempt,
            })
            .collect())
    }

    async fn list(&self, filter: &WorkflowFilter) -> Result<Vec<WorkflowView>, DbError> {
        let state = self.state()?;
        let after = filter.after.map(|c| (db_precision(c.created_at), c.id));
        let mut all: Vec<&Wf> = state
            .workflows
            .by_id
            .values()
            .filter(|w| filter.status.is_none_or(|s| w.status == s))
            .filter(|w| filter.kind.is_none_or(|k| w.kind == k))
            .filter(|w| {
                filter
                    .domain
                    .as_ref()
                    .is_none_or(|n| w.domains.iter().any(|d| &d.name == n))
            })
            .filter(|w| {
                filter
                    .company
                    .as_ref()
                    .is_none_or(|c| w.domains.iter().any(|d| &d.companyname == c))
            })
            .filter(|w| after.is_none_or(|a| (w.created_at, w.id) < a))
            .collect();
        all.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        Ok(all
            .into_iter()
            .take(filter.limit.unwrap_or(DEFAULT_LIST_LIMIT))
            .map(Wf::view)
            .collect())
    }

    async fn get(&self, id: WorkflowId) -> Result<WorkflowView, DbError> {
        Ok(self.state()?.workflows.get(id)?.view())
    }

    async fn cancel(&self, id: WorkflowId, now: DateTime<Utc>) -> Result<WorkflowView, DbError> {
        let now = db_precision(now);
        let mut state = self.state()?;
        let wfs = &mut state.workflows;
        let status = wfs.get(id)?.status;
        if status.is_terminal() {
            return Err(invalid_state(id, "cancel", status));
        }
        wfs.finish(id, WorkflowStatus::Cancelled, now);
        Ok(wfs.get(id)?.view())
    }

    async fn pause(&self, id: WorkflowId, now: DateTime<Utc>) -> Result<WorkflowView, DbError> {
        let now = db_precision(now);
        let mut state = self.state()?;
        let wf = state.workflows.get_mut(id)?;
        if !matches!(wf.status, WorkflowStatus::Pending | WorkflowStatus::Running) {
            return Err(invalid_state(id, "pause", wf.status));
        }
        wf.status = WorkflowStatus::Paused;
        wf.updated_at = now;
        Ok(wf.view())
    }

    async fn resume(&self, id: WorkflowId, now: DateTime<Utc>) -> Result<WorkflowView, DbError> {
        let now = db_precision(now);
        let mut state = self.state()?;
        let wf = state.workflows.get_mut(id)?;
        if wf.status != WorkflowStatus::Paused {
            return Err(invalid_state(id, "resume", wf.status));
        }
        // Started: an attempt was confirmed once (a dispatched one is not yet).
        let started = |s: &Stage| s.attempt > u32::from(s.status == StageStatus::Dispatched);
        wf.status = if wf.stages.iter().any(started) {
            WorkflowStatus::Running
        } else {
            WorkflowStatus::Pending
        };
        wf.updated_at = now;
        Ok(wf.view())
    }

    async fn retry(&self, id: WorkflowId, now: DateTime<Utc>) -> Result<WorkflowView, DbError> {
        let now = db_precision(now);
        let mut state = self.state()?;
        let wfs = &mut state.workflows;
        let wf = wfs.get(id)?;
        if !matches!(
            wf.status,
            WorkflowStatus::Failed | WorkflowStatus::Cancelled
        ) {
            return Err(invalid_state(id, "retry", wf.status));
        }
        if wf.kind != WorkflowKind::Managed {
            return Err(DbError::InvalidState(format!(
                "cannot retry workflow {id}: it is an observed cycle"
            )));
        }
        let single = active_domain(&wf.domains);
        if let Some(d) = single {
            if wfs.active_single.contains_key(&d) {
                return Err(DbError::Conflict(format!(
                    "cannot retry workflow {id}: its domain has another active workflow"
                )));
            }
            wfs.active_single.insert(d, id);
        }
        let wf = wfs.get_mut(id)?;
        wf.active_domain = single;
        wf.ended_at = None;
        wf.updated_at = now;
        let completed = wf.completed_stages();
        wf.status = if completed.is_empty() {
            WorkflowStatus::Pending
        } else {
            WorkflowStatus::Running
        };
        for s in wf
            .stages
            .iter_mut()
            .filter(|s| s.status != StageStatus::Completed)
        {
            let due = s.depends_on.iter().all(|d| completed.contains(d));
            if due {
                StageEvent::RetryDue.apply(&mut s.status);
            } else {
                StageEvent::RetryWaiting.apply(&mut s.status);
            }
            s.attempt = 0;
            s.not_before = due.then_some(now);
            s.deadline = None;
            s.clear_claim();
            s.detail = None;
            s.started_at = None;
            s.finished_at = None;
        }
        Ok(wf.view())
    }

    async fn changed_since(
        &self,
        since: DateTime<Utc>,
        after: Option<WorkflowId>,
        limit: usize,
    ) -> Result<Vec<WorkflowView>, DbError> {
        let since = db_precision(since);
        let state = self.state()?;
        let mut changed: Vec<&Wf> = state
            .workflows
            .by_id
            .values()
            .filter(|w| match after {
                None => w.updated_at >= since,
                Some(a) => (w.updated_at, w.id) > (since, a),
            })
            .collect();
        changed.sort_by_key(|w| (w.updated_at, w.id));
        Ok(changed.into_iter().take(limit).map(Wf::view).collect())
    }
}

impl Workflows {
    /// The latest two observed cycles, newest first, with their stages in `ring` order.
    fn ring_load(&self, ring: &[RingStage]) -> Vec<Cycle> {
        let mut observed: Vec<&Wf> = self
            .by_id
            .values()
            .filter(|w| w.kind == WorkflowKind::Observed)
            .collect();
        observed.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        observed
            .into_iter()
            .take(2)
            .map(|w| Cycle {
                id: w.id,
                status: w.status,
                created_at: w.created_at,
                updated_at: w.updated_at,
                ended_at: w.ended_at,
                stages: ring
                    .iter()
                    .map(|r| {
                        let s = w.stages.iter().find(|s| s.name == r.name);
                        CycleStage {
                            name: r.name.clone(),
                            status: s.map_or(StageStatus::Waiting, |s| s.status),
                            attempt: s.map_or(0, |s| s.attempt),
                            started_at: s.and_then(|s| s.started_at),
                            finished_at: s.and_then(|s| s.finished_at),
                            stall_at: s.and_then(|s| s.stall_at),
                            detail: s.and_then(|s| s.detail.clone()),
                            dirty: false,
                        }
                    })
                    .collect(),
                new: false,
                dirty: false,
            })
            .collect()
    }

    /// Writes back the changed cycles.
    fn ring_store(&mut self, cycles: Vec<Cycle>) {
        for c in cycles.into_iter().filter(|c| c.dirty) {
            let stage = |i: usize, s: &CycleStage, names: &[String]| Stage {
                name: s.name.clone(),
                depends_on: i
                    .checked_sub(1)
                    .map(|p| vec![names[p].clone()])
                    .unwrap_or_default(),
                status: s.status,
                attempt: s.attempt,
                not_before: None,
                deadline: None,
                claim_owner: None,
                claim_until: None,
                detail: s.detail.clone(),
                started_at: s.started_at,
                finished_at: s.finished_at,
                stall_at: s.stall_at,
            };
            let names: Vec<String> = c.stages.iter().map(|s| s.name.clone()).collect();
            match self.by_id.get_mut(&c.id) {
                Some(w) => {
                    w.status = c.status;
                    w.updated_at = c.updated_at;
                    w.ended_at = c.ended_at;
                    for (i, s) in c.stages.iter().enumerate().filter(|(_, s)| s.dirty) {
                        let new = stage(i, s, &names);
                        match w.stages.iter_mut().find(|x| x.name == s.name) {
                            Some(x) => *x = new,
                            None => w.stages.push(new),
                        }
                    }
                }
                None => {
                    let stages = c
                        .stages
                        .iter()
                        .enumerate()
                        .map(|(i, s)| stage(i, s, &names))
                        .collect();
                    self.by_id.insert(
                        c.id,
                        Wf {
                            id: c.id,
                            kind: WorkflowKind::Observed,
                            requested: false,
                            status: c.status,
                            created_at: c.created_at,
                            updated_at: c.updated_at,
                            ended_at: c.ended_at,
                            active_domain: None,
                            domains: Vec::new(),
                            stages,
                        },
                    );
                }
            }
        }
    }
}

#[async_trait]
impl RingRepository for MemoryStore {
    async fn ring_apply(
        &self,
        ring: &[RingStage],
        event: &RingEvent,
    ) -> Result<RingApplied, DbError> {
        let mut state = self.state()?;
        let wfs = &mut state.workflows;
        if wfs.ring_keys.contains_key(&event.key) {
            return Ok(RingApplied::Duplicate);
        }
        wfs.ring_keys
            .insert(event.key.clone(), db_precision(event.at));
        let event = RingEvent {
            at: db_precision(event.at),
            ..event.clone()
        };
        let mut cycles = wfs.ring_load(ring);
        let applied = crate::ring::apply(&mut cycles, ring, &event);
        wfs.ring_store(cycles);
        Ok(applied)
    }

    async fn ring_stalls(
        &self,
        ring: &[RingStage],
        now: DateTime<Utc>,
    ) -> Result<Vec<RingStall>, DbError> {
        let mut state = self.leader_state()?;
        let wfs = &mut state.workflows;
        let mut cycles = wfs.ring_load(ring);
        let now = db_precision(now);
        let stalls = crate::ring::stall(&mut cycles, now);
        wfs.ring_store(cycles);
        // Their warnings, with the transition (the outbox).
        for s in &stalls {
            state
                .outbox
                .insert(&crate::outbox::ring_stall_event(s, ring), now);
        }
        Ok(stalls)
    }

    async fn ring_stalled(&self, ring: &[RingStage]) -> Result<Vec<StalledStage>, DbError> {
        let state = self.state()?;
        Ok(crate::ring::stalled(&state.workflows.ring_load(ring)))
    }

    async fn ring_give_up(
        &self,
        ring: &[RingStage],
        cycle: WorkflowId,
        stage: &str,
        message: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, DbError> {
        let mut state = self.leader_state()?;
        let wfs = &mut state.workflows;
        let mut cycles = wfs.ring_load(ring);
        let changed = crate::ring::give_up(&mut cycles, cycle, stage, message, db_precision(at));
        wfs.ring_store(cycles);
        Ok(changed)
    }
}
