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

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use amqp8::{Broker, ConsumeOptions};
use argh::FromArgs;
use cptm8_examples::chain_worker::{ChainWorker, ChainWorkerConfig, NextStage};
use cptm8_examples::report::RetryPolicy;
use cptm8_examples::runner::{self, Failure, Serve};
use cptm8_examples::scan::{self, ScanSim};
use cptm8_examples::topology::{self, WorkerQueue};

const PROGRAM: &str = "go_style_worker";

/// Simulated CPTM8 service in the Go style (bootstrap mode): scans when kicked off,
/// then kicks off the next stages.
#[derive(FromArgs, Debug)]
struct Args {
    /// stage served, e.g. asmm8
    #[argh(option)]
    stage: String,
    /// next stage to kick off (repeatable; default: the stages depending on this one;
    /// `--next none` for none)
    #[argh(option)]
    next: Vec<String>,
    /// worker name, the `source` of what it publishes (default: the stage name)
    #[argh(option)]
    name: Option<String>,
    /// queue consumed (default: the stage's service section `Queue[1]`, else `q<stage>`)
    #[argh(option)]
    queue: Option<String>,
    /// configuration file (default: $ORCHESTRATORM8_CONFIG, else configs/configuration.yaml)
    #[argh(option)]
    config: Option<PathBuf>,
    /// shortest simulated scan, in milliseconds (default 500)
    #[argh(option, default = "500")]
    min_ms: u64,
    /// longest simulated scan, in milliseconds (default 3000)
    #[argh(option, default = "3000")]
    max_ms: u64,
    /// share of scans that fail (and chain to nothing), 0 to 1 (default 0)
    #[argh(option, default = "0.0")]
    failure_rate: f64,
    /// messages handled at once (default: the service section's prefetch, else 1)
    #[argh(option)]
    prefetch: Option<u16>,
    /// at shutdown, how long in-flight scans may run on before they are requeued (default 10000)
    #[argh(option, default = "10000")]
    grace_ms: u64,
    /// a message delivered more often than this is dead-lettered (default 10)
    #[argh(option, default = "10")]
    max_redeliveries: u32,
    /// random seed, for reproducible runs
    #[argh(option)]
    seed: Option<u64>,
}

fn main() -> ExitCode {
    let args: Args = argh::from_env();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => f.report(PROGRAM),
    }
}

fn run(args: Args) -> Result<(), Failure> {
    if args.stage.is_empty() || args.stage.contains(['.', '#', '*', ' ']) {
        return Err(Failure::Usage(format!(
            "--stage {:?}: expected a stage name such as asmm8 (no dots, spaces or wildcards)",
            args.stage
        )));
    }
    if args.prefetch == Some(0) {
        return Err(Failure::Usage("--prefetch must be at least 1".into()));
    }
    let sim = ScanSim::new(args.min_ms, args.max_ms, args.failure_rate, 0.0, 0)
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let settings = runner::load_settings(PROGRAM, args.config)?;
    let _log = runner::init_logging(&settings)?;

    let mut q = WorkerQueue::from_settings(&settings, &args.stage);
    if let Some(name) = args.queue {
        q.queue = name;
    }
    if let Some(p) = args.prefetch {
        q.prefetch = p;
    }
    let next: Vec<NextStage> = if args.next.is_empty() {
        NextStage::after(&settings, &args.stage)
    } else if args.next == ["none"] {
        Vec::new()
    } else {
        args.next
            .iter()
            .map(|n| NextStage::from_settings(&settings, n))
            .collect()
    };
    let exchanges: Vec<&str> = next.iter().map(|n| n.exchange.as_str()).collect();
    let name = args.name.unwrap_or_else(|| args.stage.clone());
    let serve = Serve {
        topology: topology::worker_topology(&settings, &q, &exchanges),
        consume: ConsumeOptions {
            queue: q.queue.clone(),
            tag: q.tag.clone(),
            prefetch: q.prefetch,
            autoack: false,
            max_redeliveries: args.max_redeliveries,
            dead_letter: Some(q.dead_letter_route()),
        },
        grace: runner::millis(args.grace_ms),
        health_every: std::time::Duration::from_secs(5),
    };
    let next_keys: Vec<&str> = next.iter().map(|n| n.routing_key.as_str()).collect();
    tracing::info!(stage = %args.stage, name = %name, queue = %q.queue, next = ?next_keys,
        "Go-style worker starting");
    let config = ChainWorkerConfig {
        name,
        sim,
        next,
        retry: RetryPolicy {
            // The next queue (x-max-length 1, reject-publish) stays full while its
            // worker is busy: keep trying for longer than a scan takes.
            give_up_after: std::time::Duration::from_secs(300),
            ..RetryPolicy::default()
        },
    };

    let rt = runner::runtime()?;
    rt.block_on(async {
        let rabbit = runner::connect(&settings).await?;
        let broker: Arc<dyn Broker> = rabbit.clone();
        let worker = ChainWorker::new(broker.clone(), config, scan::rng(args.seed));
        let served = runner::serve(broker, serve, worker.handler()).await;
        rabbit.close().await;
        served?;
        let (scans, chained) = worker.counts();
        tracing::info!(scans, chained, "Go-style worker stopped");
        Ok(())
    })
}
