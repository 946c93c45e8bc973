//! `Workflow.fairness: company` in the engine (in-memory store, test broker, manual
//! clock): the case, one stage limited to 2 jobs in flight, 60 domains of one
//! company then 3 of another.

use db8::DomainRepository;
use model8::{PostDomain8, StageJob, StageOutcome};

use crate::testkit::{Harness, chain};

async fn add(h: &Harness, company: &str, n: usize) {
    for i in 0..n {
        h.store
            .insert(&PostDomain8 {
                name: format!("d{i}.{}.example", company.to_lowercase()),
                companyname: company.into(),
                enabled: true,
            })
            .await
            .unwrap();
    }
}

/// Runs stage `a` to the end, a worker completing every job as soon as it sees it;
/// the companies of the jobs in publishing order.
async fn publishing_order(h: &Harness, total: usize) -> Vec<String> {
    let mut order = Vec::new();
    let mut rounds = 0;
    while order.len() < total {
        rounds += 1;
        assert!(rounds < 10 * total, "drains");
        h.engine.dispatch().await.unwrap();
        let jobs: Vec<StageJob> = h.take_jobs("a");
        assert!(jobs.len() <= 2, "max_in_flight holds");
        for j in &jobs {
            order.push(j.domains[0].companyname.clone());
            h.report(j, StageOutcome::Completed).await;
        }
    }
    order
}

#[tokio::test]
async fn a_small_company_is_not_stuck_behind_a_big_one() {
    let mut s = chain();
    s.workflow.stages[0].max_in_flight = 2;
    s.workflow.fairness = config8::Fairness::Company;
    let h = Harness::new(s).await;
    add(&h, "BIG", 60).await;
    assert_eq!(h.engine.start_workflows().await.unwrap(), 60);
    // The big company's backlog is there first.
    h.advance(std::time::Duration::from_secs(1));
    add(&h, "SMALL", 3).await;
    assert_eq!(h.engine.start_workflows().await.unwrap(), 3);

    let order = publishing_order(&h, 63).await;
    let last_small = order.iter().rposition(|c| c == "SMALL").unwrap();
    // In turn: the small company's three jobs go within the first six.
    assert!(
        last_small < 6,
        "small company's last job ran {}th: {order:?}",
        last_small + 1
    );
}

#[tokio::test]
async fn weights_share_the_slots_in_proportion() {
    let mut s = chain();
    s.workflow.stages[0].max_in_flight = 4;
    s.workflow.fairness = config8::Fairness::Company;
    s.workflow.company_weights.insert("BIG".into(), 3);
    let h = Harness::new(s).await;
    add(&h, "BIG", 20).await;
    add(&h, "SMALL", 20).await;
    h.engine.start_workflows().await.unwrap();
    h.engine.dispatch().await.unwrap();
    let jobs = h.take_jobs("a");
    let big = jobs
        .iter()
        .filter(|j| j.domains[0].companyname == "BIG")
        .count();
    assert_eq!((jobs.len(), big), (4, 3), "three slots of four for BIG");
}

#[tokio::test]
async fn fairness_applies_live_and_is_reported_live() {
    let mut s = chain();
    s.workflow.stages[0].max_in_flight = 2;
    let h = Harness::new(s).await;
    add(&h, "BIG", 60).await;
    assert_eq!(h.engine.start_workflows().await.unwrap(), 60);
    h.advance(std::time::Duration::from_secs(1));
    add(&h, "SMALL", 3).await;
    assert_eq!(h.engine.start_workflows().await.unwrap(), 3);
    // Oldest first (no fairness) would run the small company's jobs last; switched on
    // without a restart, they go within the first six.
    let r = h.update(|s| s.workflow.fairness = config8::Fairness::Company);
    assert_eq!(r.live, ["Workflow.fairness"]);
    assert!(!r.needs_restart(), "{r:?}");
    let order = publishing_order(&h, 63).await;
    let last_small = order.iter().rposition(|c| c == "SMALL").unwrap();
    assert!(last_small < 6, "{order:?}");
}

#[tokio::test]
async fn company_weights_apply_live_and_are_reported_live() {
    let mut s = chain();
    s.workflow.stages[0].max_in_flight = 4;
    s.workflow.fairness = config8::Fairness::Company;
    let h = Harness::new(s).await;
    add(&h, "BIG", 20).await;
    add(&h, "SMALL", 20).await;
    let r = h.update(|s| {
        s.workflow.company_weights.insert("BIG".into(), 3);
    });
    assert_eq!(r.live, ["Workflow.company_weights"]);
    assert!(!r.needs_restart(), "{r:?}");
    h.engine.start_workflows().await.unwrap();
    h.engine.dispatch().await.unwrap();
    let jobs = h.take_jobs("a");
    let big = jobs
        .iter()
        .filter(|j| j.domains[0].companyname == "BIG")
        .count();
    assert_eq!((jobs.len(), big), (4, 3), "the new weight applied");
}
