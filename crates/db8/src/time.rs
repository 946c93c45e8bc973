//! Timestamp precision shared by every implementation.
//!
//! PostgreSQL keeps microseconds; the in-memory twin truncates the same way so the two
//! return identical values.

use chrono::{DateTime, TimeDelta, Utc};

/// `t` truncated to microseconds exactly as tokio-postgres encodes a `timestamptz`
/// (microseconds since 2000-01-01, rounded toward that epoch).
pub(crate) fn db_precision(t: DateTime<Utc>) -> DateTime<Utc> {
    let epoch = DateTime::<Utc>::from_timestamp(946_684_800, 0).expect("valid epoch");
    match (t - epoch).num_microseconds() {
        Some(us) => epoch + TimeDelta::microseconds(us),
        None => t,
    }
}

/// `t + d`, saturating instead of overflowing.
pub(crate) fn plus(t: DateTime<Utc>, d: std::time::Duration) -> DateTime<Utc> {
    TimeDelta::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_to_microseconds() {
        let t = DateTime::<Utc>::from_timestamp(1_700_000_000, 123_456_789).unwrap();
        assert_eq!(
            db_precision(t),
            DateTime::<Utc>::from_timestamp(1_700_000_000, 123_456_000).unwrap()
        );
        assert_eq!(db_precision(db_precision(t)), db_precision(t));
    }

    #[test]
    fn plus_saturates() {
        let t = DateTime::<Utc>::from_timestamp(0, 0).unwrap();
        assert_eq!(
            plus(t, std::time::Duration::from_secs(5)),
            DateTime::<Utc>::from_timestamp(5, 0).unwrap()
        );
        assert_eq!(plus(t, std::time::Duration::MAX), DateTime::<Utc>::MAX_UTC);
    }
}
