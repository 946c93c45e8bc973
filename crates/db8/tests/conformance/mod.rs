//! One behaviour suite for every implementation of the db8 traits.
//!
//! A test binary provides `async fn stores() -> Stores` and invokes
//! `conformance_suite!(stores)`, which expands to one `#[tokio::test]` per case.

#![allow(dead_code)]

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use db8::{
    ChangeFeed, DbError, DbHealth, DomainChange, DomainRepository, InitialClaim, LeaderLock,
    LeaderTerm, NewWorkflow, OutboxEvent, OutboxRepository, OutboxRow, ReplicaRegistry,
    RingApplied, RingEvent, RingMessage, RingRepository, RingStage, StageKey, StagePlan,
    Transition, WorkflowFilter, WorkflowRepository,
};
use futures::StreamExt;
use model8::{DomainRef, GoTime, PostDomain8, StageStatus, WorkflowKind, WorkflowStatus};
use uuid::Uuid;

/// The implementation under test, as the layers above see it.
pub struct Stores {
    pub domains: Arc<dyn DomainRepository>,
    pub workflows: Arc<dyn WorkflowRepository>,
    pub ring: Arc<dyn RingRepository>,
    pub replicas: Arc<dyn ReplicaRegistry>,
    /// The same store's outbox.
    pub outbox: Arc<dyn OutboxRepository>,
    pub feed: Arc<dyn ChangeFeed>,
    pub health: Arc<dyn DbHealth>,
    /// Two contenders for the same leader lock.
    pub leader_a: Arc<dyn LeaderLock>,
    pub leader_b: Arc<dyn LeaderLock>,
    /// The terms `leader_a` and `leader_b` hold.
    pub term_a: LeaderTerm,
    pub term_b: LeaderTerm,
    /// The same stores with their leader-only writes fenced by a term.
    pub fence: Box<dyn Fn(LeaderTerm) -> Fenced + Send + Sync>,
    /// Dropped last: releases whatever the fixture holds (a test database...).
    pub guard: Box<dyn Any + Send>,
}

/// Stores fenced by one leader term (`PgStore::fenced`, `MemoryStore::fenced`).
pub struct Fenced {
    pub workflows: Arc<dyn WorkflowRepository>,
    pub ring: Arc<dyn RingRepository>,
}

/// Expands to one test per conformance case, each on fresh stores from `$make`.
#[macro_export]
macro_rules! conformance_suite {
    ($make:path) => {
        $crate::conformance_cases!(
            $make;
            domain_crud,
            domain_insert_validates_and_normalises,
            domain_name_conflicts,
            domain_concurrent_inserts_of_one_name,
            domain_stream_and_exists_enabled,
            change_feed_reports_domain_writes,
            workflow_create_and_view,
            workflow_create_skips_busy_domains_and_known_ids,
            workflow_create_rejects_invalid_batches,
            workflow_create_claimed,
            workflow_pipeline_to_completion,
            workflow_join_waits_for_every_dependency,
            workflow_claim_filters,
            workflow_claim_lease_and_owner,
            workflow_claim_fair_takes_companies_in_turn,
            workflow_claim_fair_follows_weights,
            workflow_release,
            workflow_results_of_dispatched_attempts,
            workflow_retry_then_fail,
            workflow_timed_out,
            workflow_cancel_pause_resume,
            workflow_stage_times_and_detail,
            workflow_list_filter_and_limit,
            workflow_list_filters_by_domain_company_kind,
            workflow_list_pages_with_a_cursor,
            workflow_retry,
            workflow_changed_since,
            workflow_idle_domains,
            workflow_prune_finished_keeps_the_cool_down,
            workflow_active_and_last_ended,
            workflow_in_flight_counts,
            ring_observed_cycles,
            ring_heal_gives_up_on_a_stalled_stage,
            ring_keys_pruned_with_the_retention,
            outbox_rows_come_with_their_transitions,
            outbox_claim_release_delete,
            outbox_concurrent_claims_do_not_overlap,
            leader_lock_contention,
            replicas_listed_while_alive,
            leader_term_fences_leader_only_writes,
            health_ping,
        );
    };
}

/// Helper of [`conformance_suite`].
#[macro_export]
macro_rules! conformance_cases {
    ($make:path; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let stores = $make().await;
                conformance::$case(&stores).await;
            }
        )+
    };
}

// ---------------------------------------------------------------- helpers

/// A fixed test clock with sub-microsecond digits (which stores truncate).
pub fn t0() -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(1_900_000_000, 123_456_789).unwrap()
}

/// `t0` truncated as the stores keep it.
pub fn t0_stored() -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(1_900_000_000, 123_456_000).unwrap()
}

pub fn secs(n: i64) -> TimeDelta {
    TimeDelta::seconds(n)
}

pub fn post(name: &str, company: &str) -> PostDomain8 {
    PostDomain8 {
        name: name.into(),
        companyname: company.into(),
        enabled: true,
    }
}

pub fn dref(name: &str) -> DomainRef {
    DomainRef {
        id: Uuid::new_v4(),
        name: name.into(),
        companyname: "ACME".into(),
    }
}

pub fn stage(name: &str, deps: &[&str]) -> StagePlan {
    StagePlan {
        name: name.into(),
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
    }
}

/// Stages `a`, then `b` and `c` both after `a`.
pub fn diamond() -> Vec<StagePlan> {
    vec![stage("a", &[]), stage("b", &["a"]), stage("c", &["a"])]
}

pub fn wf(domains: Vec<DomainRef>, stages: Vec<StagePlan>) -> NewWorkflow {
    NewWorkflow {
        id: Uuid::new_v4(),
        domains,
        stages,
    }
}

pub fn key(id: Uuid, stage: &str, attempt: u32) -> StageKey {
    StageKey {
        workflow_id: id,
        stage: stage.into(),
        attempt,
    }
}

/// A workflow of the diamond plan for one new domain, `name`.
pub fn diamond_wf(name: &str) -> NewWorkflow {
    wf(vec![dref(name)], diamond())
}

/// `n` workflows of the diamond plan, of new domains `<prefix>0.example` to
/// `<prefix><n-1>.example`.
pub fn diamond_wfs(prefix: &str, n: usize) -> Vec<NewWorkflow> {
    (0..n)
        .map(|i| diamond_wf(&format!("{prefix}{i}.example")))
        .collect()
}

const LEASE: Duration = Duration::from_secs(60);

/// Creates `xs` one second apart from `t0`: due in that order.
async fn create_a_second_apart(s: &Stores, xs: &[NewWorkflow]) {
    for (i, x) in xs.iter().enumerate() {
        s.workflows
            .create_workflows(std::slice::from_ref(x), t0() + secs(i as i64))
            .await
            .unwrap();
    }
}

/// Claims (at most `limit`) due stage `a` jobs for `owner` at `now`; the ids of their
/// workflows.
async fn claimed_ids(s: &Stores, owner: Uuid, now: DateTime<Utc>, limit: usize) -> Vec<Uuid> {
    s.workflows
        .claim_due("a", owner, now, LEASE, limit)
        .await
        .unwrap()
        .iter()
        .map(|c| c.key.workflow_id)
        .collect()
}

/// Creates workflow `x` at `t0`.
async fn create(s: &Stores, x: &NewWorkflow) {
    s.workflows
        .create_workflows(std::slice::from_ref(x), t0())
        .await
        .unwrap();
}

/// The stages of workflow `id` as `view` maps them.
async fn stages_as<T>(s: &Stores, id: Uuid, view: impl Fn(model8::StageView) -> T) -> Vec<T> {
    s.workflows
        .get(id)
        .await
        .unwrap()
        .stages
        .into_iter()
        .map(view)
        .collect()
}

async fn stage_status(s: &Stores, id: Uuid) -> Vec<(String, StageStatus, u32)> {
    stages_as(s, id, |v| (v.name, v.status, v.attempt)).await
}

async fn wf_status(s: &Stores, id: Uuid) -> WorkflowStatus {
    s.workflows.get(id).await.unwrap().status
}

/// Claims and marks running the first attempt of `stage` for workflow `id`.
async fn start(s: &Stores, id: Uuid, stage: &str, now: DateTime<Utc>) -> StageKey {
    let owner = Uuid::new_v4();
    let claimed = s
        .workflows
        .claim_due(stage, owner, now, LEASE, 10_000)
        .await
        .unwrap();
    let c = claimed
        .into_iter()
        .find(|c| c.key.workflow_id == id)
        .unwrap_or_else(|| panic!("stage {stage} of {id} not due at {now}"));
    let n = s
        .workflows
        .mark_running(std::slice::from_ref(&c.key), owner, now, now + secs(3600))
        .await
        .unwrap();
    assert_eq!(n, 1);
    c.key
}

// ---------------------------------------------------------------- domains

pub async fn domain_crud(s: &Stores) {
    let d = &s.domains;
    assert!(d.list().await.unwrap().is_empty());
    let b = d.insert(&post("b.example", "B")).await.unwrap();
    let a = d.insert(&post("a.example", "A")).await.unwrap();
    let mut disabled = post("c.example", "C");
    disabled.enabled = false;
    let c = d.insert(&disabled).await.unwrap();
    assert!(!c.enabled && a.enabled);
    assert_eq!(d.get(a.id).await.unwrap(), a);
    let names: Vec<_> = d
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|x| x.name)
        .collect();
    assert_eq!(names, ["a.example", "b.example", "c.example"]);

    let b2 = d.update(b.id, &post("bb.example", "B2")).await.unwrap();
    assert_eq!(
        (b2.id, b2.name.as_str(), b2.companyname.as_str()),
        (b.id, "bb.example", "B2")
    );
    assert_eq!(d.get(b.id).await.unwrap(), b2);

    assert!(!d.set_enabled(a.id, false).await.unwrap().enabled);
    assert!(!d.get(a.id).await.unwrap().enabled);
    assert!(d.set_enabled(a.id, true).await.unwrap().enabled);

    d.delete(c.id).await.unwrap();
    assert_eq!(d.list().await.unwrap().len(), 2);

    let missing = Uuid::new_v4();
    assert!(matches!(d.get(missing).await, Err(DbError::NotFound(_))));
    assert!(matches!(d.get(c.id).await, Err(DbError::NotFound(_))));
    assert!(matches!(
        d.update(missing, &post("x.example", "X")).await,
        Err(DbError::NotFound(_))
    ));
    assert!(matches!(
        d.set_enabled(missing, true).await,
        Err(DbError::NotFound(_))
    ));
    assert!(matches!(d.delete(missing).await, Err(DbError::NotFound(_))));
    assert!(matches!(d.delete(c.id).await, Err(DbError::NotFound(_))));
}

pub async fn domain_insert_validates_and_normalises(s: &Stores) {
    let d = &s.domains;
    let x = d.insert(&post(" Example.COM. ", " ACME ")).await.unwrap();
    assert_eq!(
        (x.name.as_str(), x.companyname.as_str()),
        ("example.com", "ACME")
    );
    let idn = d.insert(&post("bücher.example", "B")).await.unwrap();
    assert_eq!(idn.name, "xn--bcher-kva.example");
    for bad in [
        post("exa_mple.com", "A"),
        post("10.0.0.1", "A"),
        post("ok.example", ""),
    ] {
        assert!(
            matches!(d.insert(&bad).await, Err(DbError::Invalid(_))),
            "{bad:?}"
        );
    }
    assert!(matches!(
        d.update(x.id, &post("-x.com", "A")).await,
        Err(DbError::Invalid(_))
    ));
    assert_eq!(d.list().await.unwrap().len(), 2);
    assert_eq!(d.get(x.id).await.unwrap().name, "example.com");
}

pub async fn domain_name_conflicts(s: &Stores) {
    let d = &s.domains;
    let a = d.insert(&post("a.example", "A")).await.unwrap();
    let b = d.insert(&post("b.example", "B")).await.unwrap();
    // The same name, whatever its spelling.
    assert!(matches!(
        d.insert(&post("A.Example.", "Z")).await,
        Err(DbError::Conflict(_))
    ));
    assert!(matches!(
        d.update(b.id, &post("a.example", "B")).await,
        Err(DbError::Conflict(_))
    ));
    assert_eq!(d.get(b.id).await.unwrap(), b);
    // Keeping one's own name is no conflict.
    let a2 = d.update(a.id, &post("a.example", "A2")).await.unwrap();
    assert_eq!(a2.companyname, "A2");
    assert_eq!(d.list().await.unwrap().len(), 2);
}

pub async fn domain_concurrent_inserts_of_one_name(s: &Stores) {
    let mut tasks = Vec::new();
    for i in 0..8 {
        let d = Arc::clone(&s.domains);
        tasks.push(tokio::spawn(async move {
            d.insert(&post("race.example", &format!("C{i}"))).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(DbError::Conflict(_)) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(s.domains.list().await.unwrap().len(), 1);
}

pub async fn domain_stream_and_exists_enabled(s: &Stores) {
    let d = &s.domains;
    assert!(!d.exists_enabled().await.unwrap());
    assert_eq!(d.stream_enabled().await.unwrap().count().await, 0);
    let mut want = HashSet::new();
    for i in 0..250 {
        let mut p = post(&format!("d{i}.example"), "ACME");
        p.enabled = i % 5 != 0;
        let row = d.insert(&p).await.unwrap();
        if row.enabled {
            want.insert(row);
        }
    }
    let got: Vec<_> = d.stream_enabled().await.unwrap().collect().await;
    let got: HashSet<_> = got.into_iter().map(Result::unwrap).collect();
    assert_eq!(got.len(), 200);
    assert_eq!(got, want);
    assert!(d.exists_enabled().await.unwrap());
    for row in want {
        d.set_enabled(row.id, false).await.unwrap();
    }
    assert!(!d.exists_enabled().await.unwrap());
}

/// Waits (bounded) for the next event of `feed`.
pub async fn next_event(
    feed: &mut futures::stream::BoxStream<'static, DomainChange>,
    within: Duration,
) -> Option<DomainChange> {
    tokio::time::timeout(within, feed.next())
        .await
        .ok()
        .flatten()
}

pub async fn change_feed_reports_domain_writes(s: &Stores) {
    let mut feed = s.feed.subscribe().await.unwrap();
    let a = s.domains.insert(&post("feed.example", "A")).await.unwrap();
    assert_eq!(
        next_event(&mut feed, Duration::from_secs(20)).await,
        Some(DomainChange::Changed)
    );
    s.domains.set_enabled(a.id, false).await.unwrap();
    // Coalescing may merge events, but a later write is always reported after it.
    assert_eq!(
        next_event(&mut feed, Duration::from_secs(20)).await,
        Some(DomainChange::Changed)
    );
    s.domains.delete(a.id).await.unwrap();
    assert_eq!(
        next_event(&mut feed, Duration::from_secs(20)).await,
        Some(DomainChange::Changed)
    );
}

// ---------------------------------------------------------------- workflows

pub async fn workflow_create_and_view(s: &Stores) {
    let w = &s.workflows;
    let one = diamond_wf("a.example");
    let two = wf(
        vec![dref("b.example"), dref("c.example")],
        vec![stage("x", &[])],
    );
    let created = w
        .create_workflows(std::slice::from_ref(&one), t0())
        .await
        .unwrap();
    assert_eq!(created, [one.id]);
    let created = w
        .create_workflows(std::slice::from_ref(&two), t0() + secs(1))
        .await
        .unwrap();
    assert_eq!(created, [two.id]);

    let v = w.get(one.id).await.unwrap();
    assert_eq!(v.id, one.id);
    assert_eq!(v.kind, WorkflowKind::Managed);
    assert_eq!(v.status, WorkflowStatus::Pending);
    assert!(
        v.stages
            .iter()
            .all(|st| st.started_at.is_none() && st.finished_at.is_none() && st.detail.is_none()),
        "{v:?}"
    );
    assert_eq!(v.created_at, GoTime::from_utc(t0_stored()));
    assert_eq!(v.updated_at, GoTime::from_utc(t0_stored()));
    assert_eq!(v.domains, ["a.example"]);
    assert_eq!(
        stage_status(s, one.id).await,
        [
            ("a".into(), StageStatus::Pending, 0),
            ("b".into(), StageStatus::Waiting, 0),
            ("c".into(), StageStatus::Waiting, 0)
        ]
    );
    assert_eq!(
        w.get(two.id).await.unwrap().domains,
        ["b.example", "c.example"]
    );
    let all = w.list(&WorkflowFilter::default()).await.unwrap();
    assert_eq!(
        all.iter().map(|v| v.id).collect::<Vec<_>>(),
        [two.id, one.id]
    );
    assert_eq!(all[1], v);
    assert!(matches!(
        w.get(Uuid::new_v4()).await,
        Err(DbError::NotFound(_))
    ));
    assert!(w.create_workflows(&[], t0()).await.unwrap().is_empty());
}

pub async fn workflow_create_skips_busy_domains_and_known_ids(s: &Stores) {
    let w = &s.workflows;
    let d = dref("a.example");
    let first = wf(vec![d.clone()], diamond());
    let same_domain = wf(vec![d.clone()], diamond());
    let other = diamond_wf("b.example");
    // Within one batch the first workflow of a domain wins.
    let created = w
        .create_workflows(&[first.clone(), same_domain.clone(), other.clone()], t0())
        .await
        .unwrap();
    assert_eq!(created, [first.id, other.id]);
    // Across batches too, and a known id is skipped.
    let again = wf(vec![d.clone()], diamond());
    let created = w
        .create_workflows(&[again.clone(), first.clone()], t0())
        .await
        .unwrap();
    assert!(created.is_empty());
    // A multi-domain workflow does not block nor is blocked.
    let cycle = wf(vec![d.clone(), dref("c.example")], diamond());
    assert_eq!(
        w.create_workflows(std::slice::from_ref(&cycle), t0())
            .await
            .unwrap(),
        [cycle.id]
    );
    assert!(matches!(
        w.get(same_domain.id).await,
        Err(DbError::NotFound(_))
    ));
    // Once the domain's workflow is over, a new one may start.
    w.cancel(first.id, t0() + secs(1)).await.unwrap();
    assert_eq!(
        w.create_workflows(std::slice::from_ref(&again), t0() + secs(2))
            .await
            .unwrap(),
        [again.id]
    );
    assert_eq!(w.list(&WorkflowFilter::default()).await.unwrap().len(), 4);
}

pub async fn workflow_create_rejects_invalid_batches(s: &Stores) {
    let w = &s.workflows;
    let good = diamond_wf("a.example");
    let dup = good.clone();
    let no_stage = wf(vec![dref("b.example")], vec![]);
    let no_domain = wf(vec![], diamond());
    let unknown_dep = wf(vec![dref("c.example")], vec![stage("a", &["zz"])]);
    let twice = wf(
        vec![dref("d.example")],
        vec![stage("a", &[]), stage("a", &[])],
    );
    for bad in [
        vec![good.clone(), dup],
        vec![good.clone(), no_stage],
        vec![good.clone(), no_domain],
        vec![good.clone(), unknown_dep],
        vec![good.clone(), twice],
    ] {
        assert!(matches!(
            w.create_workflows(&bad, t0()).await,
            Err(DbError::Invalid(_))
        ));
    }
    assert!(w.list(&WorkflowFilter::default()).await.unwrap().is_empty());
}

pub async fn workflow_create_claimed(s: &Stores) {
    let w = &s.workflows;
    let owner = Uuid::new_v4();
    // Two roots (a, r), b after a. Asked for a, b and an unknown stage: only the
    // roots it names (a) are claimed, b waits.
    let plan = vec![stage("a", &[]), stage("r", &[]), stage("b", &["a"])];
    let busy = dref("busy.example");
    let blocker = wf(vec![busy.clone()], plan.clone());
    create(s, &blocker).await;
    let x = wf(vec![dref("x.example")], plan.clone());
    let skipped = wf(vec![busy.clone()], plan.clone());
    let y = wf(vec![dref("y.example"), dref("z.example")], plan.clone());
    let claim = InitialClaim {
        owner,
        lease: LEASE,
        stages: vec!["a".into(), "b".into(), "nope".into()],
    };
    let created = w
        .create_claimed(&[x.clone(), skipped.clone(), y.clone()], t0(), &claim)
        .await
        .unwrap();
    assert_eq!(
        created.ids,
        [x.id, y.id],
        "the busy domain's one is skipped"
    );
    assert_eq!(
        created
            .claimed
            .iter()
            .map(|c| (c.key.clone(), c.domains.clone()))
            .collect::<Vec<_>>(),
        [
            (key(x.id, "a", 1), x.domains.clone()),
            (key(y.id, "a", 1), y.domains.clone()),
        ]
    );
    // Just as if claim_due had claimed them: dispatched at attempt 1, in flight, not
    // claimable by anyone until the lease ends; the unclaimed root r is due as usual.
    assert_eq!(
        stage_status(s, x.id).await,
        [
            ("a".into(), StageStatus::Dispatched, 1),
            ("r".into(), StageStatus::Pending, 0),
            ("b".into(), StageStatus::Waiting, 0)
        ]
    );
    assert_eq!(
        w.in_flight_counts(t0()).await.unwrap(),
        HashMap::from([("a".to_string(), 2)])
    );
    let other = Uuid::new_v4();
    let due_a = w.claim_due("a", other, t0(), LEASE, 10).await.unwrap();
    assert_eq!(
        due_a.iter().map(|c| c.key.workflow_id).collect::<Vec<_>>(),
        [blocker.id],
        "only the workflow created without a claim"
    );
    assert_eq!(
        w.claim_due("r", other, t0(), LEASE, 10)
            .await
            .unwrap()
            .len(),
        3
    );
    // Recorded like any claim: running for its owner only...
    assert_eq!(
        w.mark_running(&[key(x.id, "a", 1)], other, t0(), t0() + secs(60))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        w.mark_running(&[key(x.id, "a", 1)], owner, t0(), t0() + secs(60))
            .await
            .unwrap(),
        1
    );
    assert_eq!(wf_status(s, x.id).await, WorkflowStatus::Running);
    assert_eq!(
        stage_status(s, x.id).await[0],
        ("a".into(), StageStatus::Running, 1)
    );
    // ... or given back; and an expired one is claimed again with the same attempt.
    assert_eq!(
        w.release(&[key(y.id, "a", 1)], owner, t0() + secs(5))
            .await
            .unwrap(),
        1
    );
    let again = w
        .claim_due("a", other, t0() + secs(5), LEASE, 10)
        .await
        .unwrap();
    assert_eq!(again[0].key, key(y.id, "a", 1));
    let z = wf(vec![dref("w.example")], plan.clone());
    let created = w
        .create_claimed(std::slice::from_ref(&z), t0(), &claim)
        .await
        .unwrap();
    assert_eq!(created.claimed[0].key, key(z.id, "a", 1));
    assert!(
        w.claim_due("a", other, t0() + secs(59), LEASE, 10)
            .await
            .unwrap()
            .iter()
            .all(|c| c.key.workflow_id != z.id)
    );
    let expired = w
        .claim_due("a", other, t0() + secs(60), LEASE, 10)
        .await
        .unwrap();
    assert!(expired.iter().any(|c| c.key == key(z.id, "a", 1)));
    // Asking for no stage claims nothing; an invalid batch is refused whole.
    let plain = wf(vec![dref("v.example")], plan.clone());
    let none = InitialClaim {
        stages: vec![],
        ..claim.clone()
    };
    let created = w
        .create_claimed(std::slice::from_ref(&plain), t0(), &none)
        .await
        .unwrap();
    assert_eq!((created.ids, created.claimed), (vec![plain.id], vec![]));
    assert!(matches!(
        w.create_claimed(&[plain.clone(), plain.clone()], t0(), &claim)
            .await,
        Err(DbError::Invalid(_))
    ));
    assert_eq!(
        w.create_claimed(&[], t0(), &claim).await.unwrap(),
        Default::default()
    );
}

pub async fn workflow_pipeline_to_completion(s: &Stores) {
    let w = &s.workflows;
    let d = dref("a.example");
    let x = wf(vec![d.clone()], diamond());
    create(s, &x).await;
    assert!(
        w.claim_due("b", Uuid::new_v4(), t0(), LEASE, 10)
            .await
            .unwrap()
            .is_empty()
    );

    let owner = Uuid::new_v4();
    let claimed = w.claim_due("a", owner, t0(), LEASE, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].key, key(x.id, "a", 1));
    assert_eq!(claimed[0].domains, vec![d.clone()]);
    assert_eq!(wf_status(s, x.id).await, WorkflowStatus::Pending);

    let now = t0() + secs(1);
    let n = w
        .mark_running(&[key(x.id, "a", 1)], owner, now, now + secs(60))
        .await
        .unwrap();
    assert_eq!(n, 1);
    let v = w.get(x.id).await.unwrap();
    assert_eq!(v.status, WorkflowStatus::Running);
    assert_eq!(v.updated_at.to_utc(), t0_stored() + secs(1));
    assert_eq!(v.stages[0].status, StageStatus::Running);
    assert_eq!(v.stages[0].attempt, 1);
    // Marking again (a duplicate confirm) changes nothing.
    assert_eq!(
        w.mark_running(&[key(x.id, "a", 1)], owner, now, now)
            .await
            .unwrap(),
        0
    );

    // A result for the wrong attempt or stage is stale.
    let stale = [
        key(x.id, "a", 2),
        key(x.id, "b", 1),
        key(Uuid::new_v4(), "a", 1),
    ];
    for k in &stale {
        assert_eq!(
            w.complete_stage(k, None, now).await.unwrap(),
            Transition::Stale
        );
        assert_eq!(
            w.fail_stage(k, None, None, now).await.unwrap(),
            Transition::Stale
        );
    }
    let done = w
        .complete_stage(
            &key(x.id, "a", 1),
            Some(serde_json::json!({"found": 3})),
            now,
        )
        .await
        .unwrap();
    assert_eq!(
        done,
        Transition::StageCompleted {
            workflow_completed: false
        }
    );
    // The duplicate report is a no-op.
    assert_eq!(
        w.complete_stage(&key(x.id, "a", 1), None, now)
            .await
            .unwrap(),
        Transition::Stale
    );
    assert_eq!(
        stage_status(s, x.id).await,
        [
            ("a".into(), StageStatus::Completed, 1),
            ("b".into(), StageStatus::Pending, 0),
            ("c".into(), StageStatus::Pending, 0)
        ]
    );
    let kb = start(s, x.id, "b", now).await;
    let kc = start(s, x.id, "c", now).await;
    assert_eq!(
        w.complete_stage(&kb, None, now).await.unwrap(),
        Transition::StageCompleted {
            workflow_completed: false
        }
    );
    assert!(w.any_active().await.unwrap());
    let end = now + secs(5);
    assert_eq!(
        w.complete_stage(&kc, None, end).await.unwrap(),
        Transition::StageCompleted {
            workflow_completed: true
        }
    );
    let v = w.get(x.id).await.unwrap();
    assert_eq!(v.status, WorkflowStatus::Completed);
    assert_eq!(v.updated_at.to_utc(), t0_stored() + secs(6));
    assert!(
        v.stages
            .iter()
            .all(|s| s.status == StageStatus::Completed && s.attempt == 1)
    );
    assert!(!w.any_active().await.unwrap());
    assert_eq!(
        w.last_ended_at().await.unwrap(),
        Some(t0_stored() + secs(6))
    );
    assert_eq!(
        w.complete_stage(&kc, None, end).await.unwrap(),
        Transition::Stale
    );
    // The domain is free again.
    let next = wf(vec![d], diamond());
    assert_eq!(
        w.create_workflows(std::slice::from_ref(&next), end)
            .await
            .unwrap(),
        [next.id]
    );
}

pub async fn workflow_join_waits_for_every_dependency(s: &Stores) {
    // Two roots and a stage after both: due only once both completed, and the workflow
    // completes with it. A failed workflow's stages that never became due read as
    // cancelled.
    let w = &s.workflows;
    let plan = vec![stage("a", &[]), stage("b", &[]), stage("j", &["a", "b"])];
    let x = wf(vec![dref("a.example")], plan.clone());
    create(s, &x).await;
    let ka = start(s, x.id, "a", t0()).await;
    let kb = start(s, x.id, "b", t0()).await;
    assert_eq!(
        w.complete_stage(&ka, None, t0()).await.unwrap(),
        Transition::StageCompleted {
            workflow_completed: false
        }
    );
    assert_eq!(
        stage_status(s, x.id).await[2],
        ("j".into(), StageStatus::Waiting, 0)
    );
    assert!(
        w.claim_due("j", Uuid::new_v4(), t0(), LEASE, 10)
            .await
            .unwrap()
            .is_empty()
    );
    w.complete_stage(&kb, None, t0() + secs(1)).await.unwrap();
    assert_eq!(
        stage_status(s, x.id).await,
        [
            ("a".into(), StageStatus::Completed, 1),
            ("b".into(), StageStatus::Completed, 1),
            ("j".into(), StageStatus::Pending, 0)
        ]
    );
    let kj = start(s, x.id, "j", t0() + secs(1)).await;
    assert_eq!(
        w.complete_stage(&kj, None, t0() + secs(2)).await.unwrap(),
        Transition::StageCompleted {
            workflow_completed: true
        }
    );
    assert_eq!(wf_status(s, x.id).await, WorkflowStatus::Completed);
    // y: a fails for good while b is still pending.
    let y = wf(vec![dref("b.example")], plan);
    create(s, &y).await;
    let ya = start(s, y.id, "a", t0()).await;
    assert_eq!(
        w.fail_stage(&ya, None, None, t0() + secs(1)).await.unwrap(),
        Transition::WorkflowFailed
    );
    assert_eq!(
        stage_status(s, y.id).await,
        [
            ("a".into(), StageStatus::Failed, 1),
            ("b".into(), StageStatus::Cancelled, 0),
            ("j".into(), StageStatus::Cancelled, 0)
        ]
    );
}

pub async fn workflow_claim_filters(s: &Stores) {
    let w = &s.workflows;
    let xs = diamond_wfs("d", 5);
    // Created one second apart: due in that order.
    create_a_second_apart(s, &xs).await;
    let owner = Uuid::new_v4();
    // Not due yet for the later ones.
    assert_eq!(
        claimed_ids(s, owner, t0() + secs(1), 100).await,
        [xs[0].id, xs[1].id]
    );
    // The limit applies, oldest due first; live claims are not claimed again.
    assert_eq!(
        claimed_ids(s, owner, t0() + secs(10), 2).await,
        [xs[2].id, xs[3].id]
    );
    // A paused workflow is not claimed; a cancelled one neither.
    w.pause(xs[4].id, t0() + secs(10)).await.unwrap();
    assert!(
        w.claim_due("a", owner, t0() + secs(10), LEASE, 100)
            .await
            .unwrap()
            .is_empty()
    );
    w.resume(xs[4].id, t0() + secs(10)).await.unwrap();
    w.cancel(xs[0].id, t0() + secs(10)).await.unwrap();
    assert_eq!(
        claimed_ids(s, owner, t0() + secs(10), 100).await,
        [xs[4].id]
    );
    assert!(
        w.claim_due("a", owner, t0() + secs(10), LEASE, 0)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        w.claim_due("nope", owner, t0() + secs(10), LEASE, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn workflow_claim_lease_and_owner(s: &Stores) {
    let w = &s.workflows;
    let x = diamond_wf("a.example");
    create(s, &x).await;
    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    assert_eq!(
        w.claim_due("a", first, t0(), LEASE, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    let before_expiry = t0() + secs(59);
    assert!(
        w.claim_due("a", second, before_expiry, LEASE, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // The lease expired: the attempt is claimed again, with the same number.
    let expired = t0() + secs(60);
    let c = w.claim_due("a", second, expired, LEASE, 10).await.unwrap();
    assert_eq!(c[0].key, key(x.id, "a", 1));
    // Only the current owner may mark it running, and only for the claimed attempt.
    let k = key(x.id, "a", 1);
    assert_eq!(
        w.mark_running(std::slice::from_ref(&k), first, expired, expired)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        w.mark_running(&[key(x.id, "a", 2)], second, expired, expired)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        w.release(std::slice::from_ref(&k), first, expired)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        w.mark_running(&[k.clone(), k.clone()], second, expired, expired)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        stage_status(s, x.id).await[0],
        ("a".into(), StageStatus::Running, 1)
    );
}

pub async fn workflow_release(s: &Stores) {
    let w = &s.workflows;
    let x = diamond_wf("a.example");
    create(s, &x).await;
    let owner = Uuid::new_v4();
    w.claim_due("a", owner, t0(), LEASE, 10).await.unwrap();
    let later = t0() + secs(30);
    assert_eq!(
        w.release(&[key(x.id, "a", 1)], owner, later).await.unwrap(),
        1
    );
    assert_eq!(
        w.release(&[key(x.id, "a", 1)], owner, later).await.unwrap(),
        0
    );
    assert_eq!(
        stage_status(s, x.id).await[0],
        ("a".into(), StageStatus::Pending, 0)
    );
    // Not due before the new time, although the lease would not have expired yet.
    assert!(
        w.claim_due("a", owner, later - secs(1), LEASE, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let c = w.claim_due("a", owner, later, LEASE, 10).await.unwrap();
    assert_eq!(c[0].key, key(x.id, "a", 1));
    assert_eq!(wf_status(s, x.id).await, WorkflowStatus::Pending);
}

pub async fn workflow_results_of_dispatched_attempts(s: &Stores) {
    // A claimed attempt is dispatched at the number being published; a result of it
    // (a fast worker, before the publisher's record) applies at once, and the late
    // record or release then changes nothing.
    let w = &s.workflows;
    let xs = diamond_wfs("d", 3);
    w.create_workflows(&xs, t0()).await.unwrap();
    let owner = Uuid::new_v4();
    assert_eq!(claimed_ids(s, owner, t0(), 10).await.len(), 3);
    assert_eq!(
        stage_status(s, xs[0].id).await[0],
        ("a".into(), StageStatus::Dispatched, 1)
    );
    assert_eq!(
        w.in_flight_counts(t0()).await.unwrap(),
        HashMap::from([("a".to_string(), 3)])
    );
    let now = t0() + secs(1);
    assert_eq!(
        w.complete_stage(&key(xs[0].id, "a", 2), None, now)
            .await
            .unwrap(),
        Transition::Stale,
        "not the attempt dispatched"
    );
    assert_eq!(
        w.complete_stage(&key(xs[0].id, "a", 1), None, now)
            .await
            .unwrap(),
        Transition::StageCompleted {
            workflow_completed: false
        }
    );
    let v = w.get(xs[0].id).await.unwrap();
    assert_eq!(v.status, WorkflowStatus::Running, "the workflow started");
    assert_eq!(
        v.stages[0].started_at.map(|t| t.to_utc()),
        Some(t0_stored() + secs(1))
    );
    assert_eq!(
        w.fail_stage(&key(xs[1].id, "a", 1), None, Some(now + secs(9)), now)
            .await
            .unwrap(),
        Transition::Retrying {
            at: t0_stored() + secs(10)
        }
    );
    assert_eq!(
        stage_status(s, xs[1].id).await[0],
        ("a".into(), StageStatus::Pending, 1)
    );
    let all: Vec<StageKey> = xs.iter().map(|x| key(x.id, "a", 1)).collect();
    assert_eq!(w.release(&all[..2], owner, now).await.unwrap(), 0);
    assert_eq!(
        w.mark_running(&all, owner, now, now + secs(60))
            .await
            .unwrap(),
        1,
        "only the one still dispatched"
    );
    // A cancel cancels a dispatched attempt; its result is then stale.
    let c = w
        .claim_due("a", owner, now + secs(9), LEASE, 10)
        .await
        .unwrap();
    assert_eq!(c[0].key, key(xs[1].id, "a", 2));
    let v = w.cancel(xs[1].id, now + secs(9)).await.unwrap();
    assert_eq!(v.stages[0].status, StageStatus::Cancelled);
    assert_eq!(
        w.complete_stage(&c[0].key, None, now + secs(9))
            .await
            .unwrap(),
        Transition::Stale
    );
    assert!(w.in_flight_counts(now + secs(9)).await.unwrap()["a"] == 1);
}

pub async fn workflow_retry_then_fail(s: &Stores) {
    let w = &s.workflows;
    let x = diamond_wf("a.example");
    create(s, &x).await;
    let k1 = start(s, x.id, "a", t0()).await;
    let retry_at = t0() + secs(30);
    let t = w
        .fail_stage(
            &k1,
            Some(serde_json::json!("boom")),
            Some(retry_at),
            t0() + secs(1),
        )
        .await
        .unwrap();
    assert_eq!(
        t,
        Transition::Retrying {
            at: t0_stored() + secs(30)
        }
    );
    assert_eq!(
        w.fail_stage(&k1, None, Some(retry_at), t0()).await.unwrap(),
        Transition::Stale
    );
    assert_eq!(
        stage_status(s, x.id).await[0],
        ("a".into(), StageStatus::Pending, 1)
    );
    assert_eq!(wf_status(s, x.id).await, WorkflowStatus::Running);
    assert!(
        w.claim_due("a", Uuid::new_v4(), retry_at - secs(1), LEASE, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let k2 = start(s, x.id, "a", retry_at).await;
    assert_eq!(k2, key(x.id, "a", 2));
    // The late report of attempt 1 changes nothing.
    assert_eq!(
        w.complete_stage(&k1, None, retry_at).await.unwrap(),
        Transition::Stale
    );
    let end = retry_at + secs(1);
    assert_eq!(
        w.fail_stage(&k2, None, None, end).await.unwrap(),
        Transition::WorkflowFailed
    );
    let v = w.get(x.id).await.unwrap();
    assert_eq!(v.status, WorkflowStatus::Failed);
    assert_eq!(
        stage_status(s, x.id).await,
        [
            ("a".into(), StageStatus::Failed, 2),
            ("b".into(), StageStatus::Cancelled, 0),
            ("c".into(), StageStatus::Cancelled, 0)
        ]
    );
    assert_eq!(
        w.last_ended_at().await.unwrap(),
        Some(t0_stored() + secs(31))
    );
    assert_eq!(
        w.fail_stage(&k2, None, None, end).await.unwrap(),
        Transition::Stale
    );
    assert!(!w.any_active().await.unwrap());
}

pub async fn workflow_timed_out(s: &Stores) {
    let w = &s.workflows;
    let xs = diamond_wfs("d", 3);
    w.create_workflows(&xs, t0()).await.unwrap();
    let owner = Uuid::new_v4();
    w.claim_due("a", owner, t0(), LEASE, 10).await.unwrap();
    // Deadlines 30 s, 20 s and 10 s away.
    for (i, x) in xs.iter().enumerate() {
        let dl = t0() + secs(30 - 10 * i as i64);
        assert_eq!(
            w.mark_running(&[key(x.id, "a", 1)], owner, t0(), dl)
                .await
                .unwrap(),
            1
        );
    }
    assert!(w.timed_out(t0() + secs(10), 10).await.unwrap().is_empty());
    let late = w.timed_out(t0() + secs(25), 10).await.unwrap();
    assert_eq!(late, [key(xs[2].id, "a", 1), key(xs[1].id, "a", 1)]);
    assert_eq!(
        w.timed_out(t0() + secs(25), 1).await.unwrap(),
        [key(xs[2].id, "a", 1)]
    );
    // Handled as a failure, it is no longer running.
    w.fail_stage(&late[0], None, Some(t0() + secs(100)), t0() + secs(25))
        .await
        .unwrap();
    w.cancel(xs[1].id, t0() + secs(25)).await.unwrap();
    assert_eq!(
        w.timed_out(t0() + secs(3600), 10).await.unwrap(),
        [key(xs[0].id, "a", 1)]
    );
}

pub async fn workflow_cancel_pause_resume(s: &Stores) {
    let w = &s.workflows;
    let x = diamond_wf("a.example");
    create(s, &x).await;
    let p = w.pause(x.id, t0() + secs(1)).await.unwrap();
    assert_eq!(p.status, WorkflowStatus::Paused);
    assert_eq!(p.updated_at.to_utc(), t0_stored() + secs(1));
    assert!(matches!(
        w.pause(x.id, t0()).await,
        Err(DbError::InvalidState(_))
    ));
    assert_eq!(
        w.resume(x.id, t0()).await.unwrap().status,
        WorkflowStatus::Pending
    );
    assert!(matches!(
        w.resume(x.id, t0()).await,
        Err(DbError::InvalidState(_))
    ));
    let k = start(s, x.id, "a", t0()).await;
    assert_eq!(
        w.pause(x.id, t0()).await.unwrap().status,
        WorkflowStatus::Paused
    );
    // A running stage of a paused workflow may still report.
    assert_eq!(
        w.complete_stage(&k, None, t0()).await.unwrap(),
        Transition::StageCompleted {
            workflow_completed: false
        }
    );
    assert_eq!(
        w.resume(x.id, t0()).await.unwrap().status,
        WorkflowStatus::Running
    );
    let kb = start(s, x.id, "b", t0()).await;
    let c = w.cancel(x.id, t0() + secs(2)).await.unwrap();
    assert_eq!(c.status, WorkflowStatus::Cancelled);
    let st: Vec<_> = c.stages.iter().map(|s| s.status).collect();
    assert_eq!(
        st,
        [
            StageStatus::Completed,
            StageStatus::Cancelled,
            StageStatus::Cancelled
        ]
    );
    assert_eq!(
        w.complete_stage(&kb, None, t0()).await.unwrap(),
        Transition::Stale
    );
    for r in [
        w.cancel(x.id, t0()).await,
        w.pause(x.id, t0()).await,
        w.resume(x.id, t0()).await,
    ] {
        assert!(matches!(r, Err(DbError::InvalidState(_))), "{r:?}");
    }
    let missing = Uuid::new_v4();
    assert!(matches!(
        w.cancel(missing, t0()).await,
        Err(DbError::NotFound(_))
    ));
    assert!(matches!(
        w.pause(missing, t0()).await,
        Err(DbError::NotFound(_))
    ));
    assert!(matches!(
        w.resume(missing, t0()).await,
        Err(DbError::NotFound(_))
    ));
    assert!(
        w.timed_out(t0() + secs(100_000), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(w.in_flight_counts(t0()).await.unwrap().is_empty());
}

/// `(started_at, finished_at, detail)` of each stage of `id`, times as offsets in
/// seconds from `t0_stored()`.
async fn stage_times(
    s: &Stores,
    id: Uuid,
) -> Vec<(Option<i64>, Option<i64>, Option<serde_json::Value>)> {
    let at = |t: Option<GoTime>| t.map(|t| (t.to_utc() - t0_stored()).num_seconds());
    stages_as(s, id, |v| (at(v.started_at), at(v.finished_at), v.detail)).await
}

pub async fn workflow_stage_times_and_detail(s: &Stores) {
    use serde_json::json;
    let w = &s.workflows;
    let x = diamond_wf("a.example");
    let y = diamond_wf("b.example");
    create(s, &x).await;
    create(s, &y).await;
    let k1 = start(s, x.id, "a", t0() + secs(1)).await;
    assert_eq!(
        stage_times(s, x.id).await,
        [
            (Some(1), None, None),
            (None, None, None),
            (None, None, None)
        ]
    );
    // A failure with a retry left ends the attempt and keeps the reason.
    let hostile = json!("<script>alert(1)</script>\"><img src=x onerror=alert(2)>");
    w.fail_stage(
        &k1,
        Some(hostile.clone()),
        Some(t0() + secs(30)),
        t0() + secs(2),
    )
    .await
    .unwrap();
    assert_eq!(
        stage_times(s, x.id).await[0],
        (Some(1), Some(2), Some(hostile.clone()))
    );
    // The next attempt starts afresh (the last detail is kept until a new one).
    let k2 = start(s, x.id, "a", t0() + secs(30)).await;
    assert_eq!(
        stage_times(s, x.id).await[0],
        (Some(30), None, Some(hostile))
    );
    w.complete_stage(&k2, Some(json!({"found": 3})), t0() + secs(31))
        .await
        .unwrap();
    start(s, x.id, "b", t0() + secs(32)).await;
    assert_eq!(
        stage_times(s, x.id).await,
        [
            (Some(30), Some(31), Some(json!({"found": 3}))),
            (Some(32), None, None),
            (None, None, None)
        ]
    );
    // Cancelling ends the stages that were due or running; a stage that never became
    // due has neither time.
    w.cancel(x.id, t0() + secs(40)).await.unwrap();
    assert_eq!(
        stage_times(s, x.id).await,
        [
            (Some(30), Some(31), Some(json!({"found": 3}))),
            (Some(32), Some(40), None),
            (None, Some(40), None)
        ]
    );
    w.cancel(y.id, t0() + secs(41)).await.unwrap();
    assert_eq!(
        stage_times(s, y.id).await,
        [
            (None, Some(41), None),
            (None, None, None),
            (None, None, None)
        ]
    );
    // A time-out's reason is the detail of a stage that fails for good.
    let z = diamond_wf("c.example");
    create(s, &z).await;
    let kz = start(s, z.id, "a", t0() + secs(50)).await;
    w.fail_stage(
        &kz,
        Some(json!({"error": "timed out"})),
        None,
        t0() + secs(60),
    )
    .await
    .unwrap();
    assert_eq!(
        stage_times(s, z.id).await[0],
        (Some(50), Some(60), Some(json!({"error": "timed out"})))
    );
    assert_eq!(w.get(z.id).await.unwrap().kind, WorkflowKind::Managed);
}

pub async fn workflow_list_filter_and_limit(s: &Stores) {
    let w = &s.workflows;
    let xs = diamond_wfs("d", 5);
    create_a_second_apart(s, &xs).await;
    w.cancel(xs[1].id, t0()).await.unwrap();
    w.cancel(xs[3].id, t0()).await.unwrap();
    let ids = |v: Vec<model8::WorkflowView>| v.into_iter().map(|v| v.id).collect::<Vec<_>>();
    let all = w.list(&WorkflowFilter::default()).await.unwrap();
    assert_eq!(ids(all), [xs[4].id, xs[3].id, xs[2].id, xs[1].id, xs[0].id]);
    let cancelled = WorkflowFilter {
        status: Some(WorkflowStatus::Cancelled),
        limit: None,
        ..Default::default()
    };
    assert_eq!(ids(w.list(&cancelled).await.unwrap()), [xs[3].id, xs[1].id]);
    let two = WorkflowFilter {
        status: None,
        limit: Some(2),
        ..Default::default()
    };
    assert_eq!(ids(w.list(&two).await.unwrap()), [xs[4].id, xs[3].id]);
    let none = WorkflowFilter {
        status: Some(WorkflowStatus::Failed),
        limit: None,
        ..Default::default()
    };
    assert!(w.list(&none).await.unwrap().is_empty());
    // The default page is 100.
    let many = diamond_wfs("m", 120);
    assert_eq!(w.create_workflows(&many, t0()).await.unwrap().len(), 120);
    assert_eq!(w.list(&WorkflowFilter::default()).await.unwrap().len(), 100);
}

pub async fn workflow_list_filters_by_domain_company_kind(s: &Stores) {
    let w = &s.workflows;
    let mut other = dref("b.example");
    other.companyname = "Other Co".into();
    let a = diamond_wf("a.example");
    let b = wf(vec![other.clone()], diamond());
    let both = wf(vec![dref("c.example"), other], diamond());
    create_a_second_apart(s, &[a.clone(), b.clone(), both.clone()]).await;
    let ids = |v: Vec<model8::WorkflowView>| v.into_iter().map(|v| v.id).collect::<Vec<_>>();
    let list = |f: WorkflowFilter| async move { ids(w.list(&f).await.unwrap()) };
    let by_domain = |d: &str| WorkflowFilter {
        domain: Some(d.into()),
        ..Default::default()
    };
    assert_eq!(list(by_domain("b.example")).await, [both.id, b.id]);
    assert_eq!(list(by_domain("a.example")).await, [a.id]);
    assert!(
        list(by_domain("a.exampl")).await.is_empty(),
        "exact names only"
    );
    let by_company = |c: &str| WorkflowFilter {
        company: Some(c.into()),
        ..Default::default()
    };
    assert_eq!(list(by_company("Other Co")).await, [both.id, b.id]);
    assert_eq!(list(by_company("ACME")).await, [both.id, a.id]);
    assert_eq!(
        list(WorkflowFilter {
            kind: Some(WorkflowKind::Managed),
            ..Default::default()
        })
        .await,
        [both.id, b.id, a.id]
    );
    assert!(
        list(WorkflowFilter {
            kind: Some(WorkflowKind::Observed),
            ..Default::default()
        })
        .await
        .is_empty()
    );
    w.cancel(b.id, t0() + secs(5)).await.unwrap();
    assert_eq!(
        list(WorkflowFilter {
            status: Some(WorkflowStatus::Pending),
            company: Some("Other Co".into()),
            domain: Some("c.example".into()),
            ..Default::default()
        })
        .await,
        [both.id]
    );
}

pub async fn workflow_list_pages_with_a_cursor(s: &Stores) {
    let w = &s.workflows;
    // Seven workflows, five of them created at the same instant (ties broken by id).
    let early = diamond_wfs("e", 2);
    create_a_second_apart(s, &early).await;
    let same = diamond_wfs("s", 5);
    w.create_workflows(&same, t0() + secs(10)).await.unwrap();
    let all: Vec<Uuid> = w
        .list(&WorkflowFilter::default())
        .await
        .unwrap()
        .iter()
        .map(|v| v.id)
        .collect();
    assert_eq!(all.len(), 7);
    let mut seen = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let page = w
            .list(&WorkflowFilter {
                after,
                limit: Some(3),
                ..Default::default()
            })
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        pages += 1;
        if pages == 1 {
            // Created while paging: newer than the cursor, so not in later pages.
            w.create_workflows(&diamond_wfs("n", 2), t0() + secs(20))
                .await
                .unwrap();
        }
        after = Some(db8::ListCursor::after(page.last().unwrap()));
        seen.extend(page.iter().map(|v| v.id));
    }
    assert_eq!(pages, 3);
    assert_eq!(
        seen, all,
        "every workflow once, in order, despite the inserts"
    );
}

pub async fn workflow_retry(s: &Stores) {
    let w = &s.workflows;
    // a completes, b fails for good (c cancelled with the workflow).
    let x = diamond_wf("a.example");
    create(s, &x).await;
    let ka = start(s, x.id, "a", t0()).await;
    w.complete_stage(&ka, None, t0() + secs(1)).await.unwrap();
    let kb = start(s, x.id, "b", t0() + secs(2)).await;
    w.fail_stage(&kb, Some(serde_json::json!("boom")), None, t0() + secs(3))
        .await
        .unwrap();
    assert_eq!(wf_status(s, x.id).await, WorkflowStatus::Failed);
    // Only a failed or cancelled workflow can be retried.
    let y = diamond_wf("b.example");
    create(s, &y).await;
    assert!(matches!(
        w.retry(y.id, t0()).await,
        Err(DbError::InvalidState(_))
    ));
    assert!(matches!(
        w.retry(Uuid::new_v4(), t0()).await,
        Err(DbError::NotFound(_))
    ));
    let v = w.retry(x.id, t0() + secs(10)).await.unwrap();
    assert_eq!(v.status, WorkflowStatus::Running);
    assert_eq!(v.updated_at, GoTime::from_utc(t0_stored() + secs(10)));
    assert_eq!(
        stage_status(s, x.id).await,
        [
            ("a".into(), StageStatus::Completed, 1),
            ("b".into(), StageStatus::Pending, 0),
            ("c".into(), StageStatus::Pending, 0)
        ]
    );
    assert_eq!(v.stages[1].detail, None);
    assert_eq!(v.stages[1].finished_at, None);
    assert!(w.any_active().await.unwrap());
    // Its domain is busy again: no second workflow for it.
    assert!(
        w.create_workflows(&[diamond_wf_for(&x)], t0() + secs(11))
            .await
            .unwrap()
            .is_empty()
    );
    // It runs to completion with fresh attempts.
    let kb = start(s, x.id, "b", t0() + secs(12)).await;
    assert_eq!(kb.attempt, 1);
    let kc = start(s, x.id, "c", t0() + secs(12)).await;
    w.complete_stage(&kb, None, t0() + secs(13)).await.unwrap();
    assert_eq!(
        w.complete_stage(&kc, None, t0() + secs(14)).await.unwrap(),
        Transition::StageCompleted {
            workflow_completed: true
        }
    );
    assert!(matches!(
        w.retry(x.id, t0() + secs(15)).await,
        Err(DbError::InvalidState(_))
    ));
    // A cancelled workflow whose domain got another active workflow meanwhile: 409.
    let z = diamond_wf("c.example");
    create(s, &z).await;
    w.cancel(z.id, t0() + secs(20)).await.unwrap();
    let z2 = diamond_wf_for(&z);
    w.create_workflows(std::slice::from_ref(&z2), t0() + secs(21))
        .await
        .unwrap();
    assert!(matches!(
        w.retry(z.id, t0() + secs(22)).await,
        Err(DbError::Conflict(_))
    ));
    assert_eq!(wf_status(s, z.id).await, WorkflowStatus::Cancelled);
    w.cancel(z2.id, t0() + secs(23)).await.unwrap();
    let v = w.retry(z.id, t0() + secs(24)).await.unwrap();
    assert_eq!(v.status, WorkflowStatus::Pending, "no stage had completed");
    assert_eq!(
        stage_status(s, z.id).await,
        [
            ("a".into(), StageStatus::Pending, 0),
            ("b".into(), StageStatus::Waiting, 0),
            ("c".into(), StageStatus::Waiting, 0)
        ]
    );
}

/// A new workflow of the diamond plan for the same domain as `x`.
fn diamond_wf_for(x: &NewWorkflow) -> NewWorkflow {
    wf(x.domains.clone(), diamond())
}

pub async fn workflow_changed_since(s: &Stores) {
    let w = &s.workflows;
    let xs = diamond_wfs("d", 3);
    create_a_second_apart(s, &xs).await;
    let ids = |v: Vec<model8::WorkflowView>| v.into_iter().map(|v| v.id).collect::<Vec<_>>();
    assert_eq!(
        ids(w.changed_since(t0(), None, 100).await.unwrap()),
        [xs[0].id, xs[1].id, xs[2].id]
    );
    assert_eq!(
        ids(w.changed_since(t0() + secs(1), None, 100).await.unwrap()),
        [xs[1].id, xs[2].id]
    );
    // A stage starting, a workflow ending: changes, oldest first.
    start(s, xs[0].id, "a", t0() + secs(10)).await;
    w.cancel(xs[1].id, t0() + secs(11)).await.unwrap();
    assert_eq!(
        ids(w.changed_since(t0() + secs(5), None, 100).await.unwrap()),
        [xs[0].id, xs[1].id]
    );
    assert_eq!(
        ids(w.changed_since(t0() + secs(11), None, 100).await.unwrap()),
        [xs[1].id]
    );
    assert_eq!(
        ids(w.changed_since(t0() + secs(1), None, 1).await.unwrap()),
        [xs[2].id]
    );
    assert!(
        w.changed_since(t0() + secs(12), None, 100)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn workflow_idle_domains(s: &Stores) {
    let (d, w) = (&s.domains, &s.workflows);
    let mut rows = Vec::new();
    for i in 0..6 {
        let mut p = post(&format!("d{i}.example"), "ACME");
        p.enabled = i != 5;
        rows.push(d.insert(&p).await.unwrap());
    }
    let r: Vec<DomainRef> = rows.iter().cloned().map(DomainRef::from).collect();
    // d0: active workflow. d1: workflow ended at t0+10. d2: inside an active cycle.
    // d3, d4: never scanned. d5: disabled.
    let active = wf(vec![r[0].clone()], diamond());
    let ended = wf(vec![r[1].clone()], diamond());
    w.create_workflows(&[active, ended.clone()], t0())
        .await
        .unwrap();
    w.cancel(ended.id, t0() + secs(10)).await.unwrap();
    let cycle = wf(vec![r[2].clone(), r[4].clone()], diamond());
    create(s, &cycle).await;
    w.cancel(cycle.id, t0() + secs(20)).await.unwrap();
    let cycle2 = wf(vec![r[2].clone(), r[5].clone()], diamond());
    w.create_workflows(&[cycle2], t0()).await.unwrap();

    let sorted = |ids: &[usize]| {
        let mut v: Vec<DomainRef> = ids.iter().map(|i| r[*i].clone()).collect();
        v.sort_by_key(|d| d.id);
        v
    };
    let early = w.idle_domains(t0() + secs(9), None, 100).await.unwrap();
    // d4's cycle ended at t0+20.
    assert_eq!(early, sorted(&[3]));
    let after_d1 = w.idle_domains(t0() + secs(10), None, 100).await.unwrap();
    assert_eq!(after_d1, sorted(&[1, 3]));
    let all = w.idle_domains(t0() + secs(20), None, 100).await.unwrap();
    assert_eq!(all, sorted(&[1, 3, 4]));
    // Keyset pagination.
    let p1 = w.idle_domains(t0() + secs(20), None, 2).await.unwrap();
    let p2 = w
        .idle_domains(t0() + secs(20), Some(p1[1].id), 2)
        .await
        .unwrap();
    assert_eq!(p1.iter().chain(&p2).cloned().collect::<Vec<_>>(), all);
    assert_eq!(p2.len(), 1);
    assert!(
        w.idle_domains(t0() + secs(20), Some(p2[0].id), 2)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(all.iter().all(|d| d.companyname == "ACME"));
}

pub async fn workflow_active_and_last_ended(s: &Stores) {
    let w = &s.workflows;
    assert!(!w.any_active().await.unwrap());
    assert_eq!(w.last_ended_at().await.unwrap(), None);
    let x = diamond_wf("a.example");
    let y = diamond_wf("b.example");
    w.create_workflows(&[x.clone(), y.clone()], t0())
        .await
        .unwrap();
    assert!(w.any_active().await.unwrap());
    w.cancel(y.id, t0() + secs(20)).await.unwrap();
    w.cancel(x.id, t0() + secs(10)).await.unwrap();
    assert!(!w.any_active().await.unwrap());
    assert_eq!(
        w.last_ended_at().await.unwrap(),
        Some(t0_stored() + secs(20))
    );
}

pub async fn workflow_in_flight_counts(s: &Stores) {
    let w = &s.workflows;
    let xs = diamond_wfs("d", 4);
    w.create_workflows(&xs, t0()).await.unwrap();
    assert!(w.in_flight_counts(t0()).await.unwrap().is_empty());
    let owner = Uuid::new_v4();
    let claimed = w.claim_due("a", owner, t0(), LEASE, 3).await.unwrap();
    let running = &claimed[0].key;
    w.mark_running(
        std::slice::from_ref(running),
        owner,
        t0(),
        t0() + secs(3600),
    )
    .await
    .unwrap();
    w.complete_stage(running, None, t0()).await.unwrap();
    let kb = start(s, running.workflow_id, "b", t0()).await;
    let counts = w.in_flight_counts(t0()).await.unwrap();
    assert_eq!(
        counts,
        HashMap::from([("a".to_string(), 2), ("b".to_string(), 1)])
    );
    // Expired claims are not in flight.
    let counts = w.in_flight_counts(t0() + secs(60)).await.unwrap();
    assert_eq!(counts, HashMap::from([("b".to_string(), 1)]));
    w.fail_stage(&kb, None, None, t0()).await.unwrap();
    let counts = w.in_flight_counts(t0() + secs(60)).await.unwrap();
    assert!(counts.is_empty(), "{counts:?}");
}

// ---------------------------------------------------------------- lock and health

/// Replicas are listed while they write their rows: the leader first, a role change
/// seen, one not seen since the cut-off left out, one gone at shutdown removed, one
/// silent for a day deleted by the next write.
pub async fn replicas_listed_while_alive(s: &Stores) {
    use model8::{ReplicaRole, ReplicaView};
    let r = &s.replicas;
    let replica = |name: &str, role, seen: i64| ReplicaView {
        id: Uuid::new_v4(),
        name: name.into(),
        role,
        version: "0.1.0".into(),
        started_at: GoTime::from_utc(t0()),
        seen_at: GoTime::from_utc(t0() + secs(seen)),
    };
    let mut a = replica("a", ReplicaRole::Standby, 10);
    let b = replica("b", ReplicaRole::Leader, 10);
    let c = replica("c", ReplicaRole::Standby, 2);
    for x in [&a, &b, &c] {
        r.replica_beat(x).await.unwrap();
    }
    let names = |v: Vec<ReplicaView>| v.into_iter().map(|x| x.name).collect::<Vec<_>>();
    assert_eq!(names(r.replicas(t0()).await.unwrap()), ["b", "a", "c"]);
    // c not seen since t0+5: left out.
    let live = r.replicas(t0() + secs(5)).await.unwrap();
    let key = |x: &ReplicaView| (x.id, x.name.clone(), x.role, x.version.clone());
    assert_eq!(live.iter().map(key).collect::<Vec<_>>(), [key(&b), key(&a)]);
    // Kept at the database's precision (microseconds).
    assert_eq!(
        live[0].seen_at.to_utc().timestamp_micros(),
        b.seen_at.to_utc().timestamp_micros()
    );
    // a becomes the leader, b steps down.
    a.role = ReplicaRole::Leader;
    a.seen_at = GoTime::from_utc(t0() + secs(20));
    r.replica_beat(&a).await.unwrap();
    r.replica_beat(&ReplicaView {
        role: ReplicaRole::Standby,
        seen_at: GoTime::from_utc(t0() + secs(20)),
        ..b.clone()
    })
    .await
    .unwrap();
    let live = r.replicas(t0() + secs(15)).await.unwrap();
    assert_eq!(
        live.iter()
            .map(|x| (x.name.as_str(), x.role))
            .collect::<Vec<_>>(),
        [("a", ReplicaRole::Leader), ("b", ReplicaRole::Standby)]
    );
    assert_eq!(
        live[0].started_at.to_utc().timestamp_micros(),
        a.started_at.to_utc().timestamp_micros(),
        "the start is kept"
    );
    // b shuts down cleanly.
    r.replica_gone(b.id).await.unwrap();
    assert_eq!(names(r.replicas(t0()).await.unwrap()), ["a", "c"]);
    // A day later, c (silent since t0+2) is deleted by a's next write.
    a.seen_at = GoTime::from_utc(t0() + secs(2 + 86_400 + 1));
    r.replica_beat(&a).await.unwrap();
    assert_eq!(names(r.replicas(t0()).await.unwrap()), ["a"]);
}

pub async fn leader_lock_contention(s: &Stores) {
    let (a, b) = (&s.leader_a, &s.leader_b);
    assert!(!a.is_held().await.unwrap());
    assert!(a.try_acquire().await.unwrap());
    assert!(
        a.try_acquire().await.unwrap(),
        "re-acquiring a held lock keeps it"
    );
    assert!(a.is_held().await.unwrap());
    assert!(!b.try_acquire().await.unwrap());
    assert!(!b.is_held().await.unwrap());
    b.release().await.unwrap(); // not held: a no-op
    assert!(a.is_held().await.unwrap());
    a.release().await.unwrap();
    assert!(!a.is_held().await.unwrap());
    assert!(b.try_acquire().await.unwrap());
    assert!(!a.try_acquire().await.unwrap());
    b.release().await.unwrap();
    // Released once after acquiring twice: free (never counted twice).
    assert!(a.try_acquire().await.unwrap());
    assert!(a.try_acquire().await.unwrap());
    a.release().await.unwrap();
    assert!(b.try_acquire().await.unwrap());
    b.release().await.unwrap();
}

/// Taking the lock starts a new term; every leader-only write of a replica that still
/// holds an older term (the planted violation: a leader that lost its lock and has not
/// noticed) fails with the typed error and changes nothing; the new leader's writes and
/// the unfenced store's go through.
pub async fn leader_term_fences_leader_only_writes(s: &Stores) {
    let w = &s.workflows;
    let r = ring4();
    // No term held yet: refused.
    let a = (s.fence)(s.term_a.clone());
    let err = a
        .workflows
        .create_workflows(&[diamond_wf("n.example")], t0())
        .await
        .unwrap_err();
    assert!(
        matches!(err, DbError::StaleTerm { held: None, .. }),
        "{err}"
    );
    // a leads with a new term: its writes go through.
    assert!(s.leader_a.try_acquire().await.unwrap());
    let t1 = s.term_a.get().expect("a holds a term");
    let x = diamond_wf("x.example");
    assert_eq!(
        a.workflows
            .create_workflows(std::slice::from_ref(&x), t0())
            .await
            .unwrap(),
        vec![x.id]
    );
    let oa = Uuid::new_v4();
    let kx = a
        .workflows
        .claim_due("a", oa, t0(), LEASE, 10)
        .await
        .unwrap()[0]
        .key
        .clone();
    assert_eq!(
        a.workflows
            .mark_running(std::slice::from_ref(&kx), oa, t0(), t0() + secs(10))
            .await
            .unwrap(),
        1
    );
    // Unfenced writes (leader election off; the API's): never checked.
    let z = diamond_wf("z.example");
    let done = diamond_wf("done.example");
    w.create_workflows(&[z.clone(), done.clone()], t0())
        .await
        .unwrap();
    w.cancel(done.id, t0()).await.unwrap();
    s.ring
        .ring_apply(
            &r,
            &ring_event(
                "k0",
                0,
                RingMessage::Kick {
                    stage: "asmm8".into(),
                },
            ),
        )
        .await
        .unwrap();

    // b takes over (a's session ended); a replica still holding t1 is planted.
    s.leader_a.release().await.unwrap();
    assert!(s.leader_b.try_acquire().await.unwrap());
    let t2 = s.term_b.get().expect("b holds a term");
    assert!(t2 > t1, "a new term: {t2} after {t1}");
    let b = (s.fence)(s.term_b.clone());
    let stale = (s.fence)(LeaderTerm::fixed(s.term_a.key(), t1));
    let refused = |what: &str, e: DbError| match e {
        DbError::StaleTerm { held, current, .. } => {
            assert_eq!((held, current), (Some(t1), t2), "{what}");
            assert!(e.to_string().contains("not the leader"), "{what}: {e}");
        }
        e => panic!("{what}: {e}"),
    };
    let y = diamond_wf("y.example");
    let ys = std::slice::from_ref(&y);
    refused(
        "create_workflows",
        stale
            .workflows
            .create_workflows(ys, t0())
            .await
            .unwrap_err(),
    );
    let claim = InitialClaim {
        owner: oa,
        lease: LEASE,
        stages: vec!["a".into()],
    };
    refused(
        "create_claimed",
        stale
            .workflows
            .create_claimed(ys, t0(), &claim)
            .await
            .unwrap_err(),
    );
    assert!(matches!(w.get(y.id).await, Err(DbError::NotFound(_))));
    refused(
        "claim_due",
        stale
            .workflows
            .claim_due("a", oa, t0() + secs(1), LEASE, 10)
            .await
            .unwrap_err(),
    );
    refused(
        "claim_due_fair",
        stale
            .workflows
            .claim_due_fair("a", oa, t0() + secs(1), LEASE, 10, &Default::default())
            .await
            .unwrap_err(),
    );
    // Nothing was claimed: the new leader claims z.
    let ob = Uuid::new_v4();
    let kz = b
        .workflows
        .claim_due("a", ob, t0() + secs(1), LEASE, 10)
        .await
        .unwrap();
    assert_eq!(kz.len(), 1);
    let kz = kz[0].key.clone();
    assert_eq!(kz.workflow_id, z.id);
    refused(
        "mark_running",
        stale
            .workflows
            .mark_running(std::slice::from_ref(&kz), ob, t0(), t0() + secs(10))
            .await
            .unwrap_err(),
    );
    refused(
        "release",
        stale
            .workflows
            .release(std::slice::from_ref(&kz), ob, t0())
            .await
            .unwrap_err(),
    );
    assert_eq!(w.in_flight_counts(t0() + secs(1)).await.unwrap()["a"], 2);
    refused(
        "time_out",
        stale
            .workflows
            .time_out(&kx, None, None, t0() + secs(20))
            .await
            .unwrap_err(),
    );
    assert_eq!(wf_status(s, x.id).await, WorkflowStatus::Running);
    refused(
        "prune_finished",
        stale
            .workflows
            .prune_finished(t0() + secs(100), 10)
            .await
            .unwrap_err(),
    );
    assert_eq!(wf_status(s, done.id).await, WorkflowStatus::Cancelled);
    refused(
        "ring_stalls",
        stale
            .ring
            .ring_stalls(&r, t0() + secs(61))
            .await
            .unwrap_err(),
    );
    assert!(s.ring.ring_stalled(&r).await.unwrap().is_empty());
    // a itself, having given the lock up, holds no term.
    let err = a
        .workflows
        .prune_finished(t0() + secs(100), 10)
        .await
        .unwrap_err();
    assert!(
        matches!(err, DbError::StaleTerm { held: None, .. }),
        "{err}"
    );

    // The new leader's writes go through.
    assert_eq!(
        b.ring.ring_stalls(&r, t0() + secs(61)).await.unwrap().len(),
        1
    );
    let cycle = s.ring.ring_stalled(&r).await.unwrap()[0].cycle;
    refused(
        "ring_give_up",
        stale
            .ring
            .ring_give_up(&r, cycle, "asmm8", "gave up", t0() + secs(62))
            .await
            .unwrap_err(),
    );
    assert!(
        b.ring
            .ring_give_up(&r, cycle, "asmm8", "gave up", t0() + secs(62))
            .await
            .unwrap()
    );
    assert_eq!(
        b.workflows
            .time_out(&kx, None, None, t0() + secs(20))
            .await
            .unwrap(),
        Transition::WorkflowFailed
    );
    assert_eq!(
        b.workflows
            .mark_running(std::slice::from_ref(&kz), ob, t0(), t0() + secs(10))
            .await
            .unwrap(),
        1
    );
    assert!(
        b.workflows
            .prune_finished(t0() + secs(100), 10)
            .await
            .unwrap()
            >= 1
    );
    assert!(matches!(w.get(done.id).await, Err(DbError::NotFound(_))));
    s.leader_b.release().await.unwrap();
    assert_eq!(s.term_b.get(), None);
}

pub async fn health_ping(s: &Stores) {
    s.health.ping().await.unwrap();
    let stats = s.health.pool_stats();
    assert!(stats.idle <= stats.connections);
}

// ---------------------------------------------------------------- observed ring

fn ring4() -> Vec<RingStage> {
    ["asmm8", "naabum8", "katanam8", "num8"]
        .map(|n| RingStage {
            name: n.into(),
            timeout: Duration::from_secs(60),
        })
        .to_vec()
}

fn ring_event(key: &str, at: i64, message: RingMessage) -> RingEvent {
    RingEvent {
        key: key.into(),
        at: t0() + secs(at),
        message,
    }
}

fn ring_chain(from: &str, to: &str) -> RingMessage {
    RingMessage::Chain {
        from: from.into(),
        to: to.into(),
        payload: Some(model8::chain::ScanPayload {
            status: model8::chain::ScanStatus::Complete,
            message: format!("{from} done"),
        }),
    }
}

/// A full observed cycle, applied once per key, listed as kind observed; a stall is
/// reported once and a late chain message still ends the stage.
pub async fn ring_observed_cycles(s: &Stores) {
    let r = ring4();
    let apply = |e: RingEvent| {
        let ring = s.ring.clone();
        let r = r.clone();
        async move { ring.ring_apply(&r, &e).await.unwrap() }
    };
    let kick = RingMessage::Kick {
        stage: "asmm8".into(),
    };
    let started = apply(ring_event("k0", 0, kick.clone())).await;
    let RingApplied::StageStarted {
        cycle, new_cycle, ..
    } = started
    else {
        panic!("{started:?}")
    };
    assert!(new_cycle);
    assert_eq!(
        apply(ring_event("k0", 0, kick)).await,
        RingApplied::Duplicate
    );
    apply(ring_event("c1", 10, ring_chain("asmm8", "naabum8"))).await;
    // The same message again (a redelivery) changes nothing.
    assert_eq!(
        apply(ring_event("c1", 10, ring_chain("asmm8", "naabum8"))).await,
        RingApplied::Duplicate
    );
    // naabum8 silent past its 60 s: stalled once.
    assert!(
        s.ring
            .ring_stalls(&r, t0() + secs(69))
            .await
            .unwrap()
            .is_empty()
    );
    let stalls = s.ring.ring_stalls(&r, t0() + secs(71)).await.unwrap();
    assert_eq!(stalls.len(), 1);
    assert_eq!(
        (stalls[0].cycle, stalls[0].stage.as_str()),
        (cycle, "naabum8")
    );
    assert_eq!(stalls[0].silent_for, Duration::from_secs(61));
    assert!(
        s.ring
            .ring_stalls(&r, t0() + secs(72))
            .await
            .unwrap()
            .is_empty()
    );
    let v = s.workflows.get(cycle).await.unwrap();
    assert_eq!(v.kind, WorkflowKind::Observed);
    assert_eq!(v.status, WorkflowStatus::Running);
    let st: Vec<StageStatus> = v.stages.iter().map(|x| x.status).collect();
    assert_eq!(
        st,
        [
            StageStatus::Completed,
            StageStatus::Stalled,
            StageStatus::Waiting,
            StageStatus::Waiting
        ]
    );
    assert_eq!(v.stages[0].detail, Some(serde_json::json!("asmm8 done")));
    assert_eq!(v.stages[0].started_at, Some(GoTime::from_utc(t0_stored())));
    // Late, but it ends the stage; the ring goes on, and the last stage starts the
    // next cycle.
    apply(ring_event("c2", 80, ring_chain("naabum8", "katanam8"))).await;
    apply(ring_event("c3", 90, ring_chain("katanam8", "num8"))).await;
    let end = apply(ring_event("c4", 100, ring_chain("num8", "asmm8"))).await;
    let RingApplied::StageEnded {
        cycle_ended, next, ..
    } = end
    else {
        panic!("{end:?}")
    };
    assert_eq!(cycle_ended, Some(WorkflowStatus::Completed));
    let (second, first_stage) = next.unwrap();
    assert_eq!(first_stage, "asmm8");
    let all = s.workflows.list(&WorkflowFilter::default()).await.unwrap();
    let ids: Vec<_> = all.iter().map(|w| (w.id, w.kind, w.status)).collect();
    assert_eq!(
        ids,
        [
            (second, WorkflowKind::Observed, WorkflowStatus::Running),
            (cycle, WorkflowKind::Observed, WorkflowStatus::Completed)
        ]
    );
    let done = s.workflows.get(cycle).await.unwrap();
    assert!(
        done.stages
            .iter()
            .all(|x| x.status == StageStatus::Completed)
    );
    assert_eq!(
        done.stages[3].finished_at,
        Some(GoTime::from_utc(t0_stored() + secs(100)))
    );
}

/// Healing's view: a stalled stage given up is failed, and the next stage's kick
/// starts it; the cycle then ends failed.
pub async fn ring_heal_gives_up_on_a_stalled_stage(s: &Stores) {
    let r = ring4();
    let apply = |e: RingEvent| {
        let ring = s.ring.clone();
        let r = r.clone();
        async move { ring.ring_apply(&r, &e).await.unwrap() }
    };
    let kick = |stage: &str| RingMessage::Kick {
        stage: stage.into(),
    };
    apply(ring_event("k0", 0, kick("asmm8"))).await;
    assert_eq!(
        s.ring.ring_stalls(&r, t0() + secs(61)).await.unwrap().len(),
        1
    );
    let st = s.ring.ring_stalled(&r).await.unwrap();
    let cycle = st[0].cycle;
    assert!(
        s.ring
            .ring_give_up(&r, cycle, "asmm8", "gave up", t0() + secs(62))
            .await
            .unwrap()
    );
    assert!(s.ring.ring_stalled(&r).await.unwrap().is_empty());
    let started = apply(ring_event("k1", 62, kick("naabum8"))).await;
    assert!(
        matches!(
            started,
            RingApplied::StageStarted {
                new_cycle: false,
                ..
            }
        ),
        "{started:?}"
    );
    let v = s.workflows.get(cycle).await.unwrap();
    assert_eq!(v.stages[0].status, StageStatus::Failed);
    assert_eq!(v.stages[0].detail, Some(serde_json::json!("gave up")));
    assert_eq!(v.stages[1].status, StageStatus::Running);
    apply(ring_event("c2", 63, ring_chain("naabum8", "katanam8"))).await;
    apply(ring_event("c3", 64, ring_chain("katanam8", "num8"))).await;
    apply(ring_event("c4", 65, ring_chain("num8", "asmm8"))).await;
    assert_eq!(
        s.workflows.get(cycle).await.unwrap().status,
        WorkflowStatus::Failed
    );
}

// ---------------------------------------------------------------- fairness

/// Workflows of stage `a` only, one per new domain of `company`, `n` of them.
fn company_wfs(company: &str, n: usize) -> Vec<NewWorkflow> {
    (0..n)
        .map(|i| {
            let mut d = dref(&format!("{i}.{company}.example"));
            d.companyname = company.into();
            wf(vec![d], vec![stage("a", &[])])
        })
        .collect()
}

/// Fair-claims (at most `limit`) due stage `a` jobs at `now`; the ids claimed, as a
/// set.
async fn fair_ids(
    s: &Stores,
    now: DateTime<Utc>,
    limit: usize,
    weights: &std::collections::BTreeMap<String, u32>,
) -> std::collections::BTreeSet<Uuid> {
    s.workflows
        .claim_due_fair("a", Uuid::new_v4(), now, LEASE, limit, weights)
        .await
        .unwrap()
        .iter()
        .map(|c| c.key.workflow_id)
        .collect()
}

pub async fn workflow_claim_fair_takes_companies_in_turn(s: &Stores) {
    // Six of BIG first, then two of SMALL, then one without a company: one second
    // apart, due in that order.
    let big = company_wfs("BIG", 6);
    let small = company_wfs("SMALL", 2);
    let none = company_wfs("", 1);
    let all: Vec<NewWorkflow> = big.iter().chain(&small).chain(&none).cloned().collect();
    create_a_second_apart(s, &all).await;
    let now = t0() + secs(20);
    let ids = |xs: &[&NewWorkflow]| {
        xs.iter()
            .map(|x| x.id)
            .collect::<std::collections::BTreeSet<_>>()
    };
    let w = std::collections::BTreeMap::new();

    // Oldest first would take four of BIG; the fair claim takes the oldest of each
    // company (no company is one company of its own), then BIG's second.
    assert_eq!(
        fair_ids(s, now, 4, &w).await,
        ids(&[&big[0], &small[0], &none[0], &big[1]])
    );
    // Those are in flight now (BIG 2, SMALL 1, none 1): SMALL's turn before BIG's
    // third, though BIG's are older.
    assert_eq!(fair_ids(s, now, 2, &w).await, ids(&[&small[1], &big[2]]));
    // "Scan now" work goes ahead of the backlog: BIG's newest workflow before its
    // three older ones.
    let mut asked = company_wfs("BIG", 1).remove(0);
    asked.domains[0].name = "asked.big.example".into();
    s.workflows
        .create_workflows(std::slice::from_ref(&asked), t0() + secs(10))
        .await
        .unwrap();
    assert_eq!(s.workflows.mark_requested(&[asked.id]).await.unwrap(), 1);
    assert_eq!(fair_ids(s, now, 1, &w).await, ids(&[&asked]));
    // Only BIG is left: all of it.
    assert_eq!(
        fair_ids(s, now, 10, &w).await,
        ids(&[&big[3], &big[4], &big[5]])
    );
    assert!(fair_ids(s, now, 10, &w).await.is_empty());
}

pub async fn workflow_claim_fair_follows_weights(s: &Stores) {
    let big = company_wfs("BIG", 4);
    let small = company_wfs("SMALL", 4);
    let all: Vec<NewWorkflow> = big.iter().chain(&small).cloned().collect();
    create_a_second_apart(s, &all).await;
    let now = t0() + secs(20);
    let weights: std::collections::BTreeMap<String, u32> = [("BIG".to_owned(), 3)].into();
    // Three of BIG for one of SMALL.
    let got = fair_ids(s, now, 4, &weights).await;
    let expected: std::collections::BTreeSet<Uuid> =
        [big[0].id, big[1].id, big[2].id, small[0].id].into();
    assert_eq!(got, expected);
    // Not due yet (before their creation) is never claimed.
    assert!(
        s.workflows
            .claim_due_fair("a", Uuid::new_v4(), t0() - secs(1), LEASE, 10, &weights)
            .await
            .unwrap()
            .is_empty()
    );
}

// ---------------------------------------------------------------- retention

/// Retention deletes the ring's message keys received before the cut-off, oldest
/// first and at most `limit`: a redelivery of a pruned key is recorded again, a
/// younger key is still a duplicate.
pub async fn ring_keys_pruned_with_the_retention(s: &Stores) {
    let r = ring4();
    let apply = |e: RingEvent| {
        let ring = s.ring.clone();
        let r = r.clone();
        async move { ring.ring_apply(&r, &e).await.unwrap() }
    };
    let kick = || RingMessage::Kick {
        stage: "asmm8".into(),
    };
    apply(ring_event("k-old", 0, kick())).await;
    apply(ring_event("c-mid", 10, ring_chain("asmm8", "naabum8"))).await;
    apply(ring_event("c-new", 100, ring_chain("naabum8", "katanam8"))).await;
    let before = t0() + secs(50);
    // At most `limit`, oldest first: only k-old goes.
    s.workflows.prune_finished(before, 1).await.unwrap();
    assert_ne!(
        apply(ring_event("k-old", 0, kick())).await,
        RingApplied::Duplicate,
        "a pruned key is recorded again"
    );
    assert_eq!(
        apply(ring_event("c-mid", 10, ring_chain("asmm8", "naabum8"))).await,
        RingApplied::Duplicate,
        "beyond the limit: kept"
    );
    s.workflows.prune_finished(before, 100).await.unwrap();
    assert_ne!(
        apply(ring_event("c-mid", 10, ring_chain("asmm8", "naabum8"))).await,
        RingApplied::Duplicate
    );
    assert_eq!(
        apply(ring_event("c-new", 100, ring_chain("naabum8", "katanam8"))).await,
        RingApplied::Duplicate,
        "younger than the cut-off: kept"
    );
}

pub async fn workflow_prune_finished_keeps_the_cool_down(s: &Stores) {
    let (d, w) = (&s.domains, &s.workflows);
    let mut r = Vec::new();
    for i in 0..4 {
        let row = d
            .insert(&post(&format!("p{i}.example"), "ACME"))
            .await
            .unwrap();
        r.push(DomainRef::from(row));
    }
    // p0: finished at t0+10 and again at t0+30 (two workflows). p1: finished at
    // t0+20. p2: active since t0. p3: a cycle with p1, finished at t0+40.
    let p0a = wf(vec![r[0].clone()], diamond());
    let p1 = wf(vec![r[1].clone()], diamond());
    let p2 = wf(vec![r[2].clone()], diamond());
    w.create_workflows(&[p0a.clone(), p1.clone(), p2.clone()], t0())
        .await
        .unwrap();
    w.cancel(p0a.id, t0() + secs(10)).await.unwrap();
    w.cancel(p1.id, t0() + secs(20)).await.unwrap();
    let p0b = wf(vec![r[0].clone()], diamond());
    w.create_workflows(std::slice::from_ref(&p0b), t0() + secs(25))
        .await
        .unwrap();
    w.cancel(p0b.id, t0() + secs(30)).await.unwrap();
    let cycle = wf(vec![r[3].clone(), r[1].clone()], diamond());
    w.create_workflows(std::slice::from_ref(&cycle), t0() + secs(35))
        .await
        .unwrap();
    w.cancel(cycle.id, t0() + secs(40)).await.unwrap();
    let idle_before: Vec<Vec<DomainRef>> = {
        let mut v = Vec::new();
        for t in [5, 15, 25, 35, 45] {
            v.push(w.idle_domains(t0() + secs(t), None, 100).await.unwrap());
        }
        v
    };

    // Nothing ended before t0+10.
    assert_eq!(w.prune_finished(t0() + secs(10), 100).await.unwrap(), 0);
    // In small batches, oldest first: p0a, then p1.
    assert_eq!(w.prune_finished(t0() + secs(35), 1).await.unwrap(), 1);
    assert!(matches!(w.get(p0a.id).await, Err(DbError::NotFound(_))));
    assert!(w.get(p1.id).await.is_ok());
    assert_eq!(w.prune_finished(t0() + secs(35), 100).await.unwrap(), 2);
    assert!(matches!(w.get(p1.id).await, Err(DbError::NotFound(_))));
    assert!(matches!(w.get(p0b.id).await, Err(DbError::NotFound(_))));
    // Everything finished goes (the cycle too); the active workflow never does.
    assert_eq!(w.prune_finished(t0() + secs(3600), 100).await.unwrap(), 1);
    assert_eq!(w.prune_finished(t0() + secs(3600), 100).await.unwrap(), 0);
    assert_eq!(wf_status(s, p2.id).await, WorkflowStatus::Pending);
    let left: Vec<Uuid> = w
        .list(&Default::default())
        .await
        .unwrap()
        .iter()
        .map(|v| v.id)
        .collect();
    assert_eq!(left, [p2.id]);

    // The cool-downs answer as before the workflows went.
    for (i, t) in [5, 15, 25, 35, 45].into_iter().enumerate() {
        assert_eq!(
            w.idle_domains(t0() + secs(t), None, 100).await.unwrap(),
            idle_before[i],
            "idle domains at t0+{t}"
        );
    }
    assert_eq!(
        w.last_ended_at().await.unwrap(),
        Some(t0_stored() + secs(40))
    );
}

// ---------------------------------------------------------------- outbox

/// Every row due at `now`, claimed by a new owner; their events.
async fn outbox_events(s: &Stores, now: DateTime<Utc>) -> Vec<OutboxEvent> {
    s.outbox
        .outbox_claim(Uuid::new_v4(), now, Duration::from_secs(3600), 1000)
        .await
        .unwrap()
        .iter()
        .map(|r| OutboxEvent::from_json(&r.event).unwrap())
        .collect()
}

/// A one-stage workflow (`a`) of domain `name`, created at `t0` and running.
async fn one_stage_running(s: &Stores, name: &str) -> (Uuid, StageKey) {
    let x = wf(vec![dref(name)], vec![stage("a", &[])]);
    create(s, &x).await;
    let k = start(s, x.id, "a", t0()).await;
    (x.id, k)
}

pub async fn outbox_rows_come_with_their_transitions(s: &Stores) {
    let w = &s.workflows;
    assert!(outbox_events(s, t0()).await.is_empty());
    // A stage that completes without ending its workflow, a retry, a stale report:
    // no row.
    let x = diamond_wf("d.example");
    create(s, &x).await;
    let ka = start(s, x.id, "a", t0()).await;
    w.complete_stage(&ka, None, t0()).await.unwrap();
    let kb = start(s, x.id, "b", t0()).await;
    w.fail_stage(&kb, None, Some(t0()), t0()).await.unwrap();
    assert_eq!(
        w.complete_stage(&ka, None, t0()).await.unwrap(),
        Transition::Stale
    );
    assert!(outbox_events(s, t0() + secs(1)).await.is_empty());
    // The last stage completes: one row, written with the transition.
    let (id, k) = one_stage_running(s, "c.example").await;
    assert_eq!(
        w.complete_stage(&k, None, t0() + secs(2)).await.unwrap(),
        Transition::StageCompleted {
            workflow_completed: true
        }
    );
    let stats = s.outbox.outbox_stats().await.unwrap();
    assert_eq!(stats.depth, 1);
    assert_eq!(stats.oldest, Some(t0_stored() + secs(2)));
    assert_eq!(
        outbox_events(s, t0() + secs(2)).await,
        [OutboxEvent::WorkflowCompleted {
            workflow_id: id,
            domains: vec!["c.example".into()],
        }]
    );
    // Its duplicate report: no second row.
    assert_eq!(
        w.complete_stage(&k, None, t0() + secs(3)).await.unwrap(),
        Transition::Stale
    );
    // The last attempt fails: one row naming the stage, attempt and detail.
    let (id, k) = one_stage_running(s, "f.example").await;
    let detail = serde_json::json!({"error": "timed out: no result within 2h"});
    assert_eq!(
        w.fail_stage(&k, Some(detail.clone()), None, t0() + secs(4))
            .await
            .unwrap(),
        Transition::WorkflowFailed
    );
    assert_eq!(
        w.fail_stage(&k, None, None, t0() + secs(5)).await.unwrap(),
        Transition::Stale
    );
    assert_eq!(
        outbox_events(s, t0() + secs(5)).await,
        [OutboxEvent::WorkflowFailed {
            workflow_id: id,
            domains: vec!["f.example".into()],
            stage: "a".into(),
            attempt: 1,
            detail: Some(detail),
        }]
    );
    // A ring stall: one row per stall, once.
    let r = ring4();
    let kick = RingMessage::Kick {
        stage: "asmm8".into(),
    };
    s.ring
        .ring_apply(&r, &ring_event("k0", 0, kick))
        .await
        .unwrap();
    let stalls = s.ring.ring_stalls(&r, t0() + secs(61)).await.unwrap();
    assert_eq!(stalls.len(), 1);
    assert!(
        s.ring
            .ring_stalls(&r, t0() + secs(62))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        outbox_events(s, t0() + secs(62)).await,
        [OutboxEvent::RingStalled {
            cycle: stalls[0].cycle,
            stage: "asmm8".into(),
            attempt: stalls[0].attempt,
            silent_for_secs: 61,
            timeout_secs: 60,
            message: None,
        }]
    );
    assert_eq!(s.outbox.outbox_stats().await.unwrap().depth, 3);
}

pub async fn outbox_claim_release_delete(s: &Stores) {
    let o = &s.outbox;
    let mut ids = Vec::new();
    for i in 0..3 {
        let (_, k) = one_stage_running(s, &format!("o{i}.example")).await;
        s.workflows
            .complete_stage(&k, None, t0() + secs(i))
            .await
            .unwrap();
        ids.push(k.workflow_id);
    }
    let a = Uuid::new_v4();
    let b = Uuid::new_v4();
    let lease = Duration::from_secs(30);
    // Oldest first, at most `limit`.
    let first = o.outbox_claim(a, t0() + secs(10), lease, 2).await.unwrap();
    let workflow_of = |r: &OutboxRow| match OutboxEvent::from_json(&r.event).unwrap() {
        OutboxEvent::WorkflowCompleted { workflow_id, .. } => workflow_id,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        first.iter().map(workflow_of).collect::<Vec<_>>(),
        ids[..2].to_vec()
    );
    assert_eq!(first[0].created_at, t0_stored());
    assert!(first.iter().all(|r| r.attempts == 0));
    // Claimed rows are not claimed again while the lease lasts.
    let second = o.outbox_claim(b, t0() + secs(10), lease, 10).await.unwrap();
    assert_eq!(second.iter().map(workflow_of).collect::<Vec<_>>(), [ids[2]]);
    assert!(
        o.outbox_claim(b, t0() + secs(39), lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // Only the claimer releases; a released row is due again at `not_before`, its
    // attempt counted.
    let row0 = first[0].id;
    assert_eq!(
        o.outbox_release(&[row0], b, t0() + secs(20)).await.unwrap(),
        0
    );
    assert_eq!(
        o.outbox_release(&[row0], a, t0() + secs(20)).await.unwrap(),
        1
    );
    assert!(
        o.outbox_claim(b, t0() + secs(19), lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let again = o.outbox_claim(b, t0() + secs(20), lease, 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].id, again[0].attempts), (row0, 1));
    // A claimer that died: its rows are claimable once the lease is over (published
    // again: at least once).
    let taken_over = o.outbox_claim(b, t0() + secs(40), lease, 10).await.unwrap();
    assert_eq!(taken_over.len(), 2, "{taken_over:?}");
    // Deleted once confirmed, whoever holds the claim; an unknown id is ignored.
    assert_eq!(
        o.outbox_delete(&[row0, first[1].id, Uuid::new_v4()])
            .await
            .unwrap(),
        2
    );
    assert_eq!(o.outbox_delete(&[]).await.unwrap(), 0);
    let stats = o.outbox_stats().await.unwrap();
    assert_eq!(stats.depth, 1);
    assert_eq!(stats.oldest, Some(t0_stored() + secs(2)));
    o.outbox_delete(&[second[0].id]).await.unwrap();
    assert_eq!(
        o.outbox_stats().await.unwrap(),
        db8::OutboxStats {
            depth: 0,
            oldest: None
        }
    );
}

pub async fn outbox_concurrent_claims_do_not_overlap(s: &Stores) {
    const N: usize = 40;
    for i in 0..N {
        let (_, k) = one_stage_running(s, &format!("c{i}.example")).await;
        s.workflows.complete_stage(&k, None, t0()).await.unwrap();
    }
    let claim = |limit| {
        let o = s.outbox.clone();
        async move {
            o.outbox_claim(Uuid::new_v4(), t0(), Duration::from_secs(60), limit)
                .await
                .unwrap()
        }
    };
    let (x, y, z) = tokio::join!(claim(15), claim(15), claim(15));
    let mut seen = HashSet::new();
    for r in x.iter().chain(&y).chain(&z) {
        assert!(seen.insert(r.id), "row {} claimed twice", r.id);
    }
    assert_eq!(seen.len(), N);
}
