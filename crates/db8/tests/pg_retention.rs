//! Retention on the real PostgreSQL: pruning racing the results that finish the same
//! workflows (and their duplicates), beside active workflows that must never go.

mod support;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use db8::{NewWorkflow, PgStore, StageKey, StagePlan, Transition, WorkflowRepository};
use model8::DomainRef;
use support::{TestDb, value};
use uuid::Uuid;

fn t0() -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(1_900_000_000, 0).unwrap()
}

fn one_stage_wf(i: usize) -> NewWorkflow {
    NewWorkflow {
        id: Uuid::new_v4(),
        domains: vec![DomainRef {
            id: Uuid::new_v4(),
            name: format!("r{i}.example"),
            companyname: "ACME".into(),
        }],
        stages: vec![StagePlan {
            name: "a".into(),
            depends_on: vec![],
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_races_the_results_that_finish_the_same_workflows() {
    let db = TestDb::create().await;
    let store = Arc::new(PgStore::connect(&db.settings()).await.unwrap());
    store.migrate().await.unwrap();

    // 300 workflows running their only stage; 50 more that stay active.
    let finishing: Vec<NewWorkflow> = (0..300).map(one_stage_wf).collect();
    let staying: Vec<NewWorkflow> = (300..350).map(one_stage_wf).collect();
    store.create_workflows(&finishing, t0()).await.unwrap();
    store.create_workflows(&staying, t0()).await.unwrap();
    let owner = Uuid::new_v4();
    let claimed = store
        .claim_due("a", owner, t0(), Duration::from_secs(60), 1_000)
        .await
        .unwrap();
    let keys: Vec<StageKey> = claimed.into_iter().map(|c| c.key).collect();
    assert_eq!(keys.len(), 350);
    store
        .mark_running(&keys, owner, t0(), t0() + TimeDelta::hours(1))
        .await
        .unwrap();
    let finishing_ids: std::collections::HashSet<Uuid> = finishing.iter().map(|w| w.id).collect();
    let results: Vec<StageKey> = keys
        .iter()
        .filter(|k| finishing_ids.contains(&k.workflow_id))
        .cloned()
        .collect();

    // Results (each sent twice, as a redelivery would) against a pruner that deletes
    // whatever finished, in batches of 7, as fast as it can.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pruner = {
        let (store, done) = (store.clone(), done.clone());
        tokio::spawn(async move {
            let mut pruned = 0;
            loop {
                let last = done.load(std::sync::atomic::Ordering::SeqCst);
                pruned += store
                    .prune_finished(t0() + TimeDelta::hours(2), 7)
                    .await
                    .unwrap();
                if last {
                    break pruned;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let mut completed = 0;
    for (i, k) in results.iter().enumerate() {
        let now = t0() + TimeDelta::seconds(1 + i as i64);
        match store.complete_stage(k, None, now).await.unwrap() {
            Transition::StageCompleted {
                workflow_completed: true,
            } => completed += 1,
            other => panic!("first result of {k:?}: {other:?}"),
        }
        // The duplicate finds the workflow finished, or already gone: stale either
        // way, never an error.
        assert_eq!(
            store.complete_stage(k, None, now).await.unwrap(),
            Transition::Stale
        );
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut pruned = pruner.await.unwrap();
    pruned += store
        .prune_finished(t0() + TimeDelta::hours(2), 1_000)
        .await
        .unwrap();
    assert_eq!((completed, pruned), (300, 300));

    // Only the active workflows are left, with all their rows; the finished ones left
    // nothing behind but their domains' last end.
    let admin = db.admin().await;
    let count = |table: &'static str| {
        let admin = &admin;
        async move { value::<i64>(admin, &format!("SELECT count(*) FROM {table}"), &[]).await }
    };
    assert_eq!(count("orchestratorm8_workflow").await, 50);
    assert_eq!(count("orchestratorm8_stage_run").await, 50);
    assert_eq!(count("orchestratorm8_workflow_domain").await, 50);
    assert_eq!(count("orchestratorm8_domain_last_ended").await, 300);
    for w in &staying {
        assert_eq!(
            store.get(w.id).await.unwrap().status,
            model8::WorkflowStatus::Running
        );
    }
    assert_eq!(
        store.last_ended_at().await.unwrap(),
        Some(t0() + TimeDelta::seconds(300))
    );
}
