//! `amqp_recovery`: how long an amqp8 consumer takes to receive again after RabbitMQ
//! restarts. Five times (once with `--quick`): `rabbitmqctl stop_app`, `rabbitmqctl
//! start_app`, then the time from `start_app` returning to the consumer's handler seeing
//! a probe message of this cycle. Probes are published by a raw amqprs client every
//! 50 ms from the moment `start_app` returns (it reconnects as soon as the port
//! accepts), so the resolution is about 50 ms. Goal: median < 2 s (floor = the 2 s
//! budget; ratio = 2 s / median >= 1).
//!
//! Holds the EXCLUSIVE lock on /tmp/cptm8-services.lock throughout, and always starts
//! the RabbitMQ application again, even when the benchmark fails.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use amqp8::{ConsumeOptions, Decision, Delivery, Handler, HandlerError, Topology};
use amqprs::channel::{BasicPublishArguments, QueueDeleteArguments};
use async_trait::async_trait;
use tokio::sync::Notify;

use super::Outcomes;
use crate::ctx::{Ctx, list, median};
use crate::floors::raw_amqp::persistent_json;
use crate::report::{Better, Failure, Measured, Spec};
use crate::services::{amqp_connect, lock_exclusive, rabbit_settings, rabbitmqctl, unique_suffix};

/// The rows.
pub const SPECS: &[Spec] = &[Spec {
    name: "amqp_recovery.latency",
    unit: "s",
    better: Better::Lower,
    goal: 1.0,
    resolution: 0.05,
}];

/// The budget, seconds.
const BUDGET_S: f64 = 2.0;
/// How long one cycle may take before it counts as a failure.
const CYCLE_TIMEOUT: Duration = Duration::from_secs(120);
const PROBE_EVERY: Duration = Duration::from_millis(50);

/// Records when each cycle's first probe arrived.
struct Recorder {
    first: Mutex<HashMap<u32, Instant>>,
    arrived: Notify,
}

#[async_trait]
impl Handler for Recorder {
    async fn handle(&self, delivery: &mut Delivery) -> Result<Decision, HandlerError> {
        let now = Instant::now();
        let text = String::from_utf8_lossy(&delivery.body);
        if let Some(cycle) = text
            .strip_prefix("{\"probe\":")
            .and_then(|r| r.strip_suffix('}'))
            .and_then(|n| n.parse::<u32>().ok())
        {
            self.first.lock().entry(cycle).or_insert(now);
            self.arrived.notify_waiters();
        }
        Ok(Decision::Ack)
    }
}

/// Starts the RabbitMQ application again if dropped while armed.
struct RestartGuard {
    armed: bool,
}

impl Drop for RestartGuard {
    fn drop(&mut self) {
        if self.armed {
            eprintln!("bench8: amqp_recovery: restoring RabbitMQ (rabbitmqctl start_app)");
            if let Err(e) = rabbitmqctl(&["-q", "start_app"]) {
                eprintln!("bench8: amqp_recovery: could not restart RabbitMQ: {e:?}");
            }
        }
    }
}

/// Runs the benchmark.
pub async fn run(ctx: &Ctx) -> Outcomes {
    let broker = crate::ours::broker(&rabbit_settings("/")).await?;
    ctx.log("amqp_recovery", "waiting for the exclusive service lock");
    let _lock = lock_exclusive(Duration::from_secs(900)).await?;
    let queue = format!("bench8.recovery.{}", unique_suffix());
    let result = measure(ctx, &*broker, &queue).await;
    if let Ok(admin) = amqp_connect("/").await {
        if let Ok(ch) = admin.open_channel(None).await {
            let _ = ch.queue_delete(QueueDeleteArguments::new(&queue)).await;
        }
        let _ = admin.close().await;
    }
    result
}

async fn measure(ctx: &Ctx, broker: &dyn amqp8::Broker, queue: &str) -> Outcomes {
    let cycles = if ctx.quick { 1 } else { 5 };
    let exchange = "bench8.recovery";
    broker
        .declare(&Topology::topic_queue(exchange, queue, queue))
        .await?;
    let recorder = Arc::new(Recorder {
        first: Mutex::new(HashMap::new()),
        arrived: Notify::new(),
    });
    let handle = broker
        .consume(
            ConsumeOptions {
                queue: queue.into(),
                tag: "bench8-recovery".into(),
                prefetch: 10,
                autoack: false,
                max_redeliveries: 1000,
                dead_letter: None,
            },
            recorder.clone(),
        )
        .await?;
    let result = cycles_of(ctx, &recorder, queue, cycles).await;
    handle.stop(Duration::from_secs(5)).await;
    let samples = result?;
    let value = median(&samples);
    Ok(vec![(
        "amqp_recovery.latency",
        Ok(Measured {
            value,
            floor: BUDGET_S,
            detail: format!(
                "median of {cycles} stop_app/start_app cycles, from start_app returning to the \
                 amqp8 consumer (default RabbitMQ settings: retry_delay {:?}) handling a probe \
                 published every {} ms; seconds [{}]; floor = the 2 s budget",
                config8::RabbitMqSettings::default().pool.retry_delay,
                PROBE_EVERY.as_millis(),
                list(&samples)
            ),
        }),
    )])
}

async fn cycles_of(
    ctx: &Ctx,
    recorder: &Recorder,
    queue: &str,
    cycles: u32,
) -> Result<Vec<f64>, Failure> {
    // Cycle 0: the consumer works before any restart.
    let t0 = Instant::now();
    wait_for_probe(recorder, queue, 0, t0).await?;
    let mut samples = Vec::new();
    for cycle in 1..=cycles {
        let mut guard = RestartGuard { armed: true };
        rabbitmqctl(&["-q", "stop_app"])?;
        let started = rabbitmqctl(&["-q", "start_app"]);
        guard.armed = started.is_err();
        started?;
        let t0 = Instant::now();
        let latency = wait_for_probe(recorder, queue, cycle, t0).await?;
        ctx.log(
            "amqp_recovery",
            format!("cycle {cycle}: consumer receiving {latency:.2}s after start_app returned"),
        );
        samples.push(latency);
    }
    Ok(samples)
}

/// Publishes probes of `cycle` every [`PROBE_EVERY`] (reconnecting as needed) until the
/// consumer saw one; returns the seconds from `t0` to its arrival.
async fn wait_for_probe(
    recorder: &Recorder,
    queue: &str,
    cycle: u32,
    t0: Instant,
) -> Result<f64, Failure> {
    let body = format!("{{\"probe\":{cycle}}}").into_bytes();
    let mut connection = None;
    let mut channel: Option<amqprs::channel::Channel> = None;
    let mut last_error = String::from("none");
    loop {
        let arrived = recorder.first.lock().get(&cycle).copied();
        if let Some(at) = arrived {
            if let Some(ch) = channel.take() {
                let _ = ch.close().await;
            }
            if let Some(c) = connection.take() {
                let _ = amqprs::connection::Connection::close(c).await;
            }
            return Ok(at.saturating_duration_since(t0).as_secs_f64());
        }
        if t0.elapsed() > CYCLE_TIMEOUT {
            return Err(Failure::Error(format!(
                "the amqp8 consumer received nothing within {CYCLE_TIMEOUT:?} after start_app \
                 (cycle {cycle}; last probe error: {last_error})"
            )));
        }
        if channel.as_ref().is_none_or(|c| !c.is_open()) {
            channel = None;
            match amqp_connect("/").await {
                Ok(c) => match c.open_channel(None).await {
                    Ok(ch) => {
                        channel = Some(ch);
                        connection = Some(c);
                    }
                    Err(e) => last_error = e.to_string(),
                },
                Err(e) => last_error = format!("{e:?}"),
            }
        }
        if let Some(ch) = &channel
            && let Err(e) = ch
                .basic_publish(
                    persistent_json(),
                    body.clone(),
                    BasicPublishArguments::new("", queue),
                )
                .await
        {
            last_error = e.to_string();
            channel = None;
        }
        let notified = recorder.arrived.notified();
        let _ = tokio::time::timeout(PROBE_EVERY, notified).await;
    }
}
