//! Header names amqp8 sets on the messages it dead-letters.

/// Why the message was dead-lettered (the handler's reason, or the redelivery limit).
pub const DEATH_REASON: &str = "x-death-reason";
/// The exchange the message was first published to.
pub const ORIGINAL_EXCHANGE: &str = "x-original-exchange";
/// The routing key the message was first published with.
pub const ORIGINAL_ROUTING_KEY: &str = "x-original-routing-key";
/// The queue it was consumed from.
pub const ORIGINAL_QUEUE: &str = "x-original-queue";
