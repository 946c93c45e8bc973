//! The file watcher in a hostile directory: other processes reading files next to the
//! configuration (a log shipper, a monitoring probe, an operator's `tail`), or writing
//! to them without pause (a log file kept beside the configuration), must not keep an
//! edit from being applied. Found by the security test of `launch`, whose log polling
//! starved the reload. Catalogued in docs/BAD_INPUT.md.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use config8::{Env, LogLevel, Settings, WatchOptions, load_with, watch_with};
use tokio::sync::watch;

/// Generous: the machine may be loaded; a passing run never waits this long.
const DEADLINE: Duration = Duration::from_secs(30);

fn options() -> WatchOptions {
    WatchOptions {
        debounce: Duration::from_millis(200),
        env: Env::empty(),
    }
}

fn config(level: u8) -> String {
    format!("APP_ENV: DEV\nLOG_LEVEL: \"{level}\"\n")
}

fn start(dir: &Path) -> (watch::Receiver<Arc<Settings>>, config8::WatchHandle) {
    let file = dir.join("configuration.yaml");
    std::fs::write(&file, config(1)).unwrap();
    let initial = load_with(&file, &options().env).unwrap().settings;
    watch_with(&file, initial, options()).unwrap()
}

/// Runs `f` every 20 ms on a thread until the returned guard is dropped.
struct Busy(Arc<AtomicBool>, Option<std::thread::JoinHandle<()>>);

impl Busy {
    fn start(mut f: impl FnMut() + Send + 'static) -> Busy {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let t = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                f();
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Busy(stop, Some(t))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        if let Some(t) = self.1.take() {
            let _ = t.join();
        }
    }
}

async fn level_after_edit(dir: &Path, rx: &mut watch::Receiver<Arc<Settings>>) -> LogLevel {
    std::fs::write(dir.join("configuration.yaml"), config(3)).unwrap();
    tokio::time::timeout(DEADLINE, rx.changed())
        .await
        .expect("the edit applied within the deadline")
        .unwrap();
    rx.borrow_and_update().log_level
}

#[tokio::test]
async fn files_read_next_to_the_configuration_do_not_hold_an_edit_back() {
    let dir = tempfile::tempdir().unwrap();
    let (mut rx, _h) = start(dir.path());
    let neighbour = dir.path().join("service.log");
    std::fs::write(&neighbour, "some log line\n").unwrap();
    let reader = neighbour.clone();
    let _busy = Busy::start(move || {
        let _ = std::fs::read_to_string(&reader);
    });
    assert_eq!(level_after_edit(dir.path(), &mut rx).await, LogLevel::Error);
}

#[tokio::test]
async fn a_file_written_without_pause_next_to_the_configuration_does_not_hold_an_edit_back() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let (mut rx, _h) = start(dir.path());
    let mut log = std::fs::File::create(dir.path().join("service.log")).unwrap();
    let _busy = Busy::start(move || {
        let _ = writeln!(log, "another log line");
    });
    assert_eq!(level_after_edit(dir.path(), &mut rx).await, LogLevel::Error);
}
