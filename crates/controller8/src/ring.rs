//! Bootstrap mode follows the scanners' ring (CONTRACT 3c, docs/ENGINE.md "Following
//! the ring").
//!
//! The consumer of [`RING_QUEUE`](crate::topology::RING_QUEUE) reads every kick-off (`cptm8.*.get.scan`) and every
//! platform notification (`app.#`) and turns each into a [`RingEvent`] ([`classify`]):
//!
//! - the orchestrator's own kick-off (or another orchestrator's) starts a stage;
//! - a scanner's chain message (`source` = a ring stage) ends that stage with the
//!   outcome of CONTRACT 3b and starts the stage it kicks;
//! - the Go services' hard-coded failover message (empty body, `app_id: asmm8`) is
//!   counted and nothing else;
//! - `app.error.*` / `app.warning.*` from a scanner are recorded on its stage.
//!
//! Each event is applied in one transaction with its key ([`RingRepository`]), then the
//! delivery is acked (persist, then ack): a redelivery, or the same message consumed by
//! another replica after a crash, changes nothing. The leader looks for stages silent
//! past their timeout ([`stall_loop`]) and reports each once (`app.warning.high`).
//! Nothing else is published.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use amqp8::{Decision, Delivery, Handler, HandlerError, PublishOutcome};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use config8::{Settings, StageSettings};
use db8::{
    RingApplied, RingEvent, RingMessage, RingRepository, RingStage, RingStall, StalledStage,
};
use model8::chain::{ScanPayload, is_failover};
use model8::{
    AmqpM8Message, Notification8, NotificationEvent, SOURCE_ORCHESTRATORM8,
    parse_platform_routing_key,
};

use crate::engine::Engine;
use crate::engine::backoff::Doubling;
use crate::engine::protocol::kickoff;
use crate::topology::NOTIFICATION_EXCHANGE;

/// The ring: `Workflow.stages` in order, with their timeouts.
pub(crate) fn ring_stages(settings: &Settings) -> Vec<RingStage> {
    settings
        .workflow
        .stages
        .iter()
        .map(|s| RingStage {
            name: s.name.clone(),
            timeout: s.timeout,
        })
        .collect()
}

/// What a delivery of the ring queue is.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Seen {
    /// Something to apply.
    Event(RingEvent),
    /// The hard-coded failover message.
    Failover,
    /// Nothing for the ring (why).
    Ignored(String),
}

/// Classifies a delivery of [`RING_QUEUE`](crate::topology::RING_QUEUE) received at `at`.
pub(crate) fn classify(
    ring: &[RingStage],
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    app_id: Option<&str>,
    at: DateTime<Utc>,
) -> Seen {
    let in_ring = |s: &str| ring.iter().any(|r| r.name == s);
    if is_failover(routing_key, body, app_id) {
        return Seen::Failover;
    }
    let envelope = match AmqpM8Message::<serde_json::Value>::from_slice(body) {
        Ok(e) => e,
        Err(e) => return Seen::Ignored(format!("not a CPTM8 envelope: {e}")),
    };
    let key = format!("{routing_key}|{}|{}", envelope.source, envelope.timestamp);
    let event = |message| {
        Seen::Event(RingEvent {
            key: key.clone(),
            at,
            message,
        })
    };
    if exchange == NOTIFICATION_EXCHANGE || routing_key.starts_with("app.") {
        let Some((kind, _)) = parse_platform_routing_key(routing_key) else {
            return Seen::Ignored("not a platform notification key".into());
        };
        if !in_ring(&envelope.source) {
            return Seen::Ignored(format!("notification from {:?}", envelope.source));
        }
        let message = envelope
            .payload
            .and_then(|p| serde_json::from_value::<Notification8>(p).ok())
            .map(|n| n.message)
            .unwrap_or_default();
        let source = envelope.source;
        return match kind {
            NotificationEvent::SystemError => event(RingMessage::Error { source, message }),
            NotificationEvent::SystemWarning => event(RingMessage::Warning { source, message }),
            _ => Seen::Ignored("neither an error nor a warning".into()),
        };
    }
    // The kick-off key's stage: `cptm8.<stage>.get.scan`.
    let Some(stage) = model8::routing::parse_stage_job_key(routing_key) else {
        return Seen::Ignored("not a kick-off key".into());
    };
    let stage = stage.to_owned();
    if envelope.source != SOURCE_ORCHESTRATORM8 && in_ring(&envelope.source) {
        let payload = envelope.payload.filter(|p| !p.is_null());
        let payload = match payload
            .map(serde_json::from_value::<ScanPayload>)
            .transpose()
        {
            Ok(p) => p,
            Err(e) => {
                return Seen::Ignored(format!(
                    "chain message of {} with an unreadable payload: {e}",
                    envelope.source
                ));
            }
        };
        return event(RingMessage::Chain {
            from: envelope.source,
            to: stage,
            payload,
        });
    }
    event(RingMessage::Kick { stage })
}

/// The handler of [`RING_QUEUE`](crate::topology::RING_QUEUE).
pub(crate) struct RingHandler {
    engine: Arc<Engine>,
    repo: Arc<dyn RingRepository>,
    ring: Vec<RingStage>,
}

impl RingHandler {
    pub(crate) fn new(
        engine: Arc<Engine>,
        repo: Arc<dyn RingRepository>,
        ring: Vec<RingStage>,
    ) -> Self {
        engine
            .metrics
            .ring
            .declare(&ring.iter().map(|r| r.name.clone()).collect::<Vec<_>>());
        RingHandler { engine, repo, ring }
    }

    /// Logs and counts what applying an event did.
    fn record(&self, applied: &RingApplied) {
        let m = &self.engine.metrics.ring;
        match applied {
            RingApplied::StageEnded {
                cycle,
                stage,
                status,
                duration,
                cycle_ended,
                next,
            } => {
                m.stage_ended(stage, duration.as_secs_f64());
                tracing::info!(%cycle, %stage, %status, ?duration, next = ?next.as_ref().map(|n| &n.1), "ring: stage ended");
                if let Some(s) = cycle_ended {
                    m.cycle_ended(s.as_str());
                    tracing::info!(%cycle, status = %s, "ring: cycle ended");
                }
            }
            RingApplied::StageStarted {
                cycle,
                stage,
                attempt,
                new_cycle,
            } => {
                tracing::info!(%cycle, %stage, attempt, new_cycle, "ring: stage kicked");
            }
            RingApplied::Rerun { stage } => {
                m.rerun(stage);
                tracing::info!(%stage, "ring: chain message of a stage not running (a redelivered kick-off scanned again); not a stage's end");
            }
            other => tracing::debug!(?other, "ring: message applied"),
        }
    }
}

#[async_trait]
impl Handler for RingHandler {
    async fn handle(&self, d: &mut Delivery) -> Result<Decision, HandlerError> {
        let now = self.engine.clock.now();
        let event = match classify(
            &self.ring,
            &d.exchange,
            &d.routing_key,
            &d.body,
            d.app_id.as_deref(),
            now,
        ) {
            Seen::Event(e) => e,
            Seen::Failover => {
                self.engine.metrics.ring.failover_kick();
                tracing::info!(routing_key = %d.routing_key, "ring: the Go services' failover message (a consumer channel closed somewhere); not a stage's end");
                return Ok(Decision::Ack);
            }
            Seen::Ignored(why) => {
                tracing::debug!(routing_key = %d.routing_key, %why, "ring: ignored");
                return Ok(Decision::Ack);
            }
        };
        let mut wait = Doubling::new((Duration::from_millis(200), Duration::from_secs(10)));
        let started = tokio::time::Instant::now();
        loop {
            match self.repo.ring_apply(&self.ring, &event).await {
                Ok(applied) => {
                    self.record(&applied);
                    return Ok(Decision::Ack);
                }
                Err(e) => {
                    if started.elapsed() >= self.engine.tuning.db_outage_patience {
                        tracing::warn!(error = %e, "ring: cannot record a ring message; returning it to the queue");
                        return Ok(Decision::Requeue);
                    }
                    let d = wait.next_delay();
                    tracing::warn!(error = %e, retry_in = ?d, "ring: cannot record a ring message; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = self.engine.shutdown.cancelled() => return Ok(Decision::Requeue),
                    }
                }
            }
        }
    }
}

/// The text of a stall's notification.
pub(crate) fn stall_message(s: &RingStall, timeout: Duration) -> String {
    let mut m = format!(
        "CPTM8 ring stalled: {} has sent no chain message for {}s (timeout {}s, attempt {}); the ring does not go on by itself",
        s.stage,
        s.silent_for.as_secs(),
        timeout.as_secs(),
        s.attempt
    );
    if let Some(w) = &s.message {
        m.push_str(&format!("; its last warning: {w}"));
    }
    m
}

/// What healing does with a stalled stage (CONTRACT 3c, `Scheduler.heal`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HealPlan {
    /// Not yet: its backoff runs until then.
    Wait,
    /// Kick the stalled stage again.
    Rekick(String),
    /// Attempts used up: give the stage up and kick the next one.
    Next(String),
}

/// The plan for stalled `st` at `now`: attempts left → re-kick once the backoff after
/// the stall passed (`Workflow.stages[].backoff`, no jitter), else the next stage of
/// the ring (after the last: the first).
pub(crate) fn heal_plan(
    stages: &[StageSettings],
    ring: &[RingStage],
    st: &StalledStage,
    now: DateTime<Utc>,
) -> HealPlan {
    let Some(cfg) = stages.iter().find(|s| s.name == st.stage) else {
        return HealPlan::Wait;
    };
    if st.attempt < cfg.max_attempts {
        let wait = crate::engine::backoff::exponential(&cfg.backoff, st.attempt);
        let due = st.since + chrono::Duration::from_std(wait).unwrap_or_default();
        return if now >= due {
            HealPlan::Rekick(st.stage.clone())
        } else {
            HealPlan::Wait
        };
    }
    let i = ring.iter().position(|r| r.name == st.stage).unwrap_or(0);
    HealPlan::Next(ring[(i + 1) % ring.len()].name.clone())
}

/// The leader's ring watch, every `Tuning::ring_check`: marks the stages silent past
/// their timeout as stalled and for each sends a `system_warning` on
/// `app.warning.high` naming the scanner and how long it has been silent; with
/// `heal`, then kicks stalled stages as [`heal_plan`] says (confirmed; a
/// `reject-publish` nack means the scanner's queue still holds a kick-off: busy, tried
/// again next round). A kick is sent once per stalled attempt (remembered in memory):
/// the kick-off, observed, starts the stage's next attempt.
pub(crate) async fn stall_loop(
    engine: Arc<Engine>,
    repo: Arc<dyn RingRepository>,
    ring: Vec<RingStage>,
    heal: bool,
) {
    let mut kicked: HashSet<(uuid::Uuid, String, u32)> = HashSet::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(engine.tuning.ring_check) => {}
            _ = engine.shutdown.cancelled() => return,
        }
        if !engine.is_leader() {
            continue;
        }
        let stalls = match repo.ring_stalls(&ring, engine.clock.now()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "ring: cannot check for stalled stages");
                continue;
            }
        };
        for s in stalls {
            engine.metrics.ring.stalled(&s.stage);
            let timeout = ring
                .iter()
                .find(|r| r.name == s.stage)
                .map_or(Duration::ZERO, |r| r.timeout);
            let text = stall_message(&s, timeout);
            tracing::warn!(cycle = %s.cycle, stage = %s.stage, silent_for = ?s.silent_for, "{text}");
            // Its warning is in the outbox (same transaction).
            engine.outbox_wake.now();
        }
        if heal && !ring.is_empty() {
            heal_round(&engine, repo.as_ref(), &ring, &mut kicked).await;
        }
    }
}

/// The `message_id` of the kick-off healing sends to `target` for stalled `stage` at
/// `attempt` of ring cycle `cycle` (docs/AMQP.md, "Message identity"):
/// `heal:<cycle>:<stage>:<attempt>:<target>`, the same whichever leader sends it.
pub(crate) fn heal_message_id(
    cycle: uuid::Uuid,
    stage: &str,
    attempt: u32,
    target: &str,
) -> String {
    format!("heal:{cycle}:{stage}:{attempt}:{target}")
}

/// One healing round over the stalled stages.
async fn heal_round(
    engine: &Engine,
    repo: &dyn RingRepository,
    ring: &[RingStage],
    kicked: &mut HashSet<(uuid::Uuid, String, u32)>,
) {
    let stalled = match repo.ring_stalled(ring).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "ring: cannot read the stalled stages");
            return;
        }
    };
    // The pipeline as at start, with the live `max_attempts` and `backoff`.
    let stages = engine.stages();
    for st in stalled {
        let id = (st.cycle, st.stage.clone(), st.attempt);
        if kicked.contains(&id) {
            continue;
        }
        let plan = heal_plan(&stages, ring, &st, engine.clock.now());
        let target = match &plan {
            HealPlan::Wait => continue,
            HealPlan::Rekick(t) | HealPlan::Next(t) => t.clone(),
        };
        let key = model8::chain::kickoff_routing_key(&target);
        let exchange = stages.iter().find(|s| s.name == target).map_or_else(
            || config8::DEFAULT_EXCHANGE.to_owned(),
            |s| s.exchange.clone(),
        );
        let message_id = heal_message_id(st.cycle, &st.stage, st.attempt, &target);
        let message = match kickoff(exchange, &key, message_id) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "ring: cannot encode a kick-off");
                return;
            }
        };
        match engine.broker.publish(message).await {
            Ok(PublishOutcome::Confirmed) => {
                kicked.insert(id);
                engine.metrics.ring.healed(&target);
                tracing::warn!(cycle = %st.cycle, stalled = %st.stage, attempt = st.attempt, kicked = %target, "ring healed: kick-off published");
                if let HealPlan::Next(_) = plan {
                    let why = format!(
                        "no chain message after {} attempts; healing kicked {target}",
                        st.attempt
                    );
                    if let Err(e) = repo
                        .ring_give_up(ring, st.cycle, &st.stage, &why, engine.clock.now())
                        .await
                    {
                        tracing::warn!(error = %e, stage = %st.stage, "ring: cannot record that healing gave the stage up");
                    }
                }
            }
            Ok(PublishOutcome::Nacked) => {
                tracing::info!(stage = %target, "ring: the scanner's queue still holds a kick-off (busy); healing tries again later");
            }
            Ok(PublishOutcome::Unroutable) => {
                tracing::warn!(stage = %target, routing_key = %key, "ring: healing kick-off unroutable (no queue bound)");
            }
            Err(e) => {
                tracing::warn!(stage = %target, error = %e, "ring: healing kick-off not published");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Vec<RingStage> {
        ["asmm8", "naabum8", "katanam8", "num8"]
            .map(|n| RingStage {
                name: n.into(),
                timeout: Duration::from_secs(7200),
            })
            .to_vec()
    }

    fn body(key: &str, source: &str, payload: Option<serde_json::Value>) -> Vec<u8> {
        AmqpM8Message::with_source(key, payload, source)
            .to_vec()
            .unwrap()
    }

    fn message(seen: Seen) -> RingMessage {
        match seen {
            Seen::Event(e) => e.message,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn what_each_message_on_the_ring_is() {
        let r = ring();
        let now = Utc::now();
        let k = "cptm8.asmm8.get.scan";
        // Our own kick-off (no payload) starts asmm8.
        assert_eq!(
            message(classify(
                &r,
                "cptm8",
                k,
                &body(k, "orchestratorm8", None),
                None,
                now
            )),
            RingMessage::Kick {
                stage: "asmm8".into()
            }
        );
        // num8's chain message ends num8 and kicks asmm8.
        let p = serde_json::json!({"status": "complete", "message": "ok"});
        let m = message(classify(
            &r,
            "cptm8",
            k,
            &body(k, "num8", Some(p)),
            None,
            now,
        ));
        assert!(
            matches!(&m, RingMessage::Chain { from, to, payload: Some(_) } if from == "num8" && to == "asmm8"),
            "{m:?}"
        );
        // The failover message: empty body, app_id asmm8.
        let f = "cptm8.naabum8.get.scan";
        assert_eq!(
            classify(&r, "cptm8", f, b"", Some("asmm8"), now),
            Seen::Failover
        );
        assert!(matches!(
            classify(&r, "cptm8", f, b"", None, now),
            Seen::Ignored(_)
        ));
        // Notifications of a scanner; ours are not the ring's.
        let n =
            Notification8::platform(NotificationEvent::SystemError, model8::Severity::High, "db");
        let nb = body(
            "app.error.high",
            "naabum8",
            Some(serde_json::to_value(&n).unwrap()),
        );
        assert_eq!(
            message(classify(
                &r,
                "notification",
                "app.error.high",
                &nb,
                None,
                now
            )),
            RingMessage::Error {
                source: "naabum8".into(),
                message: "db".into()
            }
        );
        let ours = body(
            "app.error.high",
            "orchestratorm8",
            Some(serde_json::to_value(&n).unwrap()),
        );
        assert!(matches!(
            classify(&r, "notification", "app.error.high", &ours, None, now),
            Seen::Ignored(_)
        ));
        // The same message twice has the same key; another one another key.
        let at = |ts: &str| {
            let mut e = AmqpM8Message::<serde_json::Value>::with_source(k, None, "num8");
            e.timestamp = ts.parse().unwrap();
            e.to_vec().unwrap()
        };
        let (b1, b2) = (at("2025-11-19T10:00:00.1Z"), at("2025-11-19T10:00:00.2Z"));
        let key = |b: &[u8]| match classify(&r, "cptm8", k, b, None, now) {
            Seen::Event(e) => e.key,
            other => panic!("{other:?}"),
        };
        let (a, b, c) = (key(&b1), key(&b2), key(&b2));
        assert_eq!(b, c);
        assert_ne!(a, b);
    }
}
