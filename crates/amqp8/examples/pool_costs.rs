//! Measures what docs/AMQP.md's pooling choice rests on, on the local RabbitMQ
//! (guest@127.0.0.1:5672): the cost of opening a connection versus a channel, and
//! confirmed publishing through amqp8 with one long-lived confirm channel.
//!
//! `cargo run --release -p amqp8 --example pool_costs [MESSAGES]`

use std::time::{Duration, Instant};

use amqp8::{Broker, OutgoingMessage, Topology};
use amqprs::connection::{Connection, OpenConnectionArguments};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let args = OpenConnectionArguments::new("127.0.0.1", 5672, "guest", "guest");

    let mut opens = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        let c = Connection::open(&args).await?;
        opens.push(t.elapsed());
        c.close().await?;
    }
    let conn = Connection::open(&args).await?;
    let mut channels = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let ch = conn.open_channel(None).await?;
        channels.push(t.elapsed());
        ch.close().await?;
    }
    conn.close().await?;
    println!(
        "connection open (TCP + AMQP handshake): median {:?}",
        median(opens)
    );
    println!(
        "channel open on an open connection:      median {:?}",
        median(channels)
    );

    let broker = amqp8::RabbitBroker::connect(&config8::RabbitMqSettings::default()).await?;
    let name = format!("amqp8.pool_costs.{}", std::process::id());
    broker
        .declare(&Topology::topic_queue(&name, &name, "#"))
        .await?;
    let body = vec![b'x'; 300];
    let messages = |k: usize| -> Vec<OutgoingMessage> {
        (0..k)
            .map(|_| OutgoingMessage::new(name.clone(), "k", body.clone()))
            .collect()
    };
    let t = Instant::now();
    broker.publish_many(messages(n)).await?;
    let bulk = t.elapsed();
    println!(
        "publish_many, {n} confirmed: {:.0} msg/s",
        n as f64 / bulk.as_secs_f64()
    );
    let t = Instant::now();
    let k = n.min(2000);
    for m in messages(k) {
        broker.publish(m).await?;
    }
    let serial = t.elapsed();
    println!(
        "publish one at a time, {k}: {:.0} msg/s",
        k as f64 / serial.as_secs_f64()
    );
    let t = Instant::now();
    let broker = std::sync::Arc::new(broker);
    let joins: Vec<_> = (0..50)
        .map(|_| {
            let (b, ms) = (broker.clone(), messages(k / 50));
            tokio::spawn(async move {
                for m in ms {
                    b.publish(m).await.unwrap();
                }
            })
        })
        .collect();
    for j in joins {
        j.await?;
    }
    println!(
        "publish from 50 tasks at once, {k}: {:.0} msg/s",
        k as f64 / t.elapsed().as_secs_f64()
    );
    broker.delete_queue(&name).await?;
    Ok(())
}
