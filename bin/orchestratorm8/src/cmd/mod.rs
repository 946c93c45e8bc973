//! The subcommands: dispatch of the parsed command line, one module per subcommand, and
//! the error type they share, mapped to the exit codes of CONTRACT section 4:
//! 0 success, 2 usage or configuration error, 1 runtime failure.

pub mod config_check;
pub mod domains;
pub mod launch;
pub mod migrate;

use std::process::ExitCode;

use crate::cli::{Cli, Command, ConfigCommand};

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
            ConfigCommand::Check(a) => config_check::run(a),
        },
        Command::Launch(a) => launch::run(a),
        Command::Migrate(a) => migrate::run(a),
        Command::Domains(a) => domains::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("orchestratorm8: error: {f}");
            ExitCode::from(f.code())
        }
    }
}
