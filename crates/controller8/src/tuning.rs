//! Engine constants that are not configuration keys: the defaults suit production,
//! tests shorten them.

use std::time::Duration;

/// Batch sizes, leases and grace periods of the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuning {
    /// Workflows created per `create_workflows` call (one transaction) (2,000).
    pub create_batch: usize,
    /// Stage attempts claimed, published and recorded per batch (2,000); two batches
    /// of a stage are in flight at once. Bounds the memory a large backlog takes.
    pub publish_batch: usize,
    /// How long a claim on a stage attempt lasts (60 s): work a crashed publisher
    /// claimed is claimed again after this.
    pub claim_lease: Duration,
    /// The leader looks for due work (retries, timeouts, results applied by another
    /// replica, expired claims) at least this often (5 s), besides being woken by the
    /// events it sees itself.
    pub due_poll: Duration,
    /// After the shutdown signal, how long the engine may finish what it started (10 s).
    pub shutdown_grace: Duration,
    /// Prefetch of the result consumer when no `orchestratorm8` service section sets one
    /// (64).
    pub result_prefetch: u16,
    /// A result delivered more than this many times is dead-lettered (20); guards
    /// against a message that crashes its handler.
    pub max_redeliveries: u32,
    /// How long the result handler waits for an unavailable database, retrying, before
    /// returning the delivery to the queue (60 s).
    pub db_outage_patience: Duration,
    /// How far apart an empty chain report and an `app.error.*` notification of the
    /// same scanner may arrive and still make one hard failure (5 s,
    /// `model8::chain::ERROR_WINDOW`); an empty report waits this long for one.
    pub chain_error_window: Duration,
    /// Bootstrap mode with `Scheduler.observe`: how often the leader looks for ring
    /// stages silent past their timeout (500 ms).
    pub ring_check: Duration,
    /// How long the outbox relay's claim on a row lasts (30 s): a row a killed relay
    /// claimed (maybe published, not deleted) is published again after this.
    pub outbox_lease: Duration,
    /// The outbox relay looks for due rows at least this often (1 s), besides being
    /// woken by the transitions of its own replica.
    pub outbox_poll: Duration,
    /// Outbox rows claimed and published per relay round (200).
    pub outbox_batch: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            create_batch: 2_000,
            publish_batch: 2_000,
            claim_lease: Duration::from_secs(60),
            due_poll: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(10),
            result_prefetch: 64,
            max_redeliveries: 20,
            db_outage_patience: Duration::from_secs(60),
            chain_error_window: model8::chain::ERROR_WINDOW,
            ring_check: Duration::from_millis(500),
            outbox_lease: Duration::from_secs(30),
            outbox_poll: Duration::from_secs(1),
            outbox_batch: 200,
        }
    }
}
