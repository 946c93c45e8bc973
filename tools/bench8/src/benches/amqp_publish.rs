//! `amqp_publish`: bulk confirmed publishing of 100,000 persistent 300-byte messages
//! through amqp8's `Broker::publish_many`, vs a minimal raw amqprs publisher with
//! publisher confirms and a window of 1,000 outstanding messages (acks with `multiple`
//! counted), same broker, same run. Goal: ratio >= 0.9.
//!
//! Both publish to a durable topic exchange bound to a fresh durable queue, with
//! `mandatory` set (as the engine publishes), and are timed from the first publish to
//! the last confirm, with their connection already open. The order of the two sides
//! alternates between repetitions.

use std::time::Instant;

use amqp8::{OutgoingMessage, PublishOutcome};

use super::Outcomes;
use super::amqp_common::{Plan, Round, Side, TIMEOUT, compare, row};
use crate::ctx::Ctx;
use crate::floors::raw_amqp::publish_confirmed;
use crate::report::{Better, Failure, Spec};
use crate::workload::MESSAGE_BYTES;

pub use super::amqp_common::WINDOW;

/// The rows.
pub const SPECS: &[Spec] = &[Spec {
    name: "amqp_publish.throughput",
    unit: "msg/s",
    better: Better::Higher,
    goal: 0.9,
    resolution: 0.0,
}];

/// Runs the benchmark.
pub async fn run(ctx: &Ctx) -> Outcomes {
    let n = ctx.size(100_000);
    let plan = Plan {
        name: "amqp_publish",
        tag: "publish",
        n,
        fill: false,
    };
    let samples = compare(ctx, plan, async |r: Round<'_>| match r.side {
        Side::Raw => {
            let run = publish_confirmed("/", r.exchange, r.key, r.bodies, WINDOW, TIMEOUT).await?;
            if run.confirmed != n {
                return Err(Failure::Error(format!(
                    "the raw publisher got {} of {n} confirmed ({} nacked)",
                    run.confirmed, run.nacked
                )));
            }
            Ok(run.elapsed.as_secs_f64())
        }
        Side::Ours => publish_ours(r.broker, r.exchange, r.key, r.bodies).await,
    })
    .await?;
    row(
        "amqp_publish.throughput",
        ctx,
        samples,
        &format!(
            "{n} persistent {MESSAGE_BYTES}-byte messages, mandatory, confirmed; amqp8 \
             publish_many (default pool settings) vs raw amqprs on one channel with a \
             window of {WINDOW}"
        ),
    )
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
