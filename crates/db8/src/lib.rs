//! `db8`: the CPTM8 data layer.
//!
//! Repository traits ([`DomainRepository`], [`WorkflowRepository`], [`LeaderLock`],
//! [`ChangeFeed`], [`DbHealth`], [`OutboxRepository`]), a PostgreSQL implementation on bb8-postgres, an
//! in-memory implementation with the same behaviour (proven by one conformance suite),
//! and embedded migrations.
//!
//! Features: `postgres` (the PostgreSQL implementation: `PgStore`, `PgLeaderLock`,
//! `PgChangeFeed`, migrations) and `memory` (`MemoryStore`), both by default; each
//! builds on its own, and without either only the traits remain (what controller8
//! takes).
//!
//! Architecture invariant: depends only on `model8` and `config8` among our crates;
//! knows nothing of AMQP or HTTP.

// Helpers shared by the implementations are unused in a build with only one or none.
#![cfg_attr(not(all(feature = "postgres", feature = "memory")), allow(dead_code))]

mod error;
#[cfg(feature = "memory")]
mod memory;
mod outbox;
#[cfg(feature = "postgres")]
mod pg;
mod plan;
mod ring;
mod shared;
mod term;
mod time;
mod traits;
pub mod transitions;

pub use error::DbError;
#[cfg(feature = "memory")]
pub use memory::MemoryStore;
pub use outbox::{OutboxEvent, OutboxRepository, OutboxRow, OutboxStats};
#[cfg(feature = "postgres")]
pub use pg::{Migration, PgChangeFeed, PgLeaderLock, PgStore};
pub use term::LeaderTerm;
pub use traits::*;
