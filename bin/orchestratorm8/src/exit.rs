//! Maps command results to the exit codes of CONTRACT section 4:
//! 0 success, 2 usage or configuration error, 1 runtime failure.

use std::process::ExitCode;

use crate::cli::{Cli, Command, ConfigCommand};
use crate::cmd;

/// A command's failure, classified for the exit code.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Bad configuration or bad arguments: exit 2.
    #[error("{0}")]
    Usage(String),
    /// Anything that went wrong at run time: exit 1.
    #[error("{0}")]
    Runtime(String),
}

impl Failure {
    fn code(&self) -> u8 {
        match self {
            Failure::Usage(_) => 2,
            Failure::Runtime(_) => 1,
        }
    }
}

/// Runs the parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Config(c) => match c.command {
            ConfigCommand::Check(a) => cmd::config_check::run(a),
        },
        Command::Launch(a) => cmd::launch::run(a),
        Command::Migrate(a) => cmd::migrate::run(a),
        Command::Domains(a) => cmd::domains::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("orchestratorm8: error: {f}");
            ExitCode::from(f.code())
        }
    }
}
