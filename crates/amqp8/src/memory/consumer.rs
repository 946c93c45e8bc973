//! In-memory consumers: one task per consumer taking messages as prefetch allows and
//! running them through the shared [`Dispatch`].

use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::broker::{ConsumeOptions, ConsumerControl, ConsumerHandle, Delivery, Handler};
use crate::dispatch::Dispatch;
use crate::health::ConsumerStats;
use crate::redelivery::MessageKey;

use super::Inner;
use super::acker::MemAcker;

/// Control of one in-memory consumer.
struct MemConsumer {
    stop: CancellationToken,
    grace: Arc<Mutex<Duration>>,
    done: CancellationToken,
}

#[async_trait]
impl ConsumerControl for MemConsumer {
    async fn stop(&self, grace: Duration) {
        if !self.stop.is_cancelled() {
            *self.grace.lock() = grace;
            self.stop.cancel();
        }
        self.done.cancelled().await;
    }
}

/// Starts a consumer; the queue exists and the broker is up.
pub(crate) fn spawn(
    inner: Arc<Inner>,
    options: ConsumeOptions,
    handler: Arc<dyn Handler>,
) -> ConsumerHandle {
    let stats = inner
        .consumers
        .add(&options.tag, &options.queue, options.autoack);
    stats.set_active(true, false);
    let control = MemConsumer {
        stop: CancellationToken::new(),
        grace: Arc::new(Mutex::new(Duration::ZERO)),
        done: CancellationToken::new(),
    };
    let id = inner.next_consumer.fetch_add(1, Ordering::Relaxed);
    let dispatch = Arc::new(Dispatch {
        handler,
        stats: stats.clone(),
        redeliveries: inner.redeliveries.clone(),
        max_redeliveries: options.max_redeliveries,
        queue: options.queue.clone(),
    });
    let run = Run {
        inner,
        options,
        stats,
        dispatch,
        id,
        stop: control.stop.clone(),
        grace: control.grace.clone(),
        done: control.done.clone(),
    };
    tokio::spawn(run.run());
    ConsumerHandle(Arc::new(control))
}

struct Run {
    inner: Arc<Inner>,
    options: ConsumeOptions,
    stats: Arc<ConsumerStats>,
    dispatch: Arc<Dispatch>,
    id: u64,
    stop: CancellationToken,
    grace: Arc<Mutex<Duration>>,
    done: CancellationToken,
}

impl Run {
    async fn run(self) {
        let mut tasks = JoinSet::new();
        let limit = usize::from(self.options.prefetch.max(1));
        let mut active = true;
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.stop.is_cancelled() {
                break;
            }
            while tasks.try_join_next().is_some() {}
            let up = self.inner.is_up();
            let (exists, taken) = {
                let mut s = self.inner.lock();
                let exists = s.queues.contains_key(&self.options.queue);
                let taken = if up && tasks.len() < limit {
                    let quorum = s.queues.get(&self.options.queue).is_some_and(|q| q.quorum);
                    s.take(
                        &self.options.queue,
                        self.id,
                        self.options.prefetch,
                        self.options.autoack,
                    )
                    .map(|t| (t, quorum))
                } else {
                    None
                };
                (exists, taken)
            };
            let now_active = up && exists;
            if now_active != active {
                self.stats.set_active(now_active, true);
                active = now_active;
            }
            if let Some(((delivery_id, message), quorum)) = taken {
                let key = MessageKey::of(
                    Some(&message.message_id),
                    &message.exchange,
                    &message.routing_key,
                    &message.body,
                );
                let acker = MemAcker {
                    inner: self.inner.clone(),
                    id: delivery_id,
                    queue: self.options.queue.clone(),
                    autoacked: self.options.autoack.then(|| message.clone()),
                    dead_letter: self.options.dead_letter.clone(),
                };
                let mut delivery = Delivery::new(
                    message.body,
                    message.exchange,
                    message.routing_key,
                    message.redelivered,
                    Box::new(acker),
                );
                delivery.headers = message.headers;
                delivery.app_id = message.app_id;
                delivery.message_id = Some(message.message_id);
                if quorum && message.returned > 0 {
                    delivery.delivery_count = Some(message.returned);
                }
                let dispatch = self.dispatch.clone();
                tasks.spawn(async move { dispatch.run(delivery, key).await });
                continue;
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = self.stop.cancelled() => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        self.stats.set_active(false, false);
        let grace = *self.grace.lock();
        let drained =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(queue = %self.options.queue, in_flight = tasks.len(),
                "consumer stop: handlers still running after the grace period; their messages return to the queue");
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        self.inner.lock().return_unacked(Some(self.id));
        self.inner.changed();
        self.inner.consumers.remove(&self.stats);
        self.done.cancel();
    }
}
