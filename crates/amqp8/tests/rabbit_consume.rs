//! amqp8 on the real RabbitMQ: supervised consumers (manual ack, requeue, panics,
//! dead-lettering, redelivery after a consumer dies, graceful stop).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use amqp8::{Acker, Broker, Decision, Delivery, Handler, HandlerError, OutgoingMessage, headers};
use async_trait::async_trait;
use common::*;
use tokio::sync::mpsc;

fn msg(n: &Names, body: &str) -> OutgoingMessage {
    OutgoingMessage::new(n.exchange.clone(), "work.item", body.as_bytes().to_vec())
}

/// What a handler saw: body, redelivered, delivery count.
type Seen = (String, bool, Option<u64>);

/// Decides by body prefix: `ack`, `fail`, `panic-once`, anything else dead-lettered.
struct Scripted {
    seen: mpsc::UnboundedSender<Seen>,
    panicked: AtomicU32,
}

#[async_trait]
impl Handler for Scripted {
    async fn handle(&self, d: &mut Delivery) -> Result<Decision, HandlerError> {
        let body = String::from_utf8_lossy(&d.body).into_owned();
        let _ = self
            .seen
            .send((body.clone(), d.redelivered, d.delivery_count));
        if body.starts_with("ack") {
            Ok(Decision::Ack)
        } else if body.starts_with("fail") {
            Err(HandlerError("scripted failure".into()))
        } else if body.starts_with("panic-once") {
            if self.panicked.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("scripted panic");
            }
            Ok(Decision::Ack)
        } else {
            Ok(Decision::DeadLetter("scripted: cannot decode".into()))
        }
    }
}

fn scripted() -> (Arc<Scripted>, mpsc::UnboundedReceiver<Seen>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Arc::new(Scripted {
            seen: tx,
            panicked: AtomicU32::new(0),
        }),
        rx,
    )
}

async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("timed out")
        .expect("closed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_ack_consumer_and_its_health() {
    let _lock = lock_shared();
    let b = broker().await;
    let n = Names::new("ack");
    b.declare(&n.topology("work.#", &[])).await.unwrap();
    let (h, mut seen) = scripted();
    let c = b.consume(n.options(8, 3), h).await.unwrap();
    let outcomes = b
        .publish_many((0..50).map(|i| msg(&n, &format!("ack {i}"))).collect())
        .await
        .unwrap();
    assert!(
        outcomes
            .iter()
            .all(|o| *o == amqp8::PublishOutcome::Confirmed)
    );
    for _ in 0..50 {
        let (_, redelivered, _) = next(&mut seen).await;
        assert!(!redelivered);
    }
    assert!(
        eventually(WAIT, || async {
            b.queue_info(&n.queue).await.map(|i| i.messages) == Ok(0)
        })
        .await
    );
    let health = b.health();
    assert!(health.connected);
    let ch = health
        .consumers
        .iter()
        .find(|c| c.queue == n.queue)
        .expect("consumer listed");
    assert_eq!(
        (ch.name.as_str(), ch.active, ch.autoack),
        ("ctest", true, false)
    );
    assert!(
        eventually(WAIT, || async {
            b.health()
                .consumers
                .iter()
                .any(|c| c.queue == n.queue && c.messages == 50)
        })
        .await
    );
    let ch = b
        .health()
        .consumers
        .into_iter()
        .find(|c| c.queue == n.queue)
        .unwrap();
    assert_eq!((ch.errors, ch.restarts), (0, 0));
    assert!(ch.last_seen.is_some());
    assert_eq!(b.queue_info(&n.queue).await.unwrap().consumers, 1);
    c.stop(Duration::from_secs(2)).await;
    assert!(b.health().consumers.iter().all(|c| c.queue != n.queue));
    assert!(
        eventually(WAIT, || async {
            b.queue_info(&n.queue).await.map(|i| i.consumers) == Ok(0)
        })
        .await
    );
    n.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_message_is_requeued_then_dead_lettered_with_the_reason() {
    let _lock = lock_shared();
    let b = broker().await;
    let n = Names::new("dlq");
    b.declare(&n.topology("work.#", &[])).await.unwrap();
    let (h, mut seen) = scripted();
    let _c = b.consume(n.options(1, 2), h).await.unwrap();
    b.publish(msg(&n, "fail always")).await.unwrap();
    assert_eq!(next(&mut seen).await, ("fail always".into(), false, None));
    assert_eq!(next(&mut seen).await, ("fail always".into(), true, Some(1)));
    assert_eq!(next(&mut seen).await, ("fail always".into(), true, Some(2)));
    // The third redelivery exceeds the limit: dead-lettered without reaching the handler.
    assert!(eventually(WAIT, || async { ready(&n.dlq).await == Some(1) }).await);
    assert!(seen.try_recv().is_err());
    let dead = get_all(&n.dlq, 5).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0, b"fail always");
    let h = &dead[0].1;
    assert!(
        h[headers::DEATH_REASON].contains("redelivered 3 times"),
        "{h:?}"
    );
    assert_eq!(h[headers::ORIGINAL_EXCHANGE], n.exchange);
    assert_eq!(h[headers::ORIGINAL_ROUTING_KEY], "work.item");
    assert_eq!(h[headers::ORIGINAL_QUEUE], n.queue);
    assert!(
        eventually(WAIT, || async {
            b.queue_info(&n.queue).await.map(|i| i.messages) == Ok(0)
        })
        .await
    );
    let ch = b
        .health()
        .consumers
        .into_iter()
        .find(|c| c.queue == n.queue)
        .unwrap();
    assert_eq!(ch.errors, 3);
    n.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_are_caught_and_undecodable_messages_dead_lettered() {
    let _lock = lock_shared();
    let b = broker().await;
    let n = Names::new("panic");
    b.declare(&n.topology("work.#", &[])).await.unwrap();
    let (h, mut seen) = scripted();
    let _c = b.consume(n.options(1, 5), h.clone()).await.unwrap();
    b.publish(msg(&n, "panic-once")).await.unwrap();
    assert_eq!(next(&mut seen).await, ("panic-once".into(), false, None));
    // Requeued after the panic, then acked.
    assert_eq!(next(&mut seen).await, ("panic-once".into(), true, Some(1)));
    b.publish(msg(&n, "garbage")).await.unwrap();
    assert_eq!(next(&mut seen).await.0, "garbage");
    assert!(eventually(WAIT, || async { ready(&n.dlq).await == Some(1) }).await);
    let dead = get_all(&n.dlq, 5).await;
    assert_eq!(dead[0].1[headers::DEATH_REASON], "scripted: cannot decode");
    let ch = b
        .health()
        .consumers
        .into_iter()
        .find(|c| c.queue == n.queue)
        .unwrap();
    assert!(ch.active);
    assert_eq!((ch.messages, ch.errors), (3, 1));
    assert_eq!(h.panicked.load(Ordering::SeqCst), 2);
    n.cleanup().await;
}

/// Keeps every delivery's acker (a scanner acking only when its scan is done).
type Held = (String, bool, Box<dyn Acker>);
struct Holding(mpsc::UnboundedSender<Held>);

#[async_trait]
impl Handler for Holding {
    async fn handle(&self, d: &mut Delivery) -> Result<Decision, HandlerError> {
        let acker = d.defer().expect("acker");
        let _ = self.0.send((
            String::from_utf8_lossy(&d.body).into_owned(),
            d.redelivered,
            acker,
        ));
        Ok(Decision::Deferred)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_held_by_a_dying_consumer_are_redelivered_to_another() {
    let _lock = lock_shared();
    let n = Names::new("dies");
    let survivor = broker().await;
    survivor.declare(&n.topology("work.#", &[])).await.unwrap();
    {
        let dying = broker().await;
        let (tx, mut held) = mpsc::unbounded_channel();
        let _c = dying
            .consume(n.options(3, 5), Arc::new(Holding(tx)))
            .await
            .unwrap();
        survivor
            .publish_many((0..3).map(|i| msg(&n, &format!("scan {i}"))).collect())
            .await
            .unwrap();
        let mut kept = Vec::new();
        for _ in 0..3 {
            kept.push(next(&mut held).await);
        }
        // The process holding them goes away without acking.
        dying.close().await;
        drop(kept);
    }
    let (tx, mut held) = mpsc::unbounded_channel();
    let _c = survivor
        .consume(n.options(3, 5), Arc::new(Holding(tx)))
        .await
        .unwrap();
    let mut bodies = Vec::new();
    for _ in 0..3 {
        let (body, redelivered, acker) = next(&mut held).await;
        assert!(redelivered, "{body} should be flagged redelivered");
        // Long work done: ack now.
        acker.ack().await.unwrap();
        bodies.push(body);
    }
    bodies.sort();
    assert_eq!(bodies, ["scan 0", "scan 1", "scan 2"]);
    assert!(
        eventually(WAIT, || async {
            survivor.queue_info(&n.queue).await.map(|i| i.messages) == Ok(0)
        })
        .await
    );
    n.cleanup().await;
}

/// Acks after sleeping for the body's number of milliseconds.
struct Slow(AtomicU32);

#[async_trait]
impl Handler for Slow {
    async fn handle(&self, d: &mut Delivery) -> Result<Decision, HandlerError> {
        let ms: u64 = String::from_utf8_lossy(&d.body).parse().unwrap_or(0);
        self.0.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(Decision::Ack)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_finishes_in_flight_work_and_returns_the_rest() {
    let _lock = lock_shared();
    let b = broker().await;
    let n = Names::new("stop");
    b.declare(&n.topology("work.#", &[])).await.unwrap();
    let slow = Arc::new(Slow(AtomicU32::new(0)));
    let c = b.consume(n.options(2, 5), slow.clone()).await.unwrap();
    b.publish_many(vec![
        msg(&n, "200"),
        msg(&n, "600000"),
        msg(&n, "1"),
        msg(&n, "1"),
    ])
    .await
    .unwrap();
    assert!(eventually(WAIT, || async { slow.0.load(Ordering::SeqCst) == 2 }).await);
    c.stop(Duration::from_secs(2)).await;
    // The 200 ms one was acked within the grace period; the endless one and the two
    // never started are back in the queue.
    assert!(eventually(WAIT, || async { ready(&n.queue).await == Some(3) }).await);
    assert_eq!(slow.0.load(Ordering::SeqCst), 2);
    n.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_queues_and_delete_queue() {
    let _lock = lock_shared();
    let b = broker().await;
    let n = Names::new("missing");
    assert!(matches!(
        b.queue_info(&n.queue).await,
        Err(amqp8::AmqpError::NoSuchQueue(_))
    ));
    let (h, _seen) = scripted();
    assert!(matches!(
        b.consume(n.options(1, 1), h).await,
        Err(amqp8::AmqpError::NoSuchQueue(_))
    ));
    b.declare(&n.topology("work.#", &[])).await.unwrap();
    b.publish_many(vec![msg(&n, "a"), msg(&n, "b")])
        .await
        .unwrap();
    assert_eq!(b.delete_queue(&n.queue).await.unwrap(), 2);
    assert!(b.topology().queues.iter().all(|q| q.name != n.queue));
    assert!(b.topology().bindings.iter().all(|x| x.queue != n.queue));
    assert!(matches!(
        b.delete_queue(&n.queue).await,
        Err(amqp8::AmqpError::NoSuchQueue(_))
    ));
    assert_eq!(ready(&n.queue).await, None);
    n.cleanup().await;
}
