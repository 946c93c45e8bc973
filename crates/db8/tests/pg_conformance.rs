//! The conformance suite against [`db8::PgStore`] and friends, each test on a fresh
//! database of the local PostgreSQL server.

mod conformance;
mod support;

use std::sync::Arc;

use conformance::Stores;
use db8::{PgChangeFeed, PgLeaderLock, PgStore};

async fn stores() -> Stores {
    let db = support::TestDb::create().await;
    let settings = db.settings();
    let store = PgStore::connect(&settings).await.expect("connect");
    store.migrate().await.expect("migrate");
    Stores {
        domains: Arc::new(store.clone()),
        workflows: Arc::new(store.clone()),
        ring: Arc::new(store.clone()),
        replicas: Arc::new(store.clone()),
        outbox: Arc::new(store.clone()),
        feed: Arc::new(PgChangeFeed::new(&settings).unwrap()),
        health: Arc::new(store),
        leader_a: Arc::new(PgLeaderLock::new(&settings, 42).unwrap()),
        leader_b: Arc::new(PgLeaderLock::new(&settings, 42).unwrap()),
        guard: Box::new(db),
    }
}

conformance_suite!(stores);
