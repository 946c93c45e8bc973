//! Secrets never appear in the errors of failed connections, and TLS misconfigurations
//! fail clearly and promptly: the PostgreSQL tests use a throwaway server with
//! password authentication and TLS off (`security_support::ThrowawayPg`), the RabbitMQ
//! tests the shared broker (under the shared service lock). See docs/SECURITY.md.

mod common;
mod security_support;

use std::time::Duration;

use amqp8::AmqpError;
use common::{ServiceLock, free_port};
use config8::SslMode;
use db8::{DbError, DbHealth, PgStore};
use security_support::*;

/// Display and Debug of an error, for the leak checks.
fn shown(e: &(impl std::fmt::Display + std::fmt::Debug)) -> String {
    format!("{e} | {e:?}")
}

#[tokio::test]
async fn a_wrong_database_password_is_named_as_such_but_not_shown() {
    let pg = tokio::task::spawn_blocking(ThrowawayPg::start)
        .await
        .unwrap();
    // The right password works: the server really checks it.
    let store = bounded("connect", PgStore::connect(&pg.settings(&pg.password)))
        .await
        .unwrap();
    store.ping().await.unwrap();
    drop(store);

    let wrong = canary("wrong-pg");
    let err = bounded("connect", PgStore::connect(&pg.settings(&wrong)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, DbError::Refused { .. }),
        "a wrong password is refused, not retried: {err:?}"
    );
    let text = shown(&err);
    assert_no_canary("the database error", &text);
    assert!(
        text.contains("password authentication failed for user \"postgres\""),
        "{text}"
    );
    assert!(
        text.contains(&format!("127.0.0.1:{}/postgres", pg.port)),
        "{text}"
    );
    // Nor the right password, while the wrong one was tried.
    assert!(!text.contains(&pg.password));

    // An unknown user: named, no password.
    let mut s = pg.settings(&wrong);
    s.username = "nobody".into();
    let text = shown(&bounded("connect", PgStore::connect(&s)).await.unwrap_err());
    assert_no_canary("the database error", &text);
    assert!(text.contains("nobody"), "{text}");
}

#[tokio::test]
async fn sslmode_require_against_a_server_without_tls_fails_clearly() {
    let pg = tokio::task::spawn_blocking(ThrowawayPg::start)
        .await
        .unwrap();
    let mut s = pg.settings(&pg.password);
    s.sslmode = SslMode::Require;
    s.retry_attempts = 2;
    let err = bounded("connect", PgStore::connect(&s)).await.unwrap_err();
    let text = shown(&err);
    assert_no_canary("the TLS error", &text);
    assert!(text.contains("TLS"), "names TLS: {text}");
    assert!(text.contains(&format!("127.0.0.1:{}", pg.port)), "{text}");
    // `prefer` falls back to a plain connection, as libpq's does.
    s.sslmode = SslMode::Prefer;
    let store = bounded("connect", PgStore::connect(&s)).await.unwrap();
    store.ping().await.unwrap();
}

#[tokio::test]
async fn unreachable_servers_are_named_without_the_password() {
    let password = canary("unreachable");
    let port = free_port();
    let mut s = config8::DatabaseSettings {
        location: "127.0.0.1".into(),
        port,
        password: config8::Secret::new(&password),
        retry_attempts: 2,
        retry_delay: Duration::from_millis(20),
        ..Default::default()
    };
    let text = shown(&bounded("connect", PgStore::connect(&s)).await.unwrap_err());
    assert_no_canary("the database error", &text);
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    // A host name that does not resolve.
    s.location = "no-such-host.invalid".into();
    let text = shown(&bounded("connect", PgStore::connect(&s)).await.unwrap_err());
    assert_no_canary("the database error", &text);
    assert!(text.contains("no-such-host.invalid"), "{text}");

    let m = rabbit_settings("guest", &password, free_port());
    let text = shown(&bounded("connect", amqp8::connect(&m)).await.unwrap_err());
    assert_no_canary("the broker error", &text);
    assert!(text.contains(&format!("127.0.0.1:{}", m.port)), "{text}");
}

#[tokio::test]
async fn a_wrong_rabbitmq_password_is_refused_without_showing_it() {
    let _lock = ServiceLock::shared();
    let wrong = canary("wrong-mq");
    let err = bounded(
        "connect",
        amqp8::connect(&rabbit_settings("guest", &wrong, 5672)),
    )
    .await
    .unwrap_err();
    let text = shown(&err);
    assert_no_canary("the broker error", &text);
    assert!(
        !text.contains("guest\u{0}"),
        "no SASL PLAIN response: {text}"
    );
    // amqprs (patched, third_party/amqprs) asks for the explicit ACCESS_REFUSED close.
    assert!(matches!(err, AmqpError::AccessRefused { .. }), "{text}");
    assert!(
        text.contains("ACCESS_REFUSED") && text.contains("RabbitMQ.password"),
        "points at the credentials: {text}"
    );
}

#[tokio::test]
async fn rabbitmq_tls_against_a_plain_port_fails_clearly() {
    let _lock = ServiceLock::shared();
    let password = canary("tls-mq");
    let mut s = rabbit_settings("guest", &password, 5672);
    s.tls = true;
    let err = bounded("connect", amqp8::connect(&s)).await.unwrap_err();
    let text = shown(&err);
    assert_no_canary("the broker error", &text);
    assert!(text.contains("amqps://127.0.0.1:5672"), "{text}");
}
