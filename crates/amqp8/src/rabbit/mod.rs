//! [`RabbitBroker`]: the [`Broker`] on a real RabbitMQ, over amqprs with a bb8
//! connection pool. See docs/AMQP.md for the design and its measurements.

mod backoff;
mod channel;
mod consumer;
mod endpoint;
mod fields;
mod pool;
mod publisher;
mod rpc;
mod topology;

use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use amqprs::channel::{ExchangeDeclareArguments, QueueDeclareArguments, QueueDeleteArguments};
use amqprs::error::Error::ChannelUseError;
use async_trait::async_trait;
use config8::RabbitMqSettings;
use tokio_util::sync::CancellationToken;

use crate::broker::{
    Broker, BrokerHealth, ConsumeOptions, ConsumerHandle, Handler, OutgoingMessage, PoolStats,
    PublishOutcome, QueueInfo, Refusal, Topology,
};
use crate::error::AmqpError;
use crate::health::ConsumerRegistry;
use crate::redelivery::Redeliveries;

use backoff::Backoff;
use endpoint::Endpoint;
use pool::{ConnStats, Manager};
use publisher::{MessageIds, Publisher};
use rpc::RpcFailure;
use topology::Registry;

/// How long a pool checkout waits before amqp8 looks again (and, during an outage,
/// how often a new connection is attempted).
const CHECKOUT_WAIT: Duration = Duration::from_secs(1);
/// Reconnection backoff: first delay, and the most it grows to.
const RECONNECT_FIRST: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(1);
/// While the broker refuses the login or virtual host, background reconnection
/// (publisher, consumers) tries at most this often: an outage ends by itself and is
/// worth finding quickly, a refusal needs an operator.
const REFUSED_RETRY: Duration = Duration::from_secs(5);

/// What the broker handle, its publisher lane, consumers and ackers share.
pub(crate) struct Shared {
    pub(crate) endpoint: Endpoint,
    pub(crate) pool: bb8::Pool<Manager>,
    pub(crate) stats: Arc<ConnStats>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) consumers: ConsumerRegistry,
    pub(crate) redeliveries: Arc<Redeliveries>,
    /// Exchanges known to exist (declared, or checked passively).
    exchanges: Mutex<HashSet<String>>,
    /// How long an operation waits for an unavailable broker
    /// (`RabbitMQ.pool.connection_timeout`).
    pub(crate) deadline: Duration,
    reconnect_max: Duration,
    max_connections: u32,
    pub(crate) shutdown: CancellationToken,
    ids: MessageIds,
    publisher: OnceLock<Publisher>,
}

impl Shared {
    pub(crate) fn unavailable(&self, reason: String) -> AmqpError {
        AmqpError::Unavailable {
            host: self.endpoint.display.clone(),
            reason,
        }
    }

    pub(crate) fn backoff(&self) -> Backoff {
        Backoff::new(RECONNECT_FIRST, self.reconnect_max)
    }

    /// The pause before the next background reconnection attempt: the backoff's
    /// next step, but at least [`REFUSED_RETRY`] while the broker refuses the login or
    /// virtual host.
    pub(crate) fn retry_delay(&self, backoff: &mut Backoff) -> Duration {
        let d = backoff.next_delay();
        if self.stats.refusal().is_some() {
            d.max(REFUSED_RETRY)
        } else {
            d
        }
    }

    /// A usable pooled connection, waiting for one (and for the broker) until
    /// `deadline`. Fails at once with [`AmqpError::AccessRefused`] or
    /// [`AmqpError::VhostNotAllowed`] when the broker refused the latest connection
    /// attempt and no open connection is free.
    pub(crate) async fn acquire(
        &self,
        deadline: Instant,
        what: &str,
    ) -> Result<bb8::PooledConnection<'static, Manager>, AmqpError> {
        let mut backoff = self.backoff();
        loop {
            if self.shutdown.is_cancelled() {
                return Err(AmqpError::Closed);
            }
            if let Ok(c) = self.pool.get_owned().await
                && c.is_usable()
            {
                return Ok(c);
            }
            if let Some(refused) = self.stats.refusal() {
                return Err(refused);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(self.unavailable(format!("{what}: {}", self.why_unavailable())));
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay().min(deadline - now)) => {}
                _ = self.shutdown.cancelled() => return Err(AmqpError::Closed),
            }
        }
    }

    fn why_unavailable(&self) -> String {
        let state = self.pool.state();
        if self.stats.open.load(Ordering::Relaxed) > 0
            && state.connections >= self.max_connections
            && state.idle_connections == 0
        {
            return format!(
                "all {} pooled connections are in use (RabbitMQ.pool.max_connections)",
                self.max_connections
            );
        }
        let last = self
            .stats
            .last_error()
            .unwrap_or_else(|| "no connection could be made".into());
        format!(
            "no connection within {:?} (RabbitMQ.pool.connection_timeout); last error: {last}",
            self.deadline
        )
    }

    pub(crate) fn forget_exchange(&self, name: &str) {
        self.exchanges.lock().remove(name);
    }

    fn know_exchange(&self, name: &str) {
        self.exchanges.lock().insert(name.to_owned());
    }

    /// Checks (once, passively) that an exchange exists, so that a publish to a
    /// missing one fails on its own instead of closing the publisher's channel.
    async fn ensure_exchange(self: &Arc<Self>, name: &str) -> Result<(), AmqpError> {
        if name.is_empty() || self.exchanges.lock().contains(name) {
            return Ok(());
        }
        let (n, op) = (name.to_owned(), format!("exchange.declare passive {name}"));
        let checked = rpc::run(self, op.clone(), move |ch| {
            let (n, op) = (n.clone(), op.clone());
            async move {
                let args = ExchangeDeclareArguments::new(&n, "topic")
                    .passive(true)
                    .finish();
                ch.exchange_declare(args).await.map_err(|e| (op, e))
            }
        })
        .await;
        match checked {
            Ok(()) => {
                self.know_exchange(name);
                Ok(())
            }
            Err(RpcFailure::Refused { code, text, .. }) => Err(AmqpError::Refused {
                operation: format!("basic.publish to exchange {name:?}"),
                reason: format!("{code} {text}"),
            }),
            Err(RpcFailure::Other(e)) => Err(e),
        }
    }

    fn publisher(&self) -> Result<&Publisher, AmqpError> {
        self.publisher.get().ok_or(AmqpError::Closed)
    }

    /// Publishes one message and waits for the broker's answer.
    pub(crate) async fn publish(
        self: &Arc<Self>,
        m: OutgoingMessage,
    ) -> Result<PublishOutcome, AmqpError> {
        self.ensure_exchange(&m.exchange).await?;
        let prepared = publisher::prepare(&self.ids, m)?;
        self.publisher()?.publish(prepared).await
    }
}

/// amqp8's [`Broker`] on RabbitMQ. Create it inside a Tokio runtime; share it as
/// `Arc<dyn Broker>`. Dropping it (or [`RabbitBroker::close`]) stops its publisher
/// and consumers.
pub struct RabbitBroker {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RabbitBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitBroker")
            .field("broker", &self.shared.endpoint.display)
            .finish_non_exhaustive()
    }
}

impl Drop for RabbitBroker {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

/// Connects to RabbitMQ as configured, waiting for the first connection as the Go
/// original does (`RabbitMQ.pool.retry_attempts` attempts, `retry_delay` apart):
/// `amqp8::connect(&settings.rabbitmq).await?`.
pub async fn connect(settings: &RabbitMqSettings) -> Result<RabbitBroker, AmqpError> {
    RabbitBroker::connect(settings).await
}

impl RabbitBroker {
    /// A broker handle that connects in the background (at most
    /// `RabbitMQ.pool.min_connections` at once, more on demand): it returns at once
    /// and operations wait for the broker up to `RabbitMQ.pool.connection_timeout`.
    /// Fails only on settings that cannot work ([`AmqpError::Settings`]).
    pub fn new(settings: &RabbitMqSettings) -> Result<RabbitBroker, AmqpError> {
        RabbitBroker::build(settings, publisher::DEFAULT_WINDOW)
    }

    /// Like [`RabbitBroker::new`], and waits for a first connection:
    /// `RabbitMQ.pool.retry_attempts` attempts, `RabbitMQ.pool.retry_delay` apart.
    /// A refused login ([`AmqpError::AccessRefused`]) or virtual host
    /// ([`AmqpError::VhostNotAllowed`]) fails at once, without further attempts.
    pub async fn connect(settings: &RabbitMqSettings) -> Result<RabbitBroker, AmqpError> {
        let broker = RabbitBroker::new(settings)?;
        let attempts = settings.pool.retry_attempts.max(1);
        let mut attempt = 1;
        loop {
            match broker.shared.pool.dedicated_connection().await {
                Ok(conn) => {
                    let _ = broker.shared.pool.add(conn);
                    tracing::info!(broker = %broker.shared.endpoint.display, "connected to RabbitMQ");
                    return Ok(broker);
                }
                Err(e) if !e.is_transient() || attempt >= attempts => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, attempt, of = attempts, retry_in = ?settings.pool.retry_delay,
                        "cannot connect to RabbitMQ yet");
                    tokio::time::sleep(settings.pool.retry_delay).await;
                    attempt += 1;
                }
            }
        }
    }

    fn build(settings: &RabbitMqSettings, window: usize) -> Result<RabbitBroker, AmqpError> {
        let endpoint = Endpoint::new(settings)?;
        let p = &settings.pool;
        let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
        let max = p.max_connections.max(1);
        let stats = Arc::new(ConnStats::default());
        let registry = Arc::new(Registry::default());
        let deadline = nonzero(p.connection_timeout).unwrap_or(Duration::from_secs(30));
        let manager = Manager {
            endpoint: endpoint.clone(),
            stats: stats.clone(),
            registry: registry.clone(),
            connect_timeout: deadline,
            service: service_name(),
        };
        let pool = bb8::Pool::builder()
            .max_size(max)
            .min_idle(p.min_connections.min(max))
            .idle_timeout(nonzero(p.max_idle_time))
            .max_lifetime(nonzero(p.max_lifetime))
            .reaper_rate(p.health_check_period.max(Duration::from_secs(1)))
            .connection_timeout(CHECKOUT_WAIT.min(deadline))
            .retry_connection(false)
            .test_on_check_out(true)
            .build_unchecked(manager);
        let shared = Arc::new(Shared {
            endpoint,
            pool,
            stats,
            registry,
            consumers: ConsumerRegistry::default(),
            redeliveries: Arc::new(Redeliveries::default()),
            exchanges: Mutex::new(HashSet::new()),
            deadline,
            reconnect_max: nonzero(p.retry_delay)
                .unwrap_or(RECONNECT_MAX)
                .min(RECONNECT_MAX),
            max_connections: max,
            shutdown: CancellationToken::new(),
            ids: MessageIds::new(),
            publisher: OnceLock::new(),
        });
        let publisher = Publisher::start(shared.clone(), window);
        let _ = shared.publisher.set(publisher);
        Ok(RabbitBroker { shared })
    }

    /// `amqp://host:port/vhost` (never with credentials).
    pub fn endpoint(&self) -> &str {
        &self.shared.endpoint.display
    }

    /// Connection pool statistics.
    pub fn pool_stats(&self) -> PoolStats {
        let state = self.shared.pool.state();
        PoolStats {
            size: state.connections,
            idle: state.idle_connections,
            in_use: state.connections.saturating_sub(state.idle_connections),
            created: self.shared.stats.created.load(Ordering::Relaxed),
            failed: self.shared.stats.failed.load(Ordering::Relaxed),
        }
    }

    /// Why the broker refused the latest connection attempt, while it does: a
    /// refused login ([`AmqpError::AccessRefused`]) or virtual host
    /// ([`AmqpError::VhostNotAllowed`]). `None` once a connection succeeds again
    /// (amqp8 keeps retrying in the background). For health reports; never contains
    /// the password.
    pub fn connection_refusal(&self) -> Option<AmqpError> {
        self.shared.stats.refusal()
    }

    /// The topology declared through this handle, as it is re-declared on every new
    /// connection.
    pub fn topology(&self) -> Topology {
        self.shared.registry.snapshot()
    }

    /// Stops the publisher (messages not confirmed yet fail with
    /// [`AmqpError::Closed`]) and every consumer (unacked messages return to their
    /// queues), and closes the connections.
    pub async fn close(&self) {
        self.shared.shutdown.cancel();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.shared.consumers.snapshot().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The executable's name, for connection names in the broker's UI.
fn service_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "amqp8".into())
}

#[async_trait]
impl Broker for RabbitBroker {
    async fn declare(&self, topology: &Topology) -> Result<(), AmqpError> {
        let items = topology::items(topology);
        for item in &items {
            item.check()?;
        }
        let shared = self.shared.clone();
        let items = Arc::new(items);
        rpc::run(&self.shared, "declare".into(), move |ch| {
            let items = items.clone();
            let shared = shared.clone();
            async move {
                for item in items.iter() {
                    item.declare(&ch).await.map_err(|e| (item.operation(), e))?;
                    shared.registry.remember(item);
                    if let topology::Item::Exchange(e) = item {
                        shared.know_exchange(&e.name);
                    }
                }
                Ok(())
            }
        })
        .await
        .map_err(RpcFailure::into_error)
    }

    async fn publish(&self, message: OutgoingMessage) -> Result<PublishOutcome, AmqpError> {
        self.shared.publish(message).await
    }

    async fn publish_many(
        &self,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<PublishOutcome>, AmqpError> {
        let mut exchanges: Vec<&str> = messages.iter().map(|m| m.exchange.as_str()).collect();
        exchanges.sort_unstable();
        exchanges.dedup();
        for e in exchanges {
            self.shared.ensure_exchange(e).await?;
        }
        let prepared = messages
            .into_iter()
            .map(|m| publisher::prepare(&self.shared.ids, m))
            .collect::<Result<Vec<_>, _>>()?;
        self.shared
            .publisher()?
            .publish_many(prepared)
            .await
            .into_iter()
            .collect()
    }

    async fn consume(
        &self,
        options: ConsumeOptions,
        handler: Arc<dyn Handler>,
    ) -> Result<ConsumerHandle, AmqpError> {
        consumer::start(&self.shared, options, handler).await
    }

    async fn queue_info(&self, queue: &str) -> Result<QueueInfo, AmqpError> {
        fields::short("queue name", queue)?;
        let q = queue.to_owned();
        let op = format!("queue.declare passive {queue}");
        let info = rpc::run(&self.shared, op.clone(), move |ch| {
            let (q, op) = (q.clone(), op.clone());
            async move {
                let args = QueueDeclareArguments::new(&q).passive(true).finish();
                match ch.queue_declare(args).await {
                    Ok(Some(declared)) => Ok(declared),
                    Ok(None) => Err((op, ChannelUseError("no declare-ok".into()))),
                    Err(e) => Err((op, e)),
                }
            }
        })
        .await;
        match info {
            Ok((_, messages, consumers)) => Ok(QueueInfo {
                messages,
                consumers,
            }),
            Err(RpcFailure::Refused { code: 404, .. }) => Err(AmqpError::NoSuchQueue(queue.into())),
            Err(e) => Err(e.into_error()),
        }
    }

    async fn delete_queue(&self, queue: &str) -> Result<u32, AmqpError> {
        fields::short("queue name", queue)?;
        let q = queue.to_owned();
        let deleted = rpc::run(&self.shared, format!("queue.delete {queue}"), move |ch| {
            let q = q.clone();
            async move {
                // queue.delete of a missing queue succeeds: check first.
                ch.queue_declare(QueueDeclareArguments::new(&q).passive(true).finish())
                    .await
                    .map_err(|e| (format!("queue.declare passive {q}"), e))?;
                ch.queue_delete(QueueDeleteArguments::new(&q))
                    .await
                    .map_err(|e| (format!("queue.delete {q}"), e))
            }
        })
        .await;
        match deleted {
            Ok(n) => {
                self.shared.registry.forget_queue(queue);
                Ok(n.unwrap_or(0))
            }
            Err(RpcFailure::Refused { code: 404, .. }) => {
                self.shared.registry.forget_queue(queue);
                Err(AmqpError::NoSuchQueue(queue.into()))
            }
            Err(e) => Err(e.into_error()),
        }
    }

    fn health(&self) -> BrokerHealth {
        BrokerHealth {
            connected: self.shared.stats.open.load(Ordering::Relaxed) > 0,
            blocked: self.shared.stats.blocked_reason().is_some(),
            refused: self.shared.stats.refusal().and_then(|e| match e {
                AmqpError::AccessRefused { .. } => Some(Refusal::Login),
                AmqpError::VhostNotAllowed { .. } => Some(Refusal::VirtualHost),
                _ => None,
            }),
            consumers: self.shared.consumers.snapshot(),
            pool: self.pool_stats(),
        }
    }
}
