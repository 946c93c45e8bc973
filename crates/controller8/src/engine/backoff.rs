//! Retry delays: exponential backoff with jitter. Pure functions; the random draw is
//! passed in so that tests are deterministic.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
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

/// Backpressure: a full or unroutable stage queue, or a broker that refuses the
/// topology or a consumer, is tried again after 1 s, doubling up to 30 s while it
/// keeps refusing; reset by a success. Never zero, so never a busy loop.
pub(crate) const PRESSURE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));

/// Doubling delays from a first one up to a cap: `backon`'s exponential steps (no
/// jitter), each rounded to whole milliseconds, because backon multiplies in `f32`
/// (200 ms doubled would be 400.000006 ms, in the logs and in the paused-clock tests).
/// The one backoff of controller8's retry loops.
#[derive(Debug)]
pub(crate) struct Doubling {
    builder: ExponentialBuilder,
    steps: ExponentialBackoff,
    max: Duration,
}

impl Doubling {
    /// Starts at `first`, doubles, never above `max` (nor below `first`).
    pub(crate) fn new((first, max): (Duration, Duration)) -> Self {
        let max = max.max(first);
        let builder = ExponentialBuilder::new()
            .with_min_delay(first)
            .with_max_delay(max)
            .with_factor(2.0)
            .without_max_times();
        let steps = builder.build();
        Doubling {
            builder,
            steps,
            max,
        }
    }

    /// The delay to wait now; the following one doubles, up to the cap.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.steps.next().unwrap_or(self.max);
        let millis = (d.as_nanos() + 500_000) / 1_000_000;
        Duration::from_millis(u64::try_from(millis).unwrap_or(u64::MAX)).min(self.max)
    }

    /// After a success: start again from the first delay.
    pub(crate) fn reset(&mut self) {
        self.steps = self.builder.build();
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
        let mut p = Doubling::new(PRESSURE);
        let got: Vec<u64> = (0..7).map(|_| p.next_delay().as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 30, 30]);
    }

    #[test]
    fn doubling_steps_are_exact_and_reset() {
        let mut d = Doubling::new((Duration::from_millis(200), Duration::from_secs(10)));
        let got: Vec<Duration> = (0..8).map(|_| d.next_delay()).collect();
        let ms = [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000];
        assert_eq!(got, ms.map(Duration::from_millis));
        d.reset();
        assert_eq!(d.next_delay(), Duration::from_millis(200));
        let mut odd = Doubling::new((Duration::from_millis(20), Duration::from_secs(1)));
        let got: Vec<u128> = (0..8).map(|_| odd.next_delay().as_millis()).collect();
        assert_eq!(got, [20, 40, 80, 160, 320, 640, 1000, 1000]);
        let mut capped = Doubling::new((Duration::from_secs(30), Duration::from_secs(10)));
        assert_eq!(capped.next_delay(), Duration::from_secs(30));
        assert_eq!(capped.next_delay(), Duration::from_secs(30));
    }
}
