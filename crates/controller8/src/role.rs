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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_named_as_in_the_probes_and_metrics() {
        assert_eq!(Role::Leader.as_str(), "leader");
        assert_eq!(Role::Standby.as_str(), "standby");
        for role in [Role::Leader, Role::Standby] {
            assert_eq!(
                serde_json::to_value(role).unwrap(),
                serde_json::json!(role.as_str())
            );
        }
    }
}
