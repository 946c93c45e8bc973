//! Starting workflows: on every scheduler tick and domain change (for idle enabled
//! domains, respecting the `rescan_after` cool-down), and on request ("scan now").

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use config8::{Granularity, SchedulerMode};
use db8::{DbError, NewWorkflow, StagePlan};
use futures::TryStreamExt;
use model8::{DomainRef, WorkflowView};
use uuid::Uuid;

use super::creation::created_views;
use super::{Engine, minus};
use crate::scan_now::{ScanNow, ScanNowError};

impl Engine {
    /// One scheduler check (leader only): starts workflows for the enabled domains
    /// that need one. Returns how many were created.
    pub(crate) async fn start_workflows(&self) -> Result<u64, DbError> {
        if !self.is_leader() {
            return Ok(0);
        }
        let settings = self.live();
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
        let new = self.new_workflow(domains, plans);
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
        Ok(created_views(std::slice::from_ref(&new), &created, &[], now).pop())
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
        match domain_ids {
            None => self.scan_all().await,
            Some(ids) => self.scan_these(self.requested_domains(ids).await?).await,
        }
    }

    /// "Scan now" of every enabled domain without an active workflow, whatever the
    /// cool-down: the operator asked.
    async fn scan_all(&self) -> Result<Vec<WorkflowView>, ScanNowError> {
        let plans = self.plan().stage_plans();
        let now = self.now();
        let mut views = Vec::new();
        match self.start_settings().workflow.granularity {
            Granularity::PerDomain => {
                // (A far future bound rather than the largest timestamp, which not
                // every database encoding accepts.)
                let any_end = super::plus(now, std::time::Duration::from_secs(100 * 366 * 86_400));
                self.create_per_domain(&plans, any_end, now, Some(&mut views))
                    .await?;
            }
            Granularity::PerCycle => {
                if !self.workflows.any_active().await? {
                    views.extend(self.create_cycle(&plans, now).await?);
                }
            }
        }
        Ok(views)
    }

    /// The domains `ids` names, each known and enabled.
    async fn requested_domains(&self, ids: Vec<Uuid>) -> Result<Vec<DomainRef>, ScanNowError> {
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
        Ok(domains)
    }

    /// "Scan now" of `domains`: a workflow each (per domain) or one over all of them
    /// (per cycle, unless one is active).
    async fn scan_these(&self, domains: Vec<DomainRef>) -> Result<Vec<WorkflowView>, ScanNowError> {
        let plans = self.plan().stage_plans();
        let now = self.now();
        if self.start_settings().workflow.granularity == Granularity::PerCycle {
            if self.workflows.any_active().await? {
                return Ok(Vec::new());
            }
            return Ok(self
                .create_one(domains, &plans, now)
                .await?
                .into_iter()
                .collect());
        }
        let mut views = Vec::new();
        for chunk in domains.chunks(self.tuning.create_batch.max(1)) {
            let batch: Vec<NewWorkflow> = chunk
                .iter()
                .map(|d| self.new_workflow(vec![d.clone()], &plans))
                .collect();
            let created = self.workflows.create_workflows(&batch, now).await?;
            self.metrics.workflows_started(created.len() as u64);
            views.extend(created_views(&batch, &created, &[], now));
        }
        if !views.is_empty() {
            tracing::info!(created = views.len(), "workflows started on request");
            self.dispatch_wake.now();
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
        let mut views = self.0.scan(domain_ids).await?;
        // Ahead of the backlog where slots are shared fairly (a claim between the
        // creation and this mark takes them in the usual order).
        let ids: Vec<Uuid> = views.iter().map(|v| v.id).collect();
        self.0.workflows.mark_requested(&ids).await?;
        self.0.annotate_windows(&mut views);
        Ok(views)
    }
}
