//! The global set-up (one per process, hence its own test binary): installing, `log`
//! records routed into tracing, a second `init` refused.

use config8::LogLevel;
use log8::{FileOutput, Format, LogConfig, LogError};

#[test]
fn init_installs_globally_once_and_routes_log_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("global.log");
    let cfg = LogConfig {
        format: Format::Json,
        level: LogLevel::Info,
        console: false,
        file: Some(FileOutput {
            path: path.clone(),
            max_bytes: 1 << 20,
            max_backups: 1,
        }),
        apm: None,
    };
    let guard = log8::init(&cfg).unwrap();
    tracing::info!("from tracing");
    tracing_log::log::warn!(target: "some_log_crate", "from the log crate");
    tracing_log::log::debug!(target: "some_log_crate", "log debug hidden at info");
    assert!(matches!(
        log8::init(&cfg),
        Err(LogError::AlreadyInitialised(_))
    ));
    guard.set_level(LogLevel::Debug).unwrap();
    tracing::debug!("debug after the live change");
    guard.shutdown();

    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let messages: Vec<&str> = lines
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        messages,
        [
            "from tracing",
            "from the log crate",
            "debug after the live change"
        ]
    );
    assert_eq!(lines[1]["target"], "some_log_crate");
}
