use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Mutex as AsyncMutex, mpsc};

use super::*;
use crate::broker::{
    ArgValue, BindingDecl, Decision, Delivery, ExchangeDecl, Handler, HandlerError, QueueDecl,
};
use crate::headers;

const WAIT: Duration = Duration::from_secs(5);

fn topology(queue: &str, key: &str, args: &[(&str, ArgValue)]) -> Topology {
    let mut t = Topology::topic_queue("cptm8", queue, key);
    t.queues[0].arguments = args
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    t
}

fn with_dlq(mut t: Topology) -> Topology {
    t.exchanges.push(ExchangeDecl {
        name: "dlx".into(),
        kind: "direct".into(),
    });
    t.queues.push(QueueDecl {
        name: "dlq".into(),
        arguments: BTreeMap::new(),
    });
    t.bindings.push(BindingDecl {
        exchange: "dlx".into(),
        queue: "dlq".into(),
        routing_key: "dead".into(),
    });
    t
}

fn msg(key: &str, body: &str) -> OutgoingMessage {
    OutgoingMessage::new("cptm8", key, body.as_bytes().to_vec())
}

fn options(queue: &str, prefetch: u16, max_redeliveries: u32) -> ConsumeOptions {
    ConsumeOptions {
        queue: queue.into(),
        tag: "ctest".into(),
        prefetch,
        autoack: false,
        max_redeliveries,
        dead_letter: Some(("dlx".into(), "dead".into())),
    }
}

/// What a scripted handler does with a body.
#[derive(Debug, Clone, Copy)]
enum Act {
    Ack,
    Fail,
    Panic,
    DeadLetter,
    Requeue,
}

/// Decides by body (`ack`, `fail`, `panic`, `dead`, `requeue`); reports every
/// delivery it sees as (body, redelivered, delivery_count).
type Seen = (String, bool, Option<u64>);

struct Scripted {
    seen: mpsc::UnboundedSender<Seen>,
}

#[async_trait]
impl Handler for Scripted {
    async fn handle(&self, d: &mut Delivery) -> Result<Decision, HandlerError> {
        let body = String::from_utf8(d.body.clone()).unwrap();
        let _ = self
            .seen
            .send((body.clone(), d.redelivered, d.delivery_count));
        let act = match body.split(':').next().unwrap() {
            "ack" => Act::Ack,
            "fail" => Act::Fail,
            "panic" => Act::Panic,
            "dead" => Act::DeadLetter,
            _ => Act::Requeue,
        };
        match act {
            Act::Ack => Ok(Decision::Ack),
            Act::Fail => Err(HandlerError("scripted failure".into())),
            Act::Panic => panic!("scripted panic"),
            Act::DeadLetter => Ok(Decision::DeadLetter("scripted: undecodable".into())),
            Act::Requeue => Ok(Decision::Requeue),
        }
    }
}

fn scripted() -> (Arc<dyn Handler>, mpsc::UnboundedReceiver<Seen>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Arc::new(Scripted { seen: tx }), rx)
}

async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("timed out waiting for a delivery")
        .expect("handler gone")
}

#[tokio::test]
async fn topic_routing_reaches_matching_queues_only() {
    let b = MemoryBroker::new();
    b.declare(&topology("qasmm8", "cptm8.asmm8.#", &[]))
        .await
        .unwrap();
    b.declare(&topology("qnaabum8", "cptm8.*.naabum8", &[]))
        .await
        .unwrap();
    assert_eq!(
        b.publish(msg("cptm8.asmm8.get.scan", "1")).await.unwrap(),
        PublishOutcome::Confirmed
    );
    assert_eq!(
        b.publish(msg("cptm8.x.naabum8", "2")).await.unwrap(),
        PublishOutcome::Confirmed
    );
    assert_eq!(b.messages_in("qasmm8").len(), 1);
    assert_eq!(b.messages_in("qasmm8")[0].body, b"1");
    assert_eq!(
        b.messages_in("qasmm8")[0].routing_key,
        "cptm8.asmm8.get.scan"
    );
    assert_eq!(b.take("qnaabum8")[0].body, b"2");
    assert!(b.messages_in("qnaabum8").is_empty());
    assert_eq!(b.published().len(), 2);
}

#[tokio::test]
async fn mandatory_unroutable_and_unknown_exchange() {
    let b = MemoryBroker::new();
    b.declare(&topology("qasmm8", "cptm8.asmm8.#", &[]))
        .await
        .unwrap();
    assert_eq!(
        b.publish(msg("nobody.listens", "x")).await.unwrap(),
        PublishOutcome::Unroutable
    );
    let mut quiet = msg("nobody.listens", "x");
    quiet.mandatory = false;
    assert_eq!(b.publish(quiet).await.unwrap(), PublishOutcome::Confirmed);
    assert!(b.messages_in("qasmm8").is_empty());
    let err = b
        .publish(OutgoingMessage::new("nope", "k", vec![]))
        .await
        .unwrap_err();
    assert!(matches!(err, AmqpError::Refused { .. }), "{err:?}");
    assert!(!err.is_transient());
}

#[tokio::test]
async fn reject_publish_on_a_full_queue_is_a_nack_and_drop_head_drops_the_oldest() {
    let b = MemoryBroker::new();
    let reject = [
        ("x-max-length", ArgValue::Int(1)),
        ("x-overflow", ArgValue::Str("reject-publish".into())),
    ];
    b.declare(&topology("qfull", "full", &reject))
        .await
        .unwrap();
    assert_eq!(
        b.publish(msg("full", "a")).await.unwrap(),
        PublishOutcome::Confirmed
    );
    assert_eq!(
        b.publish(msg("full", "b")).await.unwrap(),
        PublishOutcome::Nacked
    );
    assert_eq!(b.messages_in("qfull").len(), 1);
    b.take("qfull");
    assert_eq!(
        b.publish(msg("full", "c")).await.unwrap(),
        PublishOutcome::Confirmed
    );

    b.declare(&topology(
        "qdrop",
        "drop",
        &[("x-max-length", ArgValue::Int(2))],
    ))
    .await
    .unwrap();
    for body in ["1", "2", "3"] {
        assert_eq!(
            b.publish(msg("drop", body)).await.unwrap(),
            PublishOutcome::Confirmed
        );
    }
    let bodies: Vec<Vec<u8>> = b.messages_in("qdrop").into_iter().map(|m| m.body).collect();
    assert_eq!(bodies, vec![b"2".to_vec(), b"3".to_vec()]);
}

#[tokio::test]
async fn redeclaring_differently_or_binding_missing_objects_is_refused() {
    let b = MemoryBroker::new();
    b.declare(&topology("q", "k", &[("x-max-length", ArgValue::Int(1))]))
        .await
        .unwrap();
    b.declare(&topology("q", "k", &[("x-max-length", ArgValue::Int(1))]))
        .await
        .unwrap();
    let err = b
        .declare(&topology("q", "k", &[("x-max-length", ArgValue::Int(2))]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("PRECONDITION_FAILED"), "{err}");
    // Integers must be integers, as RabbitMQ requires.
    let err = b
        .declare(&topology(
            "q2",
            "k",
            &[("x-max-length", ArgValue::Str("1".into()))],
        ))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("x-max-length"), "{err}");
    let mut t = topology("q", "k", &[("x-max-length", ArgValue::Int(1))]);
    t.exchanges[0].kind = "direct".into();
    assert!(b.declare(&t).await.is_err());
    let t = Topology {
        bindings: vec![BindingDecl {
            exchange: "cptm8".into(),
            queue: "missing".into(),
            routing_key: "k".into(),
        }],
        ..Topology::default()
    };
    assert!(matches!(
        b.declare(&t).await,
        Err(AmqpError::Refused { .. })
    ));
    assert_eq!(b.topology().queues.len(), 1);
}

#[tokio::test]
async fn consumer_acks_and_health_counts() {
    let b = MemoryBroker::new();
    b.declare(&with_dlq(topology("q", "k.#", &[])))
        .await
        .unwrap();
    let (h, mut seen) = scripted();
    let c = b.consume(options("q", 4, 3), h).await.unwrap();
    for i in 0..10 {
        b.publish(msg("k.x", &format!("ack:{i}"))).await.unwrap();
    }
    for _ in 0..10 {
        let (_, redelivered, count) = next(&mut seen).await;
        assert!(!redelivered);
        assert_eq!(count, None);
    }
    assert!(
        b.wait_until(WAIT, |b| b.messages_in("q").is_empty()
            && b.unacked("q") == 0)
            .await
    );
    let health = b.health();
    assert!(health.connected);
    assert_eq!(health.consumers.len(), 1);
    let ch = &health.consumers[0];
    assert_eq!(
        (ch.name.as_str(), ch.queue.as_str(), ch.active),
        ("ctest", "q", true)
    );
    assert_eq!((ch.messages, ch.errors, ch.restarts), (10, 0, 0));
    assert!(ch.last_seen.is_some());
    assert_eq!(
        b.queue_info("q").await.unwrap(),
        QueueInfo {
            messages: 0,
            consumers: 1
        }
    );
    c.stop(Duration::from_secs(1)).await;
    assert!(b.health().consumers.is_empty());
    assert_eq!(b.queue_info("q").await.unwrap().consumers, 0);
}

#[tokio::test]
async fn failing_message_is_requeued_then_dead_lettered_after_the_limit() {
    let b = MemoryBroker::new();
    b.declare(&with_dlq(topology("q", "k.#", &[])))
        .await
        .unwrap();
    let (h, mut seen) = scripted();
    let _c = b.consume(options("q", 1, 2), h).await.unwrap();
    b.publish(msg("k.x", "fail")).await.unwrap();
    // First delivery, then two redeliveries (the limit), then dead-lettered unseen.
    assert_eq!(next(&mut seen).await, ("fail".into(), false, None));
    assert_eq!(next(&mut seen).await, ("fail".into(), true, Some(1)));
    assert_eq!(next(&mut seen).await, ("fail".into(), true, Some(2)));
    assert!(
        b.wait_until(WAIT, |b| b.messages_in("dlq").len() == 1)
            .await
    );
    let dead = &b.messages_in("dlq")[0];
    assert_eq!(dead.body, b"fail");
    assert_eq!(dead.headers[headers::ORIGINAL_ROUTING_KEY], "k.x");
    assert_eq!(dead.headers[headers::ORIGINAL_EXCHANGE], "cptm8");
    assert_eq!(dead.headers[headers::ORIGINAL_QUEUE], "q");
    assert!(
        dead.headers[headers::DEATH_REASON].contains("redelivered 3 times"),
        "{:?}",
        dead.headers
    );
    assert!(
        b.wait_until(WAIT, |b| b.messages_in("q").is_empty()
            && b.unacked("q") == 0)
            .await
    );
    assert_eq!(b.health().consumers[0].errors, 3);
    assert_eq!(b.dead_lettered(), 1);
    assert!(seen.try_recv().is_err());
}

#[tokio::test]
async fn a_panic_is_caught_counted_and_the_consumer_goes_on() {
    let b = MemoryBroker::new();
    b.declare(&with_dlq(topology("q", "k.#", &[])))
        .await
        .unwrap();
    let (h, mut seen) = scripted();
    let _c = b.consume(options("q", 1, 0), h).await.unwrap();
    b.publish(msg("k.x", "panic")).await.unwrap();
    b.publish(msg("k.x", "ack")).await.unwrap();
    assert_eq!(next(&mut seen).await.0, "panic");
    // max_redeliveries 0: the redelivered panicking message goes straight to the DLQ.
    assert_eq!(next(&mut seen).await.0, "ack");
    assert!(
        b.wait_until(WAIT, |b| b.messages_in("dlq").len() == 1)
            .await
    );
    assert_eq!(b.panics(), 1);
    let h = &b.health().consumers[0];
    assert!(h.active);
    assert_eq!(h.errors, 1);
}

#[tokio::test]
async fn handler_dead_letter_decision_carries_the_reason() {
    let b = MemoryBroker::new();
    b.declare(&with_dlq(topology("q", "k.#", &[])))
        .await
        .unwrap();
    let (h, mut seen) = scripted();
    let _c = b.consume(options("q", 1, 5), h).await.unwrap();
    b.publish(msg("k.y", "dead")).await.unwrap();
    next(&mut seen).await;
    assert!(
        b.wait_until(WAIT, |b| b.messages_in("dlq").len() == 1)
            .await
    );
    assert_eq!(
        b.messages_in("dlq")[0].headers[headers::DEATH_REASON],
        "scripted: undecodable"
    );
    assert_eq!(b.unacked("q"), 0);
}

#[tokio::test]
async fn dead_letter_without_a_target_uses_the_queues_dead_letter_exchange() {
    let b = MemoryBroker::new();
    let args = [
        ("x-dead-letter-exchange", ArgValue::Str("dlx".into())),
        ("x-dead-letter-routing-key", ArgValue::Str("dead".into())),
    ];
    b.declare(&with_dlq(topology("q", "k.#", &args)))
        .await
        .unwrap();
    let (h, mut seen) = scripted();
    let mut o = options("q", 1, 5);
    o.dead_letter = None;
    let _c = b.consume(o, h).await.unwrap();
    b.publish(msg("k.y", "dead")).await.unwrap();
    next(&mut seen).await;
    assert!(
        b.wait_until(WAIT, |b| b.messages_in("dlq").len() == 1)
            .await
    );
    assert_eq!(
        b.messages_in("dlq")[0].headers["x-first-death-reason"],
        "rejected"
    );
}

/// Keeps every acker (deferred) and hands it to the test.
struct Deferring(mpsc::UnboundedSender<Box<dyn crate::broker::Acker>>);

#[async_trait]
impl Handler for Deferring {
    async fn handle(&self, d: &mut Delivery) -> Result<Decision, HandlerError> {
        let acker = d.defer().expect("acker present");
        assert!(d.defer().is_none());
        self.0.send(acker).unwrap();
        Ok(Decision::Deferred)
    }
}

/// A broker with queue `q` (bound by `k.#`, with a dead-letter queue) and a consumer of
/// prefetch `prefetch` that defers every delivery: its ackers arrive on the receiver.
async fn deferring(
    prefetch: u16,
) -> (
    MemoryBroker,
    ConsumerHandle,
    mpsc::UnboundedReceiver<Box<dyn crate::broker::Acker>>,
) {
    let b = MemoryBroker::new();
    b.declare(&with_dlq(topology("q", "k.#", &[])))
        .await
        .unwrap();
    let (tx, ackers) = mpsc::unbounded_channel();
    let c = b
        .consume(options("q", prefetch, 5), Arc::new(Deferring(tx)))
        .await
        .unwrap();
    (b, c, ackers)
}

#[tokio::test]
async fn deferred_acks_hold_prefetch_until_settled() {
    let (b, _c, mut ackers) = deferring(2).await;
    for i in 0..5 {
        b.publish(msg("k.x", &i.to_string())).await.unwrap();
    }
    let a1 = next(&mut ackers).await;
    let a2 = next(&mut ackers).await;
    // Prefetch 2: nothing more is delivered while two are held.
    assert!(
        b.wait_until(WAIT, |b| b.unacked("q") == 2
            && b.messages_in("q").len() == 3)
            .await
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(100), ackers.recv())
            .await
            .is_err()
    );
    a1.ack().await.unwrap();
    let a3 = next(&mut ackers).await;
    a2.nack(true).await.unwrap();
    a3.ack().await.unwrap();
    // The requeued one comes back among the rest.
    for _ in 0..3 {
        next(&mut ackers).await.ack().await.unwrap();
    }
    assert!(
        b.wait_until(WAIT, |b| b.unacked("q") == 0
            && b.messages_in("q").is_empty())
            .await
    );
}

#[tokio::test]
async fn outage_returns_unacked_messages_and_consumers_come_back() {
    let (b, _c, mut ackers) = deferring(1).await;
    b.publish(msg("k.x", "held")).await.unwrap();
    let stale = next(&mut ackers).await;
    b.set_outage(true);
    assert!(!b.health().connected);
    assert!(
        b.wait_until(WAIT, |b| !b.health().consumers[0].active)
            .await
    );
    let err = b.publish(msg("k.x", "during")).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(b.queue_info("q").await.is_err());
    // The held message is back in the queue, flagged redelivered.
    let ready = b.messages_in("q");
    assert_eq!(ready.len(), 1);
    assert!(ready[0].redelivered);
    assert!(
        stale.ack().await.is_err(),
        "an acker of a closed channel cannot settle"
    );

    b.set_outage(false);
    let again = next(&mut ackers).await;
    again.ack().await.unwrap();
    let h = &b.health().consumers[0];
    assert!(h.active);
    assert_eq!(h.restarts, 1);
    assert_eq!(b.health().pool.created, 2);
}

#[tokio::test]
async fn publish_waits_for_recovery_up_to_the_deadline() {
    let b = MemoryBroker::new();
    b.declare(&topology("q", "k.#", &[])).await.unwrap();
    b.set_outage_wait(Duration::from_secs(10));
    b.set_outage(true);
    let b2 = b.clone();
    let publishing = tokio::spawn(async move { b2.publish(msg("k.x", "late")).await });
    assert!(b.messages_in("q").is_empty());
    b.set_outage(false);
    assert_eq!(
        publishing.await.unwrap().unwrap(),
        PublishOutcome::Confirmed
    );
    assert_eq!(b.messages_in("q").len(), 1);

    b.set_outage_wait(Duration::from_millis(50));
    b.set_blocked(true);
    let err = b.publish(msg("k.x", "blocked")).await.unwrap_err();
    assert!(matches!(err, AmqpError::Blocked { .. }), "{err:?}");
    assert!(err.is_transient());
    assert!(err.to_string().contains("blocking publishers"), "{err}");
    assert!(b.health().blocked);
    b.set_blocked(false);
    b.publish(msg("k.x", "unblocked")).await.unwrap();
}

#[tokio::test]
async fn a_refused_connection_is_reported_and_fails_operations_at_once() {
    let (b, _c, mut ackers) = deferring(1).await;
    // Operations would wait an hour for an outage to end; a refusal fails them at once.
    b.set_outage_wait(Duration::from_secs(3600));
    b.publish(msg("k.x", "held")).await.unwrap();
    let _stale = next(&mut ackers).await;
    assert_eq!(b.health().refused, None);

    // A publish waiting for an outage to end fails as soon as the broker refuses.
    b.set_outage(true);
    let b2 = b.clone();
    let waiting = tokio::spawn(async move { b2.publish(msg("k.x", "waiting")).await });
    b.set_refused(Some(Refusal::Login));
    let err = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("a waiting publish must fail on the refusal")
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, AmqpError::AccessRefused { .. }), "{err:?}");
    let h = b.health();
    assert_eq!(h.refused, Some(Refusal::Login));
    assert!(!h.connected);
    assert!(
        b.wait_until(WAIT, |b| !b.health().consumers[0].active)
            .await
    );
    let err = tokio::time::timeout(WAIT, b.publish(msg("k.x", "refused")))
        .await
        .expect("a publish must not wait while the login is refused")
        .unwrap_err();
    assert!(matches!(err, AmqpError::AccessRefused { .. }), "{err:?}");
    assert!(!err.is_transient() && err.is_connection_refused());

    b.set_refused(Some(Refusal::VirtualHost));
    assert_eq!(b.health().refused, Some(Refusal::VirtualHost));
    let err = tokio::time::timeout(WAIT, b.queue_info("q"))
        .await
        .expect("a passive check must not wait while the virtual host is refused")
        .unwrap_err();
    assert!(matches!(err, AmqpError::VhostNotAllowed { .. }), "{err:?}");

    // Accepted again: connected, consumers back, the held message redelivered.
    b.set_refused(None);
    let h = b.health();
    assert_eq!(h.refused, None);
    assert!(h.connected);
    let again = next(&mut ackers).await;
    again.ack().await.unwrap();
    assert!(b.health().consumers[0].active);
    assert_eq!(b.health().pool.created, 2);
    assert_eq!(
        b.publish(msg("k.x", "after")).await.unwrap(),
        PublishOutcome::Confirmed
    );

    // Clearing a refusal there is none of does not end an outage.
    b.set_outage(true);
    b.set_refused(None);
    assert!(!b.health().connected);
    assert_eq!(b.health().refused, None);
    b.set_outage(false);
    assert!(b.health().connected);
}

#[tokio::test]
async fn injected_failures_and_nacks() {
    let b = MemoryBroker::new();
    b.declare(&topology("q", "k.#", &[])).await.unwrap();
    b.fail_next_publishes(1);
    b.nack_next_publishes(1);
    let outcomes: Vec<_> = [
        b.publish(msg("k.1", "1"))
            .await
            .map_err(|e| e.is_transient()),
        b.publish(msg("k.2", "2"))
            .await
            .map_err(|e| e.is_transient()),
        b.publish(msg("k.3", "3"))
            .await
            .map_err(|e| e.is_transient()),
    ]
    .into();
    assert_eq!(
        outcomes,
        vec![
            Err(true),
            Ok(PublishOutcome::Nacked),
            Ok(PublishOutcome::Confirmed)
        ]
    );
    assert_eq!(b.messages_in("q").len(), 1);
    let many = b
        .publish_many(vec![msg("k.a", "a"), msg("none", "b"), msg("k.c", "c")])
        .await
        .unwrap();
    assert_eq!(
        many,
        vec![
            PublishOutcome::Confirmed,
            PublishOutcome::Unroutable,
            PublishOutcome::Confirmed
        ]
    );
}

/// Sleeps for the body's number of milliseconds, then acks.
struct Slow(AtomicU32);

#[async_trait]
impl Handler for Slow {
    async fn handle(&self, d: &mut Delivery) -> Result<Decision, HandlerError> {
        let ms: u64 = String::from_utf8_lossy(&d.body).parse().unwrap();
        self.0.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(Decision::Ack)
    }
}

#[tokio::test]
async fn stop_lets_in_flight_handlers_finish_within_grace_and_returns_the_rest() {
    let b = MemoryBroker::new();
    b.declare(&with_dlq(topology("q", "k.#", &[])))
        .await
        .unwrap();
    let slow = Arc::new(Slow(AtomicU32::new(0)));
    let c = b.consume(options("q", 2, 5), slow.clone()).await.unwrap();
    b.publish(msg("k.x", "100")).await.unwrap();
    b.publish(msg("k.x", "60000")).await.unwrap();
    b.publish(msg("k.x", "1")).await.unwrap();
    assert!(
        b.wait_until(WAIT, |_| slow.0.load(Ordering::SeqCst) == 2)
            .await
    );
    c.stop(Duration::from_secs(1)).await;
    // The short one finished and was acked; the long one went back (redelivered),
    // ahead of the one never taken.
    let ready = b.messages_in("q");
    let bodies: Vec<&[u8]> = ready.iter().map(|m| m.body.as_slice()).collect();
    assert_eq!(bodies, vec![b"60000".as_slice(), b"1".as_slice()]);
    assert!(ready[0].redelivered);
    assert_eq!(b.unacked("q"), 0);
    assert!(b.health().consumers.is_empty());
    // Stopping twice is harmless.
    c.stop(Duration::ZERO).await;
}

#[tokio::test]
async fn queue_info_and_delete_queue() {
    let b = MemoryBroker::new();
    assert!(matches!(
        b.queue_info("q").await,
        Err(AmqpError::NoSuchQueue(_))
    ));
    b.declare(&topology("q", "k.#", &[])).await.unwrap();
    b.publish(msg("k.x", "1")).await.unwrap();
    b.publish(msg("k.x", "2")).await.unwrap();
    assert_eq!(
        b.queue_info("q").await.unwrap(),
        QueueInfo {
            messages: 2,
            consumers: 0
        }
    );
    assert_eq!(b.delete_queue("q").await.unwrap(), 2);
    assert!(matches!(
        b.queue_info("q").await,
        Err(AmqpError::NoSuchQueue(_))
    ));
    assert!(b.topology().bindings.is_empty());
    assert!(matches!(
        b.delete_queue("q").await,
        Err(AmqpError::NoSuchQueue(_))
    ));
    let (h, _seen) = scripted();
    assert!(matches!(
        b.consume(options("q", 1, 1), h).await,
        Err(AmqpError::NoSuchQueue(_))
    ));
}

#[tokio::test]
async fn handler_fn_and_quorum_delivery_count() {
    let b = MemoryBroker::new();
    let args = [("x-queue-type", ArgValue::Str("quorum".into()))];
    b.declare(&with_dlq(topology("q", "k.#", &args)))
        .await
        .unwrap();
    let seen = Arc::new(AsyncMutex::new(Vec::new()));
    let s = seen.clone();
    let h = crate::handler_fn(move |m: crate::Message| {
        let s = s.clone();
        async move {
            s.lock()
                .await
                .push((m.routing_key.clone(), m.delivery_count));
            if m.delivery_count.unwrap_or(0) < 2 {
                Ok(Decision::Requeue)
            } else {
                Ok(Decision::Ack)
            }
        }
    });
    let _c = b.consume(options("q", 1, 10), Arc::new(h)).await.unwrap();
    b.publish(msg("k.q", "{}")).await.unwrap();
    assert!(
        b.wait_until(WAIT, |b| b.unacked("q") == 0
            && b.messages_in("q").is_empty()
            && b.health().consumers[0].messages == 3)
            .await
    );
    let seen = seen.lock().await.clone();
    assert_eq!(
        seen,
        vec![
            ("k.q".to_owned(), None),
            ("k.q".to_owned(), Some(1)),
            ("k.q".to_owned(), Some(2))
        ]
    );
}

#[tokio::test]
async fn test_acker_records_the_settlement() {
    let (mut d, settled) = TestAcker::delivery("cptm8", "k", b"x".to_vec());
    d.defer().unwrap().dead_letter("bad".into()).await.unwrap();
    assert_eq!(settled.get(), Some(Settlement::DeadLetter("bad".into())));
}
