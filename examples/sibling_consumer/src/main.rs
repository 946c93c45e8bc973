//! A sibling service consuming its queue with manual ack, as its section of the CPTM8
//! configuration says: `sibling_consumer [CONFIG] [SERVICE]`. Ctrl-C stops it.
use std::{sync::Arc, time::Duration};

use amqp8::{Broker, ConsumeOptions, Decision, Message, Topology, handler_fn};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arg = |i, default: &str| std::env::args().nth(i).unwrap_or(default.into());
    let (path, service) = (arg(1, "configs/configuration.yaml"), arg(2, "asmm8"));
    let settings = config8::load(path.as_ref())?.settings;
    let (cptm8, rabbitmq) = (&settings.orchestrator, &settings.rabbitmq);
    let section = cptm8.queues.get(&service).ok_or("no such section")?;

    let broker = amqp8::connect(rabbitmq).await?;
    let topology = Topology::for_service(cptm8, &service).unwrap_or_default();
    broker.declare(&topology).await?;
    let handler = handler_fn(|m: Message| async move {
        // The work goes here. An Err or a panic requeues the message.
        match serde_json::from_slice::<serde_json::Value>(&m.body) {
            Ok(job) => println!("{}: {job}", m.routing_key),
            Err(e) => return Ok(Decision::DeadLetter(format!("not JSON: {e}"))),
        }
        Ok(Decision::Ack)
    });
    let options = ConsumeOptions::for_service(section);
    let consumer = broker.consume(options, Arc::new(handler)).await?;
    println!("consuming {} (Ctrl-C to stop)", section.queue);

    tokio::signal::ctrl_c().await?;
    consumer.stop(Duration::from_secs(30)).await; // lets the message in hand finish
    broker.close().await;
    Ok(())
}
