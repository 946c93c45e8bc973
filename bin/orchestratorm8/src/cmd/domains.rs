//! `domains` (not implemented yet).

use crate::cli::DomainsArgs;
use crate::exit::Failure;

/// Runs the command.
pub fn run(_args: DomainsArgs) -> Result<(), Failure> {
    Err(Failure::Runtime("not implemented yet".into()))
}
