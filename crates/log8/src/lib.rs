//! `log8`: the tracing set-up of CPTM8 services, from the configuration.
//!
//! - `LOG_LEVEL` 0-3 (debug, info, warn, error), changeable live through a
//!   [`LevelHandle`]; the libraries in [`QUIET_TARGETS`] stay at INFO or above.
//! - Human-readable text in DEV and TEST, one JSON object per line in PROD, on stderr
//!   (unless `Log.console: false`) and, when `Log.file` is set, in a size-rotated file
//!   created 0640 in directories created 0750, as the Go original.
//! - Optional Elastic APM export (cargo feature `apm`, on by default) when
//!   `Log.apm_server_url` is set: INFO-or-above spans and the ERROR events inside them
//!   (see [`APM_SPAN_LEVEL`]); shutdown waits at most `Log.apm_flush_timeout` for
//!   spans still being sent.
//! - `log` crate records (e.g. from tokio-postgres) are routed into tracing by [`init`].
//!
//! Secrets are never logged by this crate; the APM token is only handed to the exporter.
//!
//! Architecture invariant: depends only on `config8` (and `model8` through it) among our
//! crates. No global state except the one global subscriber [`init`] installs; the level
//! is changed through the handle it returns.

#[cfg(feature = "apm")]
mod apm;
mod error;
mod file;
mod level;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use config8::{AppEnv, LogLevel, Secret, Settings};
use tracing::{Dispatch, Subscriber};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{Layer, Registry, reload};

#[cfg(feature = "apm")]
pub use apm::APM_SPAN_LEVEL;
pub use error::LogError;
pub use file::{DIR_MODE, FILE_MODE};
pub use level::{LevelHandle, QUIET_TARGETS, level_filter};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Human-readable lines (DEV, TEST).
    Text,
    /// One JSON object per line (PROD): `timestamp`, `level`, `target`, the event's fields
    /// (`message`, ...) at the top level, and `span` (the current span's name and fields).
    Json,
}

/// Everything [`init`] needs; usually [`LogConfig::from_settings`].
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// Line format (console and file).
    pub format: Format,
    /// Initial level.
    pub level: LogLevel,
    /// Write to stderr.
    pub console: bool,
    /// Also write to this file.
    pub file: Option<FileOutput>,
    /// Also export to Elastic APM (needs the `apm` feature).
    pub apm: Option<ApmOutput>,
}

/// A rotated log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileOutput {
    /// The file; rotated copies are `<path>.1` (newest) to `<path>.<max_backups>`.
    pub path: PathBuf,
    /// Size at which the file is rotated.
    pub max_bytes: u64,
    /// Rotated files kept.
    pub max_backups: u32,
}

/// Elastic APM export.
#[derive(Debug, Clone, PartialEq)]
pub struct ApmOutput {
    /// APM server, e.g. `http://apm:8200`.
    pub server_url: String,
    /// Secret token sent as `Authorization: Bearer`.
    pub secret_token: Option<Secret>,
    /// Service name shown in APM.
    pub service_name: String,
    /// Environment shown in APM (`dev`, `test`, `prod`).
    pub environment: String,
    /// Longest wait at shutdown for spans still being sent.
    pub flush_timeout: Duration,
}

impl LogConfig {
    /// The logging part of the configuration: `APP_ENV`, `LOG_LEVEL` and `Log`.
    pub fn from_settings(s: &Settings) -> Self {
        LogConfig {
            format: match s.app_env {
                AppEnv::Prod => Format::Json,
                AppEnv::Dev | AppEnv::Test => Format::Text,
            },
            level: s.log_level,
            console: s.log.console,
            file: s.log.file.as_ref().map(|path| FileOutput {
                path: path.clone(),
                max_bytes: s.log.max_size_mb.saturating_mul(1024 * 1024),
                max_backups: s.log.max_backups,
            }),
            apm: s.log.apm_server_url.as_ref().map(|url| ApmOutput {
                server_url: url.clone(),
                secret_token: s.log.apm_secret_token.clone(),
                service_name: s.log.apm_service_name.clone(),
                environment: s.app_env.as_str().to_ascii_lowercase(),
                flush_timeout: s.log.apm_flush_timeout,
            }),
        }
    }
}

/// Keeps the outputs alive; on drop (or [`LogGuard::shutdown`]) it waits for APM
/// exports in flight (bounded by the flush timeout) and flushes the log file.
#[must_use = "dropping the guard stops file logging"]
pub struct LogGuard {
    level: LevelHandle,
    file: Option<WorkerGuard>,
    #[cfg(feature = "apm")]
    apm: Option<(apm::LastSent, Duration)>,
    notes: Vec<String>,
}

impl std::fmt::Debug for LogGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogGuard")
            .field("level", &self.level.level())
            .field("file", &self.file.is_some())
            .finish_non_exhaustive()
    }
}

impl LogGuard {
    /// A handle that changes the level live; it can be moved to another task.
    pub fn level_handle(&self) -> LevelHandle {
        self.level.clone()
    }

    /// Applies `level` from now on.
    pub fn set_level(&self, level: LogLevel) -> Result<(), LogError> {
        self.level.set_level(level)
    }

    /// Flushes and stops the outputs (what dropping does). Blocks at most the APM flush
    /// timeout; call it as the last thing of `main`, outside async code if possible.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        #[cfg(feature = "apm")]
        if let Some((last_sent, timeout)) = &self.apm {
            last_sent.wait(*timeout);
        }
        drop(self.file.take());
    }
}

/// The subscriber type below the output layers.
type Base = Layered<reload::Layer<Targets, Registry>, Registry>;
type BoxedLayer = Box<dyn Layer<Base> + Send + Sync>;

/// Builds the subscriber for `cfg` without installing it (tests, or a caller that wants
/// [`tracing::dispatcher::with_default`]). With APM enabled, drop the `Dispatch` outside
/// async code: the exporter owns a runtime.
pub fn build(cfg: &LogConfig) -> Result<(Dispatch, LogGuard), LogError> {
    let (filter, reload_handle) = reload::Layer::new(level::targets(cfg.level));
    let mut layers: Vec<BoxedLayer> = Vec::new();
    let mut notes = Vec::new();

    if cfg.console {
        let ansi = cfg.format == Format::Text && std::io::stderr().is_terminal();
        layers.push(output_layer(cfg.format, std::io::stderr, ansi));
    }
    let mut file_guard = None;
    if let Some(f) = &cfg.file {
        let writer =
            file::RotatingFile::open(&f.path, f.max_bytes, f.max_backups).map_err(|source| {
                LogError::File {
                    path: f.path.clone(),
                    source,
                }
            })?;
        let (non_blocking, guard) = NonBlockingBuilder::default()
            .lossy(false)
            .thread_name("log8-file")
            .finish(writer);
        layers.push(output_layer(cfg.format, non_blocking, false));
        file_guard = Some(guard);
    }

    #[cfg(feature = "apm")]
    let mut apm_state = None;
    if let Some(a) = &cfg.apm {
        #[cfg(feature = "apm")]
        {
            let last_sent = apm::LastSent::default();
            layers.push(Box::new(apm::layer(a, last_sent.clone())?));
            apm_state = Some((last_sent, a.flush_timeout));
            notes.push(format!(
                "exporting INFO-or-above spans to Elastic APM at {}",
                a.server_url
            ));
        }
        #[cfg(not(feature = "apm"))]
        notes.push(format!(
            "Log.apm_server_url is set ({}) but this build has no APM support (cargo feature `apm`): not exporting",
            a.server_url
        ));
    }

    let subscriber = Registry::default().with(filter).with(layers);
    let guard = LogGuard {
        level: LevelHandle::new(reload_handle, cfg.level),
        file: file_guard,
        #[cfg(feature = "apm")]
        apm: apm_state,
        notes,
    };
    Ok((Dispatch::new(subscriber), guard))
}

/// Builds the subscriber for `cfg` and installs it as the process's global default;
/// routes `log` records into it. Call once, early in `main`, and keep the guard.
pub fn init(cfg: &LogConfig) -> Result<LogGuard, LogError> {
    let (dispatch, guard) = build(cfg)?;
    tracing::dispatcher::set_global_default(dispatch)
        .map_err(|e| LogError::AlreadyInitialised(e.to_string()))?;
    // Another `log` logger may already be set (tests): tracing still works then.
    let _ = tracing_log::LogTracer::builder()
        .with_max_level(tracing_log::log::LevelFilter::Debug)
        .init();
    for note in &guard.notes {
        tracing::info!(target: "log8", "{note}");
    }
    Ok(guard)
}

fn output_layer<S, W>(format: Format, writer: W, ansi: bool) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let base = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi)
        .with_target(true);
    match format {
        Format::Text => Box::new(base),
        Format::Json => Box::new(
            base.json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false),
        ),
    }
}
