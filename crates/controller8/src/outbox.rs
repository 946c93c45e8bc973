//! The outbox relay: publishes the rows the transitions wrote into the outbox
//! (`db8::OutboxRepository`: a workflow's completion or failure notification, a ring
//! stall warning) with publisher confirms, and deletes each once the broker confirmed
//! it (docs/ENGINE.md, "Outbox").
//!
//! - Every replica relays: a round claims rows no live claim holds (`FOR UPDATE SKIP
//!   LOCKED`, for [`Tuning::outbox_lease`]), so replicas share the rows and never
//!   publish one at the same time.
//! - At least once: a row is deleted only after its confirm. A relay killed between
//!   the two leaves the row claimed; once the lease ends it is claimed and published
//!   again. Every copy carries the row's id as its AMQP `message_id` (and the same
//!   body, stamped with the transition's time), so a consumer drops copies.
//! - The broker away (a publish error): the rows are released and the relay backs off
//!   (200 ms doubling to 10 s) until it returns. A nacked row (a full queue) is due
//!   again after its own backoff (1 s doubling to 60 s per failed attempt).
//! - Unroutable (no queue bound on the notification exchange): nobody listens, as
//!   when the notification was published directly; the row is deleted and counted.
//!
//! [`Tuning::outbox_lease`]: crate::Tuning::outbox_lease

use std::sync::Arc;
use std::time::Duration;

use amqp8::{OutgoingMessage, PublishOutcome};
use db8::{OutboxEvent, OutboxRepository, OutboxRow, RingStall};
use model8::{AmqpM8Message, GoTime, Notification8, NotificationEvent, Severity};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use uuid::Uuid;

use crate::engine::backoff::Doubling;
use crate::engine::notify::{Ending, notification};
use crate::engine::results::reason_of;
use crate::engine::{Engine, plus};
use crate::metrics::{OutcomeLabel, registered, registered_seconds};
use crate::topology::NOTIFICATION_EXCHANGE;

/// The relay's backoff while the broker (or the database) is away: first delay, cap.
const AWAY_BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(10));

/// A row that was nacked (or cannot be encoded) is due again after this, doubling per
/// failed attempt up to [`ROW_BACKOFF_MAX`].
const ROW_BACKOFF: Duration = Duration::from_secs(1);

/// See [`ROW_BACKOFF`].
const ROW_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The AMQP message of an outbox row: the notification its event causes, on the
/// `notification` exchange, `message_id` the row's id, the envelope's timestamp the
/// transition's time (so every copy has the same id and body). `Err`: the row holds
/// an event this version does not know.
pub(crate) fn message_of(row: &OutboxRow) -> Result<OutgoingMessage, String> {
    let n = match OutboxEvent::from_json(&row.event)? {
        OutboxEvent::WorkflowCompleted {
            workflow_id,
            domains,
        } => notification(workflow_id, &domains, &Ending::Completed),
        OutboxEvent::WorkflowFailed {
            workflow_id,
            domains,
            stage,
            attempt,
            detail,
        } => notification(
            workflow_id,
            &domains,
            &Ending::Failed {
                stage,
                attempt,
                reason: reason_of(detail.as_ref()),
            },
        ),
        OutboxEvent::RingStalled {
            cycle,
            stage,
            attempt,
            silent_for_secs,
            timeout_secs,
            message,
        } => {
            let stall = RingStall {
                cycle,
                stage,
                attempt,
                silent_for: Duration::from_secs(silent_for_secs),
                message,
            };
            let text = crate::ring::stall_message(&stall, Duration::from_secs(timeout_secs));
            Notification8::platform(NotificationEvent::SystemWarning, Severity::High, text)
        }
    };
    let key = n.platform_routing_key();
    let mut envelope = AmqpM8Message::new(key.as_str(), Some(n));
    envelope.timestamp = GoTime::from_utc(row.created_at);
    let body = envelope.to_vec().map_err(|e| {
        format!(
            "cannot encode the notification of outbox row {}: {e}",
            row.id
        )
    })?;
    Ok(OutgoingMessage::new(NOTIFICATION_EXCHANGE, key, body).with_message_id(row.id.to_string()))
}

/// When a row that failed `attempts` times before (and once more now) is due again.
fn row_delay(attempts: u32) -> Duration {
    ROW_BACKOFF
        .saturating_mul(2u32.saturating_pow(attempts.min(16)))
        .min(ROW_BACKOFF_MAX)
}

/// What a relay round found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Round {
    /// A full batch: there may be more at once.
    More,
    /// Nothing more due now.
    Idle,
    /// The broker or the database is away: back off.
    Away,
}

/// Runs the relay until shutdown: a round whenever a transition wrote a row
/// ([`Engine::outbox_wake`]) and at least every [`crate::Tuning::outbox_poll`] (rows of
/// other replicas, rows of a dead relay whose lease ended, rows due after a backoff).
pub(crate) async fn relay_loop(engine: Arc<Engine>, outbox: Arc<dyn OutboxRepository>) {
    let mut away = Doubling::new(AWAY_BACKOFF);
    loop {
        let round = relay_round(&engine, outbox.as_ref()).await;
        update_gauges(&engine, outbox.as_ref()).await;
        let delay = match round {
            Round::More => {
                away.reset();
                continue;
            }
            Round::Idle => {
                away.reset();
                engine.tuning.outbox_poll
            }
            Round::Away => away.next_delay(),
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = engine.outbox_wake.notified(), if round == Round::Idle => {}
            _ = engine.shutdown.cancelled() => return,
        }
        if engine.stopping() {
            return;
        }
    }
}

/// Relays every row due now (rounds until none is left or the broker is away).
#[cfg(test)]
pub(crate) async fn relay_due(engine: &Engine) {
    while relay_round(engine, engine.outbox.as_ref()).await == Round::More {}
}

/// Claims a batch, publishes it, deletes what was confirmed and releases the rest.
async fn relay_round(engine: &Engine, outbox: &dyn OutboxRepository) -> Round {
    let batch = engine.tuning.outbox_batch.max(1);
    let now = engine.now();
    let rows = match outbox
        .outbox_claim(engine.owner, now, engine.tuning.outbox_lease, batch)
        .await
    {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "outbox: cannot claim rows to relay; retrying");
            return Round::Away;
        }
    };
    if rows.is_empty() {
        return Round::Idle;
    }
    let full = rows.len() >= batch;
    let (messages, sent, mut later) = encode(&rows);
    let outcomes = if messages.is_empty() {
        Ok(Vec::new())
    } else {
        engine.broker.publish_many(messages).await
    };
    let (done, away) = match outcomes {
        Ok(outcomes) => (sort_outcomes(engine, &sent, outcomes, &mut later), false),
        Err(e) => {
            engine.metrics.outbox.relay_failed("broker_away");
            tracing::warn!(rows = sent.len(), error = %e, "outbox: cannot publish; the rows stay in the outbox and are retried");
            later.extend(sent.iter().copied());
            (Vec::new(), true)
        }
    };
    if !settle(engine, outbox, &done, &later).await || away {
        Round::Away
    } else if full {
        Round::More
    } else {
        Round::Idle
    }
}

/// The messages of `rows`, with the rows they come from, and the rows this version
/// cannot relay (left for a newer one).
fn encode(rows: &[OutboxRow]) -> (Vec<OutgoingMessage>, Vec<&OutboxRow>, Vec<&OutboxRow>) {
    let mut messages = Vec::with_capacity(rows.len());
    let mut sent = Vec::with_capacity(rows.len());
    let mut later = Vec::new();
    for row in rows {
        match message_of(row) {
            Ok(m) => {
                messages.push(m);
                sent.push(row);
            }
            Err(e) => {
                tracing::error!(row = %row.id, error = %e, "outbox: a row cannot be relayed by this version; left for a newer one");
                later.push(row);
            }
        }
    }
    (messages, sent, later)
}

/// The rows of `sent` that are done (confirmed, or unroutable: no queue wants them);
/// those the broker refused go to `later`.
fn sort_outcomes<'a>(
    engine: &Engine,
    sent: &[&'a OutboxRow],
    outcomes: Vec<PublishOutcome>,
    later: &mut Vec<&'a OutboxRow>,
) -> Vec<Uuid> {
    let mut done = Vec::with_capacity(sent.len());
    for (row, outcome) in sent.iter().zip(outcomes) {
        match outcome {
            PublishOutcome::Confirmed => {
                engine.metrics.outbox.relayed("confirmed");
                done.push(row.id);
            }
            PublishOutcome::Unroutable => {
                engine.metrics.outbox.relayed("unroutable");
                tracing::debug!(row = %row.id, "outbox: notification unroutable: no queue bound on the notification exchange");
                done.push(row.id);
            }
            PublishOutcome::Nacked => {
                engine.metrics.outbox.relay_failed("nacked");
                tracing::warn!(row = %row.id, attempts = row.attempts + 1, "outbox: notification refused by the broker (queue full); retrying later");
                later.push(row);
            }
        }
    }
    done
}

/// Deletes the rows `done` and releases `later` (due again after their backoff).
/// `false` when the database failed (what is left is retried when its claim ends).
async fn settle(
    engine: &Engine,
    outbox: &dyn OutboxRepository,
    done: &[Uuid],
    later: &[&OutboxRow],
) -> bool {
    if let Err(e) = outbox.outbox_delete(done).await {
        // Published but still there: published again once the lease ends (a copy
        // with the same message_id).
        tracing::warn!(rows = done.len(), error = %e, "outbox: cannot delete relayed rows; they will be published again");
        return false;
    }
    let now = engine.now();
    for row in later {
        let due = plus(now, row_delay(row.attempts));
        if let Err(e) = outbox.outbox_release(&[row.id], engine.owner, due).await {
            tracing::warn!(row = %row.id, error = %e, "outbox: cannot release a row; it is retried when its claim ends");
            return false;
        }
    }
    true
}

/// Refreshes the depth and oldest-age gauges.
pub(crate) async fn update_gauges(engine: &Engine, outbox: &dyn OutboxRepository) {
    match outbox.outbox_stats().await {
        Ok(s) => {
            let age = s.oldest.map_or(0.0, |t| {
                (engine.now() - t).to_std().map_or(0.0, |d| d.as_secs_f64())
            });
            engine.metrics.outbox.set(s.depth, age);
        }
        Err(e) => tracing::debug!(error = %e, "outbox: cannot read its depth"),
    }
}

/// The outbox's metrics, registered in the orchestrator's registry by
/// [`crate::metrics::Metrics::new`].
#[derive(Debug)]
pub(crate) struct OutboxMetrics {
    depth: Gauge,
    oldest_age: Gauge<f64, AtomicU64>,
    relayed: Family<OutcomeLabel, Counter>,
    failures: Family<OutcomeLabel, Counter>,
}

impl OutboxMetrics {
    /// The outbox metrics, registered in `r`.
    pub(crate) fn registered(r: &mut Registry) -> OutboxMetrics {
        let m = OutboxMetrics {
            depth: registered(
                r,
                "outbox_depth",
                "Outbox rows (notifications written with their state change) not yet relayed to RabbitMQ, as last read by this replica",
            ),
            oldest_age: registered_seconds(
                r,
                "outbox_oldest_age",
                "Age of the oldest outbox row, as last read by this replica (0 when empty)",
                Gauge::default(),
            ),
            relayed: registered(
                r,
                "outbox_relayed",
                "Outbox rows relayed and deleted, by outcome (confirmed, or unroutable: no queue bound)",
            ),
            failures: registered(
                r,
                "outbox_relay_failures",
                "Outbox relay attempts that left the row for later, by cause (nacked, broker_away)",
            ),
        };
        for outcome in ["confirmed", "unroutable"] {
            let _ = m.relayed.get_or_create(&OutcomeLabel { outcome });
        }
        m
    }

    /// A row was relayed (`confirmed` or `unroutable`) and deleted.
    pub(crate) fn relayed(&self, outcome: &'static str) {
        self.relayed.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// A relay attempt left the row for later.
    pub(crate) fn relay_failed(&self, outcome: &'static str) {
        self.failures.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// The depth and the oldest row's age just read.
    pub(crate) fn set(&self, depth: u64, oldest_age_secs: f64) {
        self.depth.set(i64::try_from(depth).unwrap_or(i64::MAX));
        self.oldest_age.set(oldest_age_secs);
    }
}
