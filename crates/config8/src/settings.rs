//! The typed, validated configuration: plain data with Go-compatible defaults.
//!
//! Every other crate reads its settings from these types; none of them sees YAML.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::secret::Secret;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    /// `APP_ENV`: DEV and TEST log human-readable text, PROD logs JSON.
    pub app_env: AppEnv,
    /// `LOG_LEVEL`: 0 debug, 1 info, 2 warn, 3 error.
    pub log_level: LogLevel,
    /// `ORCHESTRATORM8`: services, exchanges and one queue section per service.
    pub orchestrator: OrchestratorSettings,
    /// `Database`.
    pub database: DatabaseSettings,
    /// `RabbitMQ`.
    pub rabbitmq: RabbitMqSettings,
    /// `Scheduler` (optional section).
    pub scheduler: SchedulerSettings,
    /// `Workflow` (optional section; used in managed mode).
    pub workflow: WorkflowSettings,
    /// `HTTP` (optional section).
    pub http: HttpSettings,
    /// `LeaderElection` (optional section).
    pub leader_election: LeaderElectionSettings,
    /// `Log` (optional section): file and APM output.
    pub log: LogSettings,
}

/// `APP_ENV`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum AppEnv {
    /// Development: human-readable console logs.
    #[serde(rename = "DEV")]
    Dev,
    /// Test: human-readable console logs.
    #[serde(rename = "TEST")]
    Test,
    /// Production: JSON logs.
    #[serde(rename = "PROD")]
    Prod,
}

/// `LOG_LEVEL` as the Go original reads it (zerolog numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum LogLevel {
    /// 0.
    Debug,
    /// 1 (the Go original's fallback).
    Info,
    /// 2.
    Warn,
    /// 3.
    Error,
}

/// `ORCHESTRATORM8`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OrchestratorSettings {
    /// `Services`: service name to base URL (informational).
    pub services: BTreeMap<String, String>,
    /// `Exchanges`: exchange name to kind.
    pub exchanges: BTreeMap<String, ExchangeKind>,
    /// Every other key of `ORCHESTRATORM8`: one queue section per service, by section name.
    pub queues: BTreeMap<String, ServiceQueue>,
}

/// An AMQP exchange kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeKind {
    /// `topic`.
    Topic,
    /// `direct`.
    Direct,
    /// `fanout`.
    Fanout,
    /// `headers`.
    Headers,
}

impl ExchangeKind {
    /// The AMQP name of the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Topic => "topic",
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Headers => "headers",
        }
    }
}

/// One service section of `ORCHESTRATORM8` (e.g. `asmm8`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceQueue {
    /// `Queue[0]`: the exchange the queue is bound to.
    pub exchange: String,
    /// `Queue[1]`: the queue name.
    pub queue: String,
    /// `Queue[2]`: the consumer prefetch count.
    pub prefetch: u16,
    /// `Routing-keys`: binding keys.
    pub routing_keys: Vec<String>,
    /// `Queue-arguments`, with their YAML types kept (integers stay integers).
    pub queue_arguments: BTreeMap<String, ArgValue>,
    /// `Consumer`: `[queue, consumer tag, autoack]`, when given.
    pub consumer: Option<ConsumerSpec>,
}

/// A queue argument value, typed as written in the YAML.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ArgValue {
    /// An integer, e.g. `x-max-length: 1`.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// A boolean, e.g. `x-single-active-consumer: true`.
    Bool(bool),
    /// A string, e.g. `x-overflow: reject-publish`.
    Str(String),
}

/// `Consumer: [queue, tag, autoack]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsumerSpec {
    /// Queue consumed.
    pub queue: String,
    /// Consumer tag prefix.
    pub tag: String,
    /// Whether deliveries are acknowledged automatically (`"false"` in CPTM8).
    pub autoack: bool,
}

/// `Database`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatabaseSettings {
    /// Host name or address.
    pub location: String,
    /// Port (5432).
    pub port: u16,
    /// Schema put first on the `search_path` (`public`).
    pub schema: String,
    /// Database name.
    pub database: String,
    /// User name.
    pub username: String,
    /// Password (redacted everywhere).
    pub password: Secret,
    /// `sslmode`: `disable` (the Go original's), `prefer` or `require`.
    pub sslmode: SslMode,
    /// Root certificate file for TLS, when not the system's.
    pub sslrootcert: Option<PathBuf>,
    /// Largest pool size (`max_connections`, default 10).
    pub max_connections: u32,
    /// Idle connections kept (`min_connections`, default 1).
    pub min_connections: u32,
    /// Connect timeout (`connection_timeout`, default 10 s).
    pub connection_timeout: Duration,
    /// Start-up connection attempts (`retry_attempts`, default 10 as the Go original).
    pub retry_attempts: u32,
    /// Delay between start-up attempts (`retry_delay`, default 5 s as the Go original).
    pub retry_delay: Duration,
    /// Whether `launch` applies migrations at start (`migrate_on_start`, default true).
    pub migrate_on_start: bool,
}

/// PostgreSQL `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it.
    Prefer,
    /// TLS or fail.
    Require,
}

/// `RabbitMQ`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RabbitMqSettings {
    /// Host name or address.
    pub location: String,
    /// Port (5672, or 5671 for amqps).
    pub port: u16,
    /// User name.
    pub username: String,
    /// Password (redacted everywhere).
    pub password: Secret,
    /// Virtual host (`vhost`, default `/`).
    pub vhost: String,
    /// Use TLS (`tls`, default false).
    pub tls: bool,
    /// Root certificate file for TLS, when not the system's (`tls_ca`).
    pub tls_ca: Option<PathBuf>,
    /// Negotiated heartbeat (`heartbeat`, default 10 s; never below 2 s).
    pub heartbeat: Duration,
    /// `pool`.
    pub pool: RabbitPoolSettings,
}

/// `RabbitMQ.pool`, with the Go original's defaults.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RabbitPoolSettings {
    /// `max_connections` (10).
    pub max_connections: u32,
    /// `min_connections` (2).
    pub min_connections: u32,
    /// `pool.max_idle_time` (1 h).
    pub max_idle_time: Duration,
    /// `max_lifetime` (2 h).
    pub max_lifetime: Duration,
    /// `health_check_period` (30 min).
    pub health_check_period: Duration,
    /// `connection_timeout` (30 s).
    pub connection_timeout: Duration,
    /// `retry_attempts` (10).
    pub retry_attempts: u32,
    /// `retry_delay` (2 s).
    pub retry_delay: Duration,
}

/// `Scheduler`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SchedulerSettings {
    /// `mode`: bootstrap (default) or managed.
    pub mode: SchedulerMode,
    /// `interval`: poll period (15 min); the first check runs at start.
    pub interval: Duration,
}

/// `Scheduler.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SchedulerMode {
    /// The Go original's behaviour: one kick-off message.
    Bootstrap,
    /// The workflow engine.
    Managed,
}

/// `Workflow`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkflowSettings {
    /// `granularity`.
    pub granularity: Granularity,
    /// `rescan_after`: cool-down after a domain's workflow ends.
    pub rescan_after: Duration,
    /// `stages`, validated: names unique, dependencies known and acyclic.
    pub stages: Vec<StageSettings>,
}

/// `Workflow.granularity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    /// One workflow per enabled domain.
    PerDomain,
    /// One workflow per cycle holding every enabled domain.
    PerCycle,
}

/// One entry of `Workflow.stages`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageSettings {
    /// `name`.
    pub name: String,
    /// `exchange` (default: the service section's `Queue[0]`, else `cptm8`).
    pub exchange: String,
    /// `routing_key` (default `cptm8.<name>.get.scan`).
    pub routing_key: String,
    /// `depends_on`.
    pub depends_on: Vec<String>,
    /// `timeout` (default 2 h).
    pub timeout: Duration,
    /// `max_attempts` (default 3, at least 1).
    pub max_attempts: u32,
    /// `backoff`.
    pub backoff: BackoffSettings,
    /// `max_in_flight`: jobs of this stage out at once; 0 = no limit.
    pub max_in_flight: u32,
}

/// `backoff` of a stage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackoffSettings {
    /// `initial` (30 s).
    pub initial: Duration,
    /// `max` (10 min).
    pub max: Duration,
    /// `multiplier` (2.0, at least 1.0).
    pub multiplier: f64,
}

/// `HTTP`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpSettings {
    /// `api_token`: bearer token of the workflow API; `None` leaves the API open.
    pub api_token: Option<Secret>,
    /// `body_limit`: largest accepted request body in bytes (64 KiB).
    pub body_limit: u64,
}

/// `LeaderElection`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LeaderElectionSettings {
    /// `enabled` (true).
    pub enabled: bool,
    /// `lock_key`: the PostgreSQL advisory lock key.
    pub lock_key: i64,
    /// `check_interval`: how often the leader verifies it still holds the lock, and a
    /// standby retries (1 s).
    pub check_interval: Duration,
}

/// `Log`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogSettings {
    /// `file`: rolling log file path; `None` writes no file.
    pub file: Option<PathBuf>,
    /// `apm_server_url`: Elastic APM server; `None` disables APM export.
    pub apm_server_url: Option<String>,
    /// `apm_secret_token`.
    pub apm_secret_token: Option<Secret>,
    /// `apm_service_name` (`orchestratorm8`).
    pub apm_service_name: String,
}
