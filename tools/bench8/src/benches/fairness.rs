//! `fairness`: the order in which `Workflow.fairness: company` hands out a limited
//! stage's slots, on the real PostgreSQL through the claim the dispatcher makes
//! (`db8::PgStore::claim_due_fair`), with a simulated worker and a simulated clock (so
//! that the number depends on the order the database gives, not on the machine's load).
//!
//! Two companies: BIG with 20,000 domains (2,000 with `--quick`) and SMALL with 20,
//! one stage with `max_in_flight` 10, a worker taking 50 ms per job. BIG's backlog comes
//! first and fills every slot; SMALL's 20 workflows arrive 10 ms later. Each time slots
//! free up, the free slots are claimed (`claim_due_fair`), marked running, and finish
//! 50 ms later. The value is the p99 of SMALL's waits (arrival to publish); the floor
//! is the same p99 under an ideal fair share (SMALL gets 5 of the 10 slots as they free
//! up: its `i`-th job starts at the first slot release plus `i / 5` job times). Goal:
//! within 2x of the fair share (ratio = floor / value >= 0.5). Oldest-first claiming
//! (`fairness: none`) would make SMALL wait for all of BIG's backlog: 200 job times at
//! 20,000 (ratio about 0.01).

use std::collections::BTreeMap;
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
    name: "fairness.small_p99_wait",
    unit: "ms",
    better: Better::Lower,
    goal: 0.5,
    resolution: 1.0,
}];

const LIMIT: usize = 10;
const JOB_MS: i64 = 50;
const SMALL: usize = 20;
const ARRIVAL_MS: i64 = 10;

/// Runs the benchmark.
pub async fn run(ctx: &Ctx) -> Outcomes {
    TempDatabase::with(async |db| measure(ctx, db).await).await
}

fn workflows(company: &str, n: usize) -> Vec<NewWorkflow> {
    (0..n)
        .map(|i| NewWorkflow {
            id: uuid::Uuid::new_v4(),
            domains: vec![DomainRef {
                id: uuid::Uuid::new_v4(),
                name: format!("d{i}.{}.example", company.to_lowercase()),
                companyname: company.into(),
            }],
            stages: vec![StagePlan {
                name: "a".into(),
                depends_on: vec![],
            }],
        })
        .collect()
}

fn ms(n: i64) -> TimeDelta {
    TimeDelta::milliseconds(n)
}

/// The p99 (nearest rank) of `waits`.
fn p99(waits: &mut [i64]) -> i64 {
    waits.sort_unstable();
    let rank = ((waits.len() as f64) * 0.99).ceil() as usize;
    waits[rank.clamp(1, waits.len()) - 1]
}

async fn measure(ctx: &Ctx, db: &TempDatabase) -> Outcomes {
    let big_n = ctx.size(20_000) as usize;
    let store = PgStore::connect(&db.settings()).await?;
    store.migrate().await?;
    let t0 = DateTime::<Utc>::from_timestamp(1_900_000_000, 0).expect("valid");
    let big = workflows("BIG", big_n);
    for chunk in big.chunks(2_000) {
        store.create_workflows(chunk, t0).await?;
    }
    let owner = uuid::Uuid::new_v4();
    let lease = Duration::from_secs(3600);
    let weights = BTreeMap::new();
    let mut running: Vec<(DateTime<Utc>, StageKey)> = Vec::new();
    let mut now = t0;
    let mut claims = Vec::new();
    let mut claim = async |now: DateTime<Utc>, running: &mut Vec<(DateTime<Utc>, StageKey)>| {
        let started = Instant::now();
        let got = store
            .claim_due_fair("a", owner, now, lease, LIMIT - running.len(), &weights)
            .await?;
        claims.push(started.elapsed().as_secs_f64() * 1000.0);
        let keys: Vec<StageKey> = got.iter().map(|c| c.key.clone()).collect();
        store
            .mark_running(&keys, owner, now, now + TimeDelta::hours(1))
            .await?;
        for c in &got {
            running.push((now + ms(JOB_MS), c.key.clone()));
        }
        Ok::<_, Failure>(got)
    };
    // BIG's backlog fills every slot; SMALL arrives just after.
    claim(now, &mut running).await?;
    let small = workflows("SMALL", SMALL);
    let arrival = t0 + ms(ARRIVAL_MS);
    store.create_workflows(&small, arrival).await?;
    let small_ids: std::collections::HashSet<uuid::Uuid> = small.iter().map(|w| w.id).collect();
    let mut waits = Vec::new();
    let mut rounds = 0;
    while waits.len() < SMALL {
        rounds += 1;
        if rounds > big_n + SMALL {
            return Err(Failure::Error(
                "the small company's jobs never went out".into(),
            ));
        }
        // The worker finishes what is due next.
        running.sort_by_key(|(t, _)| *t);
        now = running.first().map_or(now, |(t, _)| *t);
        let done: Vec<StageKey> = running
            .iter()
            .filter(|(t, _)| *t <= now)
            .map(|(_, k)| k.clone())
            .collect();
        running.retain(|(t, _)| *t > now);
        for k in &done {
            store.complete_stage(k, None, now).await?;
        }
        for c in claim(now, &mut running).await? {
            if small_ids.contains(&c.key.workflow_id) {
                waits.push((now - arrival).num_milliseconds());
            }
        }
    }
    let value = p99(&mut waits) as f64;
    // The ideal fair share: half the slots, released every job time from t0 + JOB_MS.
    let mut ideal: Vec<i64> = (0..SMALL as i64)
        .map(|i| JOB_MS + (i / (LIMIT as i64 / 2)) * JOB_MS - ARRIVAL_MS)
        .collect();
    let floor = p99(&mut ideal) as f64;
    let mean_claim = claims.iter().sum::<f64>() / claims.len().max(1) as f64;
    ctx.log(
        "fairness",
        format!(
            "small p99 wait {value} ms (fair share {floor} ms), {} claims",
            claims.len()
        ),
    );
    Ok(vec![(
        "fairness.small_p99_wait",
        Ok(Measured {
            value,
            floor,
            detail: format!(
                "BIG {big_n} domains then SMALL {SMALL} ({ARRIVAL_MS} ms later), max_in_flight \
                 {LIMIT}, worker {JOB_MS} ms per job on a simulated clock; claims by \
                 PgStore::claim_due_fair; p99 of SMALL's waits vs the ideal fair share (5 of \
                 10 slots); {} claims, mean {mean_claim:.1} ms each (wall)",
                claims.len()
            ),
        }),
    )])
}
