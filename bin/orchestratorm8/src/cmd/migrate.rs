//! `migrate [--config PATH]`: apply the embedded database migrations (idempotent; safe
//! when several replicas do it at once). Also holds what the database commands share:
//! loading the configuration, console logging, the runtime, error classification.

use std::io::Write;
use std::path::PathBuf;

use config8::{LogLevel, Settings};
use db8::{DbError, PgStore};

use super::Failure;
use crate::cli::MigrateArgs;

/// Runs the command.
pub fn run(args: MigrateArgs) -> Result<(), Failure> {
    let (_, settings) = load_settings(args.config)?;
    let _log = console_logging(&settings)?;
    runtime()?.block_on(async {
        let store = connect(&settings).await?;
        let applied = store.migrate().await.map_err(db_failure)?;
        print(&if applied.is_empty() {
            format!("database {} is up to date\n", store.label())
        } else {
            applied
                .iter()
                .map(|m| format!("applied migration {}: {}\n", m.version, m.name))
                .collect()
        })
    })
}

/// Writes `text` on stdout.
pub(crate) fn print(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| Failure::Runtime(format!("cannot write to stdout: {e}")))
}

/// Loads the configuration (`--config`, else `$ORCHESTRATORM8_CONFIG`, else
/// `configs/configuration.yaml`) and prints its warnings on stderr; returns its path
/// with it. A configuration error is a usage failure (exit 2).
pub(crate) fn load_settings(config: Option<PathBuf>) -> Result<(PathBuf, Settings), Failure> {
    let path = config8::resolve_path(config);
    let loaded = config8::load(&path).map_err(|e| Failure::Usage(e.to_string()))?;
    let mut err = std::io::stderr().lock();
    for w in &loaded.warnings {
        let _ = writeln!(err, "orchestratorm8: warning: {}: {w}", path.display());
    }
    Ok((path, loaded.settings))
}

/// Warnings and errors (connection attempts being retried...) on stderr as text; a
/// command-line tool writes no log file and exports nothing.
pub(crate) fn console_logging(settings: &Settings) -> Result<log8::LogGuard, Failure> {
    log8::init(&log8::LogConfig {
        format: log8::Format::Text,
        level: settings.log_level.max(LogLevel::Warn),
        console: true,
        file: None,
        apm: None,
    })
    .map_err(|e| Failure::Runtime(format!("cannot set up logging: {e}")))
}

/// A runtime for one command.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(format!("cannot start the async runtime: {e}")))
}

/// Connects with the configured start-up retries.
pub(crate) async fn connect(settings: &Settings) -> Result<PgStore, Failure> {
    PgStore::connect(&settings.database)
        .await
        .map_err(db_failure)
}

/// A database error as a command failure: refused input or configuration (e.g. an
/// unreadable `sslrootcert`) exits 2, everything else 1. A missing table gets a hint.
pub(crate) fn db_failure(e: DbError) -> Failure {
    match e {
        DbError::Invalid(m) => Failure::Usage(m),
        // Credentials, database name or certificate: fixed in the configuration.
        e @ DbError::Refused { .. } => Failure::Usage(e.to_string()),
        DbError::Query(m) if m.contains("SQLSTATE 42P01") => Failure::Runtime(format!(
            "database error: {m} (has `orchestratorm8 migrate` been run?)"
        )),
        other => Failure::Runtime(other.to_string()),
    }
}
