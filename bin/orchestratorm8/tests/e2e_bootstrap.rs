//! End-to-end: bootstrap mode (the Go original's behaviour) with the real binary,
//! PostgreSQL and RabbitMQ. See `e2e_support` for the isolation (own database, own
//! virtual host per test).

mod common;
mod e2e_support;

use std::time::{Duration, Instant};

use amqp8::Broker;
use common::eventually;
use e2e_support::{Env, Service};
use model8::AmqpM8Message;

const GO_QUEUE_ARGS: &str = "{ \"x-max-length\": 1, \"x-overflow\": \"reject-publish\" }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kick_off_within_two_seconds_of_the_first_enabled_domain_and_again_after_none() {
    let env = Env::new();
    // The Go file: no Scheduler section, so bootstrap mode.
    let config = env.config(&[("asmm8", GO_QUEUE_ARGS)], "");
    let mut svc = Service::start(&config, env.dir.path(), "svc").await;
    svc.ready().await;
    let (status, ready) = svc.get("/ready").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["checks"]["database"], "healthy");
    assert_eq!(ready["checks"]["rabbitmq"], "healthy");
    let client = env.client().await;

    // No domain: no kick-off.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(client.ready("qasmm8").await, 0);

    // none -> some.
    let inserted = Instant::now();
    env.insert_domains("first", 1);
    eventually("first kick-off", Duration::from_secs(2), async || {
        client.ready("qasmm8").await == 1
    })
    .await;
    let took = inserted.elapsed();
    assert!(took <= Duration::from_secs(2), "kick-off after {took:?}");

    let (got, consumer) = client.collect("qasmm8").await;
    eventually("kick-off consumed", Duration::from_secs(10), async || {
        got.lock().unwrap().len() == 1
    })
    .await;
    {
        let m = got.lock().unwrap()[0].clone();
        assert_eq!(m.exchange, "cptm8");
        assert_eq!(m.routing_key, "cptm8.asmm8.get.scan");
        let env: AmqpM8Message = AmqpM8Message::from_slice(&m.body).unwrap();
        assert_eq!(env.channel, "cptm8.asmm8.get.scan");
        assert_eq!(env.source, "orchestratorm8");
        assert_eq!(env.payload, None);
        assert!(!String::from_utf8_lossy(&m.body).contains("payload"));
    }

    // some -> more: nothing new.
    env.insert_domains("second", 2);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(got.lock().unwrap().len(), 1);

    // some -> none -> some: exactly one more.
    env.psql("UPDATE cptm8domain SET enabled = false");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(got.lock().unwrap().len(), 1);
    let enabled = Instant::now();
    env.psql("UPDATE cptm8domain SET enabled = true WHERE name LIKE '%.first.%'");
    eventually("second kick-off", Duration::from_secs(2), async || {
        got.lock().unwrap().len() == 2
    })
    .await;
    assert!(enabled.elapsed() <= Duration::from_secs(2));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(got.lock().unwrap().len(), 2);
    consumer.stop(Duration::from_secs(1)).await;

    // SIGTERM: exit 0, promptly.
    let (code, took) = svc.terminate();
    assert_eq!(code, Some(0), "{}", svc.logs());
    assert!(took < Duration::from_secs(25), "exit took {took:?}");
    let logs = svc.logs();
    assert!(logs.contains("leader lock released"), "{logs}");
    assert!(!logs.contains("guest\""), "no password in the logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_asmm8_queue_means_the_pipeline_is_busy_not_an_error() {
    let env = Env::new();
    env.psql(
        "CREATE TABLE IF NOT EXISTS cptm8domain (id uuid PRIMARY KEY, name varchar(200) NOT NULL, \
         companyname varchar(50), enabled boolean NOT NULL DEFAULT true)",
    );
    env.insert_domains("busy", 1);
    let client = env.client().await;
    // A job already waits in the (x-max-length 1) asmm8 queue.
    let mut topology = amqp8::Topology::topic_queue("cptm8", "qasmm8", "cptm8.asmm8.#");
    topology.queues[0].arguments = [
        ("x-max-length".to_owned(), amqp8::ArgValue::Int(1)),
        (
            "x-overflow".to_owned(),
            amqp8::ArgValue::Str("reject-publish".into()),
        ),
    ]
    .into();
    client.broker.declare(&topology).await.unwrap();
    client
        .broker
        .publish(amqp8::OutgoingMessage::new(
            "cptm8",
            "cptm8.asmm8.get.scan",
            b"{}".to_vec(),
        ))
        .await
        .unwrap();
    let config = env.config(&[("asmm8", GO_QUEUE_ARGS)], "");
    let mut svc = Service::start(&config, env.dir.path(), "svc").await;
    eventually(
        "kick-off refused and logged",
        Duration::from_secs(10),
        async || svc.logs().contains("the pipeline is busy"),
    )
    .await;
    assert_eq!(client.ready("qasmm8").await, 1);
    let (status, _) = svc.get("/ready").await;
    assert_eq!(status, 200, "still ready");
    assert!(!svc.logs().contains("ERROR"), "{}", svc.logs());
    let (code, _) = svc.terminate();
    assert_eq!(code, Some(0));
}

/// `Client::depth` carries every "nothing requeued / dead-lettered" assertion of the
/// end-to-end tests: it must count a message a consumer holds unsettled (a redelivery
/// in flight), and fail, never read 0, for a queue that does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_depth_counts_unsettled_messages_and_fails_on_a_missing_queue() {
    depth_is_live(false).await;
}

/// The same on a quorum queue, whose `rabbitmqctl list_queues` counts are metrics a few
/// seconds old: read from them, the two messages just published counted 0 and 30 jobs
/// just acked still counted 30.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_depth_is_live_on_a_quorum_queue() {
    depth_is_live(true).await;
}

async fn depth_is_live(quorum: bool) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let env = Env::new();
    let client = env.client().await;
    let mut topology = amqp8::Topology::topic_queue("cptm8", "qdepth", "depth.#");
    if quorum {
        topology.queues[0]
            .arguments
            .insert("x-queue-type".into(), amqp8::ArgValue::Str("quorum".into()));
    }
    client.broker.declare(&topology).await.unwrap();
    for body in ["1", "2"] {
        let out = client
            .broker
            .publish(amqp8::OutgoingMessage::new("cptm8", "depth.x", body.into()))
            .await
            .unwrap();
        assert_eq!(out, amqp8::PublishOutcome::Confirmed);
    }
    assert_eq!(client.depth("qdepth").await, 2);

    // A consumer takes one message and holds it, unsettled, until released.
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let taken = Arc::new(AtomicUsize::new(0));
    let (r, t) = (release.clone(), taken.clone());
    let handle = client
        .broker
        .consume(
            e2e_support::consume_options("qdepth", "test-holder", 1),
            Arc::new(amqp8::handler_fn(move |_m: amqp8::Message| {
                let (r, t) = (r.clone(), t.clone());
                async move {
                    t.fetch_add(1, Ordering::SeqCst);
                    r.acquire().await.unwrap().forget();
                    Ok(amqp8::Decision::Ack)
                }
            })),
        )
        .await
        .unwrap();
    eventually(
        "one message delivered",
        Duration::from_secs(30),
        async || taken.load(Ordering::SeqCst) == 1,
    )
    .await;
    assert_eq!(client.ready("qdepth").await, 1, "one ready, one held");
    assert_eq!(client.depth("qdepth").await, 2, "the held one counts");
    release.add_permits(2);
    eventually("both settled", Duration::from_secs(30), async || {
        client.depth("qdepth").await == 0
    })
    .await;
    handle.stop(Duration::from_secs(5)).await;

    if quorum {
        // Settled at once, not when the metrics next refresh.
        assert_eq!(client.depth("qdepth").await, 0);
    }

    let missing = e2e_support::queue_depth(&client.vhost, "qno_such_queue").unwrap_err();
    assert!(missing.contains("no queue qno_such_queue"), "{missing}");
    let no_vhost = e2e_support::queue_depth("no-such-vhost-o8", "qdepth").unwrap_err();
    assert!(!no_vhost.is_empty());
}
