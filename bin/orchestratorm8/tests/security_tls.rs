//! TLS to RabbitMQ for real: amqp8's TLS client (rustls) against a TLS terminator
//! (`socat`, certificate from a throwaway CA) in front of the shared RabbitMQ, so the
//! whole AMQP handshake and a queue round trip run over TLS without reconfiguring the
//! shared broker. Certificate problems fail promptly and name the broker, never the
//! password. (PostgreSQL's TLS round trips are in crates/db8/tests/pg_store.rs
//! `tls_follows_sslmode_and_sslrootcert`; its refusal by a server without TLS in
//! security_secrets.rs.) See docs/SECURITY.md.

mod common;
mod security_support;

use std::collections::BTreeMap;

use amqp8::{Broker, QueueDecl, Topology};
use common::ServiceLock;
use security_support::*;

#[tokio::test]
async fn amqps_through_a_tls_terminator_with_the_right_ca() {
    let _lock = ServiceLock::shared();
    let certs = tokio::task::spawn_blocking(Certs::new).await.unwrap();
    let tls = TlsTerminator::start(&certs, 5672);
    let mut s = rabbit_settings("guest", "guest", tls.port);
    s.tls = true;
    s.tls_ca = Some(certs.path("ca.pem"));

    let broker = bounded("connect", amqp8::connect(&s)).await.unwrap();
    assert!(broker.health().connected);
    // A queue round trip over the encrypted connection.
    let queue = format!("cptm8_sec_tls_{}", uuid::Uuid::new_v4().simple());
    let topology = Topology {
        exchanges: vec![],
        queues: vec![QueueDecl {
            name: queue.clone(),
            arguments: BTreeMap::new(),
        }],
        bindings: vec![],
    };
    bounded("declare", broker.declare(&topology)).await.unwrap();
    let info = bounded("queue_info", broker.queue_info(&queue))
        .await
        .unwrap();
    assert_eq!(info.messages, 0);
    bounded("delete", broker.delete_queue(&queue))
        .await
        .unwrap();
}

#[tokio::test]
async fn certificate_problems_fail_promptly_and_clearly() {
    let _lock = ServiceLock::shared();
    let certs = tokio::task::spawn_blocking(Certs::new).await.unwrap();
    let tls = TlsTerminator::start(&certs, 5672);
    let password = canary("tls");
    let base = {
        let mut s = rabbit_settings("guest", &password, tls.port);
        s.tls = true;
        s
    };
    let cases = [
        // A CA that did not sign the server's certificate.
        ("other CA", Some(certs.path("other.pem")), "127.0.0.1"),
        // No CA given: the public roots, which do not know the test CA.
        ("public roots", None, "127.0.0.1"),
        // The right CA, but a name the certificate is not for.
        ("wrong name", Some(certs.path("ca.pem")), "localhost"),
    ];
    for (case, ca, host) in cases {
        let mut s = base.clone();
        s.tls_ca = ca;
        s.location = host.into();
        let err = bounded(case, amqp8::connect(&s)).await.unwrap_err();
        let text = format!("{err} | {err:?}");
        assert_no_canary(case, &text);
        assert!(
            text.contains(&format!("amqps://{host}:{}", tls.port)),
            "{case}: names the broker: {text}"
        );
        assert!(
            text.to_lowercase().contains("certificate"),
            "{case}: says the certificate is the problem: {text}"
        );
    }
}
