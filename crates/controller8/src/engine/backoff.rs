//! Retry delays: exponential backoff with jitter. Pure functions; the random draw is
//! passed in so that tests are deterministic.

use std::time::Duration;

use config8::BackoffSettings;

/// The delay before attempt `failed_attempt + 1` after attempt `failed_attempt` (1 for
/// the first) failed or timed out: `initial * multiplier^(failed_attempt - 1)`, capped
/// at `max`, then "equal jitter": a uniformly drawn value in `[d/2, d]`, where `unit`
/// (in `[0, 1)`) is the random draw. Never panics, never overflows.
pub(crate) fn retry_delay(settings: &BackoffSettings, failed_attempt: u32, unit: f64) -> Duration {
    jittered(exponential(settings, failed_attempt), unit)
}

/// The un-jittered delay: `initial * multiplier^(failed_attempt - 1)`, capped at `max`.
pub(crate) fn exponential(settings: &BackoffSettings, failed_attempt: u32) -> Duration {
    let max = settings.max.max(settings.initial);
    let multiplier = if settings.multiplier.is_finite() && settings.multiplier >= 1.0 {
        settings.multiplier
    } else {
        1.0
    };
    let exponent = i32::try_from(failed_attempt.saturating_sub(1)).unwrap_or(i32::MAX);
    let secs = settings.initial.as_secs_f64() * multiplier.powi(exponent);
    if !secs.is_finite() || secs >= max.as_secs_f64() {
        return max;
    }
    Duration::try_from_secs_f64(secs).map_or(max, |d| d.min(max))
}

/// `d` with equal jitter: a value in `[d/2, d]` chosen by `unit` in `[0, 1)`.
pub(crate) fn jittered(d: Duration, unit: f64) -> Duration {
    let unit = if unit.is_finite() {
        unit.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let half = d / 2;
    half + (d - half).mul_f64(unit)
}

/// A random draw in `[0, 1)` for [`retry_delay`].
pub(crate) fn draw() -> f64 {
    rand::random::<f64>()
}

/// Backpressure backoff of one stage: a full or unroutable stage queue is tried again
/// after [`Pressure::FIRST`], doubling up to [`Pressure::MAX`] while it stays full,
/// and reset by a publish that is confirmed. Never zero, so a full queue is never
/// retried in a busy loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pressure {
    next: Duration,
}

impl Default for Pressure {
    fn default() -> Self {
        Pressure { next: Self::FIRST }
    }
}

impl Pressure {
    /// The first delay after a refused publish.
    pub(crate) const FIRST: Duration = Duration::from_secs(1);
    /// The largest delay.
    pub(crate) const MAX: Duration = Duration::from_secs(30);

    /// The delay to wait after one more refused publish, and the doubled delay for the
    /// time after.
    pub(crate) fn refused(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(initial: u64, max: u64, multiplier: f64) -> BackoffSettings {
        BackoffSettings {
            initial: Duration::from_secs(initial),
            max: Duration::from_secs(max),
            multiplier,
        }
    }

    #[test]
    fn grows_exponentially_up_to_the_cap() {
        let s = b(30, 600, 2.0);
        let got: Vec<u64> = (1..=7).map(|a| exponential(&s, a).as_secs()).collect();
        assert_eq!(got, [30, 60, 120, 240, 480, 600, 600]);
        // attempt 0 is treated as the first failure
        assert_eq!(exponential(&s, 0), Duration::from_secs(30));
    }

    #[test]
    fn multiplier_one_is_constant_and_bad_multipliers_are_safe() {
        assert_eq!(exponential(&b(5, 60, 1.0), 9), Duration::from_secs(5));
        assert_eq!(exponential(&b(5, 60, f64::NAN), 9), Duration::from_secs(5));
        assert_eq!(exponential(&b(5, 60, 0.5), 9), Duration::from_secs(5));
        assert_eq!(
            exponential(&b(5, 60, f64::INFINITY), 9),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn huge_attempts_and_durations_do_not_overflow() {
        let s = BackoffSettings {
            initial: Duration::from_secs(u64::MAX / 2),
            max: Duration::MAX,
            multiplier: 10.0,
        };
        assert_eq!(exponential(&s, u32::MAX), Duration::MAX);
        assert_eq!(
            exponential(&b(1, 3600, 2.0), u32::MAX),
            Duration::from_secs(3600)
        );
        let _ = retry_delay(&s, u32::MAX, 0.999);
    }

    #[test]
    fn max_below_initial_means_initial() {
        assert_eq!(exponential(&b(30, 10, 2.0), 3), Duration::from_secs(30));
    }

    #[test]
    fn jitter_stays_within_half_and_full() {
        let d = Duration::from_secs(100);
        assert_eq!(jittered(d, 0.0), Duration::from_secs(50));
        assert_eq!(jittered(d, 0.5), Duration::from_secs(75));
        assert!(jittered(d, 0.999_999) <= d);
        assert_eq!(jittered(d, f64::NAN), Duration::from_secs(50));
        assert_eq!(jittered(d, 7.0), d);
        for _ in 0..1000 {
            let j = retry_delay(&b(30, 600, 2.0), 2, draw());
            assert!(
                j >= Duration::from_secs(30) && j <= Duration::from_secs(60),
                "{j:?}"
            );
        }
    }

    #[test]
    fn draws_spread_over_zero_to_one() {
        let draws: Vec<f64> = (0..1000).map(|_| draw()).collect();
        assert!(draws.iter().all(|u| (0.0..1.0).contains(u)), "{draws:?}");
        // A constant or a narrow draw would not jitter: with 1000 uniform draws, each
        // bound below fails with a probability under 1e-45.
        assert!(draws.iter().any(|u| *u < 0.1) && draws.iter().any(|u| *u > 0.9));
    }

    #[test]
    fn pressure_doubles_to_thirty_seconds() {
        let mut p = Pressure::default();
        let got: Vec<u64> = (0..7).map(|_| p.refused().as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 30, 30]);
    }
}
