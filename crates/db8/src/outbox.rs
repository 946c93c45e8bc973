//! The transactional outbox: what a state change causes to be sent (a notification) is
//! recorded as a row in the transaction of the change itself, and a relay publishes it
//! afterwards and deletes it once the broker confirmed it. A crash between the commit
//! and the publish loses nothing: the row is still there and is published later (at
//! least once; every copy carries the row's id as its AMQP `message_id`).
//!
//! The rows record facts ([`OutboxEvent`]), not AMQP messages: the relay (in
//! `controller8`) turns each into its message, so this crate knows nothing of AMQP.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use model8::WorkflowId;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::DbError;

/// A fact recorded in the outbox by the transaction that made it true.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum OutboxEvent {
    /// A managed workflow completed: its last stage completed.
    WorkflowCompleted {
        /// The workflow.
        workflow_id: WorkflowId,
        /// Its domains' names, in the workflow's order.
        domains: Vec<String>,
    },
    /// A managed workflow failed: `stage` failed at `attempt` with no attempt left.
    WorkflowFailed {
        /// The workflow.
        workflow_id: WorkflowId,
        /// Its domains' names, in the workflow's order.
        domains: Vec<String>,
        /// The stage that failed.
        stage: String,
        /// Its last attempt.
        attempt: u32,
        /// The failure's detail as the transition stored it (a worker's report, or
        /// `{"error": "timed out: ..."}`).
        detail: Option<serde_json::Value>,
    },
    /// An observed ring stage was found stalled (silent past its timeout).
    RingStalled {
        /// The ring cycle.
        cycle: WorkflowId,
        /// The stage.
        stage: String,
        /// Its attempt.
        attempt: u32,
        /// How long it had been silent, in seconds.
        silent_for_secs: u64,
        /// Its timeout, in seconds.
        timeout_secs: u64,
        /// The scanner's last warning, if any.
        message: Option<String>,
    },
}

impl OutboxEvent {
    /// The event as stored (`jsonb`).
    pub fn to_json(&self) -> serde_json::Value {
        // A derive of plain data: serialising it cannot fail.
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// The event of a stored row; `Err` names what is wrong (e.g. a row written by a
    /// newer version).
    pub fn from_json(v: &serde_json::Value) -> Result<OutboxEvent, String> {
        OutboxEvent::deserialize(v).map_err(|e| format!("unknown outbox event {v}: {e}"))
    }
}

/// A row of the outbox, claimed for relaying.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    /// Its id: the AMQP `message_id` of every copy published for it.
    pub id: Uuid,
    /// When the transition that wrote it happened.
    pub created_at: DateTime<Utc>,
    /// Failed relay attempts so far (nacked, or the broker away).
    pub attempts: u32,
    /// The fact, as stored (see [`OutboxEvent::from_json`]).
    pub event: serde_json::Value,
}

/// How full the outbox is, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// Rows waiting to be relayed (or relayed and not yet deleted).
    pub depth: u64,
    /// When the oldest of them was written.
    pub oldest: Option<DateTime<Utc>>,
}

/// The outbox (table `orchestratorm8_outbox`). Rows are written by the transitions
/// themselves ([`crate::WorkflowRepository::complete_stage`] when the workflow
/// completes, [`crate::WorkflowRepository::fail_stage`] when it fails,
/// [`crate::RingRepository::ring_stalls`] for each stall); this trait is the relay's
/// side. Several replicas may relay at once: a claim takes rows no live claim holds
/// (`FOR UPDATE SKIP LOCKED`), for a lease.
#[async_trait]
pub trait OutboxRepository: Send + Sync {
    /// Claims up to `limit` rows due at `now` (their `not_before` passed, no live
    /// claim) for `owner` until `now + lease`, oldest first. A row whose claimer died
    /// is claimable again once the lease ends (it is then published again: at least
    /// once).
    async fn outbox_claim(
        &self,
        owner: Uuid,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<OutboxRow>, DbError>;

    /// Deletes rows whose message the broker confirmed (whoever claims them now).
    /// Returns how many were deleted.
    async fn outbox_delete(&self, ids: &[Uuid]) -> Result<u64, DbError>;

    /// Gives up `owner`'s claim on rows that could not be published: each is due again
    /// at `not_before`, its attempts counted. Returns how many changed.
    async fn outbox_release(
        &self,
        ids: &[Uuid],
        owner: Uuid,
        not_before: DateTime<Utc>,
    ) -> Result<u64, DbError>;

    /// How many rows wait and since when.
    async fn outbox_stats(&self) -> Result<OutboxStats, DbError>;
}

/// The event of a stall found in `ring`.
pub(crate) fn ring_stall_event(s: &crate::RingStall, ring: &[crate::RingStage]) -> OutboxEvent {
    OutboxEvent::RingStalled {
        cycle: s.cycle,
        stage: s.stage.clone(),
        attempt: s.attempt,
        silent_for_secs: s.silent_for.as_secs(),
        timeout_secs: ring
            .iter()
            .find(|r| r.name == s.stage)
            .map_or(0, |r| r.timeout.as_secs()),
        message: s.message.clone(),
    }
}

/// The failed event of a workflow whose stage `key` failed with `detail`.
pub(crate) fn failed_event(
    key: &crate::StageKey,
    domains: Vec<String>,
    detail: Option<serde_json::Value>,
) -> OutboxEvent {
    OutboxEvent::WorkflowFailed {
        workflow_id: key.workflow_id,
        domains,
        stage: key.stage.clone(),
        attempt: key.attempt,
        detail,
    }
}
