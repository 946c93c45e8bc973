//! `controller8`: the orchestrator itself.
//!
//! The bootstrap scheduler (the Go original's behaviour), the managed workflow engine,
//! leadership, and the HTTP surface (`/health`, `/ready`, `/metrics`, workflow API).
//!
//! Architecture invariant: depends on the *traits* of `db8` and `amqp8` only
//! (`Arc<dyn WorkflowRepository>`, `Arc<dyn Broker>`, ...), never on their PostgreSQL or
//! RabbitMQ implementations; its unit tests run on the in-memory implementations with a
//! controllable [`Clock`].

mod clock;
pub mod http;
mod metrics;
mod role;
mod scan_now;

pub use clock::{Clock, ManualClock, SystemClock};
pub use metrics::{Metrics, ScrapeSnapshot};
pub use role::{Role, RoleWatch};
pub use scan_now::{ScanNow, ScanNowError};
