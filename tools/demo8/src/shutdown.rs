//! Ctrl-C and SIGTERM: the first asks for a clean stop, a second one exits at once.

use tokio::signal::unix::{SignalKind, signal};

/// Exit status after a second signal (128 + SIGINT, as shells report it).
pub const FORCED_EXIT_STATUS: i32 = 130;

/// Waits for the first SIGINT (Ctrl-C) or SIGTERM and returns its name. A task keeps
/// listening afterwards: a second signal ends the process at once with
/// [`FORCED_EXIT_STATUS`], for an operator who does not want to wait for in-flight
/// work. Fails when the signal handlers cannot be installed.
pub async fn first_signal() -> std::io::Result<&'static str> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let name = tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    };
    tokio::spawn(async move {
        let again = tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        };
        tracing::warn!("second signal ({again}): exiting now; unacked jobs return to their queue");
        std::process::exit(FORCED_EXIT_STATUS);
    });
    Ok(name)
}
