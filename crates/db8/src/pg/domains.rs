//! [`DomainRepository`] on `cptm8domain`.
//!
//! The table may come from the platform's own dump, without a primary key and with
//! duplicate names, so a unique constraint cannot be relied on: inserts and renames
//! take a transaction-scoped advisory lock on the name, then check that no row holds
//! it. Every write through this repository is therefore free of new duplicates, and
//! existing ones are left alone.

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use model8::{Domain8, PostDomain8};
use tokio_postgres::Row;
use uuid::Uuid;

use super::PgStore;
use crate::error::DbError;
use crate::shared::domains::{conflict, not_found, validated};
use crate::traits::DomainRepository;

/// Columns of a [`Domain8`]; a NULL company reads as "".
const COLUMNS: &str = "id, coalesce(name, ''), coalesce(companyname, ''), coalesce(enabled, false)";

/// First key of the two-key advisory lock on a domain name (ASCII `om8`); the second
/// is `hashtext(lower(name))`.
const NAME_LOCK_CLASS: i32 = 0x006f_6d38;

fn domain(row: &Row) -> Result<Domain8, tokio_postgres::Error> {
    Ok(Domain8 {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        companyname: row.try_get(2)?,
        enabled: row.try_get(3)?,
    })
}

impl PgStore {
    /// Within `tx`: waits for the name's lock, then fails with a conflict when another
    /// row (not `except`) holds the name.
    async fn claim_name(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        name: &str,
        except: Option<Uuid>,
    ) -> Result<(), DbError> {
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext(lower($2::text)))",
            &[&NAME_LOCK_CLASS, &name],
        )
        .await
        .map_err(|e| self.err(e))?;
        let taken = tx
            .query_opt(
                "SELECT 1 FROM cptm8domain WHERE lower(name) = lower($1::text) \
                 AND ($2::uuid IS NULL OR id IS DISTINCT FROM $2) LIMIT 1",
                &[&name, &except],
            )
            .await
            .map_err(|e| self.err(e))?;
        match taken {
            Some(_) => Err(conflict(name)),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl DomainRepository for PgStore {
    async fn list(&self) -> Result<Vec<Domain8>, DbError> {
        let conn = self.conn().await?;
        let rows = conn
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM cptm8domain WHERE id IS NOT NULL \
                     ORDER BY name COLLATE \"C\", id"
                ),
                &[],
            )
            .await
            .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| domain(r).map_err(|e| self.err(e)))
            .collect()
    }

    async fn stream_enabled(
        &self,
    ) -> Result<BoxStream<'static, Result<Domain8, DbError>>, DbError> {
        // The driver hands rows over through a one-slot channel and stops reading the
        // socket while it is full, so memory stays constant however many rows there
        // are. The pooled connection lives as long as the stream.
        let conn = self.owned_conn().await?;
        let rows = conn
            .query_raw(
                &format!("SELECT {COLUMNS} FROM cptm8domain WHERE enabled AND id IS NOT NULL"),
                std::iter::empty::<i32>(),
            )
            .await
            .map_err(|e| self.err(e))?;
        let label = self.params.label.clone();
        Ok(rows
            .map(move |r| {
                let _keep = &conn;
                r.and_then(|row| domain(&row))
                    .map_err(|e| crate::pg::conn::map_error(&label, &e))
            })
            .boxed())
    }

    async fn exists_enabled(&self) -> Result<bool, DbError> {
        let conn = self.conn().await?;
        let row = conn
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM cptm8domain WHERE enabled AND id IS NOT NULL)",
                &[],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(row.get(0))
    }

    async fn get(&self, id: Uuid) -> Result<Domain8, DbError> {
        let conn = self.conn().await?;
        let row = conn
            .query_opt(
                &format!("SELECT {COLUMNS} FROM cptm8domain WHERE id = $1 LIMIT 1"),
                &[&id],
            )
            .await
            .map_err(|e| self.err(e))?
            .ok_or_else(|| not_found(id))?;
        domain(&row).map_err(|e| self.err(e))
    }

    async fn insert(&self, d: &PostDomain8) -> Result<Domain8, DbError> {
        let d = validated(d)?;
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(|e| self.err(e))?;
        self.claim_name(&tx, &d.name, None).await?;
        // The id is chosen here: the table's default may name uuid_generate_v4()
        // (uuid-ossp) or gen_random_uuid(); neither is needed.
        let row = tx
            .query_one(
                &format!(
                    "INSERT INTO cptm8domain (id, name, companyname, enabled) \
                     VALUES ($1, $2, $3, $4) RETURNING {COLUMNS}"
                ),
                &[&Uuid::new_v4(), &d.name, &d.companyname, &d.enabled],
            )
            .await
            .map_err(|e| self.err(e))?;
        tx.commit().await.map_err(|e| self.err(e))?;
        domain(&row).map_err(|e| self.err(e))
    }

    async fn update(&self, id: Uuid, d: &PostDomain8) -> Result<Domain8, DbError> {
        let d = validated(d)?;
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(|e| self.err(e))?;
        let current: String = tx
            .query_opt(
                "SELECT coalesce(name, '') FROM cptm8domain WHERE id = $1 LIMIT 1",
                &[&id],
            )
            .await
            .map_err(|e| self.err(e))?
            .ok_or_else(|| not_found(id))?
            .get(0);
        // Keeping its own name is never a conflict, even for a row that shares it with
        // older duplicates.
        if !current.eq_ignore_ascii_case(&d.name) {
            self.claim_name(&tx, &d.name, Some(id)).await?;
        }
        let row = tx
            .query(
                &format!(
                    "UPDATE cptm8domain SET name = $2, companyname = $3, enabled = $4 \
                     WHERE id = $1 RETURNING {COLUMNS}"
                ),
                &[&id, &d.name, &d.companyname, &d.enabled],
            )
            .await
            .map_err(|e| self.err(e))?
            .into_iter()
            .next()
            .ok_or_else(|| not_found(id))?;
        tx.commit().await.map_err(|e| self.err(e))?;
        domain(&row).map_err(|e| self.err(e))
    }

    async fn set_enabled(&self, id: Uuid, enabled: bool) -> Result<Domain8, DbError> {
        let conn = self.conn().await?;
        let row = conn
            .query(
                &format!("UPDATE cptm8domain SET enabled = $2 WHERE id = $1 RETURNING {COLUMNS}"),
                &[&id, &enabled],
            )
            .await
            .map_err(|e| self.err(e))?
            .into_iter()
            .next()
            .ok_or_else(|| not_found(id))?;
        domain(&row).map_err(|e| self.err(e))
    }

    async fn delete(&self, id: Uuid) -> Result<(), DbError> {
        let conn = self.conn().await?;
        let n = conn
            .execute("DELETE FROM cptm8domain WHERE id = $1", &[&id])
            .await
            .map_err(|e| self.err(e))?;
        if n == 0 {
            return Err(not_found(id));
        }
        Ok(())
    }
}
