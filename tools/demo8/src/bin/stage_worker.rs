//! `stage_worker`: a simulated managed-mode stage worker (CONTRACT section 3).
//!
//! ```text
//! stage_worker --stage asmm8 [--queue qasmm8] [--config PATH] [--min-ms 500]
//!              [--max-ms 3000] [--failure-rate 0.1] [--lost-rate 0] [--prefetch N]
//! ```
//!
//! Consumes the stage's queue with manual ack, simulates a scan, reports
//! `cptm8.orchestratorm8.<stage>.<completed|failed>` on exchange `cptm8` with publisher
//! confirms and acks the job once the report is confirmed. Ctrl-C or SIGTERM: no new
//! jobs, in-flight jobs finish within `--grace-ms` or return to the queue; a second
//! signal exits at once. Exit codes: 0 clean stop, 2 bad flags or configuration,
//! 1 broker failure.

use std::process::ExitCode;

use demo8::report::RetryPolicy;
use demo8::runner::{self, Failure};
use demo8::scan::{self, ScanSim};
use demo8::stage_worker::{RESULT_EXCHANGE, StageWorker, StageWorkerConfig};
use demo8::topology;
use demo8::worker_args::WorkerOptions;

const PROGRAM: &str = "stage_worker";

fn main() -> ExitCode {
    runner::main(PROGRAM, run)
}

fn run(o: WorkerOptions) -> Result<(), Failure> {
    o.check()?;
    let sim = ScanSim::new(
        o.min_ms,
        o.max_ms,
        o.failure_rate,
        o.lost_rate,
        o.succeed_at_attempt,
    )
    .map_err(|e| Failure::Usage(e.to_string()))?
    .with_failure_message(o.failure_message.clone());
    let settings = runner::load_settings(PROGRAM, o.config.clone())?;
    let _log = runner::init_logging(&settings)?;

    let q = o.queue(&settings);
    if settings.stage(&o.stage).is_none() {
        tracing::warn!(stage = %o.stage, "the configuration's Workflow.stages has no such stage: orchestratorm8 publishes no jobs for it");
    }
    if let Some(w) = topology::unreachable_stage_warning(&settings, &o.stage, &q) {
        tracing::warn!("{w}");
    }
    let serve = o.serve(&settings, &q, &[RESULT_EXCHANGE]);
    let config = StageWorkerConfig {
        name: o.name(),
        stage: o.stage.clone(),
        sim,
        retry: RetryPolicy::default(),
    };
    tracing::info!(stage = %config.stage, name = %config.name, queue = %q.queue, prefetch = q.prefetch,
        dead_letter_queue = %q.dead_letter_queue(), "stage worker starting");

    runner::serve_worker(
        &settings,
        serve,
        |broker| {
            let worker = StageWorker::new(broker, config, scan::rng(o.seed));
            let handler = worker.handler();
            (worker, handler)
        },
        |worker| {
            let s = worker.stats();
            tracing::info!(
                completed = s.completed,
                failed = s.failed,
                lost = s.lost,
                duplicates = s.duplicates,
                dead_lettered = s.dead_lettered,
                requeued = s.requeued,
                "stage worker stopped"
            );
        },
    )
}
