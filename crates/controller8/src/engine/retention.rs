//! Retention (`Workflow.retention`): the leader deletes finished workflows (managed
//! ones and observed cycles alike: everything terminal) that ended longer ago than
//! the retention, in small batches, each one short statement
//! ([`db8::WorkflowRepository::prune_finished`]), so that no lock is held for long and
//! the dispatch beside it keeps its pace.

use std::time::Duration;

use db8::DbError;

use super::{Engine, minus};

/// Workflows deleted per statement: a few milliseconds of row locks each.
pub(crate) const RETENTION_BATCH: usize = 500;

/// How often the leader prunes (besides when it becomes leader).
pub(crate) const RETENTION_EVERY: Duration = Duration::from_secs(60);

impl Engine {
    /// One retention pass (leader only; nothing when `Workflow.retention` is zero):
    /// deletes every workflow that ended before now minus the retention, batch after
    /// batch, yielding between batches; stops early on shutdown or loss of
    /// leadership. Returns how many were deleted (counted in
    /// `orchestratorm8_workflows_pruned_total`).
    pub(crate) async fn prune(&self) -> Result<u64, DbError> {
        let retention = self.live().workflow.retention;
        if retention.is_zero() || !self.is_leader() {
            return Ok(0);
        }
        let cutoff = minus(self.now(), retention);
        let mut total = 0;
        loop {
            let n = self
                .workflows
                .prune_finished(cutoff, RETENTION_BATCH)
                .await?;
            total += n;
            self.metrics.workflows_pruned(n);
            if n < RETENTION_BATCH as u64 || self.stopping() || !self.is_leader() {
                break;
            }
            // Let the other work of this process (and the database) in between.
            tokio::task::yield_now().await;
        }
        if total > 0 {
            tracing::info!(
                pruned = total,
                ?retention,
                "finished workflows deleted by retention"
            );
        }
        Ok(total)
    }
}
