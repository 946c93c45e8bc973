//! Go `time.Duration` text syntax: [`parse()`] reads what Go's `time.ParseDuration`
//! accepts (minus negative values), [`format()`] prints what Go's `Duration.String`
//! prints, so a printed value always parses back to the same duration.
//!
//! Units: `ns`, `us` (or `µs`, `μs`), `ms`, `s`, `m`, `h`; numbers may have a
//! fraction and units combine: `1h30m`, `1.5h`, `300ms`, `2h45m30.5s`. A bare `0` is
//! zero. As in Go, the largest duration is `i64::MAX` nanoseconds (about 292 years).

use std::fmt;
use std::time::Duration;

use serde::Serializer;

/// Why a text is not a Go duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The text is empty.
    #[error("empty duration")]
    Empty,
    /// The text starts with `-`: negative durations are not allowed here.
    #[error("negative durations are not allowed")]
    Negative,
    /// A number has no unit (`"10"`), or the text is not number+unit pairs.
    #[error("missing unit (expected one of ns, us, µs, ms, s, m, h)")]
    MissingUnit,
    /// An unknown unit such as `d` or `sec`.
    #[error("unknown unit {0:?} (expected one of ns, us, µs, ms, s, m, h)")]
    UnknownUnit(String),
    /// Something other than a number where a number is expected.
    #[error("invalid number")]
    InvalidNumber,
    /// Larger than Go's maximum duration (about 292 years).
    #[error("duration out of range (at most 2562047h47m16.854775807s)")]
    Overflow,
}

/// Nanoseconds per unit.
const NS: u128 = 1;
const US: u128 = 1_000;
const MS: u128 = 1_000_000;
const SEC: u128 = 1_000_000_000;
const MIN: u128 = 60 * SEC;
const HOUR: u128 = 60 * MIN;
/// Go's maximum duration in nanoseconds.
const MAX_NS: u128 = i64::MAX as u128;

/// The largest duration [`parse()`] accepts and [`format()`] is exact for (Go's maximum).
pub const MAX: Duration = Duration::new(9_223_372_036, 854_775_807);

fn unit_ns(unit: &str) -> Option<u128> {
    Some(match unit {
        "ns" => NS,
        "us" | "µs" | "μs" => US,
        "ms" => MS,
        "s" => SEC,
        "m" => MIN,
        "h" => HOUR,
        _ => return None,
    })
}

/// Parses a Go duration such as `"1h30m"`, `"1.5h"`, `"300ms"` or `"0"`.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let mut s = text;
    if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    } else if s.starts_with('-') {
        return Err(DurationError::Negative);
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let mut total: u128 = 0;
    while !s.is_empty() {
        // Integer part.
        let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
        let (int_digits, rest) = s.split_at(int_len);
        s = rest;
        // Fraction.
        let mut frac_digits = "";
        let had_dot = s.starts_with('.');
        if had_dot {
            s = &s[1..];
            let frac_len = s.bytes().take_while(u8::is_ascii_digit).count();
            (frac_digits, s) = s.split_at(frac_len);
        }
        if int_digits.is_empty() && frac_digits.is_empty() {
            // No digits at all: ".s", "h", "1h.".
            return Err(DurationError::InvalidNumber);
        }
        // Unit: everything up to the next digit or dot.
        let unit_len = s
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(s.len(), |(i, _)| i);
        let (unit, rest) = s.split_at(unit_len);
        s = rest;
        if unit.is_empty() {
            return Err(DurationError::MissingUnit);
        }
        let per = unit_ns(unit).ok_or_else(|| DurationError::UnknownUnit(unit.to_owned()))?;

        let mut value: u128 = 0;
        for b in int_digits.bytes() {
            value = value
                .checked_mul(10)
                .and_then(|v| v.checked_add(u128::from(b - b'0')))
                .filter(|v| *v <= MAX_NS)
                .ok_or(DurationError::Overflow)?;
        }
        let mut ns = value.checked_mul(per).ok_or(DurationError::Overflow)?;
        // The fraction: one hour is 3.6e12 ns, so 20 digits are far beyond nanosecond
        // precision for every unit, and 10^20 * 3.6e12 still fits a u128.
        let mut frac: u128 = 0;
        let mut scale: u128 = 1;
        for b in frac_digits.bytes().take(20) {
            frac = frac * 10 + u128::from(b - b'0');
            scale *= 10;
        }
        if frac > 0 {
            ns += frac * per / scale;
        }
        total = total.checked_add(ns).ok_or(DurationError::Overflow)?;
        if total > MAX_NS {
            return Err(DurationError::Overflow);
        }
    }
    let secs = (total / SEC) as u64;
    let nanos = (total % SEC) as u32;
    Ok(Duration::new(secs, nanos))
}

/// Formats a duration as Go's `Duration.String` does: `"1h30m0s"`, `"1.5s"`,
/// `"300ms"`, `"0s"`. Durations above [`MAX`] are printed exactly too, in the same style.
pub fn format(d: Duration) -> String {
    GoDuration(d).to_string()
}

/// `Display` adapter printing a [`Duration`] in Go syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoDuration(pub Duration);

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.0.as_nanos();
        if total == 0 {
            return f.write_str("0s");
        }
        if total < SEC {
            // ns, µs or ms with a fraction, like Go.
            let (per, unit, digits) = if total < US {
                (NS, "ns", 0)
            } else if total < MS {
                (US, "µs", 3)
            } else {
                (MS, "ms", 6)
            };
            write_fixed(f, total / per, total % per, digits)?;
            return f.write_str(unit);
        }
        let hours = total / HOUR;
        let minutes = (total % HOUR) / MIN;
        let secs = (total % MIN) / SEC;
        let nanos = total % SEC;
        if hours > 0 {
            write!(f, "{hours}h")?;
        }
        if hours > 0 || minutes > 0 {
            write!(f, "{minutes}m")?;
        }
        write_fixed(f, secs, nanos, 9)?;
        f.write_str("s")
    }
}

/// Writes `whole[.fraction]` with `digits` fraction digits, trailing zeros trimmed.
fn write_fixed(f: &mut fmt::Formatter<'_>, whole: u128, frac: u128, digits: usize) -> fmt::Result {
    write!(f, "{whole}")?;
    if frac == 0 || digits == 0 {
        return Ok(());
    }
    let s = format!("{frac:0digits$}");
    write!(f, ".{}", s.trim_end_matches('0'))
}

/// `serialize_with` helper: a [`Duration`] as its Go text.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&GoDuration(*d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn parses_go_examples() {
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        assert_eq!(parse("+5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse("300ms"), Ok(ms(300)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(
            parse("2h45m30.5s"),
            Ok(ms((2 * 3600 + 45 * 60 + 30) * 1000 + 500))
        );
        assert_eq!(parse("1us"), Ok(Duration::from_micros(1)));
        assert_eq!(parse("1µs"), Ok(Duration::from_micros(1)));
        assert_eq!(parse("1μs"), Ok(Duration::from_micros(1)));
        assert_eq!(parse("7ns"), Ok(Duration::from_nanos(7)));
        assert_eq!(parse(".5s"), Ok(ms(500)));
        assert_eq!(parse("1.s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse("1h1h"), Ok(Duration::from_secs(7200)));
        assert_eq!(
            parse("0.000000001s"),
            Ok(Duration::from_nanos(1)),
            "nanosecond precision"
        );
        assert_eq!(
            parse("0.0000000019s"),
            Ok(Duration::from_nanos(1)),
            "truncates"
        );
        assert_eq!(parse("2562047h47m16.854775807s"), Ok(MAX));
    }

    #[test]
    fn rejects_what_go_rejects_and_negatives() {
        assert_eq!(parse(""), Err(DurationError::Empty));
        assert_eq!(parse("+"), Err(DurationError::Empty));
        assert_eq!(parse("10"), Err(DurationError::MissingUnit));
        assert_eq!(parse("1h30"), Err(DurationError::MissingUnit));
        assert_eq!(parse("-1s"), Err(DurationError::Negative));
        assert_eq!(parse("1d"), Err(DurationError::UnknownUnit("d".into())));
        assert_eq!(parse("5 s"), Err(DurationError::UnknownUnit(" s".into())));
        assert_eq!(parse("1sec"), Err(DurationError::UnknownUnit("sec".into())));
        assert_eq!(parse("h"), Err(DurationError::InvalidNumber));
        assert_eq!(parse(".s"), Err(DurationError::InvalidNumber));
        assert_eq!(parse("1h."), Err(DurationError::InvalidNumber));
        assert_eq!(
            parse("2562047h47m16.854775808s"),
            Err(DurationError::Overflow)
        );
        assert_eq!(
            parse("99999999999999999999999h"),
            Err(DurationError::Overflow)
        );
    }

    #[test]
    fn unit_boundaries_take_the_larger_unit() {
        for (d, want) in [
            (Duration::from_nanos(999), "999ns"),
            (Duration::from_micros(1), "1µs"),
            (Duration::from_nanos(999_999), "999.999µs"),
            (Duration::from_millis(1), "1ms"),
            (Duration::from_nanos(999_999_999), "999.999999ms"),
            (Duration::from_secs(1), "1s"),
        ] {
            assert_eq!(format(d), want, "{d:?}");
        }
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format(Duration::ZERO), "0s");
        assert_eq!(format(Duration::from_nanos(7)), "7ns");
        assert_eq!(format(Duration::from_nanos(1500)), "1.5µs");
        assert_eq!(format(ms(300)), "300ms");
        assert_eq!(format(Duration::from_micros(1_234_567)), "1.234567s");
        assert_eq!(format(Duration::from_secs(30)), "30s");
        assert_eq!(format(Duration::from_secs(90)), "1m30s");
        assert_eq!(format(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(format(Duration::from_secs(5400)), "1h30m0s");
        assert_eq!(format(MAX), "2562047h47m16.854775807s");
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,24}") {
            let _ = parse(&s);
        }

        #[test]
        fn never_panics_on_duration_like_text(s in "[+-]?([0-9]{0,25}(\\.[0-9]{0,25})?(ns|us|µs|ms|s|m|h|x)?){0,4}") {
            let _ = parse(&s);
        }

        #[test]
        fn format_then_parse_round_trips(ns in 0u64..=i64::MAX as u64) {
            let d = Duration::from_nanos(ns);
            prop_assert_eq!(parse(&format(d)), Ok(d));
        }

        #[test]
        fn combined_units_add_up(h in 0u64..1000, m in 0u64..1000, s in 0u64..1000, msec in 0u64..1000) {
            let text = format!("{h}h{m}m{s}s{msec}ms");
            let want = Duration::from_secs(h * 3600 + m * 60 + s) + ms(msec);
            prop_assert_eq!(parse(&text), Ok(want));
        }
    }
}
