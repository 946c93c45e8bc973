//! One module per subcommand.

pub mod config_check;
pub mod domains;
pub mod launch;
pub mod migrate;
