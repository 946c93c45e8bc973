//! Leadership role of this replica.

use serde::Serialize;
use tokio::sync::watch;

/// Whether this replica schedules and publishes (leader) or waits warm (standby).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Holds the leader lock (or leader election is disabled).
    Leader,
    /// Does not hold the lock; ready to take over.
    Standby,
}

impl Role {
    /// `leader` or `standby`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Standby => "standby",
        }
    }
}

/// The current role, observable by the scheduler, `/ready` and `/metrics`.
pub type RoleWatch = watch::Receiver<Role>;
