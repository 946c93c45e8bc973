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

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use amqp8::{Broker, ConsumeOptions};
use argh::FromArgs;
use cptm8_examples::report::RetryPolicy;
use cptm8_examples::runner::{self, Failure, Serve};
use cptm8_examples::scan::{self, ScanSim};
use cptm8_examples::stage_worker::{RESULT_EXCHANGE, StageWorker, StageWorkerConfig};
use cptm8_examples::topology::{self, WorkerQueue};

const PROGRAM: &str = "stage_worker";

/// Simulated CPTM8 stage worker for managed mode: consumes a stage's jobs, simulates a
/// scan and reports the outcome to orchestratorm8.
#[derive(FromArgs, Debug)]
struct Args {
    /// stage served, e.g. asmm8
    #[argh(option)]
    stage: String,
    /// worker name, the `source` of its reports (default: the stage name)
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
    /// share of scans that fail, 0 to 1 (default 0.1)
    #[argh(option, default = "0.1")]
    failure_rate: f64,
    /// share of jobs "lost": acked without a report, so the stage times out (default 0)
    #[argh(option, default = "0.0")]
    lost_rate: f64,
    /// from this attempt on every scan succeeds; 0: never forced (default 0)
    #[argh(option, default = "0")]
    succeed_at_attempt: u32,
    /// jobs handled at once (default: the service section's prefetch, else 1)
    #[argh(option)]
    prefetch: Option<u16>,
    /// at shutdown, how long in-flight jobs may run on before they are requeued (default 10000)
    #[argh(option, default = "10000")]
    grace_ms: u64,
    /// a job delivered more often than this is dead-lettered (default 10)
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
    let sim = ScanSim::new(
        args.min_ms,
        args.max_ms,
        args.failure_rate,
        args.lost_rate,
        args.succeed_at_attempt,
    )
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
    if settings.stage(&args.stage).is_none() {
        tracing::warn!(stage = %args.stage, "the configuration's Workflow.stages has no such stage: orchestratorm8 publishes no jobs for it");
    }
    if let Some(w) = topology::unreachable_stage_warning(&settings, &args.stage, &q) {
        tracing::warn!("{w}");
    }
    let name = args.name.unwrap_or_else(|| args.stage.clone());
    let serve = Serve {
        topology: topology::worker_topology(&settings, &q, &[RESULT_EXCHANGE]),
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
    let config = StageWorkerConfig {
        name,
        stage: args.stage,
        sim,
        retry: RetryPolicy::default(),
    };
    tracing::info!(stage = %config.stage, name = %config.name, queue = %q.queue, prefetch = q.prefetch,
        dead_letter_queue = %q.dead_letter_queue(), "stage worker starting");

    let rt = runner::runtime()?;
    rt.block_on(async {
        let rabbit = runner::connect(&settings).await?;
        let broker: Arc<dyn Broker> = rabbit.clone();
        let worker = StageWorker::new(broker.clone(), config, scan::rng(args.seed));
        let served = runner::serve(broker, serve, worker.handler()).await;
        rabbit.close().await;
        served?;
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
        Ok(())
    })
}
