//! Running one delivery through a [`Handler`] and carrying out its [`Decision`]: the
//! part of a consumer shared by the RabbitMQ and in-memory brokers, so both behave
//! the same way.

use parking_lot::Mutex;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::broker::{ConsumerControl, Decision, Delivery, Handler};
use crate::health::ConsumerStats;
use crate::redelivery::{MessageKey, Redeliveries};

/// Control of one consumer, shared by its handle and its task.
pub(crate) struct Control {
    /// Cancelled to stop the consumer.
    pub(crate) stop: CancellationToken,
    /// How long handlers in flight may run on once stopped.
    pub(crate) grace: Mutex<Duration>,
    /// Cancelled when the consumer's task ends.
    done: CancellationToken,
}

impl Control {
    /// The control of a consumer stopped by `stop`, and the guard its task holds
    /// until it ends.
    pub(crate) fn new(stop: CancellationToken) -> (Arc<Control>, DropGuard) {
        let done = CancellationToken::new();
        let guard = done.clone().drop_guard();
        let grace = Mutex::new(Duration::ZERO);
        (Arc::new(Control { stop, grace, done }), guard)
    }
}

#[async_trait]
impl ConsumerControl for Control {
    async fn stop(&self, grace: Duration) {
        if !self.stop.is_cancelled() {
            *self.grace.lock() = grace;
            self.stop.cancel();
        }
        self.done.cancelled().await;
    }
}

/// What a consumer runs for each delivery.
pub(crate) struct Dispatch {
    pub(crate) handler: Arc<dyn Handler>,
    pub(crate) stats: Arc<ConsumerStats>,
    pub(crate) redeliveries: Arc<Redeliveries>,
    pub(crate) max_redeliveries: u32,
    pub(crate) queue: String,
}

enum Settle {
    Ack,
    Requeue,
    DeadLetter(String),
}

impl Dispatch {
    /// Handles one delivery up to its settlement (or hands it over to the handler when
    /// it deferred it).
    pub(crate) async fn run(&self, mut delivery: Delivery, key: MessageKey) {
        self.stats.seen();
        let local = u64::from(self.redeliveries.record(key, delivery.redelivered));
        let count = local.max(delivery.delivery_count.unwrap_or(0));
        delivery.delivery_count = (count > 0 || delivery.delivery_count.is_some()).then_some(count);
        if count > u64::from(self.max_redeliveries) {
            let reason = format!(
                "redelivered {count} times (limit {}) from queue {}",
                self.max_redeliveries, self.queue
            );
            tracing::warn!(queue = %self.queue, routing_key = %delivery.routing_key, %reason,
                "dead-lettering a message that keeps coming back");
            self.settle(&mut delivery, Settle::DeadLetter(reason), key)
                .await;
            return;
        }
        let outcome = AssertUnwindSafe(self.handler.handle(&mut delivery))
            .catch_unwind()
            .await;
        let settle = match outcome {
            Ok(Ok(Decision::Ack)) => Settle::Ack,
            Ok(Ok(Decision::Requeue)) => Settle::Requeue,
            Ok(Ok(Decision::DeadLetter(reason))) => Settle::DeadLetter(reason),
            Ok(Ok(Decision::Deferred)) => {
                if delivery.acker.is_none() {
                    return;
                }
                self.stats.error();
                tracing::error!(queue = %self.queue,
                    "handler returned Deferred without taking the acker (Delivery::defer); requeueing");
                Settle::Requeue
            }
            Ok(Err(e)) => {
                self.stats.error();
                tracing::warn!(queue = %self.queue, routing_key = %delivery.routing_key,
                    error = %e, "handler failed; requeueing the message");
                Settle::Requeue
            }
            Err(panic) => {
                self.stats.panicked();
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".into());
                tracing::error!(queue = %self.queue, routing_key = %delivery.routing_key,
                    panic = %what, "handler panicked; requeueing the message");
                Settle::Requeue
            }
        };
        self.settle(&mut delivery, settle, key).await;
    }

    async fn settle(&self, delivery: &mut Delivery, settle: Settle, key: MessageKey) {
        let Some(acker) = delivery.defer() else {
            tracing::warn!(queue = %self.queue,
                "handler took the acker (Delivery::defer) but returned a decision; the handler settles it");
            return;
        };
        let (what, result) = match settle {
            Settle::Ack => {
                self.redeliveries.forget(key);
                ("ack", acker.ack().await)
            }
            Settle::Requeue => ("requeue", acker.nack(true).await),
            Settle::DeadLetter(reason) => {
                self.redeliveries.forget(key);
                self.stats.dead_lettered();
                ("dead-letter", acker.dead_letter(reason).await)
            }
        };
        if let Err(e) = result {
            tracing::warn!(queue = %self.queue, error = %e, action = what,
                "could not settle a delivery; the broker will redeliver it");
        }
    }
}
