//! What every benchmark gets: the run's options.

use std::path::PathBuf;
use std::time::Instant;

/// The run's options.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Smoke mode: sizes divided by 10, one repetition.
    pub quick: bool,
    /// Repetitions of each throughput pair.
    pub reps: usize,
    /// The release `orchestratorm8` binary.
    pub orchestrator: PathBuf,
    /// This binary (re-executed for child measurements).
    pub self_exe: PathBuf,
    /// When the run started (for progress lines).
    pub started: Instant,
    /// Where artefacts worth keeping go (the report's directory, e.g. `target/bench`).
    pub out_dir: PathBuf,
}

impl Ctx {
    /// `full`, or a tenth of it in quick mode.
    pub fn size(&self, full: u64) -> u64 {
        if self.quick { full / 10 } else { full }
    }

    /// Prints a progress line.
    pub fn log(&self, bench: &str, msg: impl std::fmt::Display) {
        eprintln!(
            "bench8 [{:>6.1}s] {bench}: {msg}",
            self.started.elapsed().as_secs_f64()
        );
    }
}

/// The median of `samples` (the mean of the two middle ones for an even count).
pub fn median(samples: &[f64]) -> f64 {
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Samples for a detail line: `a, b, c`.
pub fn list(samples: &[f64]) -> String {
    samples
        .iter()
        .map(|x| crate::report::human(*x))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
