//! The consumer of stage results (`qorchestratorm8`): decode, check, apply the guarded
//! transition, and only then acknowledge.
//!
//! - malformed (bad routing key, body, payload, or a payload naming another stage than
//!   the routing key) → dead-lettered with the reason, counted;
//! - duplicate or stale (the attempt is not in flight) → acknowledged, nothing
//!   changes. A report that arrives before its job was recorded as running (a fast
//!   worker can answer before the publisher's confirm and record) applies at once: its
//!   attempt is `dispatched`, which a result moves like `running` (db8::transitions);
//! - the database fails → retried in place with backoff for a while (the delivery is
//!   held, unacknowledged, meanwhile), then returned to the queue (requeue), so a
//!   result is never lost to an outage and never bounces through the queue in a busy
//!   loop: an unavailable database is retried after 200 ms doubling to 10 s, any other
//!   database error (e.g. a full disk) after 1 s doubling to 30 s. Shutdown ends the
//!   wait at once and returns the delivery.

use std::sync::Arc;
use std::time::Duration;

use amqp8::{Decision, Delivery, Handler, HandlerError};
use async_trait::async_trait;
use db8::{DbError, StageKey, Transition, WorkflowFilter};
use model8::{StageOutcome, WorkflowStatus};

use super::Engine;
use super::backoff::Doubling;
use super::protocol::{self, Match, Report, Verdict};

/// Backoff of the result handler while the database is unavailable (a transient
/// error): first delay and cap.
pub(crate) const UNAVAILABLE_RETRY: (Duration, Duration) =
    (Duration::from_millis(200), Duration::from_secs(10));

/// Backoff of the result handler after any other database error (one that retrying
/// at once does not fix, e.g. a full disk): first delay and cap.
pub(crate) const DB_ERROR_RETRY: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(30));

/// Handles deliveries of the result queue.
#[derive(Debug, Clone)]
pub(crate) struct ResultHandler {
    pub(crate) engine: Arc<Engine>,
}

/// A result as checked, ready to apply.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CheckedResult {
    pub(crate) key: StageKey,
    pub(crate) outcome: StageOutcome,
    pub(crate) detail: Option<serde_json::Value>,
}

/// Checks a report-protocol delivery's routing key and body; `Err` is the dead-letter
/// reason.
#[cfg(test)]
pub(crate) fn check(routing_key: &str, body: &[u8]) -> Result<CheckedResult, String> {
    use super::protocol::{Match, Protocol, ReportProtocol, Verdict};
    let r = ReportProtocol.decode(routing_key, body)?;
    match (r.matched, r.verdict) {
        (Match::Attempt(key), Verdict::Outcome { outcome, detail }) => Ok(CheckedResult {
            key,
            outcome,
            detail,
        }),
        other => unreachable!("the report protocol names its attempt: {other:?}"),
    }
}

/// A short text for the failure reason of a worker's detail.
pub(crate) fn reason_of(detail: Option<&serde_json::Value>) -> String {
    const MAX: usize = 200;
    let text = match detail {
        None | Some(serde_json::Value::Null) => return "reported failed".into(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Object(o)) => match o.get("error").or_else(|| o.get("message")) {
            Some(serde_json::Value::String(s)) => s.clone(),
            _ => serde_json::Value::Object(o.clone()).to_string(),
        },
        Some(other) => other.to_string(),
    };
    if text.chars().count() > MAX {
        let mut t: String = text.chars().take(MAX).collect();
        t.push('…');
        t
    } else {
        text
    }
}

impl Engine {
    /// Applies a checked result (one guarded transaction) and its follow-ups.
    pub(crate) async fn apply_result(&self, r: &CheckedResult) -> Result<Transition, DbError> {
        let now = self.now();
        let t = match r.outcome {
            StageOutcome::Completed => {
                self.workflows
                    .complete_stage(&r.key, r.detail.clone(), now)
                    .await?
            }
            StageOutcome::Failed => {
                let reason = reason_of(r.detail.as_ref());
                self.fail_attempt(&r.key, false, &reason, r.detail.clone(), now)
                    .await?
            }
        };
        if t == Transition::Stale {
            // Counted by the caller, once it is sure (see `apply_result_patiently`).
            return Ok(t);
        }
        self.metrics.result_consumed(r.outcome);
        if let Transition::StageCompleted { workflow_completed } = &t {
            tracing::debug!(
                workflow = %r.key.workflow_id, stage = %r.key.stage, attempt = r.key.attempt,
                "stage completed"
            );
            if *workflow_completed {
                self.metrics.workflow_completed();
                tracing::info!(workflow = %r.key.workflow_id, "workflow completed");
                // Its notification is in the outbox (same transaction).
                self.outbox_wake.now();
            }
        }
        // A worker of this stage took a job off its queue (room for the next), and
        // dependents may be due.
        self.stage_has_room(&r.key.stage);
        Ok(t)
    }

    /// [`Engine::apply_result`], retrying while the database fails (for at most
    /// `db_outage_patience`, with the backoff of [`UNAVAILABLE_RETRY`] or
    /// [`DB_ERROR_RETRY`]). A shutdown ends the wait with an error, so that the
    /// delivery is returned to the queue at once.
    ///
    /// A result found stale is final: nothing is awaited. Its attempt is applied in
    /// one transaction guarded by its status (`dispatched` or `running` at that
    /// attempt), which the publisher's record (`mark_running`) only moves from one to
    /// the other: a result racing the record finds one of the two.
    async fn apply_result_patiently(&self, r: &CheckedResult) -> Result<Transition, DbError> {
        let started = tokio::time::Instant::now();
        let mut patience = Patience {
            db_give_up: started + self.tuning.db_outage_patience,
            unavailable: Doubling::new(UNAVAILABLE_RETRY),
            failing: Doubling::new(DB_ERROR_RETRY),
        };
        loop {
            match self.apply_result(r).await {
                Ok(Transition::Stale) => {
                    self.metrics.result_stale();
                    tracing::debug!(
                        workflow = %r.key.workflow_id, stage = %r.key.stage, attempt = r.key.attempt,
                        outcome = %r.outcome, "duplicate or stale result ignored"
                    );
                    return Ok(Transition::Stale);
                }
                Err(e) => self.hold_after_db_error(r, e, &mut patience).await?,
                other => return other,
            }
        }
    }

    /// Holds a result the database failed to apply for the next backoff step (never
    /// past the patience: the last wait is cut short, then one more try). `Err` when
    /// the patience is over or shutdown began.
    async fn hold_after_db_error(
        &self,
        r: &CheckedResult,
        e: DbError,
        p: &mut Patience,
    ) -> Result<(), DbError> {
        let now = tokio::time::Instant::now();
        if now >= p.db_give_up {
            return Err(e);
        }
        let delay = if e.is_transient() {
            p.unavailable.next_delay()
        } else {
            p.failing.next_delay()
        }
        .min(p.db_give_up - now);
        if e.is_transient() {
            tracing::warn!(
                workflow = %r.key.workflow_id, stage = %r.key.stage, attempt = r.key.attempt,
                error = %e, retry_in = ?delay,
                "cannot apply a stage result (database unavailable); holding it and retrying"
            );
        } else {
            tracing::error!(
                workflow = %r.key.workflow_id, stage = %r.key.stage, attempt = r.key.attempt,
                error = %e, retry_in = ?delay,
                "cannot apply a stage result (database error); holding it and retrying"
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => Ok(()),
            _ = self.shutdown.cancelled() => Err(e),
        }
    }
}

/// How long, and how, [`Engine::apply_result_patiently`] still holds one result.
struct Patience {
    db_give_up: tokio::time::Instant,
    unavailable: Doubling,
    failing: Doubling,
}

/// Why a report could not be resolved to an attempt and an outcome.
#[derive(Debug)]
enum Unresolved {
    /// A chain report while none of its stage's attempts runs: counted, acked.
    Unsolicited(String),
    /// The database failed, or shutdown began while waiting: returned to the queue.
    Retry(String),
}

impl Engine {
    /// The protocol of the stage a result routing key names (`report` for a key that
    /// names no stage of the pipeline: its checks then refuse what is malformed).
    pub(crate) fn protocol_of_key(&self, routing_key: &str) -> &'static dyn protocol::Protocol {
        let protocol = model8::chain::parse_report_key(routing_key)
            .and_then(|(stage, _)| self.plan().stage(stage))
            .map(|s| s.protocol)
            .unwrap_or_default();
        protocol::of(protocol)
    }

    /// The attempt of `stage` in flight (dispatched or running) in an active
    /// workflow (a chain stage has at most one): a report of the stage's scanner is
    /// about it, even before the publisher recorded it as running.
    pub(crate) async fn running_attempt(&self, stage: &str) -> Result<Option<StageKey>, DbError> {
        for status in [
            WorkflowStatus::Running,
            WorkflowStatus::Paused,
            WorkflowStatus::Pending,
        ] {
            let filter = WorkflowFilter {
                status: Some(status),
                ..WorkflowFilter::default()
            };
            for w in self.workflows.list(&filter).await? {
                if let Some(s) = w
                    .stages
                    .iter()
                    .find(|s| s.name == stage && db8::transitions::in_flight(s.status))
                {
                    return Ok(Some(StageKey {
                        workflow_id: w.id,
                        stage: stage.to_owned(),
                        attempt: s.attempt,
                    }));
                }
            }
        }
        Ok(None)
    }

    /// The message of an `app.error.*` notification from `source` that arrived within
    /// the error window of now, waiting for the rest of the window if none has yet.
    /// `None` when none came; `Err` when shutdown began meanwhile.
    pub(crate) async fn error_near_now(&self, source: &str) -> Result<Option<String>, ()> {
        let arrived = self.now();
        let give_up = tokio::time::Instant::now() + self.tuning.chain_error_window;
        loop {
            let seen = self.error_seen.notified();
            if let Some(m) = self.recent_errors.lock().find(source, arrived) {
                return Ok(Some(m.to_owned()));
            }
            tokio::select! {
                () = seen => {}
                () = tokio::time::sleep_until(give_up) => {
                    return Ok(self.recent_errors.lock().find(source, arrived).map(str::to_owned));
                }
                _ = self.shutdown.cancelled() => return Err(()),
            }
        }
    }

    /// Records an `app.error.*` notification from `source` (arrived now) and wakes
    /// the reports waiting for one.
    pub(crate) fn error_arrived(&self, source: &str, message: &str) {
        self.recent_errors
            .lock()
            .record(source, self.now(), message);
        self.error_seen.notify_waiters();
    }

    /// Resolves a decoded report to the attempt it is about and its outcome.
    async fn resolve(&self, report: Report) -> Result<CheckedResult, Unresolved> {
        let key = match report.matched {
            Match::Attempt(key) => key,
            Match::RunningOf(stage) => match self.running_attempt(&stage).await {
                Ok(Some(key)) => key,
                Ok(None) => return Err(Unresolved::Unsolicited(stage)),
                Err(e) => return Err(Unresolved::Retry(e.to_string())),
            },
        };
        let (outcome, detail) = match report.verdict {
            Verdict::Outcome { outcome, detail } => (outcome, detail),
            Verdict::CompletedUnlessError { source } => {
                let error = self
                    .error_near_now(&source)
                    .await
                    .map_err(|()| Unresolved::Retry("shutting down".into()))?;
                match protocol::chain_verdict(model8::chain::outcome(None, error.as_deref())) {
                    Verdict::Outcome { outcome, detail } => (outcome, detail),
                    Verdict::CompletedUnlessError { .. } => unreachable!("decided"),
                }
            }
        };
        Ok(CheckedResult {
            key,
            outcome,
            detail,
        })
    }
}

#[async_trait]
impl Handler for ResultHandler {
    async fn handle(&self, delivery: &mut Delivery) -> Result<Decision, HandlerError> {
        let protocol = self.engine.protocol_of_key(&delivery.routing_key);
        let report = match protocol.decode(&delivery.routing_key, &delivery.body) {
            Ok(r) => r,
            Err(reason) => {
                self.engine.metrics.message_dead_lettered();
                tracing::warn!(
                    routing_key = %delivery.routing_key, reason = %reason,
                    "malformed stage result dead-lettered"
                );
                return Ok(Decision::DeadLetter(reason));
            }
        };
        let checked = match self.engine.resolve(report).await {
            Ok(c) => c,
            Err(Unresolved::Unsolicited(stage)) => {
                self.engine.metrics.stage_report_unsolicited(&stage);
                tracing::info!(
                    stage = %stage, routing_key = %delivery.routing_key,
                    "report of a chain stage while none of its attempts runs: ignored"
                );
                return Ok(Decision::Ack);
            }
            Err(Unresolved::Retry(e)) => {
                tracing::warn!(routing_key = %delivery.routing_key, error = %e, "stage report returned to the queue");
                return Err(HandlerError(format!("cannot match the stage report: {e}")));
            }
        };
        match self.engine.apply_result_patiently(&checked).await {
            Ok(_) => Ok(Decision::Ack),
            Err(e) => {
                tracing::warn!(
                    workflow = %checked.key.workflow_id, stage = %checked.key.stage,
                    error = %e, "stage result returned to the queue"
                );
                Err(HandlerError(format!("cannot apply the stage result: {e}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use model8::AmqpM8Message;

    fn body(payload: serde_json::Value) -> Vec<u8> {
        AmqpM8Message::with_source("k", Some(payload), "asmm8")
            .to_vec()
            .unwrap()
    }

    #[test]
    fn check_accepts_a_well_formed_result() {
        let id = uuid::Uuid::new_v4();
        let c = check(
            "cptm8.orchestratorm8.asmm8.failed",
            &body(serde_json::json!({"workflow_id": id, "stage": "asmm8", "attempt": 2, "detail": "boom"})),
        )
        .unwrap();
        assert_eq!(
            c.key,
            StageKey {
                workflow_id: id,
                stage: "asmm8".into(),
                attempt: 2
            }
        );
        assert_eq!(c.outcome, StageOutcome::Failed);
        assert_eq!(c.detail, Some(serde_json::json!("boom")));
    }

    #[test]
    fn check_refuses_malformed_input_with_reasons() {
        let id = uuid::Uuid::new_v4();
        let good = serde_json::json!({"workflow_id": id, "stage": "asmm8", "attempt": 1});
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("cptm8.asmm8.get.scan", body(good.clone()), "routing key"),
            (
                "cptm8.orchestratorm8.asmm8.done",
                body(good.clone()),
                "routing key",
            ),
            (
                "cptm8.orchestratorm8.asmm8.completed",
                b"not json".to_vec(),
                "malformed",
            ),
            (
                "cptm8.orchestratorm8.asmm8.completed",
                br#"{"channel":"x","timestamp":"2025-01-01T00:00:00Z","source":"w"}"#.to_vec(),
                "no payload",
            ),
            (
                "cptm8.orchestratorm8.naabum8.completed",
                body(good.clone()),
                "payload names stage",
            ),
            (
                "cptm8.orchestratorm8.asmm8.completed",
                body(serde_json::json!({"workflow_id": "x", "stage": "asmm8", "attempt": 1})),
                "malformed",
            ),
            (
                "cptm8.orchestratorm8.asmm8.completed",
                body(serde_json::json!({"workflow_id": id, "stage": "asmm8", "attempt": 0})),
                "attempt 0",
            ),
        ];
        for (key, b, needle) in cases {
            let e = check(key, &b).unwrap_err();
            assert!(e.contains(needle), "{key}: {e:?} should contain {needle:?}");
        }
    }

    #[test]
    fn reasons_are_short_and_readable() {
        assert_eq!(reason_of(None), "reported failed");
        assert_eq!(
            reason_of(Some(&serde_json::json!("dns error"))),
            "dns error"
        );
        assert_eq!(reason_of(Some(&serde_json::json!({"error": "x"}))), "x");
        assert_eq!(reason_of(Some(&serde_json::json!({"n": 1}))), r#"{"n":1}"#);
        let long = "y".repeat(500);
        assert_eq!(
            reason_of(Some(&serde_json::json!(long))).chars().count(),
            201
        );
    }
}
