//! Our side of the benchmarks: the concrete implementations under test, built from the
//! same settings a user would write. The one place that names them.

use std::sync::Arc;

use crate::report::Failure;

/// amqp8's RabbitMQ broker for `settings` (connected, ready to publish).
pub async fn broker(
    _settings: &config8::RabbitMqSettings,
) -> Result<Arc<dyn amqp8::Broker>, Failure> {
    Err(Failure::NotRun(
        "amqp8 has no RabbitMQ implementation of the Broker trait yet (only the trait in \
         crates/amqp8/src/broker.rs)"
            .into(),
    ))
}
