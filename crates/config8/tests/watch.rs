//! The file watcher on a real directory: a valid edit arrives, a broken edit keeps the
//! last good configuration (and a later fix arrives), and an editor's
//! write-temp-then-rename save arrives. Every wait is on a condition with a deadline.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use config8::{Env, LogLevel, Settings, WatchOptions, WatchStatus, load_with, watch_with};
use tokio::sync::watch;

/// Generous: the machine may be loaded; a passing run never waits this long.
const DEADLINE: Duration = Duration::from_secs(30);

fn options() -> WatchOptions {
    WatchOptions {
        debounce: Duration::from_millis(100),
        env: Env::empty().with("DB_HOST", "db-from-env"),
    }
}

fn config(level: u8) -> String {
    format!(
        "APP_ENV: DEV\nLOG_LEVEL: \"{level}\"\nDatabase:\n  location: \"${{DB_HOST}}\"\nRabbitMQ: {{}}\nORCHESTRATORM8: {{}}\n"
    )
}

fn start(dir: &Path, text: &str) -> (watch::Receiver<Arc<Settings>>, config8::WatchHandle) {
    let file = dir.join("configuration.yaml");
    std::fs::write(&file, text).unwrap();
    let initial = load_with(&file, &options().env).unwrap().settings;
    watch_with(&file, initial, options()).unwrap()
}

async fn next(rx: &mut watch::Receiver<Arc<Settings>>) -> Arc<Settings> {
    tokio::time::timeout(DEADLINE, rx.changed())
        .await
        .expect("a new configuration within the deadline")
        .expect("watcher alive");
    rx.borrow_and_update().clone()
}

async fn status_until(
    status: &mut watch::Receiver<WatchStatus>,
    f: impl FnMut(&WatchStatus) -> bool,
) -> WatchStatus {
    tokio::time::timeout(DEADLINE, status.wait_for(f))
        .await
        .expect("status within the deadline")
        .expect("watcher alive")
        .clone()
}

#[tokio::test]
async fn a_valid_edit_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let (mut rx, handle) = start(dir.path(), &config(1));
    assert_eq!(rx.borrow().log_level, LogLevel::Info);

    std::fs::write(dir.path().join("configuration.yaml"), config(3)).unwrap();
    let s = next(&mut rx).await;
    assert_eq!(s.log_level, LogLevel::Error);
    assert_eq!(
        s.database.location, "db-from-env",
        "reloaded with the given env"
    );
    assert_eq!(handle.status().borrow().last_error, None);
    handle.stop();
}

#[tokio::test]
async fn a_broken_edit_keeps_the_last_good_configuration_until_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("configuration.yaml");
    let (mut rx, handle) = start(dir.path(), &config(1));
    let mut status = handle.status();

    // Invalid value: rejected, nothing published.
    std::fs::write(
        &file,
        config(1).replace("LOG_LEVEL: \"1\"", "LOG_LEVEL: \"9\""),
    )
    .unwrap();
    let st = status_until(&mut status, |s| s.last_error.is_some()).await;
    let error = st.last_error.unwrap();
    assert!(error.contains("LOG_LEVEL: got \"9\""), "{error}");
    assert!(
        !rx.has_changed().unwrap(),
        "nothing published for a broken edit"
    );
    assert_eq!(rx.borrow().log_level, LogLevel::Info);

    // Not even YAML: rejected too.
    let reloads = st.reloads;
    std::fs::write(&file, "LOG_LEVEL: [\n").unwrap();
    let st = status_until(&mut status, |s| s.reloads > reloads).await;
    assert!(st.last_error.unwrap().contains("not valid YAML"));
    assert!(!rx.has_changed().unwrap());

    // The fix arrives.
    std::fs::write(&file, config(0)).unwrap();
    let s = next(&mut rx).await;
    assert_eq!(s.log_level, LogLevel::Debug);
    let st = status_until(&mut status, |s| s.last_error.is_none()).await;
    assert_eq!(st.published, 1);
    handle.stop();
}

/// docs/BAD_INPUT.md §1: a file emptied (a save caught half-way: truncated, not yet
/// written) is rejected; the running configuration stays until a whole file arrives.
#[tokio::test]
async fn an_emptied_file_never_replaces_the_running_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("configuration.yaml");
    let (mut rx, handle) = start(dir.path(), &config(1));
    let mut status = handle.status();

    std::fs::write(&file, "").unwrap();
    let st = status_until(&mut status, |s| s.last_error.is_some()).await;
    assert!(
        !rx.has_changed().unwrap(),
        "nothing published for an empty file"
    );
    assert_eq!(rx.borrow().log_level, LogLevel::Info);
    assert_eq!(st.published, 0);

    std::fs::write(&file, config(0)).unwrap();
    assert_eq!(next(&mut rx).await.log_level, LogLevel::Debug);
    handle.stop();
}

#[tokio::test]
async fn an_editors_write_then_rename_save_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("configuration.yaml");
    let (mut rx, handle) = start(dir.path(), &config(1));

    // What vim and most editors do: write a new file, rename it over the old one.
    let tmp = dir.path().join(".configuration.yaml.swp");
    std::fs::write(&tmp, config(2)).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    let s = next(&mut rx).await;
    assert_eq!(s.log_level, LogLevel::Warn);

    // And again, replacing the replaced file.
    std::fs::write(&tmp, config(0)).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    assert_eq!(next(&mut rx).await.log_level, LogLevel::Debug);
    handle.stop();
}

#[tokio::test]
async fn a_removed_file_keeps_the_configuration_and_its_return_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("configuration.yaml");
    let (mut rx, handle) = start(dir.path(), &config(1));
    let mut status = handle.status();

    std::fs::remove_file(&file).unwrap();
    let st = status_until(&mut status, |s| s.last_error.is_some()).await;
    assert!(
        st.last_error
            .unwrap()
            .contains("cannot read configuration file")
    );
    assert_eq!(rx.borrow().log_level, LogLevel::Info);

    std::fs::write(&file, config(2)).unwrap();
    assert_eq!(next(&mut rx).await.log_level, LogLevel::Warn);
    handle.stop();
}

#[tokio::test]
async fn an_unchanged_save_publishes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("configuration.yaml");
    let (rx, handle) = start(dir.path(), &config(1));
    let mut status = handle.status();

    // Same settings, other text (a comment): read, nothing published.
    std::fs::write(&file, format!("# comment\n{}", config(1))).unwrap();
    let st = status_until(&mut status, |s| s.reloads >= 1).await;
    assert_eq!((st.published, st.last_error), (0, None));
    assert!(!rx.has_changed().unwrap());
    handle.stop();
}

#[tokio::test]
async fn a_kubernetes_configmap_symlink_swap_arrives() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The layout of a mounted ConfigMap: file -> ..data/file, ..data -> ..<version>.
    std::fs::create_dir(d.join("..v1")).unwrap();
    std::fs::write(d.join("..v1/configuration.yaml"), config(1)).unwrap();
    symlink("..v1", d.join("..data")).unwrap();
    symlink("..data/configuration.yaml", d.join("configuration.yaml")).unwrap();
    let file = d.join("configuration.yaml");
    let initial = load_with(&file, &options().env).unwrap().settings;
    let (mut rx, handle) = watch_with(&file, initial, options()).unwrap();

    // The kubelet's atomic update: new version directory, new link, renamed over ..data.
    std::fs::create_dir(d.join("..v2")).unwrap();
    std::fs::write(d.join("..v2/configuration.yaml"), config(3)).unwrap();
    symlink("..v2", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    assert_eq!(next(&mut rx).await.log_level, LogLevel::Error);
    handle.stop();
}
