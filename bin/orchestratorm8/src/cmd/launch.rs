//! `launch` (not implemented yet).

use crate::cli::LaunchArgs;
use crate::exit::Failure;

/// Runs the command.
pub fn run(_args: LaunchArgs) -> Result<(), Failure> {
    Err(Failure::Runtime("not implemented yet".into()))
}
