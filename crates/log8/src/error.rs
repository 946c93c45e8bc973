//! What can go wrong setting up logging.

use std::path::PathBuf;

/// A logging set-up failure. Never contains a secret.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The log file (or its directory) could not be created or opened.
    #[error("cannot open log file {}: {source}", path.display())]
    File {
        /// The log file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The APM exporter could not be built.
    #[error("cannot set up Elastic APM export: {0}")]
    Apm(String),
    /// A global subscriber is already installed (`init` was called twice).
    #[error("logging is already initialised: {0}")]
    AlreadyInitialised(String),
    /// The live level change failed (the subscriber is gone).
    #[error("cannot change the log level: {0}")]
    Reload(String),
}
