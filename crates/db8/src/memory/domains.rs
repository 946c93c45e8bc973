//! [`DomainRepository`] in memory.

use async_trait::async_trait;
use futures::stream::{self, BoxStream, StreamExt};
use model8::{Domain8, PostDomain8};
use uuid::Uuid;

use super::MemoryStore;
use crate::error::DbError;
use crate::shared::domains::{conflict, not_found, validated};
use crate::traits::DomainRepository;

#[async_trait]
impl DomainRepository for MemoryStore {
    async fn list(&self) -> Result<Vec<Domain8>, DbError> {
        let state = self.state()?;
        let mut all: Vec<Domain8> = state.domains.values().cloned().collect();
        // Byte order, as PostgreSQL's `COLLATE "C"`.
        all.sort_by(|a, b| (&a.name, a.id).cmp(&(&b.name, b.id)));
        Ok(all)
    }

    async fn stream_enabled(
        &self,
    ) -> Result<BoxStream<'static, Result<Domain8, DbError>>, DbError> {
        let state = self.state()?;
        let enabled: Vec<Result<Domain8, DbError>> = state
            .domains
            .values()
            .filter(|d| d.enabled)
            .cloned()
            .map(Ok)
            .collect();
        Ok(stream::iter(enabled).boxed())
    }

    async fn exists_enabled(&self) -> Result<bool, DbError> {
        Ok(self.state()?.domains.values().any(|d| d.enabled))
    }

    async fn get(&self, id: Uuid) -> Result<Domain8, DbError> {
        self.state()?
            .domains
            .get(&id)
            .cloned()
            .ok_or_else(|| not_found(id))
    }

    async fn insert(&self, domain: &PostDomain8) -> Result<Domain8, DbError> {
        let domain = validated(domain)?;
        let row = {
            let mut state = self.state()?;
            if state
                .domains
                .values()
                .any(|d| d.name.eq_ignore_ascii_case(&domain.name))
            {
                return Err(conflict(&domain.name));
            }
            let row = Domain8 {
                id: Uuid::new_v4(),
                name: domain.name,
                companyname: domain.companyname,
                enabled: domain.enabled,
            };
            state.domains.insert(row.id, row.clone());
            row
        };
        self.notify_changed();
        Ok(row)
    }

    async fn update(&self, id: Uuid, domain: &PostDomain8) -> Result<Domain8, DbError> {
        let domain = validated(domain)?;
        let row = {
            let mut state = self.state()?;
            if !state.domains.contains_key(&id) {
                return Err(not_found(id));
            }
            if state
                .domains
                .values()
                .any(|d| d.id != id && d.name.eq_ignore_ascii_case(&domain.name))
            {
                return Err(conflict(&domain.name));
            }
            let row = state.domains.get_mut(&id).expect("checked above");
            row.name = domain.name;
            row.companyname = domain.companyname;
            row.enabled = domain.enabled;
            row.clone()
        };
        self.notify_changed();
        Ok(row)
    }

    async fn set_enabled(&self, id: Uuid, enabled: bool) -> Result<Domain8, DbError> {
        let row = {
            let mut state = self.state()?;
            let row = state.domains.get_mut(&id).ok_or_else(|| not_found(id))?;
            row.enabled = enabled;
            row.clone()
        };
        self.notify_changed();
        Ok(row)
    }

    async fn delete(&self, id: Uuid) -> Result<(), DbError> {
        self.state()?
            .domains
            .remove(&id)
            .ok_or_else(|| not_found(id))?;
        self.notify_changed();
        Ok(())
    }
}
