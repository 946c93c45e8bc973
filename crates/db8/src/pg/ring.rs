//! [`RingRepository`] on the `orchestratorm8_*` tables: every ring change runs in one
//! transaction under a transaction-scoped advisory lock (ring messages are rare and
//! must be applied one at a time whichever replica consumes them), loads the latest
//! two observed cycles, applies the state machine of `crate::ring`, and writes back
//! what changed, with the message's key.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use model8::{StageStatus, WorkflowId, WorkflowStatus};
use tokio_postgres::Transaction;
use uuid::Uuid;

use super::PgStore;
use super::workflows::{attempt_of, parse};
use crate::error::DbError;
use crate::ring::{self, Cycle, CycleStage};
use crate::time::db_precision;
use crate::traits::{RingApplied, RingEvent, RingRepository, RingStage, RingStall, StalledStage};

/// The advisory lock that serialises ring changes (ASCII `orchm8rg`).
const RING_LOCK_KEY: i64 = 0x6f72_6368_6d38_7267;

impl PgStore {
    /// Takes the ring lock within `tx` and loads the latest two observed cycles,
    /// newest first, with their stages in `ring` order.
    async fn ring_load(
        &self,
        tx: &Transaction<'_>,
        ring: &[RingStage],
    ) -> Result<Vec<Cycle>, DbError> {
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&RING_LOCK_KEY])
            .await
            .map_err(|e| self.err(e))?;
        let heads = tx
            .query(
                "SELECT id, status, created_at, updated_at, ended_at FROM orchestratorm8_workflow \
                 WHERE kind = 'observed' ORDER BY created_at DESC, id DESC LIMIT 2",
                &[],
            )
            .await
            .map_err(|e| self.err(e))?;
        let ids: Vec<Uuid> = heads.iter().map(|r| r.get(0)).collect();
        let rows = tx
            .query(
                "SELECT workflow_id, stage, status, attempt, started_at, finished_at, stall_at, \
                 detail FROM orchestratorm8_stage_run WHERE workflow_id = ANY($1)",
                &[&ids],
            )
            .await
            .map_err(|e| self.err(e))?;
        heads
            .iter()
            .map(|h| {
                let id: Uuid = h.get(0);
                let stages = ring
                    .iter()
                    .map(|r| {
                        // Its row, if it has one (else it is waiting, never run).
                        let row = rows
                            .iter()
                            .find(|s| s.get::<_, Uuid>(0) == id && s.get::<_, &str>(1) == r.name);
                        Ok(CycleStage {
                            name: r.name.clone(),
                            status: row.map_or(Ok(StageStatus::Waiting), |s| parse(s.get(2)))?,
                            attempt: row.map_or(0, |s| attempt_of(s.get(3))),
                            started_at: row.and_then(|s| s.get(4)),
                            finished_at: row.and_then(|s| s.get(5)),
                            stall_at: row.and_then(|s| s.get(6)),
                            detail: row.and_then(|s| s.get(7)),
                            dirty: false,
                        })
                    })
                    .collect::<Result<Vec<_>, DbError>>()?;
                Ok(Cycle {
                    id,
                    status: parse::<WorkflowStatus>(h.get::<_, &str>(1))?,
                    created_at: h.get(2),
                    updated_at: h.get(3),
                    ended_at: h.get(4),
                    stages,
                    new: false,
                    dirty: false,
                })
            })
            .collect()
    }

    /// Writes the changed cycles and stages within `tx`.
    async fn ring_store(&self, tx: &Transaction<'_>, cycles: &[Cycle]) -> Result<(), DbError> {
        for c in cycles.iter().filter(|c| c.dirty) {
            if c.new {
                // The ring's stages in order, each after the one before it.
                let plan = super::workflows::plan_doc(c.stages.iter().enumerate().map(|(i, s)| {
                    let before = i.checked_sub(1).map(|p| c.stages[p].name.as_str());
                    (s.name.as_str(), before.into_iter().collect())
                }));
                tx.execute(
                    "INSERT INTO orchestratorm8_workflow \
                     (id, status, created_at, updated_at, ended_at, plan, kind) \
                     VALUES ($1, $2, $3, $4, $5, $6, 'observed')",
                    &[
                        &c.id,
                        &c.status.as_str(),
                        &c.created_at,
                        &c.updated_at,
                        &c.ended_at,
                        &plan,
                    ],
                )
                .await
                .map_err(|e| self.err(e))?;
            } else {
                tx.execute(
                    "UPDATE orchestratorm8_workflow SET status = $2, updated_at = $3, ended_at = $4 \
                     WHERE id = $1",
                    &[&c.id, &c.status.as_str(), &c.updated_at, &c.ended_at],
                )
                .await
                .map_err(|e| self.err(e))?;
            }
            for (i, s) in c.stages.iter().enumerate().filter(|(_, s)| s.dirty) {
                let position = i32::try_from(i).unwrap_or(i32::MAX);
                let attempt = i32::try_from(s.attempt).unwrap_or(i32::MAX);
                tx.execute(
                    "INSERT INTO orchestratorm8_stage_run (workflow_id, stage, position, \
                       status, attempt, detail, updated_at, started_at, finished_at, stall_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                     ON CONFLICT (workflow_id, stage) DO UPDATE SET status = EXCLUDED.status, \
                       attempt = EXCLUDED.attempt, detail = EXCLUDED.detail, \
                       updated_at = EXCLUDED.updated_at, started_at = EXCLUDED.started_at, \
                       finished_at = EXCLUDED.finished_at, stall_at = EXCLUDED.stall_at",
                    &[
                        &c.id,
                        &s.name,
                        &position,
                        &s.status.as_str(),
                        &attempt,
                        &s.detail,
                        &c.updated_at,
                        &s.started_at,
                        &s.finished_at,
                        &s.stall_at,
                    ],
                )
                .await
                .map_err(|e| self.err(e))?;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl RingRepository for PgStore {
    async fn ring_apply(
        &self,
        ring: &[RingStage],
        event: &RingEvent,
    ) -> Result<RingApplied, DbError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(|e| self.err(e))?;
        let mut cycles = self.ring_load(&tx, ring).await?;
        let event = &RingEvent {
            at: db_precision(event.at),
            ..event.clone()
        };
        let fresh = tx
            .execute(
                "INSERT INTO orchestratorm8_ring_message (key, received_at) VALUES ($1, $2) \
                 ON CONFLICT (key) DO NOTHING",
                &[&event.key, &event.at],
            )
            .await
            .map_err(|e| self.err(e))?;
        if fresh == 0 {
            return Ok(RingApplied::Duplicate);
        }
        let applied = ring::apply(&mut cycles, ring, event);
        self.ring_store(&tx, &cycles).await?;
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(applied)
    }

    async fn ring_stalls(
        &self,
        ring: &[RingStage],
        now: DateTime<Utc>,
    ) -> Result<Vec<RingStall>, DbError> {
        let mut conn = self.conn().await?;
        let tx = self.leader_tx(&mut conn).await?;
        let mut cycles = self.ring_load(&tx, ring).await?;
        let now = db_precision(now);
        let stalls = ring::stall(&mut cycles, now);
        if !stalls.is_empty() {
            self.ring_store(&tx, &cycles).await?;
            // Their warnings, in the same transaction (the outbox).
            for s in &stalls {
                self.outbox_insert(&tx, &crate::outbox::ring_stall_event(s, ring), now)
                    .await?;
            }
        }
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(stalls)
    }

    async fn ring_stalled(&self, ring: &[RingStage]) -> Result<Vec<StalledStage>, DbError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(|e| self.err(e))?;
        let cycles = self.ring_load(&tx, ring).await?;
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(ring::stalled(&cycles))
    }

    async fn ring_give_up(
        &self,
        ring: &[RingStage],
        cycle: WorkflowId,
        stage: &str,
        message: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, DbError> {
        let mut conn = self.conn().await?;
        let tx = self.leader_tx(&mut conn).await?;
        let mut cycles = self.ring_load(&tx, ring).await?;
        let changed = ring::give_up(&mut cycles, cycle, stage, message, db_precision(at));
        self.ring_store(&tx, &cycles).await?;
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(changed)
    }
}
