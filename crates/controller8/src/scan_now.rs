//! "Scan now": the operation behind `POST /api/orchestratorm8/workflows`.

use async_trait::async_trait;
use model8::WorkflowView;
use uuid::Uuid;

/// Why workflows could not be started on request.
#[derive(Debug, thiserror::Error)]
pub enum ScanNowError {
    /// The request is not acceptable (unknown or disabled domain ids, managed mode off).
    #[error("{0}")]
    Invalid(String),
    /// This replica is not the leader; retry on another one.
    #[error("not the leader")]
    NotLeader,
    /// The data store failed.
    #[error(transparent)]
    Db(#[from] db8::DbError),
}

/// Starts workflows on request.
#[async_trait]
pub trait ScanNow: Send + Sync {
    /// Starts workflows for the given enabled domains, or for every enabled domain
    /// when `None`, skipping domains that already have an active workflow. Returns
    /// the workflows created.
    async fn scan_now(
        &self,
        domain_ids: Option<Vec<Uuid>>,
    ) -> Result<Vec<WorkflowView>, ScanNowError>;
}
