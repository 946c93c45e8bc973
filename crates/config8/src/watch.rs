//! Watching the configuration file: each new valid configuration is published on a
//! tokio `watch` channel; a broken edit is logged and the last good one stays.
//!
//! The file's directory is watched (not the file), because editors save by writing a
//! new file and renaming it over the old one, and Kubernetes swaps a symlink. A reload
//! happens once the directory has been quiet for the debounce period after a completed
//! write (close after writing), a create, a rename or a removal; partial writes in
//! progress are not read. Reads of files in the directory do not count as activity,
//! and a directory that never goes quiet (a log file written beside the configuration)
//! delays a reload by ten debounce periods at most. The file is re-read and compared with the last text read, so
//! unrelated activity in the directory costs one read. An empty file is treated as a
//! save in progress and never replaces the running configuration.
//!
//! Runs on its own thread: no tokio runtime is needed, and the file I/O never blocks an
//! async task.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::watch;

use crate::diff::diff;
use crate::env::Env;
use crate::error::ConfigError;
use crate::load::{parse, read};
use crate::settings::Settings;

/// The longest a reload waits for the directory to be quiet, in debounce periods.
const MAX_DEBOUNCE_PERIODS: u32 = 10;

/// How the watcher behaves.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Quiet time after the last change before the file is read (300 ms); reads of
    /// files in the directory do not count as changes, and the file is read anyway
    /// after ten periods of changes without pause.
    pub debounce: Duration,
    /// The environment each reload is read with (the process's by default).
    pub env: Env,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            debounce: Duration::from_millis(300),
            env: Env::from_process(),
        }
    }
}

/// What the watcher has done so far, for health reporting and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchStatus {
    /// Times the file was read after a change.
    pub reloads: u64,
    /// Times a new configuration was published.
    pub published: u64,
    /// Why the latest reload was rejected, until a later reload succeeds. Never holds a
    /// secret.
    pub last_error: Option<String>,
}

/// Keeps the watcher running; dropping it (or [`WatchHandle::stop`]) stops it.
pub struct WatchHandle {
    status: watch::Receiver<WatchStatus>,
    control: mpsc::Sender<Msg>,
    thread: Option<JoinHandle<()>>,
    watcher: Option<RecommendedWatcher>,
}

impl std::fmt::Debug for WatchHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchHandle")
            .field("status", &*self.status.borrow())
            .finish_non_exhaustive()
    }
}

impl WatchHandle {
    /// The watcher's status, updated after every reload.
    pub fn status(&self) -> watch::Receiver<WatchStatus> {
        self.status.clone()
    }

    /// Stops watching and waits for the watcher thread to end.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        drop(self.watcher.take());
        let _ = self.control.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

enum Msg {
    Event(notify::Result<notify::Event>),
    Stop,
}

/// Watches `path` with the process environment; `initial` is the running configuration
/// (the one loaded from `path`).
pub fn watch(
    path: &Path,
    initial: Settings,
) -> Result<(watch::Receiver<Arc<Settings>>, WatchHandle), ConfigError> {
    watch_with(path, initial, WatchOptions::default())
}

/// [`watch()`] with options.
pub fn watch_with(
    path: &Path,
    initial: Settings,
    options: WatchOptions,
) -> Result<(watch::Receiver<Arc<Settings>>, WatchHandle), ConfigError> {
    let watch_err = |source| ConfigError::Watch {
        path: path.to_owned(),
        source,
    };
    let file = std::path::absolute(path).map_err(|e| watch_err(notify::Error::io(e)))?;
    let dir = file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));

    let (tx, rx) = mpsc::channel();
    let event_tx = tx.clone();
    let mut watcher = notify::recommended_watcher(move |res| {
        let _ = event_tx.send(Msg::Event(res));
    })
    .map_err(watch_err)?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(watch_err)?;

    let last_text = read(&file).ok();
    let (settings_tx, settings_rx) = watch::channel(Arc::new(initial));
    let (status_tx, status_rx) = watch::channel(WatchStatus::default());
    let mut state = State {
        file,
        options,
        last_text,
        settings: settings_tx,
        status: status_tx,
    };
    let thread = std::thread::Builder::new()
        .name("config8-watch".into())
        .spawn(move || state.run(rx))
        .map_err(|e| watch_err(notify::Error::io(e)))?;
    Ok((
        settings_rx,
        WatchHandle {
            status: status_rx,
            control: tx,
            thread: Some(thread),
            watcher: Some(watcher),
        },
    ))
}

struct State {
    file: PathBuf,
    options: WatchOptions,
    last_text: Option<String>,
    settings: watch::Sender<Arc<Settings>>,
    status: watch::Sender<WatchStatus>,
}

impl State {
    fn run(&mut self, rx: mpsc::Receiver<Msg>) {
        loop {
            // Wait for a change that may have completed a save.
            match rx.recv() {
                Ok(Msg::Event(Ok(ev))) if completes_a_save(&ev.kind) => {}
                Ok(Msg::Event(Ok(_))) => continue,
                Ok(Msg::Event(Err(e))) => {
                    tracing::warn!(file = %self.file.display(), error = %e, "configuration watch error");
                    continue;
                }
                Ok(Msg::Stop) | Err(_) => return,
            }
            // Debounce: wait until the directory has had no change (reads do not
            // count) for the debounce period, and at most MAX_DEBOUNCE_PERIODS periods
            // in all, so that files read or written without pause next to the
            // configuration (a log shipper, a log file) cannot hold an edit back.
            let start = Instant::now();
            let latest = start + self.options.debounce * MAX_DEBOUNCE_PERIODS;
            let mut quiet_at = start + self.options.debounce;
            loop {
                let now = Instant::now();
                let until = quiet_at.min(latest);
                if now >= until {
                    break;
                }
                match rx.recv_timeout(until - now) {
                    Ok(Msg::Event(Ok(ev))) if is_a_read(&ev.kind) => {}
                    Ok(Msg::Event(_)) => quiet_at = Instant::now() + self.options.debounce,
                    Err(mpsc::RecvTimeoutError::Timeout) => break,
                    Ok(Msg::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
            self.reload();
        }
    }

    fn reload(&mut self) {
        let text = match read(&self.file) {
            Ok(t) => t,
            Err(e) => {
                self.reject(e.to_string());
                self.last_text = None;
                return;
            }
        };
        if self.last_text.as_deref() == Some(text.as_str()) {
            self.status.send_modify(|s| s.reloads += 1);
            return;
        }
        self.last_text = Some(text.clone());
        if text.trim().is_empty() {
            self.reject(format!(
                "configuration file {} is empty (a save in progress?)",
                self.file.display()
            ));
            return;
        }
        match parse(&text, Some(&self.file), &self.options.env) {
            Err(e) => self.reject(e.to_string()),
            Ok(loaded) => {
                for w in &loaded.warnings {
                    tracing::warn!(file = %self.file.display(), "configuration: {w}");
                }
                let current = self.settings.borrow().clone();
                let report = diff(&current, &loaded.settings);
                if !report.is_empty() {
                    tracing::info!(
                        file = %self.file.display(),
                        live = ?report.live,
                        restart_required = ?report.restart_required,
                        "configuration changed{}",
                        if report.needs_restart() {
                            "; some changes apply only after a restart"
                        } else {
                            ""
                        }
                    );
                    self.settings.send_replace(Arc::new(loaded.settings));
                }
                self.status.send_modify(|s| {
                    s.reloads += 1;
                    if !report.is_empty() {
                        s.published += 1;
                    }
                    s.last_error = None;
                });
            }
        }
    }

    fn reject(&mut self, error: String) {
        tracing::error!(
            file = %self.file.display(),
            "configuration change rejected, the running configuration stays: {error}"
        );
        self.status.send_modify(|s| {
            s.reloads += 1;
            s.last_error = Some(error);
        });
    }
}

/// Events after which the file may hold a complete new version.
/// An access that changes nothing (open, read, close after reading).
fn is_a_read(kind: &EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    matches!(
        kind,
        EventKind::Access(
            AccessKind::Read | AccessKind::Open(_) | AccessKind::Close(AccessMode::Read)
        )
    )
}

fn completes_a_save(kind: &EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, ModifyKind};
    matches!(
        kind,
        EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Create(_)
            | EventKind::Modify(ModifyKind::Name(_))
            | EventKind::Remove(_)
    )
}
