//! What `amqp_publish` and `amqp_consume` share: a fresh durable topic exchange on the
//! shared broker, amqp8 and a raw amqprs side compared in alternating order, each side of
//! each repetition on its own fresh queue, the client CPU of each side, and the report
//! row with its per-run lists. Everything declared is deleted afterwards, also when the
//! measurement fails.

use std::time::{Duration, Instant};

use super::Outcomes;
use crate::ctx::{Ctx, list, median};
use crate::floors::raw_amqp::{QueueProbe, declare_queue, delete_queue, publish_confirmed};
use crate::procfs::{clock_ticks_per_second, own_cpu_seconds};
use crate::report::{Failure, Measured};
use crate::services::{amqp_connect, lock_shared, rabbit_settings, unique_suffix};
use crate::workload::message_bodies;

/// Unconfirmed messages the raw publisher allows at once.
pub const WINDOW: usize = 1000;
/// The longest a side may take.
pub const TIMEOUT: Duration = Duration::from_secs(300);

/// One side of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The raw amqprs floor.
    Raw,
    /// amqp8.
    Ours,
}

impl Side {
    fn as_str(self) -> &'static str {
        match self {
            Side::Raw => "raw",
            Side::Ours => "ours",
        }
    }
}

/// Which side goes first in repetition `rep`.
pub fn order(rep: usize) -> [Side; 2] {
    if rep.is_multiple_of(2) {
        [Side::Raw, Side::Ours]
    } else {
        [Side::Ours, Side::Raw]
    }
}

/// What the timed part of one side gets.
#[derive(Clone, Copy)]
pub struct Round<'a> {
    /// Which side.
    pub side: Side,
    /// amqp8's broker (for [`Side::Ours`]).
    pub broker: &'a dyn amqp8::Broker,
    /// The benchmark's exchange.
    pub exchange: &'a str,
    /// This round's queue, bound to the exchange with `key`.
    pub queue: &'a str,
    /// This round's routing key.
    pub key: &'a str,
    /// The messages.
    pub bodies: &'a [Vec<u8>],
}

/// How a comparison runs.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// The benchmark's name (logs).
    pub name: &'static str,
    /// What the exchange and the messages are named after (`bench8.<tag>...`).
    pub tag: &'static str,
    /// Messages per round.
    pub n: u64,
    /// Whether each queue is filled with the messages (by the raw publisher, not timed)
    /// before the timed part, which then must empty it (consuming); otherwise the timed
    /// part must fill it (publishing).
    pub fill: bool,
}

/// Throughput (msg/s) and client CPU seconds per side, one entry per repetition.
#[derive(Debug, Default)]
pub struct Samples {
    ours: Vec<f64>,
    raw: Vec<f64>,
    ours_cpu: Vec<f64>,
    raw_cpu: Vec<f64>,
}

impl Samples {
    /// The report row: medians, with `what` and the per-run lists as its detail.
    pub fn measured(&self, reps: usize, what: &str) -> Measured {
        Measured {
            value: median(&self.ours),
            floor: median(&self.raw),
            detail: format!(
                "{what}; median of {reps} runs; msg/s amqp8 [{}], raw [{}]; client CPU \
                 seconds (user+system of this process) amqp8 [{}], raw [{}]",
                list(&self.ours),
                list(&self.raw),
                list(&self.ours_cpu),
                list(&self.raw_cpu)
            ),
        }
    }
}

/// Runs `ctx.reps` repetitions of both sides under the shared service lock; `timed`
/// runs the timed part of one side and returns its seconds. After it, the queue must
/// hold every message (publishing) or none (consuming: unacked deliveries would be back
/// once the consumer is gone).
pub async fn compare(
    ctx: &Ctx,
    plan: Plan,
    mut timed: impl AsyncFnMut(Round<'_>) -> Result<f64, Failure>,
) -> Result<Samples, Failure> {
    let _lock = lock_shared(Duration::from_secs(600)).await?;
    let broker = crate::ours::broker(&rabbit_settings("/")).await?;
    let admin = amqp_connect("/").await?;
    let channel = admin
        .open_channel(None)
        .await
        .map_err(|e| Failure::Error(format!("opening a channel: {e}")))?;
    let exchange = format!("bench8.{}.{}", plan.tag, unique_suffix());
    let mut queues = Vec::new();
    let bodies = message_bodies(&format!("bench8.{}", plan.tag), plan.n);
    let result = async {
        let mut probe = QueueProbe::open("/").await?;
        let mut samples = Samples::default();
        let tck = clock_ticks_per_second();
        for rep in 0..ctx.reps {
            let (mut raw_s, mut ours_s) = (0.0, 0.0);
            for side in order(rep) {
                let queue = format!("{exchange}.{}{rep}", side.as_str());
                let key = format!("bench8.{}{rep}", side.as_str());
                declare_queue(&channel, &exchange, &queue, &key).await?;
                queues.push(queue.clone());
                if plan.fill {
                    publish_confirmed("/", &exchange, &key, &bodies, WINDOW, TIMEOUT).await?;
                    wait_for_count(&mut probe, &queue, plan.n).await?;
                }
                let cpu0 = own_cpu_seconds(tck);
                let round = Round {
                    side,
                    broker: &*broker,
                    exchange: &exchange,
                    queue: &queue,
                    key: &key,
                    bodies: &bodies,
                };
                let seconds = timed(round).await?;
                let cpu = own_cpu_seconds(tck) - cpu0;
                match side {
                    Side::Raw => {
                        raw_s = seconds;
                        samples.raw_cpu.push(cpu);
                    }
                    Side::Ours => {
                        ours_s = seconds;
                        samples.ours_cpu.push(cpu);
                    }
                }
                let left = if plan.fill { 0 } else { plan.n };
                wait_for_count(&mut probe, &queue, left).await?;
                delete_queue(&channel, &queue).await;
            }
            samples.raw.push(plan.n as f64 / raw_s);
            samples.ours.push(plan.n as f64 / ours_s);
            ctx.log(
                plan.name,
                format!(
                    "rep {}: amqp8 {ours_s:.2}s, raw amqprs {raw_s:.2}s",
                    rep + 1
                ),
            );
        }
        probe.close().await;
        Ok(samples)
    }
    .await;
    for q in &queues {
        delete_queue(&channel, q).await;
    }
    let _ = channel
        .exchange_delete(amqprs::channel::ExchangeDeleteArguments::new(&exchange))
        .await;
    let _ = admin.close().await;
    result
}

/// One report row from a comparison.
pub fn row(name: &'static str, ctx: &Ctx, samples: Samples, what: &str) -> Outcomes {
    Ok(vec![(name, Ok(samples.measured(ctx.reps, what)))])
}

/// Waits (up to 30 s) until `queue` holds `n` ready messages: the check that every
/// confirmed message really is in the queue (or every delivery was acked, for 0).
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
