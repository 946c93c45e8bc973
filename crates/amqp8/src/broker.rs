//! The [`Broker`] trait: what the layers above need from RabbitMQ, as plain data.
//! `controller8` takes it as `Arc<dyn Broker>`; sibling services may too.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::AmqpError;

/// A queue argument value; integers stay integers on the wire.
pub use config8::ArgValue;

/// An exchange to declare (durable).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExchangeDecl {
    /// Name.
    pub name: String,
    /// Kind: `topic`, `direct`, `fanout` or `headers`.
    pub kind: String,
}

/// A queue to declare (durable), with its arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueDecl {
    /// Name.
    pub name: String,
    /// `x-` arguments as configured.
    pub arguments: BTreeMap<String, ArgValue>,
}

/// A binding of a queue to an exchange.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BindingDecl {
    /// Exchange.
    pub exchange: String,
    /// Queue.
    pub queue: String,
    /// Binding key.
    pub routing_key: String,
}

/// A set of objects to declare. Declared topology is remembered and re-declared on
/// every new connection (topology recovery).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Topology {
    /// Exchanges.
    pub exchanges: Vec<ExchangeDecl>,
    /// Queues.
    pub queues: Vec<QueueDecl>,
    /// Bindings.
    pub bindings: Vec<BindingDecl>,
}

/// A message to publish: persistent, `application/json`, confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// Exchange.
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
    /// Body (a JSON envelope).
    pub body: Vec<u8>,
    /// Ask the broker to return the message if no queue is bound for it.
    pub mandatory: bool,
    /// Extra headers (e.g. `x-death-reason` on dead-lettered copies).
    pub headers: BTreeMap<String, String>,
    /// The AMQP `app_id` property, when set (the Go services' hard-coded failover
    /// message carries `app_id: "asmm8"`).
    pub app_id: Option<String>,
    /// The AMQP `message_id` property: the same for every copy of one logical message
    /// (a re-publish after a lost confirm, a relayed outbox row), so that a consumer
    /// can drop copies (docs/AMQP.md, "Message identity"). `None`: amqp8 gives the
    /// message a unique id of its own.
    pub message_id: Option<String>,
}

impl OutgoingMessage {
    /// A mandatory message with no extra headers.
    pub fn new(exchange: impl Into<String>, routing_key: impl Into<String>, body: Vec<u8>) -> Self {
        OutgoingMessage {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            body,
            mandatory: true,
            headers: BTreeMap::new(),
            app_id: None,
            message_id: None,
        }
    }

    /// The message with the AMQP `message_id` property `id` (see
    /// [`OutgoingMessage::message_id`]).
    pub fn with_message_id(mut self, id: impl Into<String>) -> Self {
        self.message_id = Some(id.into());
        self
    }
}

/// How the broker answered a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Confirmed: the broker has the message (persisted, for durable queues).
    Confirmed,
    /// Negatively confirmed, e.g. `x-overflow: reject-publish` on a full queue:
    /// backpressure, not an error.
    Nacked,
    /// Mandatory message that no queue was bound for.
    Unroutable,
}

/// What a consumer wants done with a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Acknowledge.
    Ack,
    /// Negative-acknowledge and requeue (try again later).
    Requeue,
    /// Never process: publish it to the dead-letter queue with the reason, then ack.
    DeadLetter(String),
    /// The handler kept the [`Acker`] (from [`Delivery::defer`]) and decides later.
    Deferred,
}

/// A received message.
pub struct Delivery {
    /// Body.
    pub body: Vec<u8>,
    /// Exchange it was published to.
    pub exchange: String,
    /// Routing key it was published with.
    pub routing_key: String,
    /// Whether the broker delivered it before (to this or another consumer).
    pub redelivered: bool,
    /// How many times this message was delivered before and returned: the larger of
    /// the broker's `x-delivery-count` (quorum queues) and amqp8's own count of
    /// redeliveries (see docs/AMQP.md). `None` for a first delivery.
    pub delivery_count: Option<u64>,
    /// String headers.
    pub headers: BTreeMap<String, String>,
    /// The AMQP `app_id` property, when the publisher set one.
    pub app_id: Option<String>,
    /// The AMQP `message_id` property, when the message has one (amqp8 always sets
    /// one; the orchestrator's is stable across copies, see docs/AMQP.md).
    pub message_id: Option<String>,
    /// Settles the delivery; taken by [`Delivery::defer`].
    pub(crate) acker: Option<Box<dyn Acker>>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("exchange", &self.exchange)
            .field("routing_key", &self.routing_key)
            .field("redelivered", &self.redelivered)
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl Delivery {
    /// Builds a delivery; used by broker implementations.
    pub fn new(
        body: Vec<u8>,
        exchange: String,
        routing_key: String,
        redelivered: bool,
        acker: Box<dyn Acker>,
    ) -> Self {
        Delivery {
            body,
            exchange,
            routing_key,
            redelivered,
            delivery_count: None,
            headers: BTreeMap::new(),
            app_id: None,
            message_id: None,
            acker: Some(acker),
        }
    }

    /// Takes the acker so the delivery can be settled after long work; return
    /// [`Decision::Deferred`] from the handler. `None` when already taken.
    pub fn defer(&mut self) -> Option<Box<dyn Acker>> {
        self.acker.take()
    }

    /// Takes the acker: the same as [`Delivery::defer`], kept for existing callers.
    #[deprecated(since = "0.1.0", note = "use Delivery::defer")]
    pub fn take_acker(&mut self) -> Option<Box<dyn Acker>> {
        self.defer()
    }
}

/// Settles one delivery. Dropping it unsettled leaves the message unacked until the
/// channel closes, when the broker redelivers it.
#[async_trait]
pub trait Acker: Send + Sync {
    /// Acknowledge.
    async fn ack(self: Box<Self>) -> Result<(), AmqpError>;
    /// Negative-acknowledge; `requeue` puts it back in the queue.
    async fn nack(self: Box<Self>, requeue: bool) -> Result<(), AmqpError>;
    /// Publish to the dead-letter queue with the reason, then ack.
    async fn dead_letter(self: Box<Self>, reason: String) -> Result<(), AmqpError>;
}

/// Processes deliveries. An `Err` nacks with requeue; a panic is caught, counted and
/// nacks with requeue; the consumer keeps running either way.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Handles one delivery and says what to do with it.
    async fn handle(&self, delivery: &mut Delivery) -> Result<Decision, HandlerError>;
}

/// A handler's failure: the delivery is requeued.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HandlerError(pub String);

/// How to consume a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumeOptions {
    /// Queue (declared beforehand).
    pub queue: String,
    /// Tag prefix; a unique suffix is added.
    pub tag: String,
    /// Prefetch count.
    pub prefetch: u16,
    /// Auto-ack (off by default; CPTM8 acks after the work is done).
    pub autoack: bool,
    /// A delivery seen more than this many times goes to the dead-letter queue.
    pub max_redeliveries: u32,
    /// Where dead letters go: (exchange, routing key).
    pub dead_letter: Option<(String, String)>,
}

/// Health of one consumer, readable at any time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerHealth {
    /// Consumer name (tag prefix).
    pub name: String,
    /// Queue.
    pub queue: String,
    /// Auto-ack.
    pub autoack: bool,
    /// Whether it is subscribed right now.
    pub active: bool,
    /// Last delivery received.
    pub last_seen: Option<DateTime<Utc>>,
    /// Deliveries handled.
    pub messages: u64,
    /// Handler errors and panics.
    pub errors: u64,
    /// Times it was (re)subscribed after the first.
    pub restarts: u64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// Counts of a queue, from a passive declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueInfo {
    /// Ready messages.
    pub messages: u32,
    /// Consumers.
    pub consumers: u32,
}

/// Connection pool statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Connections open.
    pub size: u32,
    /// Of which idle.
    pub idle: u32,
    /// Of which in use.
    pub in_use: u32,
    /// Connections created since start.
    pub created: u64,
    /// Connection attempts that failed since start.
    pub failed: u64,
}

/// What the broker refused when it refused a connection attempt: a configuration
/// error retrying cannot fix. Plain data, without host, user name or password, so a
/// health report may show it to anyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The login (user name or password): [`AmqpError::AccessRefused`].
    Login,
    /// The virtual host (missing, or the user may not use it):
    /// [`AmqpError::VhostNotAllowed`].
    VirtualHost,
}

/// The broker's health snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerHealth {
    /// Whether a connection is open now.
    pub connected: bool,
    /// Whether the broker has blocked publishers (memory or disk alarm).
    pub blocked: bool,
    /// Set while the broker refuses the latest connection attempt; `None` once an
    /// attempt is not refused (it connected, or failed for another reason).
    pub refused: Option<Refusal>,
    /// Every consumer started through this broker.
    pub consumers: Vec<ConsumerHealth>,
    /// Pool statistics.
    pub pool: PoolStats,
}

/// A running consumer; dropping it does not stop it, [`ConsumerHandle::stop`] does.
#[async_trait]
pub trait ConsumerControl: Send + Sync {
    /// Stops taking messages, lets in-flight handlers finish within `grace`, and
    /// returns the rest unacked to the broker.
    async fn stop(&self, grace: Duration);
}

/// Handle to a running consumer.
#[derive(Clone)]
pub struct ConsumerHandle(pub Arc<dyn ConsumerControl>);

impl ConsumerHandle {
    /// See [`ConsumerControl::stop`].
    pub async fn stop(&self, grace: Duration) {
        self.0.stop(grace).await
    }
}

/// What a health probe needs of the broker, and nothing more: queue counts and
/// connection health. The HTTP layer's `/ready`, `/metrics` and stages page take this,
/// not the whole [`Broker`]; every `Broker` is one.
#[async_trait]
pub trait BrokerProbe: Send + Sync {
    /// Passive check of a queue ([`Broker::queue_info`]).
    async fn queue_info(&self, queue: &str) -> Result<QueueInfo, AmqpError>;

    /// A snapshot of connection, consumer and pool health ([`Broker::health`]).
    fn health(&self) -> BrokerHealth;
}

#[async_trait]
impl<B: Broker + ?Sized> BrokerProbe for B {
    async fn queue_info(&self, queue: &str) -> Result<QueueInfo, AmqpError> {
        Broker::queue_info(self, queue).await
    }

    fn health(&self) -> BrokerHealth {
        Broker::health(self)
    }
}

/// RabbitMQ as the layers above see it.
#[async_trait]
pub trait Broker: Send + Sync {
    /// Declares exchanges, queues and bindings, and remembers them for recovery.
    async fn declare(&self, topology: &Topology) -> Result<(), AmqpError>;

    /// Publishes one message and waits for the broker's answer. During an outage it
    /// waits for recovery up to the configured deadline, then fails with
    /// [`AmqpError::Unavailable`].
    async fn publish(&self, message: OutgoingMessage) -> Result<PublishOutcome, AmqpError>;

    /// Publishes many messages with many in flight at once; outcomes in input order.
    async fn publish_many(
        &self,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<PublishOutcome>, AmqpError>;

    /// Starts a supervised consumer that survives broker restarts.
    async fn consume(
        &self,
        options: ConsumeOptions,
        handler: Arc<dyn Handler>,
    ) -> Result<ConsumerHandle, AmqpError>;

    /// Passive check of a queue; [`AmqpError::NoSuchQueue`] when absent.
    async fn queue_info(&self, queue: &str) -> Result<QueueInfo, AmqpError>;

    /// Deletes a queue (with its messages and bindings) and forgets it for recovery;
    /// returns how many messages it held. [`AmqpError::NoSuchQueue`] when absent.
    /// The default refuses, for test doubles that do not need it.
    async fn delete_queue(&self, queue: &str) -> Result<u32, AmqpError> {
        Err(AmqpError::Refused {
            operation: format!("queue.delete {queue}"),
            reason: "not supported by this broker".into(),
        })
    }

    /// A snapshot of connection, consumer and pool health.
    fn health(&self) -> BrokerHealth;
}
