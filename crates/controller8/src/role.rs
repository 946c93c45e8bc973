//! Leadership role of this replica: an explicit state machine.
//!
//! Every `LeaderElection.check_interval` the replica checks the lock: a leader verifies
//! it still holds it, a candidate or standby tries to take it. The role after the check
//! depends only on what the check found, whatever the role before:
//!
//! | the check found | role after |
//! |---|---|
//! | the lock taken or still held | `leader` |
//! | the database answered: the lock is not this replica's | `standby` |
//! | no answer (an error or a time-out) | `candidate` |
//!
//! A replica starts as a `candidate` (with leader election; without it, it is the
//! leader) and becomes a `standby` when it resigns. Only a `leader` schedules and
//! publishes. The wire (CONTRACT section 4 `/ready`, the replicas list) knows two roles:
//! a candidate is reported there as `standby` ([`Role::contract_role`]).

use serde::Serialize;
use tokio::sync::watch;

/// Whether this replica schedules and publishes (leader), waits warm while the database
/// says another replica may lead (standby), or does not know (candidate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Holds the leader lock (or leader election is disabled).
    Leader,
    /// Does not know whether it may lead: it has not checked the lock yet, or its last
    /// check got no answer from the database. Tries to take the lock at each check.
    Candidate,
    /// The database answered: the lock is not this replica's. Ready to take over; tries
    /// to take the lock at each check.
    Standby,
}

/// What one check of the leader lock found (see the table in the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockCheck {
    /// The lock was taken, or is still held.
    Ours,
    /// The database answered: this replica does not hold the lock.
    NotOurs,
    /// The check failed or timed out.
    NoAnswer,
}

impl Role {
    /// `leader`, `candidate` or `standby`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Candidate => "candidate",
            Role::Standby => "standby",
        }
    }

    /// The role on the wire (`/ready`, the replicas list): `leader` or `standby` (a
    /// candidate cannot lead yet).
    pub fn contract_role(self) -> model8::ReplicaRole {
        match self {
            Role::Leader => model8::ReplicaRole::Leader,
            Role::Candidate | Role::Standby => model8::ReplicaRole::Standby,
        }
    }
}

impl LockCheck {
    /// The role after a check that found this (the table in the module docs).
    pub(crate) fn role(self) -> Role {
        match self {
            LockCheck::Ours => Role::Leader,
            LockCheck::NotOurs => Role::Standby,
            LockCheck::NoAnswer => Role::Candidate,
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
        assert_eq!(Role::Candidate.as_str(), "candidate");
        assert_eq!(Role::Standby.as_str(), "standby");
        for role in [Role::Leader, Role::Candidate, Role::Standby] {
            assert_eq!(
                serde_json::to_value(role).unwrap(),
                serde_json::json!(role.as_str())
            );
        }
    }

    #[test]
    fn a_candidate_is_a_standby_on_the_wire() {
        use model8::ReplicaRole;
        assert_eq!(Role::Leader.contract_role(), ReplicaRole::Leader);
        assert_eq!(Role::Candidate.contract_role(), ReplicaRole::Standby);
        assert_eq!(Role::Standby.contract_role(), ReplicaRole::Standby);
    }

    #[test]
    fn each_check_leads_to_the_role_of_the_table() {
        assert_eq!(LockCheck::Ours.role(), Role::Leader);
        assert_eq!(LockCheck::NotOurs.role(), Role::Standby);
        assert_eq!(LockCheck::NoAnswer.role(), Role::Candidate);
    }
}
