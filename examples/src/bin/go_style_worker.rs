//! `go_style_worker`: a worker that behaves like the Go CPTM8 services, for bootstrap
//! mode.
//!
//! ```text
//! go_style_worker --stage asmm8 [--next naabum8 ...] [--config PATH] [--min-ms 500]
//!                 [--max-ms 3000] [--failure-rate 0] [--prefetch N]
//! ```
//!
//! Consumes the stage's queue (e.g. the orchestrator's bootstrap kick-off
//! `cptm8.asmm8.get.scan`, no payload) with manual ack, simulates a scan and, when it
//! succeeds, publishes the next stages' `get.scan` (default: the stages that depend on
//! this one in `Workflow.stages`; asmm8 → naabum8 → katanam8 and num8), confirmed,
//! before acking. It reports nothing to the orchestrator. Ctrl-C or SIGTERM stops it
//! as `stage_worker` stops.

use std::process::ExitCode;

use cptm8_examples::chain_worker::{ChainWorker, ChainWorkerConfig, NextStage};
use cptm8_examples::report::RetryPolicy;
use cptm8_examples::runner::{self, Failure};
use cptm8_examples::scan::{self, ScanSim};

const PROGRAM: &str = "go_style_worker";

cptm8_examples::worker_args! {
    /// Simulated CPTM8 service in the Go style (bootstrap mode): scans when kicked off,
    /// then kicks off the next stages.
    struct Args {
        /// next stage to kick off (repeatable; default: the stages depending on this one;
        /// `--next none` for none)
        #[argh(option)]
        next: Vec<String>,
        /// share of scans that fail (and chain to nothing), 0 to 1 (default 0)
        #[argh(option, default = "0.0")]
        failure_rate: f64,
    }
}

fn main() -> ExitCode {
    runner::main(PROGRAM, run)
}

fn run(args: Args) -> Result<(), Failure> {
    let o = args.options();
    o.check()?;
    let sim = ScanSim::new(o.min_ms, o.max_ms, args.failure_rate, 0.0, 0)
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let settings = runner::load_settings(PROGRAM, o.config.clone())?;
    let _log = runner::init_logging(&settings)?;

    let q = o.queue(&settings);
    let next: Vec<NextStage> = if args.next.is_empty() {
        NextStage::after(&settings, &o.stage)
    } else if args.next == ["none"] {
        Vec::new()
    } else {
        args.next
            .iter()
            .map(|n| NextStage::from_settings(&settings, n))
            .collect()
    };
    let exchanges: Vec<&str> = next.iter().map(|n| n.exchange.as_str()).collect();
    let serve = o.serve(&settings, &q, &exchanges);
    let next_keys: Vec<&str> = next.iter().map(|n| n.routing_key.as_str()).collect();
    tracing::info!(stage = %o.stage, name = %o.name(), queue = %q.queue, next = ?next_keys,
        "Go-style worker starting");
    let config = ChainWorkerConfig {
        name: o.name(),
        sim,
        next,
        retry: RetryPolicy {
            // The next queue (x-max-length 1, reject-publish) stays full while its
            // worker is busy: keep trying for longer than a scan takes.
            give_up_after: std::time::Duration::from_secs(300),
            ..RetryPolicy::default()
        },
    };

    runner::serve_worker(
        &settings,
        serve,
        |broker| {
            let worker = ChainWorker::new(broker, config, scan::rng(o.seed));
            let handler = worker.handler();
            (worker, handler)
        },
        |worker| {
            let (scans, chained) = worker.counts();
            tracing::info!(scans, chained, "Go-style worker stopped");
        },
    )
}
