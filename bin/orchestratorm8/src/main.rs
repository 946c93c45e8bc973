//! `orchestratorm8`: the CPTM8 coordinator.
//!
//! This binary only parses flags and wires the library crates together: it is the one
//! place where concrete implementations (PostgreSQL, RabbitMQ) meet `controller8`.

mod cli;
mod cmd;
mod exit;

fn main() -> std::process::ExitCode {
    let cli: cli::Cli = argh::from_env();
    exit::run(cli)
}
