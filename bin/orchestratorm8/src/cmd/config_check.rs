//! `config_check` (not implemented yet).

use crate::cli::ConfigCheckArgs;
use crate::exit::Failure;

/// Runs the command.
pub fn run(_args: ConfigCheckArgs) -> Result<(), Failure> {
    Err(Failure::Runtime("not implemented yet".into()))
}
