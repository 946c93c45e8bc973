//! `launch [--ip 0.0.0.0] [--port 8005] [--config PATH]`: runs the service.
//!
//! Start-up, in order: load the configuration (exit 2 when invalid), set up logging,
//! connect to PostgreSQL (with the configured start-up retries) and apply the
//! migrations when `Database.migrate_on_start`, connect to RabbitMQ (likewise), watch
//! the configuration file, then run the controller (which declares the topology, takes
//! part in leader election and starts its loops) and the HTTP server side by side.
//!
//! SIGINT or SIGTERM: the HTTP server stops accepting, the controller stops taking new
//! work, finishes or rolls back what is half-done, returns unacknowledged results to
//! the broker and gives the leader lock up; the process exits 0 within
//! [`SHUTDOWN_DEADLINE`]. A second signal exits at once.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use amqp8::AmqpError;
use config8::{SchedulerMode, Settings};
use controller8::http::{self, HttpState, HttpTimeouts};
use controller8::{Clock, Controller, ControllerError, Deps, Metrics, SystemClock};
use db8::{ChangeFeed, LeaderLock, PgChangeFeed, PgLeaderLock, PgStore};
use tokio::sync::watch;
use tokio::task::JoinError;
use tokio_util::sync::CancellationToken;

use super::Failure;
use crate::cli::LaunchArgs;
use crate::cmd::migrate::{connect, db_failure};

/// Longest time between the shutdown signal and the end of the process.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(25);

/// Runs the command.
pub fn run(args: LaunchArgs) -> Result<(), Failure> {
    let path = config8::resolve_path(args.config.clone());
    let loaded = config8::load(&path).map_err(|e| Failure::Usage(e.to_string()))?;
    let settings = loaded.settings;
    let log = log8::init(&log8::LogConfig::from_settings(&settings))
        .map_err(|e| Failure::Runtime(format!("cannot set up logging: {e}")))?;
    for w in &loaded.warnings {
        tracing::warn!(file = %path.display(), "configuration: {w}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("orchestratorm8")
        .build()
        .map_err(|e| Failure::Runtime(format!("cannot start the async runtime: {e}")))?;
    let addr = SocketAddr::new(args.ip, args.port);
    let result = runtime.block_on(serve(addr, &path, settings, &log));
    match &result {
        Ok(()) => tracing::info!("orchestratorm8 stopped"),
        Err(e) => tracing::error!(error = %e, "orchestratorm8 failed"),
    }
    // Background tasks (pool reapers...) must not hold the exit up.
    runtime.shutdown_timeout(Duration::from_secs(2));
    log.shutdown();
    result
}

/// Resolves on the first SIGINT or SIGTERM.
async fn signalled() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let kinds = (SignalKind::terminate(), SignalKind::interrupt());
        if let (Ok(mut term), Ok(mut int)) = (signal(kinds.0), signal(kinds.1)) {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
                _ = int.recv() => tracing::info!("SIGINT received; shutting down"),
            }
            return;
        }
        tracing::warn!("cannot install the SIGTERM handler; only Ctrl-C stops the service");
    }
    let _ = tokio::signal::ctrl_c().await;
    #[cfg(not(unix))]
    tracing::info!("Ctrl-C received; shutting down");
}

fn amqp_failure(e: AmqpError) -> Failure {
    match e {
        // Settings, credentials or virtual host: fixed in the configuration.
        AmqpError::Settings { .. }
        | AmqpError::AccessRefused { .. }
        | AmqpError::VhostNotAllowed { .. } => Failure::Usage(e.to_string()),
        other => Failure::Runtime(other.to_string()),
    }
}

fn controller_failure(e: ControllerError) -> Failure {
    match e {
        ControllerError::Config(_) => Failure::Usage(e.to_string()),
        other => Failure::Runtime(other.to_string()),
    }
}

/// What the controller's task returned, as the command's outcome.
fn controller_ended(r: Result<Result<(), ControllerError>, JoinError>) -> Result<(), Failure> {
    match r {
        Ok(r) => r.map_err(controller_failure),
        Err(e) => Err(Failure::Runtime(format!("the controller crashed: {e}"))),
    }
}

async fn serve(
    addr: SocketAddr,
    path: &Path,
    settings: Settings,
    log: &log8::LogGuard,
) -> Result<(), Failure> {
    tracing::info!(
        config = %path.display(),
        mode = ?settings.scheduler.mode,
        leader_election = settings.leader_election.enabled,
        "orchestratorm8 starting"
    );
    if http::api_is_open(&settings.http) {
        tracing::warn!(
            "HTTP.api_token is not set: the workflow API is open to anyone who can reach {addr}"
        );
    }

    // A signal during start-up (e.g. while waiting for the database) stops at once.
    let stop = CancellationToken::new();
    let stop_tx = stop.clone();
    let signal_task = tokio::spawn(async move {
        signalled().await;
        stop_tx.cancel();
        // A second signal: stop now.
        signalled().await;
        tracing::warn!("second signal: exiting at once");
        std::process::exit(1);
    });
    let stopped = || stop.clone().cancelled_owned();

    let start = async {
        let store = connect(&settings).await?;
        if settings.database.migrate_on_start {
            let applied = store.migrate().await.map_err(db_failure)?;
            for m in &applied {
                tracing::info!(version = m.version, name = %m.name, "migration applied");
            }
        } else {
            tracing::info!("Database.migrate_on_start is false: not applying migrations");
        }
        let broker = amqp8::connect(&settings.rabbitmq)
            .await
            .map_err(amqp_failure)?;
        Ok::<_, Failure>((store, broker))
    };
    let (store, broker) = tokio::select! {
        r = start => r?,
        () = stopped() => {
            tracing::info!("stopped during start-up");
            return Ok(());
        }
    };
    let store = Arc::new(store);
    let broker = Arc::new(broker);

    // With leader election, the leader-only writes are fenced by the lock's term
    // (docs/ENGINE.md, "Fencing"): a replica that lost the lock cannot act any more.
    let (leader, store): (Option<Arc<dyn LeaderLock>>, Arc<PgStore>) =
        if settings.leader_election.enabled {
            let lock = PgLeaderLock::new(&settings.database, settings.leader_election.lock_key)
                .map_err(db_failure)?;
            let fenced = Arc::new(store.fenced(lock.term()));
            (Some(Arc::new(lock)), fenced)
        } else {
            (None, store)
        };
    let changes: Arc<dyn ChangeFeed> =
        Arc::new(PgChangeFeed::new(&settings.database).map_err(db_failure)?);

    let metrics = Arc::new(Metrics::new());
    let (settings_rx, _watcher) = watch_config(path, &settings, log, metrics.clone());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);

    let controller = Controller::new(Deps {
        domains: store.clone(),
        workflows: store.clone(),
        outbox: store.clone(),
        broker: broker.clone(),
        leader,
        changes,
        clock: clock.clone(),
        settings: settings_rx.clone(),
        metrics: metrics.clone(),
        ring: Some(store.clone()),
    })
    .map_err(controller_failure)?;

    let state = HttpState {
        workflows: controller.workflows(),
        scan: controller.scan_now(),
        db: store.clone(),
        replicas: store.clone(),
        broker: broker.clone(),
        role: controller.role(),
        metrics: metrics.clone(),
        settings: http::follow_settings(settings_rx.clone(), |s: &Arc<Settings>| s.http.clone()),
        clock: clock.clone(),
        downstream_queues: settings
            .orchestrator
            .queues
            .values()
            .map(|q| q.queue.clone())
            .filter(|q| q != model8::RESULT_QUEUE)
            .collect(),
        managed: settings.scheduler.mode == SchedulerMode::Managed,
        stages: http::StageInfo::from_settings(&settings),
        timeouts: HttpTimeouts::default(),
    };
    let (bound, http_done) = http::serve(addr, state, stopped())
        .await
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    tracing::info!(address = %bound, "orchestratorm8 running");

    let beacon_task = tokio::spawn(controller8::replicas::beacon(
        store.clone(),
        controller.role(),
        clock.clone(),
        controller8::replicas::host_name(),
        stopped(),
    ));
    let mut controller_task = tokio::spawn(controller.run(stopped()));
    let mut http_task = tokio::spawn(http_done);

    // Run until a signal, or until the controller fails.
    // `biased`: on a signal the controller ends too, and both branches can be ready at
    // once; the signal must win so that a clean stop is not taken for a failure.
    let result = tokio::select! {
        biased;
        () = stopped() => {
            let drained = tokio::time::timeout(SHUTDOWN_DEADLINE, async {
                let c = (&mut controller_task).await;
                let _ = (&mut http_task).await;
                c
            });
            drained.await.map_or_else(
                |_| {
                    tracing::warn!(
                        deadline = ?SHUTDOWN_DEADLINE,
                        "shutdown did not finish in time; exiting anyway"
                    );
                    Ok(())
                },
                controller_ended,
            )
        }
        // The controller ended on its own: a fatal error (or a panic).
        r = &mut controller_task => controller_ended(r).and(Err(Failure::Runtime(
            "the controller stopped unexpectedly".into(),
        ))),
    };
    // The replica's row goes from the list (a short wait: the database may be away).
    let _ = tokio::time::timeout(Duration::from_secs(2), beacon_task).await;
    controller_task.abort();
    http_task.abort();
    let _ = tokio::time::timeout(Duration::from_secs(5), broker.close()).await;
    signal_task.abort();
    result
}

/// Watches the configuration file: new valid settings are published to the
/// controller and the HTTP layer, `LOG_LEVEL` is applied at once, and reloads are
/// counted in the metrics. config8 logs what changed and what needs a restart. When
/// the file cannot be watched, the service runs on the settings it started with.
fn watch_config(
    path: &Path,
    settings: &Settings,
    log: &log8::LogGuard,
    metrics: Arc<Metrics>,
) -> (watch::Receiver<Arc<Settings>>, Option<config8::WatchHandle>) {
    match config8::watch(path, settings.clone()) {
        Ok((rx, handle)) => {
            let level = log.level_handle();
            let mut changes = rx.clone();
            tokio::spawn(async move {
                let mut current = changes.borrow_and_update().log_level;
                while changes.changed().await.is_ok() {
                    let next = changes.borrow_and_update().log_level;
                    if next != current {
                        match level.set_level(next) {
                            Ok(()) => tracing::info!(level = ?next, "log level changed"),
                            Err(e) => tracing::warn!(error = %e, "cannot change the log level"),
                        }
                        current = next;
                    }
                }
            });
            let mut status = handle.status();
            tokio::spawn(async move {
                let mut seen = status.borrow_and_update().clone();
                while status.changed().await.is_ok() {
                    let now = status.borrow_and_update().clone();
                    if now.published > seen.published {
                        metrics.config_reload(true);
                    } else if now.reloads > seen.reloads && now.last_error.is_some() {
                        metrics.config_reload(false);
                    }
                    seen = now;
                }
            });
            (rx, Some(handle))
        }
        Err(e) => {
            tracing::warn!(
                file = %path.display(), error = %e,
                "cannot watch the configuration file; changes need a restart"
            );
            // The sender goes away: readers keep the start-up settings.
            let (_, rx) = watch::channel(Arc::new(settings.clone()));
            (rx, None)
        }
    }
}
