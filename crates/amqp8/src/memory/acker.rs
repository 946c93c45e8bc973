//! Settling in-memory deliveries, and [`TestAcker`] for handler unit tests.

use parking_lot::Mutex;
use std::sync::Arc;

use async_trait::async_trait;

use crate::broker::{Acker, Delivery, PublishOutcome};
use crate::error::AmqpError;

use super::Inner;
use super::state::{State, StoredMessage};

/// Settles one delivery of the in-memory broker.
pub(crate) struct MemAcker {
    pub(crate) inner: Arc<Inner>,
    pub(crate) id: u64,
    pub(crate) queue: String,
    /// Autoack deliveries are settled already; the message is kept for dead-lettering.
    pub(crate) autoacked: Option<StoredMessage>,
    pub(crate) dead_letter: Option<(String, String)>,
}

impl MemAcker {
    /// Runs `f` on the broker's state, then wakes consumers and waiters.
    fn with_state<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let out = f(&mut self.inner.lock());
        self.inner.changed();
        out
    }

    fn gone(&self) -> AmqpError {
        Inner::unavailable(
            "the delivery is no longer held (its channel closed); the broker redelivers it",
        )
    }
}

#[async_trait]
impl Acker for MemAcker {
    async fn ack(self: Box<Self>) -> Result<(), AmqpError> {
        if self.autoacked.is_some() {
            return Ok(());
        }
        let settled = self.with_state(|s| s.settle(self.id));
        settled.map(|_| ()).ok_or_else(|| self.gone())
    }

    async fn nack(self: Box<Self>, requeue: bool) -> Result<(), AmqpError> {
        if self.autoacked.is_some() {
            return Ok(());
        }
        self.with_state(|s| {
            let u = s.settle(self.id).ok_or_else(|| self.gone())?;
            if requeue {
                s.requeue(u);
            } else {
                s.dead_letter_by_queue(&u.queue, u.message, "rejected");
            }
            Ok(())
        })
    }

    async fn dead_letter(self: Box<Self>, reason: String) -> Result<(), AmqpError> {
        self.with_state(|s| {
            let message = match &self.autoacked {
                Some(m) => m.clone(),
                None => s
                    .unacked
                    .get(&self.id)
                    .ok_or_else(|| self.gone())?
                    .message
                    .clone(),
            };
            let outcome = match &self.dead_letter {
                Some((exchange, key)) => {
                    let copy =
                        State::dead_letter_copy(&message, &self.queue, exchange, key, &reason);
                    s.publish(copy, true)
                }
                None => Ok(PublishOutcome::Unroutable),
            };
            let settled = s.settle(self.id);
            if outcome.as_ref().ok() != Some(&PublishOutcome::Confirmed) {
                tracing::error!(queue = %self.queue, %reason, outcome = ?outcome,
                    "dead-letter queue did not take the message; rejecting it instead");
                if let Some(u) = settled {
                    s.dead_letter_by_queue(&u.queue, u.message, "rejected");
                }
            }
            Ok(())
        })
    }
}

/// How a [`TestAcker`] was settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Acknowledged.
    Ack,
    /// Negatively acknowledged.
    Nack {
        /// Put back in the queue.
        requeue: bool,
    },
    /// Dead-lettered with this reason.
    DeadLetter(String),
}

/// An [`Acker`] that records how it was settled: for unit tests of a
/// [`Handler`](crate::Handler) without any broker.
///
/// ```
/// # use amqp8::memory::{Settlement, TestAcker};
/// let (delivery, settled) = TestAcker::delivery("cptm8", "cptm8.x.completed", b"{}".to_vec());
/// assert!(settled.get().is_none());
/// # drop(delivery);
/// ```
#[derive(Debug, Clone, Default)]
pub struct TestAcker {
    settled: Arc<Mutex<Option<Settlement>>>,
}

impl TestAcker {
    /// A new acker and a handle to read its settlement.
    pub fn new() -> (Box<dyn Acker>, TestAcker) {
        let t = TestAcker::default();
        (Box::new(t.clone()), t)
    }

    /// A delivery carrying a new test acker.
    pub fn delivery(exchange: &str, routing_key: &str, body: Vec<u8>) -> (Delivery, TestAcker) {
        let (acker, t) = TestAcker::new();
        (
            Delivery::new(body, exchange.into(), routing_key.into(), false, acker),
            t,
        )
    }

    /// How the acker was settled, if it was.
    pub fn get(&self) -> Option<Settlement> {
        self.settled.lock().clone()
    }

    fn set(&self, s: Settlement) -> Result<(), AmqpError> {
        let mut g = self.settled.lock();
        if let Some(previous) = &*g {
            panic!("TestAcker settled twice: {previous:?} then {s:?}");
        }
        *g = Some(s);
        Ok(())
    }
}

#[async_trait]
impl Acker for TestAcker {
    async fn ack(self: Box<Self>) -> Result<(), AmqpError> {
        self.set(Settlement::Ack)
    }
    async fn nack(self: Box<Self>, requeue: bool) -> Result<(), AmqpError> {
        self.set(Settlement::Nack { requeue })
    }
    async fn dead_letter(self: Box<Self>, reason: String) -> Result<(), AmqpError> {
        self.set(Settlement::DeadLetter(reason))
    }
}
