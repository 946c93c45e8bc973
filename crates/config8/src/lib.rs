//! `config8`: loads, validates and watches the orchestratorm8 configuration.
//!
//! It reads the Go original's `configs/configuration.yaml` unchanged (CONTRACT, section 1)
//! into the plain-data [`Settings`], with Go-compatible defaults: `${VAR}` expansion,
//! `ORCHESTRATORM8__...` environment overrides, Go durations, null meaning "default",
//! every invalid value reported with its key path, unknown keys as warnings. [`watch`]
//! publishes each new valid configuration of an edited file; [`diff`] tells what of a
//! change applies live and what needs a restart, derived from the two parts of
//! [`Settings::split`]: [`LiveSettings`] (what the running service applies on reload) and
//! [`RestartSettings`] (what waits for a restart). The rules are documented in
//! `docs/CONFIGURATION.md`.
//!
//! ```
//! use config8::{Env, SchedulerMode, from_yaml_str, render_redacted};
//!
//! let yaml = r#"
//! APP_ENV: DEV
//! LOG_LEVEL: "0"
//! Database: { location: 127.0.0.1, port: 5432, schema: public, database: cptm8,
//!             username: postgres, password: "${PGPASSWORD}" }
//! RabbitMQ:
//!   location: 127.0.0.1
//!   port: 5672
//!   username: guest
//!   password: guest
//!   pool: { max_connections: , pool.max_idle_time: "1h30m" }
//! "#;
//! let env = Env::empty().with("PGPASSWORD", "s3cret");
//! let loaded = from_yaml_str(yaml, &env).unwrap();
//! let s = &loaded.settings;
//! assert_eq!(s.database.password.expose(), "s3cret");
//! assert_eq!(s.rabbitmq.pool.max_connections, 10); // null means the Go default
//! assert_eq!(s.rabbitmq.pool.max_idle_time.as_secs(), 5400);
//! assert_eq!(s.scheduler.mode, SchedulerMode::Bootstrap); // no Scheduler section
//! assert!(!render_redacted(s).contains("s3cret"));
//!
//! // A missing variable is an error naming it and the key.
//! let err = from_yaml_str(yaml, &Env::empty()).unwrap_err().to_string();
//! assert!(err.contains("PGPASSWORD") && err.contains("Database.password"), "{err}");
//! ```
//!
//! Architecture invariant: depends only on `model8` among our crates; performs file I/O
//! only (no network). Secrets are held in [`Secret`] and never rendered, neither in
//! errors nor in [`render_redacted`].

mod diff;
pub mod duration;
mod env;
mod error;
mod expand;
mod extract;
mod load;
mod parts;
mod render;
mod secret;
mod settings;
mod tree;
mod validate;
mod watch;
pub mod window;

pub use diff::{ChangeReport, diff};
pub use env::{
    CONFIG_PATH_VAR, DEFAULT_CONFIG_PATH, Env, OVERRIDE_PREFIX, resolve_path, resolve_path_with,
};
pub use error::{ConfigError, Problem, Warning};
pub use load::{Loaded, from_yaml_str, load, load_with};
pub use parts::{
    ByStage, EachKey, LiveLeaderElection, LiveScheduler, LiveSettings, LiveStage, LiveWorkflow,
    RestartLeaderElection, RestartScheduler, RestartSettings, RestartStage, RestartWorkflow,
};
pub use render::render_redacted;
pub use secret::Secret;
pub use settings::*;
pub use watch::{WatchHandle, WatchOptions, WatchStatus, watch, watch_with};
pub use window::ScanWindow;
