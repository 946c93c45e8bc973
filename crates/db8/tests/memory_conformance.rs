//! The conformance suite against [`db8::MemoryStore`].

mod conformance;

use std::sync::Arc;

use conformance::{Fenced, Stores};
use db8::MemoryStore;

async fn stores() -> Stores {
    let store = MemoryStore::new();
    let other = store.handle();
    let fenced = store.clone();
    Stores {
        domains: Arc::new(store.clone()),
        workflows: Arc::new(store.clone()),
        ring: Arc::new(store.clone()),
        replicas: Arc::new(store.clone()),
        outbox: Arc::new(store.clone()),
        feed: Arc::new(store.clone()),
        health: Arc::new(store.clone()),
        leader_a: Arc::new(store.clone()),
        leader_b: Arc::new(other.clone()),
        term_a: store.term(),
        term_b: other.term(),
        fence: Box::new(move |t| {
            let f = fenced.fenced(t);
            Fenced {
                workflows: Arc::new(f.clone()),
                ring: Arc::new(f),
            }
        }),
        guard: Box::new(()),
    }
}

conformance_suite!(stores);
