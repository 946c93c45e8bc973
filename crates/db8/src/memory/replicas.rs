//! [`ReplicaRegistry`] in memory, shared by the handles of one data set.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use model8::{GoTime, ReplicaRole, ReplicaView};
use uuid::Uuid;

use super::MemoryStore;
use crate::error::DbError;
use crate::time::db_precision;
use crate::traits::ReplicaRegistry;

#[async_trait]
impl ReplicaRegistry for MemoryStore {
    async fn replica_beat(&self, r: &ReplicaView) -> Result<(), DbError> {
        let mut state = self.state()?;
        let seen = db_precision(r.seen_at.to_utc());
        let row = state.replicas.entry(r.id).or_insert_with(|| ReplicaView {
            started_at: GoTime::from_utc(db_precision(r.started_at.to_utc())),
            ..r.clone()
        });
        row.role = r.role;
        row.seen_at = GoTime::from_utc(seen);
        let cut = seen - chrono::TimeDelta::days(1);
        state.replicas.retain(|_, v| v.seen_at.to_utc() >= cut);
        Ok(())
    }

    async fn replicas(&self, seen_after: DateTime<Utc>) -> Result<Vec<ReplicaView>, DbError> {
        let state = self.state()?;
        let after = db_precision(seen_after);
        let mut out: Vec<ReplicaView> = state
            .replicas
            .values()
            .filter(|r| r.seen_at.to_utc() >= after)
            .cloned()
            .collect();
        out.sort_by_key(|r| (r.role != ReplicaRole::Leader, r.name.clone(), r.id));
        Ok(out)
    }

    async fn replica_gone(&self, id: Uuid) -> Result<(), DbError> {
        self.state()?.replicas.remove(&id);
        Ok(())
    }
}
