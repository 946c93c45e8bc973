//! Attempts the broker nacks again and again (issue 18, item 4).
//!
//! RabbitMQ confirms a publish only when every queue its routing key reaches accepts
//! it. When a second queue bound to a stage's routing key is full and rejects
//! (`x-overflow: reject-publish`), every copy is nacked although the stage's own queue
//! received it; re-publishing the attempt then only adds copies. So the engine counts
//! the nacks of each attempt (in memory, by this leader):
//!
//! - at [`NACK_WARN_AFTER`] nacks it warns, naming the stage, the attempt, the exchange
//!   and the routing key, that another queue bound to that key may be refusing;
//! - an attempt is re-published at most [`MAX_NACKED_PUBLISHES`] times in a row while
//!   nacked; from then on each nack holds it back until the stage's `timeout` has
//!   passed (given back due then, not at once), so it costs one more copy per
//!   `timeout` at most, until a publish is confirmed (which forgets the count).
//!
//! A plain full stage queue (backpressure) is nacked the same way, but there the nack
//! is the stage's own queue saying "not now", and re-publishing later adds no copy. So
//! before counting, the engine reads the stage's own queue (its service section's
//! `queue`, when `x-max-length` is configured): when it holds its maximum, the nacks
//! are backpressure and the count is forgotten instead. Only nacks the stage's own
//! queue does not explain (it is unbounded, below its maximum, or cannot be read) are
//! counted.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use config8::StageSettings;
use db8::StageKey;
use parking_lot::Mutex;

use super::{Engine, plus};

/// Nacks of one attempt after which the engine warns.
pub(crate) const NACK_WARN_AFTER: u32 = 3;

/// Publishes of one attempt in a row that may be nacked before it is held back until
/// the stage's `timeout` after each further nack.
pub(crate) const MAX_NACKED_PUBLISHES: u32 = 5;

/// How long reading the stage's own queue after a nack may take.
const OWN_QUEUE_READ: Duration = Duration::from_secs(2);

/// Counts older than this without a new nack are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

/// How many counts are kept before the old ones are forgotten.
const PRUNE_ABOVE: usize = 10_000;

/// The nack counts of the attempts nacked lately: count and last nack.
#[derive(Debug, Default)]
pub(crate) struct NackCounts(Mutex<HashMap<StageKey, (u32, DateTime<Utc>)>>);

impl NackCounts {
    /// Forgets the counts of `keys`: their publish was confirmed, or their own full
    /// queue explains their nacks.
    pub(crate) fn forget(&self, keys: &[StageKey]) {
        let mut all = self.0.lock();
        if all.is_empty() {
            return;
        }
        for k in keys {
            all.remove(k);
        }
    }

    /// Counts one nack of each of `keys` at `now`; returns each key's count.
    fn count(&self, keys: &[StageKey], now: DateTime<Utc>) -> Vec<u32> {
        let mut all = self.0.lock();
        if all.len() > PRUNE_ABOVE {
            let horizon = now - chrono::Duration::from_std(FORGET_AFTER).unwrap_or_default();
            all.retain(|_, (_, at)| *at >= horizon);
        }
        keys.iter()
            .map(|k| {
                let e = all.entry(k.clone()).or_insert((0, now));
                e.0 = e.0.saturating_add(1);
                e.1 = now;
                e.0
            })
            .collect()
    }
}

impl Engine {
    /// Whether stage `stage`'s own queue holds its configured `x-max-length` now (its
    /// nacks are backpressure). `false` when it has no maximum or cannot be read.
    pub(super) async fn own_queue_full(&self, stage: &str) -> bool {
        let Some(section) = self.start_settings().orchestrator.queues.get(stage) else {
            return false;
        };
        let Some(max) = section.max_length() else {
            return false;
        };
        match tokio::time::timeout(OWN_QUEUE_READ, self.broker.queue_info(&section.queue)).await {
            Ok(Ok(info)) => i64::from(info.messages) >= max,
            Ok(Err(e)) => {
                tracing::debug!(stage, queue = %section.queue, error = %e, "stage queue unreadable after a nack; the nack is counted");
                false
            }
            Err(_) => false,
        }
    }

    /// Counts the nacks of `nacked` (attempts of `stage` just nacked), warns about
    /// those nacked [`NACK_WARN_AFTER`] times, and returns those to hold back (nacked
    /// at least [`MAX_NACKED_PUBLISHES`] times) with the time they are due again.
    pub(super) fn nacked(
        &self,
        stage: &StageSettings,
        nacked: &[StageKey],
        now: DateTime<Utc>,
    ) -> (Vec<StageKey>, DateTime<Utc>) {
        let timeout = self.stage_settings(&stage.name).timeout;
        let due = plus(now, timeout);
        let mut held = Vec::new();
        for (key, n) in nacked.iter().zip(self.nacks.count(nacked, now)) {
            if n == NACK_WARN_AFTER {
                tracing::warn!(
                    stage = %stage.name, workflow = %key.workflow_id, attempt = key.attempt,
                    exchange = %stage.exchange, routing_key = %stage.routing_key, nacks = n,
                    "a stage job was nacked {n} times in a row; RabbitMQ nacks a publish when \
                     any queue its routing key reaches refuses it, so another queue bound to \
                     routing key {:?} may be refusing (full, x-overflow: reject-publish) while \
                     the stage's queue receives every copy; after {MAX_NACKED_PUBLISHES} nacks \
                     the job is re-published only once per stage timeout",
                    stage.routing_key
                );
            }
            if n >= MAX_NACKED_PUBLISHES {
                if n == MAX_NACKED_PUBLISHES {
                    tracing::warn!(
                        stage = %stage.name, workflow = %key.workflow_id, attempt = key.attempt,
                        routing_key = %stage.routing_key, nacks = n, ?timeout, due = %due,
                        "a stage job was nacked {n} times; it is held back and re-published \
                         only after the stage's timeout (each further nack holds it back again)"
                    );
                }
                held.push(key.clone());
            }
        }
        (held, due)
    }
}

#[cfg(test)]
mod tests {
    //! A stray queue, full and `reject-publish`, bound to stage `a`'s routing key: every
    //! publish of `a` is nacked although `a`'s queue takes each copy.

    use std::time::Duration;

    use super::{MAX_NACKED_PUBLISHES, NACK_WARN_AFTER};
    use crate::testkit::{Harness, bounded, chain, q, rk, section};

    fn with_a_stray_full_queue() -> config8::Settings {
        let mut s = chain();
        let mut stray = section("stray", &bounded(0));
        stray.routing_keys = vec![rk("a")];
        s.orchestrator.queues.insert("stray".into(), stray);
        s
    }

    /// Advances the clock past stage `a`'s backpressure pause, if any.
    fn past_the_pause(h: &Harness) {
        if let Some(until) = h.engine.paused_until("a", h.clock_now()) {
            h.advance((until - h.clock_now()).to_std().unwrap() + Duration::from_millis(1));
        }
    }

    #[tokio::test]
    async fn an_attempt_nacked_again_and_again_is_held_back_until_the_stage_timeout() {
        const { assert!(NACK_WARN_AFTER < MAX_NACKED_PUBLISHES) };
        let h = Harness::new(with_a_stray_full_queue()).await;
        h.add_domain("a.example.com").await;
        h.create_unclaimed().await;
        for i in 1..=MAX_NACKED_PUBLISHES {
            past_the_pause(&h);
            let r = h.engine.dispatch().await.unwrap();
            assert_eq!((r.published, r.refused), (0, 1), "publish {i} nacked");
        }
        // Each nacked copy reached a's queue.
        let copies = || h.broker.messages_in(&q("a")).len();
        assert_eq!(copies(), MAX_NACKED_PUBLISHES as usize);
        // Held back: past the backpressure pause, nothing is due before the timeout.
        past_the_pause(&h);
        h.advance(Duration::from_secs(5));
        assert_eq!(h.engine.dispatch().await.unwrap(), Default::default());
        let wf = &h.wfs().await.unwrap()[0];
        assert_eq!(wf.stages[0].status, model8::StageStatus::Pending);
        assert_eq!(copies(), MAX_NACKED_PUBLISHES as usize);
        // After the stage's timeout (60 s): one more copy, nacked, held back again.
        h.advance(Duration::from_secs(60));
        let r = h.engine.dispatch().await.unwrap();
        assert_eq!((r.published, r.refused), (0, 1));
        assert_eq!(copies(), MAX_NACKED_PUBLISHES as usize + 1);
        past_the_pause(&h);
        h.advance(Duration::from_secs(5));
        assert_eq!(h.engine.dispatch().await.unwrap(), Default::default());
        assert_eq!(copies(), MAX_NACKED_PUBLISHES as usize + 1);
    }

    #[tokio::test]
    async fn a_full_own_queue_is_backpressure_and_never_holds_an_attempt_back() {
        let mut s = chain();
        s.orchestrator
            .queues
            .insert("a".into(), section("a", &bounded(1)));
        let h = Harness::new(s).await;
        h.add_domain("first.example.com").await;
        h.add_domain("second.example.com").await;
        h.create_unclaimed().await;
        // The first job fills a's queue; the second is nacked by it again and again.
        past_the_pause(&h);
        let r = h.engine.dispatch().await.unwrap();
        assert_eq!((r.published, r.refused), (1, 1));
        for i in 1..=MAX_NACKED_PUBLISHES + 2 {
            past_the_pause(&h);
            let r = h.engine.dispatch().await.unwrap();
            assert_eq!((r.published, r.refused), (0, 1), "publish {i} nacked");
        }
        // No copy reached the full queue, and once the worker takes the first job the
        // second goes out at the next round, not a stage timeout later.
        assert_eq!(h.broker.take(&q("a")).len(), 1);
        past_the_pause(&h);
        let r = h.engine.dispatch().await.unwrap();
        assert_eq!((r.published, r.refused), (1, 0));
        assert_eq!(h.broker.messages_in(&q("a")).len(), 1);
    }

    #[tokio::test]
    async fn a_confirmed_publish_forgets_the_count() {
        let h = Harness::new(chain()).await;
        let k = db8::StageKey {
            workflow_id: uuid::Uuid::new_v4(),
            stage: "a".into(),
            attempt: 1,
        };
        let stage = h.engine.stage_settings("a");
        for _ in 1..MAX_NACKED_PUBLISHES {
            let (held, _) = h
                .engine
                .nacked(&stage, std::slice::from_ref(&k), h.clock_now());
            assert!(held.is_empty());
        }
        h.engine.nacks.forget(std::slice::from_ref(&k));
        let (held, _) = h
            .engine
            .nacked(&stage, std::slice::from_ref(&k), h.clock_now());
        assert!(held.is_empty(), "counted from 1 again");
    }
}
