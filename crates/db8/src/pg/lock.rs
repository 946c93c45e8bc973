//! [`LeaderLock`] on a session-level advisory lock (`pg_try_advisory_lock(key)`) held by
//! a dedicated connection outside the pool. The session is the lock: when the server
//! restarts or ends the backend, the lock is gone, and [`LeaderLock::is_held`] asks
//! the server (`pg_locks` for its own backend) rather than trusting local state.

use async_trait::async_trait;
use config8::DatabaseSettings;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use crate::error::DbError;
use crate::pg::conn::ConnectParams;
use crate::traits::LeaderLock;

/// The leader lock of one replica. Dropping it ends its session, which releases the
/// lock on the server.
pub struct PgLeaderLock {
    params: ConnectParams,
    key: i64,
    session: Mutex<Option<Session>>,
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
    /// A lock on advisory key `key` (`LeaderElection.lock_key`) of the database of
    /// `settings`. Connects lazily, on the first [`LeaderLock::try_acquire`]. Fails only
    /// on a bad `sslrootcert` file.
    pub fn new(settings: &DatabaseSettings, key: i64) -> Result<PgLeaderLock, DbError> {
        Ok(PgLeaderLock {
            params: ConnectParams::new(settings)?,
            key,
            session: Mutex::new(None),
        })
    }

    /// The lock's `(classid, objid)` as `pg_locks` shows a one-key advisory lock.
    fn lock_ids(&self) -> (u32, u32) {
        let k = self.key as u64;
        ((k >> 32) as u32, k as u32)
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
        let (classid, objid) = self.lock_ids();
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
            *guard = None;
        }
        if let Some(session) = guard.as_mut()
            && session.locked
        {
            match self.server_says_held(session).await {
                Ok(true) => return Ok(true),
                Ok(false) => {
                    tracing::warn!(database = %self.params.label, key = self.key, "leader lock was lost by its session");
                    session.locked = false;
                }
                Err(e) => {
                    *guard = None;
                    return Err(e);
                }
            }
        }
        if guard.is_none() {
            let (client, task) = self.params.dedicated(None).await?;
            *guard = Some(Session {
                client,
                task,
                locked: false,
            });
        }
        let session = guard.as_mut().expect("set above");
        let got = self
            .timed(
                session
                    .client
                    .query_one("SELECT pg_try_advisory_lock($1)", &[&self.key]),
            )
            .await;
        match got {
            Ok(row) => {
                session.locked = row.get(0);
                Ok(session.locked)
            }
            Err(e) => {
                *guard = None;
                Err(e)
            }
        }
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
            *guard = None;
            return Ok(false);
        }
        match self.server_says_held(session).await {
            Ok(held) => {
                session.locked = held;
                Ok(held)
            }
            Err(_) if session.client.is_closed() => {
                *guard = None;
                Ok(false)
            }
            Err(e) => {
                // Unsure: drop the session, which releases the lock if it still exists,
                // so that "not known to be held" becomes "not held".
                *guard = None;
                Err(e)
            }
        }
    }

    async fn release(&self) -> Result<(), DbError> {
        let mut guard = self.session.lock().await;
        let Some(session) = guard.as_mut() else {
            return Ok(());
        };
        if !session.locked {
            return Ok(());
        }
        session.locked = false;
        let unlocked = self
            .timed(
                session
                    .client
                    .query_one("SELECT pg_advisory_unlock($1)", &[&self.key]),
            )
            .await;
        if unlocked.is_err() {
            // Ending the session releases the lock in any case.
            *guard = None;
        }
        Ok(())
    }
}
