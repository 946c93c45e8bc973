//! What reaches the log file: text or JSON, levels and their live change, permissions.
//! Each test builds its own subscriber (not the global one) and reads the file it wrote.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use config8::{AppEnv, LogLevel, Settings};
use log8::{FileOutput, Format, LogConfig};

fn file_config(path: &Path, format: Format, level: LogLevel) -> LogConfig {
    LogConfig {
        format,
        level,
        console: false,
        file: Some(FileOutput {
            path: path.to_owned(),
            max_bytes: 10 << 20,
            max_backups: 1,
        }),
        apm: None,
    }
}

/// Runs `f` with a subscriber for `cfg`, then flushes and returns the file's lines.
fn run(cfg: &LogConfig, f: impl FnOnce(&log8::LogGuard)) -> Vec<String> {
    let (dispatch, guard) = log8::build(cfg).unwrap();
    tracing::dispatcher::with_default(&dispatch, || f(&guard));
    guard.shutdown(); // flushes the file writer
    let text = std::fs::read_to_string(&cfg.file.as_ref().unwrap().path).unwrap();
    text.lines().map(str::to_owned).collect()
}

#[test]
fn prod_writes_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = file_config(&dir.path().join("o.log"), Format::Json, LogLevel::Info);
    let lines = run(&cfg, |_| {
        let span = tracing::info_span!("cycle", workflow = "w-1");
        let _e = span.enter();
        tracing::info!(domain = "example.com", "stage published");
        tracing::warn!("slow");
    });
    assert_eq!(lines.len(), 2, "{lines:?}");
    let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["level"], "INFO");
    assert_eq!(first["message"], "stage published");
    assert_eq!(first["domain"], "example.com");
    assert_eq!(first["target"], "output");
    assert_eq!(first["span"]["name"], "cycle");
    assert_eq!(first["span"]["workflow"], "w-1");
    assert!(first["timestamp"].as_str().unwrap().contains('T'));
    let second: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(second["level"], "WARN");
}

#[test]
fn dev_writes_human_text() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = file_config(&dir.path().join("o.log"), Format::Text, LogLevel::Info);
    let lines = run(&cfg, |_| {
        tracing::info!(domain = "example.com", "stage published")
    });
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert!(
        serde_json::from_str::<serde_json::Value>(line).is_err(),
        "{line}"
    );
    assert!(line.contains(" INFO "), "{line}");
    assert!(
        line.contains("output: stage published domain=\"example.com\""),
        "{line}"
    );
    assert!(!line.contains('\u{1b}'), "no colour codes in files: {line}");
}

#[test]
fn the_level_filters_and_changes_live() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = file_config(&dir.path().join("o.log"), Format::Text, LogLevel::Info);
    let lines = run(&cfg, |guard| {
        tracing::debug!("hidden-1");
        tracing::info!("shown-1");
        guard.set_level(LogLevel::Debug).unwrap();
        assert_eq!(guard.level_handle().level(), LogLevel::Debug);
        tracing::debug!("shown-2");
        tracing::debug!(target: "amqprs::net", "hidden-quiet-library");
        tracing::info!(target: "amqprs::net", "shown-3");
        // From another clone of the handle, as the config watcher task would.
        let handle = guard.level_handle();
        handle.set_level(LogLevel::Error).unwrap();
        tracing::warn!("hidden-2");
        tracing::error!("shown-4");
    });
    let text = lines.join("\n");
    for shown in ["shown-1", "shown-2", "shown-3", "shown-4"] {
        assert!(text.contains(shown), "{shown} missing: {text}");
    }
    assert!(!text.contains("hidden"), "{text}");
}

#[test]
fn files_are_0640_in_new_directories_0750() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log/nested/orchestratorm8.log");
    let cfg = file_config(&path, Format::Text, LogLevel::Info);
    let lines = run(&cfg, |_| tracing::info!("hello"));
    assert_eq!(lines.len(), 1);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o640);
    assert_eq!(mode(&dir.path().join("log")), 0o750);
    assert_eq!(mode(&dir.path().join("log/nested")), 0o750);
}

#[test]
fn an_unwritable_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, "").unwrap();
    let path = blocker.join("o.log");
    let err = log8::build(&file_config(&path, Format::Text, LogLevel::Info)).unwrap_err();
    assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
}

#[test]
fn configuration_maps_to_outputs() {
    let mut s = Settings::default();
    assert_eq!(
        LogConfig::from_settings(&s),
        LogConfig {
            format: Format::Text,
            level: LogLevel::Info,
            console: true,
            file: None,
            apm: None
        }
    );
    s.app_env = AppEnv::Prod;
    s.log_level = LogLevel::Warn;
    s.log.file = Some("log/o.log".into());
    s.log.max_size_mb = 5;
    s.log.apm_server_url = Some("http://apm:8200".into());
    let c = LogConfig::from_settings(&s);
    assert_eq!(c.format, Format::Json);
    assert_eq!(c.level, LogLevel::Warn);
    assert_eq!(c.file.unwrap().max_bytes, 5 << 20);
    let apm = c.apm.unwrap();
    assert_eq!(apm.environment, "prod");
    assert_eq!(apm.service_name, "orchestratorm8");
}
