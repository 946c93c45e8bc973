//! Chain stages (CONTRACT 3b) on the in-memory implementations: the Go kick-off, the
//! outcome table applied, matching to the one running attempt, unsolicited reports, the
//! error window, the implied in-flight limit and backpressure.

use std::time::Duration;

use amqp8::memory::{Settlement, TestAcker};
use amqp8::{Decision, Handler};
use config8::{Granularity, Settings, StageProtocol};
use model8::chain::report_routing_key;
use model8::{AmqpM8Message, StageStatus, WorkflowStatus};
use serde_json::json;

use crate::engine::error_feed::ErrorFeedHandler;
use crate::testkit::{Harness, bounded, managed, q, rk, section, stage};
use crate::topology::{NOTIFICATION_EXCHANGE, NOTIFY_COMPLETED_KEY, NOTIFY_FAILED_KEY};

/// asmm8 → naabum8, both chain, per cycle, behind Go-like queues (`x-max-length: 1`,
/// `reject-publish`).
fn platform(max_attempts: u32) -> Settings {
    let stages = [("asmm8", vec![]), ("naabum8", vec!["asmm8"])]
        .into_iter()
        .map(|(name, deps)| {
            let mut s = stage(name, &deps);
            s.protocol = StageProtocol::Chain;
            s.max_attempts = max_attempts;
            s
        })
        .collect();
    let mut s = managed(stages);
    s.workflow.granularity = Granularity::PerCycle;
    for name in ["asmm8", "naabum8"] {
        s.orchestrator
            .queues
            .insert(name.into(), section(name, &bounded(1)));
    }
    s
}

/// The scanner `stage` ends with `payload` (its `Publisher` message).
async fn report(h: &Harness, stage: &str, payload: Option<serde_json::Value>) -> Settlement {
    let body = AmqpM8Message::with_source(report_routing_key(stage), payload, stage)
        .to_vec()
        .unwrap();
    h.deliver(&report_routing_key(stage), body).await
}

/// An `app.error.high` notification from `source`, through the orchestrator's feed.
async fn platform_error(h: &Harness, source: &str, message: &str) {
    let n = model8::Notification8::platform(
        model8::NotificationEvent::SystemError,
        model8::Severity::High,
        message,
    );
    let body = AmqpM8Message::with_source("app.error.high", Some(n), source)
        .to_vec()
        .unwrap();
    let (mut d, _) = TestAcker::delivery(NOTIFICATION_EXCHANGE, "app.error.high", body);
    let handler = ErrorFeedHandler {
        engine: h.engine.clone(),
    };
    assert!(matches!(handler.handle(&mut d).await, Ok(Decision::Ack)));
}

/// Takes the kick-offs waiting in `stage`'s queue, checking each is the Go kick-off.
fn kickoffs(h: &Harness, stage: &str) -> usize {
    let got = h.broker.take(&q(stage));
    for m in &got {
        assert_eq!(m.routing_key, rk(stage));
        let env = AmqpM8Message::<serde_json::Value>::from_slice(&m.body).unwrap();
        assert_eq!((env.payload, env.source.as_str()), (None, "orchestratorm8"));
    }
    got.len()
}

async fn status_of(h: &Harness, name: &str) -> (WorkflowStatus, StageStatus, u32) {
    let w = h.wfs().await.unwrap().remove(0);
    let s = w.stages.iter().find(|s| s.name == name).unwrap();
    (w.status, s.status, s.attempt)
}

/// Starts the cycle; asmm8 has been kicked off once.
async fn started(max_attempts: u32) -> Harness {
    let h = Harness::new(platform(max_attempts)).await;
    h.add_domains(3).await;
    h.engine.start_workflows().await.unwrap();
    h.engine.dispatch().await.unwrap();
    assert_eq!(kickoffs(&h, "asmm8"), 1, "one kick-off for the whole cycle");
    assert_eq!(h.wfs().await.unwrap().len(), 1, "per_cycle: one workflow");
    h
}

#[tokio::test]
async fn a_cycle_runs_each_scanner_once_in_order() {
    let h = started(3).await;
    assert_eq!(kickoffs(&h, "naabum8"), 0, "naabum8 waits for asmm8");
    assert_eq!(
        report(
            &h,
            "asmm8",
            Some(json!({"status": "complete", "message": "ok"}))
        )
        .await,
        Settlement::Ack
    );
    assert_eq!(
        status_of(&h, "asmm8").await,
        (WorkflowStatus::Running, StageStatus::Completed, 1)
    );
    h.engine.dispatch().await.unwrap();
    assert_eq!(kickoffs(&h, "naabum8"), 1);
    assert_eq!(kickoffs(&h, "asmm8"), 0, "asmm8 is not kicked again");
    assert_eq!(
        report(
            &h,
            "naabum8",
            Some(json!({"status": "warning", "message": "nmap slow"}))
        )
        .await,
        Settlement::Ack
    );
    assert_eq!(
        status_of(&h, "naabum8").await,
        (WorkflowStatus::Completed, StageStatus::Completed, 1)
    );
    assert_eq!(h.notifications(NOTIFY_COMPLETED_KEY).await.len(), 1);
    h.engine.dispatch().await.unwrap();
    assert_eq!(kickoffs(&h, "asmm8") + kickoffs(&h, "naabum8"), 0);
}

#[tokio::test]
async fn a_report_while_none_runs_is_counted_and_changes_nothing() {
    let h = started(3).await;
    // naabum8 is waiting for asmm8: its report is nobody's.
    assert_eq!(
        report(
            &h,
            "naabum8",
            Some(json!({"status": "complete", "message": ""}))
        )
        .await,
        Settlement::Ack
    );
    assert_eq!(
        status_of(&h, "naabum8").await,
        (WorkflowStatus::Running, StageStatus::Waiting, 0)
    );
    assert_eq!(
        status_of(&h, "asmm8").await,
        (WorkflowStatus::Running, StageStatus::Running, 1)
    );
    h.assert_metrics(&["orchestratorm8_stage_reports_unsolicited_total{stage=\"naabum8\"} 1"]);
    // Only the unsolicited naabum8 report was sent: asmm8 counts none.
    h.assert_no_metric("orchestratorm8_stage_reports_unsolicited_total{stage=\"asmm8\"} 1");
    // A report of the wrong source, or an unknown status, is malformed.
    let body = AmqpM8Message::with_source(report_routing_key("asmm8"), None::<()>, "num8")
        .to_vec()
        .unwrap();
    assert!(matches!(
        h.deliver(&report_routing_key("asmm8"), body).await,
        Settlement::DeadLetter(_)
    ));
    assert!(matches!(
        report(&h, "asmm8", Some(json!({"status": "done"}))).await,
        Settlement::DeadLetter(_)
    ));
    assert_eq!(
        status_of(&h, "asmm8").await,
        (WorkflowStatus::Running, StageStatus::Running, 1)
    );
}

#[tokio::test]
async fn incomplete_fails_the_attempt_and_it_is_kicked_again_after_the_backoff() {
    let h = started(3).await;
    report(
        &h,
        "asmm8",
        Some(json!({"status": "incomplete", "message": "no ports"})),
    )
    .await;
    assert_eq!(
        status_of(&h, "asmm8").await,
        (WorkflowStatus::Running, StageStatus::Pending, 1)
    );
    h.engine.dispatch().await.unwrap();
    assert_eq!(kickoffs(&h, "asmm8"), 0, "not before the backoff");
    h.advance(Duration::from_secs(11));
    h.engine.dispatch().await.unwrap();
    assert_eq!(kickoffs(&h, "asmm8"), 1);
    assert_eq!(
        status_of(&h, "asmm8").await,
        (WorkflowStatus::Running, StageStatus::Running, 2)
    );
}

#[tokio::test]
async fn an_empty_report_is_nothing_to_scan_without_an_error() {
    let h = started(1).await;
    let before = tokio::time::Instant::now();
    assert_eq!(report(&h, "asmm8", None).await, Settlement::Ack);
    assert!(
        before.elapsed() >= h.engine.tuning.chain_error_window,
        "it waited for the window"
    );
    assert_eq!(
        status_of(&h, "asmm8").await,
        (WorkflowStatus::Running, StageStatus::Completed, 1)
    );
}

#[tokio::test]
async fn an_empty_report_with_an_error_of_its_scanner_is_a_hard_failure() {
    let h = started(1).await;
    // Another scanner's error does not count.
    platform_error(&h, "num8", "not ours").await;
    platform_error(&h, "asmm8", "database unreachable").await;
    report(&h, "asmm8", None).await;
    assert_eq!(
        status_of(&h, "asmm8").await,
        (WorkflowStatus::Failed, StageStatus::Failed, 1)
    );
    let n = h.notifications(NOTIFY_FAILED_KEY).await;
    assert_eq!(n.len(), 1);
    assert!(
        n[0].message.contains("stage asmm8") && n[0].message.contains("database unreachable"),
        "{}",
        n[0].message
    );
}

#[tokio::test]
async fn an_error_arriving_just_after_the_empty_report_counts_too() {
    let h = started(2).await;
    let (settled, ()) = tokio::join!(report(&h, "asmm8", None), async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        platform_error(&h, "asmm8", "amass missing").await;
    });
    assert_eq!(settled, Settlement::Ack);
    assert_eq!(
        status_of(&h, "asmm8").await,
        (WorkflowStatus::Running, StageStatus::Pending, 1),
        "failed, to be retried"
    );
    // An error long before a report does not count.
    h.advance(Duration::from_secs(11));
    h.engine.dispatch().await.unwrap();
    assert_eq!(kickoffs(&h, "asmm8"), 1);
    report(&h, "asmm8", None).await;
    assert_eq!(
        status_of(&h, "asmm8").await,
        (WorkflowStatus::Running, StageStatus::Completed, 2)
    );
}

#[tokio::test]
async fn one_kickoff_in_flight_and_a_busy_scanner_is_backpressure() {
    let h = Harness::new(platform(3)).await;
    assert!(
        h.engine.stages().iter().all(|s| s.max_in_flight == 1),
        "a chain stage implies max_in_flight 1"
    );
    // The scanner is busy: its queue holds a kick-off already.
    let busy = amqp8::OutgoingMessage::new("cptm8", rk("asmm8"), b"{}".to_vec());
    assert_eq!(
        amqp8::Broker::publish(&h.broker, busy).await.unwrap(),
        amqp8::PublishOutcome::Confirmed
    );
    h.add_domain("example.com").await;
    h.engine.start_workflows().await.unwrap();
    let r = h.engine.dispatch().await.unwrap();
    assert_eq!((r.published, r.refused), (0, 1), "nacked: busy");
    assert_eq!(
        status_of(&h, "asmm8").await,
        (WorkflowStatus::Pending, StageStatus::Pending, 0),
        "the kick-off stays pending"
    );
    assert_eq!(
        h.broker.take(&q("asmm8")).len(),
        1,
        "the scanner takes its kick-off"
    );
    h.advance(Duration::from_secs(31));
    let r = h.engine.dispatch().await.unwrap();
    assert_eq!((r.published, r.refused), (1, 0));
    assert_eq!(kickoffs(&h, "asmm8"), 1);
    h.advance(Duration::from_secs(31));
    h.engine.dispatch().await.unwrap();
    assert_eq!(kickoffs(&h, "asmm8"), 0, "never a second one in flight");
}
