//! A synchronous channel method whose caller gives up halfway (its future dropped: a
//! timeout, a shutdown) must not kill the channel's dispatcher (the vendored amqprs
//! fork's patch, third_party/amqprs/PATCHES.md). Real RabbitMQ.

mod common;

use std::time::Duration;

use amqprs::channel::BasicQosArguments;

/// The caller of `basic_qos` is dropped right after it registered its responder with
/// the dispatcher (current-thread runtime: the dispatcher cannot run in between), so
/// the dispatcher's acknowledgement finds no receiver. Upstream 2.1.5 panics there and
/// the channel is dead: the next call fails. Patched, the next call works.
#[tokio::test]
async fn a_channel_survives_a_caller_that_gave_up() {
    let _lock = common::lock_shared();
    let conn = common::raw().await.expect("a plain amqprs connection");
    let channel = conn.open_channel(None).await.expect("a channel");
    {
        let abandoned = channel.basic_qos(BasicQosArguments::new(0, 5, false));
        let mut abandoned = std::pin::pin!(abandoned);
        assert!(
            futures::poll!(abandoned.as_mut()).is_pending(),
            "the call waits for the dispatcher"
        );
    }
    // The dispatcher now handles the registration of the abandoned call.
    let next = tokio::time::timeout(
        Duration::from_secs(10),
        channel.basic_qos(BasicQosArguments::new(0, 10, false)),
    )
    .await
    .expect("the next call is answered");
    // The abandoned call never sent its request (it was dropped while registering), so
    // the reply is this call's.
    next.expect("the dispatcher still serves the channel");
    assert!(channel.is_open(), "the channel is still open");
    tokio::time::timeout(Duration::from_secs(10), channel.close())
        .await
        .expect("the close is answered")
        .expect("the channel closes cleanly");
    let _ = conn.close().await;
}
