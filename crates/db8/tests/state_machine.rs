//! The stage state machine, property-tested: random sequences of events (create,
//! claim, record, release, results, time-outs, operator controls, clock advances,
//! duplicate and stale results) run against the in-memory store and the PostgreSQL
//! store side by side. After every step both must have answered alike (transition,
//! counts, claimed attempts, errors) and show the same workflows, in-flight counts and
//! time-outs; and every stage status change seen must be one `db8::transitions` allows.
//!
//! One database for every case; each case has its own stage names and workflows, and
//! cancels what it left active, so cases do not see each other's rows.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use db8::{
    DbError, InitialClaim, MemoryStore, NewWorkflow, PgStore, StageKey, StagePlan,
    WorkflowRepository, transitions,
};
use model8::{DomainRef, WorkflowView};
use proptest::prelude::*;
use uuid::Uuid;

/// One step of a case.
#[derive(Debug, Clone)]
enum Op {
    /// New workflows (their first stage claimed by owner 0 when `claimed`).
    Create {
        n: usize,
        claimed: bool,
    },
    /// A claim of stage `stage` by `owner` (fair or oldest first).
    Claim {
        stage: usize,
        owner: usize,
        limit: usize,
        fair: bool,
    },
    /// The record of a claimed attempt (`mark_running`).
    Record {
        key: usize,
        owner: usize,
    },
    /// A refused publish (`release`).
    Release {
        key: usize,
        owner: usize,
    },
    /// A worker's completion of a claimed attempt, or of another attempt number
    /// (`skew`: stale or duplicate).
    Complete {
        key: usize,
        skew: u32,
    },
    /// A worker's failure, with or without a retry left.
    Fail {
        key: usize,
        skew: u32,
        retry: bool,
    },
    /// A time-out found by the leader.
    TimeOut {
        key: usize,
        retry: bool,
    },
    /// Operator controls.
    Cancel(usize),
    Pause(usize),
    Resume(usize),
    Retry(usize),
    /// The clock moves on (past leases and deadlines for the larger steps).
    Advance(i64),
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0..16usize;
    prop_oneof![
        2 => (1..3usize, any::<bool>()).prop_map(|(n, claimed)| Op::Create { n, claimed }),
        3 => (0..2usize, 0..2usize, 1..4usize, any::<bool>())
            .prop_map(|(stage, owner, limit, fair)| Op::Claim { stage, owner, limit, fair }),
        3 => (key.clone(), 0..3usize).prop_map(|(key, o)| Op::Record { key, owner: o.min(1) }),
        1 => (key.clone(), 0..2usize).prop_map(|(key, owner)| Op::Release { key, owner }),
        3 => (key.clone(), prop_oneof![3 => Just(0u32), 1 => Just(1u32)])
            .prop_map(|(key, skew)| Op::Complete { key, skew }),
        2 => (key.clone(), prop_oneof![3 => Just(0u32), 1 => Just(1u32)], any::<bool>())
            .prop_map(|(key, skew, retry)| Op::Fail { key, skew, retry }),
        1 => (key, any::<bool>()).prop_map(|(key, retry)| Op::TimeOut { key, retry }),
        1 => (0..4usize).prop_map(Op::Cancel),
        1 => (0..4usize).prop_map(Op::Pause),
        1 => (0..4usize).prop_map(Op::Resume),
        1 => (0..4usize).prop_map(Op::Retry),
        2 => prop_oneof![Just(1i64), Just(15), Just(61), Just(3600)].prop_map(Op::Advance),
    ]
}

/// What one step answered, comparable across stores.
#[derive(Debug, PartialEq)]
enum Answer {
    Ids(Vec<Uuid>),
    Claimed(Vec<(Uuid, String, u32)>),
    Count(u64),
    Transition(db8::Transition),
    View(Box<WorkflowView>),
    Error(String),
    Nothing,
}

fn error(e: DbError) -> Answer {
    Answer::Error(match e {
        DbError::NotFound(m) | DbError::InvalidState(m) | DbError::Conflict(m) => m,
        other => panic!("unexpected store error: {other}"),
    })
}

fn answer<T>(r: Result<T, DbError>, f: impl FnOnce(T) -> Answer) -> Answer {
    r.map_or_else(error, f)
}

/// The state a case keeps besides the stores.
struct Case {
    stages: [String; 2],
    owners: [Uuid; 2],
    workflows: Vec<Uuid>,
    /// Every attempt a claim returned, in order.
    keys: Vec<StageKey>,
    now: DateTime<Utc>,
}

impl Case {
    fn new(n: u64) -> Case {
        let prefix = format!("c{}_{n}", Uuid::new_v4().simple());
        Case {
            stages: [format!("{prefix}_a"), format!("{prefix}_b")],
            owners: [Uuid::new_v4(), Uuid::new_v4()],
            workflows: Vec::new(),
            keys: Vec::new(),
            now: DateTime::<Utc>::from_timestamp(1_900_000_000, 123_456_789).unwrap(),
        }
    }

    fn plans(&self) -> Vec<StagePlan> {
        vec![
            StagePlan {
                name: self.stages[0].clone(),
                depends_on: vec![],
            },
            StagePlan {
                name: self.stages[1].clone(),
                depends_on: vec![self.stages[0].clone()],
            },
        ]
    }

    fn key(&self, i: usize, skew: u32) -> Option<StageKey> {
        let k = self.keys.get(i % self.keys.len().max(1))?;
        Some(StageKey {
            attempt: k.attempt + skew,
            ..k.clone()
        })
    }

    fn workflow(&self, i: usize) -> Option<Uuid> {
        self.workflows.get(i % self.workflows.len().max(1)).copied()
    }

    /// Applies `op` to `store` (the clock is moved by the caller).
    async fn apply(
        &self,
        store: &dyn WorkflowRepository,
        op: &Op,
        batch: &[NewWorkflow],
    ) -> Answer {
        let now = self.now;
        let lease = Duration::from_secs(60);
        let later = |s| now + TimeDelta::seconds(s);
        match op {
            Op::Create { claimed: false, .. } => {
                answer(store.create_workflows(batch, now).await, Answer::Ids)
            }
            Op::Create { claimed: true, .. } => {
                let claim = InitialClaim {
                    owner: self.owners[0],
                    lease,
                    stages: vec![self.stages[0].clone()],
                };
                answer(store.create_claimed(batch, now, &claim).await, |c| {
                    Answer::Claimed(
                        c.claimed
                            .into_iter()
                            .map(|c| (c.key.workflow_id, c.key.stage, c.key.attempt))
                            .collect(),
                    )
                })
            }
            Op::Claim {
                stage,
                owner,
                limit,
                fair,
            } => {
                let (stage, owner) = (&self.stages[*stage], self.owners[*owner]);
                let claimed = if *fair {
                    store
                        .claim_due_fair(stage, owner, now, lease, *limit, &BTreeMap::new())
                        .await
                } else {
                    store.claim_due(stage, owner, now, lease, *limit).await
                };
                answer(claimed, |c| {
                    let mut c: Vec<_> = c
                        .into_iter()
                        .map(|c| (c.key.workflow_id, c.key.stage, c.key.attempt))
                        .collect();
                    c.sort();
                    Answer::Claimed(c)
                })
            }
            Op::Record { key, owner } => match self.key(*key, 0) {
                Some(k) => answer(
                    store
                        .mark_running(&[k], self.owners[*owner], now, later(60))
                        .await,
                    Answer::Count,
                ),
                None => Answer::Nothing,
            },
            Op::Release { key, owner } => match self.key(*key, 0) {
                Some(k) => answer(
                    store.release(&[k], self.owners[*owner], later(1)).await,
                    Answer::Count,
                ),
                None => Answer::Nothing,
            },
            Op::Complete { key, skew } => match self.key(*key, *skew) {
                Some(k) => answer(
                    store
                        .complete_stage(&k, Some(serde_json::json!("ok")), now)
                        .await,
                    Answer::Transition,
                ),
                None => Answer::Nothing,
            },
            Op::Fail { key, skew, retry } => match self.key(*key, *skew) {
                Some(k) => answer(
                    store
                        .fail_stage(&k, None, retry.then(|| later(10)), now)
                        .await,
                    Answer::Transition,
                ),
                None => Answer::Nothing,
            },
            Op::TimeOut { key, retry } => match self.key(*key, 0) {
                Some(k) => answer(
                    store
                        .time_out(
                            &k,
                            Some(serde_json::json!("timed out")),
                            retry.then(|| later(10)),
                            now,
                        )
                        .await,
                    Answer::Transition,
                ),
                None => Answer::Nothing,
            },
            Op::Cancel(i) | Op::Pause(i) | Op::Resume(i) | Op::Retry(i) => {
                let Some(id) = self.workflow(*i) else {
                    return Answer::Nothing;
                };
                let r = match op {
                    Op::Cancel(_) => store.cancel(id, now).await,
                    Op::Pause(_) => store.pause(id, now).await,
                    Op::Resume(_) => store.resume(id, now).await,
                    _ => store.retry(id, now).await,
                };
                answer(r, |v| Answer::View(Box::new(v)))
            }
            Op::Advance(_) => Answer::Nothing,
        }
    }

    /// What a store shows of this case: its workflows, in-flight counts and time-outs.
    async fn observe(
        &self,
        store: &dyn WorkflowRepository,
    ) -> (Vec<WorkflowView>, Vec<(String, u64)>, Vec<StageKey>) {
        let mut views = Vec::new();
        for id in &self.workflows {
            views.push(store.get(*id).await.expect("get"));
        }
        let mut counts: Vec<(String, u64)> = store
            .in_flight_counts(self.now)
            .await
            .expect("in-flight counts")
            .into_iter()
            .filter(|(s, _)| self.stages.contains(s))
            .collect();
        counts.sort();
        let late = store
            .timed_out(self.now, 10_000)
            .await
            .expect("timed out")
            .into_iter()
            .filter(|k| self.workflows.contains(&k.workflow_id))
            .collect();
        (views, counts, late)
    }
}

/// Every stage whose status differs between `before` and `after` moved as the table
/// allows.
fn check_table(before: &[WorkflowView], after: &[WorkflowView], op: &Op) {
    let old: HashMap<(Uuid, &str), model8::StageStatus> = before
        .iter()
        .flat_map(|w| {
            w.stages
                .iter()
                .map(move |s| ((w.id, s.name.as_str()), s.status))
        })
        .collect();
    for w in after {
        for s in &w.stages {
            if let Some(from) = old.get(&(w.id, s.name.as_str()))
                && *from != s.status
            {
                assert!(
                    transitions::allowed(*from, s.status),
                    "{op:?} moved stage {} of {} from {from} to {}, which no event of the table does",
                    s.name,
                    w.id,
                    s.status
                );
            }
        }
    }
}

async fn run(pg: &PgStore, n: u64, ops: &[Op]) {
    let memory = MemoryStore::new();
    let mut case = Case::new(n);
    let mut seen = case.observe(&memory).await.0;
    for op in ops {
        if let Op::Advance(s) = op {
            case.now += TimeDelta::seconds(*s);
        }
        let batch: Vec<NewWorkflow> = match op {
            Op::Create { n, .. } => (0..*n)
                .map(|i| NewWorkflow {
                    id: Uuid::new_v4(),
                    domains: vec![DomainRef {
                        id: Uuid::new_v4(),
                        name: format!("d{}.example.com", case.workflows.len() + i),
                        companyname: "acme".into(),
                    }],
                    stages: case.plans(),
                })
                .collect(),
            _ => Vec::new(),
        };
        let m = case.apply(&memory, op, &batch).await;
        let p = case.apply(pg, op, &batch).await;
        assert_eq!(m, p, "memory and PostgreSQL answered {op:?} differently");
        case.workflows.extend(batch.iter().map(|w| w.id));
        if let Answer::Claimed(c) = &m {
            case.keys
                .extend(c.iter().map(|(id, stage, attempt)| StageKey {
                    workflow_id: *id,
                    stage: stage.clone(),
                    attempt: *attempt,
                }));
        }
        let mo = case.observe(&memory).await;
        let po = case.observe(pg).await;
        assert_eq!(mo, po, "memory and PostgreSQL differ after {op:?}");
        check_table(&seen, &mo.0, op);
        seen = mo.0;
    }
    // Leave nothing active for the next cases.
    for id in &case.workflows {
        let _ = pg.cancel(*id, case.now).await;
    }
}

#[test]
fn memory_and_postgres_follow_the_same_stage_state_machine() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (db, pg) = rt.block_on(async {
        let db = support::TestDb::create().await;
        let pg = PgStore::connect(&db.settings()).await.expect("connect");
        pg.migrate().await.expect("migrate");
        (db, pg)
    });
    let cases = std::sync::atomic::AtomicU64::new(0);
    let config = ProptestConfig {
        cases: 48,
        failure_persistence: None,
        max_shrink_iters: 256,
        ..ProptestConfig::default()
    };
    proptest!(config, |(ops in proptest::collection::vec(op(), 1..40))| {
        let n = cases.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        rt.block_on(run(&pg, n, &ops));
    });
    drop(pg);
    drop(db);
}
