//! Starting workflows: on every scheduler tick and domain change (for idle enabled
//! domains, respecting the `rescan_after` cool-down), and on request ("scan now").

use std::collections::VecDeque;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use config8::StageSettings;
use config8::{Granularity, SchedulerMode};
use db8::{ClaimedStage, Created, DbError, InitialClaim, NewWorkflow, StageKey, StagePlan};
use futures::TryStreamExt;
use model8::{DomainRef, GoTime, StageStatus, StageView, WorkflowStatus, WorkflowView};
use uuid::Uuid;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;

use super::dispatcher::{Published, StepError};
use super::{Engine, minus};

/// Batches of new workflows created at once.
const CREATE_DEPTH: usize = 2;
use crate::scan_now::{ScanNow, ScanNowError};

/// The view of a workflow just created from `new` at `now`, as the repository would
/// return it (saves a round trip per workflow).
fn created_view(new: &NewWorkflow, now: DateTime<Utc>) -> WorkflowView {
    let at = GoTime::from_utc(micros(now));
    WorkflowView {
        kind: model8::WorkflowKind::Managed,
        id: new.id,
        status: WorkflowStatus::Pending,
        created_at: at,
        updated_at: at,
        domains: new.domains.iter().map(|d| d.name.clone()).collect(),
        stages: new
            .stages
            .iter()
            .map(|s| StageView {
                name: s.name.clone(),
                status: if s.depends_on.is_empty() {
                    StageStatus::Pending
                } else {
                    StageStatus::Waiting
                },
                attempt: 0,
                started_at: None,
                finished_at: None,
                detail: None,
                waiting_for_window_until: None,
            })
            .collect(),
    }
}

/// `t` truncated to microseconds, the database's precision.
fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    let us = t.timestamp_subsec_micros();
    t.with_nanosecond(us * 1000).unwrap_or(t)
}

use chrono::Timelike;

impl Engine {
    /// One scheduler check (leader only): starts workflows for the enabled domains
    /// that need one. Returns how many were created.
    pub(crate) async fn start_workflows(&self) -> Result<u64, DbError> {
        if !self.is_leader() {
            return Ok(0);
        }
        let settings = self.live();
        let plans = self.plan().stage_plans();
        let now = self.now();
        let ended_before = minus(now, settings.workflow.rescan_after);
        match self.start_settings().workflow.granularity {
            Granularity::PerDomain => {
                self.create_per_domain(&plans, ended_before, now, None)
                    .await
            }
            Granularity::PerCycle => {
                if self.workflows.any_active().await? {
                    return Ok(0);
                }
                if let Some(ended) = self.workflows.last_ended_at().await?
                    && ended > ended_before
                {
                    tracing::debug!(last_ended = %ended, "per_cycle cool-down (rescan_after) not over");
                    return Ok(0);
                }
                Ok(self.create_cycle(&plans, now).await?.map_or(0, |_| 1))
            }
        }
    }

    /// Creates one workflow per idle domain (no active workflow, last one ended at or
    /// before `ended_before`), in batches; the next page of domains is read while a
    /// batch is being created. `views` collects the created workflows' views when
    /// given. Returns how many were created.
    ///
    /// As leader, the first attempts of the stages without dependencies are claimed
    /// in the transaction that creates the workflows ([`Engine::initial_claim`]) and
    /// published from here at once, with the dispatcher's publish and record steps:
    /// creating the next batches, publishing and recording overlap (at most
    /// [`CREATE_DEPTH`] batches of each; created batches wait for a free publishing
    /// slot, at most [`CREATE_DEPTH`] of them with those being created, so the broker
    /// never waits for the database), so the database and the broker work in
    /// parallel and no claim round is needed. Stages that cannot take full batches now
    /// (backpressure, `max_in_flight`) are left to the dispatcher, which is woken.
    async fn create_per_domain(
        &self,
        plans: &[StagePlan],
        ended_before: DateTime<Utc>,
        now: DateTime<Utc>,
        mut views: Option<&mut Vec<WorkflowView>>,
    ) -> Result<u64, DbError> {
        let batch_size = self.tuning.create_batch.max(1);
        let roots = plans.iter().filter(|p| p.depends_on.is_empty()).count();
        // The stages with their settings as of this check (a live timeout is read
        // again when a batch is recorded).
        let stages = self.stages();
        let mut count = 0;
        let mut error = None;
        // The next page of domains is read while up to CREATE_DEPTH batches are being
        // created (each in its own transaction, on its own connection).
        let mut paging: Option<BoxFuture<'_, Result<Vec<DomainRef>, DbError>>> =
            Some(Box::pin(self.idle_page(ended_before, None, batch_size)));
        type Creating<'a> = BoxFuture<'a, (Vec<NewWorkflow>, Result<Created, DbError>)>;
        let mut creating: FuturesOrdered<Creating<'_>> = FuturesOrdered::new();
        let mut publishing: FuturesOrdered<
            BoxFuture<'_, (&StageSettings, Result<Published, StepError>)>,
        > = FuturesOrdered::new();
        let mut recording: FuturesOrdered<BoxFuture<'_, Result<u64, StepError>>> =
            FuturesOrdered::new();
        // Created batches (per stage) waiting for a publishing slot.
        let mut ready: VecDeque<(&StageSettings, Vec<ClaimedStage>)> = VecDeque::new();
        loop {
            if self.stopping() || !self.is_leader() || error.is_some() {
                paging = None;
            }
            while publishing.len() < CREATE_DEPTH
                && let Some((stage, batch)) = ready.pop_front()
            {
                self.publish_claimed(stage, batch, &mut publishing).await;
            }
            if paging.is_none()
                && creating.is_empty()
                && ready.is_empty()
                && publishing.is_empty()
                && recording.is_empty()
            {
                break;
            }
            // A new batch only while few are waiting to be published: the claims it
            // takes are published promptly, well within their lease, and memory stays
            // bounded.
            let may_page = paging.is_some()
                && creating.len() + ready.len() < CREATE_DEPTH
                && recording.len() < CREATE_DEPTH;
            tokio::select! {
                biased;
                Some(_) = recording.next(), if !recording.is_empty() => {
                    // Failures are logged by `record` (the claims expire and the
                    // dispatcher publishes them again).
                }
                Some((stage, published)) = publishing.next(), if !publishing.is_empty() => {
                    // A failed publish gave its claims back and paused the stage (logged).
                    if let Ok(p) = published {
                        recording.push_back(Box::pin(self.record(stage, p)));
                    }
                }
                Some((batch, created)) = creating.next(), if !creating.is_empty() => {
                    match created {
                        Ok(created) => {
                            let claimed_stages = self.group_claimed(&stages, created.claimed, &mut ready).await;
                            if created.ids.is_empty() {
                                continue;
                            }
                            count += created.ids.len() as u64;
                            self.metrics.workflows_started(created.ids.len() as u64);
                            tracing::info!(created = created.ids.len(), "workflows started");
                            if claimed_stages < roots {
                                // Due stages that this loop does not publish.
                                self.dispatch_wake.now();
                            }
                            if let Some(views) = views.as_deref_mut() {
                                let set: std::collections::HashSet<Uuid> =
                                    created.ids.iter().copied().collect();
                                views.extend(
                                    batch
                                        .iter()
                                        .filter(|w| set.contains(&w.id))
                                        .map(|w| created_view(w, now)),
                                );
                            }
                        }
                        Err(e) => {
                            error.get_or_insert(e);
                        }
                    }
                }
                page = async { paging.as_mut().expect("guarded").await }, if may_page => {
                    paging = None;
                    match page {
                        Err(e) => {
                            error.get_or_insert(e);
                        }
                        Ok(page) => {
                            if let Some(last) = page.last() {
                                if page.len() == batch_size {
                                    paging = Some(Box::pin(self.idle_page(
                                        ended_before,
                                        Some(last.id),
                                        batch_size,
                                    )));
                                }
                                let batch: Vec<NewWorkflow> = page
                                    .into_iter()
                                    .map(|d| NewWorkflow {
                                        id: self.new_workflow_id(),
                                        domains: vec![d],
                                        stages: plans.to_vec(),
                                    })
                                    .collect();
                                let claim = self.initial_claim(&stages);
                                creating.push_back(Box::pin(async move {
                                    let started = std::time::Instant::now();
                                    let created = match claim {
                                        Some(claim) => {
                                            self.workflows.create_claimed(&batch, now, &claim).await
                                        }
                                        None => self
                                            .workflows
                                            .create_workflows(&batch, now)
                                            .await
                                            .map(|ids| Created { ids, claimed: Vec::new() }),
                                    };
                                    tracing::debug!(
                                        workflows = batch.len(), elapsed = ?started.elapsed(),
                                        "workflow batch created"
                                    );
                                    (batch, created)
                                }));
                            }
                        }
                    }
                }
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(count),
        }
    }

    /// One page of idle domains (see [`db8::WorkflowRepository::idle_domains`]).
    async fn idle_page(
        &self,
        ended_before: DateTime<Utc>,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<DomainRef>, DbError> {
        let started = std::time::Instant::now();
        let page = self
            .workflows
            .idle_domains(ended_before, after, limit)
            .await;
        tracing::debug!(elapsed = ?started.elapsed(), "page of idle domains read");
        page
    }

    /// The claim new workflows are created with: the stages without dependencies
    /// that take full batches now (no backpressure), have no `max_in_flight` limit
    /// and are inside their scan windows, as leader; `None` when there is none.
    fn initial_claim(&self, stages: &[StageSettings]) -> Option<InitialClaim> {
        if !self.is_leader() || self.stopping() {
            return None;
        }
        let now = self.now();
        let names: Vec<String> = stages
            .iter()
            .filter(|s| {
                s.depends_on.is_empty()
                    && s.max_in_flight == 0
                    && self.takes_full_batches(&s.name, now)
                    && self.window_closed_until(&s.name, now).is_none()
            })
            .map(|s| s.name.clone())
            .collect();
        (!names.is_empty()).then_some(InitialClaim {
            owner: self.owner,
            lease: self.tuning.claim_lease,
            stages: names,
        })
    }

    /// Queues attempts claimed at creation in `ready`, one batch per stage. Returns
    /// how many stages had claims.
    async fn group_claimed<'a>(
        &self,
        stages: &'a [StageSettings],
        claimed: Vec<ClaimedStage>,
        ready: &mut VecDeque<(&'a StageSettings, Vec<ClaimedStage>)>,
    ) -> usize {
        let mut by_stage: Vec<(&StageSettings, Vec<ClaimedStage>)> = Vec::new();
        for c in claimed {
            match by_stage.iter_mut().find(|(s, _)| s.name == c.key.stage) {
                Some((_, batch)) => batch.push(c),
                None => match stages.iter().find(|s| s.name == c.key.stage) {
                    Some(s) => by_stage.push((s, vec![c])),
                    None => {
                        // Cannot happen (the claim names configured stages only).
                        let key = [c.key];
                        self.release(&key[0].stage, &key, self.now()).await;
                    }
                },
            }
        }
        let n = by_stage.len();
        ready.extend(by_stage);
        n
    }

    /// Starts publishing a batch claimed at creation; a stage that began refusing jobs
    /// meanwhile (or leadership lost, or shutdown) gets its claims back unpublished,
    /// and the dispatcher is woken for them.
    async fn publish_claimed<'a>(
        &'a self,
        stage: &'a StageSettings,
        batch: Vec<ClaimedStage>,
        publishing: &mut FuturesOrdered<
            BoxFuture<'a, (&'a StageSettings, Result<Published, StepError>)>,
        >,
    ) {
        if self.is_leader() && !self.stopping() && self.takes_full_batches(&stage.name, self.now())
        {
            publishing.push_back(Box::pin(async move {
                (stage, self.publish_batch(stage, batch).await)
            }));
        } else {
            let keys: Vec<StageKey> = batch.into_iter().map(|c| c.key).collect();
            self.release(&stage.name, &keys, self.now()).await;
            self.dispatch_wake.now();
        }
    }

    /// Creates one workflow over every enabled domain, if there is any.
    async fn create_cycle(
        &self,
        plans: &[StagePlan],
        now: DateTime<Utc>,
    ) -> Result<Option<WorkflowView>, DbError> {
        let domains: Vec<DomainRef> = self
            .domains
            .stream_enabled()
            .await?
            .map_ok(DomainRef::from)
            .try_collect()
            .await?;
        self.create_one(domains, plans, now).await
    }

    async fn create_one(
        &self,
        domains: Vec<DomainRef>,
        plans: &[StagePlan],
        now: DateTime<Utc>,
    ) -> Result<Option<WorkflowView>, DbError> {
        if domains.is_empty() {
            return Ok(None);
        }
        let new = NewWorkflow {
            id: self.new_workflow_id(),
            domains,
            stages: plans.to_vec(),
        };
        let created = self
            .workflows
            .create_workflows(std::slice::from_ref(&new), now)
            .await?;
        if created.is_empty() {
            return Ok(None);
        }
        self.metrics.workflows_started(1);
        tracing::info!(workflow = %new.id, domains = new.domains.len(), "workflow started");
        self.dispatch_wake.now();
        Ok(Some(created_view(&new, now)))
    }

    /// "Scan now": see [`ScanNow::scan_now`].
    pub(crate) async fn scan(
        &self,
        domain_ids: Option<Vec<Uuid>>,
    ) -> Result<Vec<WorkflowView>, ScanNowError> {
        if self.start_settings().scheduler.mode != SchedulerMode::Managed {
            return Err(ScanNowError::Invalid(
                "workflows can only be started in managed mode (Scheduler.mode is bootstrap)"
                    .into(),
            ));
        }
        if !self.is_leader() {
            return Err(ScanNowError::NotLeader);
        }
        let plans = self.plan().stage_plans();
        let now = self.now();
        let granularity = self.start_settings().workflow.granularity;
        let mut views = Vec::new();
        match domain_ids {
            None => match granularity {
                // Every enabled domain without an active workflow, whatever the
                // cool-down: the operator asked.
                Granularity::PerDomain => {
                    // (A far future bound rather than the largest timestamp, which not
                    // every database encoding accepts.)
                    let any_end =
                        super::plus(now, std::time::Duration::from_secs(100 * 366 * 86_400));
                    self.create_per_domain(&plans, any_end, now, Some(&mut views))
                        .await?;
                }
                Granularity::PerCycle => {
                    if !self.workflows.any_active().await? {
                        views.extend(self.create_cycle(&plans, now).await?);
                    }
                }
            },
            Some(ids) => {
                let mut domains = Vec::with_capacity(ids.len());
                for id in ids {
                    let d = match self.domains.get(id).await {
                        Ok(d) => d,
                        Err(DbError::NotFound(_)) => {
                            return Err(ScanNowError::Invalid(format!("unknown domain id {id}")));
                        }
                        Err(e) => return Err(e.into()),
                    };
                    if !d.enabled {
                        return Err(ScanNowError::Invalid(format!(
                            "domain {id} ({}) is disabled",
                            d.name
                        )));
                    }
                    domains.push(DomainRef::from(d));
                }
                match granularity {
                    Granularity::PerDomain => {
                        for chunk in domains.chunks(self.tuning.create_batch.max(1)) {
                            let batch: Vec<NewWorkflow> = chunk
                                .iter()
                                .map(|d| NewWorkflow {
                                    id: self.new_workflow_id(),
                                    domains: vec![d.clone()],
                                    stages: plans.clone(),
                                })
                                .collect();
                            let created = self.workflows.create_workflows(&batch, now).await?;
                            if created.is_empty() {
                                continue;
                            }
                            self.metrics.workflows_started(created.len() as u64);
                            let set: std::collections::HashSet<Uuid> =
                                created.into_iter().collect();
                            views.extend(
                                batch
                                    .iter()
                                    .filter(|w| set.contains(&w.id))
                                    .map(|w| created_view(w, now)),
                            );
                        }
                        if !views.is_empty() {
                            tracing::info!(created = views.len(), "workflows started on request");
                            self.dispatch_wake.now();
                        }
                    }
                    Granularity::PerCycle => {
                        if !self.workflows.any_active().await? {
                            views.extend(self.create_one(domains, &plans, now).await?);
                        }
                    }
                }
            }
        }
        Ok(views)
    }
}

/// The [`ScanNow`] the HTTP layer calls.
#[derive(Debug, Clone)]
pub(crate) struct EngineScanNow(pub(crate) Arc<Engine>);

#[async_trait]
impl ScanNow for EngineScanNow {
    async fn scan_now(
        &self,
        domain_ids: Option<Vec<Uuid>>,
    ) -> Result<Vec<WorkflowView>, ScanNowError> {
        let mut views = self.0.scan(domain_ids).await?;
        // Ahead of the backlog where slots are shared fairly (a claim between the
        // creation and this mark takes them in the usual order).
        let ids: Vec<Uuid> = views.iter().map(|v| v.id).collect();
        self.0.workflows.mark_requested(&ids).await?;
        self.0.annotate_windows(&mut views);
        Ok(views)
    }
}
