//! Stage dispatch: claim due attempts → publish them (confirmed) → mark them running,
//! or release them when the broker refused them (backpressure).
//!
//! Batches are pipelined: the next batch is claimed while the previous one is being
//! published. A stage whose queue refused a job (`x-overflow: reject-publish` nack) or
//! had no queue bound (unroutable) is paused in memory for a short, doubling delay
//! ([`PRESSURE`]); its refused attempts stay pending in the database (never lost), and
//! the batch size shrinks to what the queue accepted, growing again as it drains.

use std::collections::HashMap;
use std::time::Duration;

use amqp8::{AmqpError, PublishOutcome};
use chrono::{DateTime, Utc};
use config8::StageSettings;
use db8::{ClaimedStage, DbError, StageKey};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;

use super::backoff::{Doubling, PRESSURE};
use super::{Engine, plus};

/// Batches of one stage published at once (each up to `Tuning::publish_batch` jobs).
const PIPELINE_DEPTH: usize = 2;

/// Backpressure state of one stage.
#[derive(Debug)]
pub(crate) struct StagePressure {
    backoff: Doubling,
    /// No claims for this stage before this time.
    until: Option<DateTime<Utc>>,
    /// Attempts claimed per batch now.
    batch: usize,
    /// Whether the current episode was logged.
    logged: bool,
}

/// Claimed attempts whose outcome could not be written because the database was
/// away. They are recorded at the start of the next dispatch round, as soon as it
/// answers again, instead of waiting for their claims to expire: a published job would
/// otherwise be published a second time after the lease, an unpublished one wait for it.
#[derive(Debug)]
pub(crate) enum Unsettled {
    /// Published and confirmed: to be marked running with this deadline.
    Running {
        keys: Vec<StageKey>,
        deadline: DateTime<Utc>,
        since: DateTime<Utc>,
    },
    /// Not published: to be given back.
    Release {
        stage: String,
        keys: Vec<StageKey>,
        since: DateTime<Utc>,
    },
}

impl Unsettled {
    fn since(&self) -> DateTime<Utc> {
        match self {
            Unsettled::Running { since, .. } | Unsettled::Release { since, .. } => *since,
        }
    }
}

/// What one dispatch round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DispatchReport {
    /// Jobs published, confirmed and marked running.
    pub(crate) published: u64,
    /// Jobs the broker refused (nacked or unroutable), left pending.
    pub(crate) refused: u64,
}

/// Why a dispatch step failed; the loop logs it and tries again after a pause.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StepError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] AmqpError),
}

impl StepError {
    /// Whether the failure is an outage that retrying ends.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            StepError::Db(e) => e.is_transient(),
            StepError::Broker(e) => e.is_transient(),
        }
    }
}

/// Why the broker did not take a stage's jobs.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Refusal<'a> {
    /// Nacked: the queue is full (`x-overflow: reject-publish`).
    Full,
    /// Returned: no queue is bound for the routing key.
    Unroutable,
    /// The publish failed (broker unavailable, channel error...).
    Failed(&'a AmqpError),
}

/// One stage's dispatch round in progress ([`Engine::dispatch_stage`]).
#[derive(Default)]
struct Round<'a> {
    /// Batch size (shrunk under backpressure).
    limit: usize,
    /// Attempts the round may still claim.
    remaining: usize,
    /// Whether more may be due (the last claim was full).
    more: bool,
    /// The size the pending claim asked for.
    want: usize,
    /// What the round did so far.
    total: DispatchReport,
    error: Option<StepError>,
    claiming: Option<BoxFuture<'a, Result<Vec<ClaimedStage>, DbError>>>,
    publishing: FuturesOrdered<BoxFuture<'a, Result<Published, StepError>>>,
    recording: FuturesOrdered<BoxFuture<'a, Result<u64, StepError>>>,
}

impl Round<'_> {
    /// Whether the next batch may be claimed: none is being claimed, more may be
    /// due, nothing was refused or failed, and the publish and record steps have room.
    fn may_claim(&self) -> bool {
        self.claiming.is_none()
            && self.more
            && self.error.is_none()
            && self.total.refused == 0
            && self.remaining > 0
            && self.publishing.len() < PIPELINE_DEPTH
            && self.recording.len() < PIPELINE_DEPTH
    }

    fn drained(&self) -> bool {
        self.claiming.is_none() && self.publishing.is_empty() && self.recording.is_empty()
    }
}

/// A published batch, to record.
#[derive(Debug, Default)]
pub(super) struct Published {
    confirmed: Vec<StageKey>,
    refused: Vec<StageKey>,
    /// Of `refused`, those nacked.
    nacked: Vec<StageKey>,
    unroutable: bool,
}

impl Engine {
    /// One dispatch round over every stage (leader only): publishes every due attempt
    /// within the stages' `max_in_flight` limits.
    pub(crate) async fn dispatch(&self) -> Result<DispatchReport, StepError> {
        let mut report = DispatchReport::default();
        if !self.is_leader() {
            return Ok(report);
        }
        self.settle().await?;
        let stages = self.stages();
        let counts = if stages.iter().any(|s| s.max_in_flight > 0) {
            self.workflows.in_flight_counts(self.now()).await?
        } else {
            HashMap::new()
        };
        let mut first_error = None;
        for stage in &stages {
            if self.stopping() || !self.is_leader() {
                break;
            }
            let budget = (stage.max_in_flight > 0).then(|| {
                let used = counts.get(&stage.name).copied().unwrap_or(0);
                usize::try_from(u64::from(stage.max_in_flight).saturating_sub(used))
                    .unwrap_or(usize::MAX)
            });
            if budget == Some(0) {
                continue;
            }
            if let Some(opens) = self.window_closed_until(&stage.name, self.now()) {
                // Outside the stage's scan windows: nothing is claimed; the loop
                // sleeps until the next window opens (or something else wakes it).
                self.dispatch_wake.at(opens);
                continue;
            }
            match self.dispatch_stage(stage, budget).await {
                Ok(o) => {
                    report.published += o.published;
                    report.refused += o.refused;
                }
                Err(e) => {
                    // Other stages may still be publishable.
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) if report.published == 0 => Err(e),
            Some(e) => {
                tracing::warn!(error = %e, "dispatch round partly failed");
                Ok(report)
            }
            None => Ok(report),
        }
    }

    /// The time before which `stage` is paused by backpressure, if it is.
    pub(crate) fn paused_until(&self, stage: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.pressure
            .lock()
            .get(stage)
            .and_then(|p| p.until)
            .filter(|u| *u > now)
    }

    /// A result of `stage` arrived: one of its workers took a job off its queue, so
    /// there is room again. Ends the backpressure pause and wakes the dispatcher.
    pub(crate) fn stage_has_room(&self, stage: &str) {
        if let Some(p) = self.pressure.lock().get_mut(stage) {
            p.backoff.reset();
            p.until = None;
        }
        self.dispatch_wake.now();
    }

    /// Whether `stage` takes full batches now: no backpressure pause, and its batch
    /// size is back to the full [`Tuning::publish_batch`](crate::tuning::Tuning) after
    /// one.
    pub(super) fn takes_full_batches(&self, stage: &str, now: DateTime<Utc>) -> bool {
        self.pressure.lock().get(stage).is_none_or(|p| {
            p.until.is_none_or(|u| u <= now) && p.batch >= self.tuning.publish_batch
        })
    }

    fn batch_limit(&self, stage: &str) -> usize {
        self.pressure
            .lock()
            .get(stage)
            .map_or(self.tuning.publish_batch, |p| p.batch)
            .clamp(1, self.tuning.publish_batch.max(1))
    }

    /// One dispatch round of `stage`: claims, publishes and records batches of its
    /// due attempts (at most `budget`) until nothing more is due, a batch is refused,
    /// or an error. Three steps overlap: claiming the next batch, publishing (at most
    /// [`PIPELINE_DEPTH`] batches, which hold the messages), and recording the outcome
    /// of published batches (which hold only their keys).
    async fn dispatch_stage(
        &self,
        stage: &StageSettings,
        budget: Option<usize>,
    ) -> Result<DispatchReport, StepError> {
        if self.paused_until(&stage.name, self.now()).is_some() {
            return Ok(DispatchReport::default());
        }
        let mut round = Round {
            limit: self.batch_limit(&stage.name),
            remaining: budget.unwrap_or(usize::MAX),
            more: true,
            ..Round::default()
        };
        loop {
            if round.may_claim() && !self.stopping() && self.is_leader() {
                round.want = round.limit.min(round.remaining);
                round.claiming = Some(Box::pin(self.claim(stage, round.want)));
            }
            if round.drained() {
                break;
            }
            let claiming = &mut round.claiming;
            tokio::select! {
                // Outcomes first: a refusal known before a claim returns keeps the
                // claimed batch from being published into a full queue.
                biased;
                Some(p) = round.publishing.next(), if !round.publishing.is_empty() => match p {
                    Ok(p) => {
                        round.total.refused += p.refused.len() as u64;
                        round.recording.push_back(Box::pin(self.record(stage, p)));
                    }
                    Err(e) => {
                        round.error.get_or_insert(e);
                    }
                },
                Some(r) = round.recording.next(), if !round.recording.is_empty() => match r {
                    Ok(n) => round.total.published += n,
                    Err(e) => {
                        round.error.get_or_insert(e);
                    }
                },
                c = async { claiming.as_mut().expect("guarded").await }, if claiming.is_some() => {
                    round.claiming = None;
                    self.on_claimed(stage, &mut round, c).await;
                }
            }
        }
        match round.error {
            Some(e) if round.total.published == 0 => Err(e),
            Some(e) => {
                tracing::warn!(stage = %stage.name, error = %e, "some stage jobs could not be published");
                Ok(round.total)
            }
            None => Ok(round.total),
        }
    }

    /// A claim of the round returned: its batch is published, or given back
    /// unpublished when a batch before it was refused or failed.
    async fn on_claimed<'a>(
        &'a self,
        stage: &'a StageSettings,
        round: &mut Round<'a>,
        claimed: Result<Vec<ClaimedStage>, DbError>,
    ) {
        let batch = match claimed {
            Err(e) => {
                round.more = false;
                round.error.get_or_insert(e.into());
                return;
            }
            Ok(batch) => batch,
        };
        if batch.len() < round.want {
            // Nothing more is due now.
            round.more = false;
        }
        if batch.is_empty() {
            return;
        }
        round.remaining = round.remaining.saturating_sub(batch.len());
        if round.error.is_some() || round.total.refused > 0 {
            let keys: Vec<StageKey> = batch.into_iter().map(|c| c.key).collect();
            self.release(&stage.name, &keys, self.now()).await;
        } else {
            round
                .publishing
                .push_back(Box::pin(self.publish_batch(stage, batch)));
        }
    }

    /// Claims up to `want` due attempts of `stage`: oldest first, or, with
    /// `Workflow.fairness: company` and a `max_in_flight` limit, in the fair order
    /// across companies ([`db8::WorkflowRepository::claim_due_fair`]). Without a limit
    /// every due attempt is claimed anyway, and the cheaper oldest-first claim is kept.
    async fn claim(
        &self,
        stage: &StageSettings,
        want: usize,
    ) -> Result<Vec<ClaimedStage>, DbError> {
        let started = std::time::Instant::now();
        let settings = self.live();
        let (name, now, lease) = (stage.name.as_str(), self.now(), self.tuning.claim_lease);
        let claimed = if settings.workflow.fairness == config8::Fairness::Company
            && stage.max_in_flight > 0
        {
            self.workflows
                .claim_due_fair(
                    name,
                    self.owner,
                    now,
                    lease,
                    want,
                    &settings.workflow.company_weights,
                )
                .await
        } else {
            self.workflows
                .claim_due(name, self.owner, now, lease, want)
                .await
        };
        if let Ok(c) = &claimed
            && !c.is_empty()
        {
            tracing::debug!(stage = name, claimed = c.len(), elapsed = ?started.elapsed(), "claimed stage attempts");
        }
        claimed
    }

    /// Publishes one claimed batch (confirmed); the outcome is recorded by
    /// [`Engine::record`]. A batch that cannot be published at all is given back.
    pub(super) async fn publish_batch(
        &self,
        stage: &StageSettings,
        batch: Vec<ClaimedStage>,
    ) -> Result<Published, StepError> {
        let keys: Vec<StageKey> = batch.iter().map(|c| c.key.clone()).collect();
        if !self.is_leader() || self.stopping() {
            // Leadership lost (or shutting down) between claim and publish: give the
            // work back at once rather than publish as a non-leader.
            self.release(&stage.name, &keys, self.now()).await;
            return Ok(Published::default());
        }
        if let Some(opens) = self.window_closed_until(&stage.name, self.now()) {
            // Every publish passes here (the dispatcher's rounds and the starter's
            // publish at creation): a batch claimed just before the stage's window
            // closed is given back, to be published when it opens again.
            self.release(&stage.name, &keys, self.now()).await;
            self.dispatch_wake.at(opens);
            return Ok(Published::default());
        }
        let protocol = super::protocol::of(stage.protocol);
        let mut messages = Vec::with_capacity(batch.len());
        for c in batch {
            match protocol.job(stage, c) {
                Ok(m) => messages.push(m),
                Err(e) => {
                    self.release(&stage.name, &keys, self.now()).await;
                    return Err(AmqpError::Encode(e.to_string()).into());
                }
            }
        }
        let started = std::time::Instant::now();
        let outcomes = match self.broker.publish_many(messages).await {
            Ok(o) => o,
            Err(e) => {
                self.release(&stage.name, &keys, self.now()).await;
                self.refused(stage, 0, Refusal::Failed(&e));
                return Err(e.into());
            }
        };
        let mut published = Published {
            confirmed: Vec::with_capacity(keys.len()),
            ..Published::default()
        };
        for (i, key) in keys.into_iter().enumerate() {
            match outcomes.get(i) {
                Some(PublishOutcome::Confirmed) => published.confirmed.push(key),
                Some(PublishOutcome::Nacked) => {
                    self.metrics.stage_publish_nacked(&stage.name);
                    published.nacked.push(key.clone());
                    published.refused.push(key);
                }
                Some(PublishOutcome::Unroutable) => {
                    self.metrics.stage_publish_unroutable(&stage.name);
                    published.unroutable = true;
                    published.refused.push(key);
                }
                None => published.refused.push(key),
            }
        }
        for _ in &published.confirmed {
            self.metrics.stage_published(&stage.name);
        }
        tracing::debug!(
            stage = %stage.name, confirmed = published.confirmed.len(),
            refused = published.refused.len(), elapsed = ?started.elapsed(),
            "stage batch published"
        );
        Ok(published)
    }

    /// Records a published batch: the confirmed attempts become running, the refused
    /// ones are given back (and the stage paused). Returns how many became running.
    pub(super) async fn record(
        &self,
        stage: &StageSettings,
        p: Published,
    ) -> Result<u64, StepError> {
        let now = self.now();
        let started = std::time::Instant::now();
        let mut result = Ok(p.confirmed.len() as u64);
        if !p.confirmed.is_empty() {
            // Read live: a changed timeout applies to the next publish.
            let timeout = self.stage_settings(&stage.name).timeout;
            let deadline = plus(now, timeout);
            if let Err(e) = self.mark_running(&p.confirmed, now, deadline).await {
                tracing::error!(
                    stage = %stage.name, jobs = p.confirmed.len(), error = %e,
                    lease = ?self.tuning.claim_lease,
                    "stage jobs were published but could not be recorded as running; \
                     recorded when the database answers again (if it answers within the \
                     lease; else their claims expire and they are published again)"
                );
                self.unsettled.lock().push(Unsettled::Running {
                    keys: p.confirmed.clone(),
                    deadline,
                    since: now,
                });
                result = Err(e.into());
            } else {
                self.dispatch_wake
                    .at(plus(deadline, Duration::from_millis(1)));
            }
        }
        self.nacks.forget(&p.confirmed);
        if p.refused.is_empty() {
            if !p.confirmed.is_empty() {
                self.confirmed_all(&stage.name);
            }
        } else {
            // An attempt nacked too often waits for the stage's timeout (super::nacks),
            // unless its own full queue explains the nacks (backpressure).
            let (held, due) = if p.nacked.is_empty() {
                (Vec::new(), now)
            } else if self.own_queue_full(&stage.name).await {
                self.nacks.forget(&p.nacked);
                (Vec::new(), now)
            } else {
                self.nacked(stage, &p.nacked, now)
            };
            let (later, now_keys): (Vec<StageKey>, Vec<StageKey>) =
                p.refused.into_iter().partition(|k| held.contains(k));
            self.release(&stage.name, &now_keys, now).await;
            self.release(&stage.name, &later, due).await;
            let cause = if p.unroutable {
                Refusal::Unroutable
            } else {
                Refusal::Full
            };
            self.refused(stage, p.confirmed.len(), cause);
        }
        tracing::debug!(stage = %stage.name, jobs = p.confirmed.len(), elapsed = ?started.elapsed(), "stage batch recorded");
        result
    }

    /// `mark_running`, retried briefly: the jobs are already out.
    async fn mark_running(
        &self,
        keys: &[StageKey],
        now: DateTime<Utc>,
        deadline: DateTime<Utc>,
    ) -> Result<(), DbError> {
        let mut delay = Doubling::new((Duration::from_millis(100), Duration::from_secs(2)));
        let mut tries = 0;
        loop {
            match self
                .workflows
                .mark_running(keys, self.owner, now, deadline)
                .await
            {
                Ok(n) => {
                    if n < keys.len() as u64 {
                        tracing::debug!(
                            marked = n,
                            published = keys.len(),
                            "some published attempts were no longer dispatched (reported early, or cancelled meanwhile)"
                        );
                    }
                    return Ok(());
                }
                Err(e) if e.is_transient() && tries < 5 => {
                    tries += 1;
                    tokio::time::sleep(delay.next_delay()).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Gives claimed attempts back, due at once (the in-memory pause keeps the stage
    /// from being retried too early). A failure only delays them until their claims
    /// expire.
    pub(super) async fn release(&self, stage: &str, keys: &[StageKey], now: DateTime<Utc>) {
        if keys.is_empty() {
            return;
        }
        if let Err(e) = self.workflows.release(keys, self.owner, now).await {
            tracing::warn!(
                stage, jobs = keys.len(), error = %e, lease = ?self.tuning.claim_lease,
                "could not release claimed stage attempts; released when the database \
                 answers again (or retried when their claims expire)"
            );
            self.unsettled.lock().push(Unsettled::Release {
                stage: stage.to_owned(),
                keys: keys.to_vec(),
                since: now,
            });
        }
    }

    /// Records what [`Unsettled`] holds, oldest first; stops at the first failure
    /// (the database is still away) and keeps the rest. Entries older than the claim
    /// lease are dropped: their claims expired and the attempts are claimed again.
    async fn settle(&self) -> Result<(), DbError> {
        let (now, lease) = (self.now(), self.tuning.claim_lease);
        let pending = std::mem::take(&mut *self.unsettled.lock());
        let mut rest = pending.into_iter().filter(|u| plus(u.since(), lease) > now);
        while let Some(u) = rest.next() {
            let r = match &u {
                Unsettled::Running { keys, deadline, .. } => self
                    .workflows
                    .mark_running(keys, self.owner, now, *deadline)
                    .await
                    .map(|n| {
                        tracing::info!(
                            jobs = keys.len(),
                            marked = n,
                            "stage jobs published during the database outage recorded as running"
                        );
                        self.dispatch_wake
                            .at(plus(*deadline, Duration::from_millis(1)));
                    }),
                Unsettled::Release { stage, keys, .. } => self
                    .workflows
                    .release(keys, self.owner, now)
                    .await
                    .map(|n| {
                        tracing::info!(
                            stage,
                            jobs = keys.len(),
                            released = n,
                            "stage attempts claimed before the database outage given back"
                        );
                    }),
            };
            if let Err(e) = r {
                // Still away: kept, ahead of what failed meanwhile.
                let mut all = self.unsettled.lock();
                let newer = std::mem::take(&mut *all);
                all.extend(std::iter::once(u).chain(rest).chain(newer));
                return Err(e);
            }
        }
        Ok(())
    }

    /// The broker did not take (all of) a batch of a stage: pauses the stage (1 s,
    /// doubling to 30 s while it keeps happening) and shrinks its batch to what was
    /// `accepted`. The first occurrence of an episode is logged with its real cause.
    fn refused(&self, settings: &StageSettings, accepted: usize, cause: Refusal<'_>) {
        let (stage, now) = (settings.name.as_str(), self.now());
        let mut all = self.pressure.lock();
        let p = all
            .entry(stage.to_owned())
            .or_insert_with(|| StagePressure {
                backoff: Doubling::new(PRESSURE),
                until: None,
                batch: self.tuning.publish_batch,
                logged: false,
            });
        let delay = p.backoff.next_delay();
        let until = plus(now, delay);
        p.until = Some(until);
        p.batch = accepted.max(1);
        if !p.logged {
            p.logged = true;
            match cause {
                Refusal::Unroutable => tracing::warn!(
                    stage, exchange = %settings.exchange, routing_key = %settings.routing_key,
                    "stage jobs are unroutable: no queue is bound for this routing key (check the \
                     stage's routing_key and the service section's Routing-keys); they stay pending \
                     and are retried"
                ),
                Refusal::Full => tracing::info!(
                    stage, retry_in = ?delay,
                    "stage queue is full (backpressure); jobs stay pending and are retried"
                ),
                Refusal::Failed(e) => tracing::warn!(
                    stage, exchange = %settings.exchange, error = %e, retry_in = ?delay,
                    "publishing stage jobs failed; they stay pending and are retried"
                ),
            }
        } else {
            match cause {
                Refusal::Failed(e) => {
                    tracing::debug!(stage, retry_in = ?delay, error = %e, "publishing stage jobs still fails")
                }
                Refusal::Unroutable => {
                    tracing::debug!(stage, retry_in = ?delay, "stage jobs still unroutable")
                }
                Refusal::Full => {
                    tracing::debug!(stage, retry_in = ?delay, "stage queue still refusing jobs")
                }
            }
        }
        drop(all);
        self.dispatch_wake.at(until);
    }

    fn confirmed_all(&self, stage: &str) {
        let mut all = self.pressure.lock();
        if let Some(p) = all.get_mut(stage) {
            if p.logged {
                tracing::info!(stage, "stage jobs are accepted again");
            }
            p.backoff.reset();
            p.until = None;
            p.logged = false;
            p.batch = p.batch.saturating_mul(2).min(self.tuning.publish_batch);
        }
    }
}
