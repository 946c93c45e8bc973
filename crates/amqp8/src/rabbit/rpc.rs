//! Short operations (declare, passive checks, delete) on a throw-away channel.
//!
//! amqprs matches replies to requests by method only, so an RPC cancelled halfway or
//! two identical RPCs at once on one channel can cross replies (amqprs #196). Each
//! operation therefore gets its own channel, runs in its own task (a caller that gives
//! up does not cancel it halfway), and a channel that timed out is thrown away.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use amqprs::channel::Channel;

use super::Shared;
use super::channel;
use crate::error::AmqpError;

/// Why an operation failed.
#[derive(Debug)]
pub(crate) enum RpcFailure {
    /// The broker refused it and closed the channel.
    Refused {
        operation: String,
        code: u16,
        text: String,
    },
    /// No connection, or the broker did not answer in time.
    Other(AmqpError),
}

impl RpcFailure {
    /// As the public error.
    pub(crate) fn into_error(self) -> AmqpError {
        match self {
            RpcFailure::Refused {
                operation,
                code,
                text,
            } => AmqpError::Refused {
                operation,
                reason: format!("{code} {text}"),
            },
            RpcFailure::Other(e) => e,
        }
    }
}

/// Runs `op` on a fresh channel of a pooled connection, retrying on a new connection
/// when the connection is lost, until the operation deadline. `op` returns the
/// operation that failed along with amqprs's error.
pub(crate) async fn run<T, F, Fut>(
    shared: &Arc<Shared>,
    what: String,
    op: F,
) -> Result<T, RpcFailure>
where
    T: Send + 'static,
    F: Fn(Channel) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, (String, amqprs::error::Error)>> + Send,
{
    let inner = shared.clone();
    let task = tokio::spawn(async move { run_inner(&inner, &what, op).await });
    task.await.unwrap_or_else(|e| {
        let why = format!("RabbitMQ operation task failed: {e}");
        Err(RpcFailure::Other(shared.unavailable(why)))
    })
}

async fn run_inner<T, F, Fut>(shared: &Arc<Shared>, what: &str, op: F) -> Result<T, RpcFailure>
where
    F: Fn(Channel) -> Fut,
    Fut: Future<Output = Result<T, (String, amqprs::error::Error)>>,
{
    let deadline = Instant::now() + shared.deadline;
    loop {
        let conn = shared
            .acquire(deadline, what)
            .await
            .map_err(RpcFailure::Other)?;
        let (ch, close) = match channel::open(&conn.conn, None).await {
            Ok(c) => c,
            Err(e) => {
                if conn.is_usable() || Instant::now() >= deadline {
                    return Err(RpcFailure::Other(
                        shared.unavailable(format!("{what}: opening a channel: {e}")),
                    ));
                }
                continue;
            }
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, op(ch.clone())).await {
            Ok(Ok(v)) => {
                // Close in the background: the reply is not needed, the pooled
                // connection stays checked out until the channel is closed.
                tokio::spawn(async move {
                    let _ = ch.close().await;
                    drop(conn);
                });
                return Ok(v);
            }
            Ok(Err((operation, e))) => {
                if let Some((code, text)) = close.get() {
                    return Err(RpcFailure::Refused {
                        operation,
                        code,
                        text,
                    });
                }
                if conn.is_usable() || Instant::now() >= deadline {
                    return Err(RpcFailure::Other(
                        shared.unavailable(format!("{operation}: {e}")),
                    ));
                }
                tracing::debug!(operation = %operation, "connection lost during an operation; retrying on a new one");
            }
            Err(_) => {
                // Never reuse a channel with an RPC in flight: drop it.
                return Err(RpcFailure::Other(shared.unavailable(format!(
                    "{what}: no answer within {:?} (RabbitMQ.pool.connection_timeout)",
                    shared.deadline
                ))));
            }
        }
    }
}
