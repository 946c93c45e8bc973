//! The PostgreSQL implementation: a bb8-postgres pool for the repositories, dedicated
//! connections for the change feed and the leader lock, embedded migrations.

mod conn;
mod domains;
mod feed;
mod lock;
mod migrate;
mod outbox;
mod replicas;
mod ring;
mod workflows;

use parking_lot::Mutex;
use std::sync::Arc;

use async_trait::async_trait;
use bb8::{ErrorSink, Pool, PooledConnection, RunError};
use bb8_postgres::PostgresConnectionManager;
use config8::DatabaseSettings;
use postgres_native_tls::MakeTlsConnector;

use crate::error::DbError;
use crate::term::LeaderTerm;
use crate::traits::{DbHealth, PoolStats};
use conn::ConnectParams;

pub use feed::PgChangeFeed;
pub use lock::PgLeaderLock;
pub use migrate::Migration;

type Manager = PostgresConnectionManager<MakeTlsConnector>;

/// [`crate::DomainRepository`], [`crate::WorkflowRepository`] and [`DbHealth`] on a
/// PostgreSQL connection pool. Cheap to clone (clones share the pool).
#[derive(Clone)]
pub struct PgStore {
    pool: Pool<Manager>,
    params: Arc<ConnectParams>,
    failures: Arc<Failures>,
    /// The leader term that fences the leader-only writes (`None`: not fenced).
    fence: Option<LeaderTerm>,
}

/// The pool's connection failures, which it reports only to its error sink: waiting
/// callers are told at once instead of waiting out the connection timeout.
#[derive(Debug, Default)]
struct Failures {
    /// The last connection failure: its description, and whether it is refused (see
    /// [`conn::is_refused`]).
    last: Mutex<Option<(String, bool)>>,
    happened: tokio::sync::Notify,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("database", &self.params.label)
            .finish_non_exhaustive()
    }
}

/// Logs the pool's connection failures and passes them on to waiting callers.
#[derive(Debug, Clone)]
struct LogSink {
    label: String,
    failures: Arc<Failures>,
}

impl ErrorSink<tokio_postgres::Error> for LogSink {
    fn sink(&self, e: tokio_postgres::Error) {
        if e.is_closed() {
            // A pooled connection found dead when checked out (e.g. after a server
            // restart): the pool drops it and opens another; nothing to report.
            tracing::debug!(database = %self.label, "dropped a dead pooled connection");
            return;
        }
        let reason = conn::describe(&e);
        tracing::warn!(database = %self.label, error = %reason, "database connection failed");
        let refused = conn::is_refused(&e);
        *self.failures.last.lock() = Some((reason, refused));
        self.failures.happened.notify_waiters();
    }

    fn boxed_clone(&self) -> Box<dyn ErrorSink<tokio_postgres::Error>> {
        Box::new(self.clone())
    }
}

impl PgStore {
    /// Connects to the database of `settings`: the pool holds at most
    /// `max_connections` (at least 1), keeps `min_connections` idle, and gives up on a
    /// connection after `connection_timeout`; every session's `search_path` starts with
    /// `schema`. The database must answer within `retry_attempts` attempts
    /// `retry_delay` apart (each attempt is logged, without the password); a
    /// refusal (credentials, missing database, certificate) is not retried but returned
    /// at once as [`DbError::Refused`]. The error names `host:port/database`.
    pub async fn connect(settings: &DatabaseSettings) -> Result<PgStore, DbError> {
        let store = PgStore::new(settings)?;
        let attempts = settings.retry_attempts.max(1);
        let mut last = String::new();
        for attempt in 1..=attempts {
            let got = store.conn().await.map(drop);
            match got {
                Ok(()) => {
                    tracing::info!(database = %store.params.label, user = %settings.username, "connected to the database");
                    return Ok(store);
                }
                Err(DbError::Refused { reason, .. }) => {
                    tracing::error!(database = %store.params.label, user = %settings.username, error = %reason, "the database refused the connection; not retrying");
                    return Err(DbError::Refused {
                        host: store.params.label.clone(),
                        reason: format!("user {:?}: {reason}", settings.username),
                    });
                }
                Err(e) => {
                    last = match e {
                        DbError::Unavailable { reason, .. } => reason,
                        other => other.to_string(),
                    };
                    if attempt < attempts {
                        tracing::warn!(
                            database = %store.params.label,
                            user = %settings.username,
                            attempt,
                            attempts,
                            error = %last,
                            "database not reachable; retrying in {:?}",
                            settings.retry_delay
                        );
                        tokio::time::sleep(settings.retry_delay).await;
                    }
                }
            }
        }
        tracing::error!(database = %store.params.label, user = %settings.username, error = %last, "giving up on the database");
        Err(DbError::Unavailable {
            host: store.params.label.clone(),
            reason: format!("user {:?}: {last}", settings.username),
        })
    }

    /// The pool, without connecting yet.
    fn new(settings: &DatabaseSettings) -> Result<PgStore, DbError> {
        let params = Arc::new(ConnectParams::new(settings)?);
        let failures = Arc::new(Failures::default());
        let max = settings.max_connections.max(1);
        let pool = Pool::builder()
            .max_size(max)
            .min_idle(Some(settings.min_connections.min(max)))
            .connection_timeout(
                settings
                    .connection_timeout
                    .max(std::time::Duration::from_millis(1)),
            )
            .retry_connection(false)
            .error_sink(Box::new(LogSink {
                label: params.label.clone(),
                failures: Arc::clone(&failures),
            }))
            .build_unchecked(Manager::new(params.config.clone(), params.tls.clone()));
        Ok(PgStore {
            pool,
            params,
            failures,
            fence: None,
        })
    }

    /// Applies the embedded migrations that are missing (idempotent; safe when several
    /// replicas run it at once) and returns those it applied.
    pub async fn migrate(&self) -> Result<Vec<Migration>, DbError> {
        migrate::run(&self.params).await
    }

    /// The same store (sharing the pool) whose leader-only writes are fenced by
    /// `term` (usually [`PgLeaderLock::term`]): each runs in a transaction that first
    /// reads the lock key's stored term `FOR SHARE` and fails with
    /// [`DbError::StaleTerm`], changing nothing, unless it is the term held. The
    /// leader-only writes are `create_workflows`, `create_claimed`, `claim_due`,
    /// `claim_due_fair`, `mark_running`, `release`, `time_out`, `prune_finished`,
    /// `ring_stalls` and `ring_give_up` (docs/ENGINE.md, "Fencing"); every other call
    /// is unchanged. A store not fenced (leader election off) checks nothing.
    pub fn fenced(&self, term: LeaderTerm) -> PgStore {
        PgStore {
            fence: Some(term),
            ..self.clone()
        }
    }

    /// Begins a transaction for a leader-only write on `conn`. Fenced (see
    /// [`PgStore::fenced`]), it first locks the lock key's term row `FOR SHARE` (a new
    /// leader's increment waits for the transaction) and fails unless it holds the term
    /// held.
    async fn leader_tx<'c>(
        &self,
        conn: &'c mut tokio_postgres::Client,
    ) -> Result<tokio_postgres::Transaction<'c>, DbError> {
        let tx = conn.transaction().await.map_err(|e| self.err(e))?;
        if let Some(term) = &self.fence {
            let row = tx
                .query_opt(
                    "SELECT term FROM orchestratorm8_leader_term WHERE lock_key = $1 FOR SHARE",
                    &[&term.key()],
                )
                .await
                .map_err(|e| self.err(e))?;
            term.check(row.map_or(0, |r| r.get::<_, i64>(0)))?;
        }
        Ok(tx)
    }

    /// `host:port/database`, for messages.
    pub fn label(&self) -> &str {
        &self.params.label
    }

    /// A pooled connection; fails as soon as a new connection cannot be opened.
    async fn conn(&self) -> Result<PooledConnection<'_, Manager>, DbError> {
        let failed = self.failures.happened.notified();
        tokio::select! {
            got = self.pool.get() => got.map_err(|e| self.pool_error(e)),
            () = failed => Err(self.connect_failure()),
        }
    }

    /// A pooled connection that may outlive `self` (for streams).
    async fn owned_conn(&self) -> Result<PooledConnection<'static, Manager>, DbError> {
        let failed = self.failures.happened.notified();
        tokio::select! {
            got = self.pool.get_owned() => got.map_err(|e| self.pool_error(e)),
            () = failed => Err(self.connect_failure()),
        }
    }

    fn last_failure(&self) -> Option<(String, bool)> {
        self.failures.last.lock().clone()
    }

    fn connect_failure(&self) -> DbError {
        let host = self.params.label.clone();
        match self.last_failure() {
            Some((reason, true)) => DbError::Refused { host, reason },
            Some((reason, false)) => DbError::Unavailable { host, reason },
            None => DbError::Unavailable {
                host,
                reason: "cannot connect".to_owned(),
            },
        }
    }

    fn pool_error(&self, e: RunError<tokio_postgres::Error>) -> DbError {
        match e {
            RunError::User(e) => self.params.error(e),
            RunError::TimedOut => {
                let last = self.last_failure();
                DbError::Unavailable {
                    host: self.params.label.clone(),
                    reason: format!(
                        "no connection within {:?} (pool of {}){}",
                        self.params.settings.connection_timeout,
                        self.pool.state().connections,
                        last.map(|(l, _)| format!("; last connection error: {l}"))
                            .unwrap_or_default()
                    ),
                }
            }
        }
    }

    /// Translates a driver error.
    fn err(&self, e: tokio_postgres::Error) -> DbError {
        self.params.error(e)
    }
}

#[async_trait]
impl DbHealth for PgStore {
    async fn ping(&self) -> Result<(), DbError> {
        let conn = self.conn().await?;
        conn.simple_query("SELECT 1")
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn pool_stats(&self) -> PoolStats {
        let s = self.pool.state();
        PoolStats {
            connections: s.connections,
            idle: s.idle_connections,
        }
    }
}
