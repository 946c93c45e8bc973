//! The error type of the controller.

use amqp8::AmqpError;

/// Why the controller could not be built or stopped running.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The settings are unusable (e.g. an invalid pipeline). Fix the configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// RabbitMQ refused to declare an exchange, queue or binding (e.g. a queue that
    /// exists with other arguments). Not retried: it needs an operator.
    #[error("cannot declare the RabbitMQ topology: {0}")]
    Topology(#[source] AmqpError),
    /// The stage-result consumer could not be started.
    #[error("cannot consume stage results from queue {queue}: {source}")]
    Consume {
        /// The queue.
        queue: String,
        /// Why.
        #[source]
        source: AmqpError,
    },
}
