//! The starter's bulk path: one workflow per idle domain, created in batches while the
//! next page of domains is read and, as leader, the first attempts claimed at creation
//! are published and recorded, all four steps overlapping
//! ([`Engine::create_per_domain`]).

use std::collections::{HashMap, HashSet, VecDeque};

use chrono::{DateTime, Timelike, Utc};
use config8::StageSettings;
use db8::{ClaimedStage, Created, DbError, InitialClaim, NewWorkflow, StageKey, StagePlan};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use model8::{DomainRef, GoTime, StageStatus, StageView, WorkflowStatus, WorkflowView};
use uuid::Uuid;

use super::Engine;
use super::dispatcher::{Published, StepError};

/// Batches in each step at once.
const CREATE_DEPTH: usize = 2;

type Paging<'a> = BoxFuture<'a, Result<Vec<DomainRef>, DbError>>;
type Creating<'a> = BoxFuture<'a, (Vec<NewWorkflow>, Result<Created, DbError>)>;
type Publishing<'a> = BoxFuture<'a, (&'a StageSettings, Result<Published, StepError>)>;
type Recording<'a> = BoxFuture<'a, Result<u64, StepError>>;

/// What one run creates workflows from.
struct Inputs<'a> {
    plans: &'a [StagePlan],
    /// The stages with their settings as of this run (a live timeout is read again
    /// when a batch is recorded).
    stages: &'a [StageSettings],
    ended_before: DateTime<Utc>,
    now: DateTime<Utc>,
    batch_size: usize,
    /// Stages without dependencies.
    roots: usize,
}

/// The batches in each step of one run, and what it has done so far.
#[derive(Default)]
struct Steps<'a> {
    /// The next page of idle domains, while there may be one.
    paging: Option<Paging<'a>>,
    /// Batches of workflows being created, each in its own transaction.
    creating: FuturesOrdered<Creating<'a>>,
    /// Created batches (per stage) waiting for a publishing slot.
    ready: VecDeque<(&'a StageSettings, Vec<ClaimedStage>)>,
    publishing: FuturesOrdered<Publishing<'a>>,
    recording: FuturesOrdered<Recording<'a>>,
    created: u64,
    error: Option<DbError>,
}

impl Steps<'_> {
    fn drained(&self) -> bool {
        self.paging.is_none()
            && self.creating.is_empty()
            && self.ready.is_empty()
            && self.publishing.is_empty()
            && self.recording.is_empty()
    }

    /// A new page only while few batches wait to be published: the claims it takes
    /// are published promptly, well within their lease, and memory stays bounded.
    fn may_page(&self) -> bool {
        self.paging.is_some()
            && self.creating.len() + self.ready.len() < CREATE_DEPTH
            && self.recording.len() < CREATE_DEPTH
    }
}

/// The views of the workflows of `batch` that were created (`ids`) at `now`, as the
/// repository would return them (saves a round trip per workflow): the stages
/// `claimed` at creation read `dispatched` at their attempt.
pub(super) fn created_views(
    batch: &[NewWorkflow],
    ids: &[Uuid],
    claimed: &[ClaimedStage],
    now: DateTime<Utc>,
) -> Vec<WorkflowView> {
    let ids: HashSet<Uuid> = ids.iter().copied().collect();
    let claimed: HashMap<(Uuid, &str), u32> = claimed
        .iter()
        .map(|c| ((c.key.workflow_id, c.key.stage.as_str()), c.key.attempt))
        .collect();
    let at = GoTime::from_utc(micros(now));
    let stage = |id: Uuid, s: &StagePlan| {
        let (status, attempt) = match claimed.get(&(id, s.name.as_str())) {
            Some(&attempt) => (StageStatus::Dispatched, attempt),
            None if s.depends_on.is_empty() => (StageStatus::Pending, 0),
            None => (StageStatus::Waiting, 0),
        };
        StageView {
            name: s.name.clone(),
            status,
            attempt,
            started_at: None,
            finished_at: None,
            detail: None,
            waiting_for_window_until: None,
        }
    };
    batch
        .iter()
        .filter(|w| ids.contains(&w.id))
        .map(|w| WorkflowView {
            kind: model8::WorkflowKind::Managed,
            id: w.id,
            status: WorkflowStatus::Pending,
            created_at: at,
            updated_at: at,
            domains: w.domains.iter().map(|d| d.name.clone()).collect(),
            stages: w.stages.iter().map(|s| stage(w.id, s)).collect(),
        })
        .collect()
}

/// `t` truncated to microseconds, the database's precision.
fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    let us = t.timestamp_subsec_micros();
    t.with_nanosecond(us * 1000).unwrap_or(t)
}

impl Engine {
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
    pub(super) async fn create_per_domain(
        &self,
        plans: &[StagePlan],
        ended_before: DateTime<Utc>,
        now: DateTime<Utc>,
        mut views: Option<&mut Vec<WorkflowView>>,
    ) -> Result<u64, DbError> {
        let stages = self.stages();
        let inputs = Inputs {
            plans,
            stages: &stages,
            ended_before,
            now,
            batch_size: self.tuning.create_batch.max(1),
            roots: plans.iter().filter(|p| p.depends_on.is_empty()).count(),
        };
        let mut steps = Steps {
            paging: Some(Box::pin(self.idle_page(
                ended_before,
                None,
                inputs.batch_size,
            ))),
            ..Steps::default()
        };
        loop {
            if self.stopping() || !self.is_leader() || steps.error.is_some() {
                steps.paging = None;
            }
            while steps.publishing.len() < CREATE_DEPTH
                && let Some((stage, batch)) = steps.ready.pop_front()
            {
                self.publish_claimed(stage, batch, &mut steps.publishing)
                    .await;
            }
            if steps.drained() {
                break;
            }
            let may_page = steps.may_page();
            let paging = &mut steps.paging;
            tokio::select! {
                biased;
                // Failures are logged by `record` (the claims expire and the
                // dispatcher publishes them again).
                Some(_) = steps.recording.next(), if !steps.recording.is_empty() => {}
                Some((stage, published)) = steps.publishing.next(), if !steps.publishing.is_empty() => {
                    // A failed publish gave its claims back and paused the stage (logged).
                    if let Ok(p) = published {
                        steps.recording.push_back(Box::pin(self.record(stage, p)));
                    }
                }
                Some((batch, created)) = steps.creating.next(), if !steps.creating.is_empty() => {
                    self.on_created(&inputs, &mut steps, &batch, created, views.as_deref_mut()).await;
                }
                page = async { paging.as_mut().expect("guarded").await }, if may_page => {
                    steps.paging = None;
                    self.on_page(&inputs, &mut steps, page);
                }
            }
        }
        steps.error.map_or(Ok(steps.created), Err)
    }

    /// A batch of workflows was created: its claimed first attempts wait for a
    /// publishing slot, and it is counted, logged and (when asked) viewed.
    async fn on_created<'a>(
        &self,
        inputs: &Inputs<'a>,
        steps: &mut Steps<'a>,
        batch: &[NewWorkflow],
        created: Result<Created, DbError>,
        views: Option<&mut Vec<WorkflowView>>,
    ) {
        let created = match created {
            Ok(created) => created,
            Err(e) => {
                steps.error.get_or_insert(e);
                return;
            }
        };
        if let Some(views) = views {
            views.extend(created_views(
                batch,
                &created.ids,
                &created.claimed,
                inputs.now,
            ));
        }
        let claimed_stages = self
            .group_claimed(inputs.stages, created.claimed, &mut steps.ready)
            .await;
        if created.ids.is_empty() {
            return;
        }
        let n = created.ids.len() as u64;
        steps.created += n;
        self.metrics.workflows_started(n);
        tracing::info!(created = n, "workflows started");
        if claimed_stages < inputs.roots {
            // Due stages that this run does not publish.
            self.dispatch_wake.now();
        }
    }

    /// A page of idle domains was read: the next one is asked for when this one was
    /// full, and a batch of workflows for it starts being created.
    fn on_page<'a>(
        &'a self,
        inputs: &Inputs<'a>,
        steps: &mut Steps<'a>,
        page: Result<Vec<DomainRef>, DbError>,
    ) {
        let page = match page {
            Ok(page) => page,
            Err(e) => {
                steps.error.get_or_insert(e);
                return;
            }
        };
        let Some(after) = page.last().map(|d| d.id) else {
            return;
        };
        if page.len() == inputs.batch_size {
            steps.paging = Some(Box::pin(self.idle_page(
                inputs.ended_before,
                Some(after),
                inputs.batch_size,
            )));
        }
        let batch: Vec<NewWorkflow> = page
            .into_iter()
            .map(|d| self.new_workflow(vec![d], inputs.plans))
            .collect();
        let claim = self.initial_claim(inputs.stages);
        steps
            .creating
            .push_back(Box::pin(self.create_batch(batch, inputs.now, claim)));
    }

    /// Creates `batch` at `now`, claiming `claim` in the same transaction when given;
    /// returns the batch with the outcome.
    async fn create_batch(
        &self,
        batch: Vec<NewWorkflow>,
        now: DateTime<Utc>,
        claim: Option<InitialClaim>,
    ) -> (Vec<NewWorkflow>, Result<Created, DbError>) {
        let started = std::time::Instant::now();
        let created = match claim {
            Some(claim) => self.workflows.create_claimed(&batch, now, &claim).await,
            None => self
                .workflows
                .create_workflows(&batch, now)
                .await
                .map(|ids| Created {
                    ids,
                    claimed: Vec::new(),
                }),
        };
        tracing::debug!(
            workflows = batch.len(), elapsed = ?started.elapsed(),
            "workflow batch created"
        );
        (batch, created)
    }

    /// A new workflow of stages `plans` over `domains`.
    pub(super) fn new_workflow(&self, domains: Vec<DomainRef>, plans: &[StagePlan]) -> NewWorkflow {
        NewWorkflow {
            id: self.new_workflow_id(),
            domains,
            stages: plans.to_vec(),
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
            if let Some((_, batch)) = by_stage.iter_mut().find(|(s, _)| s.name == c.key.stage) {
                batch.push(c);
            } else if let Some(s) = stages.iter().find(|s| s.name == c.key.stage) {
                by_stage.push((s, vec![c]));
            } else {
                // Cannot happen (the claim names configured stages only).
                let key = [c.key];
                self.release(&key[0].stage, &key, self.now()).await;
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
        publishing: &mut FuturesOrdered<Publishing<'a>>,
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
}
