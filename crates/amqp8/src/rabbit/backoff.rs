//! Exponential backoff with jitter for reconnecting: it starts small so that a broker
//! that comes back is found quickly, and is capped low (at most one second by
//! default) so that recovery stays within about a second of the broker's return.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use rand::Rng;

/// Delays between reconnection attempts: backon's doubling steps with ±20 % jitter.
#[derive(Debug)]
pub(crate) struct Backoff {
    builder: ExponentialBuilder,
    max: Duration,
    steps: ExponentialBackoff,
}

impl Backoff {
    /// Starts at `initial`, doubles, never above `max`.
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        let max = max.max(initial);
        let builder = ExponentialBuilder::new()
            .with_min_delay(initial)
            .with_max_delay(max)
            .with_factor(2.0)
            .without_max_times();
        Backoff {
            builder,
            max,
            steps: builder.build(),
        }
    }

    /// The delay before the next attempt: the current step with ±20 % jitter.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let step = self.steps.next().unwrap_or(self.max);
        let factor = rand::rng().random_range(0.8..1.2);
        step.mul_f64(factor).min(self.max)
    }

    /// After a success: start small again.
    pub(crate) fn reset(&mut self) {
        self.steps = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        let first = b.next_delay();
        assert!(
            first >= Duration::from_millis(40) && first <= Duration::from_millis(60),
            "{first:?}"
        );
        for _ in 0..10 {
            assert!(b.next_delay() <= Duration::from_secs(1));
        }
        let capped = b.next_delay();
        assert!(capped >= Duration::from_millis(800), "{capped:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(60));
    }
}
