//! [`handler_fn`]: a [`Handler`] from an async closure, for consumers that decide
//! within the handler (no deferred acks).

use std::collections::BTreeMap;
use std::future::Future;

use async_trait::async_trait;

use crate::broker::{Decision, Delivery, Handler, HandlerError};

/// A delivery's content, owned, as [`handler_fn`] closures receive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Body.
    pub body: Vec<u8>,
    /// Exchange it was published to.
    pub exchange: String,
    /// Routing key it was published with.
    pub routing_key: String,
    /// Whether the broker delivered it before.
    pub redelivered: bool,
    /// See [`Delivery::delivery_count`].
    pub delivery_count: Option<u64>,
    /// String headers.
    pub headers: BTreeMap<String, String>,
    /// See [`Delivery::app_id`].
    pub app_id: Option<String>,
    /// See [`Delivery::message_id`].
    pub message_id: Option<String>,
}

/// A [`Handler`] made of a closure; see [`handler_fn`].
pub struct FnHandler<F>(F);

/// Wraps an async closure as a [`Handler`]:
///
/// ```
/// use amqp8::{Decision, Message, handler_fn};
/// let handler = handler_fn(|m: Message| async move {
///     match serde_json::from_slice::<serde_json::Value>(&m.body) {
///         Ok(_) => Ok(Decision::Ack),
///         Err(e) => Ok(Decision::DeadLetter(format!("not JSON: {e}"))),
///     }
/// });
/// # let _: std::sync::Arc<dyn amqp8::Handler> = std::sync::Arc::new(handler);
/// ```
pub fn handler_fn<F, Fut>(f: F) -> FnHandler<F>
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Decision, HandlerError>> + Send + 'static,
{
    FnHandler(f)
}

#[async_trait]
impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Decision, HandlerError>> + Send + 'static,
{
    async fn handle(&self, delivery: &mut Delivery) -> Result<Decision, HandlerError> {
        let message = Message {
            body: std::mem::take(&mut delivery.body),
            exchange: delivery.exchange.clone(),
            routing_key: delivery.routing_key.clone(),
            redelivered: delivery.redelivered,
            delivery_count: delivery.delivery_count,
            headers: delivery.headers.clone(),
            app_id: delivery.app_id.clone(),
            message_id: delivery.message_id.clone(),
        };
        (self.0)(message).await
    }
}
