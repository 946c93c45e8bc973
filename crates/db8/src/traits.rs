//! The repository traits: the boundary the orchestrator and sibling services program
//! against. All are object-safe and used as `Arc<dyn Trait>`.
//!
//! Times are passed in by the caller (never read from the database clock), so the
//! in-memory and PostgreSQL implementations behave identically under a test clock.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use model8::{
    Domain8, DomainRef, PostDomain8, WorkflowId, WorkflowKind, WorkflowStatus, WorkflowView,
};
use uuid::Uuid;

use crate::error::DbError;
pub use crate::ring::{RingApplied, RingEvent, RingMessage, RingStage, RingStall, StalledStage};

/// Access to the `cptm8domain` table.
#[async_trait]
pub trait DomainRepository: Send + Sync {
    /// Every domain, enabled or not, ordered by name.
    async fn list(&self) -> Result<Vec<Domain8>, DbError>;
    /// The enabled domains as a stream (constant memory however many there are).
    async fn stream_enabled(&self)
    -> Result<BoxStream<'static, Result<Domain8, DbError>>, DbError>;
    /// Whether at least one domain is enabled.
    async fn exists_enabled(&self) -> Result<bool, DbError>;
    /// One domain; [`DbError::NotFound`] when absent.
    async fn get(&self, id: Uuid) -> Result<Domain8, DbError>;
    /// Inserts a domain (validated by the caller with `PostDomain8::validated`).
    /// A name that already exists is [`DbError::Conflict`].
    async fn insert(&self, domain: &PostDomain8) -> Result<Domain8, DbError>;
    /// Replaces name, company and enabled flag; [`DbError::NotFound`] when absent,
    /// [`DbError::Conflict`] when the new name is taken.
    async fn update(&self, id: Uuid, domain: &PostDomain8) -> Result<Domain8, DbError>;
    /// Enables or disables a domain; [`DbError::NotFound`] when absent.
    async fn set_enabled(&self, id: Uuid, enabled: bool) -> Result<Domain8, DbError>;
    /// Deletes a domain; [`DbError::NotFound`] when absent.
    async fn delete(&self, id: Uuid) -> Result<(), DbError>;
}

/// Identifies one attempt of one stage of one workflow.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StageKey {
    /// Workflow.
    pub workflow_id: WorkflowId,
    /// Stage name.
    pub stage: String,
    /// Attempt number (1 for the first).
    pub attempt: u32,
}

/// The static shape of one stage as a new workflow records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagePlan {
    /// Stage name.
    pub name: String,
    /// Stages that must complete first.
    pub depends_on: Vec<String>,
}

/// A workflow to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewWorkflow {
    /// Its id (chosen by the caller).
    pub id: WorkflowId,
    /// Its domains (one for `per_domain`, all enabled ones for `per_cycle`).
    pub domains: Vec<DomainRef>,
    /// Its stages in pipeline order. Those without dependencies start `pending` (due
    /// now), the others `waiting`.
    pub stages: Vec<StagePlan>,
}

/// A stage attempt claimed for publishing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedStage {
    /// The attempt to publish (previous attempt + 1).
    pub key: StageKey,
    /// The workflow's domains.
    pub domains: Vec<DomainRef>,
}

/// A claim taken on the first attempts of new workflows as they are created (see
/// [`WorkflowRepository::create_claimed`]), so that a publisher can publish them at once
/// without a [`WorkflowRepository::claim_due`] round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialClaim {
    /// The claimer (a publisher's id, as for `claim_due`).
    pub owner: Uuid,
    /// How long the claim lasts; after it, the attempt is claimable again.
    pub lease: Duration,
    /// The stages to claim. Only stages without dependencies (due at creation) can be
    /// claimed; other names are ignored.
    pub stages: Vec<String>,
}

/// What [`WorkflowRepository::create_claimed`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Created {
    /// The workflows created, in batch order (the others were skipped, as by
    /// `create_workflows`).
    pub ids: Vec<WorkflowId>,
    /// The attempts claimed (attempt 1 of each claimed stage of each created workflow),
    /// in batch order, then in the workflow's stage order.
    pub claimed: Vec<ClaimedStage>,
}

/// What applying a stage result or a timeout did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Duplicate or stale (stage not running, attempt mismatch, workflow terminal):
    /// nothing changed.
    Stale,
    /// The stage completed; dependents whose dependencies are all complete became
    /// pending. `workflow_completed` when it was the last stage.
    StageCompleted {
        /// Whether the whole workflow is now completed.
        workflow_completed: bool,
    },
    /// The attempt failed and the stage is pending again, due at the given time.
    Retrying {
        /// When the next attempt is due.
        at: DateTime<Utc>,
    },
    /// The attempt failed with no retry left: stage failed, the workflow failed, its
    /// other unfinished stages cancelled.
    WorkflowFailed,
}

/// A position in the newest-first listing of workflows: the last workflow of a page.
/// [`WorkflowFilter::after`] lists the workflows strictly after it (older, or as old
/// with a smaller id), so pages stay stable while new workflows are created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListCursor {
    /// `created_at` of the last workflow of the previous page (database precision).
    pub created_at: DateTime<Utc>,
    /// Its id.
    pub id: WorkflowId,
}

impl ListCursor {
    /// The cursor after `view`.
    pub fn after(view: &WorkflowView) -> Self {
        ListCursor {
            created_at: view.created_at.to_utc(),
            id: view.id,
        }
    }
}

/// Filter for [`WorkflowRepository::list`]. The conditions combine (and).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkflowFilter {
    /// Only workflows in this status.
    pub status: Option<WorkflowStatus>,
    /// Only workflows of this kind.
    pub kind: Option<WorkflowKind>,
    /// Only workflows one of whose domains has exactly this name.
    pub domain: Option<String>,
    /// Only workflows one of whose domains belongs to exactly this company.
    pub company: Option<String>,
    /// Only workflows after this position (keyset pagination).
    pub after: Option<ListCursor>,
    /// At most this many, newest first (`None`: the implementation's default, 100).
    pub limit: Option<usize>,
}

/// Managed-mode workflow state. Every transition is guarded so that a duplicate or
/// stale caller (a redelivered result, a leader that lost its lock) changes nothing.
#[async_trait]
pub trait WorkflowRepository: Send + Sync {
    /// Creates workflows and their stage runs, in one transaction per call. A
    /// `per_domain` workflow whose single domain already has an active (non-terminal)
    /// workflow is skipped. Returns the ids actually created.
    async fn create_workflows(
        &self,
        batch: &[NewWorkflow],
        now: DateTime<Utc>,
    ) -> Result<Vec<WorkflowId>, DbError>;

    /// [`WorkflowRepository::create_workflows`], and in the same transaction claims the
    /// first attempt of each new workflow's stages named in `claim` that have no
    /// dependency, for `claim.owner` until `now + claim.lease`: exactly as
    /// [`WorkflowRepository::claim_due`] would claim them at `now`, without the round
    /// trip. The claimed attempts are published and recorded with
    /// [`WorkflowRepository::mark_running`] / [`WorkflowRepository::release`] like
    /// any other claim.
    async fn create_claimed(
        &self,
        batch: &[NewWorkflow],
        now: DateTime<Utc>,
        claim: &InitialClaim,
    ) -> Result<Created, DbError>;

    /// Enabled domains with no active workflow whose last workflow (if any) ended at
    /// or before `ended_before`; keyset-paginated by id after `after`, at most `limit`.
    async fn idle_domains(
        &self,
        ended_before: DateTime<Utc>,
        after: Option<uuid::Uuid>,
        limit: usize,
    ) -> Result<Vec<DomainRef>, DbError>;

    /// Marks workflows as started on request ("scan now"): with
    /// [`WorkflowRepository::claim_due_fair`] their attempts go ahead of every other
    /// due attempt. Returns how many were marked.
    async fn mark_requested(&self, ids: &[WorkflowId]) -> Result<u64, DbError>;

    /// Retention: deletes at most `limit` finished (terminal) workflows that ended
    /// before `ended_before`, oldest first, with their stage runs and domains, in one
    /// short transaction; never an active one, and a workflow being changed (locked)
    /// now is skipped (taken by a later call). Before they go, each of their domains'
    /// latest end is kept (a small per-domain record), so that
    /// [`WorkflowRepository::idle_domains`] and [`WorkflowRepository::last_ended_at`]
    /// answer as if they were still there. The ring's message keys received before
    /// `ended_before` go too, at most `limit` of them, oldest first (a redelivery of
    /// one is then recorded again). Returns how many workflows were deleted.
    async fn prune_finished(
        &self,
        ended_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, DbError>;

    /// Whether any workflow is active (non-terminal); used by `per_cycle`.
    async fn any_active(&self) -> Result<bool, DbError>;

    /// When the most recent workflow ended, if any; used for the `per_cycle` cool-down.
    async fn last_ended_at(&self) -> Result<Option<DateTime<Utc>>, DbError>;

    /// Per stage name, the attempts claimed or running now (for `max_in_flight`).
    async fn in_flight_counts(&self, now: DateTime<Utc>) -> Result<HashMap<String, u64>, DbError>;

    /// Atomically claims up to `limit` due attempts of `stage`: stage `pending`,
    /// `not_before <= now`, workflow `pending`/`running` (not paused), and no live claim.
    /// A claim expires after `lease` so that a crashed publisher's work is claimed again.
    async fn claim_due(
        &self,
        stage: &str,
        owner: Uuid,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<ClaimedStage>, DbError>;

    /// [`WorkflowRepository::claim_due`] in the fair order of `Workflow.fairness:
    /// company`: the due attempts are grouped by the company of their workflow's first
    /// domain (`companyname`; the empty name, for domains without a company, is one
    /// company of its own) and the `k`-th oldest due attempt of a company (from 0) is
    /// ranked `(in_flight + k) / weight`, where `in_flight` is how many attempts of
    /// `stage` of that company are claimed or running now and `weight` is
    /// `weights[company]` (1 when absent). Attempts of workflows marked with
    /// [`WorkflowRepository::mark_requested`] come first, then the lowest ranks (ties:
    /// oldest first). Every claim so takes the companies in turn, each in proportion
    /// to its weight, and the order depends only on the stored state, so it stays
    /// fair across restarts and failovers.
    async fn claim_due_fair(
        &self,
        stage: &str,
        owner: Uuid,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
        weights: &BTreeMap<String, u32>,
    ) -> Result<Vec<ClaimedStage>, DbError>;

    /// After a confirmed publish: the claimed attempts become `running` with the given
    /// deadline, their workflows `running`. Only attempts still claimed by `owner`
    /// change; returns how many did.
    async fn mark_running(
        &self,
        keys: &[StageKey],
        owner: Uuid,
        now: DateTime<Utc>,
        deadline: DateTime<Utc>,
    ) -> Result<u64, DbError>;

    /// After a nacked or unroutable publish: the claim is dropped and the stage stays
    /// pending, due again at `not_before`. Returns how many changed.
    async fn release(
        &self,
        keys: &[StageKey],
        owner: Uuid,
        not_before: DateTime<Utc>,
    ) -> Result<u64, DbError>;

    /// A `completed` report: applies only when the stage is `running` at that attempt.
    async fn complete_stage(
        &self,
        key: &StageKey,
        detail: Option<serde_json::Value>,
        now: DateTime<Utc>,
    ) -> Result<Transition, DbError>;

    /// A `failed` report or a timeout: applies only when the stage is `running` at that
    /// attempt. `retry_at: Some(t)` makes it pending again at `t`; `None` fails the
    /// workflow.
    async fn fail_stage(
        &self,
        key: &StageKey,
        detail: Option<serde_json::Value>,
        retry_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Transition, DbError>;

    /// A time-out found by the leader: [`WorkflowRepository::fail_stage`] as a
    /// leader-only write, which a fenced store (`PgStore::fenced`,
    /// `MemoryStore::fenced`) refuses with [`DbError::StaleTerm`] unless the caller holds
    /// the current leader term. By default (a store without fencing) the same as
    /// `fail_stage`.
    async fn time_out(
        &self,
        key: &StageKey,
        detail: Option<serde_json::Value>,
        retry_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Transition, DbError> {
        self.fail_stage(key, detail, retry_at, now).await
    }

    /// Running attempts whose deadline is before `now`, at most `limit`.
    async fn timed_out(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<StageKey>, DbError>;

    /// Workflows for the API, newest first.
    async fn list(&self, filter: &WorkflowFilter) -> Result<Vec<WorkflowView>, DbError>;

    /// One workflow; [`DbError::NotFound`] when absent.
    async fn get(&self, id: WorkflowId) -> Result<WorkflowView, DbError>;

    /// Cancels a non-terminal workflow (its unfinished stages become `cancelled`);
    /// [`DbError::InvalidState`] when terminal, [`DbError::NotFound`] when absent.
    async fn cancel(&self, id: WorkflowId, now: DateTime<Utc>) -> Result<WorkflowView, DbError>;

    /// Pauses a `pending`/`running` workflow; [`DbError::InvalidState`] otherwise.
    async fn pause(&self, id: WorkflowId, now: DateTime<Utc>) -> Result<WorkflowView, DbError>;

    /// Resumes a `paused` workflow; [`DbError::InvalidState`] otherwise.
    async fn resume(&self, id: WorkflowId, now: DateTime<Utc>) -> Result<WorkflowView, DbError>;

    /// Runs a `failed` or `cancelled` managed workflow again from its first unfinished
    /// stages: completed stages are kept; every other stage starts afresh (attempt 0,
    /// no times, no detail), pending when its dependencies are all completed, else
    /// waiting. The workflow becomes `running` (`pending` when no stage had
    /// completed) and active again (a one-domain workflow takes its domain back:
    /// [`DbError::Conflict`] when the domain has another active workflow).
    /// [`DbError::InvalidState`] in any other status or for an observed workflow,
    /// [`DbError::NotFound`] when absent.
    async fn retry(&self, id: WorkflowId, now: DateTime<Utc>) -> Result<WorkflowView, DbError>;

    /// The workflows changed at or after `since` (their `updated_at`), in the order
    /// of (`updated_at`, id), at most `limit`; with `after`, only those after the
    /// position (`since`, `after`) in that order (the next page). What the API's event
    /// stream sends. Cheap: it reads the active workflows and those that ended since
    /// then, never the whole history.
    async fn changed_since(
        &self,
        since: DateTime<Utc>,
        after: Option<WorkflowId>,
        limit: usize,
    ) -> Result<Vec<WorkflowView>, DbError>;
}

/// A session-level leadership lock. Only one holder at a time across processes.
#[async_trait]
pub trait LeaderLock: Send + Sync {
    /// Tries to take the lock without waiting; `true` when held afterwards.
    async fn try_acquire(&self) -> Result<bool, DbError>;
    /// Verifies with the server that the lock is still held (false after the session
    /// was lost, e.g. a database restart).
    async fn is_held(&self) -> Result<bool, DbError>;
    /// Gives the lock up.
    async fn release(&self) -> Result<(), DbError>;
}

/// The replicas that report themselves alive, for the API's replica list. Each replica
/// writes its own row every few seconds ([`ReplicaRegistry::replica_beat`]); readers
/// ask for those seen recently.
#[async_trait]
pub trait ReplicaRegistry: Send + Sync {
    /// Inserts or updates `replica`'s row (its role and `seen_at`), and deletes the rows
    /// of replicas not seen for a day before `replica.seen_at` (crashed ones).
    async fn replica_beat(&self, replica: &model8::ReplicaView) -> Result<(), DbError>;
    /// The replicas seen at or after `seen_after`: the leader first, then by name.
    async fn replicas(
        &self,
        seen_after: DateTime<Utc>,
    ) -> Result<Vec<model8::ReplicaView>, DbError>;
    /// Deletes replica `id`'s row (a clean shutdown).
    async fn replica_gone(&self, id: Uuid) -> Result<(), DbError>;
}

/// A change seen on the domain table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainChange {
    /// Rows were inserted, updated or deleted (one event per statement, not per row).
    Changed,
    /// The feed reconnected and may have missed changes: re-read everything.
    Resync,
}

/// A feed of domain changes (LISTEN/NOTIFY on PostgreSQL).
#[async_trait]
pub trait ChangeFeed: Send + Sync {
    /// Subscribes; the stream reconnects by itself and then yields
    /// [`DomainChange::Resync`]. It ends only when the feed is dropped.
    async fn subscribe(&self) -> Result<BoxStream<'static, DomainChange>, DbError>;
}

/// Pool statistics for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Connections open.
    pub connections: u32,
    /// Of which idle.
    pub idle: u32,
}

/// Liveness of the data store, for `/ready` and `/metrics`.
#[async_trait]
pub trait DbHealth: Send + Sync {
    /// A cheap round trip (`SELECT 1`).
    async fn ping(&self) -> Result<(), DbError>;
    /// Pool statistics.
    fn pool_stats(&self) -> PoolStats;
}

/// The observed ring of bootstrap mode (CONTRACT 3c), recorded as workflows of kind
/// `observed` (listed by [`WorkflowRepository::list`] like the others).
#[async_trait]
pub trait RingRepository: Send + Sync {
    /// Applies one message seen on the ring, in one transaction with its key: a key
    /// already applied changes nothing ([`RingApplied::Duplicate`]). Messages are
    /// applied one at a time, whichever replica calls.
    async fn ring_apply(
        &self,
        ring: &[RingStage],
        event: &RingEvent,
    ) -> Result<RingApplied, DbError>;

    /// Marks the running stages of the open cycle silent past their timeout as
    /// `stalled` and returns them (each once).
    async fn ring_stalls(
        &self,
        ring: &[RingStage],
        now: DateTime<Utc>,
    ) -> Result<Vec<RingStall>, DbError>;

    /// The stalled stages of the open cycle (for healing).
    async fn ring_stalled(&self, ring: &[RingStage]) -> Result<Vec<StalledStage>, DbError>;

    /// Healing gave up on stalled `stage` of the open cycle `cycle` (it kicked the next
    /// stage): the stage is failed with `message`. `false` when it was no longer
    /// stalled (its chain message came meanwhile).
    async fn ring_give_up(
        &self,
        ring: &[RingStage],
        cycle: WorkflowId,
        stage: &str,
        message: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, DbError>;
}
