//! `amqp8`: RabbitMQ access for CPTM8 services.
//!
//! A connection pool over amqprs with a shared topology registry (re-declared after
//! every reconnect), confirmed publishing, supervised consumers with manual ack and
//! per-consumer health, and the [`Broker`] trait the layers above program against.
//! [`memory::MemoryBroker`] implements the same trait in memory for unit tests.
//!
//! Features: `rabbitmq` (the amqprs implementation: [`RabbitBroker`], [`connect`]) and
//! `memory` ([`memory::MemoryBroker`]), both by default; each builds on its own, and
//! without either only the traits remain (what controller8 takes).
//!
//! Architecture invariant: depends only on `model8` and `config8` among our crates;
//! knows nothing of the database or HTTP. No global state: every handle is passed.

// Helpers shared by the implementations are unused in a build with only one or none.
#![cfg_attr(not(all(feature = "rabbitmq", feature = "memory")), allow(dead_code))]

mod broker;
mod dispatch;
mod error;
mod handler_fn;
pub mod headers;
mod health;
#[cfg(feature = "memory")]
pub mod memory;
#[cfg(feature = "rabbitmq")]
mod rabbit;
mod redelivery;
mod service;

pub use broker::*;
pub use error::AmqpError;
pub use handler_fn::{Message, handler_fn};
#[cfg(feature = "rabbitmq")]
pub use rabbit::{RabbitBroker, connect};
pub use service::DEFAULT_MAX_REDELIVERIES;
