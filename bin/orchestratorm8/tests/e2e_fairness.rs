//! End-to-end: `Workflow.fairness: company` with the real binary, PostgreSQL and
//! RabbitMQ, tried as a new user would: stage `a` limited to 2 jobs in flight, 20
//! domains of one company, then 3 of another; the small company's jobs interleave with
//! the big one's backlog instead of waiting for its end.

mod common;
mod e2e_support;

use std::time::Duration;

use common::eventually;
use e2e_support::{Env, managed, stage};

const LIMIT: Duration = Duration::from_secs(120);

fn insert(env: &Env, company: &str, n: usize) {
    env.psql(&format!(
        "INSERT INTO cptm8domain (id, name, companyname, enabled) \
         SELECT gen_random_uuid(), 'd' || i || '.{}.example.com', '{company}', true \
         FROM generate_series(1, {n}) AS i",
        company.to_lowercase()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_company_interleaves_with_a_big_ones_backlog() {
    let env = Env::new();
    let stages = stage("a", &[], "30s", 3)
        + "      max_in_flight: 2\n"
        + &stage("b", &["a"], "30s", 3)
        + &stage("c", &["b"], "30s", 3);
    let config = env.config(
        &[("a", "{}"), ("b", "{}"), ("c", "{}")],
        &(managed(&stages) + "  fairness: company\n"),
    );
    let run = env
        .start_pipeline(&config, "svc", Duration::from_millis(150))
        .await;
    let (mut svc, seen) = (run.svc, &run.seen);
    insert(&env, "BIG", 20);
    eventually("the big company's 20 workflows", LIMIT, async || {
        svc.workflows().await.len() == 20
    })
    .await;
    insert(&env, "SMALL", 3);
    eventually("23 workflows completed", LIMIT, async || {
        let wfs = svc.workflows().await;
        wfs.len() == 23 && wfs.iter().all(|w| w["status"] == "completed")
    })
    .await;

    let order: Vec<String> = seen[0]
        .lock()
        .unwrap()
        .iter()
        .map(|j| j.domains[0].companyname.clone())
        .collect();
    assert_eq!(order.len(), 23, "{order:?}");
    let first = order.iter().position(|c| c == "SMALL").unwrap();
    let last = order.iter().rposition(|c| c == "SMALL").unwrap();
    // Once the small company's work is there, it takes its turn at once: its three
    // jobs within the next six, and the big company's backlog continues after them.
    assert!(last - first < 6, "{order:?}");
    assert!(
        last < order.len() - 3,
        "not after the whole backlog: {order:?}"
    );
    let (code, _) = svc.terminate();
    assert_eq!(code, Some(0), "{}", svc.logs());
}
