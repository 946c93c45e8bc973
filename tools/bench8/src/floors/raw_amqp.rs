//! The RabbitMQ floors: a minimal amqprs publisher with publisher confirms and a
//! window of outstanding messages, a minimal amqprs consumer with manual ack, and
//! queue helpers (declare, count by passive declare, delete).
//!
//! These are what a careful hand-written client achieves on the same broker: the
//! throughput amqp8 is compared with.

use parking_lot::Mutex;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use amqprs::callbacks::ChannelCallback;
use amqprs::channel::{
    BasicAckArguments, BasicConsumeArguments, BasicPublishArguments, BasicQosArguments, Channel,
    ConfirmSelectArguments, ExchangeDeclareArguments, QueueBindArguments, QueueDeclareArguments,
    QueueDeleteArguments,
};
use amqprs::connection::Connection;
use amqprs::{Ack, BasicProperties, Cancel, CloseChannel, Nack, Return};
use async_trait::async_trait;
use tokio::sync::{Notify, Semaphore};

use crate::report::Failure;
use crate::services::amqp_connect;

/// Durable topic exchange `exchange` and durable queue `queue` bound to it with
/// `routing_key` (no queue arguments: unbounded).
pub async fn declare_queue(
    channel: &Channel,
    exchange: &str,
    queue: &str,
    routing_key: &str,
) -> Result<(), Failure> {
    let err = |what: &str, e: amqprs::error::Error| Failure::Error(format!("{what}: {e}"));
    channel
        .exchange_declare(
            ExchangeDeclareArguments::new(exchange, "topic")
                .durable(true)
                .finish(),
        )
        .await
        .map_err(|e| err(&format!("declaring exchange {exchange}"), e))?;
    channel
        .queue_declare(QueueDeclareArguments::durable_client_named(queue))
        .await
        .map_err(|e| err(&format!("declaring queue {queue}"), e))?;
    channel
        .queue_bind(QueueBindArguments::new(queue, exchange, routing_key))
        .await
        .map_err(|e| err(&format!("binding queue {queue}"), e))?;
    Ok(())
}

/// Deletes a queue (cleanup; errors are printed).
pub async fn delete_queue(channel: &Channel, queue: &str) {
    if let Err(e) = channel.queue_delete(QueueDeleteArguments::new(queue)).await {
        eprintln!("bench8: warning: could not delete queue {queue}: {e}");
    }
}

/// Counts the ready messages of queues by passive declare, reopening its channel after
/// the broker closed it (a passive declare of a missing queue closes the channel).
pub struct QueueProbe {
    connection: Connection,
    channel: Option<Channel>,
}

impl QueueProbe {
    /// A probe on its own connection to `vhost`.
    pub async fn open(vhost: &str) -> Result<QueueProbe, Failure> {
        let connection = amqp_connect(vhost).await?;
        Ok(QueueProbe {
            connection,
            channel: None,
        })
    }

    /// Ready messages in `queue`; `Ok(None)` when the queue does not exist (yet).
    pub async fn messages(&mut self, queue: &str) -> Result<Option<u32>, Failure> {
        if self.channel.as_ref().is_none_or(|c| !c.is_open()) {
            self.channel = Some(
                self.connection
                    .open_channel(None)
                    .await
                    .map_err(|e| Failure::Error(format!("opening a probe channel: {e}")))?,
            );
        }
        let channel = self.channel.as_ref().expect("just opened");
        match channel
            .queue_declare(QueueDeclareArguments::new(queue).passive(true).finish())
            .await
        {
            Ok(Some((_, messages, _))) => Ok(Some(messages)),
            Ok(None) => Err(Failure::Error("passive declare returned nothing".into())),
            Err(e) => {
                self.channel = None;
                let text = e.to_string();
                if text.contains("NOT_FOUND") || text.contains("404") {
                    Ok(None)
                } else {
                    Err(Failure::Error(format!("passive declare of {queue}: {e}")))
                }
            }
        }
    }

    /// Closes the connection.
    pub async fn close(self) {
        let _ = self.connection.close().await;
    }
}

/// The persistent JSON properties every CPTM8 message carries.
pub fn persistent_json() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json")
        .with_delivery_mode(amqprs::DELIVERY_MODE_PERSISTENT)
        .finish()
}

/// Outstanding confirms of one channel.
#[derive(Default)]
struct ConfirmState {
    outstanding: BTreeSet<u64>,
    confirmed: u64,
    nacked: u64,
}

/// Channel callback counting publisher confirms, `multiple` included.
struct ConfirmCounter {
    state: Arc<Mutex<ConfirmState>>,
    window: Arc<Semaphore>,
    done: Arc<Notify>,
}

impl ConfirmCounter {
    fn settle(&self, tag: u64, multiple: bool, ack: bool) {
        let mut st = self.state.lock();
        let settled: Vec<u64> = if multiple {
            st.outstanding.range(..=tag).copied().collect()
        } else if st.outstanding.contains(&tag) {
            vec![tag]
        } else {
            Vec::new()
        };
        for t in &settled {
            st.outstanding.remove(t);
        }
        let n = settled.len() as u64;
        if ack {
            st.confirmed += n;
        } else {
            st.nacked += n;
        }
        drop(st);
        self.window.add_permits(n as usize);
        self.done.notify_one();
    }
}

#[async_trait]
impl ChannelCallback for ConfirmCounter {
    async fn close(&mut self, _: &Channel, _: CloseChannel) -> Result<(), amqprs::error::Error> {
        self.done.notify_one();
        Ok(())
    }
    async fn cancel(&mut self, _: &Channel, _: Cancel) -> Result<(), amqprs::error::Error> {
        Ok(())
    }
    async fn flow(&mut self, _: &Channel, active: bool) -> Result<bool, amqprs::error::Error> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _: &Channel, ack: Ack) {
        self.settle(ack.delivery_tag(), ack.mutiple(), true);
    }
    async fn publish_nack(&mut self, _: &Channel, nack: Nack) {
        self.settle(nack.delivery_tag(), nack.multiple(), false);
    }
    async fn publish_return(&mut self, _: &Channel, _: Return, _: BasicProperties, _: Vec<u8>) {}
}

/// The result of a raw confirmed publish.
#[derive(Debug, Clone, Copy)]
pub struct PublishRun {
    /// From the first publish to the last confirm.
    pub elapsed: Duration,
    /// Messages confirmed (acked).
    pub confirmed: u64,
    /// Messages nacked.
    pub nacked: u64,
}

/// Publishes `bodies.len()` persistent messages to `exchange`/`routing_key` on a fresh
/// connection to `vhost`, with publisher confirms and at most `window` unconfirmed at
/// once (`mandatory` set, as the engine publishes); returns when every message is
/// settled. The connection is opened before the clock starts.
pub async fn publish_confirmed(
    vhost: &str,
    exchange: &str,
    routing_key: &str,
    bodies: &[Vec<u8>],
    window: usize,
    timeout: Duration,
) -> Result<PublishRun, Failure> {
    let connection = amqp_connect(vhost).await?;
    let result = publish_on(&connection, exchange, routing_key, bodies, window, timeout).await;
    let _ = connection.close().await;
    result
}

async fn publish_on(
    connection: &Connection,
    exchange: &str,
    routing_key: &str,
    bodies: &[Vec<u8>],
    window: usize,
    timeout: Duration,
) -> Result<PublishRun, Failure> {
    let channel = connection
        .open_channel(None)
        .await
        .map_err(|e| Failure::Error(format!("opening a channel: {e}")))?;
    let state = Arc::new(Mutex::new(ConfirmState::default()));
    let sem = Arc::new(Semaphore::new(window));
    let done = Arc::new(Notify::new());
    channel
        .register_callback(ConfirmCounter {
            state: state.clone(),
            window: sem.clone(),
            done: done.clone(),
        })
        .await
        .map_err(|e| Failure::Error(format!("registering the confirm callback: {e}")))?;
    channel
        .confirm_select(ConfirmSelectArguments::default())
        .await
        .map_err(|e| Failure::Error(format!("confirm.select: {e}")))?;
    let props = persistent_json();
    let args = BasicPublishArguments::new(exchange, routing_key)
        .mandatory(true)
        .finish();
    let total = bodies.len() as u64;
    let deadline = Instant::now() + timeout;

    let start = Instant::now();
    for (i, body) in bodies.iter().enumerate() {
        let permit = tokio::time::timeout_at(deadline.into(), sem.acquire())
            .await
            .map_err(|_| {
                Failure::Error(format!(
                    "timed out after {timeout:?} waiting for confirms ({i} of {total} published)"
                ))
            })?
            .map_err(|e| Failure::Error(e.to_string()))?;
        permit.forget();
        let tag = i as u64 + 1;
        state.lock().outstanding.insert(tag);
        channel
            .basic_publish(props.clone(), body.clone(), args.clone())
            .await
            .map_err(|e| Failure::Error(format!("basic.publish #{tag}: {e}")))?;
    }
    loop {
        let notified = done.notified();
        let (confirmed, nacked) = {
            let st = state.lock();
            (st.confirmed, st.nacked)
        };
        if confirmed + nacked >= total {
            let run = PublishRun {
                elapsed: start.elapsed(),
                confirmed,
                nacked,
            };
            let _ = channel.close().await;
            return Ok(run);
        }
        if !channel.is_open() {
            return Err(Failure::Error(
                "the broker closed the publishing channel".into(),
            ));
        }
        if tokio::time::timeout_at(deadline.into(), notified)
            .await
            .is_err()
        {
            let st = state.lock();
            return Err(Failure::Error(format!(
                "timed out after {timeout:?}: {} of {total} confirmed",
                st.confirmed + st.nacked
            )));
        }
    }
}

/// Consumes `count` messages from `queue` with manual ack (one `basic.ack` per message,
/// as amqp8 settles each delivery), prefetch `prefetch`; returns the time from
/// `basic.consume` to the last ack sent. The connection is opened before the clock
/// starts.
pub async fn consume_acked(
    vhost: &str,
    queue: &str,
    count: u64,
    prefetch: u16,
    timeout: Duration,
) -> Result<Duration, Failure> {
    let connection = amqp_connect(vhost).await?;
    let result = consume_on(&connection, queue, count, prefetch, timeout).await;
    let _ = connection.close().await;
    result
}

async fn consume_on(
    connection: &Connection,
    queue: &str,
    count: u64,
    prefetch: u16,
    timeout: Duration,
) -> Result<Duration, Failure> {
    let channel = connection
        .open_channel(None)
        .await
        .map_err(|e| Failure::Error(format!("opening a channel: {e}")))?;
    channel
        .basic_qos(BasicQosArguments::new(0, prefetch, false))
        .await
        .map_err(|e| Failure::Error(format!("basic.qos: {e}")))?;
    let deadline = tokio::time::Instant::now() + timeout;
    let start = Instant::now();
    let (_tag, mut rx) = channel
        .basic_consume_rx(BasicConsumeArguments::new(queue, "bench8-raw").finish())
        .await
        .map_err(|e| Failure::Error(format!("basic.consume on {queue}: {e}")))?;
    let mut seen = 0u64;
    while seen < count {
        let msg = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .map_err(|_| {
                Failure::Error(format!(
                    "timed out after {timeout:?}: {seen} of {count} consumed"
                ))
            })?
            .ok_or_else(|| Failure::Error(format!("consumer closed after {seen} of {count}")))?;
        let deliver = msg
            .deliver
            .ok_or_else(|| Failure::Error("a delivery without its method frame".into()))?;
        channel
            .basic_ack(BasicAckArguments::new(deliver.delivery_tag(), false))
            .await
            .map_err(|e| Failure::Error(format!("basic.ack: {e}")))?;
        seen += 1;
    }
    let elapsed = start.elapsed();
    let _ = channel.close().await;
    Ok(elapsed)
}
