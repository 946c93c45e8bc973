//! The JSON envelope every CPTM8 message body uses.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::time::GoTime;

/// The `source` this service writes into every envelope it publishes.
pub const SOURCE_ORCHESTRATORM8: &str = "orchestratorm8";

/// The message envelope of the Go services (`model8.AmqpM8Message`):
/// `{"channel": <routing key>, "payload": <any, omitted when null>, "timestamp": <RFC 3339>, "source": <service>}`.
///
/// `P` is the payload type; the default, [`serde_json::Value`], accepts anything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AmqpM8Message<P = serde_json::Value> {
    /// The routing key the message was published with.
    pub channel: String,
    /// The message's content; `None` is written as an absent field, as Go's `omitempty`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<P>,
    /// When the message was made.
    pub timestamp: GoTime,
    /// The name of the service that made it.
    pub source: String,
}

/// Why a message body could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// The body is not a JSON envelope of the expected shape.
    #[error("malformed message body: {0}")]
    Malformed(#[source] serde_json::Error),
    /// The payload could not be serialised.
    #[error("payload cannot be encoded as JSON: {0}")]
    Encode(#[source] serde_json::Error),
}

impl<P> AmqpM8Message<P> {
    /// An envelope stamped now, with `source` set to [`SOURCE_ORCHESTRATORM8`].
    pub fn new(routing_key: impl Into<String>, payload: Option<P>) -> Self {
        Self::with_source(routing_key, payload, SOURCE_ORCHESTRATORM8)
    }

    /// An envelope stamped now, from the given source service.
    pub fn with_source(
        routing_key: impl Into<String>,
        payload: Option<P>,
        source: impl Into<String>,
    ) -> Self {
        AmqpM8Message {
            channel: routing_key.into(),
            payload,
            timestamp: GoTime::now(),
            source: source.into(),
        }
    }
}

impl<P: Serialize> AmqpM8Message<P> {
    /// The JSON body to publish.
    pub fn to_vec(&self) -> Result<Vec<u8>, EnvelopeError> {
        serde_json::to_vec(self).map_err(EnvelopeError::Encode)
    }
}

impl<P: DeserializeOwned> AmqpM8Message<P> {
    /// Decodes a message body. Unknown fields are ignored, as Go's decoder does.
    pub fn from_slice(body: &[u8]) -> Result<Self, EnvelopeError> {
        serde_json::from_slice(body).map_err(EnvelopeError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn golden_kickoff_without_payload() {
        let mut m: AmqpM8Message = AmqpM8Message::new("cptm8.asmm8.get.scan", None);
        m.timestamp = "2025-11-19T10:00:00.123456789+01:00".parse().unwrap();
        assert_eq!(
            String::from_utf8(m.to_vec().unwrap()).unwrap(),
            r#"{"channel":"cptm8.asmm8.get.scan","timestamp":"2025-11-19T10:00:00.123456789+01:00","source":"orchestratorm8"}"#
        );
    }

    #[test]
    fn golden_with_payload() {
        let mut m = AmqpM8Message::new("cptm8.naabum8.get.scan", Some(json!({"a": 1})));
        m.timestamp = "2025-11-19T09:00:00Z".parse().unwrap();
        assert_eq!(
            String::from_utf8(m.to_vec().unwrap()).unwrap(),
            r#"{"channel":"cptm8.naabum8.get.scan","payload":{"a":1},"timestamp":"2025-11-19T09:00:00Z","source":"orchestratorm8"}"#
        );
    }

    #[test]
    fn decodes_go_output_with_null_or_missing_payload() {
        let go = br#"{"channel":"cptm8.asmm8.get.scan","payload":null,"timestamp":"2025-11-19T10:00:00.123456789+01:00","source":"asmm8","extra":true}"#;
        let m = AmqpM8Message::<serde_json::Value>::from_slice(go).unwrap();
        assert_eq!(m.payload, None);
        assert_eq!(m.source, "asmm8");
        assert_eq!(
            m.timestamp.to_string(),
            "2025-11-19T10:00:00.123456789+01:00"
        );
        let go = br#"{"channel":"x","timestamp":"2025-11-19T10:00:00Z","source":"asmm8"}"#;
        assert!(
            AmqpM8Message::<serde_json::Value>::from_slice(go)
                .unwrap()
                .payload
                .is_none()
        );
    }

    #[test]
    fn malformed_bodies_are_typed_errors() {
        for body in [
            &b"not json"[..],
            b"{}",
            br#"{"channel":1}"#,
            b"",
            b"\xff\xfe",
        ] {
            assert!(matches!(
                AmqpM8Message::<serde_json::Value>::from_slice(body),
                Err(EnvelopeError::Malformed(_))
            ));
        }
    }
}
