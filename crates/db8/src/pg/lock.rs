//! [`LeaderLock`] on a session-level advisory lock (`pg_try_advisory_lock(key)`) held by
//! a dedicated connection outside the pool. The session is the lock: when the server
//! restarts or ends the backend, the lock is gone, and [`LeaderLock::is_held`] asks
//! the server (`pg_locks` for its own backend) rather than trusting local state.
//!
//! A holder whose host vanishes without closing its connection (power loss, a network
//! partition) keeps the lock until the server notices the dead connection. So the lock
//! session uses short TCP keepalives and a TCP user time-out on both ends: the client's
//! socket options, and the server's `tcp_keepalives_*` / `tcp_user_timeout` set on the
//! session. Either end gives the session up about [`PgLeaderLock::DEAD_PEER_AFTER`]
//! after the other went silent, instead of the operating system's default of two hours.
//!
//! Fencing: taking the lock increments the lock key's term in
//! `orchestratorm8_leader_term` on the lock's session before [`LeaderLock::try_acquire`]
//! answers `true`; the new term is held in [`PgLeaderLock::term`] (cleared when the lock
//! is found lost or given up), which fences the leader-only writes of a
//! [`crate::PgStore::fenced`] store. The increment waits for the previous leader's
//! leader-only transactions in flight; every later one fails
//! ([`DbError::StaleTerm`]). A lock taken whose term cannot be incremented is given up
//! (the session ends).
//!
//! Cancellation: a call dropped while it waits for the server ([`LeaderLock::is_held`]
//! under a caller's time-out) keeps the session, so a leader unsure of its lock still
//! holds it and nobody else can lead until the session really ends. A dropped
//! [`LeaderLock::try_acquire`] or [`LeaderLock::release`] ends the session instead (it
//! may have taken or kept the lock without knowing it; ending the session frees it).

use std::time::Duration;

use async_trait::async_trait;
use config8::DatabaseSettings;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use crate::error::DbError;
use crate::pg::conn::ConnectParams;
use crate::term::LeaderTerm;
use crate::traits::LeaderLock;

/// The server-side settings of the lock session, as `(name, value)`.
fn server_keepalive_settings() -> [(&'static str, String); 4] {
    [
        (
            "tcp_keepalives_idle",
            PgLeaderLock::KEEPALIVE_IDLE.as_secs().to_string(),
        ),
        (
            "tcp_keepalives_interval",
            PgLeaderLock::KEEPALIVE_INTERVAL.as_secs().to_string(),
        ),
        (
            "tcp_keepalives_count",
            PgLeaderLock::KEEPALIVE_COUNT.to_string(),
        ),
        (
            "tcp_user_timeout",
            PgLeaderLock::DEAD_PEER_AFTER.as_millis().to_string(),
        ),
    ]
}

/// The leader lock of one replica. Dropping it ends its session, which releases the
/// lock on the server.
pub struct PgLeaderLock {
    params: ConnectParams,
    key: i64,
    session: Mutex<Option<Session>>,
    term: LeaderTerm,
}

impl std::fmt::Debug for PgLeaderLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLeaderLock")
            .field("database", &self.params.label)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

struct Session {
    client: Client,
    task: JoinHandle<()>,
    /// Whether this session took the lock (then never again: advisory locks count).
    locked: bool,
}

impl Drop for Session {
    fn drop(&mut self) {
        // The client's drop ends the session; the driving task then ends by itself.
        // Aborting also stops a task stuck on a silent network.
        self.task.abort();
    }
}

impl PgLeaderLock {
    /// Idle time before the first TCP keepalive probe on the lock session (both ends).
    pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
    /// Time between keepalive probes on the lock session (both ends).
    pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
    /// Unanswered keepalive probes after which the lock session is dead (both ends).
    pub const KEEPALIVE_COUNT: u32 = 4;
    /// How long sent data may stay unacknowledged before the lock session is dead
    /// (`TCP_USER_TIMEOUT`, both ends): covers a peer that vanished while a query or its
    /// answer was on the way, when keepalives do not run.
    pub const DEAD_PEER_AFTER: Duration = Duration::from_secs(30);

    /// A lock on advisory key `key` (`LeaderElection.lock_key`) of the database of
    /// `settings`. Connects lazily, on the first [`LeaderLock::try_acquire`]. Fails only
    /// on a bad `sslrootcert` file.
    pub fn new(settings: &DatabaseSettings, key: i64) -> Result<PgLeaderLock, DbError> {
        let mut params = ConnectParams::new(settings)?;
        params
            .config
            .keepalives(true)
            .keepalives_idle(PgLeaderLock::KEEPALIVE_IDLE)
            .keepalives_interval(PgLeaderLock::KEEPALIVE_INTERVAL)
            .keepalives_retries(PgLeaderLock::KEEPALIVE_COUNT)
            .tcp_user_timeout(PgLeaderLock::DEAD_PEER_AFTER);
        Ok(PgLeaderLock {
            params,
            key,
            session: Mutex::new(None),
            term: LeaderTerm::new(key),
        })
    }

    /// The term this lock holds (shared: it follows the lock), to fence a store with
    /// [`crate::PgStore::fenced`].
    pub fn term(&self) -> LeaderTerm {
        self.term.clone()
    }

    /// Increments the lock key's term on `session` (which has just taken the lock) and
    /// returns the new term. Waits for the leader-only transactions of older terms in
    /// flight (they hold the term's row `FOR SHARE`).
    async fn next_term(&self, session: &Session) -> Result<i64, DbError> {
        let row = self
            .timed(session.client.query_one(
                "INSERT INTO orchestratorm8_leader_term AS t (lock_key, term) VALUES ($1, 1) \
                 ON CONFLICT (lock_key) DO UPDATE SET term = t.term + 1 RETURNING term",
                &[&self.key],
            ))
            .await?;
        Ok(row.get(0))
    }

    /// The value of the server setting `name` (e.g. `tcp_keepalives_idle`) on the lock's
    /// session, `None` while there is no session. For diagnostics and tests.
    pub async fn session_setting(&self, name: &str) -> Result<Option<String>, DbError> {
        let guard = self.session.lock().await;
        let Some(session) = guard.as_ref() else {
            return Ok(None);
        };
        let row = self
            .timed(
                session
                    .client
                    .query_one("SELECT current_setting($1)", &[&name]),
            )
            .await?;
        Ok(Some(row.get(0)))
    }

    /// Opens the lock's session and sets the server's keepalives on it. A server that
    /// refuses one (a platform without the socket option) is logged, not an error:
    /// the client's keepalives still end the session on this side.
    async fn open(&self) -> Result<Session, DbError> {
        let (client, task) = self.params.dedicated(None).await?;
        let session = Session {
            client,
            task,
            locked: false,
        };
        for (name, value) in server_keepalive_settings() {
            let set = self
                .timed(
                    session
                        .client
                        .execute("SELECT set_config($1, $2, false)", &[&name, &value]),
                )
                .await;
            if let Err(e) = set {
                if session.client.is_closed() {
                    return Err(e);
                }
                tracing::warn!(
                    database = %self.params.label, setting = name, %value, error = %e,
                    "cannot set the leader lock session's server-side keepalive; a vanished \
                     leader may keep the lock until the server's own keepalive gives up"
                );
            }
        }
        Ok(session)
    }

    /// Runs a query with the connect timeout: a silent network counts as a lost
    /// session.
    async fn timed<T>(
        &self,
        fut: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, DbError> {
        match tokio::time::timeout(self.params.settings.connection_timeout, fut).await {
            Ok(r) => r.map_err(|e| self.params.error(e)),
            Err(_) => Err(DbError::Unavailable {
                host: self.params.label.clone(),
                reason: format!(
                    "no answer within {:?}",
                    self.params.settings.connection_timeout
                ),
            }),
        }
    }

    /// Whether `session` holds the lock, asking the server.
    async fn server_says_held(&self, session: &Session) -> Result<bool, DbError> {
        // The lock's `(classid, objid)` as `pg_locks` shows a one-key advisory lock.
        let k = self.key as u64;
        let (classid, objid) = ((k >> 32) as u32, k as u32);
        let row = self
            .timed(session.client.query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
                 AND pid = pg_backend_pid() AND granted AND classid = $1 AND objid = $2 \
                 AND objsubid = 1)",
                &[&classid, &objid],
            ))
            .await?;
        Ok(row.get(0))
    }
}

#[async_trait]
impl LeaderLock for PgLeaderLock {
    async fn try_acquire(&self) -> Result<bool, DbError> {
        let mut guard = self.session.lock().await;
        if guard.as_ref().is_some_and(|s| s.client.is_closed()) {
            self.term.set(None);
            *guard = None;
        }
        if let Some(session) = guard.as_mut()
            && session.locked
        {
            match self.server_says_held(session).await {
                Ok(true) => return Ok(true),
                Ok(false) => {
                    tracing::warn!(database = %self.params.label, key = self.key, "leader lock was lost by its session");
                    self.term.set(None);
                    session.locked = false;
                }
                Err(e) => {
                    self.term.set(None);
                    *guard = None;
                    return Err(e);
                }
            }
        }
        if guard.is_none() {
            *guard = Some(self.open().await?);
        }
        // Out of the mutex while asking: if this call is dropped half-way, the session
        // (which may have taken the lock) ends with it.
        let mut session = guard.take().expect("set above");
        let got = self
            .timed(
                session
                    .client
                    .query_one("SELECT pg_try_advisory_lock($1)", &[&self.key]),
            )
            .await?;
        let locked: bool = got.get(0);
        if locked {
            // Fencing: a new term before leading. On failure the session (and with it
            // the lock) ends here.
            let term = self.next_term(&session).await?;
            self.term.set(Some(term));
            tracing::info!(database = %self.params.label, key = self.key, term, "leader lock taken; new leader term");
        }
        session.locked = locked;
        *guard = Some(session);
        Ok(locked)
    }

    async fn is_held(&self) -> Result<bool, DbError> {
        let mut guard = self.session.lock().await;
        let Some(session) = guard.as_mut() else {
            return Ok(false);
        };
        if !session.locked {
            return Ok(false);
        }
        if session.client.is_closed() {
            self.term.set(None);
            *guard = None;
            return Ok(false);
        }
        match self.server_says_held(session).await {
            Ok(held) => {
                if !held {
                    self.term.set(None);
                }
                session.locked = held;
                Ok(held)
            }
            Err(_) if session.client.is_closed() => {
                self.term.set(None);
                *guard = None;
                Ok(false)
            }
            Err(e) => {
                self.term.set(None);
                // Unsure: drop the session, which releases the lock if it still exists,
                // so that "not known to be held" becomes "not held".
                *guard = None;
                Err(e)
            }
        }
    }

    async fn release(&self) -> Result<(), DbError> {
        let mut guard = self.session.lock().await;
        let Some(mut session) = guard.take() else {
            return Ok(());
        };
        if !session.locked {
            *guard = Some(session);
            return Ok(());
        }
        self.term.set(None);
        // Out of the mutex while asking: if the unlock fails or this call is dropped
        // half-way, the session ends, which releases the lock in any case.
        let unlocked = self
            .timed(
                session
                    .client
                    .query_one("SELECT pg_advisory_unlock($1)", &[&self.key]),
            )
            .await;
        if unlocked.is_ok() {
            session.locked = false;
            *guard = Some(session);
        }
        Ok(())
    }
}
