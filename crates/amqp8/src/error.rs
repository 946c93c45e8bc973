//! The error type of amqp8.

/// What went wrong talking to the broker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmqpError {
    /// The broker could not be reached, or did not come back before the deadline.
    /// Retrying later is right.
    #[error("RabbitMQ {host} unavailable: {reason}")]
    Unavailable {
        /// `host:port/vhost`, never with credentials.
        host: String,
        /// Why.
        reason: String,
    },
    /// The broker refused an operation (e.g. a queue redeclared with other arguments,
    /// `PRECONDITION_FAILED`), or a passively checked object does not exist.
    #[error("RabbitMQ refused {operation}: {reason}")]
    Refused {
        /// The operation, e.g. `queue.declare qasmm8`.
        operation: String,
        /// The broker's reply text.
        reason: String,
    },
    /// The broker refused the login (`403 ACCESS_REFUSED` while connecting): a wrong
    /// `RabbitMQ.username` or `RabbitMQ.password`, or a user that may not log in.
    /// Not transient: fix the configuration or the broker's users. The password is
    /// never part of it.
    #[error(
        "RabbitMQ {host} refused the login of user {user:?}: {reason} (check RabbitMQ.username and RabbitMQ.password)"
    )]
    AccessRefused {
        /// `amqp://host:port/vhost`, never with credentials.
        host: String,
        /// The user name that was refused.
        user: String,
        /// The broker's reply code and text, e.g. `403 ACCESS_REFUSED - Login was
        /// refused using authentication mechanism PLAIN. ...`.
        reason: String,
    },
    /// The broker refused the virtual host (`530 NOT_ALLOWED` while connecting): it
    /// does not exist, the user has no permission on it, or its connection limit is
    /// reached. Not transient: fix `RabbitMQ.vhost` or the broker's permissions.
    #[error(
        "RabbitMQ {host} refused virtual host {vhost:?} to user {user:?}: {reason} (check RabbitMQ.vhost and the user's permissions)"
    )]
    VhostNotAllowed {
        /// `amqp://host:port/vhost`, never with credentials.
        host: String,
        /// The virtual host, as configured.
        vhost: String,
        /// The user name.
        user: String,
        /// The broker's reply code and text, e.g. `530 NOT_ALLOWED - vhost x not found`.
        reason: String,
    },
    /// The broker blocks publishers (`connection.blocked`: a memory or disk alarm)
    /// and the message could not be published within the operation deadline
    /// (`RabbitMQ.pool.connection_timeout`). Transient: publishing resumes when the
    /// alarm clears. A message already sent when the broker blocked the connection
    /// may still be delivered after the alarm (at-least-once).
    #[error(
        "RabbitMQ {host} is blocking publishers ({reason}): not published within {waited:?} (RabbitMQ.pool.connection_timeout)"
    )]
    Blocked {
        /// `amqp://host:port/vhost`, never with credentials.
        host: String,
        /// The reason the broker gave, e.g. `low on memory`.
        reason: String,
        /// How long the message waited.
        waited: std::time::Duration,
    },
    /// A queue that a passive check or consumer needs does not exist.
    #[error("queue {0:?} does not exist")]
    NoSuchQueue(String),
    /// The message could not be encoded.
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// The RabbitMQ settings cannot work (e.g. an unreadable TLS root certificate, a
    /// virtual host name longer than AMQP allows). Fix the configuration.
    #[error("invalid RabbitMQ setting {key}: {reason}")]
    Settings {
        /// The setting, e.g. `RabbitMQ.tls_ca`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The operation was not completed because the client is shutting down.
    #[error("amqp8 is shutting down")]
    Closed,
}

impl AmqpError {
    /// Whether retrying the same operation later may succeed: an unreachable broker
    /// ([`AmqpError::Unavailable`]) or one blocking publishers
    /// ([`AmqpError::Blocked`]). A refused login or virtual host is not: someone has
    /// to change the configuration or the broker first.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            AmqpError::Unavailable { .. } | AmqpError::Blocked { .. }
        )
    }

    /// Whether the broker refused the connection itself: a refused login
    /// ([`AmqpError::AccessRefused`]) or virtual host ([`AmqpError::VhostNotAllowed`]).
    pub fn is_connection_refused(&self) -> bool {
        matches!(
            self,
            AmqpError::AccessRefused { .. } | AmqpError::VhostNotAllowed { .. }
        )
    }
}
