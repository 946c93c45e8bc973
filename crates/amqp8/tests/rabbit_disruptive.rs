//! amqp8 on the real RabbitMQ when the broker restarts or raises a resource alarm.
//! These tests hold the exclusive service lock and always restore the broker.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use amqp8::{
    AmqpError, BindingDecl, Broker, Decision, OutgoingMessage, PublishOutcome, QueueDecl,
    RabbitBroker, handler_fn,
};
use amqprs::channel::QueueDeleteArguments;
use common::*;
use tokio::sync::mpsc;

/// Restarts the RabbitMQ application when dropped, so a failing test never leaves it
/// stopped.
struct StartAppOnDrop;

impl Drop for StartAppOnDrop {
    fn drop(&mut self) {
        rabbitmqctl(&["start_app"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_broker_restart_everything_recovers_and_no_confirmed_message_is_lost() {
    let _lock = lock_exclusive();
    let b = Arc::new(broker().await);
    let n = Names::new("restart");
    let store = format!("{}.store", n.queue);
    let recovered = format!("{}.recovered", n.queue);
    let mut t = n.topology("work.#", &[]);
    for (q, key) in [(&store, "store.#"), (&recovered, "rec.#")] {
        t.queues.push(QueueDecl {
            name: q.clone(),
            arguments: Default::default(),
        });
        t.bindings.push(BindingDecl {
            exchange: n.exchange.clone(),
            queue: q.clone(),
            routing_key: key.into(),
        });
    }
    b.declare(&t).await.unwrap();

    // A consumer that reports what it gets.
    let (tx, mut got) = mpsc::unbounded_channel::<String>();
    let handler = handler_fn(move |m: amqp8::Message| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(String::from_utf8_lossy(&m.body).into_owned());
            Ok(Decision::Ack)
        }
    });
    let _c = b
        .consume(n.options(10, 100), Arc::new(handler))
        .await
        .unwrap();
    b.publish(OutgoingMessage::new(
        n.exchange.clone(),
        "work.before",
        b"before".to_vec(),
    ))
    .await
    .unwrap();
    assert_eq!(
        tokio::time::timeout(WAIT, got.recv())
            .await
            .unwrap()
            .unwrap(),
        "before"
    );

    // A publisher that keeps publishing through the restart and remembers what the
    // broker confirmed.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let b = b.clone();
        let stop = stop.clone();
        let exchange = n.exchange.clone();
        tokio::spawn(async move {
            let mut confirmed = BTreeSet::new();
            let mut failed = 0u32;
            let mut i = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let body = format!("m{i}");
                let m = OutgoingMessage::new(
                    exchange.clone(),
                    format!("store.{i}"),
                    body.clone().into_bytes(),
                );
                match b.publish(m).await {
                    Ok(PublishOutcome::Confirmed) => {
                        confirmed.insert(body);
                    }
                    Ok(other) => panic!("unexpected outcome {other:?}"),
                    Err(_) => failed += 1,
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (confirmed, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Someone deletes a queue amqp8 declared: topology recovery brings it back.
    {
        let c = raw().await.unwrap();
        let ch = c.open_channel(None).await.unwrap();
        ch.queue_delete(QueueDeleteArguments::new(&recovered))
            .await
            .unwrap();
        let _ = c.close().await;
    }
    assert_eq!(ready(&recovered).await, None);

    let guard = StartAppOnDrop;
    assert!(rabbitmqctl(&["stop_app"]), "rabbitmqctl stop_app failed");
    assert!(
        eventually(WAIT, || async { !b.health().connected }).await,
        "amqp8 did not notice the broker went away"
    );
    assert!(
        eventually(WAIT, || async {
            b.health().consumers.iter().all(|c| !c.active)
        })
        .await
    );
    // The broker stays away for a while (the scenario, not a synchronisation).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(rabbitmqctl(&["start_app"]), "rabbitmqctl start_app failed");
    let restarted = Instant::now();
    drop(guard);

    // The consumer is back on its own: a message published now reaches it.
    b.publish(OutgoingMessage::new(
        n.exchange.clone(),
        "work.after",
        b"after".to_vec(),
    ))
    .await
    .unwrap();
    loop {
        let body = tokio::time::timeout(WAIT, got.recv())
            .await
            .expect("consumer did not recover")
            .unwrap();
        if body == "after" {
            break;
        }
    }
    eprintln!(
        "consumer receiving again {:?} after start_app",
        restarted.elapsed()
    );
    let ch = b
        .health()
        .consumers
        .into_iter()
        .find(|c| c.queue == n.queue)
        .unwrap();
    assert!(ch.active);
    assert!(ch.restarts >= 1, "{ch:?}");
    assert!(b.health().connected);

    stop.store(true, Ordering::SeqCst);
    let (confirmed, failed) = publisher.await.unwrap();
    eprintln!("publisher: {} confirmed, {failed} failed", confirmed.len());
    assert_eq!(
        failed, 0,
        "publishes during the restart should wait for recovery, not fail"
    );
    assert!(confirmed.len() > 20);

    // Every confirmed message is in the queue (duplicates allowed: at-least-once).
    let stored: BTreeSet<String> = get_all(&store, 100_000)
        .await
        .into_iter()
        .map(|(body, _)| String::from_utf8(body).unwrap())
        .collect();
    let missing: Vec<&String> = confirmed.difference(&stored).collect();
    assert!(
        missing.is_empty(),
        "confirmed but not in the queue: {missing:?}"
    );

    // The deleted queue was declared again on the new connections.
    assert_eq!(ready(&recovered).await, Some(0));
    cleanup_extra(&[&store, &recovered]).await;
    n.cleanup().await;
}

async fn cleanup_extra(queues: &[&str]) {
    if let Ok(c) = raw().await {
        if let Ok(ch) = c.open_channel(None).await {
            for q in queues {
                let _ = ch.queue_delete(QueueDeleteArguments::new(q)).await;
            }
        }
        let _ = c.close().await;
    }
}

/// Raises a RabbitMQ memory alarm (every connection that publishes gets blocked) and
/// puts the watermark back when dropped, even when the test fails.
struct MemoryAlarm;

impl MemoryAlarm {
    fn raise() -> MemoryAlarm {
        let alarm = MemoryAlarm;
        assert!(
            rabbitmqctl(&["set_vm_memory_high_watermark", "0.0000001"]),
            "rabbitmqctl set_vm_memory_high_watermark failed"
        );
        alarm
    }
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        rabbitmqctl(&["set_vm_memory_high_watermark", "0.4"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_memory_alarm_publishers_are_blocked_wait_and_go_on_after_it() {
    let _lock = lock_exclusive();
    // Two handles, each with its own publishing connection: one waits as long as it
    // takes, the other gives up after a short deadline.
    let patient = Arc::new(broker().await);
    let mut s = settings();
    s.pool.connection_timeout = Duration::from_secs(2);
    let hasty = RabbitBroker::connect(&s).await.unwrap();
    let n = Names::new("alarm");
    patient.declare(&n.topology("work.#", &[])).await.unwrap();
    let m =
        |body: &str| OutgoingMessage::new(n.exchange.clone(), "work.x", body.as_bytes().to_vec());
    for b in [&*patient, &hasty] {
        assert_eq!(
            b.publish(m("before")).await.unwrap(),
            PublishOutcome::Confirmed
        );
        assert!(!b.health().blocked);
    }
    assert_eq!(ready(&n.queue).await, Some(2));

    let alarm = MemoryAlarm::raise();
    // RabbitMQ blocks a connection when it next publishes, and tells it
    // (`connection.blocked`, which amqprs asks for once patched).
    let waiting = {
        let patient = patient.clone();
        let m = m("during");
        tokio::spawn(async move { patient.publish(m).await })
    };
    assert!(
        eventually(WAIT, || async { patient.health().blocked }).await,
        "health().blocked never became true during the memory alarm"
    );

    // A publish with a short deadline fails with the typed error naming the alarm.
    let err = tokio::time::timeout(WAIT, hasty.publish(m("hasty")))
        .await
        .expect("the blocked publish outlived its deadline")
        .unwrap_err();
    eprintln!("publish during the alarm: {err}");
    match &err {
        AmqpError::Blocked { reason, .. } => {
            assert!(reason.contains("memory"), "{reason}");
        }
        other => panic!("expected AmqpError::Blocked, got {other:?}"),
    }
    assert!(err.is_transient());
    assert!(err.to_string().contains("blocking publishers"), "{err}");
    assert!(hasty.health().blocked);

    // Meanwhile (at least the hasty publish's deadline) the patient publish waited:
    // not settled, nothing new in the queue, still blocked.
    assert!(!waiting.is_finished(), "{:?}", waiting.await);
    assert_eq!(ready(&n.queue).await, Some(2));
    assert!(patient.health().blocked);

    drop(alarm);
    let outcome = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("the waiting publish did not complete after the alarm cleared")
        .unwrap();
    assert_eq!(outcome.unwrap(), PublishOutcome::Confirmed);
    assert!(
        eventually(WAIT, || async {
            !patient.health().blocked && !hasty.health().blocked
        })
        .await,
        "health().blocked stayed true after the alarm cleared"
    );
    // Both handles publish again without any help.
    for b in [&*patient, &hasty] {
        assert_eq!(
            b.publish(m("after")).await.unwrap(),
            PublishOutcome::Confirmed
        );
    }
    let bodies: Vec<String> = get_all(&n.queue, 100)
        .await
        .into_iter()
        .map(|(b, _)| String::from_utf8(b).unwrap())
        .collect();
    assert!(bodies.contains(&"during".to_owned()), "{bodies:?}");
    assert_eq!(
        bodies.iter().filter(|b| *b == "after").count(),
        2,
        "{bodies:?}"
    );
    n.cleanup().await;
}
