//! [`LeaderLock`] in memory: one lock per data set, contended by the handles of
//! [`MemoryStore::handle`].

use async_trait::async_trait;

use super::MemoryStore;
use crate::error::DbError;
use crate::traits::LeaderLock;

#[async_trait]
impl LeaderLock for MemoryStore {
    async fn try_acquire(&self) -> Result<bool, DbError> {
        self.check_available()?;
        let mut holder = self.shared.leader.lock();
        match *holder {
            Some(h) => Ok(h == self.identity),
            None => {
                *holder = Some(self.identity);
                // A new term, as PostgreSQL's increment (under the state's lock: after
                // every leader-only write in progress).
                let mut state = self.shared.state.lock();
                state.leader_term += 1;
                self.term.set(Some(state.leader_term));
                Ok(true)
            }
        }
    }

    async fn is_held(&self) -> Result<bool, DbError> {
        let held = *self.shared.leader.lock() == Some(self.identity);
        if !held {
            self.term.set(None);
        }
        Ok(held)
    }

    async fn release(&self) -> Result<(), DbError> {
        let mut holder = self.shared.leader.lock();
        if *holder == Some(self.identity) {
            self.term.set(None);
            *holder = None;
        }
        Ok(())
    }
}
