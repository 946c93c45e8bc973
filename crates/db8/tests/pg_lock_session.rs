//! The leader lock's session on the real server: short TCP keepalives on both ends (so
//! that a vanished leader's lock is freed in about 30 s, not the operating system's two
//! hours), and no lock left behind by calls dropped half-way (a caller's time-out).

mod support;

use std::process::Command;
use std::time::Duration;

use db8::{LeaderLock, PgLeaderLock, PgStore};
use support::TestDb;

/// A key no other test uses at the same time.
fn key() -> i64 {
    i64::from_le_bytes(uuid::Uuid::new_v4().as_bytes()[..8].try_into().unwrap())
}

/// Backends holding advisory lock `key` (granted), as `pg_locks` shows them.
async fn holders(db: &TestDb, key: i64) -> Vec<i32> {
    let k = key as u64;
    let (classid, objid) = ((k >> 32) as u32, k as u32);
    db.admin()
        .await
        .query(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND classid = $1 AND objid = $2 AND objsubid = 1",
            &[&classid, &objid],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// What `ss` shows of the established TCP socket from local port `from` to `to`.
fn ss(from: u16, to: u16) -> String {
    let out = Command::new("ss")
        .args(["-Htno", "state", "established"])
        .arg(format!("( sport = :{from} and dport = :{to} )"))
        .output()
        .expect("ss (iproute2) is needed by this test");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The keepalive timer in a line of `ss -o`, in seconds: the time left before the next
/// probe of an idle connection ("27sec", "9.876sec", "7.8ms", "119min", "1min12sec").
fn keepalive_timer(ss: &str) -> Option<f64> {
    let value = ss.split("timer:(keepalive,").nth(1)?.split(',').next()?;
    let mut total = 0.0;
    let mut number = String::new();
    let mut unit = String::new();
    for c in value.chars().chain(std::iter::once('0')) {
        if c.is_ascii_digit() || c == '.' {
            if !unit.is_empty() {
                let n: f64 = number.parse().ok()?;
                total += n * match unit.as_str() {
                    "ms" => 0.001,
                    "sec" => 1.0,
                    "min" => 60.0,
                    "h" => 3600.0,
                    _ => return None,
                };
                number.clear();
                unit.clear();
            }
            number.push(c);
        } else {
            unit.push(c);
        }
    }
    Some(total)
}

#[tokio::test]
async fn the_lock_session_has_short_keepalives_on_both_ends() {
    let db = TestDb::create().await;
    migrate(&db).await;
    let key = key();
    let lock = PgLeaderLock::new(&db.settings(), key).unwrap();
    assert_eq!(
        lock.session_setting("tcp_keepalives_idle").await.unwrap(),
        None
    );
    assert!(lock.try_acquire().await.unwrap());

    // The server's side, as the session itself reports it (over TCP: over a Unix
    // socket PostgreSQL reports 0).
    for (name, want) in [
        (
            "tcp_keepalives_idle",
            PgLeaderLock::KEEPALIVE_IDLE.as_secs().to_string(),
        ),
        (
            "tcp_keepalives_interval",
            PgLeaderLock::KEEPALIVE_INTERVAL.as_secs().to_string(),
        ),
        (
            "tcp_keepalives_count",
            PgLeaderLock::KEEPALIVE_COUNT.to_string(),
        ),
        (
            "tcp_user_timeout",
            PgLeaderLock::DEAD_PEER_AFTER.as_millis().to_string(),
        ),
    ] {
        assert_eq!(
            lock.session_setting(name).await.unwrap().as_deref(),
            Some(want.as_str()),
            "{name}"
        );
    }
    // Other sessions keep the server's default (here the operating system's, 7200 s).
    let other: String = db
        .admin()
        .await
        .query_one("SELECT current_setting('tcp_keepalives_idle')", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(other, PgLeaderLock::KEEPALIVE_IDLE.as_secs().to_string());

    // The kernel's side: both sockets of the lock session run a keepalive timer of at
    // most the configured idle time (the default would be two hours).
    let pid = holders(&db, key).await;
    assert_eq!(pid.len(), 1, "one holder");
    let port: i32 = db
        .admin()
        .await
        .query_one(
            "SELECT client_port FROM pg_stat_activity WHERE pid = $1",
            &[&pid[0]],
        )
        .await
        .unwrap()
        .get(0);
    let port = u16::try_from(port).unwrap();
    let idle = PgLeaderLock::KEEPALIVE_IDLE.as_secs_f64();
    for (what, from, to) in [("client", port, 5432), ("server", 5432, port)] {
        // While data is on its way the socket shows its retransmission timer instead;
        // the session is idle now, so the keepalive timer shows within moments.
        let (timer, line) = support::eventually(
            Duration::from_secs(10),
            &format!("the {what} socket's keepalive timer"),
            || async {
                let line = ss(from, to);
                keepalive_timer(&line).map(|t| (t, line))
            },
        )
        .await;
        assert!(
            timer <= idle,
            "{what} socket {from} -> {to}: keepalive timer {timer} s, expected at most \
             {idle} s (the default is two hours); ss: {line:?}"
        );
    }
    lock.release().await.unwrap();
}

/// Waits until nobody holds `key` (a session that ended frees its locks when its
/// backend exits, a moment later); fails after 10 s: the lock was left behind.
async fn freed(db: &TestDb, key: i64, after: &str) {
    support::eventually(
        Duration::from_secs(10),
        &format!("the lock to be free after {after}"),
        || async { holders(db, key).await.is_empty().then_some(()) },
    )
    .await;
}

/// Takes the lock, waiting for a previous session of this lock to be gone.
async fn acquire(lock: &PgLeaderLock) {
    support::eventually(Duration::from_secs(10), "the lock", || async {
        lock.try_acquire().await.unwrap().then_some(())
    })
    .await;
}

/// Runs `call` for `turns` turns of the runtime (each lets the connection's task read
/// and write), then drops it if it has not finished: a caller's time-out, at a chosen
/// point.
async fn cut_off<F: Future>(call: F, turns: usize) {
    tokio::select! {
        biased;
        _ = call => {}
        _ = async {
            for _ in 0..turns {
                tokio::task::yield_now().await;
            }
        } => {}
    }
}

#[test]
fn ss_timers_are_read_in_seconds() {
    let t = |s: &str| keepalive_timer(&format!("0 0 a:1 b:2 timer:(keepalive,{s},0)"));
    assert_eq!(t("27sec"), Some(27.0));
    assert_eq!(t("9.5sec"), Some(9.5));
    assert_eq!(t("1min12sec"), Some(72.0));
    assert_eq!(t("119min"), Some(7140.0));
    assert!(t("7.8ms").unwrap() < 0.01);
    assert_eq!(keepalive_timer("0 0 a:1 b:2"), None);
}

#[tokio::test]
async fn calls_dropped_half_way_never_leave_the_lock_behind() {
    let db = TestDb::create().await;
    migrate(&db).await;
    let key = key();
    let lock = PgLeaderLock::new(&db.settings(), key).unwrap();
    let other = PgLeaderLock::new(&db.settings(), key).unwrap();

    // try_acquire and release cut off at every point (after 0, 1, 2, ... turns of the
    // runtime, so some fall between sending a query and reading its answer). Whatever
    // happened, one full release afterwards frees the lock: a lock taken twice by one
    // session would need two.
    for turns in 0..60 {
        cut_off(lock.try_acquire(), turns).await;
        cut_off(lock.try_acquire(), turns).await;
        lock.release().await.unwrap();
        // A session ended by a cut-off call frees its lock when its backend exits.
        freed(
            &db,
            key,
            &format!("try_acquire cut off after {turns} turns"),
        )
        .await;
        acquire(&lock).await;
        cut_off(lock.release(), turns).await;
        acquire(&lock).await;
        lock.release().await.unwrap();
        freed(&db, key, &format!("release cut off after {turns} turns")).await;
    }
    acquire(&lock).await;
    lock.release().await.unwrap();
    freed(&db, key, "a full release").await;
    assert!(other.try_acquire().await.unwrap());
    other.release().await.unwrap();

    // A leader's check dropped half-way (its time-out) keeps the session and the lock:
    // unsure is not free, nobody else may lead meanwhile.
    assert!(lock.try_acquire().await.unwrap());
    let holder = holders(&db, key).await;
    for turns in 0..60 {
        cut_off(lock.is_held(), turns).await;
    }
    assert_eq!(
        holders(&db, key).await,
        holder,
        "same session, still holding"
    );
    assert!(!other.try_acquire().await.unwrap());
    assert!(lock.is_held().await.unwrap());
    lock.release().await.unwrap();
    assert!(other.try_acquire().await.unwrap());
}

/// Applies the migrations (the lock increments its term in `orchestratorm8_leader_term`).
async fn migrate(db: &TestDb) {
    PgStore::connect(&db.settings())
        .await
        .unwrap()
        .migrate()
        .await
        .unwrap();
}
