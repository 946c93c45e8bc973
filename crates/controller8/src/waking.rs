//! The workflow state handed to the HTTP layer ([`WorkflowApi`]): the engine's
//! repository, plus a wake-up of the engine after an operator resumes or cancels a workflow, so that
//! its stages (or the `max_in_flight` slots it freed) are published at once rather
//! than at the next poll.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use db8::{DbError, WorkflowFilter, WorkflowRepository};
use model8::{WorkflowId, WorkflowView};

use crate::engine::Engine;
use crate::http::WorkflowApi;

/// Delegates to the engine's repository; the views it returns show the
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
impl WorkflowApi for WakingWorkflows {
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

    async fn in_flight_counts(&self, now: DateTime<Utc>) -> Result<HashMap<String, u64>, DbError> {
        self.repo().in_flight_counts(now).await
    }
}
