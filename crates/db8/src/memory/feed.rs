//! [`ChangeFeed`] in memory: every domain write sends one [`DomainChange::Changed`].

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use tokio_stream::wrappers::BroadcastStream;

use super::MemoryStore;
use crate::error::DbError;
use crate::traits::{ChangeFeed, DomainChange};

#[async_trait]
impl ChangeFeed for MemoryStore {
    async fn subscribe(&self) -> Result<BoxStream<'static, DomainChange>, DbError> {
        self.check_available()?;
        let rx = self.shared.changes.subscribe();
        // A subscriber that fell behind missed changes: it must re-read everything.
        Ok(BroadcastStream::new(rx)
            .map(|r| r.unwrap_or(DomainChange::Resync))
            .boxed())
    }
}
