//! [`OutboxRepository`] in memory: the rows live in the store's one state, so a
//! transition and its outbox row change together (as in one PostgreSQL transaction).

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::MemoryStore;
use crate::error::DbError;
use crate::outbox::{OutboxEvent, OutboxRepository, OutboxRow, OutboxStats};
use crate::time::{db_precision, plus};

/// The rows of the outbox.
#[derive(Default)]
pub(super) struct Outbox {
    rows: BTreeMap<Uuid, Row>,
}

struct Row {
    created_at: DateTime<Utc>,
    event: serde_json::Value,
    not_before: DateTime<Utc>,
    attempts: u32,
    claim_owner: Option<Uuid>,
    claim_until: Option<DateTime<Utc>>,
}

impl Outbox {
    /// Writes `event`, due at once (the caller holds the state: same "transaction").
    pub(super) fn insert(&mut self, event: &OutboxEvent, now: DateTime<Utc>) {
        let now = db_precision(now);
        self.rows.insert(
            Uuid::new_v4(),
            Row {
                created_at: now,
                event: event.to_json(),
                not_before: now,
                attempts: 0,
                claim_owner: None,
                claim_until: None,
            },
        );
    }
}

#[async_trait]
impl OutboxRepository for MemoryStore {
    async fn outbox_claim(
        &self,
        owner: Uuid,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<OutboxRow>, DbError> {
        let now = db_precision(now);
        let until = db_precision(plus(now, lease));
        let mut state = self.state()?;
        let mut due: Vec<(DateTime<Utc>, Uuid)> = state
            .outbox
            .rows
            .iter()
            .filter(|(_, r)| r.not_before <= now && r.claim_until.is_none_or(|u| u <= now))
            .map(|(id, r)| (r.created_at, *id))
            .collect();
        due.sort();
        due.truncate(limit);
        Ok(due
            .into_iter()
            .map(|(_, id)| {
                let r = state.outbox.rows.get_mut(&id).expect("listed above");
                r.claim_owner = Some(owner);
                r.claim_until = Some(until);
                OutboxRow {
                    id,
                    created_at: r.created_at,
                    attempts: r.attempts,
                    event: r.event.clone(),
                }
            })
            .collect())
    }

    async fn outbox_delete(&self, ids: &[Uuid]) -> Result<u64, DbError> {
        let mut state = self.state()?;
        Ok(ids
            .iter()
            .filter(|id| state.outbox.rows.remove(id).is_some())
            .count() as u64)
    }

    async fn outbox_release(
        &self,
        ids: &[Uuid],
        owner: Uuid,
        not_before: DateTime<Utc>,
    ) -> Result<u64, DbError> {
        let not_before = db_precision(not_before);
        let mut state = self.state()?;
        let mut n = 0;
        for id in ids {
            if let Some(r) = state.outbox.rows.get_mut(id)
                && r.claim_owner == Some(owner)
            {
                r.claim_owner = None;
                r.claim_until = None;
                r.not_before = not_before;
                r.attempts += 1;
                n += 1;
            }
        }
        Ok(n)
    }

    async fn outbox_stats(&self) -> Result<OutboxStats, DbError> {
        let state = self.state()?;
        Ok(OutboxStats {
            depth: state.outbox.rows.len() as u64,
            oldest: state.outbox.rows.values().map(|r| r.created_at).min(),
        })
    }
}
