//! Publishes one confirmed JSON message through amqp8 and prints the broker's answer:
//! `cargo run -p amqp8 --example publish -- EXCHANGE ROUTING_KEY [BODY]`
//! (local RabbitMQ, guest@127.0.0.1:5672).

use amqp8::{Broker, OutgoingMessage};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [exchange, key, rest @ ..] = args.as_slice() else {
        return Err("usage: publish EXCHANGE ROUTING_KEY [BODY]".into());
    };
    let body = rest.first().cloned().unwrap_or_else(|| "{}".into());
    let broker = amqp8::connect(&config8::RabbitMqSettings::default()).await?;
    let outcome = broker
        .publish(OutgoingMessage::new(
            exchange.as_str(),
            key.as_str(),
            body.into_bytes(),
        ))
        .await?;
    println!("{outcome:?}");
    broker.close().await;
    Ok(())
}
