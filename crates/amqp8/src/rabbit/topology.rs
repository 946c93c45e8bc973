//! The topology registry (the Go original's "shared state"): exchanges, queues and
//! bindings declared through amqp8 are remembered and declared again on every new
//! connection, so a broker that restarted (or lost a non-durable object) gets them
//! back before anything is published or consumed.

use parking_lot::Mutex;

use amqprs::channel::{
    Channel, ExchangeDeclareArguments, QueueBindArguments, QueueDeclareArguments,
};
use amqprs::connection::Connection;

use super::channel;
use super::fields;
use crate::broker::{BindingDecl, ExchangeDecl, QueueDecl, Topology};
use crate::error::AmqpError;

/// One object to declare.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    Exchange(ExchangeDecl),
    Queue(QueueDecl),
    Binding(BindingDecl),
}

impl Item {
    /// The operation, for errors: `exchange.declare cptm8`.
    pub(crate) fn operation(&self) -> String {
        match self {
            Item::Exchange(e) => format!("exchange.declare {} ({})", e.name, e.kind),
            Item::Queue(q) => format!("queue.declare {}", q.name),
            Item::Binding(b) => format!(
                "queue.bind {} to {} with {:?}",
                b.queue, b.exchange, b.routing_key
            ),
        }
    }

    /// Checks names and arguments before anything is sent.
    pub(crate) fn check(&self) -> Result<(), AmqpError> {
        match self {
            Item::Exchange(e) => {
                fields::short("exchange name", &e.name)?;
                fields::short("exchange kind", &e.kind)
            }
            Item::Queue(q) => {
                fields::short("queue name", &q.name)?;
                fields::arguments(&q.arguments).map(|_| ())
            }
            Item::Binding(b) => {
                fields::short("exchange name", &b.exchange)?;
                fields::short("queue name", &b.queue)?;
                fields::short("binding key", &b.routing_key)
            }
        }
    }

    /// Declares it (durable) on `channel`.
    pub(crate) async fn declare(&self, channel: &Channel) -> Result<(), amqprs::error::Error> {
        match self {
            Item::Exchange(e) => {
                channel
                    .exchange_declare(
                        ExchangeDeclareArguments::new(&e.name, &e.kind)
                            .durable(true)
                            .finish(),
                    )
                    .await
            }
            Item::Queue(q) => {
                let args = fields::arguments(&q.arguments)
                    .map_err(|e| amqprs::error::Error::ChannelUseError(e.to_string()))?;
                channel
                    .queue_declare(
                        QueueDeclareArguments::new(&q.name)
                            .durable(true)
                            .arguments(args)
                            .finish(),
                    )
                    .await
                    .map(|_| ())
            }
            Item::Binding(b) => {
                channel
                    .queue_bind(QueueBindArguments::new(
                        &b.queue,
                        &b.exchange,
                        &b.routing_key,
                    ))
                    .await
            }
        }
    }
}

/// Every object of a topology, exchanges first, then queues, then bindings.
pub(crate) fn items(t: &Topology) -> Vec<Item> {
    t.exchanges
        .iter()
        .cloned()
        .map(Item::Exchange)
        .chain(t.queues.iter().cloned().map(Item::Queue))
        .chain(t.bindings.iter().cloned().map(Item::Binding))
        .collect()
}

/// What was declared through amqp8.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    declared: Mutex<Topology>,
}

impl Registry {
    /// Remembers an object the broker accepted (replacing an older declaration of the
    /// same exchange or queue).
    pub(crate) fn remember(&self, item: &Item) {
        let mut t = self.declared.lock();
        match item {
            Item::Exchange(e) => {
                t.exchanges.retain(|x| x.name != e.name);
                t.exchanges.push(e.clone());
            }
            Item::Queue(q) => {
                t.queues.retain(|x| x.name != q.name);
                t.queues.push(q.clone());
            }
            Item::Binding(b) => {
                if !t.bindings.contains(b) {
                    t.bindings.push(b.clone());
                }
            }
        }
    }

    /// Forgets a deleted queue and its bindings.
    pub(crate) fn forget_queue(&self, queue: &str) {
        let mut t = self.declared.lock();
        t.queues.retain(|q| q.name != queue);
        t.bindings.retain(|b| b.queue != queue);
    }

    /// What would be declared on a new connection.
    pub(crate) fn snapshot(&self) -> Topology {
        self.declared.lock().clone()
    }

    /// Declares everything remembered on a new connection. Failures are logged: a
    /// refused object does not make the connection unusable.
    pub(crate) async fn redeclare(&self, conn: &Connection, endpoint: &str) {
        let items = items(&self.snapshot());
        if items.is_empty() {
            return;
        }
        let mut ch: Option<Channel> = None;
        let mut done = 0usize;
        for item in &items {
            if !conn.is_open() {
                return;
            }
            if ch.as_ref().is_none_or(|c| !c.is_open()) {
                match channel::open(conn, None).await {
                    Ok((c, _)) => ch = Some(c),
                    Err(e) => {
                        tracing::warn!(broker = %endpoint, error = %e, "topology recovery: cannot open a channel");
                        return;
                    }
                }
            }
            let Some(c) = ch.as_ref() else { return };
            match item.declare(c).await {
                Ok(()) => done += 1,
                Err(e) => {
                    tracing::error!(broker = %endpoint, operation = %item.operation(), error = %e,
                        "topology recovery: the broker refused a remembered object");
                    ch = None;
                }
            }
        }
        if let Some(c) = ch {
            let _ = c.close().await;
        }
        tracing::debug!(broker = %endpoint, declared = done, of = items.len(), "topology recovered on a new connection");
    }
}
