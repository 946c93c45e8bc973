//! Live settings without a test elsewhere: a stage's `backoff.*` changed while the
//! engine runs applies to the next retry, and `config8::diff` reports it live. (The
//! other live keys are tested where their behaviour is: `engine/tests.rs`,
//! `fairness_tests.rs`, `window_tests.rs`, `retention_tests.rs`, the scheduler's
//! interval in `controller/tests.rs`, `HTTP.*` in `http/tests.rs` and
//! `LeaderElection.check_interval` in `leader.rs`.)

use std::time::Duration;

use amqp8::memory::Settlement;
use model8::{StageJob, StageOutcome};

use crate::testkit::{Harness, chain};

/// Reports `job` failed (acked).
async fn fail(h: &Harness, job: &StageJob) {
    assert_eq!(h.report(job, StageOutcome::Failed).await, Settlement::Ack);
}

/// Advances the clock by `d` and runs a dispatch round: how many jobs it published.
async fn after(h: &Harness, d: Duration) -> u64 {
    h.advance(d);
    h.engine.dispatch().await.unwrap().published
}

/// Fails attempt 1 of a new workflow's stage `a` and takes its retry (backoff 10 s,
/// jitter: due within 10 s).
async fn first_retry(h: &Harness) -> StageJob {
    let job = h.start_one().await;
    fail(h, &job).await;
    assert_eq!(after(h, Duration::from_millis(10_100)).await, 1);
    let retry = h.take_jobs("a").remove(0);
    assert_eq!(retry.attempt, 2);
    retry
}

#[tokio::test]
async fn backoff_initial_applies_live_and_is_reported_live() {
    let h = Harness::new(chain()).await;
    let r = h.update(|s| s.workflow.stages[0].backoff.initial = Duration::from_secs(100));
    assert_eq!(r.live, ["Workflow.stages.a.backoff.initial"]);
    assert!(!r.needs_restart(), "{r:?}");
    let job = h.start_one().await;
    fail(&h, &job).await;
    // The old 10 s would be over (due within 10 s); the new 100 s: due in [50 s, 100 s].
    assert_eq!(after(&h, Duration::from_secs(49)).await, 0);
    assert_eq!(after(&h, Duration::from_millis(51_100)).await, 1);
}

#[tokio::test]
async fn backoff_multiplier_applies_live_and_is_reported_live() {
    let h = Harness::new(chain()).await;
    let retry = first_retry(&h).await;
    let r = h.update(|s| s.workflow.stages[0].backoff.multiplier = 5.0);
    assert_eq!(r.live, ["Workflow.stages.a.backoff.multiplier"]);
    assert!(!r.needs_restart(), "{r:?}");
    fail(&h, &retry).await;
    // Doubling would give 20 s (due within 20 s); five times: 50 s, due in [25 s, 50 s].
    assert_eq!(after(&h, Duration::from_millis(24_900)).await, 0);
    assert_eq!(after(&h, Duration::from_millis(25_200)).await, 1);
}

#[tokio::test]
async fn backoff_max_applies_live_and_is_reported_live() {
    let mut s = chain();
    s.workflow.stages[0].backoff.multiplier = 10.0;
    let h = Harness::new(s).await;
    let retry = first_retry(&h).await;
    let r = h.update(|s| s.workflow.stages[0].backoff.max = Duration::from_secs(10));
    assert_eq!(r.live, ["Workflow.stages.a.backoff.max"]);
    assert!(!r.needs_restart(), "{r:?}");
    fail(&h, &retry).await;
    // The old cap (60 s) would give [30 s, 60 s]; the new one 10 s: due within 10 s.
    assert_eq!(after(&h, Duration::from_millis(10_100)).await, 1);
}
