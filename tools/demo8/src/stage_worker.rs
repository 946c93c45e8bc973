//! A managed-mode stage worker (CONTRACT section 3).
//!
//! For each job on its queue (manual ack):
//!
//! 1. decode the envelope and its [`StageJob`]; a body that is not one, a job for
//!    another stage or attempt 0 is dead-lettered with the reason (never requeued);
//! 2. a job whose report this worker already had confirmed (a redelivery after a lost
//!    ack) is acked without doing the work again;
//! 3. simulate the scan ([`ScanSim`]);
//! 4. publish `AmqpM8Message<StageResult>` (source: the worker's name) to `cptm8` with
//!    routing key `cptm8.orchestratorm8.<stage>.<completed|failed>` and wait for the
//!    broker's confirm, retrying ([`publish_confirmed`]);
//! 5. ack the job. If the report cannot be confirmed, the job is requeued instead and
//!    done again later; the orchestrator ignores a duplicate report, so that is safe.

use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use amqp8::{Broker, Decision, Handler, HandlerError, Message, OutgoingMessage, handler_fn};
use model8::{AmqpM8Message, StageJob, StageOutcome, StageResult};
use rand::rngs::StdRng;
use serde_json::json;

use crate::dedup::SeenIds;
use crate::report::{RetryPolicy, publish_confirmed};
use crate::scan::{ScanEnd, ScanSim};

/// The exchange stage results are reported on (CONTRACT section 3).
pub const RESULT_EXCHANGE: &str = "cptm8";

/// How many confirmed reports a worker remembers to recognise redelivered jobs.
pub const REMEMBERED_REPORTS: usize = 10_000;

/// What a [`StageWorker`] does.
#[derive(Debug, Clone)]
pub struct StageWorkerConfig {
    /// The worker's name: the `source` of its reports.
    pub name: String,
    /// The stage it serves.
    pub stage: String,
    /// The simulated scan.
    pub sim: ScanSim,
    /// How long to keep trying to publish a report before requeueing the job.
    pub retry: RetryPolicy,
}

/// Jobs handled so far, by how they ended.
#[derive(Debug, Default)]
pub struct WorkerStats {
    completed: AtomicU64,
    failed: AtomicU64,
    lost: AtomicU64,
    duplicates: AtomicU64,
    dead_lettered: AtomicU64,
    requeued: AtomicU64,
}

/// A snapshot of [`WorkerStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Reported completed.
    pub completed: u64,
    /// Reported failed.
    pub failed: u64,
    /// Acked without a report (simulated crash).
    pub lost: u64,
    /// Copies of jobs already reported (a redelivery, or a re-publish: the same AMQP
    /// `message_id`), acked without work.
    pub duplicates: u64,
    /// Unreadable jobs dead-lettered.
    pub dead_lettered: u64,
    /// Jobs requeued because their report could not be confirmed.
    pub requeued: u64,
}

impl WorkerStats {
    /// The counts now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            completed: get(&self.completed),
            failed: get(&self.failed),
            lost: get(&self.lost),
            duplicates: get(&self.duplicates),
            dead_lettered: get(&self.dead_lettered),
            requeued: get(&self.requeued),
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The identity of a job: its `message_id`, or for a publisher that sets none the
/// orchestrator's format from the job's own fields.
fn job_identity(message_id: Option<&str>, job: &StageJob) -> String {
    match message_id {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => format!("job:{}:{}:{}", job.workflow_id, job.stage, job.attempt),
    }
}

/// The worker: turn it into an [`amqp8::Handler`] with [`StageWorker::handler`].
pub struct StageWorker {
    broker: Arc<dyn Broker>,
    config: StageWorkerConfig,
    rng: Mutex<StdRng>,
    /// The jobs whose report was confirmed, by [`job_identity`], bounded (oldest
    /// forgotten first).
    reported: Mutex<SeenIds>,
    stats: WorkerStats,
}

impl std::fmt::Debug for StageWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageWorker")
            .field("config", &self.config)
            .field("stats", &self.stats.snapshot())
            .finish_non_exhaustive()
    }
}

impl StageWorker {
    /// A worker publishing through `broker`, drawing its scans from `rng`.
    pub fn new(broker: Arc<dyn Broker>, config: StageWorkerConfig, rng: StdRng) -> Arc<Self> {
        Arc::new(StageWorker {
            broker,
            config,
            rng: Mutex::new(rng),
            reported: Mutex::new(SeenIds::with_capacity(REMEMBERED_REPORTS)),
            stats: WorkerStats::default(),
        })
    }

    /// This worker as the handler [`amqp8::Broker::consume`] takes.
    pub fn handler(self: &Arc<Self>) -> Arc<dyn Handler> {
        let worker = Arc::clone(self);
        Arc::new(handler_fn(move |m: Message| {
            let worker = Arc::clone(&worker);
            async move { worker.handle(m).await }
        }))
    }

    /// Jobs handled so far.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Handles one job; see the module documentation.
    pub async fn handle(&self, m: Message) -> Result<Decision, HandlerError> {
        let job = match self.read_job(&m) {
            Ok(job) => job,
            Err(reason) => {
                tracing::warn!(routing_key = %m.routing_key, %reason, "dead-lettering an unreadable job");
                bump(&self.stats.dead_lettered);
                return Ok(Decision::DeadLetter(reason));
            }
        };
        let key = job_identity(m.message_id.as_deref(), &job);
        let domains: Vec<&str> = job.domains.iter().map(|d| d.name.as_str()).collect();
        if self.reported.lock().contains(&key) {
            tracing::info!(workflow = %job.workflow_id, attempt = job.attempt, message_id = %key,
                "copy of a job already reported (same message_id): acking it without scanning again");
            bump(&self.stats.duplicates);
            return Ok(Decision::Ack);
        }
        let plan = {
            let mut rng = self.rng.lock();
            self.config.sim.plan(job.attempt, &mut *rng)
        };
        tracing::info!(workflow = %job.workflow_id, attempt = job.attempt, ?domains,
            redelivered = m.redelivered, duration = ?plan.duration, "scan started");
        tokio::time::sleep(plan.duration).await;

        let ms = u64::try_from(plan.duration.as_millis()).unwrap_or(u64::MAX);
        let (outcome, detail) = match &plan.end {
            ScanEnd::Lost => {
                tracing::warn!(workflow = %job.workflow_id, attempt = job.attempt,
                    "simulating a lost job: acking it without a report (the orchestrator will time the stage out)");
                bump(&self.stats.lost);
                return Ok(Decision::Ack);
            }
            ScanEnd::Completed => (
                StageOutcome::Completed,
                json!({"worker": self.config.name, "duration_ms": ms, "domains": domains.len()}),
            ),
            ScanEnd::Failed(error) => (
                StageOutcome::Failed,
                json!({"error": error, "worker": self.config.name, "duration_ms": ms}),
            ),
        };
        let message = self.report(&job, outcome, detail)?;
        match publish_confirmed(self.broker.as_ref(), message, self.config.retry).await {
            Ok(()) => {
                self.reported.lock().insert(key);
                bump(match outcome {
                    StageOutcome::Completed => &self.stats.completed,
                    StageOutcome::Failed => &self.stats.failed,
                });
                tracing::info!(workflow = %job.workflow_id, attempt = job.attempt, %outcome,
                    "scan reported (confirmed); acking the job");
                Ok(Decision::Ack)
            }
            Err(e) => {
                bump(&self.stats.requeued);
                tracing::error!(workflow = %job.workflow_id, attempt = job.attempt, error = %e,
                    "report not confirmed: returning the job to the queue to be done again");
                Err(HandlerError(e.to_string()))
            }
        }
    }

    /// The job in a delivery, or why it is unreadable.
    fn read_job(&self, m: &Message) -> Result<StageJob, String> {
        let envelope = AmqpM8Message::<StageJob>::from_slice(&m.body)
            .map_err(|e| format!("not a stage job envelope: {e}"))?;
        let job = envelope.payload.ok_or_else(|| {
            format!(
                "message from {:?} on {:?} has no payload: a bootstrap-mode kick-off? This worker serves managed mode (see go_scanners for the Go scanners)",
                envelope.source, m.routing_key
            )
        })?;
        if job.stage != self.config.stage {
            return Err(format!(
                "job for stage {:?} delivered to the {:?} worker (check the queue bindings)",
                job.stage, self.config.stage
            ));
        }
        if job.attempt == 0 {
            return Err("attempt 0 is not an attempt (attempts start at 1)".into());
        }
        Ok(job)
    }

    fn report(
        &self,
        job: &StageJob,
        outcome: StageOutcome,
        detail: serde_json::Value,
    ) -> Result<OutgoingMessage, HandlerError> {
        let routing_key = outcome.routing_key(&job.stage);
        let result = StageResult {
            workflow_id: job.workflow_id,
            stage: job.stage.clone(),
            attempt: job.attempt,
            detail: Some(detail),
        };
        let body = AmqpM8Message::with_source(&routing_key, Some(result), &self.config.name)
            .to_vec()
            .map_err(|e| HandlerError(e.to_string()))?;
        Ok(OutgoingMessage::new(RESULT_EXCHANGE, routing_key, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amqp8::memory::{MemoryBroker, StoredMessage};
    use amqp8::{BindingDecl, ConsumeOptions, ExchangeDecl, QueueDecl, Topology};
    use model8::{DomainRef, WorkflowId};
    use std::time::Duration;

    const WAIT: Duration = Duration::from_secs(10);

    fn topology() -> Topology {
        let q = |name: &str| QueueDecl {
            name: name.into(),
            arguments: Default::default(),
        };
        let b = |e: &str, q: &str, k: &str| BindingDecl {
            exchange: e.into(),
            queue: q.into(),
            routing_key: k.into(),
        };
        Topology {
            exchanges: vec![
                ExchangeDecl {
                    name: "cptm8".into(),
                    kind: "topic".into(),
                },
                ExchangeDecl {
                    name: "dlx".into(),
                    kind: "direct".into(),
                },
            ],
            queues: vec![q("qasmm8"), q("results"), q("dlq")],
            bindings: vec![
                b("cptm8", "qasmm8", "cptm8.asmm8.#"),
                b("cptm8", "results", "cptm8.orchestratorm8.#"),
                b("dlx", "dlq", "qasmm8"),
            ],
        }
    }

    fn config(sim: ScanSim) -> StageWorkerConfig {
        StageWorkerConfig {
            name: "asmm8-sim".into(),
            stage: "asmm8".into(),
            sim,
            retry: RetryPolicy {
                initial: Duration::from_millis(1),
                max: Duration::from_millis(5),
                give_up_after: Duration::from_millis(100),
            },
        }
    }

    fn job(stage: &str, attempt: u32) -> (WorkflowId, Vec<u8>) {
        let id = WorkflowId::new_v4();
        let job = StageJob {
            workflow_id: id,
            stage: stage.into(),
            attempt,
            domains: vec![DomainRef {
                id: WorkflowId::new_v4(),
                name: "example.com".into(),
                companyname: "ACME".into(),
            }],
        };
        let body = AmqpM8Message::new("cptm8.asmm8.get.scan", Some(job))
            .to_vec()
            .unwrap();
        (id, body)
    }

    async fn start(b: &MemoryBroker, sim: ScanSim) -> (Arc<StageWorker>, amqp8::ConsumerHandle) {
        b.declare(&topology()).await.unwrap();
        let w = StageWorker::new(b.as_dyn(), config(sim), crate::scan::rng(Some(3)));
        let h = b
            .consume(
                ConsumeOptions {
                    queue: "qasmm8".into(),
                    tag: "casmm8".into(),
                    prefetch: 2,
                    autoack: false,
                    max_redeliveries: 5,
                    dead_letter: Some(("dlx".into(), "qasmm8".into())),
                },
                w.handler(),
            )
            .await
            .unwrap();
        (w, h)
    }

    fn publish(b: &MemoryBroker, body: Vec<u8>) {
        b.inject(
            "qasmm8",
            StoredMessage::new("cptm8", "cptm8.asmm8.get.scan", body),
        )
        .unwrap();
    }

    #[tokio::test]
    async fn reports_completed_with_the_job_ids_then_acks() {
        let b = MemoryBroker::new();
        let (w, _h) = start(&b, ScanSim::new(0, 0, 0.0, 0.0, 0).unwrap()).await;
        let (id, body) = job("asmm8", 2);
        publish(&b, body);
        assert!(
            b.wait_until(WAIT, |b| b.messages_in("results").len() == 1)
                .await
        );
        assert!(b.wait_until(WAIT, |b| b.unacked("qasmm8") == 0).await);
        let r = &b.messages_in("results")[0];
        assert_eq!(r.routing_key, "cptm8.orchestratorm8.asmm8.completed");
        let env = AmqpM8Message::<StageResult>::from_slice(&r.body).unwrap();
        assert_eq!(env.source, "asmm8-sim");
        assert_eq!(env.channel, r.routing_key);
        let p = env.payload.unwrap();
        assert_eq!(
            (p.workflow_id, p.stage.as_str(), p.attempt),
            (id, "asmm8", 2)
        );
        assert_eq!(p.detail.unwrap()["domains"], 1);
        assert!(b.messages_in("qasmm8").is_empty());
        assert_eq!(w.stats().completed, 1);
    }

    #[tokio::test]
    async fn failures_are_reported_with_an_error_detail() {
        let b = MemoryBroker::new();
        let (w, _h) = start(&b, ScanSim::new(0, 0, 1.0, 0.0, 0).unwrap()).await;
        publish(&b, job("asmm8", 1).1);
        assert!(
            b.wait_until(WAIT, |b| b.messages_in("results").len() == 1)
                .await
        );
        let r = &b.messages_in("results")[0];
        assert_eq!(r.routing_key, "cptm8.orchestratorm8.asmm8.failed");
        let p = AmqpM8Message::<StageResult>::from_slice(&r.body)
            .unwrap()
            .payload
            .unwrap();
        assert!(
            p.detail.unwrap()["error"]
                .as_str()
                .unwrap()
                .contains("simulated")
        );
        assert!(b.wait_until(WAIT, |b| b.unacked("qasmm8") == 0).await);
        assert_eq!(w.stats().failed, 1);
    }

    #[tokio::test]
    async fn unreadable_jobs_are_dead_lettered_with_the_reason() {
        let b = MemoryBroker::new();
        let (w, _h) = start(&b, ScanSim::new(0, 0, 0.0, 0.0, 0).unwrap()).await;
        publish(&b, b"not json".to_vec());
        publish(
            &b,
            br#"{"channel":"cptm8.asmm8.get.scan","timestamp":"2025-11-19T10:00:00Z","source":"orchestratorm8"}"#.to_vec(),
        );
        publish(&b, job("naabum8", 1).1);
        publish(&b, job("asmm8", 0).1);
        assert!(
            b.wait_until(WAIT, |b| b.messages_in("dlq").len() == 4)
                .await
        );
        let reasons: Vec<String> = b
            .messages_in("dlq")
            .iter()
            .map(|m| m.headers[amqp8::headers::DEATH_REASON].clone())
            .collect();
        assert!(
            reasons[0].contains("not a stage job envelope"),
            "{reasons:?}"
        );
        assert!(reasons[1].contains("no payload"), "{reasons:?}");
        assert!(reasons[2].contains("\"naabum8\""), "{reasons:?}");
        assert!(reasons[3].contains("attempt 0"), "{reasons:?}");
        assert!(b.messages_in("results").is_empty(), "nothing reported");
        assert_eq!(w.stats().dead_lettered, 4);
    }

    #[tokio::test]
    async fn copies_of_a_job_already_reported_are_acked_without_a_second_report() {
        let b = MemoryBroker::new();
        let (w, _h) = start(&b, ScanSim::new(0, 0, 0.0, 0.0, 0).unwrap()).await;
        let (id, body) = job("asmm8", 1);
        // As the orchestrator publishes it: message_id job:<workflow>:<stage>:<attempt>.
        let message = |redelivered: bool| {
            let mut m = StoredMessage::new("cptm8", "cptm8.asmm8.get.scan", body.clone());
            m.message_id = format!("job:{id}:asmm8:1");
            m.redelivered = redelivered;
            m
        };
        b.inject("qasmm8", message(false)).unwrap();
        assert!(
            b.wait_until(WAIT, |b| w.stats().completed == 1
                && b.unacked("qasmm8") == 0)
                .await
        );
        // A redelivery, and a copy re-published (not flagged redelivered): both dropped
        // by their message_id.
        b.inject("qasmm8", message(true)).unwrap();
        b.inject("qasmm8", message(false)).unwrap();
        assert!(b.wait_until(WAIT, |_| w.stats().duplicates == 2).await);
        assert!(
            b.wait_until(WAIT, |b| b.unacked("qasmm8") == 0
                && b.messages_in("qasmm8").is_empty())
                .await
        );
        assert_eq!(b.messages_in("results").len(), 1, "one report only");
    }

    #[tokio::test]
    async fn a_lost_job_is_acked_without_a_report() {
        let b = MemoryBroker::new();
        let (w, _h) = start(&b, ScanSim::new(0, 0, 0.0, 1.0, 0).unwrap()).await;
        publish(&b, job("asmm8", 1).1);
        assert!(
            b.wait_until(WAIT, |b| w.stats().lost == 1 && b.unacked("qasmm8") == 0)
                .await
        );
        assert!(b.messages_in("results").is_empty());
        assert!(b.messages_in("qasmm8").is_empty());
    }

    #[tokio::test]
    async fn an_unconfirmed_report_returns_the_job_to_the_queue() {
        let b = MemoryBroker::new();
        let (w, h) = start(&b, ScanSim::new(0, 0, 0.0, 0.0, 0).unwrap()).await;
        b.nack_next_publishes(u32::MAX);
        publish(&b, job("asmm8", 1).1);
        assert!(b.wait_until(WAIT, |_| w.stats().requeued >= 1).await);
        // The job is back (or being tried again): never acked while unreported.
        h.stop(Duration::from_secs(5)).await;
        assert_eq!(
            b.messages_in("qasmm8").len(),
            1,
            "the job is back in its queue"
        );
        assert!(b.messages_in("results").is_empty());
        assert_eq!(w.stats().completed, 0);
    }

    #[tokio::test]
    async fn stopping_returns_an_unfinished_scan_to_the_queue() {
        let b = MemoryBroker::new();
        let (w, h) = start(&b, ScanSim::new(60_000, 60_000, 0.0, 0.0, 0).unwrap()).await;
        publish(&b, job("asmm8", 1).1);
        assert!(b.wait_until(WAIT, |b| b.unacked("qasmm8") == 1).await);
        h.stop(Duration::from_millis(50)).await;
        assert_eq!(b.messages_in("qasmm8").len(), 1, "requeued, not lost");
        assert!(b.messages_in("qasmm8")[0].redelivered);
        assert!(b.messages_in("results").is_empty());
        assert_eq!(w.stats(), StatsSnapshot::default());
    }

    #[tokio::test]
    async fn stopping_lets_a_scan_within_the_grace_period_finish_and_report() {
        let b = MemoryBroker::new();
        let (_w, h) = start(&b, ScanSim::new(200, 200, 0.0, 0.0, 0).unwrap()).await;
        publish(&b, job("asmm8", 1).1);
        assert!(b.wait_until(WAIT, |b| b.unacked("qasmm8") == 1).await);
        h.stop(Duration::from_secs(10)).await;
        assert_eq!(b.messages_in("results").len(), 1);
        assert!(b.messages_in("qasmm8").is_empty(), "acked");
    }
}
