//! `db8`: the CPTM8 data layer.
//!
//! Repository traits ([`DomainRepository`], [`WorkflowRepository`], [`LeaderLock`],
//! [`ChangeFeed`], [`DbHealth`]), a PostgreSQL implementation on bb8-postgres, an
//! in-memory implementation with the same behaviour (proven by one conformance suite),
//! and embedded migrations.
//!
//! Architecture invariant: depends only on `model8` and `config8` among our crates;
//! knows nothing of AMQP or HTTP.

mod error;
mod memory;
mod pg;
mod plan;
mod ring;
mod term;
mod time;
mod traits;

pub use error::DbError;
pub use memory::MemoryStore;
pub use pg::{Migration, PgChangeFeed, PgLeaderLock, PgStore};
pub use term::LeaderTerm;
pub use traits::*;
