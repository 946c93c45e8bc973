//! `orchestratorm8`: the CPTM8 coordinator.
//!
//! This binary only parses flags and wires the library crates together: it is the one
//! place where concrete implementations (PostgreSQL, RabbitMQ) meet `controller8`.

mod cli;
mod cmd;
mod exit;

use std::ffi::OsString;
use std::process::ExitCode;

use argh::{EarlyExit, FromArgs};

fn main() -> ExitCode {
    match parse(std::env::args_os().collect()) {
        Ok(cli) => exit::run(cli),
        Err(code) => code,
    }
}

/// Parses the command line as `argh::from_env` does, with the exit codes of CONTRACT
/// section 4 (argh's own helper exits 1 on a usage error): `--help` prints the usage
/// on stdout and exits 0; a bad argument (unknown subcommand or flag, a missing or
/// unparsable value, an argument that is not UTF-8) prints the error on stderr and
/// exits 2.
fn parse(args: Vec<OsString>) -> Result<cli::Cli, ExitCode> {
    let usage_error = ExitCode::from(2);
    let mut strings = Vec::with_capacity(args.len());
    for a in args {
        match a.into_string() {
            Ok(s) => strings.push(s),
            Err(bad) => {
                eprintln!(
                    "orchestratorm8: error: argument {:?} is not valid UTF-8",
                    bad.to_string_lossy()
                );
                return Err(usage_error);
            }
        }
    }
    let cmd = strings
        .first()
        .and_then(|p| std::path::Path::new(p).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("orchestratorm8");
    let rest: Vec<&str> = strings.iter().skip(1).map(String::as_str).collect();
    cli::Cli::from_args(&[cmd], &rest).map_err(|EarlyExit { output, status }| match status {
        Ok(()) => {
            println!("{output}");
            ExitCode::SUCCESS
        }
        Err(()) => {
            eprintln!("{output}\nRun {cmd} --help for more information.");
            usage_error
        }
    })
}
