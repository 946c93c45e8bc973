//! Timestamps exactly as Go's `encoding/json` writes `time.Time`.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, FixedOffset, Local, Timelike, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A point in time with its UTC offset, serialised like Go's `time.Time`
/// (`time.RFC3339Nano`): fractional seconds with trailing zeros trimmed (none when
/// zero), and `Z` for a zero offset, e.g. `2025-11-19T10:00:00.123456789+01:00`.
///
/// Parsing accepts any RFC 3339 timestamp, with or without fractional seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoTime(pub DateTime<FixedOffset>);

impl GoTime {
    /// The current local time with the machine's offset, as Go's `time.Now()`.
    pub fn now() -> Self {
        GoTime(Local::now().fixed_offset())
    }

    /// Wraps a UTC time.
    pub fn from_utc(t: DateTime<Utc>) -> Self {
        GoTime(t.fixed_offset())
    }

    /// The time in UTC.
    pub fn to_utc(&self) -> DateTime<Utc> {
        self.0.with_timezone(&Utc)
    }
}

impl fmt::Display for GoTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.0;
        write!(f, "{}", t.format("%Y-%m-%dT%H:%M:%S"))?;
        let nanos = t.nanosecond() % 1_000_000_000; // a leap second is folded back
        if nanos != 0 {
            let digits = format!("{nanos:09}");
            write!(f, ".{}", digits.trim_end_matches('0'))?;
        }
        let offset = t.offset().local_minus_utc();
        if offset == 0 {
            f.write_str("Z")
        } else {
            let sign = if offset < 0 { '-' } else { '+' };
            let abs = offset.unsigned_abs();
            write!(f, "{sign}{:02}:{:02}", abs / 3600, (abs % 3600) / 60)
        }
    }
}

impl FromStr for GoTime {
    type Err = chrono::ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DateTime::parse_from_rfc3339(s).map(GoTime)
    }
}

impl From<DateTime<Utc>> for GoTime {
    fn from(t: DateTime<Utc>) -> Self {
        GoTime::from_utc(t)
    }
}

impl Serialize for GoTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GoTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse()
            .map_err(|e| serde::de::Error::custom(format!("invalid RFC 3339 timestamp {s:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(s: &str) -> String {
        s.parse::<GoTime>().unwrap().to_string()
    }

    #[test]
    fn formats_like_go_rfc3339nano() {
        assert_eq!(
            rt("2025-11-19T10:00:00.123456789+01:00"),
            "2025-11-19T10:00:00.123456789+01:00"
        );
        assert_eq!(
            rt("2025-11-19T10:00:00.120000000+01:00"),
            "2025-11-19T10:00:00.12+01:00"
        );
        assert_eq!(
            rt("2025-11-19T10:00:00.000000000-05:30"),
            "2025-11-19T10:00:00-05:30"
        );
        assert_eq!(rt("2025-11-19T10:00:00+00:00"), "2025-11-19T10:00:00Z");
        assert_eq!(rt("2025-11-19T10:00:00.5Z"), "2025-11-19T10:00:00.5Z");
    }

    #[test]
    fn parses_go_output_exactly() {
        let t: GoTime = "2025-11-19T10:00:00.123456789+01:00".parse().unwrap();
        assert_eq!(t.0.nanosecond(), 123_456_789);
        assert_eq!(t.0.offset().local_minus_utc(), 3600);
        assert_eq!(
            t.to_utc().to_rfc3339(),
            "2025-11-19T09:00:00.123456789+00:00"
        );
    }

    #[test]
    fn rejects_garbage_with_the_value_named() {
        let err = serde_json::from_str::<GoTime>("\"yesterday\"").unwrap_err();
        assert!(err.to_string().contains("yesterday"), "{err}");
    }

    #[test]
    fn now_round_trips() {
        let t = GoTime::now();
        assert_eq!(t.to_string().parse::<GoTime>().unwrap(), t);
    }
}
