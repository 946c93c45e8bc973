//! `model8::topic::matches` agrees with the real RabbitMQ on every case of
//! `model8::topic::CASES` (the empty key and empty words included): for each case, a
//! topic exchange with one queue bound with the binding key, then a mandatory publish
//! with the routing key, which the broker confirms when a binding matched and returns
//! when none did.

mod common;

use amqp8::{Broker, OutgoingMessage, PublishOutcome};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_one_topic_matcher_agrees_with_rabbitmq() {
    let _lock = lock_shared();
    let b = broker().await;
    let mut disagree = Vec::new();
    for &(pattern, key, expected) in model8::topic::CASES {
        assert_eq!(
            model8::topic::matches(pattern, key),
            expected,
            "{pattern:?} {key:?}"
        );
        let n = Names::new("topic");
        b.declare(&n.topology(pattern, &[])).await.unwrap();
        let outcome = b
            .publish(OutgoingMessage::new(
                n.exchange.clone(),
                key,
                b"{}".to_vec(),
            ))
            .await
            .unwrap();
        let routed = match outcome {
            PublishOutcome::Confirmed => true,
            PublishOutcome::Unroutable => false,
            other => panic!("{pattern:?} {key:?}: unexpected {other:?}"),
        };
        if routed != expected {
            disagree.push((pattern, key, routed));
        }
        n.cleanup().await;
    }
    assert!(
        disagree.is_empty(),
        "RabbitMQ routes differently (binding key, routing key, routed): {disagree:?}"
    );
    b.close().await;
}
