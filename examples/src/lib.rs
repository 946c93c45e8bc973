//! `cptm8-examples`: sibling services and simulated CPTM8 stage workers, built only on
//! the public crates (`model8`, `config8`, `log8`, `amqp8`).
//!
//! The binaries under `src/bin/` are thin `main` functions over this library:
//!
//! - `stage_worker`: a managed-mode stage worker (CONTRACT section 3). It consumes its
//!   stage's queue with manual ack, simulates a scan ([`scan::ScanSim`]), reports
//!   `cptm8.orchestratorm8.<stage>.<completed|failed>` with publisher confirms
//!   ([`report`]), and acks the job only once the report is confirmed
//!   ([`stage_worker::StageWorker`]).
//! - `go_style_worker`: behaves like the Go services in bootstrap mode: no reports; it
//!   chains to the next stages by publishing their `get.scan` ([`chain_worker`]).
//! - `demo_monitor`: polls the workflow API and draws the demo's progress table
//!   ([`monitor`]); std and `serde_json` only, with a raw HTTP/1.1 GET.
//!
//! `docs/EMBEDDING.md` walks through this code step by step.
//!
//! Architecture invariant: depends only on `model8`, `config8`, `log8` and `amqp8` among
//! our crates (checked by `bin/orchestratorm8/tests/architecture.rs`); what a sibling
//! service can do, these examples do with the public APIs alone.

pub mod chain_worker;
pub mod monitor;
pub mod report;
pub mod runner;
pub mod scan;
pub mod shutdown;
pub mod stage_worker;
pub mod topology;
pub mod worker_args;
