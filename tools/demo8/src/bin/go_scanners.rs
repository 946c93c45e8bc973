//! `go_scanners`: stand-ins for the CPTM8 Go scanners (asmm8, naabum8, katanam8, num8),
//! all four from one command, behaving on the wire as `CPTM8-PLATFORM.md` describes.
//!
//! ```text
//! go_scanners [--scanner asmm8 ...] [--publisher asmm8=cptm8,cptm8.orchestratorm8.asmm8.done,asmm8 ...]
//!             [--fail naabum8:soft:1 ...] [--scan-ms 500] [--slow-ms 10000]
//!             [--unacked-ms 3000] [--severity high] [--config PATH]
//! ```
//!
//! Each scanner declares its own queue (`q<svc>`, durable, `x-max-length: 1`,
//! `x-overflow: reject-publish`, bound with `cptm8.<svc>.#`), consumes it with prefetch 1
//! and manual ack, ignores the message, reads the enabled `cptm8domain` rows from the
//! configuration's `Database`, and when the scan ends publishes its `Publisher` (default:
//! the next scanner's kick-off, the ring) and acks. `--fail SCANNER:KIND[:RUNS]` injects
//! failures deterministically (kinds: soft, silent, hard, warning, incomplete, empty,
//! slow, failover, unacked; runs `N`, `N-M` or `*`). Ctrl-C or SIGTERM stops it.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use demo8::runner::{self, Failure};
use demo8::scanner::{FaultPlan, FaultRule, Publisher, RING, ScannerConfig, Scanners};
use demo8::shutdown;

const PROGRAM: &str = "go_scanners";

/// Stand-ins for the CPTM8 Go scanners: each consumes its queue, scans every enabled
/// domain, publishes its `Publisher` message, acks at the end.
#[derive(argh::FromArgs, Debug)]
struct Args {
    /// scanner to run (repeatable; default: asmm8, naabum8, katanam8, num8)
    #[argh(option)]
    scanner: Vec<String>,
    /// a scanner's Publisher, NAME=EXCHANGE,ROUTING_KEY,SOURCE (repeatable; default:
    /// the next scanner's kick-off)
    #[argh(option)]
    publisher: Vec<String>,
    /// failure on demand, SCANNER:KIND or SCANNER:KIND:RUNS, e.g. naabum8:soft:1 (repeatable)
    #[argh(option)]
    fail: Vec<String>,
    /// duration of a scan in milliseconds (default 500)
    #[argh(option, default = "500")]
    scan_ms: u64,
    /// duration of a `slow` scan in milliseconds (default 10000)
    #[argh(option, default = "10000")]
    slow_ms: u64,
    /// how long an `unacked` kick-off stays unacked before it returns to the queue, in
    /// milliseconds (default 3000)
    #[argh(option, default = "3000")]
    unacked_ms: u64,
    /// severity of a hard error's app.error notification (default high)
    #[argh(option, default = "String::from(\"high\")")]
    severity: String,
    /// ack without a scan a kick-off whose message_id this scanner already scanned to
    /// the end (a copy). Off by default: the real Go scanners scan every delivery,
    /// and the stand-ins stay faithful (they count copies either way)
    #[argh(switch)]
    drop_copies: bool,
    /// configuration file (default: $ORCHESTRATORM8_CONFIG, else configs/configuration.yaml)
    #[argh(option)]
    config: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    runner::main(PROGRAM, run)
}

/// The scanners and their publishers from the flags.
fn scanners(args: &Args) -> Result<Vec<(String, Publisher)>, Failure> {
    let names: Vec<String> = if args.scanner.is_empty() {
        RING.map(String::from).to_vec()
    } else {
        args.scanner.clone()
    };
    let mut out: Vec<(String, Publisher)> = names
        .iter()
        .map(|n| (n.clone(), Publisher::ring(n)))
        .collect();
    for p in &args.publisher {
        let (name, line) = p.split_once('=').ok_or_else(|| {
            Failure::Usage(format!(
                "--publisher {p:?}: expected NAME=EXCHANGE,ROUTING_KEY,SOURCE"
            ))
        })?;
        let publisher: Publisher = line.parse().map_err(Failure::Usage)?;
        let slot = out.iter_mut().find(|(n, _)| n == name).ok_or_else(|| {
            Failure::Usage(format!(
                "--publisher {p:?}: {name} is not a scanner run here"
            ))
        })?;
        slot.1 = publisher;
    }
    Ok(out)
}

fn run(args: Args) -> Result<(), Failure> {
    let scanners = scanners(&args)?;
    let faults = args
        .fail
        .iter()
        .map(|f| f.parse::<FaultRule>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(Failure::Usage)?;
    let config = ScannerConfig {
        scan: Duration::from_millis(args.scan_ms),
        slow: Duration::from_millis(args.slow_ms),
        unacked: Duration::from_millis(args.unacked_ms),
        severity: model8::Severity::parse(&args.severity).ok_or_else(|| {
            Failure::Usage(format!(
                "--severity {:?}: expected normal, high, urgent or critical",
                args.severity
            ))
        })?,
        faults: FaultPlan(faults),
        drop_copies: args.drop_copies,
        ..ScannerConfig::default()
    };
    let settings = runner::load_settings(PROGRAM, args.config.clone())?;
    let _log = runner::init_logging(&settings)?;
    runner::runtime()?.block_on(async {
        let store = db8::PgStore::connect(&settings.database)
            .await
            .map_err(|e| Failure::Runtime(e.to_string()))?;
        let rabbit = runner::connect(&settings).await?;
        let running = Scanners::start(rabbit.clone(), Arc::new(store), &scanners, config).await;
        let running = match running {
            Ok(r) => r,
            Err(e) => {
                rabbit.close().await;
                return Err(Failure::from(e));
            }
        };
        let signal = shutdown::first_signal()
            .await
            .map_err(|e| Failure::Runtime(format!("cannot install signal handlers: {e}")))?;
        tracing::info!("{signal}: stopping the scanners");
        let runs = running.records().len();
        running.stop(Duration::from_secs(5)).await;
        rabbit.close().await;
        tracing::info!(runs, "scanners stopped");
        Ok(())
    })
}
