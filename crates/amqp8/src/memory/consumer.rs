//! In-memory consumers: one task per consumer taking messages as prefetch allows and
//! running them through the shared [`Dispatch`].

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::task::JoinSet;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::broker::{ConsumeOptions, ConsumerHandle, Delivery, Handler};
use crate::dispatch::{Control, Dispatch};
use crate::health::ConsumerStats;
use crate::redelivery::MessageKey;

use super::Inner;
use super::acker::MemAcker;

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
    let (control, done) = Control::new(CancellationToken::new());
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
        control: control.clone(),
        _done: done,
    };
    tokio::spawn(run.run());
    ConsumerHandle(control)
}

struct Run {
    inner: Arc<Inner>,
    options: ConsumeOptions,
    stats: Arc<ConsumerStats>,
    dispatch: Arc<Dispatch>,
    id: u64,
    control: Arc<Control>,
    /// Tells the consumer's handle that it has stopped, when dropped.
    _done: DropGuard,
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
            if self.control.stop.is_cancelled() {
                break;
            }
            while tasks.try_join_next().is_some() {}
            let up = self.inner.is_up();
            let (exists, taken) = {
                let mut s = self.inner.lock();
                let o = &self.options;
                // Whether the queue exists, and whether it is a quorum queue.
                let quorum = s.queues.get(&o.queue).map(|q| q.quorum);
                let taken = (up && tasks.len() < limit)
                    .then(|| s.take(&o.queue, self.id, o.prefetch, o.autoack))
                    .flatten()
                    .map(|t| (t, quorum == Some(true)));
                (quorum.is_some(), taken)
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
                let delivery = Delivery {
                    body: message.body,
                    exchange: message.exchange,
                    routing_key: message.routing_key,
                    redelivered: message.redelivered,
                    delivery_count: (quorum && message.returned > 0).then_some(message.returned),
                    headers: message.headers,
                    app_id: message.app_id,
                    message_id: Some(message.message_id),
                    acker: Some(Box::new(acker)),
                };
                let dispatch = self.dispatch.clone();
                tasks.spawn(async move { dispatch.run(delivery, key).await });
                continue;
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = self.control.stop.cancelled() => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        self.stats.set_active(false, false);
        let grace = *self.control.grace.lock();
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
    }
}
