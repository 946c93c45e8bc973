//! Leader election (`LeaderElection.enabled`): only the replica holding the database's
//! leader lock schedules and publishes. The holder verifies the lock every
//! `check_interval` and steps down at once when it is lost (or cannot be verified);
//! standbys try to take it at the same pace. The role is published on a watch channel
//! for the engine, `/ready` and `/metrics`.

use std::sync::Arc;

use db8::LeaderLock;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::role::Role;

/// Drives the role from the lock.
pub(crate) struct Leadership {
    lock: Arc<dyn LeaderLock>,
    role: watch::Sender<Role>,
    metrics: Arc<Metrics>,
}

impl Leadership {
    pub(crate) fn new(
        lock: Arc<dyn LeaderLock>,
        role: watch::Sender<Role>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Leadership {
            lock,
            role,
            metrics,
        }
    }

    fn set(&self, role: Role) {
        // Only a real change notifies the watchers (the loops wake on role changes).
        let mut old = role;
        self.role.send_if_modified(|r| {
            old = *r;
            *r = role;
            old != role
        });
        self.metrics.set_role(role);
        if old != role {
            match role {
                Role::Leader => tracing::info!("this replica is now the leader"),
                Role::Standby => tracing::warn!("this replica is now a standby"),
            }
        }
    }

    /// One check: a standby tries to take the lock, the leader verifies it holds it.
    pub(crate) async fn step(&self) -> Role {
        let current = *self.role.borrow();
        let next = match current {
            Role::Leader => match self.lock.is_held().await {
                Ok(true) => Role::Leader,
                Ok(false) => {
                    tracing::warn!("leader lock lost (database session ended); stepping down");
                    Role::Standby
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot verify the leader lock; stepping down");
                    Role::Standby
                }
            },
            Role::Standby => match self.lock.try_acquire().await {
                Ok(true) => Role::Leader,
                Ok(false) => Role::Standby,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot try the leader lock");
                    Role::Standby
                }
            },
        };
        self.set(next);
        next
    }

    /// Steps down and gives the lock up (shutdown).
    pub(crate) async fn resign(&self) {
        let was = *self.role.borrow();
        self.role
            .send_if_modified(|r| std::mem::replace(r, Role::Standby) != Role::Standby);
        self.metrics.set_role(Role::Standby);
        if was == Role::Leader {
            if let Err(e) = self.lock.release().await {
                tracing::warn!(error = %e, "cannot release the leader lock; it ends with the database session");
            } else {
                tracing::info!("leader lock released");
            }
        }
    }
}

impl Leadership {
    /// Checks every `LeaderElection.check_interval` (read live) until shutdown, then
    /// resigns. A check that does not answer within the interval (at least 2 s) counts
    /// as a lost lock for the leader.
    pub(crate) async fn run(
        self,
        settings: watch::Receiver<Arc<config8::Settings>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let interval = settings
                .borrow()
                .leader_election
                .check_interval
                .max(std::time::Duration::from_millis(50));
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
            let limit = interval.max(std::time::Duration::from_secs(2));
            if tokio::time::timeout(limit, self.step()).await.is_err() {
                tracing::warn!(timeout = ?limit, "leader lock check timed out");
                if *self.role.borrow() == Role::Leader {
                    self.set(Role::Standby);
                }
            }
        }
        self.resign().await;
    }
}
