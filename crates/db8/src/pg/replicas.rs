//! [`ReplicaRegistry`] on `orchestratorm8_replica`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use model8::{GoTime, ReplicaRole, ReplicaView};
use uuid::Uuid;

use super::PgStore;
use crate::error::DbError;
use crate::time::db_precision;
use crate::traits::ReplicaRegistry;

#[async_trait]
impl ReplicaRegistry for PgStore {
    async fn replica_beat(&self, r: &ReplicaView) -> Result<(), DbError> {
        let conn = self.conn().await?;
        let seen = db_precision(r.seen_at.to_utc());
        conn.execute(
            "INSERT INTO orchestratorm8_replica (id, name, role, version, started_at, seen_at) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (id) DO UPDATE SET role = excluded.role, seen_at = excluded.seen_at",
            &[
                &r.id,
                &r.name,
                &r.role.as_str(),
                &r.version,
                &db_precision(r.started_at.to_utc()),
                &seen,
            ],
        )
        .await
        .map_err(|e| self.err(e))?;
        conn.execute(
            "DELETE FROM orchestratorm8_replica WHERE seen_at < $1",
            &[&(seen - chrono::TimeDelta::days(1))],
        )
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn replicas(&self, seen_after: DateTime<Utc>) -> Result<Vec<ReplicaView>, DbError> {
        let conn = self.conn().await?;
        let rows = conn
            .query(
                "SELECT id, name, role, version, started_at, seen_at FROM orchestratorm8_replica \
                 WHERE seen_at >= $1 ORDER BY role = 'leader' DESC, name, id",
                &[&db_precision(seen_after)],
            )
            .await
            .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|row| {
                let role = match row.get::<_, &str>(2) {
                    "leader" => ReplicaRole::Leader,
                    "standby" => ReplicaRole::Standby,
                    other => {
                        return Err(DbError::Query(format!(
                            "unexpected replica role in the database: {other:?}"
                        )));
                    }
                };
                Ok(ReplicaView {
                    id: row.get(0),
                    name: row.get(1),
                    role,
                    version: row.get(3),
                    started_at: GoTime::from_utc(row.get(4)),
                    seen_at: GoTime::from_utc(row.get(5)),
                })
            })
            .collect()
    }

    async fn replica_gone(&self, id: Uuid) -> Result<(), DbError> {
        let conn = self.conn().await?;
        conn.execute("DELETE FROM orchestratorm8_replica WHERE id = $1", &[&id])
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}
