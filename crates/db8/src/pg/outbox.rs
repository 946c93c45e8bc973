//! [`OutboxRepository`] on `orchestratorm8_outbox` (docs/DATABASE.md), and the insert
//! the transitions call within their own transaction.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use model8::WorkflowId;
use tokio_postgres::Transaction;
use uuid::Uuid;

use super::PgStore;
use crate::error::DbError;
use crate::outbox::{OutboxEvent, OutboxRepository, OutboxRow, OutboxStats};
use crate::time::plus;

impl PgStore {
    /// Writes `event` into the outbox within `tx` (the transition's transaction), due
    /// at once.
    pub(crate) async fn outbox_insert(
        &self,
        tx: &Transaction<'_>,
        event: &OutboxEvent,
        now: DateTime<Utc>,
    ) -> Result<(), DbError> {
        tx.execute(
            "INSERT INTO orchestratorm8_outbox (id, created_at, event, not_before) \
             VALUES ($1, $2, $3, $2)",
            &[&Uuid::new_v4(), &now, &event.to_json()],
        )
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The names of workflow `id`'s domains, in order, within `tx`.
    pub(crate) async fn domain_names(
        &self,
        tx: &Transaction<'_>,
        id: WorkflowId,
    ) -> Result<Vec<String>, DbError> {
        let domains = self.domains_of(tx, &[id]).await?.remove(&id);
        Ok(domains.into_iter().flatten().map(|d| d.name).collect())
    }
}

#[async_trait]
impl OutboxRepository for PgStore {
    async fn outbox_claim(
        &self,
        owner: Uuid,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<OutboxRow>, DbError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let until = plus(now, lease);
        let conn = self.conn().await?;
        let rows = conn
            .query(
                "UPDATE orchestratorm8_outbox o SET claim_owner = $2, claim_until = $3 \
                 FROM (SELECT id FROM orchestratorm8_outbox \
                       WHERE not_before <= $1 AND (claim_until IS NULL OR claim_until <= $1) \
                       ORDER BY created_at, id LIMIT $4 FOR UPDATE SKIP LOCKED) due \
                 WHERE o.id = due.id \
                 RETURNING o.id, o.created_at, o.attempts, o.event",
                &[&now, &owner, &until, &limit],
            )
            .await
            .map_err(|e| self.err(e))?;
        let mut out: Vec<OutboxRow> = rows
            .iter()
            .map(|r| OutboxRow {
                id: r.get(0),
                created_at: r.get(1),
                attempts: u32::try_from(r.get::<_, i32>(2)).unwrap_or(0),
                event: r.get(3),
            })
            .collect();
        out.sort_by_key(|r| (r.created_at, r.id));
        Ok(out)
    }

    async fn outbox_delete(&self, ids: &[Uuid]) -> Result<u64, DbError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let conn = self.conn().await?;
        conn.execute(
            "DELETE FROM orchestratorm8_outbox WHERE id = ANY($1)",
            &[&ids],
        )
        .await
        .map_err(|e| self.err(e))
    }

    async fn outbox_release(
        &self,
        ids: &[Uuid],
        owner: Uuid,
        not_before: DateTime<Utc>,
    ) -> Result<u64, DbError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let conn = self.conn().await?;
        conn.execute(
            "UPDATE orchestratorm8_outbox SET claim_owner = NULL, claim_until = NULL, \
               not_before = $3, attempts = attempts + 1 \
             WHERE id = ANY($1) AND claim_owner = $2",
            &[&ids, &owner, &not_before],
        )
        .await
        .map_err(|e| self.err(e))
    }

    async fn outbox_stats(&self) -> Result<OutboxStats, DbError> {
        let conn = self.conn().await?;
        let row = conn
            .query_one(
                "SELECT count(*), min(created_at) FROM orchestratorm8_outbox",
                &[],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(OutboxStats {
            depth: u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
            oldest: row.get(1),
        })
    }
}
