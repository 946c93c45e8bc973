//! [`LeaderTerm`]: the leader term (fencing epoch) a replica holds.
//!
//! Every time a replica takes the leader lock it increments the lock's term, stored in
//! the database (`orchestratorm8_leader_term`, docs/DATABASE.md), and holds the new
//! value. The writes only a leader may make (a store made with `fenced`) first compare
//! the stored term with the one held and fail with [`crate::DbError::StaleTerm`],
//! changing nothing, when they differ: a replica that lost the lock without noticing yet
//! cannot act any more once another has taken it.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// The term a replica holds for one leader lock, shared between the lock (which sets
/// it when it takes the lock and clears it when it finds the lock lost or gives it up)
/// and the stores fenced by it. Cheap to clone (clones share the value).
#[derive(Debug, Clone)]
pub struct LeaderTerm {
    key: i64,
    /// The term held; 0 when none (terms start at 1).
    held: Arc<AtomicI64>,
}

impl LeaderTerm {
    /// No term held yet, for lock key `key` (`LeaderElection.lock_key`).
    pub fn new(key: i64) -> LeaderTerm {
        LeaderTerm {
            key,
            held: Arc::new(AtomicI64::new(0)),
        }
    }

    /// A term that no lock updates, holding `term` for `key`: what a replica that lost
    /// the lock without noticing still holds. For tests and diagnostics.
    pub fn fixed(key: i64, term: i64) -> LeaderTerm {
        let t = LeaderTerm::new(key);
        t.set(Some(term));
        t
    }

    /// The lock key the term belongs to.
    pub fn key(&self) -> i64 {
        self.key
    }

    /// The term held now, if any.
    pub fn get(&self) -> Option<i64> {
        match self.held.load(Ordering::SeqCst) {
            0 => None,
            t => Some(t),
        }
    }

    /// Holds `term` (`None`: no term).
    pub(crate) fn set(&self, term: Option<i64>) {
        self.held.store(term.unwrap_or(0), Ordering::SeqCst);
    }

    /// `Ok` when `current` (the stored term) is the term held, else the typed error.
    pub(crate) fn check(&self, current: i64) -> Result<(), crate::DbError> {
        match self.get() {
            Some(held) if held == current => Ok(()),
            held => Err(crate::DbError::StaleTerm {
                key: self.key,
                held,
                current,
            }),
        }
    }
}
