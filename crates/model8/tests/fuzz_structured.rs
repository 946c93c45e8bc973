//! Property tests of the network decoders with structured inputs, complementing
//! `decoders_fuzz.rs` (random bytes and one-byte mutations of one valid body, which
//! mostly exercise the JSON tokenizer): here every field of an envelope and of a stage
//! result gets arbitrary JSON of any type, so the typed decoding is reached, and the
//! answer is checked against a model of what must be accepted. Also: nesting deep
//! enough to overflow a recursive decoder, huge numbers, duplicate and unknown fields,
//! lone surrogates, and timestamps close to RFC 3339.
//!
//! Catalogued in docs/BAD_INPUT.md (AMQP messages).

use model8::{AmqpM8Message, GoTime, StageJob, StageResult};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

const WORKFLOW: &str = "6f1c1d0e-8a4b-4c1e-9f7a-2b3c4d5e6f70";
const TIMESTAMP: &str = "2025-11-19T10:00:00.123456789+01:00";

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A field value: usually right, often of the wrong type or out of range.
fn field(
    right: Value,
    wrong: impl Strategy<Value = Value> + 'static,
) -> BoxedStrategy<Option<Value>> {
    prop_oneof![
        5 => Just(Some(right)),
        1 => Just(None),
        3 => wrong.prop_map(Some),
        1 => any_json().prop_map(Some),
    ]
    .boxed()
}

fn workflow_id() -> BoxedStrategy<Option<Value>> {
    field(
        json!(WORKFLOW),
        prop_oneof![
            Just(json!(WORKFLOW.to_uppercase())),
            Just(json!(WORKFLOW.replace('-', ""))),
            Just(json!(&WORKFLOW[..35])),
            Just(json!(format!("{{{WORKFLOW}}}"))),
            Just(json!(format!("urn:uuid:{WORKFLOW}"))),
            Just(json!("not-a-uuid")),
            Just(json!(1)),
            "[0-9a-f-]{0,40}".prop_map(Value::from),
        ],
    )
}

fn attempt() -> BoxedStrategy<Option<Value>> {
    field(
        json!(1),
        prop_oneof![
            (0u64..=u64::from(u32::MAX) + 2).prop_map(Value::from),
            (-3i64..0).prop_map(Value::from),
            Just(json!(1.0)),
            Just(json!(1.5)),
            Just(json!("1")),
            Just(json!(1e300)),
            Just(json!(u64::MAX)),
        ],
    )
}

fn stage() -> BoxedStrategy<Option<Value>> {
    field(
        json!("asmm8"),
        prop_oneof![
            "\\PC{0,10}".prop_map(Value::from),
            Just(json!(["asmm8"])),
            Just(json!(8)),
        ],
    )
}

/// Timestamps close to RFC 3339: right shape with wrong numbers, wrong separators,
/// missing parts, too many fraction digits.
fn timestamp_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(TIMESTAMP.to_owned()),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,12})?([Zz]|[+-][0-9]{2}:[0-9]{2})",
        "[0-9]{1,5}-[0-9]{1,2}-[0-9]{1,2}T[0-9]{1,2}:[0-9]{1,2}(:[0-9]{1,2})?(\\.[0-9]{0,3})?([Zz]|[+-][0-9]{1,2}(:?[0-9]{2})?)?",
        "\\PC{0,30}",
    ]
}

fn timestamp() -> BoxedStrategy<Option<Value>> {
    field(
        json!(TIMESTAMP),
        prop_oneof![
            timestamp_text().prop_map(Value::from),
            Just(json!(1732010400)),
        ],
    )
}

fn text_field(right: &str) -> BoxedStrategy<Option<Value>> {
    field(
        json!(right),
        prop_oneof![Just(json!(null)), Just(json!(7)), Just(json!({}))],
    )
}

fn object(fields: Vec<(&'static str, Option<Value>)>, extra: Option<(String, Value)>) -> Value {
    let mut m = Map::new();
    for (k, v) in fields {
        if let Some(v) = v {
            m.insert(k.to_owned(), v);
        }
    }
    if let Some((k, v)) = extra {
        // An unknown field is ignored; a known one repeated is not generated here.
        if ![
            "channel",
            "payload",
            "timestamp",
            "source",
            "workflow_id",
            "stage",
            "attempt",
            "detail",
        ]
        .contains(&k.as_str())
        {
            m.insert(k, v);
        }
    }
    Value::Object(m)
}

fn result_payload() -> impl Strategy<Value = Value> {
    (
        workflow_id(),
        stage(),
        attempt(),
        prop::option::of(any_json()),
        prop::option::of(("[a-z]{1,6}", any_json())),
    )
        .prop_map(|(w, s, a, d, extra)| {
            object(
                vec![
                    ("workflow_id", w),
                    ("stage", s),
                    ("attempt", a),
                    ("detail", d),
                ],
                extra,
            )
        })
}

fn envelope() -> impl Strategy<Value = Value> {
    (
        text_field("cptm8.orchestratorm8.asmm8.completed"),
        prop_oneof![
            4 => result_payload().prop_map(Some),
            1 => Just(None),
            1 => Just(Some(Value::Null)),
            2 => any_json().prop_map(Some),
        ],
        timestamp(),
        text_field("asmm8"),
        prop::option::of(("[a-z]{1,6}", any_json())),
    )
        .prop_map(|(c, p, t, s, extra)| {
            object(
                vec![
                    ("channel", c),
                    ("payload", p),
                    ("timestamp", t),
                    ("source", s),
                ],
                extra,
            )
        })
}

// ----- the model: what must be accepted -----------------------------------------------

fn is_text(v: Option<&Value>) -> bool {
    matches!(v, Some(Value::String(_)))
}

fn valid_timestamp(v: Option<&Value>) -> bool {
    match v {
        Some(Value::String(s)) => is_rfc3339(s),
        _ => false,
    }
}

/// RFC 3339 section 5.6 `date-time`, written from the grammar, independently of the
/// parser the decoder uses (chrono): `YYYY-MM-DD`, `T` (or `t`, or a space: section
/// 5.6's note allows another separator and chrono takes a space), `hh:mm:ss` with an
/// optional `.` and one or more digits, then `Z`/`z` or `+hh:mm`/`-hh:mm`. Days are
/// checked against the month and leap years; hours 00-23, minutes 00-59, seconds
/// 00-60 (60: a leap second, which the grammar allows in any minute); offset hours
/// 00-23, minutes 00-59.
fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |from: usize, n: usize| -> Option<u32> {
        let part = b.get(from..from + n)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| part.iter().fold(0, |acc, d| acc * 10 + u32::from(d - b'0')))
    };
    let at = |i: usize, c: u8| b.get(i) == Some(&c);
    let (Some(year), Some(month), Some(day)) = (digits(0, 4), digits(5, 2), digits(8, 2)) else {
        return false;
    };
    if !at(4, b'-') || !at(7, b'-') || !matches!(b.get(10), Some(b'T' | b't' | b' ')) {
        return false;
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    if day == 0 || day > days_in_month {
        return false;
    }
    let (Some(hour), Some(minute), Some(second)) = (digits(11, 2), digits(14, 2), digits(17, 2))
    else {
        return false;
    };
    if !at(13, b':') || !at(16, b':') || hour > 23 || minute > 59 || second > 60 {
        return false;
    }
    let mut i = 19;
    if at(i, b'.') {
        let fraction = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if fraction == 0 {
            return false;
        }
        i += 1 + fraction;
    }
    match b.get(i) {
        Some(b'Z' | b'z') => i + 1 == b.len(),
        Some(b'+' | b'-') => {
            let (Some(oh), Some(om)) = (digits(i + 1, 2), digits(i + 4, 2)) else {
                return false;
            };
            at(i + 3, b':') && oh <= 23 && om <= 59 && i + 6 == b.len()
        }
        _ => false,
    }
}

#[test]
fn the_timestamp_model_on_known_cases() {
    for ok in [
        TIMESTAMP,
        "2025-11-19T10:00:00Z",
        "2025-11-19t10:00:00z",
        "2025-11-19 10:00:00+00:00",
        "2024-02-29T23:59:60.5-23:59",
        "2025-12-31T00:00:00.123456789012+05:30",
    ] {
        assert!(is_rfc3339(ok), "{ok} is RFC 3339");
        assert!(ok.parse::<GoTime>().is_ok(), "{ok} must be accepted");
    }
    for bad in [
        "",
        "2025-11-19",
        "2025-11-19T10:00:00",
        "2025-11-19T10:00Z",
        "2025-11-19T10:00:00.Z",
        "2025-02-29T10:00:00Z",
        "2025-04-31T10:00:00Z",
        "2025-13-01T10:00:00Z",
        "2025-00-01T10:00:00Z",
        "2025-11-00T10:00:00Z",
        "2025-11-19T24:00:00Z",
        "2025-11-19T10:60:00Z",
        "2025-11-19T10:00:61Z",
        "2025-11-19T10:00:00+24:00",
        "2025-11-19T10:00:00+01:60",
        "2025-11-19T10:00:00+0100",
        "2025-11-19T10:00:00+01",
        "2025-11-19T10:00:00Zjunk",
        "2025-11-19X10:00:00Z",
        "25-11-19T10:00:00Z",
        "2025-1-19T10:00:00Z",
        "1732010400",
    ] {
        assert!(!is_rfc3339(bad), "{bad} is not RFC 3339");
        assert!(bad.parse::<GoTime>().is_err(), "{bad} must be refused");
    }
}

/// Accepted by the `uuid` crate: hyphenated, simple, braced or URN, any case.
fn valid_uuid(v: Option<&Value>) -> bool {
    let Some(Value::String(s)) = v else {
        return false;
    };
    let s = s.strip_prefix("urn:uuid:").unwrap_or(s);
    let s = s
        .strip_prefix('{')
        .and_then(|x| x.strip_suffix('}'))
        .unwrap_or(s);
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    let dashes_ok = !s.contains('-')
        || (s.len() == 36 && [8, 13, 18, 23].iter().all(|i| s.as_bytes()[*i] == b'-'));
    hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit()) && dashes_ok
}

fn valid_attempt(v: Option<&Value>) -> bool {
    matches!(v, Some(Value::Number(n)) if n.as_u64().is_some_and(|a| a <= u64::from(u32::MAX)))
}

fn valid_result(p: &Value) -> bool {
    let Value::Object(m) = p else { return false };
    valid_uuid(m.get("workflow_id")) && is_text(m.get("stage")) && valid_attempt(m.get("attempt"))
}

fn has_float(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.is_f64(),
        Value::Array(a) => a.iter().any(has_float),
        Value::Object(m) => m.values().any(has_float),
        _ => false,
    }
}

fn valid_envelope_shell(e: &Value) -> bool {
    let Value::Object(m) = e else { return false };
    is_text(m.get("channel")) && valid_timestamp(m.get("timestamp")) && is_text(m.get("source"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn envelopes_are_accepted_exactly_when_well_formed(e in envelope()) {
        let body = serde_json::to_vec(&e).unwrap();
        let shell = valid_envelope_shell(&e);
        let any = AmqpM8Message::<Value>::from_slice(&body);
        prop_assert_eq!(any.is_ok(), shell, "{}", e);

        let payload = e.get("payload").filter(|p| !p.is_null());
        let want = shell && payload.is_none_or(valid_result);
        let typed = AmqpM8Message::<StageResult>::from_slice(&body);
        prop_assert_eq!(typed.is_ok(), want, "{}: {:?}", e, typed.as_ref().err().map(ToString::to_string));
        match typed {
            Ok(m) => {
                // What was accepted re-encodes to what is accepted again, unchanged
                // (floats inside `detail` aside: serde_json's default float parsing
                // may move the last digit, which is harmless for a free-form detail).
                let again = AmqpM8Message::<StageResult>::from_slice(&m.to_vec().unwrap()).unwrap();
                if m.payload.as_ref().and_then(|p| p.detail.as_ref()).is_some_and(has_float) {
                    prop_assert_eq!(
                        again.payload.map(|p| (p.workflow_id, p.stage, p.attempt)),
                        m.payload.map(|p| (p.workflow_id, p.stage, p.attempt))
                    );
                } else {
                    prop_assert_eq!(again, m);
                }
            }
            Err(err) => {
                // The error says what is wrong, for the dead-letter reason.
                let text = err.to_string();
                prop_assert!(text.starts_with("malformed message body: "), "{}", text);
                prop_assert!(text.len() < 2000, "{}", text);
            }
        }
    }

    #[test]
    fn stage_jobs_decode_or_fail_without_panic(
        w in workflow_id(), s in stage(), a in attempt(),
        d in prop::option::of(any_json()),
    ) {
        let job = object(vec![("workflow_id", w), ("stage", s), ("attempt", a), ("domains", d)], None);
        let _ = serde_json::from_value::<StageJob>(job.clone());
        let _ = serde_json::from_slice::<StageJob>(&serde_json::to_vec(&job).unwrap());
    }

    #[test]
    fn timestamps_are_accepted_exactly_when_rfc3339(s in timestamp_text()) {
        prop_assert_eq!(s.parse::<GoTime>().is_ok(), is_rfc3339(&s), "{:?}", s);
    }

    #[test]
    fn near_rfc3339_timestamps_round_trip_when_accepted(s in timestamp_text()) {
        if let Ok(t) = s.parse::<GoTime>() {
            let shown = t.to_string();
            prop_assert_eq!(shown.parse::<GoTime>().unwrap(), t);
            // Serialised as JSON, it decodes to the same instant and offset.
            let j = serde_json::to_string(&t).unwrap();
            prop_assert_eq!(serde_json::from_str::<GoTime>(&j).unwrap(), t);
        }
    }
}

// ----- hostile bodies -------------------------------------------------------------------

fn refused(body: &[u8]) -> String {
    AmqpM8Message::<StageResult>::from_slice(body)
        .unwrap_err()
        .to_string()
}

#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    for depth in [129, 10_000, 1_000_000] {
        let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        // As the payload of an untyped envelope, and as the free-form detail of a
        // stage result.
        let body =
            format!(r#"{{"channel":"c","payload":{deep},"timestamp":"{TIMESTAMP}","source":"s"}}"#);
        let e = AmqpM8Message::<Value>::from_slice(body.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains("recursion limit exceeded"), "{depth}: {e}");
        let body = format!(
            r#"{{"channel":"c","payload":{{"workflow_id":"{WORKFLOW}","stage":"a","attempt":1,"detail":{deep}}},"timestamp":"{TIMESTAMP}","source":"s"}}"#
        );
        let e = refused(body.as_bytes());
        assert!(e.contains("recursion limit exceeded"), "{depth}: {e}");
    }
}

#[test]
fn numbers_out_of_range_are_refused() {
    for attempt in [
        "4294967296",
        "-1",
        "1.0",
        "1e3",
        "18446744073709551616",
        "1e400",
        "\"1\"",
        "null",
    ] {
        let body = format!(
            r#"{{"channel":"c","payload":{{"workflow_id":"{WORKFLOW}","stage":"a","attempt":{attempt}}},"timestamp":"{TIMESTAMP}","source":"s"}}"#
        );
        let e = refused(body.as_bytes());
        assert!(
            e.contains("attempt") || e.contains("invalid") || e.contains("number"),
            "{attempt}: {e}"
        );
    }
}

#[test]
fn duplicate_fields_and_lone_surrogates_are_refused() {
    let dup = format!(
        r#"{{"channel":"c","payload":{{"workflow_id":"{WORKFLOW}","stage":"a","attempt":1,"attempt":2}},"timestamp":"{TIMESTAMP}","source":"s"}}"#
    );
    assert!(refused(dup.as_bytes()).contains("duplicate field `attempt`"));
    let dup = format!(r#"{{"channel":"c","channel":"d","timestamp":"{TIMESTAMP}","source":"s"}}"#);
    assert!(refused(dup.as_bytes()).contains("duplicate field `channel`"));
    let lone = format!(r#"{{"channel":"\ud800","timestamp":"{TIMESTAMP}","source":"s"}}"#);
    let e = refused(lone.as_bytes());
    assert!(e.contains("hex escape"), "{e}");
    let lone = format!(r#"{{"channel":"\udc00x","timestamp":"{TIMESTAMP}","source":"s"}}"#);
    let e = refused(lone.as_bytes());
    assert!(e.contains("surrogate") || e.contains("escape"), "{e}");
}

#[test]
fn trailing_garbage_and_several_documents_are_refused() {
    let one = format!(r#"{{"channel":"c","timestamp":"{TIMESTAMP}","source":"s"}}"#);
    assert!(AmqpM8Message::<StageResult>::from_slice(one.as_bytes()).is_ok());
    for body in [
        format!("{one} x"),
        format!("{one}{one}"),
        format!("[{one}]"),
    ] {
        refused(body.as_bytes());
    }
    // Whitespace around the document is fine.
    assert!(AmqpM8Message::<StageResult>::from_slice(format!(" \n{one}\n ").as_bytes()).is_ok());
}

#[test]
fn the_model_accepts_what_the_go_services_send() {
    let body = json!({
        "channel": "cptm8.orchestratorm8.asmm8.failed",
        "payload": {"workflow_id": WORKFLOW, "stage": "asmm8", "attempt": 2, "detail": {"error": "x"}},
        "timestamp": TIMESTAMP,
        "source": "asmm8",
        "unknown": true
    });
    assert!(valid_envelope_shell(&body) && valid_result(&body["payload"]));
    assert!(AmqpM8Message::<StageResult>::from_slice(&serde_json::to_vec(&body).unwrap()).is_ok());
    for id in [
        WORKFLOW.to_uppercase(),
        WORKFLOW.replace('-', ""),
        format!("{{{WORKFLOW}}}"),
        format!("urn:uuid:{WORKFLOW}"),
    ] {
        assert!(valid_uuid(Some(&json!(id))), "{id}");
    }
    assert!(!valid_uuid(Some(&json!(&WORKFLOW[..35]))));
}
