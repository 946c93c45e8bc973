//! The workflow repository handed to the HTTP layer: the same repository, plus a
//! wake-up of the engine after an operator resumes or cancels a workflow, so that
//! its stages (or the `max_in_flight` slots it freed) are published at once rather
//! than at the next poll.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use db8::{
    ClaimedStage, Created, DbError, InitialClaim, NewWorkflow, StageKey, Transition,
    WorkflowFilter, WorkflowRepository,
};
use model8::{DomainRef, WorkflowId, WorkflowView};
use uuid::Uuid;

use crate::engine::Engine;

/// Delegates everything to the engine's repository; the views it returns show the
/// stages waiting for their scan window ([`Engine::annotate_windows`]).
pub(crate) struct WakingWorkflows {
    pub(crate) engine: Arc<Engine>,
}

impl WakingWorkflows {
    fn repo(&self) -> &dyn WorkflowRepository {
        self.engine.workflows.as_ref()
    }
}

#[async_trait]
impl WorkflowRepository for WakingWorkflows {
    async fn create_workflows(
        &self,
        batch: &[NewWorkflow],
        now: DateTime<Utc>,
    ) -> Result<Vec<WorkflowId>, DbError> {
        let created = self.repo().create_workflows(batch, now).await?;
        if !created.is_empty() {
            self.engine.dispatch_wake.now();
        }
        Ok(created)
    }

    async fn create_claimed(
        &self,
        batch: &[NewWorkflow],
        now: DateTime<Utc>,
        claim: &InitialClaim,
    ) -> Result<Created, DbError> {
        self.repo().create_claimed(batch, now, claim).await
    }

    async fn idle_domains(
        &self,
        ended_before: DateTime<Utc>,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<DomainRef>, DbError> {
        self.repo().idle_domains(ended_before, after, limit).await
    }

    async fn any_active(&self) -> Result<bool, DbError> {
        self.repo().any_active().await
    }

    async fn last_ended_at(&self) -> Result<Option<DateTime<Utc>>, DbError> {
        self.repo().last_ended_at().await
    }

    async fn in_flight_counts(&self, now: DateTime<Utc>) -> Result<HashMap<String, u64>, DbError> {
        self.repo().in_flight_counts(now).await
    }

    async fn prune_finished(
        &self,
        ended_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, DbError> {
        self.repo().prune_finished(ended_before, limit).await
    }

    async fn mark_requested(&self, ids: &[model8::WorkflowId]) -> Result<u64, DbError> {
        self.repo().mark_requested(ids).await
    }

    async fn claim_due(
        &self,
        stage: &str,
        owner: Uuid,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<ClaimedStage>, DbError> {
        self.repo().claim_due(stage, owner, now, lease, limit).await
    }

    async fn claim_due_fair(
        &self,
        stage: &str,
        owner: Uuid,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
        weights: &std::collections::BTreeMap<String, u32>,
    ) -> Result<Vec<ClaimedStage>, DbError> {
        self.repo()
            .claim_due_fair(stage, owner, now, lease, limit, weights)
            .await
    }

    async fn mark_running(
        &self,
        keys: &[StageKey],
        owner: Uuid,
        now: DateTime<Utc>,
        deadline: DateTime<Utc>,
    ) -> Result<u64, DbError> {
        self.repo().mark_running(keys, owner, now, deadline).await
    }

    async fn release(
        &self,
        keys: &[StageKey],
        owner: Uuid,
        not_before: DateTime<Utc>,
    ) -> Result<u64, DbError> {
        self.repo().release(keys, owner, not_before).await
    }

    async fn complete_stage(
        &self,
        key: &StageKey,
        detail: Option<serde_json::Value>,
        now: DateTime<Utc>,
    ) -> Result<Transition, DbError> {
        self.repo().complete_stage(key, detail, now).await
    }

    async fn fail_stage(
        &self,
        key: &StageKey,
        detail: Option<serde_json::Value>,
        retry_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Transition, DbError> {
        self.repo().fail_stage(key, detail, retry_at, now).await
    }

    async fn time_out(
        &self,
        key: &StageKey,
        detail: Option<serde_json::Value>,
        retry_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Transition, DbError> {
        self.repo().time_out(key, detail, retry_at, now).await
    }

    async fn timed_out(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<StageKey>, DbError> {
        self.repo().timed_out(now, limit).await
    }

    async fn list(&self, filter: &WorkflowFilter) -> Result<Vec<WorkflowView>, DbError> {
        let mut views = self.repo().list(filter).await?;
        self.engine.annotate_windows(&mut views);
        Ok(views)
    }

    async fn get(&self, id: WorkflowId) -> Result<WorkflowView, DbError> {
        let mut view = self.repo().get(id).await?;
        self.engine
            .annotate_windows(std::slice::from_mut(&mut view));
        Ok(view)
    }

    async fn cancel(&self, id: WorkflowId, now: DateTime<Utc>) -> Result<WorkflowView, DbError> {
        let v = self.repo().cancel(id, now).await?;
        tracing::info!(workflow = %id, "workflow cancelled by an operator");
        self.engine.dispatch_wake.now();
        Ok(v)
    }

    async fn pause(&self, id: WorkflowId, now: DateTime<Utc>) -> Result<WorkflowView, DbError> {
        let v = self.repo().pause(id, now).await?;
        tracing::info!(workflow = %id, "workflow paused by an operator");
        Ok(v)
    }

    async fn resume(&self, id: WorkflowId, now: DateTime<Utc>) -> Result<WorkflowView, DbError> {
        let v = self.repo().resume(id, now).await?;
        tracing::info!(workflow = %id, "workflow resumed by an operator");
        self.engine.dispatch_wake.now();
        Ok(v)
    }

    async fn retry(&self, id: WorkflowId, now: DateTime<Utc>) -> Result<WorkflowView, DbError> {
        let v = self.repo().retry(id, now).await?;
        tracing::info!(workflow = %id, "workflow retried by an operator");
        self.engine.dispatch_wake.now();
        Ok(v)
    }

    async fn changed_since(
        &self,
        since: DateTime<Utc>,
        after: Option<WorkflowId>,
        limit: usize,
    ) -> Result<Vec<WorkflowView>, DbError> {
        self.repo().changed_since(since, after, limit).await
    }
}
