//! `amqp_publish`: bulk confirmed publishing of 100,000 persistent 300-byte messages
//! through amqp8's `Broker::publish_many`, vs a minimal raw amqprs publisher with
//! publisher confirms and a window of 1,000 outstanding messages (acks with `multiple`
//! counted), same broker, same run. Goal: ratio >= 0.9.
//!
//! Both publish to a durable topic exchange bound to a fresh durable queue, with
//! `mandatory` set (as the engine publishes), and are timed from the first publish to
//! the last confirm, with their connection already open. The order of the two sides
//! alternates between repetitions.

use std::time::{Duration, Instant};

use amqp8::{OutgoingMessage, PublishOutcome};

use super::Outcomes;
use crate::ctx::{Ctx, list, median};
use crate::floors::raw_amqp::{QueueProbe, declare_queue, delete_queue, publish_confirmed};
use crate::procfs::{clock_ticks_per_second, own_cpu_seconds};
use crate::report::{Better, Failure, Measured, Spec};
use crate::services::{amqp_connect, lock_shared, rabbit_settings, unique_suffix};
use crate::workload::{MESSAGE_BYTES, message_bodies};

/// The rows.
pub const SPECS: &[Spec] = &[Spec {
    name: "amqp_publish.throughput",
    unit: "msg/s",
    better: Better::Higher,
    goal: 0.9,
    resolution: 0.0,
}];

/// Unconfirmed messages the raw publisher allows at once.
pub const WINDOW: usize = 1000;
const TIMEOUT: Duration = Duration::from_secs(300);

/// Runs the benchmark.
pub async fn run(ctx: &Ctx) -> Outcomes {
    let _lock = lock_shared(Duration::from_secs(600)).await?;
    let broker = crate::ours::broker(&rabbit_settings("/")).await?;
    let admin = amqp_connect("/").await?;
    let channel = admin
        .open_channel(None)
        .await
        .map_err(|e| Failure::Error(format!("opening a channel: {e}")))?;
    let id = unique_suffix();
    let exchange = format!("bench8.publish.{id}");
    let mut queues = Vec::new();
    let result = measure(ctx, &*broker, &channel, &exchange, &mut queues).await;
    for q in &queues {
        delete_queue(&channel, q).await;
    }
    let _ = channel
        .exchange_delete(amqprs::channel::ExchangeDeleteArguments::new(&exchange))
        .await;
    let _ = admin.close().await;
    result
}

async fn measure(
    ctx: &Ctx,
    broker: &dyn amqp8::Broker,
    channel: &amqprs::channel::Channel,
    exchange: &str,
    queues: &mut Vec<String>,
) -> Outcomes {
    let n = ctx.size(100_000);
    let bodies = message_bodies("bench8.publish", n);
    let mut probe = QueueProbe::open("/").await?;
    let mut ours = Vec::new();
    let mut floors = Vec::new();
    let (mut ours_cpu, mut raw_cpu) = (Vec::new(), Vec::new());
    let tck = clock_ticks_per_second();
    for rep in 0..ctx.reps {
        let mut raw_s = 0.0;
        let mut ours_s = 0.0;
        for side in order(rep) {
            let queue = format!("{exchange}.{side}{rep}");
            let key = format!("bench8.{side}{rep}");
            declare_queue(channel, exchange, &queue, &key).await?;
            queues.push(queue.clone());
            let cpu0 = own_cpu_seconds(tck);
            if side == "raw" {
                let run = publish_confirmed("/", exchange, &key, &bodies, WINDOW, TIMEOUT).await?;
                if run.confirmed != n {
                    return Err(Failure::Error(format!(
                        "the raw publisher got {} of {n} confirmed ({} nacked)",
                        run.confirmed, run.nacked
                    )));
                }
                raw_s = run.elapsed.as_secs_f64();
            } else {
                ours_s = publish_ours(broker, exchange, &key, &bodies).await?;
            }
            let cpu = own_cpu_seconds(tck) - cpu0;
            if side == "raw" {
                raw_cpu.push(cpu);
            } else {
                ours_cpu.push(cpu);
            }
            wait_for_count(&mut probe, &queue, n).await?;
            delete_queue(channel, &queue).await;
        }
        floors.push(n as f64 / raw_s);
        ours.push(n as f64 / ours_s);
        ctx.log(
            "amqp_publish",
            format!(
                "rep {}: amqp8 {ours_s:.2}s, raw amqprs {raw_s:.2}s",
                rep + 1
            ),
        );
    }
    probe.close().await;
    Ok(vec![(
        "amqp_publish.throughput",
        Ok(Measured {
            value: median(&ours),
            floor: median(&floors),
            detail: format!(
                "{n} persistent {MESSAGE_BYTES}-byte messages, mandatory, confirmed; amqp8 \
                 publish_many (default pool settings) vs raw amqprs on one channel with a \
                 window of {WINDOW}; median of {} runs; msg/s amqp8 [{}], raw [{}]; client CPU seconds (user+system of \
                 this process) amqp8 [{}], raw [{}]",
                ctx.reps,
                list(&ours),
                list(&floors),
                list(&ours_cpu),
                list(&raw_cpu)
            ),
        }),
    )])
}

/// Which side goes first in repetition `rep`.
pub fn order(rep: usize) -> [&'static str; 2] {
    if rep.is_multiple_of(2) {
        ["raw", "ours"]
    } else {
        ["ours", "raw"]
    }
}

/// Publishes `bodies` through amqp8 and returns the seconds from the call to every
/// outcome; every outcome must be `Confirmed`. One unroutable message is published
/// first (not timed) so that the broker's connection and channel are warm.
pub async fn publish_ours(
    broker: &dyn amqp8::Broker,
    exchange: &str,
    key: &str,
    bodies: &[Vec<u8>],
) -> Result<f64, Failure> {
    let mut warm = OutgoingMessage::new(exchange, "bench8.warm-up.unbound", b"{}".to_vec());
    warm.mandatory = false;
    broker.publish(warm).await?;
    let messages: Vec<OutgoingMessage> = bodies
        .iter()
        .map(|b| OutgoingMessage::new(exchange, key, b.clone()))
        .collect();
    let start = Instant::now();
    let outcomes = broker.publish_many(messages).await?;
    let elapsed = start.elapsed().as_secs_f64();
    let confirmed = outcomes
        .iter()
        .filter(|o| **o == PublishOutcome::Confirmed)
        .count();
    if confirmed != bodies.len() || outcomes.len() != bodies.len() {
        return Err(Failure::Error(format!(
            "amqp8 publish_many: {confirmed} of {} confirmed ({} outcomes)",
            bodies.len(),
            outcomes.len()
        )));
    }
    Ok(elapsed)
}

/// Waits (up to 30 s) until `queue` holds `n` ready messages: the check that every
/// confirmed message really is in the queue.
pub async fn wait_for_count(probe: &mut QueueProbe, queue: &str, n: u64) -> Result<(), Failure> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let count = probe.messages(queue).await?.unwrap_or(0) as u64;
        if count == n {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Failure::Error(format!(
                "queue {queue} holds {count} messages, expected {n}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
