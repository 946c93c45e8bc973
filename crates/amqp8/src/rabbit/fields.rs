//! Conversions between amqp8's plain types and AMQP field tables: queue arguments
//! keep their YAML types on the wire (integers stay integers), headers are strings.

use std::collections::BTreeMap;

use amqprs::{FieldName, FieldTable, FieldValue, LongStr};

use crate::broker::ArgValue;
use crate::error::AmqpError;

/// The most an AMQP short string (names, routing keys, header keys) may hold.
pub(crate) const SHORT_STR_MAX: usize = 255;

/// Checks a name that goes on the wire as a short string.
pub(crate) fn short(what: &str, value: &str) -> Result<(), AmqpError> {
    if value.len() > SHORT_STR_MAX {
        return Err(AmqpError::Encode(format!(
            "{what} is {} bytes long; AMQP allows at most {SHORT_STR_MAX}",
            value.len()
        )));
    }
    Ok(())
}

fn name(key: &str) -> Result<FieldName, AmqpError> {
    short("field name", key)?;
    FieldName::try_from(key).map_err(|e| AmqpError::Encode(format!("field name {key:?}: {e}")))
}

fn long(value: &str) -> Result<FieldValue, AmqpError> {
    LongStr::try_from(value)
        .map(FieldValue::S)
        .map_err(|e| AmqpError::Encode(format!("string value: {e}")))
}

/// Queue arguments as a field table: `Int` → signed 32-bit (`I`) when it fits, else
/// signed 64-bit (`l`); `Float` → double; `Bool` → boolean; `Str` → long string.
/// RabbitMQ treats every integer type alike when it compares arguments.
pub(crate) fn arguments(args: &BTreeMap<String, ArgValue>) -> Result<FieldTable, AmqpError> {
    let mut table = FieldTable::new();
    for (k, v) in args {
        let value = match v {
            ArgValue::Int(n) => match i32::try_from(*n) {
                Ok(small) => FieldValue::I(small),
                Err(_) => FieldValue::l(*n),
            },
            ArgValue::Float(f) => FieldValue::d(*f),
            ArgValue::Bool(b) => FieldValue::t(*b),
            ArgValue::Str(s) => long(s)?,
        };
        table.insert(name(k)?, value);
    }
    Ok(table)
}

/// String headers as a field table of long strings.
pub(crate) fn headers(headers: &BTreeMap<String, String>) -> Result<FieldTable, AmqpError> {
    let mut table = FieldTable::new();
    for (k, v) in headers {
        table.insert(name(k)?, long(v)?);
    }
    Ok(table)
}

/// A field value as text (strings as they are, numbers in decimal, nested values in a
/// debug rendering).
fn text(v: &FieldValue) -> String {
    match v {
        FieldValue::S(s) => s.as_ref().clone(),
        FieldValue::t(b) => b.to_string(),
        FieldValue::b(n) => n.to_string(),
        FieldValue::B(n) => n.to_string(),
        FieldValue::s(n) => n.to_string(),
        FieldValue::u(n) => n.to_string(),
        FieldValue::I(n) => n.to_string(),
        FieldValue::i(n) => n.to_string(),
        FieldValue::l(n) => n.to_string(),
        FieldValue::f(n) => n.to_string(),
        FieldValue::d(n) => n.to_string(),
        FieldValue::T(t) => t.to_string(),
        FieldValue::x(bytes) => {
            String::from_utf8_lossy(&Vec::<u8>::from(bytes.clone())).into_owned()
        }
        other => format!("{other:?}"),
    }
}

/// A field value as an unsigned integer, when it is a non-negative integer.
pub(crate) fn unsigned(v: &FieldValue) -> Option<u64> {
    match v {
        FieldValue::b(n) => u64::try_from(*n).ok(),
        FieldValue::B(n) => Some(u64::from(*n)),
        FieldValue::s(n) => u64::try_from(*n).ok(),
        FieldValue::u(n) => Some(u64::from(*n)),
        FieldValue::I(n) => u64::try_from(*n).ok(),
        FieldValue::i(n) => Some(u64::from(*n)),
        FieldValue::l(n) => u64::try_from(*n).ok(),
        FieldValue::T(n) => Some(*n),
        _ => None,
    }
}

/// Headers of a received message as strings, and its `x-delivery-count` when present.
pub(crate) fn received_headers(
    table: Option<&FieldTable>,
) -> (BTreeMap<String, String>, Option<u64>) {
    let mut out = BTreeMap::new();
    let mut count = None;
    if let Some(table) = table {
        for (k, v) in table.as_ref() {
            let key: &String = k.as_ref();
            if key == "x-delivery-count" {
                count = unsigned(v);
            }
            out.insert(key.clone(), text(v));
        }
    }
    (out, count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(t: &'a FieldTable, k: &str) -> &'a FieldValue {
        t.get(&FieldName::try_from(k).unwrap()).unwrap()
    }

    #[test]
    fn arguments_keep_their_types() {
        let args: BTreeMap<String, ArgValue> = [
            ("x-max-length".to_owned(), ArgValue::Int(1)),
            ("x-big".to_owned(), ArgValue::Int(1 << 40)),
            (
                "x-overflow".to_owned(),
                ArgValue::Str("reject-publish".into()),
            ),
            ("x-single-active-consumer".to_owned(), ArgValue::Bool(true)),
            ("x-ratio".to_owned(), ArgValue::Float(0.5)),
        ]
        .into();
        let t = arguments(&args).unwrap();
        assert!(matches!(get(&t, "x-max-length"), FieldValue::I(1)));
        assert!(matches!(get(&t, "x-big"), FieldValue::l(n) if *n == 1 << 40));
        assert!(
            matches!(get(&t, "x-overflow"), FieldValue::S(s) if s.as_ref() == "reject-publish")
        );
        assert!(matches!(
            get(&t, "x-single-active-consumer"),
            FieldValue::t(true)
        ));
        assert!(matches!(get(&t, "x-ratio"), FieldValue::d(f) if *f == 0.5));
    }

    #[test]
    fn headers_round_trip_and_delivery_count() {
        let h: BTreeMap<String, String> =
            [("x-death-reason".to_owned(), "bad json".to_owned())].into();
        let mut t = headers(&h).unwrap();
        t.insert(
            FieldName::try_from("x-delivery-count").unwrap(),
            FieldValue::l(3),
        );
        let (back, count) = received_headers(Some(&t));
        assert_eq!(back["x-death-reason"], "bad json");
        assert_eq!(back["x-delivery-count"], "3");
        assert_eq!(count, Some(3));
        assert_eq!(received_headers(None), (BTreeMap::new(), None));
    }

    #[test]
    fn over_long_names_are_encode_errors_not_panics() {
        let long_key = "k".repeat(256);
        let h: BTreeMap<String, String> = [(long_key, "v".to_owned())].into();
        assert!(matches!(headers(&h), Err(AmqpError::Encode(_))));
        assert!(short("routing key", &"r".repeat(255)).is_ok());
        assert!(short("routing key", &"r".repeat(256)).is_err());
    }
}
