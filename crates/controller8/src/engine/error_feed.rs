//! The consumer of the platform's notifications (`app.#` on `notification`, queue
//! [`crate::topology::CHAIN_NOTIFY_QUEUE`]), declared when a stage has `protocol:
//! chain`: each `app.error.*` notification is remembered by source for the chain error
//! window, so that an empty report of that scanner counts as a hard failure carrying
//! its message (CONTRACT 3b). Every delivery is acked at once: the queue is the
//! orchestrator's own, has no length limit, and nothing on it is ever refused or
//! dead-lettered (another service's notification is not ours to judge).

use std::sync::Arc;

use amqp8::{Decision, Delivery, Handler, HandlerError};
use async_trait::async_trait;
use model8::{AmqpM8Message, NotificationEvent, SOURCE_ORCHESTRATORM8};

use super::Engine;

/// Handles deliveries of the notification queue.
#[derive(Debug, Clone)]
pub(crate) struct ErrorFeedHandler {
    pub(crate) engine: Arc<Engine>,
}

/// The source and message of an `app.error.*` notification from another service;
/// `None` for anything else.
pub(crate) fn platform_error(routing_key: &str, body: &[u8]) -> Option<(String, String)> {
    let (kind, _) = model8::parse_platform_routing_key(routing_key)?;
    if kind != NotificationEvent::SystemError {
        return None;
    }
    let env = AmqpM8Message::<serde_json::Value>::from_slice(body).ok()?;
    if env.source == SOURCE_ORCHESTRATORM8 {
        return None;
    }
    let message = env
        .payload
        .as_ref()
        .and_then(|p| p.get("message"))
        .and_then(serde_json::Value::as_str)
        .unwrap_or("reported an error")
        .to_owned();
    Some((env.source, message))
}

#[async_trait]
impl Handler for ErrorFeedHandler {
    async fn handle(&self, delivery: &mut Delivery) -> Result<Decision, HandlerError> {
        if let Some((source, message)) = platform_error(&delivery.routing_key, &delivery.body) {
            tracing::debug!(source = %source, routing_key = %delivery.routing_key, "platform error notification seen");
            self.engine.error_arrived(&source, &message);
        }
        Ok(Decision::Ack)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_other_services_errors_count() {
        let body = |source: &str| {
            format!(
                r#"{{"channel":"app.error.high","payload":{{"userrole":"admin","type":"system_error","message":"db down","metadata":{{}}}},"timestamp":"2025-11-19T10:00:00Z","source":"{source}"}}"#
            )
            .into_bytes()
        };
        assert_eq!(
            platform_error("app.error.urgent", &body("naabum8")),
            Some(("naabum8".into(), "db down".into()))
        );
        assert_eq!(platform_error("app.warning.normal", &body("naabum8")), None);
        assert_eq!(
            platform_error("app.error.high", &body("orchestratorm8")),
            None
        );
        assert_eq!(platform_error("app.error.high", b"not json"), None);
        assert_eq!(platform_error("app.message.normal", &body("asmm8")), None);
    }
}
