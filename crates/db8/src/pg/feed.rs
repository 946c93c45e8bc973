//! [`ChangeFeed`] on LISTEN/NOTIFY: the `orchestratorm8_domain_changed` statement-level
//! trigger notifies channel [`CHANNEL`] with the table's schema as payload.
//!
//! Each subscription listens on its own dedicated connection (outside the pool). Bursts
//! are coalesced: while the subscriber has not taken the last event, new ones merge
//! into it. When the connection is lost, the listener reconnects with backoff and then
//! emits [`DomainChange::Resync`], since notifications sent meanwhile are lost.

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use config8::DatabaseSettings;
use futures::stream::{BoxStream, StreamExt};
use tokio::sync::{Notify, mpsc, watch};
use tokio_postgres::AsyncMessage;

use crate::error::DbError;
use crate::pg::conn::ConnectParams;
use crate::traits::{ChangeFeed, DomainChange};

/// The notification channel of the domain trigger (migration 3).
pub(crate) const CHANNEL: &str = "orchestratorm8_domain";

/// How often an idle listener checks that its connection still answers.
const KEEPALIVE: Duration = Duration::from_secs(30);

/// Reconnection backoff: from this, doubling, up to `retry_delay` (at least this).
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The domain change feed of one database. Dropping it ends every subscription.
pub struct PgChangeFeed {
    params: Arc<ConnectParams>,
    shutdown: watch::Sender<()>,
}

impl std::fmt::Debug for PgChangeFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgChangeFeed")
            .field("database", &self.params.label)
            .finish_non_exhaustive()
    }
}

impl PgChangeFeed {
    /// A feed of the `cptm8domain` table in `Database.schema` of `settings`. Connects
    /// on [`ChangeFeed::subscribe`]. Fails only on a bad `sslrootcert` file.
    pub fn new(settings: &DatabaseSettings) -> Result<PgChangeFeed, DbError> {
        Ok(PgChangeFeed {
            params: Arc::new(ConnectParams::new(settings)?),
            shutdown: watch::channel(()).0,
        })
    }
}

/// The one-event mailbox between a listener and its subscriber.
#[derive(Default)]
struct Mailbox {
    slot: Mutex<Option<DomainChange>>,
    closed: Mutex<bool>,
    wake: Notify,
}

impl Mailbox {
    /// Leaves an event; an unread `Changed` merges into it, `Resync` wins.
    fn put(&self, ev: DomainChange) {
        let mut slot = self.slot.lock();
        if *slot != Some(DomainChange::Resync) {
            *slot = Some(ev);
        }
        drop(slot);
        self.wake.notify_one();
    }

    fn close(&self) {
        *self.closed.lock() = true;
        self.wake.notify_one();
    }

    async fn next(&self) -> Option<DomainChange> {
        loop {
            let ev = self.slot.lock().take();
            if ev.is_some() {
                return ev;
            }
            if *self.closed.lock() {
                return None;
            }
            // `notify_one` stores a permit when nobody waits: no wake-up is lost.
            self.wake.notified().await;
        }
    }
}

/// Ends the listener when the subscriber drops its stream.
struct Subscription {
    mailbox: Arc<Mailbox>,
    _gone: mpsc::Sender<()>,
}

#[async_trait]
impl ChangeFeed for PgChangeFeed {
    async fn subscribe(&self) -> Result<BoxStream<'static, DomainChange>, DbError> {
        let mailbox = Arc::new(Mailbox::default());
        let (gone_tx, gone_rx) = mpsc::channel::<()>(1);
        let first = Session::open(&self.params).await?;
        tokio::spawn(listen(
            Arc::clone(&self.params),
            first,
            Arc::clone(&mailbox),
            self.shutdown.subscribe(),
            gone_rx,
        ));
        let sub = Subscription {
            mailbox: Arc::clone(&mailbox),
            _gone: gone_tx,
        };
        Ok(futures::stream::unfold(sub, |sub| async move {
            let ev = sub.mailbox.next().await;
            ev.map(|ev| (ev, sub))
        })
        .boxed())
    }
}

/// One listening connection.
struct Session {
    client: tokio_postgres::Client,
    task: tokio::task::JoinHandle<()>,
    messages: mpsc::UnboundedReceiver<AsyncMessage>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Session {
    async fn open(params: &ConnectParams) -> Result<Session, DbError> {
        let (tx, messages) = mpsc::unbounded_channel();
        let (client, task) = params.dedicated(Some(tx)).await?;
        let session = Session {
            client,
            task,
            messages,
        };
        session
            .client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .map_err(|e| params.error(e))?;
        Ok(session)
    }
}

/// Why a session ended.
enum End {
    /// The feed or the subscriber is gone.
    Stop,
    /// The connection was lost.
    Lost(String),
}

/// Whether a notification is about the domain table of `schema` (the channel is shared
/// by every schema of the database).
fn relevant(channel: &str, payload: &str, schema: &str) -> bool {
    channel == CHANNEL && payload == schema
}

/// The reconnection delays: from [`FIRST_BACKOFF`], doubling, up to `max`.
fn doubling(max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(FIRST_BACKOFF)
        .with_max_delay(max)
        .with_factor(2.0)
        .without_max_times()
}

/// A step of backon's doubling (computed in `f32`: 200.000003 ms) in whole milliseconds,
/// as the reconnection delays were before (100 ms, 200 ms, ...); the cap `max` as it is.
fn whole_ms(step: Duration, max: Duration) -> Duration {
    if step >= max {
        return max;
    }
    let millis = (step.as_nanos() + 500_000) / 1_000_000;
    Duration::from_millis(u64::try_from(millis).unwrap_or(u64::MAX))
}

async fn listen(
    params: Arc<ConnectParams>,
    first: Session,
    mailbox: Arc<Mailbox>,
    mut shutdown: watch::Receiver<()>,
    mut gone: mpsc::Receiver<()>,
) {
    let schema = params.settings.schema.clone();
    let mut session = Some(first);
    let max_backoff = params.settings.retry_delay.max(FIRST_BACKOFF);
    let doubling = doubling(max_backoff);
    let mut delays = doubling.build();
    loop {
        let current = match session.take() {
            Some(s) => s,
            None => {
                tokio::select! {
                    _ = shutdown.changed() => break,
                    _ = gone.recv() => break,
                    opened = Session::open(&params) => match opened {
                        Ok(s) => {
                            tracing::info!(database = %params.label, "domain change feed reconnected; resyncing");
                            delays = doubling.build();
                            mailbox.put(DomainChange::Resync);
                            s
                        }
                        Err(e) => {
                            let backoff = whole_ms(delays.next().unwrap_or(max_backoff), max_backoff);
                            tracing::warn!(database = %params.label, error = %e, "domain change feed cannot reconnect; retrying in {backoff:?}");
                            tokio::select! {
                                _ = shutdown.changed() => break,
                                _ = gone.recv() => break,
                                _ = tokio::time::sleep(backoff) => {}
                            }
                            continue;
                        }
                    },
                }
            }
        };
        match run(current, &schema, &mailbox, &mut shutdown, &mut gone).await {
            End::Stop => break,
            End::Lost(why) => {
                tracing::warn!(database = %params.label, reason = %why, "domain change feed lost its connection; reconnecting");
            }
        }
    }
    mailbox.close();
}

/// Forwards the notifications of one session until it ends.
async fn run(
    mut s: Session,
    schema: &str,
    mailbox: &Mailbox,
    shutdown: &mut watch::Receiver<()>,
    gone: &mut mpsc::Receiver<()>,
) -> End {
    let mut tick = tokio::time::interval(KEEPALIVE);
    tick.reset();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return End::Stop,
            _ = gone.recv() => return End::Stop,
            msg = s.messages.recv() => match msg {
                Some(AsyncMessage::Notification(n)) => {
                    if relevant(n.channel(), n.payload(), schema) {
                        mailbox.put(DomainChange::Changed);
                    }
                }
                Some(_) => {}
                None => return End::Lost("connection closed".into()),
            },
            _ = tick.tick() => {
                let ping = tokio::time::timeout(KEEPALIVE, s.client.simple_query("")).await;
                match ping {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return End::Lost(crate::pg::conn::describe(&e)),
                    Err(_) => return End::Lost("no answer to a keep-alive query".into()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_schemas_notifications_count() {
        assert!(relevant(CHANNEL, "public", "public"));
        assert!(!relevant(CHANNEL, "other", "public"));
        assert!(!relevant("elsewhere", "public", "public"));
    }

    #[test]
    fn reconnect_delays_double_in_whole_milliseconds_up_to_the_cap() {
        let max = Duration::from_millis(1_000);
        let mut delays = doubling(max).build();
        let got: Vec<u128> = (0..6)
            .map(|_| whole_ms(delays.next().unwrap(), max).as_millis())
            .collect();
        assert_eq!(got, [100, 200, 400, 800, 1_000, 1_000]);
    }

    #[tokio::test]
    async fn the_mailbox_coalesces_and_resync_wins() {
        let m = Mailbox::default();
        m.put(DomainChange::Changed);
        m.put(DomainChange::Changed);
        assert_eq!(m.next().await, Some(DomainChange::Changed));
        m.put(DomainChange::Changed);
        m.put(DomainChange::Resync);
        m.put(DomainChange::Changed);
        assert_eq!(m.next().await, Some(DomainChange::Resync));
        m.put(DomainChange::Changed);
        m.close();
        assert_eq!(m.next().await, Some(DomainChange::Changed));
        assert_eq!(m.next().await, None);
    }
}
