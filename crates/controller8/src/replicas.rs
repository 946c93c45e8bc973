//! The replicas list (`GET /api/orchestratorm8/replicas`, the console's replicas view):
//! every replica writes its own row, with its role, every [`BEAT`], when its role
//! changes, and deletes it at a clean shutdown; the API lists the rows written within
//! [`LIVE`]. A replica killed with `-9` drops out of the list after [`LIVE`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use db8::ReplicaRegistry;
use model8::{GoTime, ReplicaView};
use uuid::Uuid;

use crate::clock::Clock;
use crate::role::RoleWatch;

/// How often a replica writes its row.
pub const BEAT: Duration = Duration::from_secs(5);
/// A row written within this window is listed (three missed writes drop it).
pub const LIVE: Duration = Duration::from_secs(15);

/// Writes this replica's row until `shutdown` completes, then deletes it. `name` is
/// the host (pod) name shown in the list. Database errors are logged once per outage
/// and retried at the next beat.
pub async fn beacon(
    registry: Arc<dyn ReplicaRegistry>,
    mut role: RoleWatch,
    clock: Arc<dyn Clock>,
    name: String,
    shutdown: impl Future<Output = ()>,
) {
    let started = GoTime::from_utc(clock.now());
    let id = Uuid::new_v4();
    let mut failing = false;
    tokio::pin!(shutdown);
    loop {
        let row = ReplicaView {
            id,
            name: name.clone(),
            role: role.borrow_and_update().contract_role(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: started,
            seen_at: GoTime::from_utc(clock.now()),
        };
        match registry.replica_beat(&row).await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("replicas list: this replica's row is written again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "replicas list: cannot write this replica's row; retrying");
            }
            Err(_) => {}
        }
        tokio::select! {
            () = &mut shutdown => break,
            _ = tokio::time::sleep(BEAT) => {}
            r = role.changed() => if r.is_err() {
                // The role's sender is gone: keep beating on the last role.
                tokio::time::sleep(BEAT).await;
            },
        }
    }
    if let Err(e) = registry.replica_gone(id).await {
        tracing::debug!(error = %e, "replicas list: cannot delete this replica's row");
    }
}

/// The host name for the list: `HOSTNAME`, else the kernel's, else `"unknown"`.
pub fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::role::Role;
    use chrono::{DateTime, Utc};
    use db8::MemoryStore;
    use model8::ReplicaRole;
    use tokio::sync::watch;

    struct Fixed(DateTime<Utc>);
    impl Clock for Fixed {
        fn now(&self) -> DateTime<Utc> {
            self.0
        }
    }

    async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !f().await {
            assert!(tokio::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The row appears with the role, follows a role change at once (not at the next
    /// beat), and is deleted at shutdown.
    #[tokio::test]
    async fn the_row_follows_the_role_and_goes_at_shutdown() {
        let store = MemoryStore::new();
        let (role_tx, role_rx) = watch::channel(Role::Standby);
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let now = Utc::now();
        let task = tokio::spawn(beacon(
            Arc::new(store.clone()),
            role_rx,
            Arc::new(Fixed(now)),
            "host-a".into(),
            async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            },
        ));
        let listed = async || store.replicas(now).await.unwrap();
        eventually("listed as standby", async || {
            listed()
                .await
                .iter()
                .any(|r| r.name == "host-a" && r.role == ReplicaRole::Standby)
        })
        .await;
        role_tx.send_replace(Role::Leader);
        // Well within one beat (5 s): the change is written at once.
        tokio::time::timeout(
            Duration::from_secs(2),
            eventually("listed as leader", async || {
                listed().await.iter().any(|r| r.role == ReplicaRole::Leader)
            }),
        )
        .await
        .expect("the role change written before the next beat");
        stop_tx.send_replace(true);
        task.await.unwrap();
        assert!(listed().await.is_empty(), "the row goes at shutdown");
    }

    #[test]
    fn a_host_name_is_never_empty() {
        assert!(!host_name().is_empty());
    }
}
