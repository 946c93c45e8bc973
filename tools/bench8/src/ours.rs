//! Our side of the benchmarks: the concrete implementations under test, built from the
//! same settings a user would write. The one place that names them.

use std::sync::Arc;

use crate::report::Failure;

/// amqp8's RabbitMQ broker for `settings`, connected (`amqp8::RabbitBroker::connect`,
/// as the service does).
pub async fn broker(
    settings: &config8::RabbitMqSettings,
) -> Result<Arc<dyn amqp8::Broker>, Failure> {
    let broker = amqp8::RabbitBroker::connect(settings).await?;
    Ok(Arc::new(broker))
}
