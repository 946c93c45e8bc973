//! Quorum queues and delivery limits on the real RabbitMQ, declared from the Go file's
//! `Queue-arguments` (issue 7 item 3; docs/OPERATIONS.md, "Quorum queues"):
//!
//! - config8 keeps the argument types of the Go file (`x-queue-type` text,
//!   `x-delivery-limit` integer), and amqp8 declares the section's queue as a quorum
//!   queue (checked with `rabbitmqctl list_queues`, independently of amqp8);
//! - redeclaring it with the same arguments is fine (topology recovery does that);
//! - a classic queue cannot become a quorum queue by redeclaring it: the broker refuses
//!   with PRECONDITION_FAILED, and amqp8's error names the queue and the argument;
//! - a delivery limit given as text (`"2"`) is accepted by RabbitMQ 3.10 and never
//!   enforced (or, on a broker that checks it, refused naming it);
//! - `x-max-length` with `reject-publish` nacks, one message later than on a classic
//!   queue;
//! - a message requeued more often than `x-delivery-limit` is dead-lettered by the
//!   broker, and every redelivery carries `x-delivery-count`, which amqp8 reports as
//!   `Delivery::delivery_count` — also to a client that never saw the earlier
//!   deliveries (a restarted service).

mod common;

use std::sync::Arc;
use std::time::Duration;

use amqp8::{
    AmqpError, ArgValue, Broker, ConsumeOptions, Decision, Delivery, Handler, HandlerError,
    OutgoingMessage, QueueDecl, Topology,
};
use async_trait::async_trait;
use common::*;
use tokio::sync::mpsc;

/// A configuration in the Go file's shape with one service section `svc` whose queue is
/// `queue` on exchange `exchange`, with the given `Queue-arguments` (YAML flow mapping).
fn go_config(exchange: &str, queue: &str, arguments: &str) -> config8::Settings {
    let yaml = format!(
        r#"APP_ENV: TEST
LOG_LEVEL: "1"
ORCHESTRATORM8:
  Services: {{}}
  Exchanges:
    cptm8: topic
    notification: topic
    "{exchange}": "topic"
  svc:
    Queue: ["{exchange}", "{queue}", 1]
    Routing-keys: ["work.#"]
    Queue-arguments: {arguments}
    Consumer: ["{queue}", "csvc", "false"]
Database:
  location: 127.0.0.1
  port: 5432
  schema: public
  database: cptm8
  username: postgres
  password: ""
RabbitMQ:
  location: 127.0.0.1
  port: 5672
  username: guest
  password: guest
"#
    );
    let loaded = config8::from_yaml_str(&yaml, &config8::Env::empty())
        .unwrap_or_else(|e| panic!("the Go-shaped file must load: {e}\n{yaml}"));
    // config8 warns about a numeric argument given as text (the pitfall tested below).
    let unexpected: Vec<_> = loaded
        .warnings
        .iter()
        .filter(|w| !w.message.contains("RabbitMQ expects an integer"))
        .collect();
    assert!(unexpected.is_empty(), "unexpected warnings: {unexpected:?}");
    loaded.settings
}

/// `(type, arguments)` of `queue` in the default virtual host, as `rabbitmqctl` shows
/// them; `None` when the queue does not exist.
fn rabbitmqctl_queue(queue: &str) -> Option<(String, String)> {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_queues",
            "-p",
            "/",
            "--no-table-headers",
            "name",
            "type",
            "arguments",
        ])
        .output()
        .expect("run rabbitmqctl");
    assert!(
        out.status.success(),
        "rabbitmqctl list_queues: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let mut cols = l.splitn(3, '\t');
        (cols.next()? == queue).then(|| {
            (
                cols.next().unwrap_or_default().to_owned(),
                cols.next().unwrap_or_default().to_owned(),
            )
        })
    })
}

/// The topology of the only service section of `settings`, with a dead-letter queue
/// (`n.dlq`, bound to `n.dlx` with `dead`) added when `with_dlq`.
fn topology(settings: &config8::Settings, n: &Names, with_dlq: bool) -> Topology {
    let mut t = Topology::for_service(&settings.orchestrator, "svc").expect("section svc");
    if with_dlq {
        let dl = n.topology("unused", &[]);
        t.exchanges.push(dl.exchanges[1].clone());
        t.queues.push(dl.queues[1].clone());
        t.bindings.push(dl.bindings[1].clone());
    }
    t
}

#[test]
fn config8_keeps_the_types_of_quorum_queue_arguments() {
    let s = go_config(
        "x",
        "q",
        r#"{ "x-queue-type": "quorum", "x-delivery-limit": 2, "x-dead-letter-exchange": "dlx", "x-max-length": 1000, "x-overflow": "reject-publish", "x-single-active-consumer": true, "x-quoted": "2" }"#,
    );
    let args = &s.orchestrator.queues["svc"].queue_arguments;
    assert_eq!(args["x-queue-type"], ArgValue::Str("quorum".into()));
    assert_eq!(args["x-delivery-limit"], ArgValue::Int(2));
    assert_eq!(args["x-dead-letter-exchange"], ArgValue::Str("dlx".into()));
    assert_eq!(args["x-max-length"], ArgValue::Int(1000));
    assert_eq!(args["x-overflow"], ArgValue::Str("reject-publish".into()));
    assert_eq!(args["x-single-active-consumer"], ArgValue::Bool(true));
    // Quoted stays text: config8 does not guess; the broker judges (see below).
    assert_eq!(args["x-quoted"], ArgValue::Str("2".into()));
    assert_eq!(args.len(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_section_with_x_queue_type_quorum_declares_a_quorum_queue() {
    let _lock = lock_shared();
    let n = Names::new("quorum-declare");
    let settings = go_config(
        &n.exchange,
        &n.queue,
        r#"{ "x-queue-type": "quorum", "x-delivery-limit": 2 }"#,
    );
    let b = broker().await;
    b.declare(&topology(&settings, &n, false)).await.unwrap();

    let (kind, arguments) = rabbitmqctl_queue(&n.queue).expect("the queue exists");
    assert_eq!(kind, "quorum", "arguments: {arguments}");
    // The limit went out as an integer (a text "2" would show as "2").
    assert!(
        arguments.contains(r#"{"x-delivery-limit",2}"#),
        "{arguments}"
    );
    assert!(
        arguments.contains(r#"{"x-queue-type","quorum"}"#),
        "{arguments}"
    );

    // Declaring it again, as every reconnect does, is accepted; so is a second client.
    b.declare(&topology(&settings, &n, false)).await.unwrap();
    let other = broker().await;
    other
        .declare(&topology(&settings, &n, false))
        .await
        .unwrap();
    // Publishing and the passive count work as on a classic queue.
    let out = b
        .publish(OutgoingMessage::new(
            n.exchange.clone(),
            "work.one",
            b"{}".to_vec(),
        ))
        .await
        .unwrap();
    assert_eq!(out, amqp8::PublishOutcome::Confirmed);
    assert!(
        eventually(WAIT, || async {
            b.queue_info(&n.queue).await.map(|i| i.messages) == Ok(1)
        })
        .await
    );
    other.close().await;
    b.close().await;
    n.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classic_queue_cannot_be_redeclared_as_quorum() {
    let _lock = lock_shared();
    let n = Names::new("quorum-migrate");
    let b = broker().await;
    let classic = go_config(&n.exchange, &n.queue, "{}");
    b.declare(&topology(&classic, &n, false)).await.unwrap();
    assert_eq!(rabbitmqctl_queue(&n.queue).unwrap().0, "classic");

    let quorum = go_config(
        &n.exchange,
        &n.queue,
        r#"{ "x-queue-type": "quorum", "x-delivery-limit": 2 }"#,
    );
    let other = broker().await;
    let err = other
        .declare(&topology(&quorum, &n, false))
        .await
        .expect_err("RabbitMQ must refuse to turn a classic queue into a quorum queue");
    let AmqpError::Refused { operation, reason } = &err else {
        panic!("expected Refused, got {err:?}");
    };
    assert_eq!(operation, &format!("queue.declare {}", n.queue));
    assert!(reason.contains("PRECONDITION_FAILED"), "{reason}");
    assert!(reason.contains("x-queue-type"), "{reason}");
    assert!(err.to_string().contains(&n.queue), "{err}");
    assert!(!err.is_transient(), "an operator must act: not retried");
    // Nothing changed on the broker.
    assert_eq!(rabbitmqctl_queue(&n.queue).unwrap().0, "classic");

    // The migration: delete (the queue must be drained first: its messages go with
    // it), then declare as quorum.
    b.delete_queue(&n.queue).await.unwrap();
    other.declare(&topology(&quorum, &n, false)).await.unwrap();
    assert_eq!(rabbitmqctl_queue(&n.queue).unwrap().0, "quorum");
    other.close().await;
    b.close().await;
    n.cleanup().await;
}

/// The Go file's busy-pipeline signal (`x-max-length: 1`, `x-overflow: reject-publish`)
/// on a quorum queue: publishes to the full queue are nacked (backpressure), but the
/// limit is enforced one message late (RabbitMQ 3.10 takes a publish while the queue is
/// not yet *over* the limit): with `x-max-length: 1` it holds two. Once a message is
/// taken, the queue accepts again. docs/OPERATIONS.md tells operators about it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_publish_on_a_full_quorum_queue_nacks_one_message_late() {
    let _lock = lock_shared();
    let n = Names::new("quorum-full");
    let settings = go_config(
        &n.exchange,
        &n.queue,
        r#"{ "x-queue-type": "quorum", "x-max-length": 1, "x-overflow": "reject-publish" }"#,
    );
    let b = broker().await;
    b.declare(&topology(&settings, &n, false)).await.unwrap();
    assert_eq!(rabbitmqctl_queue(&n.queue).unwrap().0, "quorum");
    let msg = |body: &str| OutgoingMessage::new(n.exchange.clone(), "work.x", body.into());
    let mut outcomes = Vec::new();
    for i in 0..5 {
        outcomes.push(b.publish(msg(&format!("m{i}"))).await.unwrap());
    }
    use amqp8::PublishOutcome::{Confirmed, Nacked};
    assert_eq!(outcomes, [Confirmed, Confirmed, Nacked, Nacked, Nacked]);
    let kept = get_all(&n.queue, 10).await;
    let bodies: Vec<&[u8]> = kept.iter().map(|(b, _)| b.as_slice()).collect();
    assert_eq!(bodies, [&b"m0"[..], &b"m1"[..]]);
    // Emptied: accepted again.
    assert_eq!(b.publish(msg("again")).await.unwrap(), Confirmed);
    b.close().await;
    n.cleanup().await;
}

/// What a handler saw of one delivery.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    redelivered: bool,
    delivery_count: Option<u64>,
    header: Option<String>,
}

impl Seen {
    fn of(d: &Delivery) -> Seen {
        Seen {
            redelivered: d.redelivered,
            delivery_count: d.delivery_count,
            header: d.headers.get("x-delivery-count").cloned(),
        }
    }
}

/// Requeues every delivery (a worker that keeps failing), recording what it saw.
struct AlwaysRequeue(mpsc::UnboundedSender<Seen>);

#[async_trait]
impl Handler for AlwaysRequeue {
    async fn handle(&self, d: &mut Delivery) -> Result<Decision, HandlerError> {
        let _ = self.0.send(Seen::of(d));
        Ok(Decision::Requeue)
    }
}

/// Consume options that leave the dead-lettering to the broker: amqp8's own limit is
/// far above the queue's.
fn broker_limited(n: &Names) -> ConsumeOptions {
    ConsumeOptions {
        queue: n.queue.clone(),
        tag: "cquorum".into(),
        prefetch: 1,
        autoack: false,
        max_redeliveries: 1000,
        dead_letter: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_requeued_past_x_delivery_limit_is_dead_lettered_by_the_broker() {
    let _lock = lock_shared();
    let n = Names::new("quorum-limit");
    let arguments = format!(
        r#"{{ "x-queue-type": "quorum", "x-delivery-limit": 2, "x-dead-letter-exchange": "{}", "x-dead-letter-routing-key": "dead" }}"#,
        n.dlx
    );
    let settings = go_config(&n.exchange, &n.queue, &arguments);
    let b = broker().await;
    b.declare(&topology(&settings, &n, true)).await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let consumer = b
        .consume(broker_limited(&n), Arc::new(AlwaysRequeue(tx)))
        .await
        .unwrap();
    let out = b
        .publish(OutgoingMessage::new(
            n.exchange.clone(),
            "work.poison",
            b"{\"poison\":true}".to_vec(),
        ))
        .await
        .unwrap();
    assert_eq!(out, amqp8::PublishOutcome::Confirmed);

    assert!(
        eventually(WAIT, || async { ready(&n.dlq).await == Some(1) }).await,
        "the message never reached the dead-letter queue"
    );
    consumer.stop(Duration::from_secs(5)).await;
    let mut seen = Vec::new();
    while let Ok(s) = rx.try_recv() {
        seen.push(s);
    }
    // One delivery, then one per allowed redelivery; the broker counts the returns.
    assert_eq!(
        seen,
        vec![
            Seen {
                redelivered: false,
                delivery_count: None,
                header: None
            },
            Seen {
                redelivered: true,
                delivery_count: Some(1),
                header: Some("1".into())
            },
            Seen {
                redelivered: true,
                delivery_count: Some(2),
                header: Some("2".into())
            },
        ]
    );
    assert_eq!(ready(&n.queue).await, Some(0), "gone from the quorum queue");
    let dead = get_all(&n.dlq, 10).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0, b"{\"poison\":true}");
    let death = dead[0].1.get("x-death").expect("an x-death header");
    assert!(death.contains("delivery_limit"), "{death}");
    b.close().await;
    n.cleanup().await;
}

/// The pitfall of a quoted limit: RabbitMQ 3.10 accepts `x-delivery-limit: "2"` and
/// then never enforces it (a text never compares as smaller than a count), so a poison
/// message loops forever. A broker that refuses it instead must name the argument.
/// docs/OPERATIONS.md tells operators to write the limit unquoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_limit_given_as_text_is_refused_or_not_enforced() {
    let _lock = lock_shared();
    let n = Names::new("quorum-text-limit");
    let arguments = format!(
        r#"{{ "x-queue-type": "quorum", "x-delivery-limit": "2", "x-dead-letter-exchange": "{}", "x-dead-letter-routing-key": "dead" }}"#,
        n.dlx
    );
    let settings = go_config(&n.exchange, &n.queue, &arguments);
    let b = broker().await;
    match b.declare(&topology(&settings, &n, true)).await {
        Err(AmqpError::Refused { operation, reason }) => {
            assert_eq!(operation, format!("queue.declare {}", n.queue));
            assert!(reason.contains("x-delivery-limit"), "{reason}");
        }
        Err(e) => panic!("expected Refused, got {e:?}"),
        Ok(()) => {
            let (_, arguments) = rabbitmqctl_queue(&n.queue).unwrap();
            assert!(
                arguments.contains(r#"{"x-delivery-limit","2"}"#),
                "{arguments}"
            );
            let (tx, mut rx) = mpsc::unbounded_channel();
            let consumer = b
                .consume(broker_limited(&n), Arc::new(AlwaysRequeue(tx)))
                .await
                .unwrap();
            b.publish(OutgoingMessage::new(
                n.exchange.clone(),
                "work.poison",
                b"{}".to_vec(),
            ))
            .await
            .unwrap();
            // Twice the limit and more: still delivered, never dead-lettered.
            let mut last = None;
            for _ in 0..6 {
                last = Some(
                    tokio::time::timeout(WAIT, rx.recv())
                        .await
                        .expect("still redelivered past the quoted limit")
                        .unwrap(),
                );
            }
            consumer.stop(Duration::from_secs(5)).await;
            assert_eq!(last.unwrap().header.as_deref(), Some("5"));
            assert_eq!(ready(&n.dlq).await, Some(0), "nothing dead-lettered");
        }
    }
    b.close().await;
    n.cleanup().await;
}

/// Requeues the first `returns` deliveries, then holds on to the next one (never
/// settles it) until the consumer is stopped.
struct RequeueThenHold {
    seen: mpsc::UnboundedSender<Seen>,
    returns: usize,
    count: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl Handler for RequeueThenHold {
    async fn handle(&self, d: &mut Delivery) -> Result<Decision, HandlerError> {
        let _ = self.seen.send(Seen::of(d));
        let n = self.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if n < self.returns {
            return Ok(Decision::Requeue);
        }
        // Hold it: the acker is dropped unsettled, so the message returns to the queue
        // when this consumer's channel closes.
        drop(d.defer());
        Ok(Decision::Deferred)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_client_sees_the_broker_delivery_count() {
    let _lock = lock_shared();
    let n = Names::new("quorum-count");
    let settings = go_config(
        &n.exchange,
        &n.queue,
        r#"{ "x-queue-type": "quorum", "x-delivery-limit": 50 }"#,
    );
    let first = broker().await;
    first
        .declare(&topology(&settings, &n, false))
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler = Arc::new(RequeueThenHold {
        seen: tx,
        returns: 2,
        count: Default::default(),
    });
    let consumer = first.consume(broker_limited(&n), handler).await.unwrap();
    first
        .publish(OutgoingMessage::new(
            n.exchange.clone(),
            "work.flaky",
            b"{}".to_vec(),
        ))
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.push(
            tokio::time::timeout(WAIT, rx.recv())
                .await
                .expect("three deliveries")
                .unwrap(),
        );
    }
    assert_eq!(seen[2].header.as_deref(), Some("2"), "{seen:?}");
    // The first client goes away (a service restart); the held delivery returns.
    consumer.stop(Duration::from_millis(100)).await;
    first.close().await;

    // A new client has no memory of this message: the count it reports is the
    // broker's x-delivery-count (two nacks and one return on channel close).
    let second = broker().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let consumer = second
        .consume(
            broker_limited(&n),
            Arc::new(RequeueThenHold {
                seen: tx,
                returns: 0,
                count: Default::default(),
            }),
        )
        .await
        .unwrap();
    let s = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("the message again")
        .unwrap();
    assert!(s.redelivered);
    let header: u64 = s
        .header
        .as_deref()
        .expect("x-delivery-count")
        .parse()
        .unwrap();
    assert!(header >= 2, "{s:?}");
    assert_eq!(s.delivery_count, Some(header), "{s:?}");
    consumer.stop(Duration::from_millis(100)).await;
    second.close().await;
    n.cleanup().await;
}

/// The queue decl a sibling service would get for this argument map (used above through
/// `Topology::for_service`); checked here so that a change there is noticed.
#[test]
fn for_service_passes_the_arguments_unchanged() {
    let s = go_config(
        "x",
        "q",
        r#"{ "x-queue-type": "quorum", "x-delivery-limit": 2 }"#,
    );
    let t = Topology::for_service(&s.orchestrator, "svc").unwrap();
    assert_eq!(
        t.queues,
        vec![QueueDecl {
            name: "q".into(),
            arguments: s.orchestrator.queues["svc"].queue_arguments.clone(),
        }]
    );
}
