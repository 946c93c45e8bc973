//! `db_create`: db8's PostgreSQL `WorkflowRepository::create_workflows` creating
//! 100,000 `per_domain` workflows (one domain each, the default four-stage pipeline,
//! so the first stage pending and the others waiting), in batches the size the engine
//! uses, one call after the other, as the engine does.
//!
//! Floor: a plain `COPY ... FROM STDIN` of exactly the rows db8 wrote (dumped after
//! the measured run) into equivalent tables (`CREATE TABLE ... (LIKE ... INCLUDING
//! ALL)`: same columns, defaults, checks and indexes; no foreign keys), in one
//! transaction. Goal: within 3x (ratio >= 0.333).

use std::time::Instant;

use db8::{NewWorkflow, StagePlan, WorkflowRepository};
use model8::DomainRef;

use super::Outcomes;
use crate::ctx::{Ctx, list, median};
use crate::floors::pg::{copy_in, copy_out};
use crate::report::{Better, Failure, Measured, Spec};
use crate::services::TempDatabase;
use crate::workload::insert_domains;

/// The rows.
pub const SPECS: &[Spec] = &[Spec {
    name: "db_create.throughput",
    unit: "workflows/s",
    better: Better::Higher,
    goal: 1.0 / 3.0,
    resolution: 0.0,
}];

/// Runs the benchmark.
pub async fn run(ctx: &Ctx) -> Outcomes {
    TempDatabase::with(async |db| measure(ctx, db).await).await
}

/// The workflows of `domains`, one per domain, with the default pipeline.
fn workflows(domains: &[DomainRef]) -> Vec<NewWorkflow> {
    let stages: Vec<StagePlan> = config8::DEFAULT_PIPELINE
        .iter()
        .map(|(name, deps)| StagePlan {
            name: (*name).to_owned(),
            depends_on: deps.iter().map(|d| (*d).to_owned()).collect(),
        })
        .collect();
    domains
        .iter()
        .map(|d| NewWorkflow {
            id: uuid::Uuid::new_v4(),
            domains: vec![d.clone()],
            stages: stages.clone(),
        })
        .collect()
}

async fn measure(ctx: &Ctx, db: &TempDatabase) -> Outcomes {
    let n = ctx.size(100_000);
    let batch = batch_size();
    let store = db8::PgStore::connect(&db.settings()).await?;
    store.migrate().await?;
    let client = db.client().await?;
    insert_domains(&client, n).await?;
    client.batch_execute("VACUUM ANALYZE cptm8domain").await?;
    let domains: Vec<DomainRef> = client
        .query(
            "SELECT id, name, coalesce(companyname, '') FROM cptm8domain",
            &[],
        )
        .await?
        .iter()
        .map(|r| DomainRef {
            id: r.get(0),
            name: r.get(1),
            companyname: r.get(2),
        })
        .collect();
    ctx.log("db_create", format!("{n} domains; batches of {batch}"));

    let mut ours = Vec::new();
    let mut floors = Vec::new();
    let mut tables: Vec<String> = Vec::new();
    for rep in 0..ctx.reps {
        if !tables.is_empty() {
            client
                .batch_execute(&format!("TRUNCATE {}", tables.join(", ")))
                .await?;
        }
        let all = workflows(&domains);
        let now = chrono::Utc::now();
        let start = Instant::now();
        let mut created = 0usize;
        for chunk in all.chunks(batch) {
            created += store.create_workflows(chunk, now).await?.len();
        }
        let ours_s = start.elapsed().as_secs_f64();
        if created as u64 != n {
            return Err(Failure::Error(format!(
                "create_workflows created {created} workflows, expected {n}"
            )));
        }
        ours.push(n as f64 / ours_s);

        if tables.is_empty() {
            tables = written_tables(&client).await?;
            if tables.is_empty() {
                return Err(Failure::Error(
                    "create_workflows wrote no orchestratorm8_* table".into(),
                ));
            }
            for t in &tables {
                client
                    .batch_execute(&format!(
                        "CREATE TABLE bench_floor_{t} (LIKE {t} INCLUDING ALL)"
                    ))
                    .await?;
            }
        }
        let mut dumps = Vec::new();
        for t in &tables {
            dumps.push((format!("bench_floor_{t}"), copy_out(&client, t).await?));
        }
        let floor_tables: Vec<&str> = dumps.iter().map(|(t, _)| t.as_str()).collect();
        client
            .batch_execute(&format!("TRUNCATE {}", floor_tables.join(", ")))
            .await?;
        let start = Instant::now();
        client.batch_execute("BEGIN").await?;
        let mut copied = 0u64;
        for (t, data) in &dumps {
            copied += copy_in(&client, t, data).await?;
        }
        client.batch_execute("COMMIT").await?;
        let floor_s = start.elapsed().as_secs_f64();
        floors.push(n as f64 / floor_s);
        ctx.log(
            "db_create",
            format!(
                "rep {}: create_workflows {ours_s:.2}s; COPY of the same {copied} rows into {} tables {floor_s:.2}s",
                rep + 1,
                dumps.len()
            ),
        );
    }
    let value = median(&ours);
    let floor = median(&floors);
    Ok(vec![(
        "db_create.throughput",
        Ok(Measured {
            value,
            floor,
            detail: format!(
                "{n} per_domain workflows of 4 stages, create_workflows in batches of {batch}, \
                 sequential; floor: COPY of the same rows of {} into LIKE ... INCLUDING ALL \
                 copies, one transaction; median of {} runs; workflows/s db8 [{}], COPY [{}]",
                tables.join(", "),
                ctx.reps,
                list(&ours),
                list(&floors)
            ),
        }),
    )])
}

/// The engine's batch size for `create_workflows` (controller8's default tuning).
fn batch_size() -> usize {
    controller8::Tuning::default().create_batch.max(1)
}

/// The orchestrator's tables that hold rows (every one db8 wrote to).
async fn written_tables(client: &tokio_postgres::Client) -> Result<Vec<String>, Failure> {
    let names: Vec<String> = client
        .query(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' \
             AND table_name LIKE 'orchestratorm8\\_%' \
             AND table_name <> 'orchestratorm8_schema_migrations' ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut written = Vec::new();
    for t in names {
        let row = client
            .query_one(&format!("SELECT EXISTS (SELECT 1 FROM {t})"), &[])
            .await?;
        if row.get::<_, bool>(0) {
            written.push(t);
        }
    }
    Ok(written)
}
