//! Starting workflows: on every scheduler tick and domain change (for idle enabled
//! domains, respecting the `rescan_after` cool-down), and on request ("scan now").

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use config8::{Granularity, SchedulerMode};
use db8::{DbError, NewWorkflow, StagePlan};
use futures::TryStreamExt;
use model8::{DomainRef, GoTime, StageStatus, StageView, WorkflowStatus, WorkflowView};
use uuid::Uuid;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;

use super::{Engine, minus};

/// Batches of new workflows created at once.
const CREATE_DEPTH: usize = 2;
use crate::scan_now::{ScanNow, ScanNowError};

/// The view of a workflow just created from `new` at `now`, as the repository would
/// return it (saves a round trip per workflow).
fn created_view(new: &NewWorkflow, now: DateTime<Utc>) -> WorkflowView {
    let at = GoTime::from_utc(micros(now));
    WorkflowView {
        id: new.id,
        status: WorkflowStatus::Pending,
        created_at: at,
        updated_at: at,
        domains: new.domains.iter().map(|d| d.name.clone()).collect(),
        stages: new
            .stages
            .iter()
            .map(|s| StageView {
                name: s.name.clone(),
                status: if s.depends_on.is_empty() {
                    StageStatus::Pending
                } else {
                    StageStatus::Waiting
                },
                attempt: 0,
            })
            .collect(),
    }
}

/// `t` truncated to microseconds, the database's precision.
fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    let us = t.timestamp_subsec_micros();
    t.with_nanosecond(us * 1000).unwrap_or(t)
}

use chrono::Timelike;

impl Engine {
    /// One scheduler check (leader only): starts workflows for the enabled domains
    /// that need one. Returns how many were created.
    pub(crate) async fn start_workflows(&self) -> Result<u64, DbError> {
        if !self.is_leader() {
            return Ok(0);
        }
        let settings = self.settings();
        let plans = self.plan().stage_plans();
        let now = self.now();
        let ended_before = minus(now, settings.workflow.rescan_after);
        match self.start_settings().workflow.granularity {
            Granularity::PerDomain => {
                self.create_per_domain(&plans, ended_before, now, None)
                    .await
            }
            Granularity::PerCycle => {
                if self.workflows.any_active().await? {
                    return Ok(0);
                }
                if let Some(ended) = self.workflows.last_ended_at().await?
                    && ended > ended_before
                {
                    tracing::debug!(last_ended = %ended, "per_cycle cool-down (rescan_after) not over");
                    return Ok(0);
                }
                Ok(self.create_cycle(&plans, now).await?.map_or(0, |_| 1))
            }
        }
    }

    /// Creates one workflow per idle domain (no active workflow, last one ended at or
    /// before `ended_before`), in batches; the next page of domains is read while a
    /// batch is being created. `views` collects the created workflows' views when
    /// given. Returns how many were created.
    async fn create_per_domain(
        &self,
        plans: &[StagePlan],
        ended_before: DateTime<Utc>,
        now: DateTime<Utc>,
        mut views: Option<&mut Vec<WorkflowView>>,
    ) -> Result<u64, DbError> {
        let batch_size = self.tuning.create_batch.max(1);
        let mut count = 0;
        let mut error = None;
        // The next page of domains is read while up to CREATE_DEPTH batches are being
        // created (each in its own transaction, on its own connection).
        let mut paging: Option<BoxFuture<'_, Result<Vec<DomainRef>, DbError>>> = Some(Box::pin(
            self.workflows.idle_domains(ended_before, None, batch_size),
        ));
        type Creating<'a> = BoxFuture<'a, (Vec<NewWorkflow>, Result<Vec<Uuid>, DbError>)>;
        let mut creating: FuturesOrdered<Creating<'_>> = FuturesOrdered::new();
        loop {
            if self.stopping() || !self.is_leader() || error.is_some() {
                paging = None;
            }
            if paging.is_none() && creating.is_empty() {
                break;
            }
            let may_page = paging.is_some() && creating.len() < CREATE_DEPTH;
            tokio::select! {
                biased;
                Some((batch, created)) = creating.next(), if !creating.is_empty() => {
                    match created {
                        Ok(created) if !created.is_empty() => {
                            count += created.len() as u64;
                            self.metrics.workflows_started(created.len() as u64);
                            tracing::info!(created = created.len(), "workflows started");
                            self.dispatch_wake.now();
                            if let Some(views) = views.as_deref_mut() {
                                let set: std::collections::HashSet<Uuid> =
                                    created.iter().copied().collect();
                                views.extend(
                                    batch
                                        .iter()
                                        .filter(|w| set.contains(&w.id))
                                        .map(|w| created_view(w, now)),
                                );
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            error.get_or_insert(e);
                        }
                    }
                }
                page = async { paging.as_mut().expect("guarded").await }, if may_page => {
                    paging = None;
                    match page {
                        Err(e) => {
                            error.get_or_insert(e);
                        }
                        Ok(page) => {
                            if let Some(last) = page.last() {
                                if page.len() == batch_size {
                                    paging = Some(Box::pin(self.workflows.idle_domains(
                                        ended_before,
                                        Some(last.id),
                                        batch_size,
                                    )));
                                }
                                let batch: Vec<NewWorkflow> = page
                                    .into_iter()
                                    .map(|d| NewWorkflow {
                                        id: Uuid::new_v4(),
                                        domains: vec![d],
                                        stages: plans.to_vec(),
                                    })
                                    .collect();
                                creating.push_back(Box::pin(async move {
                                    let created = self.workflows.create_workflows(&batch, now).await;
                                    (batch, created)
                                }));
                            }
                        }
                    }
                }
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(count),
        }
    }

    /// Creates one workflow over every enabled domain, if there is any.
    async fn create_cycle(
        &self,
        plans: &[StagePlan],
        now: DateTime<Utc>,
    ) -> Result<Option<WorkflowView>, DbError> {
        let domains: Vec<DomainRef> = self
            .domains
            .stream_enabled()
            .await?
            .map_ok(DomainRef::from)
            .try_collect()
            .await?;
        self.create_one(domains, plans, now).await
    }

    async fn create_one(
        &self,
        domains: Vec<DomainRef>,
        plans: &[StagePlan],
        now: DateTime<Utc>,
    ) -> Result<Option<WorkflowView>, DbError> {
        if domains.is_empty() {
            return Ok(None);
        }
        let new = NewWorkflow {
            id: Uuid::new_v4(),
            domains,
            stages: plans.to_vec(),
        };
        let created = self
            .workflows
            .create_workflows(std::slice::from_ref(&new), now)
            .await?;
        if created.is_empty() {
            return Ok(None);
        }
        self.metrics.workflows_started(1);
        tracing::info!(workflow = %new.id, domains = new.domains.len(), "workflow started");
        self.dispatch_wake.now();
        Ok(Some(created_view(&new, now)))
    }

    /// "Scan now": see [`ScanNow::scan_now`].
    pub(crate) async fn scan(
        &self,
        domain_ids: Option<Vec<Uuid>>,
    ) -> Result<Vec<WorkflowView>, ScanNowError> {
        if self.start_settings().scheduler.mode != SchedulerMode::Managed {
            return Err(ScanNowError::Invalid(
                "workflows can only be started in managed mode (Scheduler.mode is bootstrap)"
                    .into(),
            ));
        }
        if !self.is_leader() {
            return Err(ScanNowError::NotLeader);
        }
        let plans = self.plan().stage_plans();
        let now = self.now();
        let granularity = self.start_settings().workflow.granularity;
        let mut views = Vec::new();
        match domain_ids {
            None => match granularity {
                // Every enabled domain without an active workflow, whatever the
                // cool-down: the operator asked.
                Granularity::PerDomain => {
                    // (A far future bound rather than the largest timestamp, which not
                    // every database encoding accepts.)
                    let any_end =
                        super::plus(now, std::time::Duration::from_secs(100 * 366 * 86_400));
                    self.create_per_domain(&plans, any_end, now, Some(&mut views))
                        .await?;
                }
                Granularity::PerCycle => {
                    if !self.workflows.any_active().await? {
                        views.extend(self.create_cycle(&plans, now).await?);
                    }
                }
            },
            Some(ids) => {
                let mut domains = Vec::with_capacity(ids.len());
                for id in ids {
                    let d = match self.domains.get(id).await {
                        Ok(d) => d,
                        Err(DbError::NotFound(_)) => {
                            return Err(ScanNowError::Invalid(format!("unknown domain id {id}")));
                        }
                        Err(e) => return Err(e.into()),
                    };
                    if !d.enabled {
                        return Err(ScanNowError::Invalid(format!(
                            "domain {id} ({}) is disabled",
                            d.name
                        )));
                    }
                    domains.push(DomainRef::from(d));
                }
                match granularity {
                    Granularity::PerDomain => {
                        for chunk in domains.chunks(self.tuning.create_batch.max(1)) {
                            let batch: Vec<NewWorkflow> = chunk
                                .iter()
                                .map(|d| NewWorkflow {
                                    id: Uuid::new_v4(),
                                    domains: vec![d.clone()],
                                    stages: plans.clone(),
                                })
                                .collect();
                            let created = self.workflows.create_workflows(&batch, now).await?;
                            if created.is_empty() {
                                continue;
                            }
                            self.metrics.workflows_started(created.len() as u64);
                            let set: std::collections::HashSet<Uuid> =
                                created.into_iter().collect();
                            views.extend(
                                batch
                                    .iter()
                                    .filter(|w| set.contains(&w.id))
                                    .map(|w| created_view(w, now)),
                            );
                        }
                        if !views.is_empty() {
                            tracing::info!(created = views.len(), "workflows started on request");
                            self.dispatch_wake.now();
                        }
                    }
                    Granularity::PerCycle => {
                        if !self.workflows.any_active().await? {
                            views.extend(self.create_one(domains, &plans, now).await?);
                        }
                    }
                }
            }
        }
        Ok(views)
    }
}

/// The [`ScanNow`] the HTTP layer calls.
#[derive(Debug, Clone)]
pub(crate) struct EngineScanNow(pub(crate) Arc<Engine>);

#[async_trait]
impl ScanNow for EngineScanNow {
    async fn scan_now(
        &self,
        domain_ids: Option<Vec<Uuid>>,
    ) -> Result<Vec<WorkflowView>, ScanNowError> {
        self.0.scan(domain_ids).await
    }
}
