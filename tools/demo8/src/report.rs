//! Publishing with publisher confirms, retried until the broker has the message.
//!
//! A worker acks its job only after its report (or, for a Go-style worker, the next
//! stage's kick-off) is confirmed, so nothing is lost when the broker is down or
//! pushes back: the job stays unacked while [`publish_confirmed`] retries, and returns
//! to the queue when it gives up.

use std::time::Duration;

use amqp8::{AmqpError, Broker, OutgoingMessage, PublishOutcome};
use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::time::Instant;

/// How long and how often to retry a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// First wait after an unconfirmed publish.
    pub initial: Duration,
    /// Longest wait between two tries.
    pub max: Duration,
    /// Give up once this much time has passed since the first try.
    pub give_up_after: Duration,
}

impl Default for RetryPolicy {
    /// 200 ms doubling up to 5 s, for at most 60 s.
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(5),
            give_up_after: Duration::from_secs(60),
        }
    }
}

/// Why a publish was not confirmed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Still not confirmed when the policy's time ran out.
    #[error(
        "publish to exchange {exchange:?} with routing key {routing_key:?} not confirmed after {tries} tries in {waited:?}: {last}"
    )]
    GaveUp {
        /// Exchange.
        exchange: String,
        /// Routing key.
        routing_key: String,
        /// Tries made.
        tries: u32,
        /// Time spent.
        waited: Duration,
        /// The last answer or error.
        last: String,
    },
    /// An error that retrying cannot fix (the broker refused, the client is closing).
    #[error("publish to exchange {exchange:?} with routing key {routing_key:?} failed: {source}")]
    Permanent {
        /// Exchange.
        exchange: String,
        /// Routing key.
        routing_key: String,
        /// The error.
        #[source]
        source: AmqpError,
    },
}

/// Publishes `message` until the broker confirms it, retrying with backoff on a nack
/// (backpressure, e.g. a full `reject-publish` queue), on an unroutable message (no
/// queue bound yet) and on a transient error (broker unavailable).
pub async fn publish_confirmed(
    broker: &dyn Broker,
    message: OutgoingMessage,
    policy: RetryPolicy,
) -> Result<(), PublishError> {
    let start = Instant::now();
    let mut delays = ExponentialBuilder::new()
        .with_min_delay(policy.initial)
        .with_max_delay(policy.max)
        .with_factor(2.0)
        .without_max_times()
        .build();
    let mut tries = 0u32;
    loop {
        tries += 1;
        let last = match broker.publish(message.clone()).await {
            Ok(PublishOutcome::Confirmed) => return Ok(()),
            Ok(PublishOutcome::Nacked) => {
                "the broker nacked it (queue full? backpressure)".to_owned()
            }
            Ok(PublishOutcome::Unroutable) => format!(
                "no queue is bound to exchange {:?} for routing key {:?}",
                message.exchange, message.routing_key
            ),
            Err(e) if e.is_transient() => e.to_string(),
            Err(source) => {
                return Err(PublishError::Permanent {
                    exchange: message.exchange,
                    routing_key: message.routing_key,
                    source,
                });
            }
        };
        let waited = start.elapsed();
        let wait = delays.next().unwrap_or(policy.max);
        if waited + wait > policy.give_up_after {
            return Err(PublishError::GaveUp {
                exchange: message.exchange,
                routing_key: message.routing_key,
                tries,
                waited,
                last,
            });
        }
        tracing::warn!(exchange = %message.exchange, routing_key = %message.routing_key,
            tries, retry_in = ?wait, "publish not confirmed, retrying: {last}");
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amqp8::Topology;
    use amqp8::memory::MemoryBroker;

    fn topology() -> Topology {
        Topology::topic_queue("cptm8", "q", "cptm8.#")
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(5),
            give_up_after: Duration::from_secs(30),
        }
    }

    #[tokio::test]
    async fn retries_nacks_and_outages_until_confirmed() {
        let b = MemoryBroker::new();
        b.declare(&topology()).await.unwrap();
        b.nack_next_publishes(2);
        b.fail_next_publishes(1);
        let m = OutgoingMessage::new("cptm8", "cptm8.x", b"{}".to_vec());
        publish_confirmed(&b, m, fast()).await.unwrap();
        assert_eq!(b.messages_in("q").len(), 1, "exactly one copy enqueued");
        let outcomes: Vec<_> = b.published().into_iter().map(|(_, o)| o).collect();
        assert_eq!(
            outcomes,
            [
                PublishOutcome::Nacked,
                PublishOutcome::Nacked,
                PublishOutcome::Confirmed
            ]
        );
    }

    #[tokio::test]
    async fn gives_up_naming_the_routing_key_when_nothing_is_bound() {
        let b = MemoryBroker::new();
        b.declare(&topology()).await.unwrap();
        let policy = RetryPolicy {
            give_up_after: Duration::from_millis(50),
            ..fast()
        };
        let m = OutgoingMessage::new("cptm8", "other.key", b"{}".to_vec());
        let e = publish_confirmed(&b, m, policy).await.unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(e, PublishError::GaveUp { tries, .. } if tries > 1),
            "{text}"
        );
        assert!(
            text.contains("\"other.key\"") && text.contains("no queue is bound"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_missing_exchange_is_not_retried_forever() {
        let b = MemoryBroker::new();
        let m = OutgoingMessage::new("nope", "k", b"{}".to_vec());
        let policy = RetryPolicy {
            give_up_after: Duration::from_millis(200),
            ..fast()
        };
        // Either refused at once or given up within the policy: never a hang.
        let e = tokio::time::timeout(Duration::from_secs(10), publish_confirmed(&b, m, policy))
            .await
            .expect("publish_confirmed returns within its policy");
        assert!(e.is_err());
    }
}
