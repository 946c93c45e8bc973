//! `retention`: pruning finished workflows (`db8::PgStore::prune_finished`, in the
//! engine's batches of 500) beside a fan-out, on the real PostgreSQL.
//!
//! 1,000,000 finished workflows (100,000 with `--quick`) are made (created with
//! `create_workflows`, then marked completed in one statement). Then a fan-out of
//! 10,000 new one-stage workflows (1,000 with `--quick`) runs the database side of what
//! the engine does for new domains: `create_workflows` in batches of 2,000, then
//! `claim_due` and `mark_running` of every first stage in batches of 2,000. The floor is
//! that fan-out alone; the value is the same fan-out (of other domains) while a task
//! prunes the finished workflows as fast as it can. Goal: at most 10% slower (ratio =
//! floor / value >= 0.909). Afterwards every finished workflow is pruned, the tables
//! are vacuumed, and the detail gives their row counts and sizes before and after:
//! the row counts must come down to the fan-out's, or the benchmark fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use db8::{NewWorkflow, PgStore, StageKey, StagePlan, WorkflowRepository};
use model8::DomainRef;

use super::Outcomes;
use crate::ctx::Ctx;
use crate::report::{Better, Failure, Measured, Spec};
use crate::services::TempDatabase;

/// The rows.
pub const SPECS: &[Spec] = &[Spec {
    name: "retention.fanout_time",
    unit: "s",
    better: Better::Lower,
    goal: 1.0 / 1.1,
    resolution: 0.001,
}];

const BATCH: usize = 2_000;
const PRUNE_BATCH: usize = 500;
const TABLES: &[&str] = &[
    "orchestratorm8_workflow",
    "orchestratorm8_stage_run",
    "orchestratorm8_workflow_domain",
];

/// Runs the benchmark.
pub async fn run(ctx: &Ctx) -> Outcomes {
    TempDatabase::with(async |db| measure(ctx, db).await).await
}

fn workflows(prefix: &str, n: usize) -> Vec<NewWorkflow> {
    (0..n)
        .map(|i| NewWorkflow {
            id: uuid::Uuid::new_v4(),
            domains: vec![DomainRef {
                id: uuid::Uuid::new_v4(),
                name: format!("{prefix}{i}.example"),
                companyname: "ACME".into(),
            }],
            stages: vec![StagePlan {
                name: "a".into(),
                depends_on: vec![],
            }],
        })
        .collect()
}

/// The database side of a fan-out of `n` new workflows at `now`; its duration.
async fn fan_out(
    store: &PgStore,
    prefix: &str,
    n: usize,
    now: DateTime<Utc>,
) -> Result<Duration, Failure> {
    let batch = workflows(prefix, n);
    let owner = uuid::Uuid::new_v4();
    let started = Instant::now();
    for chunk in batch.chunks(BATCH) {
        store.create_workflows(chunk, now).await?;
    }
    let mut published = 0;
    while published < n {
        let claimed = store
            .claim_due("a", owner, now, Duration::from_secs(60), BATCH)
            .await?;
        if claimed.is_empty() {
            return Err(Failure::Error(format!(
                "fan-out: {published} of {n} first stages claimed, then none"
            )));
        }
        let keys: Vec<StageKey> = claimed.into_iter().map(|c| c.key).collect();
        store
            .mark_running(&keys, owner, now, now + TimeDelta::hours(2))
            .await?;
        published += keys.len();
    }
    Ok(started.elapsed())
}

/// `table: rows, size` for each table.
async fn sizes(client: &tokio_postgres::Client) -> Result<Vec<(i64, i64)>, Failure> {
    let mut out = Vec::new();
    for t in TABLES {
        let row = client
            .query_one(
                &format!("SELECT count(*), pg_total_relation_size('{t}') FROM {t}"),
                &[],
            )
            .await?;
        out.push((row.get(0), row.get(1)));
    }
    Ok(out)
}

fn show(s: &[(i64, i64)]) -> String {
    TABLES
        .iter()
        .zip(s)
        .map(|(t, (rows, bytes))| format!("{t} {rows} rows {:.1} MiB", *bytes as f64 / 1_048_576.0))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn measure(ctx: &Ctx, db: &TempDatabase) -> Outcomes {
    let finished = ctx.size(1_000_000) as usize;
    let fan = ctx.size(10_000) as usize;
    let store = Arc::new(PgStore::connect(&db.settings()).await?);
    store.migrate().await?;
    let client = db.client().await?;
    let t0 = DateTime::<Utc>::from_timestamp(1_900_000_000, 0).expect("valid");

    ctx.log("retention", format!("making {finished} finished workflows"));
    let old = workflows("old", finished);
    for chunk in old.chunks(BATCH) {
        store.create_workflows(chunk, t0).await?;
    }
    drop(old);
    client
        .batch_execute(&format!(
            "UPDATE orchestratorm8_stage_run SET status = 'completed'; \
             UPDATE orchestratorm8_workflow SET status = 'completed', active_domain = NULL, \
               ended_at = '{}'",
            t0.to_rfc3339()
        ))
        .await?;
    client.batch_execute("VACUUM ANALYZE").await?;
    let before = sizes(&client).await?;

    // The floor: the fan-out alone. Then the same size beside the pruner.
    let now = t0 + TimeDelta::days(40);
    let floor = fan_out(&store, "alone", fan, now).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let pruned = Arc::new(AtomicU64::new(0));
    let pruner = {
        let (store, stop, pruned) = (store.clone(), stop.clone(), pruned.clone());
        tokio::spawn(async move {
            let cutoff = t0 + TimeDelta::seconds(1);
            while !stop.load(Ordering::SeqCst) {
                let n = store.prune_finished(cutoff, PRUNE_BATCH).await?;
                pruned.fetch_add(n, Ordering::SeqCst);
                if n == 0 {
                    break;
                }
                tokio::task::yield_now().await;
            }
            Ok::<_, db8::DbError>(())
        })
    };
    // Let the pruner get going first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let value = fan_out(&store, "beside", fan, now).await;
    stop.store(true, Ordering::SeqCst);
    pruner
        .await
        .map_err(|e| Failure::Error(format!("pruner task: {e}")))??;
    let value = value?;
    let during = pruned.load(Ordering::SeqCst);

    // The rest, then the tables.
    let started = Instant::now();
    let mut rest = 0;
    loop {
        let n = store
            .prune_finished(t0 + TimeDelta::seconds(1), PRUNE_BATCH)
            .await?;
        rest += n;
        if n == 0 {
            break;
        }
    }
    let rest_s = started.elapsed().as_secs_f64();
    client.batch_execute("VACUUM ANALYZE").await?;
    let after = sizes(&client).await?;
    if during + rest != finished as u64 || after[0].0 != 2 * fan as i64 {
        return Err(Failure::Error(format!(
            "pruned {during} + {rest} of {finished}; left: {}",
            show(&after)
        )));
    }
    ctx.log(
        "retention",
        format!(
            "fan-out {:.3} s beside pruning vs {:.3} s alone; {during} pruned meanwhile",
            value.as_secs_f64(),
            floor.as_secs_f64()
        ),
    );
    Ok(vec![(
        "retention.fanout_time",
        Ok(Measured {
            value: value.as_secs_f64(),
            floor: floor.as_secs_f64(),
            detail: format!(
                "fan-out of {fan} one-stage workflows (create_workflows, claim_due, \
                 mark_running in batches of {BATCH}) beside prune_finished of {finished} \
                 finished workflows in batches of {PRUNE_BATCH} ({during} pruned during the \
                 fan-out, the other {rest} after it in {rest_s:.1} s), vs the same fan-out \
                 alone; one run each. Before: {}. After pruning and VACUUM: {}",
                show(&before),
                show(&after)
            ),
        }),
    )])
}
