//! The outbox on the in-memory store and broker: notifications written with their
//! transition, relayed with confirms, retried while the broker is away or nacks, and
//! published again (same `message_id`) after a relay died before deleting.

use std::time::Duration;

use amqp8::Broker;
use db8::StageKey;
use model8::{StageJob, StageOutcome};

use crate::outbox::{message_of, relay_due};
use crate::testkit::{Harness, NOTIFY_QUEUE, chain, q};
use crate::topology::NOTIFY_COMPLETED_KEY;

/// Runs the workflow of `example.com` through stages a, b, c: completed.
async fn complete_a_workflow(h: &Harness) -> StageJob {
    let a = h.start_one().await;
    h.report(&a, StageOutcome::Completed).await;
    for name in ["b", "c"] {
        h.engine.dispatch().await.unwrap();
        let job = h.take_jobs(name).remove(0);
        h.report(&job, StageOutcome::Completed).await;
    }
    a
}

async fn depth(h: &Harness) -> u64 {
    h.engine.outbox.outbox_stats().await.unwrap().depth
}

#[tokio::test]
async fn the_notification_is_written_with_the_transition_and_waits_while_the_broker_is_away() {
    let h = Harness::new(chain()).await;
    // The broker goes away between the transition and the publish.
    h.broker.set_outage(true);
    complete_a_workflow_with_broker_away(&h).await;
    assert_eq!(depth(&h).await, 1, "the notification is in the outbox");
    relay_due(&h.engine).await;
    relay_due(&h.engine).await;
    assert_eq!(depth(&h).await, 1, "kept while the broker is away");
    h.assert_metrics(&["orchestratorm8_outbox_relay_failures_total{outcome=\"broker_away\"} 1"]);
    h.broker.set_outage(false);
    // Released with a backoff: due again a second later.
    h.advance(Duration::from_secs(1));
    let n = h.notifications(NOTIFY_COMPLETED_KEY).await;
    assert_eq!(n.len(), 1);
    assert_eq!(depth(&h).await, 0, "deleted once confirmed");
    h.assert_metrics(&["orchestratorm8_outbox_relayed_total{outcome=\"confirmed\"} 1"]);
}

/// [`complete_a_workflow`] with the broker down for the notification only: the jobs
/// are published before the outage starts.
async fn complete_a_workflow_with_broker_away(h: &Harness) {
    h.broker.set_outage(false);
    let a = h.start_one().await;
    h.report(&a, StageOutcome::Completed).await;
    h.engine.dispatch().await.unwrap();
    let b = h.take_jobs("b").remove(0);
    h.report(&b, StageOutcome::Completed).await;
    h.engine.dispatch().await.unwrap();
    let c = h.take_jobs("c").remove(0);
    h.broker.set_outage(true);
    h.report(&c, StageOutcome::Completed).await;
}

#[tokio::test]
async fn a_relay_killed_before_deleting_is_followed_by_a_copy_with_the_same_message_id() {
    let h = Harness::new(chain()).await;
    complete_a_workflow(&h).await;
    // A relay claims the row, publishes it, and dies before deleting it.
    let dead = uuid::Uuid::new_v4();
    let rows = h
        .engine
        .outbox
        .outbox_claim(dead, h.engine.now(), h.engine.tuning.outbox_lease, 10)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    h.broker
        .publish(message_of(&rows[0]).unwrap())
        .await
        .unwrap();
    // Its claim holds for the lease: nobody publishes it meanwhile.
    relay_due(&h.engine).await;
    assert_eq!(h.broker.messages_in(NOTIFY_QUEUE).len(), 1);
    h.advance(h.engine.tuning.outbox_lease);
    relay_due(&h.engine).await;
    let copies = h.broker.messages_in(NOTIFY_QUEUE);
    assert_eq!(copies.len(), 2, "at least once: published again");
    assert_eq!(copies[0].message_id, rows[0].id.to_string());
    assert_eq!(copies[0].message_id, copies[1].message_id);
    assert_eq!(copies[0].body, copies[1].body, "the same body, too");
    assert_eq!(depth(&h).await, 0);
}

#[tokio::test]
async fn a_nacked_notification_is_retried_after_its_backoff() {
    let h = Harness::new(chain()).await;
    complete_a_workflow(&h).await;
    h.broker.nack_next_publishes(1);
    relay_due(&h.engine).await;
    assert!(h.broker.messages_in(NOTIFY_QUEUE).is_empty());
    relay_due(&h.engine).await;
    assert!(
        h.broker.messages_in(NOTIFY_QUEUE).is_empty(),
        "not before its backoff"
    );
    h.advance(Duration::from_secs(1));
    assert_eq!(h.notifications(NOTIFY_COMPLETED_KEY).await.len(), 1);
    h.assert_metrics(&["orchestratorm8_outbox_relay_failures_total{outcome=\"nacked\"} 1"]);
}

#[tokio::test]
async fn the_gauges_show_depth_and_age() {
    let h = Harness::new(chain()).await;
    complete_a_workflow(&h).await;
    h.broker.set_outage(true);
    h.advance(Duration::from_secs(7));
    crate::outbox::update_gauges(&h.engine, h.engine.outbox.as_ref()).await;
    h.assert_metrics(&[
        "orchestratorm8_outbox_depth 1",
        "orchestratorm8_outbox_oldest_age_seconds 7.0",
    ]);
}

#[tokio::test]
async fn a_stage_job_carries_the_message_id_of_its_attempt() {
    let h = Harness::new(chain()).await;
    h.add_domain("example.com").await;
    h.engine.start_workflows().await.unwrap();
    let m = h.broker.messages_in(&q("a")).remove(0);
    let job = h.take_jobs("a").remove(0);
    let key = StageKey {
        workflow_id: job.workflow_id,
        stage: "a".into(),
        attempt: 1,
    };
    assert_eq!(
        m.message_id,
        format!("job:{}:a:1", job.workflow_id),
        "documented in docs/AMQP.md"
    );
    assert_eq!(super::protocol::job_message_id(&key), m.message_id);
    // The next attempt is another message.
    let next = StageKey { attempt: 2, ..key };
    assert_ne!(super::protocol::job_message_id(&next), m.message_id);
}
