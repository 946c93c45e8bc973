//! Per-consumer health counters, shared between a consumer's tasks and
//! [`Broker::health`](crate::Broker::health) readers.

use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use chrono::{DateTime, Utc};

use crate::broker::ConsumerHealth;

/// The live counters of one consumer.
#[derive(Debug, Default)]
pub(crate) struct ConsumerStats {
    id: u64,
    name: String,
    queue: String,
    autoack: bool,
    created_at: DateTime<Utc>,
    active: AtomicBool,
    messages: AtomicU64,
    errors: AtomicU64,
    panics: AtomicU64,
    dead_lettered: AtomicU64,
    restarts: AtomicU64,
    /// Unix time of the last delivery in microseconds; 0 for never.
    last_seen: AtomicI64,
}

impl ConsumerStats {
    pub(crate) fn new(id: u64, name: &str, queue: &str, autoack: bool) -> Self {
        ConsumerStats {
            id,
            name: name.to_owned(),
            queue: queue.to_owned(),
            autoack,
            created_at: Utc::now(),
            ..ConsumerStats::default()
        }
    }

    /// A delivery arrived.
    pub(crate) fn seen(&self) {
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.last_seen
            .store(Utc::now().timestamp_micros(), Ordering::Relaxed);
    }

    /// The handler failed (returned an error, or broke its contract).
    pub(crate) fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The handler panicked (counted as an error too).
    pub(crate) fn panicked(&self) {
        self.panics.fetch_add(1, Ordering::Relaxed);
        self.error();
    }

    /// A delivery went to the dead-letter queue.
    pub(crate) fn dead_lettered(&self) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
    }

    /// Subscribed (`true`) or lost its subscription (`false`). A subscription after
    /// the first counts as a restart.
    pub(crate) fn set_active(&self, active: bool, restart: bool) {
        self.active.store(active, Ordering::Relaxed);
        if active && restart {
            self.restarts.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }

    pub(crate) fn dead_letters(&self) -> u64 {
        self.dead_lettered.load(Ordering::Relaxed)
    }

    pub(crate) fn snapshot(&self) -> ConsumerHealth {
        ConsumerHealth {
            name: self.name.clone(),
            queue: self.queue.clone(),
            autoack: self.autoack,
            active: self.active.load(Ordering::Relaxed),
            last_seen: match self.last_seen.load(Ordering::Relaxed) {
                0 => None,
                us => DateTime::from_timestamp_micros(us),
            },
            messages: self.messages.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            restarts: self.restarts.load(Ordering::Relaxed),
            created_at: self.created_at,
        }
    }
}

/// Every running consumer of one broker handle.
#[derive(Debug, Default)]
pub(crate) struct ConsumerRegistry {
    next_id: AtomicU64,
    consumers: Mutex<Vec<Arc<ConsumerStats>>>,
}

impl ConsumerRegistry {
    /// Registers a new consumer.
    pub(crate) fn add(&self, name: &str, queue: &str, autoack: bool) -> Arc<ConsumerStats> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let stats = Arc::new(ConsumerStats::new(id, name, queue, autoack));
        self.consumers.lock().push(stats.clone());
        stats
    }

    /// Forgets a stopped consumer.
    pub(crate) fn remove(&self, stats: &ConsumerStats) {
        self.consumers.lock().retain(|c| c.id != stats.id);
    }

    pub(crate) fn snapshot(&self) -> Vec<ConsumerHealth> {
        self.consumers.lock().iter().map(|c| c.snapshot()).collect()
    }

    pub(crate) fn all(&self) -> Vec<Arc<ConsumerStats>> {
        self.consumers.lock().clone()
    }
}
