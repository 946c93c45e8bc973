//! Confirmed publishing through one long-lived "lane": a task that owns a confirm-mode
//! channel, keeps up to `window` messages in flight, and settles each publish when the
//! broker confirms it.
//!
//! - Confirms are matched by sequence number (counted from 1 per channel, `multiple`
//!   acks included) and may arrive in any order.
//! - A mandatory message the broker returns is answered `Unroutable` (the return is
//!   matched by the message id amqp8 gives every message; its ack follows).
//! - A nack (e.g. `x-overflow: reject-publish` on a full queue) is answered `Nacked`.
//! - When the connection dies, unconfirmed messages are published again on the next
//!   connection (at-least-once: consumers may see duplicates).
//! - While the broker blocks publishers (`connection.blocked`: a memory or disk
//!   alarm) nothing new is sent; publishing resumes on `connection.unblocked`.
//! - A message waits at most the operation deadline for an unavailable or blocked
//!   broker, then fails with [`AmqpError::Unavailable`] or [`AmqpError::Blocked`]
//!   (with the broker's reason, e.g. `low on memory`).
//! - While the broker refuses the login or virtual host, waiting messages fail at
//!   once with [`AmqpError::AccessRefused`] / [`AmqpError::VhostNotAllowed`]; the lane
//!   keeps trying to connect every few seconds.

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use amqprs::channel::{BasicPublishArguments, Channel, ConfirmSelectArguments};
use amqprs::{BasicProperties, DELIVERY_MODE_PERSISTENT};
use tokio::sync::{Notify, mpsc, oneshot};

use super::Shared;
use super::backoff::Backoff;
use super::channel::{self, ChanEvent, CloseSlot};
use super::fields;
use super::pool::{AmqpConn, Manager};
use crate::broker::{OutgoingMessage, PublishOutcome};
use crate::error::AmqpError;

/// Messages the lane keeps unconfirmed at once by default.
pub(crate) const DEFAULT_WINDOW: usize = 1000;
/// A message in flight when its channel was closed this many times is failed rather
/// than published again (it is probably what the broker refuses).
const MAX_CHANNEL_CLOSES: u8 = 3;

type Outcome = Result<PublishOutcome, AmqpError>;

/// A message ready for the wire.
pub(crate) struct Prepared {
    exchange: String,
    routing_key: String,
    body: Vec<u8>,
    props: BasicProperties,
    mandatory: bool,
    message_id: String,
}

/// Gives every message a unique id: a random prefix per broker handle and a counter.
#[derive(Debug)]
pub(crate) struct MessageIds {
    prefix: u64,
    next: AtomicU64,
}

impl MessageIds {
    pub(crate) fn new() -> Self {
        MessageIds {
            prefix: rand::random(),
            next: AtomicU64::new(1),
        }
    }

    fn next(&self) -> String {
        format!(
            "{:016x}-{:x}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// Checks and encodes a message: persistent, `application/json`, with a message id
/// (the caller's, else a unique one).
pub(crate) fn prepare(ids: &MessageIds, m: OutgoingMessage) -> Result<Prepared, AmqpError> {
    fields::short("exchange name", &m.exchange)?;
    fields::short("routing key", &m.routing_key)?;
    let message_id = match m.message_id {
        Some(id) if !id.is_empty() => {
            fields::short("message_id", &id)?;
            id
        }
        _ => ids.next(),
    };
    let mut props = BasicProperties::default();
    props
        .with_content_type("application/json")
        .with_delivery_mode(DELIVERY_MODE_PERSISTENT)
        .with_message_id(&message_id)
        .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64);
    if !m.headers.is_empty() {
        props.with_headers(fields::headers(&m.headers)?);
    }
    if let Some(app_id) = &m.app_id {
        fields::short("app_id", app_id)?;
        props.with_app_id(app_id);
    }
    Ok(Prepared {
        exchange: m.exchange,
        routing_key: m.routing_key,
        body: m.body,
        props,
        mandatory: m.mandatory,
        message_id,
    })
}

/// Where a publish's outcome goes.
enum Reply {
    One(oneshot::Sender<Outcome>),
    Batch(Arc<Batch>, usize),
}

impl Reply {
    fn send(self, outcome: Outcome) {
        match self {
            Reply::One(tx) => {
                let _ = tx.send(outcome);
            }
            Reply::Batch(b, i) => b.set(i, outcome),
        }
    }
}

/// Outcomes of a `publish_many`, filled in any order.
pub(crate) struct Batch {
    state: Mutex<(Vec<Option<Outcome>>, usize)>,
    done: Notify,
}

impl Batch {
    fn new(n: usize) -> Self {
        Batch {
            state: Mutex::new(((0..n).map(|_| None).collect(), n)),
            done: Notify::new(),
        }
    }

    fn set(&self, i: usize, outcome: Outcome) {
        let mut g = self.state.lock();
        if g.0[i].is_none() {
            g.0[i] = Some(outcome);
            g.1 -= 1;
            if g.1 == 0 {
                self.done.notify_one();
            }
        }
    }

    async fn wait(&self) -> Vec<Outcome> {
        loop {
            {
                let mut g = self.state.lock();
                if g.1 == 0 {
                    return std::mem::take(&mut g.0)
                        .into_iter()
                        .map(|o| o.unwrap_or(Err(AmqpError::Closed)))
                        .collect();
                }
            }
            self.done.notified().await;
        }
    }
}

/// One publish on its way.
struct Job {
    msg: Prepared,
    reply: Reply,
    enqueued: Instant,
    closes: u8,
}

/// The handle callers publish through.
#[derive(Debug, Clone)]
pub(crate) struct Publisher {
    tx: mpsc::UnboundedSender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Job({} {})", self.msg.exchange, self.msg.routing_key)
    }
}

impl Publisher {
    /// Starts the lane.
    pub(crate) fn start(shared: Arc<Shared>, window: usize) -> Publisher {
        let (tx, rx) = mpsc::unbounded_channel();
        let lane = Lane {
            shared,
            rx,
            queue: VecDeque::new(),
            pending: BTreeMap::new(),
            returned: HashSet::new(),
            window: window.max(1),
            unavailable_since: Some(Instant::now()),
            last_progress: Instant::now(),
        };
        tokio::spawn(lane.run());
        Publisher { tx }
    }

    /// Publishes one prepared message and waits for its outcome.
    pub(crate) async fn publish(&self, msg: Prepared) -> Outcome {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Job {
                msg,
                reply: Reply::One(tx),
                enqueued: Instant::now(),
                closes: 0,
            })
            .map_err(|_| AmqpError::Closed)?;
        rx.await.map_err(|_| AmqpError::Closed)?
    }

    /// Publishes prepared messages, all in flight at once (up to the window), and
    /// waits for every outcome, in input order.
    pub(crate) async fn publish_many(&self, msgs: Vec<Prepared>) -> Vec<Outcome> {
        let batch = Arc::new(Batch::new(msgs.len()));
        let now = Instant::now();
        for (i, msg) in msgs.into_iter().enumerate() {
            let job = Job {
                msg,
                reply: Reply::Batch(batch.clone(), i),
                enqueued: now,
                closes: 0,
            };
            if let Err(mpsc::error::SendError(job)) = self.tx.send(job) {
                job.reply.send(Err(AmqpError::Closed));
            }
        }
        batch.wait().await
    }
}

/// Why the lane stopped serving a channel.
enum End {
    Shutdown,
    ConnectionLost,
    ChannelClosed,
}

struct Lane {
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<Job>,
    /// Waiting to be sent (new, or to be published again).
    queue: VecDeque<Job>,
    /// Sent on the current channel, by sequence number, not confirmed yet.
    pending: BTreeMap<u64, Job>,
    /// Sequence numbers returned unroutable (their confirm follows).
    returned: HashSet<u64>,
    window: usize,
    /// Since when nothing could be sent (no connection, or blocked).
    unavailable_since: Option<Instant>,
    /// Last confirm, or first send into an empty window.
    last_progress: Instant,
}

impl Lane {
    async fn run(mut self) {
        let mut backoff = self.shared.backoff();
        'connection: loop {
            self.mark_unavailable();
            let Some(conn) = self.connect(&mut backoff).await else {
                return self.shut_down();
            };
            let mut channel_backoff = self.shared.backoff();
            loop {
                let opened = self.open_channel(&conn.conn).await;
                let (ch, close, mut events) = match opened {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "publisher: cannot open a confirm channel");
                        if !conn.is_usable() {
                            continue 'connection;
                        }
                        if !self.pause(channel_backoff.next_delay()).await {
                            return self.shut_down();
                        }
                        continue;
                    }
                };
                backoff.reset();
                self.requeue_pending(false);
                let end = self.serve(&conn, &ch, &close, &mut events).await;
                match end {
                    End::Shutdown => {
                        let _ = tokio::time::timeout(Duration::from_secs(1), ch.close()).await;
                        return self.shut_down();
                    }
                    End::ConnectionLost => {
                        tracing::warn!(
                            unconfirmed = self.pending.len(),
                            waiting = self.queue.len(),
                            "publisher: connection lost; unconfirmed messages will be published again"
                        );
                        self.requeue_pending(false);
                        continue 'connection;
                    }
                    End::ChannelClosed => {
                        let reason = close.get();
                        self.channel_closed(reason);
                        if !self.pause(channel_backoff.next_delay()).await {
                            return self.shut_down();
                        }
                    }
                }
            }
        }
    }

    fn mark_unavailable(&mut self) {
        if self.unavailable_since.is_none() {
            self.unavailable_since = Some(Instant::now());
        }
    }

    /// Waits for a pooled connection, taking in and expiring jobs meanwhile. `None`
    /// on shutdown.
    async fn connect(
        &mut self,
        backoff: &mut Backoff,
    ) -> Option<bb8::PooledConnection<'static, Manager>> {
        let shared = self.shared.clone();
        loop {
            if let Ok(c) = self.meanwhile(shared.pool.get_owned(), true).await?
                && c.is_usable()
            {
                return Some(c);
            }
            self.fail_if_refused();
            let pause = tokio::time::sleep(shared.retry_delay(backoff));
            self.meanwhile(pause, true).await?;
        }
    }

    /// Sleeps, taking in jobs; `false` on shutdown.
    async fn pause(&mut self, d: Duration) -> bool {
        self.meanwhile(tokio::time::sleep(d), false).await.is_some()
    }

    /// Waits for `until`, taking in jobs meanwhile and, when `expiring`, failing those
    /// the broker refuses or that waited too long. `None` on shutdown.
    async fn meanwhile<T>(&mut self, until: impl Future<Output = T>, expiring: bool) -> Option<T> {
        tokio::pin!(until);
        let shutdown = self.shared.shutdown.clone();
        let mut buf = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                r = &mut until => return Some(r),
                n = self.rx.recv_many(&mut buf, 1024) => {
                    if n == 0 { return None; }
                    self.queue.extend(buf.drain(..));
                    if expiring { self.fail_if_refused(); }
                }
                _ = tick.tick(), if expiring => self.expire(),
                _ = shutdown.cancelled() => return None,
            }
        }
    }

    async fn open_channel(
        &mut self,
        conn: &amqprs::connection::Connection,
    ) -> Result<(Channel, CloseSlot, mpsc::UnboundedReceiver<ChanEvent>), amqprs::error::Error>
    {
        let (tx, rx) = mpsc::unbounded_channel();
        let (ch, close) = channel::open(conn, Some(tx)).await?;
        ch.confirm_select(ConfirmSelectArguments::default()).await?;
        Ok((ch, close, rx))
    }

    async fn serve(
        &mut self,
        conn: &AmqpConn,
        ch: &Channel,
        close: &CloseSlot,
        events: &mut mpsc::UnboundedReceiver<ChanEvent>,
    ) -> End {
        let shared = self.shared.clone();
        let mut down = conn.down();
        let mut blocked = conn.blocked();
        let mut seq: u64 = 0;
        let mut buf = Vec::with_capacity(1024);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            let is_blocked = blocked.borrow().is_some();
            if is_blocked {
                self.mark_unavailable();
            } else {
                if self.unavailable_since.take().is_some() {
                    // Just connected or unblocked: the time without confirms so far
                    // was not the broker's silence.
                    self.last_progress = Instant::now();
                }
                while self.pending.len() < self.window {
                    let Some(job) = self.queue.pop_front() else {
                        break;
                    };
                    if !ch.is_open() {
                        self.queue.push_front(job);
                        break;
                    }
                    seq += 1;
                    if self.pending.is_empty() {
                        self.last_progress = Instant::now();
                    }
                    let args = BasicPublishArguments::new(&job.msg.exchange, &job.msg.routing_key)
                        .mandatory(job.msg.mandatory)
                        .finish();
                    let props = job.msg.props.clone();
                    let body = job.msg.body.clone();
                    self.pending.insert(seq, job);
                    if let Err(e) = ch.basic_publish(props, body, args).await {
                        tracing::debug!(error = %e, "publisher: basic.publish failed");
                        return End::ConnectionLost;
                    }
                }
            }
            tokio::select! {
                biased;
                _ = shared.shutdown.cancelled() => return End::Shutdown,
                ev = events.recv() => match ev {
                    Some(ev) => {
                        self.on_event(ev);
                        // Take every confirm already there before sending more.
                        while let Ok(ev) = events.try_recv() {
                            self.on_event(ev);
                        }
                    }
                    None => {
                        return if conn.is_usable() && close.get().is_some() {
                            End::ChannelClosed
                        } else {
                            End::ConnectionLost
                        };
                    }
                },
                _ = down.changed() => return End::ConnectionLost,
                changed = blocked.changed() => {
                    // The sender goes with the connection.
                    if changed.is_err() { return End::ConnectionLost; }
                }
                n = self.rx.recv_many(&mut buf, 1024) => {
                    if n == 0 { return End::Shutdown; }
                    self.queue.extend(buf.drain(..));
                }
                _ = tick.tick() => {
                    self.expire();
                    if self.stalled() {
                        // The broker keeps the connection open but confirms nothing:
                        // fail what waits and start over on a new connection.
                        let conn = conn.conn.clone();
                        tokio::spawn(async move { let _ = conn.close().await; });
                        return End::ConnectionLost;
                    }
                }
            }
        }
    }

    fn on_event(&mut self, ev: ChanEvent) {
        match ev {
            ChanEvent::Ack { tag, multiple } => self.settle(tag, multiple, true),
            ChanEvent::Nack { tag, multiple } => self.settle(tag, multiple, false),
            ChanEvent::Return { message_id } => {
                // Returns are rare: find the message by its id among those in flight
                // (the first not returned yet: copies of one logical message share
                // their id).
                let Some(id) = message_id else { return };
                let returned = &self.returned;
                if let Some((&seq, _)) = self
                    .pending
                    .iter()
                    .find(|(s, j)| j.msg.message_id == id && !returned.contains(s))
                {
                    self.returned.insert(seq);
                }
            }
            ChanEvent::Cancelled { .. } => {}
        }
    }

    fn settle(&mut self, tag: u64, multiple: bool, ack: bool) {
        self.last_progress = Instant::now();
        let settled: Vec<(u64, Job)> = if multiple {
            let rest = self.pending.split_off(&(tag + 1));
            std::mem::replace(&mut self.pending, rest)
                .into_iter()
                .collect()
        } else {
            self.pending
                .remove(&tag)
                .map(|j| (tag, j))
                .into_iter()
                .collect()
        };
        for (seq, job) in settled {
            let outcome = if !ack {
                self.returned.remove(&seq);
                PublishOutcome::Nacked
            } else if self.returned.remove(&seq) {
                PublishOutcome::Unroutable
            } else {
                PublishOutcome::Confirmed
            };
            job.reply.send(Ok(outcome));
        }
    }

    /// Puts unconfirmed messages back at the head of the queue, in their order.
    fn requeue_pending(&mut self, closed: bool) {
        let pending = std::mem::take(&mut self.pending);
        for (_, mut job) in pending.into_iter().rev() {
            if closed {
                job.closes += 1;
            }
            self.queue.push_front(job);
        }
        self.returned.clear();
    }

    /// The broker closed the channel: fail the messages it refuses, publish the others
    /// again on a new channel.
    fn channel_closed(&mut self, reason: Option<(u16, String)>) {
        let text = reason.map_or_else(
            || "the channel closed".to_owned(),
            |(c, t)| format!("{c} {t}"),
        );
        tracing::warn!(reason = %text, unconfirmed = self.pending.len(), "publisher: the broker closed the channel");
        self.requeue_pending(true);
        let bad_exchange = exchange_named_in(&text);
        if let Some(ex) = &bad_exchange {
            self.shared.forget_exchange(ex);
        }
        let (refused, kept): (VecDeque<Job>, _) = std::mem::take(&mut self.queue)
            .into_iter()
            .partition(|job| {
                bad_exchange.as_deref() == Some(job.msg.exchange.as_str())
                    || job.closes >= MAX_CHANNEL_CLOSES
            });
        self.queue = kept;
        for job in refused {
            job.reply.send(Err(AmqpError::Refused {
                operation: format!("basic.publish to exchange {:?}", job.msg.exchange),
                reason: text.clone(),
            }));
        }
    }

    /// While the broker refuses the login or virtual host (the latest connection
    /// attempt was refused), fails the waiting messages with that refusal: waiting
    /// for the deadline would not help them.
    fn fail_if_refused(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        let Some(refused) = self.shared.stats.refusal() else {
            return;
        };
        for job in self.queue.drain(..) {
            job.reply.send(Err(refused.clone()));
        }
    }

    /// Fails messages that waited longer than the deadline for an unavailable or
    /// blocking broker.
    fn expire(&mut self) {
        let Some(since) = self.unavailable_since else {
            return;
        };
        let now = Instant::now();
        let deadline = self.shared.deadline;
        let expired = |j: &Job| now.saturating_duration_since(j.enqueued.max(since)) >= deadline;
        if !self.queue.iter().any(expired) && !self.pending.values().any(expired) {
            return;
        }
        let error = match self.shared.stats.blocked_reason() {
            Some(reason) => AmqpError::Blocked {
                host: self.shared.endpoint.display.clone(),
                reason,
                waited: deadline,
            },
            None => self.shared.unavailable(format!(
                "not published within {deadline:?} (RabbitMQ.pool.connection_timeout): {}",
                self.shared
                    .stats
                    .last_error()
                    .unwrap_or_else(|| "no connection".into())
            )),
        };
        let (waited, kept): (VecDeque<Job>, _) = std::mem::take(&mut self.queue)
            .into_iter()
            .partition(expired);
        self.queue = kept;
        let (sent, kept): (BTreeMap<u64, Job>, _) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|(_, j)| expired(j));
        self.pending = kept;
        for job in waited.into_iter().chain(sent.into_values()) {
            job.reply.send(Err(error.clone()));
        }
    }

    /// Connected and not blocked, messages in flight, and no confirm for a deadline.
    fn stalled(&mut self) -> bool {
        if self.unavailable_since.is_some()
            || self.pending.is_empty()
            || self.last_progress.elapsed() < self.shared.deadline
        {
            return false;
        }
        let error = self.shared.unavailable(format!(
            "no publisher confirm within {:?}",
            self.shared.deadline
        ));
        tracing::error!(unconfirmed = self.pending.len(), %error, "publisher: the broker stopped confirming");
        for (_, job) in std::mem::take(&mut self.pending) {
            job.reply.send(Err(error.clone()));
        }
        self.returned.clear();
        true
    }

    fn shut_down(mut self) {
        self.rx.close();
        while let Ok(job) = self.rx.try_recv() {
            self.queue.push_back(job);
        }
        for job in self.pending.into_values().chain(self.queue) {
            job.reply.send(Err(AmqpError::Closed));
        }
    }
}

/// The exchange named in a broker's reply such as
/// `NOT_FOUND - no exchange 'x' in vhost '/'`.
fn exchange_named_in(text: &str) -> Option<String> {
    let start = text.find("exchange '")? + "exchange '".len();
    let end = text[start..].find('\'')? + start;
    Some(text[start..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_refused_exchange() {
        assert_eq!(
            exchange_named_in("404 NOT_FOUND - no exchange 'cptm8.x' in vhost '/'").as_deref(),
            Some("cptm8.x")
        );
        assert_eq!(
            exchange_named_in("403 ACCESS_REFUSED - write access to exchange 'e' in vhost 'v' refused for user 'u'").as_deref(),
            Some("e")
        );
        assert_eq!(
            exchange_named_in("406 PRECONDITION_FAILED - something"),
            None
        );
    }

    #[tokio::test]
    async fn batch_collects_in_input_order() {
        let b = Arc::new(Batch::new(3));
        b.set(2, Ok(PublishOutcome::Nacked));
        b.set(0, Ok(PublishOutcome::Confirmed));
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.wait().await })
        };
        b.set(1, Err(AmqpError::Closed));
        b.set(1, Ok(PublishOutcome::Confirmed));
        let out = waiter.await.unwrap();
        assert!(matches!(out[0], Ok(PublishOutcome::Confirmed)));
        assert!(matches!(out[1], Err(AmqpError::Closed)));
        assert!(matches!(out[2], Ok(PublishOutcome::Nacked)));
    }

    #[test]
    fn prepared_messages_are_persistent_json_with_unique_ids() {
        let ids = MessageIds::new();
        let mut m = OutgoingMessage::new("cptm8", "k", b"{}".to_vec());
        m.headers.insert("x-a".into(), "b".into());
        let p = prepare(&ids, m.clone()).unwrap();
        let q = prepare(&ids, m).unwrap();
        assert_ne!(p.message_id, q.message_id);
        assert_eq!(
            p.props.content_type().map(String::as_str),
            Some("application/json")
        );
        assert_eq!(p.props.delivery_mode(), Some(DELIVERY_MODE_PERSISTENT));
        assert_eq!(p.props.message_id(), Some(&p.message_id));
        assert!(p.props.headers().is_some());
        let long = OutgoingMessage::new("x".repeat(256), "k", vec![]);
        assert!(matches!(prepare(&ids, long), Err(AmqpError::Encode(_))));
    }
}
