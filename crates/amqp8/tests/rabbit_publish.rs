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
