//! A simulated scan: how long it takes and how it ends, drawn at random within the
//! limits the worker was started with.

use std::time::Duration;

use rand::{Rng, SeedableRng, rngs::StdRng};

/// How a simulated scan ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanEnd {
    /// The scan succeeded: report `completed`.
    Completed,
    /// The scan failed with this error: report `failed`.
    Failed(String),
    /// The worker "crashes" after taking the job: it acks the job and reports nothing,
    /// so the orchestrator sees the stage time out and retries it.
    Lost,
}

/// One scan's plan: its duration and its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanPlan {
    /// How long the scan runs.
    pub duration: Duration,
    /// How it ends.
    pub end: ScanEnd,
}

/// Why scan limits were refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScanError {
    /// `--min-ms` is larger than `--max-ms`.
    #[error("--min-ms ({min}) must not be larger than --max-ms ({max})")]
    Range {
        /// Shortest scan in milliseconds.
        min: u64,
        /// Longest scan in milliseconds.
        max: u64,
    },
    /// A rate outside `0..=1`.
    #[error("{flag} must be between 0 and 1, got {value}")]
    Rate {
        /// The flag, e.g. `--failure-rate`.
        flag: &'static str,
        /// The value given.
        value: f64,
    },
    /// The failure and loss rates add up to more than 1.
    #[error("--failure-rate ({failure}) plus --lost-rate ({lost}) must not exceed 1")]
    Sum {
        /// Failure rate.
        failure: f64,
        /// Loss rate.
        lost: f64,
    },
}

/// The limits of the simulation.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanSim {
    min: Duration,
    max: Duration,
    failure_rate: f64,
    lost_rate: f64,
    succeed_at_attempt: u32,
    /// The message of a simulated failure, instead of the default one.
    failure_message: Option<String>,
}

impl ScanSim {
    /// Reports `message` as the error of every simulated failure (the console's
    /// browser test uses markup here, to check that it is shown as text).
    pub fn with_failure_message(mut self, message: Option<String>) -> Self {
        self.failure_message = message;
        self
    }

    /// Scans last between `min_ms` and `max_ms` milliseconds; a share `failure_rate` of
    /// them fail and a share `lost_rate` are lost (never reported). From attempt
    /// `succeed_at_attempt` on (0: never) every scan succeeds, so that a demo with
    /// `max_attempts` equal to it always ends with every workflow completed.
    pub fn new(
        min_ms: u64,
        max_ms: u64,
        failure_rate: f64,
        lost_rate: f64,
        succeed_at_attempt: u32,
    ) -> Result<Self, ScanError> {
        if min_ms > max_ms {
            return Err(ScanError::Range {
                min: min_ms,
                max: max_ms,
            });
        }
        for (flag, value) in [("--failure-rate", failure_rate), ("--lost-rate", lost_rate)] {
            if !(0.0..=1.0).contains(&value) {
                return Err(ScanError::Rate { flag, value });
            }
        }
        if failure_rate + lost_rate > 1.0 {
            return Err(ScanError::Sum {
                failure: failure_rate,
                lost: lost_rate,
            });
        }
        Ok(ScanSim {
            min: Duration::from_millis(min_ms),
            max: Duration::from_millis(max_ms),
            failure_rate,
            lost_rate,
            succeed_at_attempt,
            failure_message: None,
        })
    }

    /// Draws the plan of attempt `attempt` of a scan.
    pub fn plan(&self, attempt: u32, rng: &mut impl Rng) -> ScanPlan {
        let duration = if self.min == self.max {
            self.min
        } else {
            rng.random_range(self.min..=self.max)
        };
        let forced_success = self.succeed_at_attempt > 0 && attempt >= self.succeed_at_attempt;
        let roll: f64 = rng.random();
        let end = if forced_success {
            ScanEnd::Completed
        } else if roll < self.failure_rate {
            ScanEnd::Failed(self.failure_message.clone().unwrap_or_else(|| {
                format!(
                    "simulated scanner failure (failure rate {})",
                    self.failure_rate
                )
            }))
        } else if roll < self.failure_rate + self.lost_rate {
            ScanEnd::Lost
        } else {
            ScanEnd::Completed
        };
        ScanPlan { duration, end }
    }
}

/// A random generator: from `seed` when given (reproducible runs), else from the OS.
pub fn rng(seed: Option<u64>) -> StdRng {
    match seed {
        Some(s) => StdRng::seed_from_u64(s),
        None => StdRng::from_os_rng(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked() {
        assert_eq!(
            ScanSim::new(5, 1, 0.0, 0.0, 0).unwrap_err(),
            ScanError::Range { min: 5, max: 1 }
        );
        assert!(matches!(
            ScanSim::new(1, 5, 1.5, 0.0, 0),
            Err(ScanError::Rate {
                flag: "--failure-rate",
                ..
            })
        ));
        assert!(matches!(
            ScanSim::new(1, 5, 0.0, f64::NAN, 0),
            Err(ScanError::Rate {
                flag: "--lost-rate",
                ..
            })
        ));
        assert!(matches!(
            ScanSim::new(1, 5, 0.6, 0.6, 0),
            Err(ScanError::Sum { .. })
        ));
    }

    #[test]
    fn durations_stay_within_limits_and_rates_are_respected() {
        let sim = ScanSim::new(10, 20, 0.3, 0.1, 0).unwrap();
        let mut r = rng(Some(7));
        let (mut failed, mut lost) = (0, 0);
        for _ in 0..10_000 {
            let p = sim.plan(1, &mut r);
            assert!((10..=20).contains(&p.duration.as_millis()));
            match p.end {
                ScanEnd::Failed(_) => failed += 1,
                ScanEnd::Lost => lost += 1,
                ScanEnd::Completed => {}
            }
        }
        // 10 000 draws: the shares are within a few percent of the rates.
        assert!((2_700..=3_300).contains(&failed), "{failed}");
        assert!((700..=1_300).contains(&lost), "{lost}");
    }

    #[test]
    fn every_attempt_from_succeed_at_attempt_on_succeeds() {
        let sim = ScanSim::new(0, 0, 1.0, 0.0, 3).unwrap();
        let mut r = rng(Some(1));
        assert!(matches!(sim.plan(1, &mut r).end, ScanEnd::Failed(_)));
        assert!(matches!(sim.plan(2, &mut r).end, ScanEnd::Failed(_)));
        assert_eq!(sim.plan(3, &mut r).end, ScanEnd::Completed);
        assert_eq!(sim.plan(9, &mut r).end, ScanEnd::Completed);
        let never = ScanSim::new(0, 0, 1.0, 0.0, 0).unwrap();
        assert!(matches!(never.plan(50, &mut r).end, ScanEnd::Failed(_)));
    }
}
