//! The conformance suite against [`db8::MemoryStore`].

mod conformance;

use std::sync::Arc;

use conformance::Stores;
use db8::MemoryStore;

async fn stores() -> Stores {
    let store = MemoryStore::new();
    Stores {
        domains: Arc::new(store.clone()),
        workflows: Arc::new(store.clone()),
        ring: Arc::new(store.clone()),
        replicas: Arc::new(store.clone()),
        outbox: Arc::new(store.clone()),
        feed: Arc::new(store.clone()),
        health: Arc::new(store.clone()),
        leader_a: Arc::new(store.clone()),
        leader_b: Arc::new(store.handle()),
        guard: Box::new(()),
    }
}

conformance_suite!(stores);
