//! Disruptive: restarts the local PostgreSQL server (holding the exclusive service
//! lock, so no other service test runs meanwhile) and checks that the pool, the change
//! feed, the leader lock and start-up retries recover.

mod support;

use std::process::Command;
use std::time::Duration;

use db8::{
    ChangeFeed, DbError, DbHealth, DomainChange, DomainRepository, LeaderLock, PgChangeFeed,
    PgLeaderLock, PgStore,
};
use futures::StreamExt;
use model8::PostDomain8;
use support::{ServiceLock, TestDb, eventually};

/// The Debian cluster serving port 5432 (`pg_lsclusters`: version and name, e.g.
/// `15 main`), as scripts/services.sh set it up; `15 main` when none is listed.
fn cluster() -> (String, String) {
    let listed = Command::new("pg_lsclusters")
        .arg("-h")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    listed
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() >= 3 && f[2] == "5432")
        .map_or(("15".into(), "main".into()), |f| {
            (f[0].to_owned(), f[1].to_owned())
        })
}

fn pg_ctl(action: &str) -> bool {
    let (version, name) = cluster();
    Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, &name, action])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn server_ready() -> bool {
    Command::new("pg_isready")
        .args(["-h", "127.0.0.1", "-p", "5432", "-q"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Starts the server again however the test ends.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        if !server_ready() {
            pg_ctl("start");
        }
        for _ in 0..300 {
            if server_ready() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn post(name: &str) -> PostDomain8 {
    PostDomain8 {
        name: name.into(),
        companyname: "ACME".into(),
        enabled: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_feed_lock_and_start_up_survive_a_server_restart() {
    let _exclusive = ServiceLock::exclusive().await;
    let db = TestDb::create_with(None).await;
    let _restore = Restore;
    let mut settings = db.settings();
    settings.retry_attempts = 600;
    settings.retry_delay = Duration::from_millis(200);
    settings.connection_timeout = Duration::from_secs(5);
    let store = PgStore::connect(&settings).await.unwrap();
    store.migrate().await.unwrap();
    store.insert(&post("before.example")).await.unwrap();
    let feed = PgChangeFeed::new(&settings).unwrap();
    let mut events = feed.subscribe().await.unwrap();
    let leader = PgLeaderLock::new(&settings, 7).unwrap();
    assert!(leader.try_acquire().await.unwrap());

    assert!(pg_ctl("stop"), "pg_ctlcluster stop failed");
    // Down: clear errors, no false leadership, start-up keeps retrying.
    match store.ping().await {
        Err(DbError::Unavailable { host, .. }) => {
            assert_eq!(host, format!("127.0.0.1:5432/{}", db.name))
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(!matches!(leader.is_held().await, Ok(true)));
    let starting = tokio::spawn({
        let settings = settings.clone();
        async move { PgStore::connect(&settings).await }
    });
    eventually(Duration::from_secs(10), "a failed attempt", || async {
        // The pool refuses at once while the server is down.
        store.ping().await.is_err().then_some(())
    })
    .await;
    assert!(!starting.is_finished(), "start-up must keep retrying");

    assert!(pg_ctl("start"), "pg_ctlcluster start failed");
    let started = tokio::time::timeout(Duration::from_secs(60), starting)
        .await
        .expect("start-up to succeed once the server is back")
        .unwrap()
        .unwrap();
    started.ping().await.unwrap();
    // The old pool recovers by itself.
    eventually(Duration::from_secs(30), "the pool to recover", || async {
        store.ping().await.ok()
    })
    .await;
    assert_eq!(DomainRepository::list(&store).await.unwrap().len(), 1);
    // The feed reconnected and says it may have missed changes.
    let ev = tokio::time::timeout(Duration::from_secs(60), events.next()).await;
    assert_eq!(ev.unwrap(), Some(DomainChange::Resync));
    store.insert(&post("after.example")).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(20), events.next()).await;
    assert_eq!(ev.unwrap(), Some(DomainChange::Changed));
    // The lock was lost with its session and can be taken again.
    assert!(!leader.is_held().await.unwrap_or(false));
    assert!(leader.try_acquire().await.unwrap());
    assert!(leader.is_held().await.unwrap());
}
