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
use super::amqp_common::{Plan, Round, Side, TIMEOUT, compare, row};
use crate::ctx::Ctx;
use crate::floors::raw_amqp::consume_acked;
use crate::report::{Better, Failure, Spec};
use crate::workload::MESSAGE_BYTES;

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

/// Runs the benchmark.
pub async fn run(ctx: &Ctx) -> Outcomes {
    let n = ctx.size(100_000);
    let plan = Plan {
        name: "amqp_consume",
        tag: "consume",
        n,
        fill: true,
    };
    let samples = compare(ctx, plan, async |r: Round<'_>| match r.side {
        Side::Raw => Ok(consume_acked("/", r.queue, n, PREFETCH, TIMEOUT)
            .await?
            .as_secs_f64()),
        Side::Ours => consume_ours(r.broker, r.queue, n).await,
    })
    .await?;
    row(
        "amqp_consume.throughput",
        ctx,
        samples,
        &format!(
            "{n} persistent {MESSAGE_BYTES}-byte messages, prefetch {PREFETCH}, one ack per \
             delivery; amqp8 Broker::consume with a handler returning Ack vs raw amqprs \
             basic_consume_rx + basic_ack"
        ),
    )
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
