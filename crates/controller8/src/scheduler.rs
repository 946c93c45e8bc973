//! The loops that drive the engine. None of them busy-loops: each sleeps until its
//! next due time and is woken early by the events that concern it.
//!
//! - the **tick loop** (bootstrap check, or workflow creation in managed mode): at
//!   start, every `Scheduler.interval` (read live), on every domain change, when this
//!   replica becomes leader, and after a failure with a backoff of 1 s doubling to 30 s;
//! - the **dispatch loop** (managed mode, leader only): timeouts and stage dispatch,
//!   woken by new workflows, results, resumes, retry and deadline times, the end of a
//!   backpressure pause, and at least every `Tuning::due_poll`;
//! - the **retention loop** (leader only, both modes): deletes old finished workflows
//!   when this replica becomes leader and every minute (`Workflow.retention`);
//! - the **feed loop**: turns domain change events into wake-ups of the tick loop,
//!   resubscribing (with a resync) when the feed fails.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use db8::ChangeFeed;
use db8::DomainChange;
use futures::StreamExt;

use crate::bootstrap::Bootstrap;
use crate::engine::backoff::{Doubling, PRESSURE};
use crate::engine::dispatcher::StepError;
use crate::engine::{Engine, plus, until};
use crate::role::Role;

/// Shortest `Scheduler.interval` honoured (a smaller one is raised to this).
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Logs a failed step: transient outages as warnings, anything else as an error.
fn log_step_error(what: &str, e: &StepError, retry_in: Duration) {
    if e.is_transient() {
        tracing::warn!(error = %e, ?retry_in, "{what} failed; retrying");
    } else {
        tracing::error!(error = %e, ?retry_in, "{what} failed; retrying");
    }
}

/// The tick loop. `bootstrap` is `Some` in bootstrap mode.
pub(crate) async fn tick_loop(engine: Arc<Engine>, mut bootstrap: Option<Bootstrap>) {
    let mut settings = engine.settings.clone();
    let mut role = engine.role.clone();
    let (mut settings_open, mut role_open) = (true, true);
    let mut last_tick = engine.now();
    let mut failures = Doubling::new(PRESSURE);
    let mut retry_at: Option<DateTime<Utc>> = None;
    let mut run_now = true;
    let what = match bootstrap {
        Some(_) => "bootstrap check",
        None => "scheduler check",
    };
    loop {
        if engine.stopping() {
            break;
        }
        if run_now {
            run_now = false;
            let started = Instant::now();
            let result = match &mut bootstrap {
                Some(b) => b.check(&engine).await.map(|_| ()),
                None => engine
                    .start_workflows()
                    .await
                    .map(|_| ())
                    .map_err(StepError::from),
            };
            engine.metrics.tick_finished(started.elapsed());
            match result {
                Ok(()) => {
                    failures.reset();
                    retry_at = None;
                }
                Err(e) => {
                    let d = failures.next_delay();
                    log_step_error(what, &e, d);
                    retry_at = Some(plus(engine.now(), d));
                }
            }
        }
        let interval = engine.live().scheduler.interval.max(MIN_INTERVAL);
        let next_tick = plus(last_tick, interval);
        let wake_at = retry_at.map_or(next_tick, |r| r.min(next_tick));
        let sleep = until(engine.now(), wake_at);
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {
                let now = engine.now();
                if now >= next_tick {
                    last_tick = now;
                }
                run_now = true;
            }
            _ = engine.start_wake.notified() => run_now = true,
            r = settings.changed(), if settings_open => {
                // A new interval applies from the last tick; nothing else to do here.
                settings_open = r.is_ok();
            }
            r = role.changed(), if role_open => {
                role_open = r.is_ok();
                if role_open && *role.borrow_and_update() == Role::Leader {
                    run_now = true;
                }
            }
            _ = engine.shutdown.cancelled() => break,
        }
    }
}

/// The dispatch loop (managed mode).
pub(crate) async fn dispatch_loop(engine: Arc<Engine>) {
    let mut role = engine.role.clone();
    let mut role_open = true;
    let mut failures = Doubling::new(PRESSURE);
    loop {
        if engine.stopping() {
            break;
        }
        if !engine.is_leader() {
            tokio::select! {
                r = role.changed(), if role_open => role_open = r.is_ok(),
                _ = engine.shutdown.cancelled() => break,
                // Without a role sender there is nothing to wait for but shutdown.
                _ = std::future::pending::<()>(), if !role_open => {}
            }
            continue;
        }
        let started = Instant::now();
        let result = async {
            let expired = engine.expire_timeouts().await?;
            let report = engine.dispatch().await?;
            Ok::<_, StepError>((expired, report))
        }
        .await;
        let mut retry_at = None;
        match result {
            Ok((expired, report)) => {
                failures.reset();
                if report.published > 0 || report.refused > 0 || expired > 0 {
                    tracing::debug!(
                        published = report.published, refused = report.refused, expired,
                        elapsed = ?started.elapsed(), "dispatch round"
                    );
                }
            }
            Err(e) => {
                let d = failures.next_delay();
                log_step_error("dispatch", &e, d);
                retry_at = Some(plus(engine.now(), d));
            }
        }
        let now = engine.now();
        let poll = plus(now, engine.tuning.due_poll.max(MIN_INTERVAL));
        let next = [engine.dispatch_wake.next_after(now), retry_at]
            .into_iter()
            .flatten()
            .fold(poll, Ord::min);
        tokio::select! {
            _ = tokio::time::sleep(until(now, next)) => {}
            _ = engine.dispatch_wake.notified() => {}
            r = role.changed(), if role_open => role_open = r.is_ok(),
            _ = engine.shutdown.cancelled() => break,
        }
    }
}

/// The retention loop: a [`Engine::prune`] pass when this replica becomes leader and
/// every [`RETENTION_EVERY`](crate::engine::retention::RETENTION_EVERY); a failure is
/// logged and retried at the next pass.
pub(crate) async fn retention_loop(engine: Arc<Engine>) {
    let mut role = engine.role.clone();
    let mut role_open = true;
    loop {
        if engine.stopping() {
            break;
        }
        if engine.is_leader()
            && let Err(e) = engine.prune().await
        {
            tracing::warn!(error = %e, "retention pass failed; retried at the next one");
        }
        tokio::select! {
            _ = tokio::time::sleep(crate::engine::retention::RETENTION_EVERY) => {}
            r = role.changed(), if role_open => role_open = r.is_ok(),
            _ = engine.shutdown.cancelled() => break,
        }
    }
}

/// The feed loop: domain changes wake the tick loop (and, after a resync, the
/// dispatcher too).
pub(crate) async fn feed_loop(engine: Arc<Engine>, feed: Arc<dyn ChangeFeed>) {
    let mut failures = Doubling::new(PRESSURE);
    loop {
        let subscribed = tokio::select! {
            s = feed.subscribe() => s,
            _ = engine.shutdown.cancelled() => return,
        };
        let mut stream = match subscribed {
            Ok(s) => s,
            Err(e) => {
                let d = failures.next_delay();
                tracing::warn!(error = %e, retry_in = ?d, "cannot subscribe to domain changes; retrying (the periodic check still runs)");
                tokio::select! {
                    _ = tokio::time::sleep(d) => continue,
                    _ = engine.shutdown.cancelled() => return,
                }
            }
        };
        failures.reset();
        // Changes may have been missed before subscribing (or while unsubscribed).
        engine.start_wake.now();
        engine.dispatch_wake.now();
        loop {
            let event = tokio::select! {
                e = stream.next() => e,
                _ = engine.shutdown.cancelled() => return,
            };
            match event {
                Some(DomainChange::Changed) => engine.start_wake.now(),
                Some(DomainChange::Resync) => {
                    tracing::debug!("domain change feed resynchronised");
                    engine.start_wake.now();
                    engine.dispatch_wake.now();
                }
                None => {
                    tracing::warn!("domain change feed ended; subscribing again");
                    break;
                }
            }
        }
        let d = failures.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = engine.shutdown.cancelled() => return,
        }
    }
}
