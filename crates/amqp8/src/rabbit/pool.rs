//! The connection pool: a bb8 manager for amqprs connections.
//!
//! Connections are pooled; channels are not (see docs/AMQP.md): each long-lived role
//! (the publisher, every consumer) owns a channel on a connection it holds for as long
//! as that connection lives, and short operations (declare, passive checks, delete)
//! open a throw-away channel on a pooled connection. Every new connection has the
//! registered topology declared on it before it is handed out (topology recovery).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use amqprs::Close;
use amqprs::callbacks::ConnectionCallback;
use amqprs::connection::Connection;
use async_trait::async_trait;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::endpoint::Endpoint;
use super::topology::Registry;
use crate::error::AmqpError;

/// Counters and shared state of every connection the pool made.
#[derive(Debug, Default)]
pub(crate) struct ConnStats {
    pub(crate) created: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) open: AtomicU64,
    next_id: AtomicU64,
    /// Connections the broker blocked (resource alarm), with the reason.
    pub(crate) blocked: Mutex<HashMap<u64, String>>,
    /// The last connection failure or server close, for error messages.
    pub(crate) last_error: Mutex<Option<String>>,
    /// Set while the latest connection attempt was refused by the broker (login or
    /// virtual host): operations waiting for a connection fail with it at once.
    refusal: Mutex<Option<AmqpError>>,
}

impl ConnStats {
    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }

    fn set_last_error(&self, e: String) {
        *self.last_error.lock() = Some(e);
    }

    /// The broker's refusal of the latest connection attempt, if it was refused
    /// ([`AmqpError::AccessRefused`] or [`AmqpError::VhostNotAllowed`]).
    pub(crate) fn refusal(&self) -> Option<AmqpError> {
        self.refusal.lock().clone()
    }

    /// Records the outcome of a connection attempt: `Some(refusal)` or `None` (it
    /// connected, or failed for another reason). Returns the refusal that was
    /// recorded before.
    fn set_refusal(&self, refusal: Option<AmqpError>) -> Option<AmqpError> {
        std::mem::replace(&mut *self.refusal.lock(), refusal)
    }

    pub(crate) fn blocked_reason(&self) -> Option<String> {
        self.blocked.lock().values().next().cloned()
    }

    fn set_blocked(&self, id: u64, reason: Option<String>) {
        let mut b = self.blocked.lock();
        match reason {
            Some(r) => b.insert(id, r),
            None => b.remove(&id),
        };
    }
}

/// A pooled connection with its liveness and blocked state.
pub(crate) struct AmqpConn {
    pub(crate) conn: Connection,
    pub(crate) id: u64,
    down: watch::Receiver<bool>,
    blocked: watch::Receiver<Option<String>>,
    dropped: CancellationToken,
}

impl std::fmt::Debug for AmqpConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AmqpConn#{}", self.id)
    }
}

impl AmqpConn {
    /// Open and not known to have failed.
    pub(crate) fn is_usable(&self) -> bool {
        self.conn.is_open() && !*self.down.borrow()
    }

    /// Turns `true` when the connection is gone.
    pub(crate) fn down(&self) -> watch::Receiver<bool> {
        self.down.clone()
    }

    /// `Some(reason)` while the broker blocks publishing on this connection.
    pub(crate) fn blocked(&self) -> watch::Receiver<Option<String>> {
        self.blocked.clone()
    }
}

impl Drop for AmqpConn {
    fn drop(&mut self) {
        // Ends the watcher, whose clone of the connection is then the last one but
        // ours: dropping both closes the connection.
        self.dropped.cancel();
    }
}

/// Connection events from the broker.
struct ConnEvents {
    id: u64,
    stats: Arc<ConnStats>,
    blocked: watch::Sender<Option<String>>,
    display: String,
}

#[async_trait]
impl ConnectionCallback for ConnEvents {
    async fn close(&mut self, _: &Connection, close: Close) -> Result<(), amqprs::error::Error> {
        let reason = format!("{} {}", close.reply_code(), close.reply_text());
        tracing::warn!(broker = %self.display, connection = self.id, %reason, "RabbitMQ closed the connection");
        self.stats
            .set_last_error(format!("the broker closed the connection: {reason}"));
        Ok(())
    }

    async fn blocked(&mut self, _: &Connection, reason: String) {
        tracing::warn!(broker = %self.display, connection = self.id, %reason,
            "RabbitMQ blocks publishing (resource alarm); publishers wait");
        self.stats.set_blocked(self.id, Some(reason.clone()));
        let _ = self.blocked.send(Some(reason));
    }

    async fn unblocked(&mut self, _: &Connection) {
        tracing::info!(broker = %self.display, connection = self.id, "RabbitMQ unblocked publishing");
        self.stats.set_blocked(self.id, None);
        let _ = self.blocked.send(None);
    }

    async fn secret_updated(&mut self, _: &Connection) {}
}

/// Makes connections for bb8.
pub(crate) struct Manager {
    pub(crate) endpoint: Endpoint,
    pub(crate) stats: Arc<ConnStats>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) connect_timeout: Duration,
    pub(crate) service: String,
}

impl Manager {
    async fn open(&self, id: u64) -> Result<Connection, AmqpError> {
        let name = format!("{}#{id}", self.service);
        let args = self.endpoint.args(&name);
        let opened = tokio::time::timeout(self.connect_timeout, Connection::open(&args)).await;
        match opened {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(self.open_error(&e)),
            Err(_) => Err(self.unavailable(format!(
                "no answer within {:?} (RabbitMQ.pool.connection_timeout)",
                self.connect_timeout
            ))),
        }
    }

    fn unavailable(&self, reason: String) -> AmqpError {
        AmqpError::Unavailable {
            host: self.endpoint.display.clone(),
            reason,
        }
    }

    async fn connect_inner(&self) -> Result<AmqpConn, AmqpError> {
        let id = self.stats.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let started = Instant::now();
        let conn = self.open(id).await?;
        let (blocked_tx, blocked_rx) = watch::channel(None);
        conn.register_callback(ConnEvents {
            id,
            stats: self.stats.clone(),
            blocked: blocked_tx,
            display: self.endpoint.display.clone(),
        })
        .await
        .map_err(|e| self.unavailable(format!("registering connection callbacks: {e}")))?;
        let (down_tx, down_rx) = watch::channel(false);
        let dropped = CancellationToken::new();
        spawn_watcher(
            conn.clone(),
            id,
            down_tx,
            dropped.clone(),
            self.stats.clone(),
            self.endpoint.display.clone(),
        );
        // Topology recovery: whatever was declared through amqp8 exists on this broker
        // before the connection is used.
        let recovered = tokio::time::timeout(
            self.connect_timeout,
            self.registry.redeclare(&conn, &self.endpoint.display),
        )
        .await;
        if recovered.is_err() {
            return Err(self.unavailable(format!(
                "declaring the remembered topology took longer than {:?}",
                self.connect_timeout
            )));
        }
        if !conn.is_open() {
            return Err(self.unavailable(
                self.stats
                    .last_error()
                    .unwrap_or_else(|| "the connection closed while it was being set up".into()),
            ));
        }
        tracing::debug!(broker = %self.endpoint.display, connection = id, took = ?started.elapsed(), "RabbitMQ connection open");
        Ok(AmqpConn {
            conn,
            id,
            down: down_rx,
            blocked: blocked_rx,
            dropped,
        })
    }
}

/// Marks the connection down when amqprs reports its I/O ended (network failure or
/// the broker closing it), and stops when the pool drops the connection.
fn spawn_watcher(
    conn: Connection,
    id: u64,
    down: watch::Sender<bool>,
    dropped: CancellationToken,
    stats: Arc<ConnStats>,
    endpoint: String,
) {
    stats.open.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        watch_connection(&conn, &dropped).await;
        let _ = down.send(true);
        stats.open.fetch_sub(1, Ordering::Relaxed);
        stats.set_blocked(id, None);
        if !dropped.is_cancelled() {
            tracing::warn!(broker = %endpoint, connection = id, "RabbitMQ connection lost");
        }
    });
}

/// Resolves when the connection's I/O ended or the pool dropped it.
async fn watch_connection(conn: &Connection, dropped: &CancellationToken) {
    let failure = conn.listen_network_io_failure();
    tokio::pin!(failure);
    // Subscribe first (the first poll does), then check: a failure that happened
    // before the subscription is not announced again.
    let announced = futures::poll!(failure.as_mut()).is_ready();
    if !announced && conn.is_open() {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = &mut failure => break,
                _ = dropped.cancelled() => break,
                _ = tick.tick() => if !conn.is_open() { break },
            }
        }
    }
}

impl Manager {
    /// amqprs's open errors, without anything from the connection arguments. A
    /// refused login or virtual host is typed ([`AmqpError::AccessRefused`],
    /// [`AmqpError::VhostNotAllowed`]): retrying will not help until someone fixes
    /// the configuration or the broker.
    fn open_error(&self, e: &amqprs::error::Error) -> AmqpError {
        // The broker answers a refused login with `connection.close` 403 (amqprs is
        // patched to announce `authentication_failure_close`, third_party/amqprs) and
        // a refused virtual host with 530.
        if let amqprs::error::Error::ConnectionOpenRefused {
            reply_code,
            reply_text,
        } = e
        {
            let reason = format!("{reply_code} {reply_text}");
            return match reply_code {
                403 => AmqpError::AccessRefused {
                    host: self.endpoint.display.clone(),
                    user: self.endpoint.user.clone(),
                    reason,
                },
                530 => AmqpError::VhostNotAllowed {
                    host: self.endpoint.display.clone(),
                    vhost: self.endpoint.vhost.clone(),
                    user: self.endpoint.user.clone(),
                    reason,
                },
                _ => self.unavailable(format!(
                    "the broker closed the connection during the AMQP handshake: {reason}"
                )),
            };
        }
        let text = e.to_string();
        if text.contains("reset by peer")
            || text.contains("UnexpectedEof")
            || text.contains("end of file")
        {
            // A broker that ignores `authentication_failure_close` drops the socket
            // without a reason on a failed login.
            self.unavailable(format!(
                "{text} during the AMQP handshake (wrong RabbitMQ.username or RabbitMQ.password? the broker's log says; or the broker is shutting down)"
            ))
        } else {
            self.unavailable(text)
        }
    }

    /// Keeps [`ConnStats::refusal`] up to date and says so, once per change: a
    /// refused login or virtual host is an error an operator has to fix.
    fn record_attempt(&self, outcome: Result<(), &AmqpError>) {
        let refusal = match outcome {
            Err(e) if e.is_connection_refused() => Some(e.clone()),
            _ => None,
        };
        let before = self.stats.set_refusal(refusal.clone());
        match (&before, &refusal) {
            (_, Some(now)) if before.as_ref() != Some(now) => {
                tracing::error!(broker = %self.endpoint.display, error = %now,
                    "RabbitMQ refuses the connection; amqp8 keeps retrying (every few seconds) until the configuration or the broker is fixed");
            }
            (Some(_), None) if outcome.is_ok() => {
                tracing::info!(broker = %self.endpoint.display, "RabbitMQ accepts the connection again");
            }
            _ => {}
        }
    }
}

impl bb8::ManageConnection for Manager {
    type Connection = AmqpConn;
    type Error = AmqpError;

    async fn connect(&self) -> Result<AmqpConn, AmqpError> {
        match self.connect_inner().await {
            Ok(c) => {
                self.stats.created.fetch_add(1, Ordering::Relaxed);
                self.record_attempt(Ok(()));
                Ok(c)
            }
            Err(e) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                self.stats.set_last_error(match &e {
                    AmqpError::Unavailable { reason, .. } => reason.clone(),
                    other => other.to_string(),
                });
                tracing::debug!(error = %e, "RabbitMQ connection attempt failed");
                self.record_attempt(Err(&e));
                Err(e)
            }
        }
    }

    async fn is_valid(&self, conn: &mut AmqpConn) -> Result<(), AmqpError> {
        if conn.is_usable() {
            Ok(())
        } else {
            Err(self.unavailable("connection closed".into()))
        }
    }

    fn has_broken(&self, conn: &mut AmqpConn) -> bool {
        !conn.is_usable()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manager() -> Manager {
        let settings = config8::RabbitMqSettings {
            username: "svc".into(),
            password: config8::Secret::new("hunter2-secret"),
            vhost: "cptm8".into(),
            ..Default::default()
        };
        Manager {
            endpoint: Endpoint::new(&settings).unwrap(),
            stats: Arc::new(ConnStats::default()),
            registry: Arc::new(Registry::default()),
            connect_timeout: Duration::from_secs(1),
            service: "test".into(),
        }
    }

    fn closed(code: u16, text: &str) -> amqprs::error::Error {
        amqprs::error::Error::ConnectionOpenRefused {
            reply_code: code,
            reply_text: text.into(),
        }
    }

    #[test]
    fn a_refused_login_is_typed_and_names_the_user_not_the_password() {
        let m = manager();
        let e = m.open_error(&closed(
            403,
            "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile.",
        ));
        assert!(
            matches!(&e, AmqpError::AccessRefused { user, reason, .. }
                if user == "svc" && reason.starts_with("403 ACCESS_REFUSED")),
            "{e:?}"
        );
        assert!(!e.is_transient() && e.is_connection_refused());
        let text = format!("{e} {e:?}");
        assert!(text.contains("amqp://127.0.0.1:5672/cptm8"), "{text}");
        assert!(text.contains("RabbitMQ.password"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn a_refused_virtual_host_is_typed_and_names_it() {
        let e = manager().open_error(&closed(530, "NOT_ALLOWED - vhost cptm8 not found"));
        assert!(
            matches!(&e, AmqpError::VhostNotAllowed { vhost, user, .. } if vhost == "cptm8" && user == "svc"),
            "{e:?}"
        );
        assert!(!e.is_transient());
        let text = e.to_string();
        assert!(
            text.contains("virtual host \"cptm8\"") && text.contains("530 NOT_ALLOWED"),
            "{text}"
        );
    }

    #[test]
    fn other_closes_and_resets_are_outages() {
        let m = manager();
        let e = m.open_error(&closed(
            320,
            "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'",
        ));
        assert!(matches!(e, AmqpError::Unavailable { .. }), "{e:?}");
        assert!(e.to_string().contains("CONNECTION_FORCED"), "{e}");
        let e = m.open_error(&amqprs::error::Error::NetworkError(
            "Connection reset by peer (os error 104)".into(),
        ));
        assert!(e.is_transient(), "{e:?}");
        assert!(e.to_string().contains("RabbitMQ.password?"), "{e}");
    }

    #[test]
    fn the_refusal_lasts_until_an_attempt_is_not_refused() {
        let m = manager();
        let refused = m.open_error(&closed(403, "ACCESS_REFUSED - Login was refused"));
        m.record_attempt(Err(&refused));
        assert_eq!(m.stats.refusal(), Some(refused.clone()));
        m.record_attempt(Err(&refused));
        assert_eq!(m.stats.refusal(), Some(refused.clone()));
        m.record_attempt(Ok(()));
        assert_eq!(m.stats.refusal(), None);
        m.record_attempt(Err(&refused));
        let outage = m.unavailable("connection refused".into());
        m.record_attempt(Err(&outage));
        assert_eq!(m.stats.refusal(), None);
    }
}
