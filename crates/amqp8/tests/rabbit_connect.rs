//! amqp8 on the real RabbitMQ: connecting (credentials, virtual hosts, unreachable
//! brokers) with clear errors and no secrets in them.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use amqp8::{AmqpError, Broker, OutgoingMessage, PublishOutcome, RabbitBroker, Refusal};
use common::*;

const SECRET: &str = "s3cr3t-never-shown";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_reported_without_showing_it() {
    let _lock = lock_shared();
    let mut s = settings();
    s.password = config8::Secret::new(SECRET);
    // A retry budget no test could sit out: the refusal must end it at once.
    s.pool.retry_attempts = 10;
    s.pool.retry_delay = Duration::from_secs(3600);
    s.pool.connection_timeout = Duration::from_secs(3600);
    let err = tokio::time::timeout(WAIT, RabbitBroker::connect(&s))
        .await
        .expect("a refused login must not be retried like an outage")
        .unwrap_err();
    eprintln!("wrong password: {err}");
    let text = format!("{err} {err:?}");
    // amqprs (patched) announces authentication_failure_close, so RabbitMQ says why.
    match &err {
        AmqpError::AccessRefused { host, user, reason } => {
            assert_eq!(host, "amqp://127.0.0.1:5672/");
            assert_eq!(user, "guest");
            assert!(reason.starts_with("403 ACCESS_REFUSED"), "{reason}");
        }
        other => panic!("expected AccessRefused, got {other:?}"),
    }
    assert!(!err.is_transient());
    assert!(err.is_connection_refused());
    assert!(text.contains("RabbitMQ.password"), "{text}");
    assert!(!text.contains(SECRET), "{text}");

    // A lazy handle: operations fail with the refusal as soon as a connection attempt
    // was refused, instead of waiting for the (hour-long) deadline; the handle keeps
    // retrying in the background and reports the refusal.
    let broker = RabbitBroker::new(&s).unwrap();
    assert!(!format!("{broker:?}").contains(SECRET));
    let published = tokio::time::timeout(
        WAIT,
        broker.publish(OutgoingMessage::new(
            "",
            "amqp8-test.nowhere",
            b"{}".to_vec(),
        )),
    )
    .await
    .expect("a publish must not wait for the deadline while the login is refused")
    .unwrap_err();
    assert!(
        matches!(published, AmqpError::AccessRefused { .. }),
        "{published:?}"
    );
    let declared = tokio::time::timeout(
        WAIT,
        broker.declare(&Names::new("refused").topology("k", &[])),
    )
    .await
    .expect("a declare must not wait for the deadline while the login is refused")
    .unwrap_err();
    assert!(
        matches!(declared, AmqpError::AccessRefused { .. }),
        "{declared:?}"
    );
    assert!(!format!("{published} {published:?} {declared:?}").contains(SECRET));
    assert!(matches!(
        broker.connection_refusal(),
        Some(AmqpError::AccessRefused { .. })
    ));
    assert!(!broker.health().connected);
    assert!(broker.pool_stats().failed >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_retried_then_reported_with_its_address() {
    let mut s = settings();
    s.port = 1; // nothing listens there
    s.pool.retry_attempts = 3;
    s.pool.retry_delay = Duration::from_millis(100);
    s.password = config8::Secret::new(SECRET);
    let err = RabbitBroker::connect(&s).await.unwrap_err();
    let text = err.to_string();
    assert!(err.is_transient(), "{text}");
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert!(!text.contains(SECRET), "{text}");

    // A lazy handle waits for the broker up to the deadline, then fails clearly.
    s.pool.connection_timeout = Duration::from_secs(2);
    let b = RabbitBroker::new(&s).unwrap();
    let started = Instant::now();
    let err = b
        .publish(OutgoingMessage::new("", "q", b"{}".to_vec()))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(!b.health().connected);
    assert!(b.pool_stats().failed > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virtual_host_is_used_and_a_missing_one_refused() {
    let _lock = lock_shared();
    let vhost = unique("vhost");
    let ctl = |args: &[&str]| {
        Command::new("rabbitmqctl")
            .args(args)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    // Missing first.
    let mut s = settings();
    s.vhost = vhost.clone();
    s.pool.retry_delay = Duration::from_secs(3600);
    let err = tokio::time::timeout(WAIT, RabbitBroker::connect(&s))
        .await
        .expect("a missing virtual host must not be retried like an outage")
        .unwrap_err();
    eprintln!("missing virtual host: {err}");
    match &err {
        AmqpError::VhostNotAllowed {
            vhost: v, reason, ..
        } => {
            assert_eq!(v, &vhost);
            assert!(reason.starts_with("530 NOT_ALLOWED"), "{reason}");
        }
        other => panic!("expected VhostNotAllowed, got {other:?}"),
    }
    assert!(!err.is_transient());
    let text = err.to_string();
    assert!(text.contains(&format!("virtual host {vhost:?}")), "{text}");
    assert!(text.contains("RabbitMQ.vhost"), "{text}");
    s.pool.retry_delay = Duration::from_millis(100);

    assert!(ctl(&["add_vhost", &vhost]));
    assert!(ctl(&[
        "set_permissions",
        "-p",
        &vhost,
        "guest",
        ".*",
        ".*",
        ".*"
    ]));
    let result = async {
        let b = RabbitBroker::connect(&s).await.unwrap();
        assert!(b.endpoint().ends_with(&vhost), "{}", b.endpoint());
        let n = Names::new("vh");
        b.declare(&n.topology("k.#", &[])).await.unwrap();
        assert_eq!(
            b.publish(OutgoingMessage::new(
                n.exchange.clone(),
                "k.1",
                b"{}".to_vec()
            ))
            .await
            .unwrap(),
            PublishOutcome::Confirmed
        );
        assert_eq!(b.queue_info(&n.queue).await.unwrap().messages, 1);
        // The default vhost does not have it.
        assert_eq!(ready(&n.queue).await, None);
    }
    .await;
    ctl(&["delete_vhost", &vhost]);
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_statistics_and_health() {
    let _lock = lock_shared();
    let b = broker().await;
    assert!(eventually(WAIT, || async { b.health().connected }).await);
    let stats = b.pool_stats();
    assert!(stats.created >= 1, "{stats:?}");
    assert!(stats.size >= 1 && stats.size <= 10, "{stats:?}");
    assert_eq!(stats.size, stats.idle + stats.in_use);
    assert_eq!(b.health().pool.created, b.pool_stats().created);
    assert!(!b.health().blocked);
}

/// A throwaway RabbitMQ user with full rights on `/`, deleted on drop.
struct TestUser {
    name: String,
    password: String,
}

impl TestUser {
    fn create() -> TestUser {
        let name = unique("user");
        let password = unique("pw");
        assert!(rabbitmqctl(&["add_user", &name, &password]));
        let user = TestUser { name, password };
        user.grant();
        user
    }

    fn grant(&self) {
        assert!(rabbitmqctl(&[
            "set_permissions",
            "-p",
            "/",
            &self.name,
            ".*",
            ".*",
            ".*"
        ]));
    }

    /// Closes every connection of the user (the broker answers 320
    /// CONNECTION_FORCED), so amqp8 reconnects with what the broker accepts now.
    fn disconnect(&self) {
        assert!(rabbitmqctl(&[
            "close_all_user_connections",
            &self.name,
            "amqp8 test: reconnect"
        ]));
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        rabbitmqctl(&["delete_user", &self.name]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_a_refusal_while_reconnecting_and_clears_it_once_accepted() {
    let _lock = lock_shared();
    let user = TestUser::create();
    let mut s = settings();
    s.username = user.name.clone();
    s.password = config8::Secret::new(user.password.clone());
    let b = RabbitBroker::connect(&s).await.unwrap();
    let n = Names::new("refusal");
    b.declare(&n.topology("k.#", &[])).await.unwrap();
    let publish = || {
        b.publish(OutgoingMessage::new(
            n.exchange.clone(),
            "k.1",
            b"{}".to_vec(),
        ))
    };
    // The publisher now holds a connection and reconnects on its own when it is lost.
    assert_eq!(publish().await.unwrap(), PublishOutcome::Confirmed);
    assert!(b.health().connected);
    assert_eq!(b.health().refused, None);

    let result = async {
        // A changed password: the open connections stay until the broker closes them;
        // the reconnection is refused.
        let other = unique("pw2");
        assert!(rabbitmqctl(&["change_password", &user.name, &other]));
        user.disconnect();
        health_until(&b, |h| h.refused == Some(Refusal::Login) && !h.connected).await;
        assert!(matches!(
            b.connection_refusal(),
            Some(AmqpError::AccessRefused { .. })
        ));
        // Back to the configured password: amqp8 retries in the background (every
        // 5 s while refused) and the refusal clears once it is accepted.
        assert!(rabbitmqctl(&[
            "change_password",
            &user.name,
            &user.password
        ]));
        health_until(&b, |h| h.refused.is_none() && h.connected).await;
        assert_eq!(publish().await.unwrap(), PublishOutcome::Confirmed);

        // No permissions on the virtual host: the reconnection is refused with 530.
        assert!(rabbitmqctl(&["clear_permissions", "-p", "/", &user.name]));
        user.disconnect();
        health_until(&b, |h| {
            h.refused == Some(Refusal::VirtualHost) && !h.connected
        })
        .await;
        user.grant();
        health_until(&b, |h| h.refused.is_none() && h.connected).await;
    }
    .await;
    b.close().await;
    n.cleanup().await;
    result
}
