//! `migrate` (not implemented yet).

use crate::cli::MigrateArgs;
use crate::exit::Failure;

/// Runs the command.
pub fn run(_args: MigrateArgs) -> Result<(), Failure> {
    Err(Failure::Runtime("not implemented yet".into()))
}
