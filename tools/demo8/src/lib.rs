//! `demo8`: the tools of `scripts/demo.sh`: simulated CPTM8 stage workers, stand-ins for
//! the Go scanners and the progress monitor, built only on the public crates.
//!
//! The binaries under `src/bin/` are thin `main` functions over this library:
//!
//! - `stage_worker`: a managed-mode stage worker (CONTRACT section 3). It consumes its
//!   stage's queue with manual ack, simulates a scan ([`scan::ScanSim`]), reports
//!   `cptm8.orchestratorm8.<stage>.<completed|failed>` with publisher confirms
//!   ([`report`]), and acks the job only once the report is confirmed
//!   ([`stage_worker::StageWorker`]).
//! - `go_scanners`: faithful stand-ins for the platform's Go scanners (asmm8, naabum8,
//!   katanam8, num8), all four from one command: their own queues with the Go
//!   arguments, payload ignored, targets read from PostgreSQL, the `Publisher` message
//!   at the end (the ring by default), failures on demand ([`scanner`]).
//! - `demo_monitor`: polls the workflow API and draws the demo's progress table
//!   ([`monitor`]), reading it with `reqwest`'s blocking client.
//!
//! `docs/EMBEDDING.md` walks through this code step by step.
//!
//! Architecture invariant: depends only on `model8`, `config8`, `log8`, `amqp8` and
//! `db8` (the scanner stand-ins read their targets as the Go scanners do) among our
//! crates (checked by `bin/orchestratorm8/tests/architecture.rs`); what a sibling
//! service can do, these examples do with the public APIs alone.

pub mod dedup;
pub mod monitor;
pub mod report;
pub mod runner;
pub mod scan;
pub mod scanner;
pub mod shutdown;
pub mod stage_worker;
pub mod topology;
pub mod worker_args;
