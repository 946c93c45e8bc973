//! `bench8`: the benchmark harness behind `just bench` / `scripts/bench.sh`.
//!
//! Every benchmark measures our code and its *floor* (what the same machine does with
//! the same services and no code of ours in between) in the same run, and reports a
//! ratio against a goal. See docs/BENCHMARKS.md for the list, the ratio convention and
//! the latest numbers.
//!
//! It is a tool, not a library: it may depend on every crate of the workspace, and runs
//! the release `orchestratorm8` binary as a child process.

mod benches;
mod cli;
mod ctx;
mod doc;
mod floors;
mod harness;
mod machine;
mod ours;
mod procfs;
mod report;
mod services;
mod workload;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: cli::Cli = argh::from_env();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench8: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match args.command {
        cli::Command::Run(run) => runtime.block_on(harness::run(run)),
        cli::Command::List(_) => {
            for b in benches::ALL {
                println!("{:<14} {}", b.name, b.about);
            }
            ExitCode::SUCCESS
        }
        cli::Command::ChildDbStream(child) => runtime.block_on(benches::db_stream::child(child)),
    }
}
