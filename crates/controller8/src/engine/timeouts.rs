//! Failed and timed-out attempts: retry with backoff, or fail the workflow after
//! `max_attempts` and notify. Also the sweep that finds stuck (timed-out) stages so
//! that nothing stays "running" forever.

use chrono::{DateTime, Utc};
use db8::{DbError, StageKey, Transition};

use super::backoff::{draw, retry_delay};
use super::{Engine, plus};

impl Engine {
    /// Records that attempt `key` failed (reported by a worker, or timed out):
    /// pending again after a backoff while attempts remain, else the workflow fails
    /// (its notification written to the outbox by the same transaction). Returns the transition applied.
    pub(crate) async fn fail_attempt(
        &self,
        key: &StageKey,
        timed_out: bool,
        reason: &str,
        detail: Option<serde_json::Value>,
        now: DateTime<Utc>,
    ) -> Result<Transition, DbError> {
        let stage = self.stage_settings(&key.stage);
        let retry_at = (key.attempt < stage.max_attempts)
            .then(|| plus(now, retry_delay(&stage.backoff, key.attempt, draw())));
        // A time-out is a leader-only write (fenced by the leader term); a worker's
        // report is not.
        let t = if timed_out {
            self.workflows.time_out(key, detail, retry_at, now).await?
        } else {
            self.workflows
                .fail_stage(key, detail, retry_at, now)
                .await?
        };
        if timed_out && t != Transition::Stale {
            // Counted before the notification goes out.
            self.metrics.stage_timed_out(&key.stage);
        }
        match &t {
            Transition::Retrying { at } => {
                self.metrics.stage_retry_scheduled(&key.stage);
                tracing::info!(
                    workflow = %key.workflow_id, stage = %key.stage, attempt = key.attempt,
                    max_attempts = stage.max_attempts, retry_at = %at, reason,
                    "stage attempt failed; retrying"
                );
                self.dispatch_wake.at(*at);
            }
            Transition::WorkflowFailed => {
                self.metrics.workflow_failed();
                tracing::warn!(
                    workflow = %key.workflow_id, stage = %key.stage, attempt = key.attempt,
                    max_attempts = stage.max_attempts, reason,
                    "stage failed with no attempt left; workflow failed"
                );
                // Its notification is in the outbox (same transaction).
                self.outbox_wake.now();
                // A freed max_in_flight slot.
                self.dispatch_wake.now();
            }
            Transition::Stale | Transition::StageCompleted { .. } => {}
        }
        Ok(t)
    }

    /// Fails every running attempt past its deadline (leader only). Returns how many
    /// were handled.
    pub(crate) async fn expire_timeouts(&self) -> Result<u64, DbError> {
        if !self.is_leader() {
            return Ok(0);
        }
        const PAGE: usize = 500;
        let mut handled = 0;
        loop {
            let now = self.now();
            let late = self.workflows.timed_out(now, PAGE).await?;
            let n = late.len();
            for key in late {
                if self.stopping() {
                    return Ok(handled);
                }
                let timeout = self.stage_settings(&key.stage).timeout;
                let reason = format!(
                    "timed out: no result within {}",
                    config8::duration::format(timeout)
                );
                let t = self
                    .fail_attempt(
                        &key,
                        true,
                        &reason,
                        Some(serde_json::json!({ "error": reason })),
                        now,
                    )
                    .await?;
                if t != Transition::Stale {
                    handled += 1;
                }
            }
            if n < PAGE {
                return Ok(handled);
            }
        }
    }
}
