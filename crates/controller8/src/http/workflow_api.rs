//! [`WorkflowApi`]: the part of the workflow state the HTTP layer reads and controls.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use db8::{DbError, WorkflowFilter, WorkflowRepository};
use model8::{WorkflowId, WorkflowView};

/// What the HTTP layer needs of the workflow state: reading workflows and the
/// operator's controls, nothing the engine's transitions use. Every
/// [`db8::WorkflowRepository`] is one (the methods of the same names); the
/// orchestrator's own adds the engine's wake-up after a control and the scan-window
/// annotations ([`crate::Controller::workflows`]).
#[async_trait]
pub trait WorkflowApi: Send + Sync {
    /// Workflows matching `filter`, newest first ([`WorkflowRepository::list`]).
    async fn list(&self, filter: &WorkflowFilter) -> Result<Vec<WorkflowView>, DbError>;

    /// One workflow ([`WorkflowRepository::get`]); `DbError::NotFound` when unknown.
    async fn get(&self, id: WorkflowId) -> Result<WorkflowView, DbError>;

    /// Workflows changed at or after `since` ([`WorkflowRepository::changed_since`]).
    async fn changed_since(
        &self,
        since: DateTime<Utc>,
        after: Option<WorkflowId>,
        limit: usize,
    ) -> Result<Vec<WorkflowView>, DbError>;

    /// Claimed plus running attempts per stage ([`WorkflowRepository::in_flight_counts`]).
    async fn in_flight_counts(&self, now: DateTime<Utc>) -> Result<HashMap<String, u64>, DbError>;

    /// Cancels a workflow ([`WorkflowRepository::cancel`]).
    async fn cancel(&self, id: WorkflowId, now: DateTime<Utc>) -> Result<WorkflowView, DbError>;

    /// Pauses a workflow ([`WorkflowRepository::pause`]).
    async fn pause(&self, id: WorkflowId, now: DateTime<Utc>) -> Result<WorkflowView, DbError>;

    /// Resumes a paused workflow ([`WorkflowRepository::resume`]).
    async fn resume(&self, id: WorkflowId, now: DateTime<Utc>) -> Result<WorkflowView, DbError>;

    /// Runs a failed or cancelled workflow again ([`WorkflowRepository::retry`]).
    async fn retry(&self, id: WorkflowId, now: DateTime<Utc>) -> Result<WorkflowView, DbError>;
}

#[async_trait]
impl<T: WorkflowRepository + ?Sized> WorkflowApi for T {
    async fn list(&self, filter: &WorkflowFilter) -> Result<Vec<WorkflowView>, DbError> {
        WorkflowRepository::list(self, filter).await
    }

    async fn get(&self, id: WorkflowId) -> Result<WorkflowView, DbError> {
        WorkflowRepository::get(self, id).await
    }

    async fn changed_since(
        &self,
        since: DateTime<Utc>,
        after: Option<WorkflowId>,
        limit: usize,
    ) -> Result<Vec<WorkflowView>, DbError> {
        WorkflowRepository::changed_since(self, since, after, limit).await
    }

    async fn in_flight_counts(&self, now: DateTime<Utc>) -> Result<HashMap<String, u64>, DbError> {
        WorkflowRepository::in_flight_counts(self, now).await
    }

    async fn cancel(&self, id: WorkflowId, now: DateTime<Utc>) -> Result<WorkflowView, DbError> {
        WorkflowRepository::cancel(self, id, now).await
    }

    async fn pause(&self, id: WorkflowId, now: DateTime<Utc>) -> Result<WorkflowView, DbError> {
        WorkflowRepository::pause(self, id, now).await
    }

    async fn resume(&self, id: WorkflowId, now: DateTime<Utc>) -> Result<WorkflowView, DbError> {
        WorkflowRepository::resume(self, id, now).await
    }

    async fn retry(&self, id: WorkflowId, now: DateTime<Utc>) -> Result<WorkflowView, DbError> {
        WorkflowRepository::retry(self, id, now).await
    }
}
