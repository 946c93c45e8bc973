//! One orchestrator replica as the API lists it (`GET /api/orchestratorm8/replicas`).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::GoTime;

/// A replica's leadership role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaRole {
    /// Holds the leader lock: schedules, dispatches, times out, prunes.
    Leader,
    /// Serves the API and applies results; takes over when the leader goes.
    Standby,
}

str_enum!(ReplicaRole, "replica role", Leader => "leader", Standby => "standby");

/// A replica that reported itself alive recently (each replica writes its row every
/// few seconds; see docs/HTTP.md "Replicas").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaView {
    /// Chosen at start; a restarted process is a new replica.
    pub id: Uuid,
    /// The host (pod) name it runs on.
    pub name: String,
    /// Its role when it last reported.
    pub role: ReplicaRole,
    /// The orchestratorm8 version it runs.
    pub version: String,
    /// When it started.
    pub started_at: GoTime,
    /// When it last reported.
    pub seen_at: GoTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        let r = ReplicaView {
            id: Uuid::nil(),
            name: "orchestratorm8-0".into(),
            role: ReplicaRole::Leader,
            version: "0.1.0".into(),
            started_at: "2026-12-02T10:00:00Z".parse().unwrap(),
            seen_at: "2026-12-02T10:00:05Z".parse().unwrap(),
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "id": "00000000-0000-0000-0000-000000000000",
                "name": "orchestratorm8-0",
                "role": "leader",
                "version": "0.1.0",
                "started_at": "2026-12-02T10:00:00Z",
                "seen_at": "2026-12-02T10:00:05Z"
            })
        );
        assert_eq!(serde_json::from_value::<ReplicaView>(v).unwrap(), r);
        assert_eq!(ReplicaRole::Standby.as_str(), "standby");
    }
}
