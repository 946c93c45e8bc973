//! Embedded, idempotent migrations, tracked in `orchestratorm8_schema_migrations` and
//! serialised across replicas by a session-level advisory lock.

use crate::error::DbError;
use crate::pg::conn::{ConnectParams, describe, is_unavailable, quote_ident};

/// One embedded migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// Its version (applied in increasing order).
    pub version: i64,
    /// What it does.
    pub name: &'static str,
    sql: &'static str,
}

/// A [`Migration`] from its version, what it does and its file under `migrations/`.
macro_rules! migration {
    ($version:literal, $name:literal, $file:literal) => {
        Migration {
            version: $version,
            name: $name,
            sql: include_str!(concat!("migrations/", $file)),
        }
    };
}

/// Every migration, in order. Each one only creates what is missing (or, for
/// version 4, replaces indexes of the orchestrator's own tables): none drops or rewrites
/// data.
pub(crate) const MIGRATIONS: &[Migration] = &[
    migration!(1, "domain table", "0001_domain_table.sql"),
    migration!(2, "workflow tables", "0002_workflow_tables.sql"),
    migration!(3, "domain change trigger", "0003_domain_change_trigger.sql"),
    migration!(4, "cheaper dispatch", "0004_cheaper_dispatch.sql"),
    migration!(
        5,
        "workflow kind and stage times",
        "0005_workflow_kind_stage_times.sql"
    ),
    migration!(6, "observed ring", "0006_observed_ring.sql"),
    migration!(7, "retention and scan-now mark", "0007_retention.sql"),
    migration!(8, "transactional outbox", "0008_outbox.sql"),
    migration!(9, "leader term", "0009_leader_term.sql"),
    migration!(10, "replicas", "0010_replicas.sql"),
    migration!(11, "plan as jsonb", "0011_plan_jsonb.sql"),
    migration!(12, "dispatched stage status", "0012_dispatched.sql"),
];

/// The advisory lock key that serialises migrations (ASCII `orchm8mg`).
pub(crate) const MIGRATION_LOCK_KEY: i64 = 0x6f72_6368_6d38_6d67;

/// Applies the migrations that are missing; returns those it applied.
pub(crate) async fn run(params: &ConnectParams) -> Result<Vec<Migration>, DbError> {
    let (mut client, task) = params.dedicated(None).await?;
    let result = run_locked(params, &mut client).await;
    // Ending the session also releases the lock if unlocking failed.
    drop(client);
    let _ = task.await;
    result
}

async fn run_locked(
    params: &ConnectParams,
    client: &mut tokio_postgres::Client,
) -> Result<Vec<Migration>, DbError> {
    let err = |e: tokio_postgres::Error| params.error(e);
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .map_err(err)?;
    let result = apply(params, client).await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .map_err(err)?;
    result
}

async fn apply(
    params: &ConnectParams,
    client: &mut tokio_postgres::Client,
) -> Result<Vec<Migration>, DbError> {
    let schema = &params.settings.schema;
    let setup =
        |e: tokio_postgres::Error| failure(params, 0, &format!("preparing schema {schema:?}"), e);
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
            &[schema],
        )
        .await
        .map_err(setup)?
        .get(0);
    if !exists {
        client
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {}",
                quote_ident(schema)
            ))
            .await
            .map_err(setup)?;
        tracing::info!(schema = %schema, "created schema");
    }
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS orchestratorm8_schema_migrations (
                version bigint PRIMARY KEY,
                name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(setup)?;
    let applied: Vec<i64> = client
        .query("SELECT version FROM orchestratorm8_schema_migrations", &[])
        .await
        .map_err(setup)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut done = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
        let failed = |e: tokio_postgres::Error| failure(params, m.version, m.name, e);
        let tx = client.transaction().await.map_err(failed)?;
        tx.batch_execute(m.sql).await.map_err(failed)?;
        tx.execute(
            "INSERT INTO orchestratorm8_schema_migrations (version, name) VALUES ($1, $2)",
            &[&m.version, &m.name],
        )
        .await
        .map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        tracing::info!(version = m.version, name = m.name, database = %params.label, "applied migration");
        done.push(*m);
    }
    Ok(done)
}

/// A lost connection stays [`DbError::Unavailable`] (retrying is right); anything else
/// is the migration's fault.
fn failure(params: &ConnectParams, version: i64, what: &str, e: tokio_postgres::Error) -> DbError {
    if is_unavailable(&e) {
        return params.error(e);
    }
    DbError::Migration {
        version,
        reason: format!("{what}: {}", describe(&e)),
    }
}
