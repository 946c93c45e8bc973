//! The metrics of the observed ring (bootstrap mode, CONTRACT 3c), registered in the
//! orchestrator's registry by [`crate::metrics::Metrics::new`].

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::metrics::{StageLabel, registered, registered_seconds, stage_label};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

fn stage_histogram() -> Histogram {
    // 1 s .. ~9 h (2^15 s)
    Histogram::new(exponential_buckets(1.0, 2.0, 16))
}

/// Ring metrics: stage durations per scanner, cycles ended, stalls, heals, reruns,
/// failover messages.
#[derive(Debug)]
pub(crate) struct RingMetrics {
    stage_duration: Family<StageLabel, Histogram, fn() -> Histogram>,
    cycles: Family<StatusLabels, Counter>,
    stalls: Family<StageLabel, Counter>,
    heals: Family<StageLabel, Counter>,
    reruns: Family<StageLabel, Counter>,
    failover_kicks: Counter,
}

impl RingMetrics {
    /// The ring metrics, registered in `r`.
    pub(crate) fn registered(r: &mut Registry) -> RingMetrics {
        RingMetrics {
            stage_duration: registered_seconds(
                r,
                "ring_stage_duration",
                "Observed ring: how long each scanner's stage ran, from its kick-off to its chain message",
                Family::new_with_constructor(stage_histogram),
            ),
            cycles: registered(
                r,
                "ring_cycles",
                "Observed ring: cycles ended, by status (completed or failed)",
            ),
            stalls: registered(
                r,
                "ring_stalls",
                "Observed ring: stages found silent past their timeout, by scanner",
            ),
            heals: registered(
                r,
                "ring_heals",
                "Observed ring: kick-offs published by healing, by scanner kicked",
            ),
            reruns: registered(
                r,
                "ring_reruns",
                "Observed ring: chain messages of a stage not running (a redelivered kick-off scanned again), by scanner",
            ),
            failover_kicks: registered(
                r,
                "ring_failover_kicks",
                "Observed ring: the Go services' hard-coded empty-body failover messages seen",
            ),
        }
    }

    /// Pre-creates the per-scanner series at zero.
    pub(crate) fn declare(&self, stages: &[String]) {
        for s in stages {
            let l = stage_label(s);
            drop(self.stage_duration.get_or_create(&l));
            for f in [&self.stalls, &self.heals, &self.reruns] {
                drop(f.get_or_create(&l));
            }
        }
        for status in ["completed", "failed"] {
            drop(self.cycles.get_or_create(&StatusLabels {
                status: status.into(),
            }));
        }
    }

    /// A stage of `stage` ran for `seconds`.
    pub(crate) fn stage_ended(&self, stage: &str, seconds: f64) {
        self.stage_duration
            .get_or_create(&stage_label(stage))
            .observe(seconds);
    }

    /// A cycle ended with `status`.
    pub(crate) fn cycle_ended(&self, status: &str) {
        self.cycles
            .get_or_create(&StatusLabels {
                status: status.into(),
            })
            .inc();
    }

    /// A stage of `stage` stalled.
    pub(crate) fn stalled(&self, stage: &str) {
        self.stalls.get_or_create(&stage_label(stage)).inc();
    }

    /// Healing kicked `stage`.
    pub(crate) fn healed(&self, stage: &str) {
        self.heals.get_or_create(&stage_label(stage)).inc();
    }

    /// A chain message of `stage` came while it was not running.
    pub(crate) fn rerun(&self, stage: &str) {
        self.reruns.get_or_create(&stage_label(stage)).inc();
    }

    /// A failover message was seen.
    pub(crate) fn failover_kick(&self) {
        self.failover_kicks.inc();
    }
}
