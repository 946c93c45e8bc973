//! [`MemoryBroker`]: an in-memory [`Broker`] for unit tests of the layers above.
//!
//! It behaves like RabbitMQ where the layers above can tell: topic/direct/fanout
//! routing, durable-style queues with `x-max-length`/`x-max-length-bytes` and
//! `x-overflow` (`reject-publish` → [`PublishOutcome::Nacked`], `drop-head` drops the
//! oldest), `x-dead-letter-exchange`, mandatory publishes → [`PublishOutcome::Unroutable`],
//! redeclaration checks, consumers with prefetch, manual ack, requeue (`redelivered`
//! set) and dead-lettering through the same consumer logic as the real broker. Test
//! controls inject outages, blocked publishers, refused connections, failed or nacked
//! publishes, and read or take queue contents. Never use it outside tests: nothing is persisted.

mod acker;
mod consumer;
mod state;

use parking_lot::{Mutex, MutexGuard};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{Notify, watch};

use crate::broker::{
    Broker, BrokerHealth, ConsumeOptions, ConsumerHandle, Handler, OutgoingMessage, PoolStats,
    PublishOutcome, QueueInfo, Refusal, Topology,
};
use crate::error::AmqpError;
use crate::health::ConsumerRegistry;
use crate::redelivery::Redeliveries;

pub use acker::{Settlement, TestAcker};
pub use state::StoredMessage;

use state::State;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Status {
    up: bool,
    blocked: bool,
    /// Set while connection attempts are refused (see [`MemoryBroker::set_refused`]).
    refused: Option<Refusal>,
}

/// Shared by the broker handle, its consumers and ackers.
#[derive(Default)]
pub(crate) struct Inner {
    state: Mutex<State>,
    pub(crate) notify: Notify,
    status: watch::Sender<Status>,
    pub(crate) consumers: ConsumerRegistry,
    pub(crate) redeliveries: Arc<Redeliveries>,
    pub(crate) next_consumer: AtomicU64,
    outage_wait_ms: AtomicU64,
    fail_publishes: AtomicU32,
    nack_publishes: AtomicU32,
    connections: AtomicU64,
    published: Mutex<Vec<(OutgoingMessage, PublishOutcome)>>,
}

impl Inner {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Wakes consumers and waiters after a change.
    pub(crate) fn changed(&self) {
        self.notify.notify_waiters();
    }

    pub(crate) fn is_up(&self) -> bool {
        self.status.borrow().up
    }

    fn unavailable(reason: &str) -> AmqpError {
        AmqpError::Unavailable {
            host: "memory".into(),
            reason: reason.into(),
        }
    }

    /// The error operations fail with at once while connections are refused, as
    /// amqp8's RabbitMQ broker's do.
    fn refused(refusal: Refusal) -> AmqpError {
        let reason = "simulated refusal".to_owned();
        match refusal {
            Refusal::Login => AmqpError::AccessRefused {
                host: "memory".into(),
                user: "memory".into(),
                reason,
            },
            Refusal::VirtualHost => AmqpError::VhostNotAllowed {
                host: "memory".into(),
                vhost: "/".into(),
                user: "memory".into(),
                reason,
            },
        }
    }

    /// Waits (up to the outage wait) until the broker is up and, for publishes, not
    /// blocking publishers. While connections are refused it fails at once with the
    /// refusal ([`AmqpError::AccessRefused`] or [`AmqpError::VhostNotAllowed`]).
    async fn wait_available(&self, publishing: bool) -> Result<(), AmqpError> {
        let ok = |s: &Status| s.up && !(publishing && s.blocked);
        let mut rx = self.status.subscribe();
        let now = *rx.borrow();
        if ok(&now) {
            return Ok(());
        }
        if let Some(r) = now.refused {
            return Err(Self::refused(r));
        }
        let wait = Duration::from_millis(self.outage_wait_ms.load(Ordering::Relaxed));
        let waited =
            match tokio::time::timeout(wait, rx.wait_for(|s| ok(s) || s.refused.is_some())).await {
                Ok(Ok(s)) => Some(*s),
                _ => None,
            };
        let s = waited.unwrap_or_else(|| *rx.borrow());
        if ok(&s) {
            Ok(())
        } else if let Some(r) = s.refused {
            Err(Self::refused(r))
        } else if s.up {
            Err(AmqpError::Blocked {
                host: "memory".into(),
                reason: "simulated resource alarm".into(),
                waited: wait,
            })
        } else {
            Err(Self::unavailable("simulated outage"))
        }
    }
}

/// An in-memory broker for unit tests. Cheap to clone: clones share everything, so a
/// test can keep one and hand another out as `Arc<dyn Broker>`.
#[derive(Clone)]
pub struct MemoryBroker {
    inner: Arc<Inner>,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        MemoryBroker::new()
    }
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("up", &self.inner.is_up())
            .finish_non_exhaustive()
    }
}

impl MemoryBroker {
    /// An empty, connected broker (with RabbitMQ's `amq.*` exchanges). Operations
    /// during an outage fail at once unless [`MemoryBroker::set_outage_wait`] says to
    /// wait.
    pub fn new() -> Self {
        let inner = Inner {
            state: Mutex::new(State::new()),
            status: watch::Sender::new(Status {
                up: true,
                ..Status::default()
            }),
            next_consumer: AtomicU64::new(1),
            connections: AtomicU64::new(1),
            ..Inner::default()
        };
        MemoryBroker {
            inner: Arc::new(inner),
        }
    }

    /// This broker as the trait object the layers above take.
    pub fn as_dyn(&self) -> Arc<dyn Broker> {
        Arc::new(self.clone())
    }

    // ----- fault injection ---------------------------------------------------------

    /// Starts (`true`) or ends (`false`) a simulated outage. Starting one returns every
    /// unacked delivery to its queue flagged redelivered (as a lost connection does),
    /// makes consumers inactive and operations wait or fail with
    /// [`AmqpError::Unavailable`]. Ending it brings consumers back (counted as
    /// restarts). Queue contents survive, as durable queues do.
    pub fn set_outage(&self, outage: bool) {
        if outage {
            self.inner.status.send_modify(|s| s.up = false);
            self.inner.lock().return_unacked(None);
        } else if !self.inner.is_up() {
            self.inner.connections.fetch_add(1, Ordering::Relaxed);
            self.inner.status.send_modify(|s| s.up = true);
        }
        self.inner.changed();
    }

    /// Simulates a broker resource alarm (`connection.blocked`): publishes wait for
    /// it to end, up to the outage wait, then fail with [`AmqpError::Blocked`].
    pub fn set_blocked(&self, blocked: bool) {
        self.inner.status.send_modify(|s| s.blocked = blocked);
        self.inner.changed();
    }

    /// Simulates the broker refusing connection attempts: `Some(refusal)` drops the
    /// connection as [`MemoryBroker::set_outage`]`(true)` does and keeps it down;
    /// operations fail at once with [`AmqpError::AccessRefused`]
    /// ([`Refusal::Login`]) or [`AmqpError::VhostNotAllowed`]
    /// ([`Refusal::VirtualHost`]), and [`BrokerHealth::refused`] says which. `None`
    /// ends a refusal: the broker reconnects as after `set_outage(false)` (it does
    /// not end an outage started by `set_outage`).
    pub fn set_refused(&self, refused: Option<Refusal>) {
        let before = self.inner.status.borrow().refused;
        self.inner.status.send_modify(|s| s.refused = refused);
        match (before, refused) {
            (_, Some(_)) => self.set_outage(true),
            (Some(_), None) => self.set_outage(false),
            (None, None) => {}
        }
    }

    /// How long operations wait for an outage or block to end before failing with
    /// [`AmqpError::Unavailable`] or [`AmqpError::Blocked`] (default zero: fail at
    /// once).
    pub fn set_outage_wait(&self, wait: Duration) {
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        self.inner.outage_wait_ms.store(ms, Ordering::Relaxed);
    }

    /// The next `n` publishes fail with [`AmqpError::Unavailable`] (nothing is
    /// enqueued).
    pub fn fail_next_publishes(&self, n: u32) {
        self.inner.fail_publishes.store(n, Ordering::Relaxed);
    }

    /// The next `n` routable publishes are nacked by the broker (nothing is enqueued),
    /// as a full `reject-publish` queue would.
    pub fn nack_next_publishes(&self, n: u32) {
        self.inner.nack_publishes.store(n, Ordering::Relaxed);
    }

    // ----- inspection ----------------------------------------------------------------

    /// The ready messages of a queue, oldest first (empty when it does not exist).
    pub fn messages_in(&self, queue: &str) -> Vec<StoredMessage> {
        self.inner
            .lock()
            .queues
            .get(queue)
            .map(|q| q.ready.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Removes and returns the ready messages of a queue, oldest first.
    pub fn take(&self, queue: &str) -> Vec<StoredMessage> {
        let taken = self
            .inner
            .lock()
            .queues
            .get_mut(queue)
            .map(|q| q.ready.drain(..).collect())
            .unwrap_or_default();
        self.inner.changed();
        taken
    }

    /// Deliveries of a queue handed to consumers and not settled yet.
    pub fn unacked(&self, queue: &str) -> usize {
        self.inner
            .lock()
            .unacked
            .values()
            .filter(|u| u.queue == queue)
            .count()
    }

    /// Puts a message straight into a queue (e.g. a malformed one, or one flagged
    /// redelivered). [`AmqpError::NoSuchQueue`] when the queue does not exist.
    pub fn inject(&self, queue: &str, message: StoredMessage) -> Result<(), AmqpError> {
        {
            let mut s = self.inner.lock();
            let q = s
                .queues
                .get_mut(queue)
                .ok_or_else(|| AmqpError::NoSuchQueue(queue.into()))?;
            q.ready.push_back(message);
        }
        self.inner.changed();
        Ok(())
    }

    /// Every publish answered so far (not the failed ones), with its outcome, in order.
    pub fn published(&self) -> Vec<(OutgoingMessage, PublishOutcome)> {
        self.inner.published.lock().clone()
    }

    /// Handler panics caught so far, over every running consumer.
    pub fn panics(&self) -> u64 {
        self.inner.consumers.all().iter().map(|c| c.panics()).sum()
    }

    /// Deliveries dead-lettered so far by amqp8 (handler decision or redelivery
    /// limit), over every running consumer.
    pub fn dead_lettered(&self) -> u64 {
        self.inner
            .consumers
            .all()
            .iter()
            .map(|c| c.dead_letters())
            .sum()
    }

    /// The declared exchanges (without `amq.*`), queues and bindings.
    pub fn topology(&self) -> Topology {
        self.inner.lock().topology()
    }

    /// Waits until `condition` holds, re-checking after every change and at least
    /// every 10 ms; `false` when `timeout` passed first.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        condition: impl Fn(&MemoryBroker) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if condition(self) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let step = (deadline - now).min(Duration::from_millis(10));
            let _ = tokio::time::timeout(step, notified).await;
        }
    }

    async fn publish_one(&self, message: OutgoingMessage) -> Result<PublishOutcome, AmqpError> {
        self.inner.wait_available(true).await?;
        if take_one(&self.inner.fail_publishes) {
            return Err(Inner::unavailable("simulated publish failure"));
        }
        let outcome = if take_one(&self.inner.nack_publishes) {
            PublishOutcome::Nacked
        } else {
            let stored = StoredMessage {
                headers: message.headers.clone(),
                app_id: message.app_id.clone(),
                message_id: message.message_id.clone().unwrap_or_default(),
                ..StoredMessage::new(
                    &message.exchange,
                    &message.routing_key,
                    message.body.clone(),
                )
            };
            self.inner.lock().publish(stored, message.mandatory)?
        };
        self.inner.published.lock().push((message, outcome));
        self.inner.changed();
        Ok(outcome)
    }
}

/// Takes one from `counter` unless it is zero; whether it did.
fn take_one(counter: &AtomicU32) -> bool {
    let minus_one = |n: u32| n.checked_sub(1);
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, minus_one)
        .is_ok()
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn declare(&self, topology: &Topology) -> Result<(), AmqpError> {
        self.inner.wait_available(false).await?;
        let result = self.inner.lock().declare(topology);
        self.inner.changed();
        result
    }

    async fn publish(&self, message: OutgoingMessage) -> Result<PublishOutcome, AmqpError> {
        self.publish_one(message).await
    }

    async fn publish_many(
        &self,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<PublishOutcome>, AmqpError> {
        let mut out = Vec::with_capacity(messages.len());
        for m in messages {
            out.push(self.publish_one(m).await?);
        }
        Ok(out)
    }

    async fn consume(
        &self,
        options: ConsumeOptions,
        handler: Arc<dyn Handler>,
    ) -> Result<ConsumerHandle, AmqpError> {
        self.inner.wait_available(false).await?;
        if !self.inner.lock().queues.contains_key(&options.queue) {
            return Err(AmqpError::NoSuchQueue(options.queue));
        }
        Ok(consumer::spawn(self.inner.clone(), options, handler))
    }

    async fn queue_info(&self, queue: &str) -> Result<QueueInfo, AmqpError> {
        self.inner.wait_available(false).await?;
        let messages = self
            .inner
            .lock()
            .queues
            .get(queue)
            .map(|q| q.ready.len() as u32)
            .ok_or_else(|| AmqpError::NoSuchQueue(queue.into()))?;
        let consumers = self
            .inner
            .consumers
            .snapshot()
            .iter()
            .filter(|c| c.queue == queue && c.active)
            .count() as u32;
        Ok(QueueInfo {
            messages,
            consumers,
        })
    }

    async fn delete_queue(&self, queue: &str) -> Result<u32, AmqpError> {
        self.inner.wait_available(false).await?;
        let n = self
            .inner
            .lock()
            .delete_queue(queue)
            .ok_or_else(|| AmqpError::NoSuchQueue(queue.into()))?;
        self.inner.changed();
        Ok(n)
    }

    fn health(&self) -> BrokerHealth {
        let s = *self.inner.status.borrow();
        let open = u32::from(s.up);
        BrokerHealth {
            connected: s.up,
            blocked: s.blocked,
            refused: s.refused,
            consumers: self.inner.consumers.snapshot(),
            pool: PoolStats {
                size: open,
                idle: open,
                in_use: 0,
                created: self.inner.connections.load(Ordering::Relaxed),
                failed: 0,
            },
        }
    }
}

#[cfg(test)]
mod tests;
