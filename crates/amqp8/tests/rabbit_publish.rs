//! amqp8 on the real RabbitMQ: publishing (confirms, nacks, returns, pipelining).

mod common;

use amqp8::{AmqpError, ArgValue, Broker, OutgoingMessage, PublishOutcome};
use common::*;

fn msg(n: &Names, key: &str, body: &str) -> OutgoingMessage {
    OutgoingMessage::new(n.exchange.clone(), key, body.as_bytes().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_nack_return_and_refused_paths() {
    let _lock = lock_shared();
    let b = broker().await;
    let n = Names::new("paths");
    let full = [
        ("x-max-length", ArgValue::Int(1)),
        ("x-overflow", ArgValue::Str("reject-publish".into())),
    ];
    b.declare(&n.topology("cptm8.asmm8.#", &full))
        .await
        .unwrap();

    assert_eq!(
        b.publish(msg(&n, "cptm8.asmm8.get.scan", "1"))
            .await
            .unwrap(),
        PublishOutcome::Confirmed
    );
    // The queue holds one message: the broker nacks (reject-publish).
    assert_eq!(
        b.publish(msg(&n, "cptm8.asmm8.get.scan", "2"))
            .await
            .unwrap(),
        PublishOutcome::Nacked
    );
    // Mandatory and bound to nothing: returned.
    assert_eq!(
        b.publish(msg(&n, "cptm8.nobody", "3")).await.unwrap(),
        PublishOutcome::Unroutable
    );
    let mut quiet = msg(&n, "cptm8.nobody", "4");
    quiet.mandatory = false;
    assert_eq!(b.publish(quiet).await.unwrap(), PublishOutcome::Confirmed);
    // A missing exchange is refused, and publishing goes on afterwards.
    let err = b
        .publish(OutgoingMessage::new(
            format!("{}.missing", n.exchange),
            "k",
            b"{}".to_vec(),
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AmqpError::Refused { reason, .. } if reason.contains("NOT_FOUND")),
        "{err:?}"
    );
    assert_eq!(
        b.publish(msg(&n, "cptm8.nobody", "5")).await.unwrap(),
        PublishOutcome::Unroutable
    );

    assert_eq!(ready(&n.queue).await, Some(1));
    let info = b.queue_info(&n.queue).await.unwrap();
    assert_eq!((info.messages, info.consumers), (1, 0));
    let got = get_all(&n.queue, 10).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, b"1");
    n.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_arguments_reach_the_broker_typed() {
    let _lock = lock_shared();
    let b = broker().await;
    let n = Names::new("typed");
    // RabbitMQ refuses a string x-max-length: integers must stay integers.
    let err = b
        .declare(&n.topology("k", &[("x-max-length", ArgValue::Str("1".into()))]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AmqpError::Refused { reason, .. } if reason.contains("x-max-length")),
        "{err:?}"
    );
    b.declare(&n.topology("k", &[("x-max-length", ArgValue::Int(2))]))
        .await
        .unwrap();
    // An equivalent redeclaration is fine, a different one refused.
    b.declare(&n.topology("k", &[("x-max-length", ArgValue::Int(2))]))
        .await
        .unwrap();
    let err = b
        .declare(&n.topology("k", &[("x-max-length", ArgValue::Int(3))]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AmqpError::Refused { reason, .. } if reason.contains("PRECONDITION_FAILED")),
        "{err:?}"
    );
    assert!(!err.is_transient());
    n.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_many_keeps_input_order_of_outcomes() {
    let _lock = lock_shared();
    let b = broker().await;
    let n = Names::new("many");
    b.declare(&n.topology("yes.#", &[])).await.unwrap();
    let messages: Vec<OutgoingMessage> = (0..3000)
        .map(|i| {
            let key = if i % 3 == 0 { "no.route" } else { "yes.go" };
            msg(&n, key, &format!("{{\"i\":{i}}}"))
        })
        .collect();
    let outcomes = b.publish_many(messages).await.unwrap();
    assert_eq!(outcomes.len(), 3000);
    for (i, o) in outcomes.iter().enumerate() {
        let expected = if i % 3 == 0 {
            PublishOutcome::Unroutable
        } else {
            PublishOutcome::Confirmed
        };
        assert_eq!(*o, expected, "message {i}");
    }
    assert!(eventually(WAIT, || async { ready(&n.queue).await == Some(2000) }).await);
    n.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_id_set_by_the_publisher_is_the_same_on_every_copy() {
    let _lock = lock_shared();
    let b = broker().await;
    let n = Names::new("msgid");
    b.declare(&n.topology("cptm8.#", &[])).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let h = std::sync::Arc::new(amqp8::handler_fn(move |m: amqp8::Message| {
        let tx = tx.clone();
        async move {
            let _ = tx.send((String::from_utf8_lossy(&m.body).into_owned(), m.message_id));
            Ok(amqp8::Decision::Ack)
        }
    }));
    let _c = b.consume(n.options(8, 3), h).await.unwrap();
    // One logical message published twice (a re-publish), and a message without an id
    // published twice (two messages as far as amqp8 knows).
    let same = msg(&n, "cptm8.a", "job").with_message_id("job:w:a:1");
    for m in [
        same.clone(),
        same,
        msg(&n, "cptm8.a", "x"),
        msg(&n, "cptm8.a", "x"),
    ] {
        assert_eq!(b.publish(m).await.unwrap(), PublishOutcome::Confirmed);
    }
    let mut got = Vec::new();
    while got.len() < 4 {
        let m = tokio::time::timeout(std::time::Duration::from_secs(30), rx.recv())
            .await
            .expect("delivered")
            .unwrap();
        got.push(m);
    }
    let ids = |body: &str| -> Vec<Option<String>> {
        got.iter()
            .filter(|(b, _)| b == body)
            .map(|(_, id)| id.clone())
            .collect()
    };
    assert_eq!(
        ids("job"),
        [Some("job:w:a:1".into()), Some("job:w:a:1".into())]
    );
    let x = ids("x");
    assert!(
        x.iter()
            .all(|id| id.as_ref().is_some_and(|s| !s.is_empty()))
    );
    assert_ne!(x[0], x[1], "amqp8's own ids are unique per publish");
    // Refused like any other short string field: too long.
    let err = b
        .publish(msg(&n, "cptm8.a", "long").with_message_id("i".repeat(256)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("message_id"), "{err}");
    n.cleanup().await;
}
