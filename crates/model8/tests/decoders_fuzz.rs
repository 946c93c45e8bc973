//! Property tests: the decoders of everything that arrives from the network never panic,
//! whatever the bytes, and what they accept re-encodes to something they accept again.

use model8::{AmqpM8Message, GoTime, Notification8, StageOutcome, StageResult};
use proptest::prelude::*;

/// JSON-ish inputs: random bytes, and mutations of valid envelopes, which reach deeper
/// into the decoders than random bytes do.
fn inputs() -> impl Strategy<Value = Vec<u8>> {
    let valid = r#"{"channel":"cptm8.orchestratorm8.asmm8.completed","payload":{"workflow_id":"6f1c1d0e-8a4b-4c1e-9f7a-2b3c4d5e6f70","stage":"asmm8","attempt":1,"detail":null},"timestamp":"2025-11-19T10:00:00.123456789+01:00","source":"asmm8"}"#;
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        (0..valid.len(), any::<u8>()).prop_map(move |(i, b)| {
            let mut v = valid.as_bytes().to_vec();
            v[i] = b;
            v
        }),
        (0..valid.len()).prop_map(move |i| valid.as_bytes()[..i].to_vec()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn envelope_decoder_never_panics(body in inputs()) {
        if let Ok(m) = AmqpM8Message::<serde_json::Value>::from_slice(&body) {
            let again = m.to_vec().unwrap();
            prop_assert_eq!(AmqpM8Message::<serde_json::Value>::from_slice(&again).unwrap(), m);
        }
    }

    #[test]
    fn result_decoder_never_panics(body in inputs()) {
        if let Ok(m) = AmqpM8Message::<StageResult>::from_slice(&body) {
            let again = m.to_vec().unwrap();
            prop_assert_eq!(AmqpM8Message::<StageResult>::from_slice(&again).unwrap(), m);
        }
        let _ = serde_json::from_slice::<Notification8>(&body);
    }

    #[test]
    fn routing_key_parser_never_panics(key in "\\PC{0,60}") {
        if let Ok((stage, outcome)) = StageOutcome::parse_routing_key(&key) {
            prop_assert_eq!(outcome.routing_key(&stage), key);
        }
    }

    #[test]
    fn timestamp_parser_never_panics(s in "\\PC{0,40}") {
        if let Ok(t) = s.parse::<GoTime>() {
            prop_assert_eq!(t.to_string().parse::<GoTime>().unwrap(), t);
        }
    }
}

#[test]
fn valid_seed_is_accepted() {
    let valid = br#"{"channel":"cptm8.orchestratorm8.asmm8.completed","payload":{"workflow_id":"6f1c1d0e-8a4b-4c1e-9f7a-2b3c4d5e6f70","stage":"asmm8","attempt":1},"timestamp":"2025-11-19T10:00:00.123456789+01:00","source":"asmm8"}"#;
    let m = AmqpM8Message::<StageResult>::from_slice(valid).unwrap();
    assert_eq!(m.payload.unwrap().stage, "asmm8");
}
