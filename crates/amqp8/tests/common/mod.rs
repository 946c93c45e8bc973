//! Helpers for the integration tests on the local RabbitMQ (guest@127.0.0.1:5672).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use amqp8::{
    ArgValue, BindingDecl, Broker, ConsumeOptions, ExchangeDecl, QueueDecl, RabbitBroker, Topology,
};
use amqprs::channel::{
    BasicGetArguments, ExchangeDeleteArguments, QueueDeclareArguments, QueueDeleteArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};

/// Runs `rabbitmqctl` with `args`; whether it succeeded.
pub fn rabbitmqctl(args: &[&str]) -> bool {
    std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Waits (at most [`WAIT`]) until `b`'s health satisfies `ok`; panics with the last
/// health otherwise.
pub async fn health_until(b: &RabbitBroker, ok: impl Fn(&amqp8::BrokerHealth) -> bool) {
    assert!(
        eventually(WAIT, || async { ok(&b.health()) }).await,
        "{:?}",
        b.health()
    );
}

pub const LOCK: &str = "/tmp/cptm8-services.lock";
pub const WAIT: Duration = Duration::from_secs(20);

/// The shared lock every service test holds (the exclusive one for disruptive tests).
pub struct ServiceLock(File);

pub fn lock_shared() -> ServiceLock {
    let f = File::options()
        .create(true)
        .append(true)
        .open(LOCK)
        .expect("open lock file");
    f.lock_shared().expect("shared lock");
    ServiceLock(f)
}

pub fn lock_exclusive() -> ServiceLock {
    let f = File::options()
        .create(true)
        .append(true)
        .open(LOCK)
        .expect("open lock file");
    f.lock().expect("exclusive lock");
    ServiceLock(f)
}

static N: AtomicU64 = AtomicU64::new(0);

/// A name no other test (or run) uses.
pub fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "amqp8-test.{what}.{}.{:x}.{}",
        std::process::id(),
        nanos & 0xffff_ffff,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn settings() -> config8::RabbitMqSettings {
    let pool = config8::RabbitPoolSettings {
        connection_timeout: Duration::from_secs(15),
        ..Default::default()
    };
    config8::RabbitMqSettings {
        heartbeat: Duration::from_secs(5),
        pool,
        ..Default::default()
    }
}

pub async fn broker() -> RabbitBroker {
    RabbitBroker::connect(&settings())
        .await
        .expect("connect to the local RabbitMQ")
}

/// A topic exchange with one queue bound with `key`, and a dead-letter exchange and
/// queue; every name unique. Deleted by [`Names::cleanup`].
pub struct Names {
    pub exchange: String,
    pub queue: String,
    pub dlx: String,
    pub dlq: String,
}

impl Names {
    pub fn new(what: &str) -> Names {
        let base = unique(what);
        Names {
            exchange: format!("{base}.x"),
            queue: format!("{base}.q"),
            dlx: format!("{base}.dlx"),
            dlq: format!("{base}.dlq"),
        }
    }

    pub fn topology(&self, key: &str, args: &[(&str, ArgValue)]) -> Topology {
        Topology {
            exchanges: vec![
                ExchangeDecl {
                    name: self.exchange.clone(),
                    kind: "topic".into(),
                },
                ExchangeDecl {
                    name: self.dlx.clone(),
                    kind: "direct".into(),
                },
            ],
            queues: vec![
                QueueDecl {
                    name: self.queue.clone(),
                    arguments: args
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), v.clone()))
                        .collect(),
                },
                QueueDecl {
                    name: self.dlq.clone(),
                    arguments: BTreeMap::new(),
                },
            ],
            bindings: vec![
                BindingDecl {
                    exchange: self.exchange.clone(),
                    queue: self.queue.clone(),
                    routing_key: key.into(),
                },
                BindingDecl {
                    exchange: self.dlx.clone(),
                    queue: self.dlq.clone(),
                    routing_key: "dead".into(),
                },
            ],
        }
    }

    pub fn options(&self, prefetch: u16, max_redeliveries: u32) -> ConsumeOptions {
        ConsumeOptions {
            queue: self.queue.clone(),
            tag: "ctest".into(),
            prefetch,
            autoack: false,
            max_redeliveries,
            dead_letter: Some((self.dlx.clone(), "dead".into())),
        }
    }

    pub async fn cleanup(&self) {
        let Ok(c) = raw().await else { return };
        if let Ok(ch) = c.open_channel(None).await {
            for q in [&self.queue, &self.dlq] {
                let _ = ch.queue_delete(QueueDeleteArguments::new(q)).await;
            }
            for x in [&self.exchange, &self.dlx] {
                let _ = ch.exchange_delete(ExchangeDeleteArguments::new(x)).await;
            }
        }
        let _ = c.close().await;
    }
}

/// A plain amqprs connection, to check what amqp8 did independently of it.
pub async fn raw() -> Result<Connection, amqprs::error::Error> {
    Connection::open(&OpenConnectionArguments::new(
        "127.0.0.1",
        5672,
        "guest",
        "guest",
    ))
    .await
}

/// Ready messages in a queue, by a passive declare on a raw connection; `None` when
/// the queue does not exist.
pub async fn ready(queue: &str) -> Option<u32> {
    let c = raw().await.expect("raw connection");
    let ch = c.open_channel(None).await.expect("raw channel");
    let r = ch
        .queue_declare(QueueDeclareArguments::new(queue).passive(true).finish())
        .await
        .ok()
        .flatten()
        .map(|(_, m, _)| m);
    let _ = c.close().await;
    r
}

/// Takes up to `max` messages from a queue with basic.get (acked), returning their
/// bodies and headers.
pub async fn get_all(queue: &str, max: usize) -> Vec<(Vec<u8>, BTreeMap<String, String>)> {
    let c = raw().await.expect("raw connection");
    let ch = c.open_channel(None).await.expect("raw channel");
    let mut out = Vec::new();
    while out.len() < max {
        match ch
            .basic_get(BasicGetArguments::new(queue).no_ack(true).finish())
            .await
        {
            Ok(Some((_, props, body))) => {
                let mut h = BTreeMap::new();
                if let Some(t) = props.headers() {
                    for (k, v) in t.as_ref() {
                        let v = match v {
                            amqprs::FieldValue::S(s) => s.as_ref().clone(),
                            other => format!("{other:?}"),
                        };
                        h.insert(k.as_ref().clone(), v);
                    }
                }
                out.push((body, h));
            }
            _ => break,
        }
    }
    let _ = c.close().await;
    out
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn as_dyn(b: RabbitBroker) -> Arc<dyn Broker> {
    Arc::new(b)
}
