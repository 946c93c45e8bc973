//! Engine unit tests: every step on the in-memory repositories, the test broker and a
//! manual clock.

use std::time::Duration;

use amqp8::Broker;
use amqp8::memory::Settlement;
use config8::Granularity;
use db8::{DomainRepository, WorkflowRepository};
use model8::{
    AmqpM8Message, NotificationEvent, StageJob, StageOutcome, StageStatus, WorkflowStatus,
};

use crate::role::Role;
use crate::testkit::{Harness, bounded, chain, confirmed, managed, q, rk, section, stage};
use crate::topology::{NOTIFY_COMPLETED_KEY, NOTIFY_FAILED_KEY};

fn stage_status(v: &model8::WorkflowView, name: &str) -> (StageStatus, u32) {
    let s = v.stages.iter().find(|s| s.name == name).unwrap();
    (s.status, s.attempt)
}

/// Stage `a` of workflow `id`: its status and attempt.
async fn stage_a(h: &Harness, id: uuid::Uuid) -> (StageStatus, u32) {
    stage_status(&h.wf(id).await.unwrap(), "a")
}

/// Reports `job` completed: acked, and stage `a` is `want` afterwards.
async fn complete_acked(h: &Harness, job: &StageJob, want: (StageStatus, u32)) {
    assert_eq!(
        h.report(job, StageOutcome::Completed).await,
        Settlement::Ack
    );
    assert_eq!(stage_a(h, job.workflow_id).await, want);
}

/// The result of attempt 1 of stage `a` of workflow `id` was applied, and not counted
/// as stale.
async fn assert_applied_not_stale(h: &Harness, id: uuid::Uuid) {
    assert_eq!(stage_a(h, id).await, (StageStatus::Completed, 1));
    h.assert_no_metric("orchestratorm8_results_stale_total 1");
}

/// Reports `job` completed; the next dispatch round publishes one job, of stage `next`.
async fn complete_then_publish(h: &Harness, job: &StageJob, next: &str) {
    h.report(job, StageOutcome::Completed).await;
    assert_eq!(h.engine.dispatch().await.unwrap().published, 1);
    assert_eq!(h.take_jobs(next).len(), 1);
}

/// Adds domains `a.example.com`, `b.example.com` and `c.example.com`, the last one
/// disabled.
async fn add_two_enabled_and_one_disabled(h: &Harness) -> [model8::Domain8; 3] {
    let a = h.add_domain("a.example.com").await;
    let b = h.add_domain("b.example.com").await;
    let c = h.add_domain("c.example.com").await;
    h.store.set_enabled(c.id, false).await.unwrap();
    [a, b, c]
}

/// The chain a -> b -> c with stage a's queue bounded to one job (reject-publish).
fn chain_with_a_bounded() -> config8::Settings {
    let mut s = chain();
    s.orchestrator
        .queues
        .insert("a".into(), section("a", &bounded(1)));
    s
}

/// Creates a workflow for every idle enabled domain without claiming it, then claims
/// the due stage `a` jobs (at most 10, 60 s lease) for `owner` at the clock's time, as
/// a dispatcher does before it publishes them.
async fn create_and_claim(h: &Harness, owner: uuid::Uuid) -> Vec<db8::ClaimedStage> {
    h.create_unclaimed().await;
    h.store
        .claim_due("a", owner, h.clock_now(), Duration::from_secs(60), 10)
        .await
        .unwrap()
}

/// A worker takes stage `a`'s jobs and reports them completed, the dispatcher running
/// after each round, until `n` are done (in fewer than `max_rounds` rounds); each job
/// was published exactly once.
async fn drain_a(h: &Harness, n: usize, max_rounds: usize) {
    let mut done = 0;
    let mut rounds = 0;
    while done < n {
        rounds += 1;
        assert!(rounds < max_rounds, "drains in a bounded number of rounds");
        for j in &h.take_jobs("a") {
            h.report(j, StageOutcome::Completed).await;
            done += 1;
        }
        h.engine.dispatch().await.unwrap();
    }
    assert_eq!(
        confirmed(&h.broker, &rk("a")),
        n,
        "each job published exactly once"
    );
}

#[tokio::test]
async fn per_domain_creates_one_workflow_per_enabled_domain_and_publishes_stage_one() {
    let h = Harness::new(chain()).await;
    let [d1, d2, _] = add_two_enabled_and_one_disabled(&h).await;

    // Stage a's first attempts are claimed as the workflows are created and
    // published at once: no dispatch round needed.
    assert_eq!(h.engine.start_workflows().await.unwrap(), 2);
    // Nothing more while they are active.
    assert_eq!(h.engine.start_workflows().await.unwrap(), 0);

    let sent: Vec<_> = h.broker.published();
    assert_eq!(sent.len(), 2);
    assert!(
        sent.iter()
            .all(|(m, _)| m.mandatory && m.exchange == "cptm8")
    );
    let msgs = h.broker.take(&q("a"));
    assert_eq!(msgs.len(), 2);
    for m in &msgs {
        assert_eq!(m.exchange, "cptm8");
        assert_eq!(m.routing_key, rk("a"));
        let env = AmqpM8Message::<StageJob>::from_slice(&m.body).unwrap();
        assert_eq!(env.channel, rk("a"));
        assert_eq!(env.source, "orchestratorm8");
        let job = env.payload.unwrap();
        assert_eq!(job.stage, "a");
        assert_eq!(job.attempt, 1);
        assert_eq!(job.domains.len(), 1);
        assert!([d1.id, d2.id].contains(&job.domains[0].id));
        assert_eq!(job.domains[0].companyname, "ACME");
        let v = h.wf(job.workflow_id).await.unwrap();
        assert_eq!(v.status, WorkflowStatus::Running);
        assert_eq!(stage_status(&v, "a"), (StageStatus::Running, 1));
        assert_eq!(stage_status(&v, "b"), (StageStatus::Waiting, 0));
    }
    // Nothing else is due: a second round publishes nothing.
    assert_eq!(h.engine.dispatch().await.unwrap().published, 0);
    // Only stage a was published.
    assert_eq!(confirmed(&h.broker, &rk("b")), 0);
}

#[tokio::test]
async fn many_domains_are_created_and_published_in_batches() {
    // batch_size 3 in tests: 10 domains take 4 pages, 4 batches created with their
    // first stage claimed, 4 published.
    let h = Harness::new(chain()).await;
    h.add_domains(10).await;
    assert_eq!(h.engine.start_workflows().await.unwrap(), 10);
    assert_eq!(
        h.engine.dispatch().await.unwrap().published,
        0,
        "published as they were created"
    );
    let jobs = h.take_jobs("a");
    let mut ids: Vec<_> = jobs.iter().map(|j| j.workflow_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 10, "each workflow published exactly once");
}

#[tokio::test]
async fn a_three_stage_pipeline_runs_to_completion_with_a_notification() {
    let h = Harness::new(chain()).await;
    h.add_domain("example.com").await;
    h.engine.start_workflows().await.unwrap();
    for name in ["a", "b", "c"] {
        // (stage a was published as the workflow was created)
        assert_eq!(
            h.engine.dispatch().await.unwrap().published,
            u64::from(name != "a"),
            "stage {name}"
        );
        let jobs = h.take_jobs(name);
        assert_eq!(jobs.len(), 1);
        assert_eq!(
            h.report(&jobs[0], StageOutcome::Completed).await,
            Settlement::Ack
        );
    }
    let all = h.wfs().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].status, WorkflowStatus::Completed);
    let n = h.notifications(NOTIFY_COMPLETED_KEY).await;
    assert_eq!(n.len(), 1);
    assert_eq!(n[0].kind, NotificationEvent::Message);
    assert!(n[0].message.contains("example.com"), "{}", n[0].message);
    h.assert_metrics(&[
        "orchestratorm8_workflows_completed_total 1",
        "orchestratorm8_results_consumed_total{outcome=\"completed\"} 3",
    ]);
}

#[tokio::test]
async fn diamond_dependencies_wait_for_every_parent() {
    let h = Harness::new(managed(vec![
        stage("a", &[]),
        stage("b", &["a"]),
        stage("c", &["a"]),
        stage("d", &["b", "c"]),
    ]))
    .await;
    let a = h.start_one().await;
    h.report(&a, StageOutcome::Completed).await;
    assert_eq!(h.engine.dispatch().await.unwrap().published, 2);
    let b = h.take_jobs("b").remove(0);
    let c = h.take_jobs("c").remove(0);
    h.report(&b, StageOutcome::Completed).await;
    assert_eq!(
        h.engine.dispatch().await.unwrap().published,
        0,
        "d waits for c"
    );
    complete_then_publish(&h, &c, "d").await;
}

#[tokio::test]
async fn duplicate_and_stale_results_are_acked_without_change() {
    let h = Harness::new(chain()).await;
    let job = h.start_one().await;
    assert_eq!(
        h.report(&job, StageOutcome::Completed).await,
        Settlement::Ack
    );
    let before = h.wf(job.workflow_id).await.unwrap();
    // The same report again, a failure of the same attempt, a future attempt, an
    // unknown workflow, a stage the workflow does not have.
    assert_eq!(
        h.report(&job, StageOutcome::Completed).await,
        Settlement::Ack
    );
    assert_eq!(h.report(&job, StageOutcome::Failed).await, Settlement::Ack);
    assert_eq!(
        h.report_raw("a", job.workflow_id, 7, StageOutcome::Completed)
            .await,
        Settlement::Ack
    );
    assert_eq!(
        h.report_raw("a", uuid::Uuid::new_v4(), 1, StageOutcome::Completed)
            .await,
        Settlement::Ack
    );
    assert_eq!(
        h.report_raw("zz", job.workflow_id, 1, StageOutcome::Completed)
            .await,
        Settlement::Ack
    );
    let after = h.wf(job.workflow_id).await.unwrap();
    assert_eq!(before, after);
    h.assert_metrics(&["orchestratorm8_results_stale_total 5"]);
    // The stage b job was published once only.
    h.engine.dispatch().await.unwrap();
    assert_eq!(h.take_jobs("b").len(), 1);
}

#[tokio::test]
async fn malformed_results_are_dead_lettered_with_a_reason_and_counted() {
    let h = Harness::new(chain()).await;
    for (key, body) in [
        ("cptm8.orchestratorm8.a.completed", b"{not json".to_vec()),
        ("cptm8.orchestratorm8.a.exploded", b"{}".to_vec()),
    ] {
        match h.deliver(key, body).await {
            Settlement::DeadLetter(reason) => assert!(!reason.is_empty()),
            other => panic!("{key}: {other:?}"),
        }
    }
    h.assert_metrics(&["orchestratorm8_messages_dead_lettered_total 2"]);
}

#[tokio::test]
async fn a_failed_attempt_is_retried_after_its_backoff() {
    let h = Harness::new(chain()).await;
    let job = h.start_one().await;
    assert_eq!(h.report(&job, StageOutcome::Failed).await, Settlement::Ack);
    assert_eq!(
        stage_a(&h, job.workflow_id).await,
        (StageStatus::Pending, 1)
    );
    // A reported failure is a retry, not a time-out.
    h.assert_metrics(&["orchestratorm8_stage_retries_total{stage=\"a\"} 1"]);
    h.assert_no_metric("orchestratorm8_stage_timeouts_total{stage=\"a\"} 1");
    // Backoff initial 10 s with equal jitter: due in [5 s, 10 s].
    assert_eq!(h.engine.dispatch().await.unwrap().published, 0);
    h.advance(Duration::from_millis(4_900));
    assert_eq!(h.engine.dispatch().await.unwrap().published, 0);
    h.advance(Duration::from_millis(5_200));
    assert_eq!(h.engine.dispatch().await.unwrap().published, 1);
    let retry = h.take_jobs("a").remove(0);
    assert_eq!(retry.attempt, 2);
    assert_eq!(retry.workflow_id, job.workflow_id);
    // A late report of attempt 1 is stale now.
    complete_acked(&h, &job, (StageStatus::Running, 2)).await;
    h.report(&retry, StageOutcome::Completed).await;
    h.engine.dispatch().await.unwrap();
    assert_eq!(h.take_jobs("b").len(), 1);
}

/// The sweep reads timed-out attempts 500 at a time: 501 take two pages, in one sweep.
#[tokio::test]
async fn one_sweep_expires_more_than_a_page_of_timed_out_attempts() {
    let mut s = chain();
    s.workflow.stages[0].timeout = Duration::from_secs(30);
    let h = Harness::new(s).await;
    h.add_domains(501).await;
    h.engine.start_workflows().await.unwrap();
    h.engine.dispatch().await.unwrap();
    assert_eq!(h.take_jobs("a").len(), 501);
    h.advance(Duration::from_secs(31));
    assert_eq!(h.engine.expire_timeouts().await.unwrap(), 501);
    assert_eq!(h.engine.expire_timeouts().await.unwrap(), 0);
}

#[tokio::test]
async fn timeouts_retry_then_fail_the_workflow_with_a_notification() {
    let mut s = chain();
    s.workflow.stages[0].max_attempts = 2;
    s.workflow.stages[0].timeout = Duration::from_secs(30);
    let h = Harness::new(s).await;
    let job = h.start_one().await;

    h.advance(Duration::from_secs(30));
    assert_eq!(
        h.engine.expire_timeouts().await.unwrap(),
        0,
        "deadline not passed yet"
    );
    h.advance(Duration::from_secs(1));
    assert_eq!(h.engine.expire_timeouts().await.unwrap(), 1);
    assert_eq!(
        stage_a(&h, job.workflow_id).await,
        (StageStatus::Pending, 1)
    );
    h.advance(Duration::from_secs(10));
    assert_eq!(h.engine.dispatch().await.unwrap().published, 1);
    assert_eq!(h.take_jobs("a")[0].attempt, 2);

    h.advance(Duration::from_secs(31));
    assert_eq!(h.engine.expire_timeouts().await.unwrap(), 1);
    let v = h.wf(job.workflow_id).await.unwrap();
    assert_eq!(v.status, WorkflowStatus::Failed);
    assert_eq!(stage_status(&v, "a"), (StageStatus::Failed, 2));
    assert_eq!(stage_status(&v, "b"), (StageStatus::Cancelled, 0));
    let n = h.notifications(NOTIFY_FAILED_KEY).await;
    assert_eq!(n.len(), 1);
    assert_eq!(n[0].kind, NotificationEvent::SystemError);
    assert!(
        n[0].message.contains("timed out") && n[0].message.contains("attempt 2"),
        "{}",
        n[0].message
    );
    // Nothing left to do, and the domain may get a new workflow.
    assert_eq!(h.engine.expire_timeouts().await.unwrap(), 0);
    assert_eq!(h.engine.dispatch().await.unwrap().published, 0);
    assert_eq!(h.engine.start_workflows().await.unwrap(), 1);
    h.assert_metrics(&[
        "orchestratorm8_stage_timeouts_total{stage=\"a\"} 2",
        "orchestratorm8_workflows_failed_total 1",
    ]);
}

#[tokio::test]
async fn reported_failures_exhaust_max_attempts() {
    let mut s = chain();
    s.workflow.stages[1].max_attempts = 1;
    let h = Harness::new(s).await;
    let a = h.start_one().await;
    h.report(&a, StageOutcome::Completed).await;
    h.engine.dispatch().await.unwrap();
    let b = h.take_jobs("b").remove(0);
    h.report(&b, StageOutcome::Failed).await;
    let v = h.wf(a.workflow_id).await.unwrap();
    assert_eq!(v.status, WorkflowStatus::Failed);
    let n = h.notifications(NOTIFY_FAILED_KEY).await;
    assert_eq!(n.len(), 1);
    assert!(n[0].message.contains("stage b"), "{}", n[0].message);
}

#[tokio::test]
async fn a_full_stage_queue_keeps_work_pending_and_drains_without_busy_looping() {
    let h = Harness::new(chain_with_a_bounded()).await;
    h.add_domains(4).await;
    h.create_unclaimed().await;
    let r = h.engine.dispatch().await.unwrap();
    assert_eq!(
        (r.published, r.refused),
        (1, 2),
        "1 accepted, the rest of the batch refused"
    );
    let paused = h
        .engine
        .paused_until("a", h.clock_now())
        .expect("stage a paused");
    assert_eq!(paused - h.clock_now(), chrono::Duration::seconds(1));
    // While paused nothing is claimed or published (no busy loop of nacks).
    assert_eq!(h.engine.dispatch().await.unwrap(), Default::default());
    // Still full after the pause: refused again, pause doubles.
    h.advance(Duration::from_secs(1));
    let r = h.engine.dispatch().await.unwrap();
    assert_eq!(
        (r.published, r.refused),
        (0, 1),
        "the batch shrank to what the queue took"
    );
    assert_eq!(
        h.engine.paused_until("a", h.clock_now()).unwrap() - h.clock_now(),
        chrono::Duration::seconds(2)
    );
    // Every workflow is still there, stage a pending (never lost).
    let pending = h
        .wfs()
        .await
        .unwrap()
        .into_iter()
        .filter(|v| stage_status(v, "a").0 == StageStatus::Pending)
        .count();
    assert_eq!(pending, 3);
    // A worker takes the job and reports: room again, published at once.
    drain_a(&h, 4, 20).await;
    h.assert_metrics(&["orchestratorm8_stage_publish_nacks_total{stage=\"a\"}"]);
}

#[tokio::test]
async fn unroutable_jobs_stay_pending_and_are_published_once_a_queue_is_bound() {
    let mut s = chain();
    s.workflow.stages[0].routing_key = "cptm8.unbound.get.scan".into();
    let h = Harness::new(s).await;
    h.add_domain("example.com").await;
    h.create_unclaimed().await;
    let r = h.engine.dispatch().await.unwrap();
    assert_eq!((r.published, r.refused), (0, 1));
    let v = &h.wfs().await.unwrap()[0];
    assert_eq!(stage_status(v, "a"), (StageStatus::Pending, 0));
    h.broker
        .declare(&amqp8::Topology {
            bindings: vec![amqp8::BindingDecl {
                exchange: "cptm8".into(),
                queue: q("a"),
                routing_key: "cptm8.unbound.#".into(),
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    h.advance(Duration::from_secs(1));
    assert_eq!(h.engine.dispatch().await.unwrap().published, 1);
    h.assert_metrics(&["orchestratorm8_stage_publish_unroutable_total{stage=\"a\"} 1"]);
}

#[tokio::test]
async fn a_broker_outage_leaves_claimed_work_pending() {
    let h = Harness::new(chain()).await;
    h.add_domain("example.com").await;
    h.create_unclaimed().await;
    h.broker.set_outage(true);
    let e = h.engine.dispatch().await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    let v = &h.wfs().await.unwrap()[0];
    assert_eq!(stage_status(v, "a"), (StageStatus::Pending, 0));
    h.broker.set_outage(false);
    h.advance(Duration::from_secs(1));
    // Released at once (not left to the claim lease).
    assert_eq!(h.engine.dispatch().await.unwrap().published, 1);
}

#[tokio::test]
async fn pause_resume_and_cancel() {
    let h = Harness::new(chain()).await;
    h.add_domain("a.example.com").await;
    h.add_domain("b.example.com").await;
    h.create_unclaimed().await;
    let all = h.wfs().await.unwrap();
    let (w1, w2) = (all[0].id, all[1].id);
    let now = h.clock_now();
    WorkflowRepository::pause(&h.store, w1, now).await.unwrap();
    assert_eq!(h.engine.dispatch().await.unwrap().published, 1);
    let jobs = h.take_jobs("a");
    assert_eq!(jobs[0].workflow_id, w2, "the paused workflow got no job");
    assert_eq!(h.engine.dispatch().await.unwrap().published, 0);
    // Resuming through the waking repository wakes the dispatcher.
    let repo = crate::waking::WakingWorkflows {
        engine: h.engine.clone(),
    };
    crate::http::WorkflowApi::resume(&repo, w1, now)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), h.engine.dispatch_wake.notified())
        .await
        .expect("resume wakes the dispatcher");
    assert_eq!(h.engine.dispatch().await.unwrap().published, 1);
    assert_eq!(h.take_jobs("a")[0].workflow_id, w1);
    // Pausing a running workflow: its running stage's result still applies, but no
    // new stage is published until it is resumed.
    WorkflowRepository::pause(&h.store, w2, now).await.unwrap();
    h.report(&jobs[0], StageOutcome::Completed).await;
    assert_eq!(h.engine.dispatch().await.unwrap().published, 0);
    WorkflowRepository::resume(&h.store, w2, now).await.unwrap();
    assert_eq!(h.engine.dispatch().await.unwrap().published, 1);
    let b = h.take_jobs("b").remove(0);
    // Cancel: the running stage's later report changes nothing; nothing is published.
    crate::http::WorkflowApi::cancel(&repo, w2, now)
        .await
        .unwrap();
    assert_eq!(h.report(&b, StageOutcome::Completed).await, Settlement::Ack);
    let v = h.wf(w2).await.unwrap();
    assert_eq!(v.status, WorkflowStatus::Cancelled);
    assert_eq!(h.engine.dispatch().await.unwrap().published, 0);
    assert!(h.notifications(NOTIFY_COMPLETED_KEY).await.is_empty());
}

#[tokio::test]
async fn max_in_flight_limits_jobs_out_at_once() {
    let mut s = chain();
    s.workflow.stages[0].max_in_flight = 2;
    let h = Harness::new(s).await;
    h.add_domains(5).await;
    h.engine.start_workflows().await.unwrap();
    assert_eq!(h.engine.dispatch().await.unwrap().published, 2);
    assert_eq!(h.engine.dispatch().await.unwrap().published, 0);
    let jobs = h.take_jobs("a");
    h.report(&jobs[0], StageOutcome::Completed).await;
    // One slot freed on a; stage b of that workflow is unlimited.
    let r = h.engine.dispatch().await.unwrap();
    assert_eq!(r.published, 2);
    assert_eq!(h.take_jobs("a").len(), 1);
    assert_eq!(h.take_jobs("b").len(), 1);
    // Raising the limit live applies at the next round.
    let r = h.update(|s| s.workflow.stages[0].max_in_flight = 0);
    assert_eq!(r.live, ["Workflow.stages.a.max_in_flight"]);
    assert!(!r.needs_restart(), "{r:?}");
    assert_eq!(h.engine.dispatch().await.unwrap().published, 2);
}

#[tokio::test]
async fn rescan_after_is_a_cool_down_per_domain() {
    let mut s = managed(vec![stage("a", &[])]);
    s.workflow.rescan_after = Duration::from_secs(3600);
    let h = Harness::new(s).await;
    h.add_domain("example.com").await;
    assert_eq!(h.engine.start_workflows().await.unwrap(), 1);
    h.engine.dispatch().await.unwrap();
    let job = h.take_jobs("a").remove(0);
    h.report(&job, StageOutcome::Completed).await;
    assert_eq!(
        h.wf(job.workflow_id).await.unwrap().status,
        WorkflowStatus::Completed
    );
    h.advance(Duration::from_secs(3599));
    assert_eq!(
        h.engine.start_workflows().await.unwrap(),
        0,
        "still cooling down"
    );
    h.advance(Duration::from_secs(1));
    assert_eq!(h.engine.start_workflows().await.unwrap(), 1);
    // A live change of rescan_after applies.
    h.engine.dispatch().await.unwrap();
    let job = h.take_jobs("a").remove(0);
    h.report(&job, StageOutcome::Completed).await;
    let r = h.update(|s| s.workflow.rescan_after = Duration::ZERO);
    assert_eq!(r.live, ["Workflow.rescan_after"]);
    assert!(!r.needs_restart(), "{r:?}");
    assert_eq!(h.engine.start_workflows().await.unwrap(), 1);
}

#[tokio::test]
async fn per_cycle_runs_one_workflow_over_every_enabled_domain() {
    let mut s = managed(vec![stage("a", &[])]);
    s.workflow.granularity = Granularity::PerCycle;
    s.workflow.rescan_after = Duration::from_secs(60);
    let h = Harness::new(s).await;
    assert_eq!(
        h.engine.start_workflows().await.unwrap(),
        0,
        "no domain, no cycle"
    );
    h.add_domains(4).await;
    assert_eq!(h.engine.start_workflows().await.unwrap(), 1);
    assert_eq!(
        h.engine.start_workflows().await.unwrap(),
        0,
        "one cycle at a time"
    );
    h.engine.dispatch().await.unwrap();
    let jobs = h.take_jobs("a");
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].domains.len(), 4);
    h.report(&jobs[0], StageOutcome::Completed).await;
    assert_eq!(h.engine.start_workflows().await.unwrap(), 0, "cool-down");
    h.advance(Duration::from_secs(60));
    assert_eq!(h.engine.start_workflows().await.unwrap(), 1);
}

#[tokio::test]
async fn a_standby_neither_starts_nor_publishes_and_leadership_loss_stops_publishing() {
    let h = Harness::new(chain()).await;
    h.add_domain("a.example.com").await;
    h.role.send_replace(Role::Standby);
    assert_eq!(h.engine.start_workflows().await.unwrap(), 0);
    h.role.send_replace(Role::Leader);
    assert_eq!(h.engine.start_workflows().await.unwrap(), 1);
    assert_eq!(h.broker.published().len(), 1, "published as created");
    // Work that is due (created elsewhere) is not published by a standby.
    h.add_domain("b.example.com").await;
    h.create_unclaimed().await;
    h.role.send_replace(Role::Standby);
    assert_eq!(h.engine.dispatch().await.unwrap().published, 0);
    assert_eq!(h.engine.expire_timeouts().await.unwrap(), 0);
    assert_eq!(h.broker.published().len(), 1);
    // Back to leader: the work is still there.
    h.role.send_replace(Role::Leader);
    assert_eq!(h.engine.dispatch().await.unwrap().published, 1);
}

#[tokio::test]
async fn scan_now_creates_workflows_on_request() {
    use crate::scan_now::ScanNowError;
    let h = Harness::new(chain()).await;
    let [d1, d2, off] = add_two_enabled_and_one_disabled(&h).await;

    let e = h
        .engine
        .scan(Some(vec![uuid::Uuid::new_v4()]))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ScanNowError::Invalid(ref m) if m.contains("unknown domain id")),
        "{e}"
    );
    let e = h.engine.scan(Some(vec![off.id])).await.unwrap_err();
    assert!(
        matches!(e, ScanNowError::Invalid(ref m) if m.contains("disabled")),
        "{e}"
    );

    let views = h.engine.scan(Some(vec![d1.id])).await.unwrap();
    assert_eq!(views.len(), 1);
    assert_eq!(views[0].domains, ["a.example.com"]);
    assert_eq!(views[0].status, WorkflowStatus::Pending);
    assert_eq!(
        h.wf(views[0].id).await.unwrap(),
        views[0],
        "the view is what the store holds"
    );
    // d1 is busy: only d2 gets one.
    let views = h.engine.scan(None).await.unwrap();
    assert_eq!(views.len(), 1);
    assert_eq!(views[0].domains, ["b.example.com"]);
    // Its first stage was claimed as it was created: the view says so, as the store
    // did then (it is running by now: published before the scan answered).
    assert_eq!(
        (views[0].stages[0].status, views[0].stages[0].attempt),
        (model8::StageStatus::Dispatched, 1)
    );
    assert!(h.engine.scan(Some(vec![d2.id])).await.unwrap().is_empty());
    // d2's job went out as its workflow was created (a per_domain scan of every
    // idle domain creates like the scheduler); d1's (a scan of chosen domains) is
    // the dispatcher's.
    assert_eq!(h.engine.dispatch().await.unwrap().published, 1);
    assert_eq!(h.take_jobs("a").len(), 2);

    h.role.send_replace(Role::Standby);
    assert!(matches!(
        h.engine.scan(None).await,
        Err(ScanNowError::NotLeader)
    ));
    let mut boot = chain();
    boot.scheduler.mode = config8::SchedulerMode::Bootstrap;
    let h = Harness::new(boot).await;
    h.add_domain("d.example.com").await;
    assert!(matches!(
        h.engine.scan(None).await,
        Err(ScanNowError::Invalid(_))
    ));
}

#[tokio::test]
async fn scan_now_ignores_the_cool_down() {
    let mut s = managed(vec![stage("a", &[])]);
    s.workflow.rescan_after = Duration::from_secs(3600);
    let h = Harness::new(s).await;
    let job = h.start_one().await;
    h.report(&job, StageOutcome::Completed).await;
    assert_eq!(h.engine.start_workflows().await.unwrap(), 0);
    assert_eq!(h.engine.scan(None).await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_unavailable_database_returns_the_result_to_the_queue() {
    let h = Harness::new(chain()).await;
    let job = h.start_one().await;
    h.store.set_available(false);
    assert_eq!(
        h.report(&job, StageOutcome::Completed).await,
        Settlement::Nack { requeue: true }
    );
    h.store.set_available(true);
    // The redelivery applies.
    complete_acked(&h, &job, (StageStatus::Completed, 1)).await;
}

#[tokio::test]
async fn live_settings_apply_to_the_next_publish() {
    let h = Harness::new(chain()).await;
    h.add_domain("example.com").await;
    h.create_unclaimed().await;
    let r = h.update(|s| {
        s.workflow.stages[0].timeout = Duration::from_secs(5);
        s.workflow.stages[0].max_attempts = 1;
    });
    assert_eq!(
        r.live,
        [
            "Workflow.stages.a.timeout",
            "Workflow.stages.a.max_attempts"
        ]
    );
    assert!(!r.needs_restart(), "{r:?}");
    assert_eq!(h.engine.dispatch().await.unwrap().published, 1);
    h.advance(Duration::from_secs(6));
    assert_eq!(
        h.engine.expire_timeouts().await.unwrap(),
        1,
        "the new timeout applied"
    );
    let v = &h.wfs().await.unwrap()[0];
    assert_eq!(
        v.status,
        WorkflowStatus::Failed,
        "the new max_attempts applied"
    );
}

#[tokio::test]
async fn pipeline_structure_changes_wait_for_a_restart() {
    // Stage names, dependencies, exchanges and routing keys need a restart (the
    // topology is declared at start); a live edit of them changes nothing.
    let h = Harness::new(chain()).await;
    h.add_domain("example.com").await;
    let r = h.update(|s| {
        s.workflow.stages = vec![stage("a", &[])];
        s.workflow.stages[0].routing_key = "cptm8.elsewhere".into();
    });
    assert_eq!(
        r.restart_required,
        [
            "Workflow.stages.b",
            "Workflow.stages.c",
            "Workflow.stages.a.routing_key"
        ]
    );
    assert!(r.live.is_empty(), "{r:?}");
    h.engine.start_workflows().await.unwrap();
    let names: Vec<_> = h.wfs().await.unwrap()[0]
        .stages
        .iter()
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(names, ["a", "b", "c"]);
    h.engine.dispatch().await.unwrap();
    let a = h.take_jobs("a").remove(0);
    complete_then_publish(&h, &a, "b").await;
}

#[tokio::test]
async fn a_restarted_engine_resumes_in_flight_workflows() {
    let h = Harness::new(chain()).await;
    h.add_domain("a.example.com").await;
    h.add_domain("b.example.com").await;
    h.engine.start_workflows().await.unwrap();
    h.engine.dispatch().await.unwrap();
    let jobs = h.take_jobs("a");
    // A crash between claim and publish: claims held by the dead process.
    h.add_domain("c.example.com").await;
    let claimed = create_and_claim(&h, uuid::Uuid::new_v4()).await;
    assert_eq!(claimed.len(), 1);

    // A new process over the same database.
    let h2 = Harness::with_store(chain(), h.store.clone(), h.clock.clone()).await;
    // Results of attempts the old process published apply.
    assert_eq!(
        h2.report(&jobs[0], StageOutcome::Completed).await,
        Settlement::Ack
    );
    assert_eq!(
        h2.engine.dispatch().await.unwrap().published,
        1,
        "stage b of the first"
    );
    // The dead process's claim expires after its lease.
    h2.advance(Duration::from_secs(61));
    assert_eq!(h2.engine.dispatch().await.unwrap().published, 1);
    assert_eq!(h2.take_jobs("a")[0].workflow_id, claimed[0].key.workflow_id);
    // Running stages keep their deadlines (60 s after their publish): the second
    // workflow's stage a (published by the old process) and the first's stage b.
    assert_eq!(h2.engine.expire_timeouts().await.unwrap(), 2);
    assert_eq!(h2.engine.expire_timeouts().await.unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_result_that_beats_the_record_of_its_job_is_applied() {
    let h = Harness::new(chain()).await;
    h.add_domain("example.com").await;
    // The dispatcher's claim and publish happened; its record is late.
    let key = create_and_claim(&h, h.engine.owner).await[0].key.clone();
    let now = h.clock_now();
    let record = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        h.store
            .mark_running(
                std::slice::from_ref(&key),
                h.engine.owner,
                now,
                now + chrono::Duration::seconds(60),
            )
            .await
            .unwrap()
    };
    let (settled, marked) = tokio::join!(
        h.report_raw("a", key.workflow_id, 1, StageOutcome::Completed),
        record
    );
    // The result applied to the dispatched attempt at once; the late record then
    // finds it completed and changes nothing.
    assert_eq!(marked, 0);
    assert_eq!(settled, Settlement::Ack);
    assert_applied_not_stale(&h, key.workflow_id).await;
}

#[tokio::test(start_paused = true)]
async fn a_result_whose_job_is_recorded_just_after_it_was_found_stale_is_applied() {
    // The window fault_fast_worker found: the result's transaction sees the stage still
    // pending (stale), then the publisher's record commits, then the engine looks at the
    // workflow to decide whether to wait. It sees `running` at the reported attempt:
    // the result must be applied, not dropped as a duplicate.
    let store = db8::MemoryStore::new();
    let failing = std::sync::Arc::new(crate::testkit::FailingResults::new(store.clone()));
    let h =
        Harness::with_workflows(chain(), crate::testkit::tuning(), store, failing.clone()).await;
    h.add_domain("example.com").await;
    let key = create_and_claim(&h, h.engine.owner).await[0].key.clone();
    let now = h.clock_now();
    failing.record_before_next_get(
        key.clone(),
        h.engine.owner,
        now,
        now + chrono::Duration::seconds(60),
    );
    let started = tokio::time::Instant::now();
    assert_eq!(
        h.report_raw("a", key.workflow_id, 1, StageOutcome::Completed)
            .await,
        Settlement::Ack
    );
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "applied at once, no wait"
    );
    assert_applied_not_stale(&h, key.workflow_id).await;
}

#[tokio::test(start_paused = true)]
async fn a_result_for_a_job_never_recorded_applies_at_once() {
    // Before issue 17 the result waited for the record (up to the claim lease) and was
    // stale if none came; the attempt is now `dispatched`, which a result moves at once.
    let h = Harness::new(chain()).await;
    h.add_domain("example.com").await;
    let claimed = create_and_claim(&h, h.engine.owner).await;
    let id = claimed[0].key.workflow_id;
    assert_eq!(stage_a(&h, id).await, (StageStatus::Dispatched, 1));
    let started = tokio::time::Instant::now();
    let settled = h.report_raw("a", id, 1, StageOutcome::Completed).await;
    assert_eq!(settled, Settlement::Ack);
    assert_eq!(started.elapsed(), Duration::ZERO, "no wait for the record");
    assert_applied_not_stale(&h, id).await;
    // A duplicate is stale.
    h.report_raw("a", id, 1, StageOutcome::Completed).await;
    h.assert_metrics(&["orchestratorm8_results_stale_total 1"]);
}

#[tokio::test]
async fn a_full_queue_while_creating_gives_the_claims_back_and_the_dispatcher_drains_the_rest() {
    let h = Harness::new(chain_with_a_bounded()).await;
    h.add_domains(7).await;
    // Every workflow is created; the first batch went out claimed, the queue took one
    // job and refused the rest, which were given back; the stage is paused, so the
    // later batches were created without claims.
    assert_eq!(h.engine.start_workflows().await.unwrap(), 7);
    let sent = h.broker.published();
    assert_eq!(confirmed(&h.broker, &rk("a")), 1);
    assert!(
        sent.iter()
            .filter(|(_, o)| *o == amqp8::PublishOutcome::Nacked)
            .count()
            >= 2,
        "{sent:?}"
    );
    assert!(h.engine.paused_until("a", h.clock_now()).is_some());
    assert_eq!(
        h.store.in_flight_counts(h.clock_now()).await.unwrap(),
        std::collections::HashMap::from([("a".to_string(), 1)]),
        "no claim left behind, only the job in the queue"
    );
    let pending = h
        .wfs()
        .await
        .unwrap()
        .into_iter()
        .filter(|v| stage_status(v, "a") == (StageStatus::Pending, 0))
        .count();
    assert_eq!(pending, 6);
    // A worker drains the queue; each result makes room for the next job.
    drain_a(&h, 7, 30).await;
}

#[tokio::test]
async fn a_broker_outage_while_creating_leaves_the_new_work_pending() {
    let h = Harness::new(chain()).await;
    h.add_domain("a.example.com").await;
    h.add_domain("b.example.com").await;
    h.broker.set_outage(true);
    // The workflows are created (the check itself succeeds); their claims are given
    // back at once and the stage is paused, not retried in a loop.
    assert_eq!(h.engine.start_workflows().await.unwrap(), 2);
    assert!(h.engine.paused_until("a", h.clock_now()).is_some());
    assert!(
        h.store
            .in_flight_counts(h.clock_now())
            .await
            .unwrap()
            .is_empty()
    );
    for v in h.wfs().await.unwrap() {
        assert_eq!(stage_status(&v, "a"), (StageStatus::Pending, 0));
    }
    h.broker.set_outage(false);
    h.advance(Duration::from_secs(1));
    assert_eq!(h.engine.dispatch().await.unwrap().published, 2);
    assert_eq!(h.take_jobs("a").len(), 2);
}

/// A harness whose result transitions fail with a database error (a full disk) as
/// armed, patient for `patience` with a failing database.
async fn with_failing_results(
    patience: Duration,
) -> (
    Harness,
    std::sync::Arc<crate::testkit::FailingResults>,
    StageJob,
) {
    let store = db8::MemoryStore::new();
    let failing = std::sync::Arc::new(crate::testkit::FailingResults::new(store.clone()));
    let tuning = crate::tuning::Tuning {
        db_outage_patience: patience,
        ..crate::testkit::tuning()
    };
    let h = Harness::with_workflows(chain(), tuning, store, failing.clone()).await;
    h.add_domain("example.com").await;
    h.engine.start_workflows().await.unwrap();
    let job = h.take_jobs("a").remove(0);
    (h, failing, job)
}

/// The gaps between successive calls.
fn gaps(calls: &[tokio::time::Instant]) -> Vec<Duration> {
    calls.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test(start_paused = true)]
async fn a_database_error_holds_the_result_and_retries_with_backoff_until_it_applies() {
    let (h, failing, job) = with_failing_results(Duration::from_secs(600)).await;
    failing.fail(4);
    assert_eq!(
        h.report(&job, StageOutcome::Completed).await,
        Settlement::Ack
    );
    // Tried at once, then after 1 s, 2 s, 4 s and 8 s: applied at the fifth try,
    // never returned to the queue meanwhile.
    let calls = failing.calls();
    assert_eq!(
        gaps(&calls),
        [1, 2, 4, 8].map(Duration::from_secs),
        "{calls:?}"
    );
    assert_eq!(
        stage_a(&h, job.workflow_id).await,
        (StageStatus::Completed, 1)
    );
    // Stage b was published once the result applied.
    h.engine.dispatch().await.unwrap();
    assert_eq!(h.take_jobs("b").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_database_error_past_the_patience_returns_the_result_after_the_backoff_not_at_once() {
    let (h, failing, job) = with_failing_results(Duration::from_secs(40)).await;
    failing.fail(u32::MAX);
    let started = tokio::time::Instant::now();
    assert_eq!(
        h.report(&job, StageOutcome::Completed).await,
        Settlement::Nack { requeue: true }
    );
    // Held for the whole patience (40 s), retried 1, 2, 4, 8, 16 s apart, then once
    // more at the end: no busy loop, and a redelivery limit of 20 is 20 x 40 s away.
    assert_eq!(started.elapsed(), Duration::from_secs(40));
    let calls = failing.calls();
    assert_eq!(
        gaps(&calls),
        [1, 2, 4, 8, 16, 9].map(Duration::from_secs),
        "{calls:?}"
    );
    // The redelivery applies once the database has recovered: nothing was lost.
    failing.fail(0);
    complete_acked(&h, &job, (StageStatus::Completed, 1)).await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_returns_a_held_result_at_once() {
    let (h, failing, job) = with_failing_results(Duration::from_secs(600)).await;
    failing.fail(u32::MAX);
    let started = tokio::time::Instant::now();
    let stop = async {
        // During the second wait (1 s to 3 s after the delivery).
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        h.shutdown.cancel();
    };
    let (settled, ()) = tokio::join!(h.report(&job, StageOutcome::Completed), stop);
    assert_eq!(settled, Settlement::Nack { requeue: true });
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(1_500),
        "returned when the shutdown began, not at the next try"
    );
    assert_eq!(failing.calls().len(), 2);
}

#[tokio::test]
async fn a_later_due_time_does_not_wake_the_dispatcher_again() {
    use futures::FutureExt;
    let w = crate::engine::Wake::default();
    let t = crate::testkit::t0();
    w.at(t + chrono::Duration::seconds(60));
    assert!(
        w.notified().now_or_never().is_some(),
        "the first time wakes"
    );
    w.at(t + chrono::Duration::seconds(61));
    assert!(
        w.notified().now_or_never().is_none(),
        "a later one is picked up when the loop goes to sleep"
    );
    assert_eq!(w.next_after(t), Some(t + chrono::Duration::seconds(60)));
    w.at(t + chrono::Duration::seconds(5));
    assert!(
        w.notified().now_or_never().is_some(),
        "an earlier one wakes"
    );
}
