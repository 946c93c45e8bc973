//! `amqp_consume`: consuming 100,000 persistent messages with manual ack through an
//! amqp8 supervised consumer (`Broker::consume`, a handler that returns `Ack`), vs a
//! raw amqprs consumer acking each delivery, with the same prefetch, same broker, same
//! run. Goal: ratio >= 0.9.
//!
//! Each side gets its own queue, filled beforehand (not timed) by the raw publisher;
//! the time runs from subscribing to the last delivery handled (acked, for the raw
//! side). Afterwards the queue must be empty once the consumer is gone, which proves
//! every delivery was acked.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use amqp8::{ConsumeOptions, Decision, Delivery, Handler, HandlerError};
use async_trait::async_trait;
use tokio::sync::Notify;

use super::Outcomes;
use super::amqp_publish::{WINDOW, order, wait_for_count};
use crate::ctx::{Ctx, list, median};
use crate::floors::raw_amqp::{
    QueueProbe, consume_acked, declare_queue, delete_queue, publish_confirmed,
};
use crate::procfs::{clock_ticks_per_second, own_cpu_seconds};
use crate::report::{Better, Failure, Measured, Spec};
use crate::services::{amqp_connect, lock_shared, rabbit_settings, unique_suffix};
use crate::workload::{MESSAGE_BYTES, message_bodies};

/// The rows.
pub const SPECS: &[Spec] = &[Spec {
    name: "amqp_consume.throughput",
    unit: "msg/s",
    better: Better::Higher,
    goal: 0.9,
    resolution: 0.0,
}];

/// Prefetch of both consumers.
pub const PREFETCH: u16 = 100;
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
    let exchange = format!("bench8.consume.{}", unique_suffix());
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

/// Counts deliveries and acks them.
struct Counter {
    seen: AtomicU64,
    target: u64,
    done: Notify,
}

#[async_trait]
impl Handler for Counter {
    async fn handle(&self, delivery: &mut Delivery) -> Result<Decision, HandlerError> {
        if delivery.body.is_empty() {
            return Err(HandlerError("empty body".into()));
        }
        if self.seen.fetch_add(1, Ordering::SeqCst) + 1 >= self.target {
            self.done.notify_one();
        }
        Ok(Decision::Ack)
    }
}

async fn measure(
    ctx: &Ctx,
    broker: &dyn amqp8::Broker,
    channel: &amqprs::channel::Channel,
    exchange: &str,
    queues: &mut Vec<String>,
) -> Outcomes {
    let n = ctx.size(100_000);
    let bodies = message_bodies("bench8.consume", n);
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
            publish_confirmed("/", exchange, &key, &bodies, WINDOW, TIMEOUT).await?;
            wait_for_count(&mut probe, &queue, n).await?;
            let cpu0 = own_cpu_seconds(tck);
            if side == "raw" {
                raw_s = consume_acked("/", &queue, n, PREFETCH, TIMEOUT)
                    .await?
                    .as_secs_f64();
            } else {
                ours_s = consume_ours(broker, &queue, n).await?;
            }
            let cpu = own_cpu_seconds(tck) - cpu0;
            if side == "raw" {
                raw_cpu.push(cpu);
            } else {
                ours_cpu.push(cpu);
            }
            // Unacked deliveries would be back in the queue now that the consumer is gone.
            wait_for_count(&mut probe, &queue, 0).await?;
            delete_queue(channel, &queue).await;
        }
        floors.push(n as f64 / raw_s);
        ours.push(n as f64 / ours_s);
        ctx.log(
            "amqp_consume",
            format!(
                "rep {}: amqp8 {ours_s:.2}s, raw amqprs {raw_s:.2}s",
                rep + 1
            ),
        );
    }
    probe.close().await;
    Ok(vec![(
        "amqp_consume.throughput",
        Ok(Measured {
            value: median(&ours),
            floor: median(&floors),
            detail: format!(
                "{n} persistent {MESSAGE_BYTES}-byte messages, prefetch {PREFETCH}, one ack per \
                 delivery; amqp8 Broker::consume with a handler returning Ack vs raw amqprs \
                 basic_consume_rx + basic_ack; median of {} runs; msg/s amqp8 [{}], raw [{}]; client CPU seconds (user+system of \
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

async fn consume_ours(broker: &dyn amqp8::Broker, queue: &str, n: u64) -> Result<f64, Failure> {
    let counter = Arc::new(Counter {
        seen: AtomicU64::new(0),
        target: n,
        done: Notify::new(),
    });
    let options = ConsumeOptions {
        queue: queue.to_owned(),
        tag: "bench8".into(),
        prefetch: PREFETCH,
        autoack: false,
        max_redeliveries: 1000,
        dead_letter: None,
    };
    let start = Instant::now();
    let handle = broker.consume(options, counter.clone()).await?;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while counter.seen.load(Ordering::SeqCst) < n {
        let notified = counter.done.notified();
        if counter.seen.load(Ordering::SeqCst) >= n {
            break;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            handle.stop(Duration::from_secs(5)).await;
            return Err(Failure::Error(format!(
                "amqp8 consumer: {} of {n} delivered within {TIMEOUT:?}",
                counter.seen.load(Ordering::SeqCst)
            )));
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    handle.stop(Duration::from_secs(10)).await;
    let seen = counter.seen.load(Ordering::SeqCst);
    if seen != n {
        return Err(Failure::Error(format!(
            "amqp8 consumer handled {seen} deliveries, expected {n} (redeliveries?)"
        )));
    }
    Ok(elapsed)
}
