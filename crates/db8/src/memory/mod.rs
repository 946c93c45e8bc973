//! The in-memory twin of the PostgreSQL implementation, for unit tests of the layers
//! above. It behaves like [`crate::PgStore`] (the conformance suite runs against both),
//! and adds failure injection the real database cannot offer on demand.

pub(crate) mod domains;
mod feed;
mod lock;
mod outbox;
mod replicas;
pub(crate) mod workflows;

use parking_lot::{Mutex, MutexGuard};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use model8::Domain8;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::error::DbError;
use crate::term::LeaderTerm;
use crate::traits::{DbHealth, DomainChange, PoolStats};

/// Every repository trait in memory: [`crate::DomainRepository`],
/// [`crate::WorkflowRepository`], [`crate::LeaderLock`], [`crate::ChangeFeed`],
/// [`crate::OutboxRepository`] and [`DbHealth`].
///
/// Clones share the data and the leader identity (one process). [`MemoryStore::handle`]
/// gives a handle on the same data with its own leader identity (another replica), so
/// two handles contend for the one leader lock of the data set.
#[derive(Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
    identity: Uuid,
    /// The leader term this identity holds (shared by clones).
    term: LeaderTerm,
    /// The term that fences the leader-only writes (`None`: not fenced).
    fence: Option<LeaderTerm>,
}

struct Shared {
    state: Mutex<State>,
    changes: broadcast::Sender<DomainChange>,
    available: AtomicBool,
    leader: Mutex<Option<Uuid>>,
}

#[derive(Default)]
struct State {
    domains: BTreeMap<Uuid, Domain8>,
    workflows: workflows::Workflows,
    replicas: std::collections::HashMap<Uuid, model8::ReplicaView>,
    outbox: outbox::Outbox,
    /// The current leader term (`orchestratorm8_leader_term`; 0: never taken).
    leader_term: i64,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("identity", &self.identity)
            .field("available", &self.shared.available.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// How many domain changes a slow subscriber may fall behind before it is told to
    /// [`DomainChange::Resync`].
    const FEED_CAPACITY: usize = 1024;

    /// An empty store.
    pub fn new() -> Self {
        let (changes, _) = broadcast::channel(Self::FEED_CAPACITY);
        MemoryStore {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                changes,
                available: AtomicBool::new(true),
                leader: Mutex::new(None),
            }),
            identity: Uuid::new_v4(),
            term: LeaderTerm::new(Self::LOCK_KEY),
            fence: None,
        }
    }

    /// The lock key of the in-memory leader lock (there is one per data set).
    pub const LOCK_KEY: i64 = 0;

    /// The leader term this handle holds (set when its leader lock is taken, cleared
    /// when found lost or given up), as `PgLeaderLock::term`.
    pub fn term(&self) -> LeaderTerm {
        self.term.clone()
    }

    /// The same handle whose leader-only writes are fenced by `term`, as
    /// [`crate::PgStore::fenced`]: they fail with [`DbError::StaleTerm`], changing
    /// nothing, unless `term` holds the current term.
    pub fn fenced(&self, term: LeaderTerm) -> MemoryStore {
        MemoryStore {
            fence: Some(term),
            ..self.clone()
        }
    }

    /// Another handle on the same data with its own leader identity, as a second
    /// replica connected to the same database.
    pub fn handle(&self) -> MemoryStore {
        MemoryStore {
            shared: Arc::clone(&self.shared),
            identity: Uuid::new_v4(),
            term: LeaderTerm::new(Self::LOCK_KEY),
            fence: None,
        }
    }

    /// Simulates the database going down (`false`) or coming back (`true`). While down,
    /// every operation fails with [`DbError::Unavailable`], the leader lock is lost (as
    /// a server restart ends the lock's session) and [`crate::LeaderLock::is_held`]
    /// answers `false`. Coming back sends [`DomainChange::Resync`] to subscribers, as
    /// the PostgreSQL feed does after reconnecting.
    pub fn set_available(&self, available: bool) {
        let was = self.shared.available.swap(available, Ordering::SeqCst);
        if !available {
            self.revoke_leadership();
        } else if !was {
            let _ = self.shared.changes.send(DomainChange::Resync);
        }
    }

    /// Simulates the server ending the leader's session (e.g. `pg_terminate_backend`):
    /// whoever holds the leader lock loses it.
    pub fn revoke_leadership(&self) {
        *self.shared.leader.lock() = None;
    }

    /// Sends [`DomainChange::Resync`] to every subscriber, as the PostgreSQL feed does
    /// after a reconnect.
    pub fn emit_resync(&self) {
        let _ = self.shared.changes.send(DomainChange::Resync);
    }

    fn check_available(&self) -> Result<(), DbError> {
        if self.shared.available.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(DbError::Unavailable {
                host: "memory".into(),
                reason: "simulated outage".into(),
            })
        }
    }

    /// The state, after checking availability.
    fn state(&self) -> Result<MutexGuard<'_, State>, DbError> {
        self.check_available()?;
        Ok(self.shared.state.lock())
    }

    /// The state for a leader-only write: after checking the term when fenced.
    fn leader_state(&self) -> Result<MutexGuard<'_, State>, DbError> {
        let state = self.state()?;
        if let Some(term) = &self.fence {
            term.check(state.leader_term)?;
        }
        Ok(state)
    }

    fn notify_changed(&self) {
        let _ = self.shared.changes.send(DomainChange::Changed);
    }
}

#[async_trait]
impl DbHealth for MemoryStore {
    async fn ping(&self) -> Result<(), DbError> {
        self.check_available()
    }

    fn pool_stats(&self) -> PoolStats {
        PoolStats::default()
    }
}
