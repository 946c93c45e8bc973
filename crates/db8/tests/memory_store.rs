//! What only the in-memory store offers: failure injection for the layers above.

use std::time::Duration;

use db8::{
    ChangeFeed, DbError, DbHealth, DomainChange, DomainRepository, LeaderLock, MemoryStore,
    WorkflowFilter, WorkflowRepository,
};
use futures::StreamExt;
use model8::PostDomain8;

fn post(name: &str) -> PostDomain8 {
    PostDomain8 {
        name: name.into(),
        companyname: "ACME".into(),
        enabled: true,
    }
}

#[tokio::test]
async fn an_outage_fails_every_call_drops_the_lock_and_resyncs_after() {
    let store = MemoryStore::new();
    let other = store.handle();
    let mut feed = store.subscribe().await.unwrap();
    assert!(store.try_acquire().await.unwrap());

    store.set_available(false);
    assert!(matches!(
        store.ping().await,
        Err(DbError::Unavailable { .. })
    ));
    assert!(matches!(
        DomainRepository::list(&store).await,
        Err(DbError::Unavailable { .. })
    ));
    assert!(matches!(
        WorkflowRepository::list(&store, &WorkflowFilter::default()).await,
        Err(DbError::Unavailable { .. })
    ));
    assert!(matches!(store.insert(&post("a.example")).await, Err(e) if e.is_transient()));
    assert!(
        !store.is_held().await.unwrap(),
        "an outage ends the lock's session"
    );
    assert!(other.try_acquire().await.is_err());

    store.set_available(true);
    let ev = tokio::time::timeout(Duration::from_secs(5), feed.next())
        .await
        .unwrap();
    assert_eq!(ev, Some(DomainChange::Resync));
    assert!(other.try_acquire().await.unwrap());
    assert!(!store.try_acquire().await.unwrap());
    store.insert(&post("a.example")).await.unwrap();
}

#[tokio::test]
async fn revoked_leadership_is_detected_and_can_be_retaken() {
    let store = MemoryStore::new();
    let same_process = store.clone();
    assert!(store.try_acquire().await.unwrap());
    assert!(same_process.is_held().await.unwrap());
    store.revoke_leadership();
    assert!(!store.is_held().await.unwrap());
    assert!(store.handle().try_acquire().await.unwrap());
    assert!(!store.try_acquire().await.unwrap());
}

#[tokio::test]
async fn a_lagging_subscriber_is_told_to_resync() {
    let store = MemoryStore::new();
    let mut feed = store.subscribe().await.unwrap();
    for i in 0..1100 {
        store.insert(&post(&format!("d{i}.example"))).await.unwrap();
    }
    let first = tokio::time::timeout(Duration::from_secs(5), feed.next())
        .await
        .unwrap();
    assert_eq!(first, Some(DomainChange::Resync));
}

#[tokio::test]
async fn the_feed_ends_when_every_handle_is_dropped() {
    let store = MemoryStore::new();
    let mut feed = store.subscribe().await.unwrap();
    store.emit_resync();
    drop(store);
    let events: Vec<_> =
        tokio::time::timeout(Duration::from_secs(5), (&mut feed).collect::<Vec<_>>())
            .await
            .unwrap();
    assert_eq!(events, [DomainChange::Resync]);
}
