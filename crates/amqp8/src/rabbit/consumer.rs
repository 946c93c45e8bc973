//! Supervised consumers on RabbitMQ.
//!
//! Each consumer owns a channel on a pooled connection it holds while subscribed. A
//! supervisor task takes deliveries (`basic_consume_rx`, never amqprs's
//! `AsyncConsumer`, whose panics end the consumer silently: amqprs #66), runs at most
//! `max(prefetch, 1)` handlers at once through the shared dispatch (panics caught,
//! redeliveries counted, dead-lettering), and when the channel or connection is lost
//! subscribes again with a backoff that starts at 50 ms, so it is back within about
//! a second of the broker's return.
//!
//! Handlers run concurrently on the supervisor's task (no task spawned per message:
//! cheaper, and what the consume benchmark measures); a handler with CPU-heavy work
//! should move it to `tokio::task::spawn_blocking`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use amqprs::channel::{
    BasicAckArguments, BasicCancelArguments, BasicConsumeArguments, BasicNackArguments,
    BasicQosArguments, Channel, ConsumerMessage,
};
use async_trait::async_trait;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tokio_util::sync::DropGuard;

use super::Shared;
use super::channel::{self, ChanEvent, CloseSlot};
use super::fields;
use super::pool::Manager;
use crate::broker::{
    Acker, ConsumeOptions, ConsumerHandle, Delivery, Handler, OutgoingMessage, PublishOutcome,
};
use crate::dispatch::{Control, Dispatch};
use crate::error::AmqpError;
use crate::headers;
use crate::health::ConsumerStats;
use crate::redelivery::MessageKey;

static NEXT_TAG: AtomicU64 = AtomicU64::new(1);

/// A unique consumer tag: the configured prefix, a random part and a counter.
fn unique_tag(prefix: &str) -> String {
    format!(
        "{prefix}.{:08x}.{}",
        rand::random::<u32>(),
        NEXT_TAG.fetch_add(1, Ordering::Relaxed)
    )
}

/// A live subscription: the connection it holds, its channel and what arrives on it.
struct Subscription {
    conn: bb8::PooledConnection<'static, Manager>,
    channel: Channel,
    close: CloseSlot,
    events: mpsc::UnboundedReceiver<ChanEvent>,
    rx: mpsc::UnboundedReceiver<ConsumerMessage>,
    tag: String,
}

/// Subscribes to the queue, retrying on new connections until `deadline`.
async fn subscribe(
    shared: Arc<Shared>,
    options: ConsumeOptions,
    deadline: Instant,
) -> Result<Subscription, AmqpError> {
    let operation = format!("basic.consume {}", options.queue);
    loop {
        let conn = shared.acquire(deadline, &operation).await?;
        let (tx, events) = mpsc::unbounded_channel();
        let attempt = async {
            let (ch, close) = channel::open(&conn.conn, Some(tx))
                .await
                .map_err(|e| (None, e))?;
            if !options.autoack {
                ch.basic_qos(BasicQosArguments::new(0, options.prefetch, false))
                    .await
                    .map_err(|e| (Some(close.clone()), e))?;
            }
            let mut args = BasicConsumeArguments::new(&options.queue, &unique_tag(&options.tag));
            args.manual_ack(!options.autoack);
            let (tag, rx) = ch
                .basic_consume_rx(args)
                .await
                .map_err(|e| (Some(close.clone()), e))?;
            Ok::<_, (Option<CloseSlot>, amqprs::error::Error)>((ch, close, tag, rx))
        };
        match attempt.await {
            Ok((channel, close, tag, rx)) => {
                return Ok(Subscription {
                    conn,
                    channel,
                    close,
                    events,
                    rx,
                    tag,
                });
            }
            Err((close, e)) => {
                match close.and_then(|c| c.get()) {
                    Some((404, _)) => return Err(AmqpError::NoSuchQueue(options.queue.clone())),
                    Some((code, text)) => {
                        return Err(AmqpError::Refused {
                            operation,
                            reason: format!("{code} {text}"),
                        });
                    }
                    None => {}
                }
                if conn.is_usable() || Instant::now() >= deadline {
                    return Err(shared.unavailable(format!("{operation}: {e}")));
                }
            }
        }
    }
}

/// Starts a consumer: subscribes once (failing with [`AmqpError::NoSuchQueue`],
/// [`AmqpError::Refused`], a refused login or virtual host, or, after the deadline,
/// [`AmqpError::Unavailable`]), then supervises it.
pub(crate) async fn start(
    shared: &Arc<Shared>,
    options: ConsumeOptions,
    handler: Arc<dyn Handler>,
) -> Result<ConsumerHandle, AmqpError> {
    fields::short("queue name", &options.queue)?;
    if options.tag.len() > 200 {
        return Err(AmqpError::Encode(format!(
            "consumer tag prefix is {} bytes long; at most 200 leave room for the unique suffix",
            options.tag.len()
        )));
    }
    let deadline = Instant::now() + shared.deadline;
    // In a task: a caller that gives up does not cancel the subscription halfway.
    let first = tokio::spawn(subscribe(shared.clone(), options.clone(), deadline))
        .await
        .map_err(|e| shared.unavailable(format!("subscribing: {e}")))??;
    let stats = shared
        .consumers
        .add(&options.tag, &options.queue, options.autoack);
    stats.set_active(true, false);
    tracing::info!(queue = %options.queue, tag = %first.tag, prefetch = options.prefetch,
        autoack = options.autoack, "consumer subscribed");
    // Closing the broker handle stops its consumers too.
    let (control, done) = Control::new(shared.shutdown.child_token());
    let dispatch = Arc::new(Dispatch {
        handler,
        stats: stats.clone(),
        redeliveries: shared.redeliveries.clone(),
        max_redeliveries: options.max_redeliveries,
        queue: options.queue.clone(),
    });
    let ack_context = Arc::new(AckContext {
        shared: shared.clone(),
        autoack: options.autoack,
        dead_letter: options.dead_letter.clone(),
        queue: options.queue.clone(),
    });
    let supervisor = Supervisor {
        shared: shared.clone(),
        ack_context,
        options,
        stats,
        dispatch,
        control: control.clone(),
        _done: done,
    };
    tokio::spawn(supervisor.run(first));
    Ok(ConsumerHandle(control))
}

enum End {
    Stop,
    Lost(String),
}

struct Supervisor {
    shared: Arc<Shared>,
    options: ConsumeOptions,
    stats: Arc<ConsumerStats>,
    dispatch: Arc<Dispatch>,
    ack_context: Arc<AckContext>,
    control: Arc<Control>,
    /// Tells the consumer's handle that it has stopped, when dropped.
    _done: DropGuard,
}

type InFlight = FuturesUnordered<BoxFuture<'static, ()>>;

impl Supervisor {
    async fn run(self, first: Subscription) {
        let mut in_flight = InFlight::new();
        let mut sub = Some(first);
        let mut backoff = self.shared.backoff();
        let mut failures = 0u32;
        loop {
            let Some(mut current) = sub.take() else { break };
            match self.serve(&mut current, &mut in_flight).await {
                End::Stop => {
                    self.graceful(current, &mut in_flight).await;
                    break;
                }
                End::Lost(why) => {
                    self.stats.set_active(false, false);
                    tracing::warn!(queue = %self.options.queue, reason = %why, "consumer lost its subscription; subscribing again");
                    drop(current);
                }
            }
            // Subscribe again, until it works or the consumer is stopped; handlers in
            // flight keep running meanwhile.
            loop {
                let pause = self.shared.retry_delay(&mut backoff);
                let (shared, options) = (self.shared.clone(), self.options.clone());
                let attempt = async move {
                    tokio::time::sleep(pause).await;
                    let deadline = Instant::now() + shared.deadline;
                    tokio::spawn(subscribe(shared, options, deadline)).await
                };
                tokio::pin!(attempt);
                let result = loop {
                    tokio::select! {
                        r = &mut attempt => break Some(r),
                        _ = self.control.stop.cancelled() => break None,
                        Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                    }
                };
                match result {
                    None => break,
                    Some(Ok(Ok(s))) => {
                        tracing::info!(queue = %self.options.queue, tag = %s.tag, "consumer subscribed again");
                        self.stats.set_active(true, true);
                        backoff.reset();
                        failures = 0;
                        sub = Some(s);
                        break;
                    }
                    Some(Ok(Err(e))) => {
                        failures += 1;
                        if failures == 1 || failures.is_multiple_of(30) {
                            tracing::warn!(queue = %self.options.queue, error = %e, attempts = failures,
                                "consumer cannot subscribe yet; retrying");
                        }
                    }
                    Some(Err(e)) => {
                        tracing::error!(error = %e, "consumer subscription task failed")
                    }
                }
            }
            if sub.is_none() {
                // Stopped while not subscribed: let running handlers finish.
                self.drain(&mut in_flight).await;
                break;
            }
        }
        self.stats.set_active(false, false);
        self.shared.consumers.remove(&self.stats);
    }

    async fn serve(&self, sub: &mut Subscription, in_flight: &mut InFlight) -> End {
        let limit = usize::from(self.options.prefetch.max(1));
        let mut down = sub.conn.down();
        loop {
            // Take what has arrived without waiting, as far as the limit allows.
            while in_flight.len() < limit {
                match sub.rx.try_recv() {
                    Ok(m) => self.start(m, &sub.channel, in_flight),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => return lost(&sub.close),
                }
            }
            tokio::select! {
                biased;
                _ = self.control.stop.cancelled() => return End::Stop,
                Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                m = sub.rx.recv(), if in_flight.len() < limit => match m {
                    Some(m) => self.start(m, &sub.channel, in_flight),
                    None => return lost(&sub.close),
                },
                ev = sub.events.recv() => match ev {
                    Some(ChanEvent::Cancelled { consumer_tag }) => {
                        return End::Lost(format!("the broker cancelled consumer {consumer_tag} (queue deleted?)"));
                    }
                    Some(_) => {}
                    None => return lost(&sub.close),
                },
                changed = down.changed() => {
                    if changed.is_err() || *down.borrow() {
                        return End::Lost("connection lost".into());
                    }
                }
            }
        }
    }

    /// Starts handling one delivery.
    fn start(&self, m: ConsumerMessage, channel: &Channel, in_flight: &mut InFlight) {
        if let Some((delivery, key)) = self.delivery(m, channel) {
            let dispatch = self.dispatch.clone();
            in_flight.push(Box::pin(async move { dispatch.run(delivery, key).await }));
        }
    }

    fn delivery(
        &self,
        mut m: ConsumerMessage,
        channel: &Channel,
    ) -> Option<(Delivery, MessageKey)> {
        let deliver = m.deliver.take()?;
        let props = m.basic_properties.take().unwrap_or_default();
        let body = m.content.take().unwrap_or_default();
        let (headers, delivery_count) = fields::received_headers(props.headers());
        let key = MessageKey::of(
            props.message_id().map(String::as_str),
            deliver.exchange(),
            deliver.routing_key(),
            &body,
        );
        let acker = RabbitAcker {
            channel: channel.clone(),
            tag: deliver.delivery_tag(),
            context: self.ack_context.clone(),
            copy: DeadLetterCopy {
                exchange: deliver.exchange().clone(),
                routing_key: deliver.routing_key().clone(),
                body: body.clone(),
                headers: headers.clone(),
            },
        };
        let mut delivery = Delivery::new(
            body,
            deliver.exchange().clone(),
            deliver.routing_key().clone(),
            deliver.redelivered(),
            Box::new(acker),
        );
        delivery.headers = headers;
        delivery.delivery_count = delivery_count;
        delivery.app_id = props.app_id().cloned();
        delivery.message_id = props.message_id().cloned();
        Some((delivery, key))
    }

    /// Stops deliveries, lets handlers finish within the grace period, and closes the
    /// channel: whatever is still unacked goes back to the queue.
    async fn graceful(&self, sub: Subscription, in_flight: &mut InFlight) {
        self.stats.set_active(false, false);
        let cancel = sub
            .channel
            .basic_cancel(BasicCancelArguments::new(&sub.tag));
        if tokio::time::timeout(Duration::from_secs(2), cancel)
            .await
            .is_err()
        {
            tracing::warn!(queue = %self.options.queue, "consumer stop: basic.cancel not answered in time");
        }
        let Subscription {
            conn, channel, rx, ..
        } = sub;
        // Prefetched deliveries not handed to a handler return with the channel.
        drop(rx);
        self.drain(in_flight).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), channel.close()).await;
        drop(conn);
        tracing::info!(queue = %self.options.queue, "consumer stopped");
    }

    /// Lets handlers finish within the grace period; the rest are dropped (their
    /// messages return to the queue when the channel closes).
    async fn drain(&self, in_flight: &mut InFlight) {
        let grace = *self.control.grace.lock();
        if tokio::time::timeout(grace, async { while in_flight.next().await.is_some() {} })
            .await
            .is_err()
        {
            tracing::warn!(queue = %self.options.queue, still_running = in_flight.len(),
                "consumer stop: handlers still running after the grace period; their messages return to the queue");
            *in_flight = InFlight::new();
        }
    }
}

fn lost(close: &CloseSlot) -> End {
    End::Lost(match close.get() {
        Some((code, text)) => format!("channel closed by the broker: {code} {text}"),
        None => "connection lost".into(),
    })
}

/// What a dead-lettered copy is made of.
struct DeadLetterCopy {
    exchange: String,
    routing_key: String,
    body: Vec<u8>,
    headers: std::collections::BTreeMap<String, String>,
}

/// What every delivery of one consumer shares.
struct AckContext {
    shared: Arc<Shared>,
    autoack: bool,
    dead_letter: Option<(String, String)>,
    queue: String,
}

/// Settles one RabbitMQ delivery on the channel it came from.
struct RabbitAcker {
    channel: Channel,
    tag: u64,
    context: Arc<AckContext>,
    copy: DeadLetterCopy,
}

impl RabbitAcker {
    fn usable(&self) -> Result<(), AmqpError> {
        // A closed channel's id may be reused by a new channel: never send a stale
        // delivery tag on it.
        if self.channel.is_open() && self.channel.is_connection_open() {
            Ok(())
        } else {
            Err(self.context.shared.unavailable(
                "the delivery's channel is closed; the broker redelivers the message".into(),
            ))
        }
    }

    async fn accept(&self) -> Result<(), AmqpError> {
        if self.context.autoack {
            return Ok(());
        }
        self.usable()?;
        self.channel
            .basic_ack(BasicAckArguments::new(self.tag, false))
            .await
            .map_err(|e| self.context.shared.unavailable(format!("basic.ack: {e}")))
    }

    async fn reject(&self, requeue: bool) -> Result<(), AmqpError> {
        if self.context.autoack {
            return Ok(());
        }
        self.usable()?;
        self.channel
            .basic_nack(BasicNackArguments::new(self.tag, false, requeue))
            .await
            .map_err(|e| self.context.shared.unavailable(format!("basic.nack: {e}")))
    }
}

#[async_trait]
impl Acker for RabbitAcker {
    async fn ack(self: Box<Self>) -> Result<(), AmqpError> {
        self.accept().await
    }

    async fn nack(self: Box<Self>, requeue: bool) -> Result<(), AmqpError> {
        self.reject(requeue).await
    }

    async fn dead_letter(self: Box<Self>, reason: String) -> Result<(), AmqpError> {
        let Some((exchange, routing_key)) = self.context.dead_letter.clone() else {
            tracing::warn!(queue = %self.context.queue, %reason,
                "no dead-letter target configured; rejecting (the queue's x-dead-letter-exchange gets it, if any)");
            return self.reject(false).await;
        };
        let mut headers = self.copy.headers.clone();
        headers.insert(headers::DEATH_REASON.into(), reason.clone());
        headers.insert(
            headers::ORIGINAL_EXCHANGE.into(),
            self.copy.exchange.clone(),
        );
        headers.insert(
            headers::ORIGINAL_ROUTING_KEY.into(),
            self.copy.routing_key.clone(),
        );
        headers.insert(headers::ORIGINAL_QUEUE.into(), self.context.queue.clone());
        let mut copy = OutgoingMessage::new(&exchange, &routing_key, self.copy.body.clone());
        copy.headers = headers;
        match self.context.shared.publish(copy).await {
            Ok(PublishOutcome::Confirmed) => self.accept().await,
            Err(e) if e.is_transient() => {
                tracing::warn!(queue = %self.context.queue, error = %e,
                    "cannot publish to the dead-letter exchange now; requeueing the message");
                self.reject(true).await
            }
            other => {
                tracing::error!(queue = %self.context.queue, dead_letter_exchange = %exchange,
                    %routing_key, outcome = ?other, %reason,
                    "the dead-letter exchange did not take the message; rejecting it (the queue's x-dead-letter-exchange gets it, if any)");
                self.reject(false).await
            }
        }
    }
}
