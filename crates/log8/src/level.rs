//! `LOG_LEVEL` to a tracing filter, and the handle that changes it live.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use config8::LogLevel;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::{Registry, reload};

use crate::error::LogError;

/// Libraries whose own logs stay at INFO or above even at `LOG_LEVEL` 0: their debug
/// output is protocol-level noise, not the service's.
pub const QUIET_TARGETS: &[&str] = &[
    "amqprs",
    "tokio_postgres",
    "postgres_protocol",
    "bb8",
    "hyper",
    "hyper_util",
    "h2",
    "warp",
    "reqwest",
    "rustls",
    "mio",
    "tokio_util",
    "notify",
    "want",
];

/// The tracing level of a `LOG_LEVEL`.
pub fn level_filter(level: LogLevel) -> LevelFilter {
    match level {
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Error => LevelFilter::ERROR,
    }
}

/// Everything at `level`, except [`QUIET_TARGETS`] at INFO at most.
pub(crate) fn targets(level: LogLevel) -> Targets {
    let lf = level_filter(level);
    let quiet = std::cmp::min(lf, LevelFilter::INFO);
    Targets::new()
        .with_default(lf)
        .with_targets(QUIET_TARGETS.iter().map(|t| (*t, quiet)))
}

/// Changes the level of a running subscriber (`LOG_LEVEL` edited while running).
/// Cheap to clone; every clone controls the same subscriber.
#[derive(Clone)]
pub struct LevelHandle {
    handle: reload::Handle<Targets, Registry>,
    current: Arc<AtomicU8>,
}

impl std::fmt::Debug for LevelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LevelHandle")
            .field("level", &self.level())
            .finish()
    }
}

impl LevelHandle {
    pub(crate) fn new(handle: reload::Handle<Targets, Registry>, level: LogLevel) -> Self {
        LevelHandle {
            handle,
            current: Arc::new(AtomicU8::new(level.as_number())),
        }
    }

    /// Applies `level` from now on.
    pub fn set_level(&self, level: LogLevel) -> Result<(), LogError> {
        self.handle
            .reload(targets(level))
            .map_err(|e| LogError::Reload(e.to_string()))?;
        self.current.store(level.as_number(), Ordering::Relaxed);
        Ok(())
    }

    /// The level in force.
    pub fn level(&self) -> LogLevel {
        LogLevel::from_number(i64::from(self.current.load(Ordering::Relaxed))).unwrap_or_default()
    }
}
