//! What every example worker's `main` does around its handler: load the configuration
//! (config8), set up logging (log8), declare and consume (amqp8), watch the broker's
//! health, and stop cleanly on Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use amqp8::{AmqpError, Broker, BrokerHealth, ConsumeOptions, ConsumerHandle, Handler, Topology};
use config8::Settings;

use crate::shutdown;

/// Why a worker stopped with an error; [`Failure::exit_code`] follows the CPTM8
/// convention (2: usage or configuration error, 1: run-time failure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Bad flags or configuration: exit 2.
    Usage(String),
    /// The broker or the system failed: exit 1.
    Runtime(String),
}

impl Failure {
    /// The process exit code.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Failure::Usage(_) => ExitCode::from(2),
            Failure::Runtime(_) => ExitCode::from(1),
        }
    }

    /// Prints `program: error: ...` on stderr and returns the exit code.
    pub fn report(&self, program: &str) -> ExitCode {
        let (Failure::Usage(m) | Failure::Runtime(m)) = self;
        eprintln!("{program}: error: {m}");
        self.exit_code()
    }
}

impl From<AmqpError> for Failure {
    fn from(e: AmqpError) -> Self {
        match e {
            AmqpError::Settings { .. } => Failure::Usage(e.to_string()),
            other => Failure::Runtime(other.to_string()),
        }
    }
}

/// Loads the configuration: `--config`, else `$ORCHESTRATORM8_CONFIG`, else
/// `configs/configuration.yaml`. Warnings (unknown keys...) go to stderr.
pub fn load_settings(program: &str, config: Option<PathBuf>) -> Result<Settings, Failure> {
    let path = config8::resolve_path(config);
    let loaded = config8::load(&path).map_err(|e| Failure::Usage(e.to_string()))?;
    for w in &loaded.warnings {
        eprintln!("{program}: warning: {w}");
    }
    Ok(loaded.settings)
}

/// Logging as the configuration says (`APP_ENV`, `LOG_LEVEL`, `Log`); keep the guard
/// until the end of `main`.
pub fn init_logging(settings: &Settings) -> Result<log8::LogGuard, Failure> {
    log8::init(&log8::LogConfig::from_settings(settings))
        .map_err(|e| Failure::Runtime(format!("cannot set up logging: {e}")))
}

/// How a worker consumes.
#[derive(Debug, Clone)]
pub struct Serve {
    /// What to declare first (queue, exchanges, dead-letter queue).
    pub topology: Topology,
    /// The consumer.
    pub consume: ConsumeOptions,
    /// At shutdown, how long in-flight jobs may take to finish before they are
    /// returned to the queue.
    pub grace: Duration,
    /// How often the broker's health is checked (and logged when it changes).
    pub health_every: Duration,
}

/// Declares, consumes with `handler` until SIGINT or SIGTERM, then stops taking jobs,
/// lets in-flight jobs finish within the grace period and returns the others to the
/// queue.
pub async fn serve(
    broker: Arc<dyn Broker>,
    serve: Serve,
    handler: Arc<dyn Handler>,
) -> Result<(), Failure> {
    broker.declare(&serve.topology).await.map_err(|e| match e {
        AmqpError::Refused { .. } => Failure::Usage(format!(
            "{e} (a queue already exists with other arguments? Workers declare their queue as the configuration's service section describes it)"
        )),
        other => Failure::from(other),
    })?;
    let queue = serve.consume.queue.clone();
    let consumer: ConsumerHandle = broker.consume(serve.consume, handler).await?;
    tracing::info!(%queue, "consuming (manual ack); Ctrl-C or SIGTERM stops");

    let watch = tokio::spawn(watch_health(Arc::clone(&broker), serve.health_every));
    let signal = shutdown::first_signal()
        .await
        .map_err(|e| Failure::Runtime(format!("cannot install signal handlers: {e}")))?;
    watch.abort();
    tracing::info!(%queue, grace = ?serve.grace,
        "{signal}: no new jobs; waiting for in-flight jobs (a second signal exits at once)");
    // The consumer returns what is still unfinished after the grace period; the outer
    // bound only guards against a broker that does not answer at all.
    let bound = serve.grace + Duration::from_secs(10);
    if tokio::time::timeout(bound, consumer.stop(serve.grace))
        .await
        .is_err()
    {
        tracing::warn!(%queue, "consumer did not stop within {bound:?}; exiting (unacked jobs return to the queue when the connection closes)");
    }
    tracing::info!(%queue, "stopped");
    Ok(())
}

/// Logs the broker's health when it changes: connection lost or back, consumers
/// inactive or active again.
async fn watch_health(broker: Arc<dyn Broker>, every: Duration) {
    let mut last: Option<(bool, bool, usize)> = None;
    loop {
        tokio::time::sleep(every).await;
        let h: BrokerHealth = broker.health();
        let inactive = h.consumers.iter().filter(|c| !c.active).count();
        let now = (h.connected, h.blocked, inactive);
        if last != Some(now) {
            let handled: u64 = h.consumers.iter().map(|c| c.messages).sum();
            let errors: u64 = h.consumers.iter().map(|c| c.errors).sum();
            let restarts: u64 = h.consumers.iter().map(|c| c.restarts).sum();
            if h.connected && !h.blocked && inactive == 0 {
                tracing::info!(handled, errors, restarts, "broker healthy, consumer active");
            } else {
                tracing::warn!(
                    connected = h.connected,
                    blocked = h.blocked,
                    inactive_consumers = inactive,
                    handled,
                    errors,
                    restarts,
                    "broker unhealthy; amqp8 reconnects and resubscribes by itself"
                );
            }
            last = Some(now);
        }
    }
}

/// A worker's `main`: parses the command line into `A` (argh; `--help` and bad flags
/// exit as argh does), runs `run`, and turns its failure into the exit code.
pub fn main<A: argh::TopLevelCommand>(
    program: &str,
    run: impl FnOnce(A) -> Result<(), Failure>,
) -> ExitCode {
    match run(argh::from_env()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => f.report(program),
    }
}

/// Runs a worker: connects, builds it with `make` (the worker, and the handler that
/// [`serve`] gives the deliveries to), serves until SIGINT or SIGTERM, closes the
/// connection, then calls `stopped` with the worker (to log its counts). Everything
/// that holds the connection is dropped inside the runtime.
pub fn serve_worker<W>(
    settings: &Settings,
    how: Serve,
    make: impl FnOnce(Arc<dyn Broker>) -> (W, Arc<dyn Handler>),
    stopped: impl FnOnce(&W),
) -> Result<(), Failure> {
    runtime()?.block_on(async {
        let rabbit = connect(settings).await?;
        let broker: Arc<dyn Broker> = rabbit.clone();
        let (worker, handler) = make(broker.clone());
        let served = serve(broker, how, handler).await;
        rabbit.close().await;
        served?;
        stopped(&worker);
        Ok(())
    })
}

/// A multi-threaded tokio runtime for the worker.
pub fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(format!("cannot start the async runtime: {e}")))
}

/// Connects to RabbitMQ as `RabbitMQ` configures it (host, credentials, vhost, TLS,
/// start-up retries `pool.retry_attempts` × `pool.retry_delay`). Close it with
/// [`amqp8::RabbitBroker::close`] at the end.
pub async fn connect(settings: &Settings) -> Result<Arc<amqp8::RabbitBroker>, Failure> {
    let broker = amqp8::connect(&settings.rabbitmq).await?;
    tracing::info!(broker = %broker.endpoint(), "connected to RabbitMQ");
    Ok(Arc::new(broker))
}
