//! `controller8`: the orchestrator itself.
//!
//! The bootstrap scheduler (the Go original's behaviour), the managed workflow engine,
//! leadership, and the HTTP surface (`/health`, `/ready`, `/metrics`, workflow API).
//!
//! Architecture invariant: depends on the *traits* of `db8` and `amqp8` only
//! (`Arc<dyn WorkflowRepository>`, `Arc<dyn Broker>`, ...), never on their PostgreSQL or
//! RabbitMQ implementations; its unit tests run on the in-memory implementations with a
//! controllable [`Clock`]. The compiler enforces it: controller8 takes db8 and amqp8
//! without any implementation feature (the `memory` ones only as dev-dependencies), so
//! `cargo check -p controller8 --lib` fails on a concrete type.

mod bootstrap;
mod clock;
mod controller;
mod engine;
mod error;
pub mod http;
mod leader;
mod metrics;
mod outbox;
pub mod replicas;
mod ring;
mod ring_metrics;
mod role;
mod scan_now;
mod scheduler;
#[cfg(test)]
mod testkit;
mod topology;
mod tuning;
mod waking;

pub use clock::{Clock, ManualClock, SystemClock};
pub use controller::{Controller, Deps};
pub use error::ControllerError;
pub use metrics::{Metrics, ScrapeSnapshot};
pub use role::{Role, RoleWatch};
pub use scan_now::{ScanNow, ScanNowError};
pub use topology::{
    CHAIN_NOTIFY_QUEUE, CHAIN_NOTIFY_TTL_MS, DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE,
    DEAD_LETTER_ROUTING_KEY, KICKOFF_ROUTING_KEY, NOTIFICATION_EXCHANGE, NOTIFY_COMPLETED_KEY,
    NOTIFY_FAILED_KEY, RESULT_BINDING, RESULT_EXCHANGE, RING_EXCHANGE, RING_KICKOFF_BINDING,
    RING_QUEUE, has_chain_stage, kickoff_exchange, topology,
};
pub use tuning::Tuning;
