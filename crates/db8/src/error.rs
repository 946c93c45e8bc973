//! The error type of every db8 operation.

/// What went wrong talking to the data store.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database cannot be reached (connection refused, timed out, pool exhausted).
    /// Retrying later is right.
    #[error("database {host} unavailable: {reason}")]
    Unavailable {
        /// `host:port/database`, never with credentials.
        host: String,
        /// Why.
        reason: String,
    },
    /// The server refused the connection for a reason that retrying does not fix: the
    /// credentials (SQLSTATE class 28), a missing database (`3D000`), no `CONNECT`
    /// privilege (`42501`), or a server certificate that fails verification
    /// (`sslmode` verify-ca / verify-full). A configuration error.
    #[error("database {host} refused the connection: {reason}")]
    Refused {
        /// `host:port/database`, never with credentials.
        host: String,
        /// Why, with the server's SQLSTATE where it gave one.
        reason: String,
    },
    /// A unique constraint would be violated (e.g. a duplicate domain name).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The row does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The requested transition is not allowed from the row's current state.
    #[error("invalid state: {0}")]
    InvalidState(String),
    /// The input was refused before reaching the database.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// A migration failed.
    #[error("migration {version} failed: {reason}")]
    Migration {
        /// Migration version.
        version: i64,
        /// Why.
        reason: String,
    },
    /// A write only the leader may make came from a replica whose leader term is not
    /// the current one (another replica took the leader lock since, or this one holds
    /// none): nothing was changed. Not transient: this replica must stop acting as the
    /// leader (its next lock check finds the lock gone).
    #[error(
        "not the leader: this replica holds leader term {held:?} but the current term of lock key {key} is {current}; nothing was changed"
    )]
    StaleTerm {
        /// The leader lock key (`LeaderElection.lock_key`).
        key: i64,
        /// The term this replica holds (`None`: none).
        held: Option<i64>,
        /// The term stored in the database (0: nobody ever took the lock).
        current: i64,
    },
    /// Any other database error (the server's message, without credentials).
    #[error("database error: {0}")]
    Query(String),
}

impl DbError {
    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, DbError::Unavailable { .. })
    }
}
