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
    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, AmqpError::Unavailable { .. })
    }
}
