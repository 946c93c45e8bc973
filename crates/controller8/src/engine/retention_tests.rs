//! Retention in the engine (in-memory store, manual clock): what is deleted and when,
//! the counter, the leader-only rule, and `rescan_after` holding after the domain's
//! last workflow was pruned.

use std::time::Duration;

use model8::{StageOutcome, WorkflowStatus};

use crate::role::Role;
use crate::testkit::{Harness, managed, stage};

const DAY: Duration = Duration::from_secs(86_400);

#[tokio::test]
async fn finished_workflows_older_than_the_retention_go_and_the_cool_down_holds() {
    let mut s = managed(vec![stage("a", &[])]);
    s.workflow.retention = DAY;
    s.workflow.rescan_after = 3 * DAY;
    let h = Harness::new(s).await;
    h.add_domains(2).await;
    assert_eq!(h.engine.start_workflows().await.unwrap(), 2);
    let jobs = h.take_jobs("a");
    // One finishes now; the other stays running (active: never pruned).
    h.report(&jobs[0], StageOutcome::Completed).await;
    let done = jobs[0].workflow_id;
    assert_eq!(h.wf(done).await.unwrap().status, WorkflowStatus::Completed);

    // Not before the retention has passed (to the second).
    h.advance(DAY);
    assert_eq!(h.engine.prune().await.unwrap(), 0);
    h.advance(Duration::from_secs(1));
    // A standby prunes nothing.
    h.role.send_replace(Role::Standby);
    assert_eq!(h.engine.prune().await.unwrap(), 0);
    h.role.send_replace(Role::Leader);
    assert_eq!(h.engine.prune().await.unwrap(), 1);
    h.assert_metrics(&["orchestratorm8_workflows_pruned_total 1"]);
    assert!(h.wf(done).await.is_err(), "deleted");
    assert!(
        h.wf(jobs[1].workflow_id).await.is_ok(),
        "the active one stays"
    );

    // The domain is not rescanned before its cool-down ends (3 days after the end),
    // though its workflow is gone.
    assert_eq!(h.engine.start_workflows().await.unwrap(), 0);
    h.advance(2 * DAY - Duration::from_secs(2));
    assert_eq!(h.engine.start_workflows().await.unwrap(), 0);
    h.advance(Duration::from_secs(1));
    assert_eq!(h.engine.start_workflows().await.unwrap(), 1);
}

#[tokio::test]
async fn a_zero_retention_keeps_everything() {
    let mut s = managed(vec![stage("a", &[])]);
    s.workflow.retention = Duration::ZERO;
    let h = Harness::new(s).await;
    h.add_domain("example.com").await;
    h.engine.start_workflows().await.unwrap();
    let job = h.take_jobs("a").remove(0);
    h.report(&job, StageOutcome::Completed).await;
    h.advance(3650 * DAY);
    assert_eq!(h.engine.prune().await.unwrap(), 0);
    assert!(h.wf(job.workflow_id).await.is_ok());
    // A live change applies at the next pass.
    let r = h.update(|s| s.workflow.retention = DAY);
    assert_eq!(r.live, ["Workflow.retention"]);
    assert!(!r.needs_restart(), "{r:?}");
    assert_eq!(h.engine.prune().await.unwrap(), 1);
}
