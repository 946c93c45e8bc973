//! The typed, validated configuration: plain data with Go-compatible defaults.
//!
//! Every other crate reads its settings from these types; none of them sees YAML.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::secret::Secret;
use crate::window::ScanWindow;

/// The whole configuration. `Settings::default()` is what an empty file loads to.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Settings {
    /// `APP_ENV`: DEV and TEST log human-readable text, PROD logs JSON.
    #[serde(rename = "APP_ENV")]
    pub app_env: AppEnv,
    /// `LOG_LEVEL`: 0 debug, 1 info, 2 warn, 3 error.
    #[serde(rename = "LOG_LEVEL")]
    pub log_level: LogLevel,
    /// `ORCHESTRATORM8`: services, exchanges and one queue section per service.
    #[serde(rename = "ORCHESTRATORM8")]
    pub orchestrator: OrchestratorSettings,
    /// `Database`.
    #[serde(rename = "Database")]
    pub database: DatabaseSettings,
    /// `RabbitMQ`.
    #[serde(rename = "RabbitMQ")]
    pub rabbitmq: RabbitMqSettings,
    /// `Scheduler` (optional section).
    #[serde(rename = "Scheduler")]
    pub scheduler: SchedulerSettings,
    /// `Workflow` (optional section; used in managed mode).
    #[serde(rename = "Workflow")]
    pub workflow: WorkflowSettings,
    /// `HTTP` (optional section).
    #[serde(rename = "HTTP")]
    pub http: HttpSettings,
    /// `LeaderElection` (optional section).
    #[serde(rename = "LeaderElection")]
    pub leader_election: LeaderElectionSettings,
    /// `Log` (optional section): file and APM output.
    #[serde(rename = "Log")]
    pub log: LogSettings,
}

/// Implements, for a settings enum, `as_str` (its name in the file), `NAMES` (every
/// variant with that name, for reading) and `Serialize` (as that name): each name is
/// written once.
macro_rules! file_names {
    ($($t:ident { $($v:ident => $n:literal),+ $(,)? })+) => {$(
        impl $t {
            /// Every variant with its name in the file, in declaration order.
            pub const NAMES: &'static [(&'static str, $t)] = &[$(($n, $t::$v)),+];

            /// The name used in the file.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($t::$v => $n,)+
                }
            }
        }

        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    )+};
}

file_names! {
    AppEnv { Dev => "DEV", Test => "TEST", Prod => "PROD" }
    ExchangeKind {
        Topic => "topic", Direct => "direct", Fanout => "fanout", Headers => "headers",
    }
    SslMode {
        Disable => "disable", Prefer => "prefer", Require => "require",
        VerifyCa => "verify-ca", VerifyFull => "verify-full",
    }
    SchedulerMode { Bootstrap => "bootstrap", Managed => "managed" }
    Fairness { None => "none", Company => "company" }
    Granularity { PerDomain => "per_domain", PerCycle => "per_cycle" }
    StageProtocol { Report => "report", Chain => "chain" }
}

/// `APP_ENV`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AppEnv {
    /// Development: human-readable console logs. The default: the Go original treats
    /// anything but PROD as development.
    #[default]
    Dev,
    /// Test: human-readable console logs.
    Test,
    /// Production: JSON logs.
    Prod,
}

/// `LOG_LEVEL` as the Go original reads it (zerolog numbering); serialised as the number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// 0.
    Debug,
    /// 1 (the Go original's fallback when `LOG_LEVEL` is missing).
    #[default]
    Info,
    /// 2.
    Warn,
    /// 3.
    Error,
}

/// `ORCHESTRATORM8`. Serialised in the file's shape (`Services`, `Exchanges`, then one
/// section per service).
#[derive(Debug, Clone, PartialEq)]
pub struct OrchestratorSettings {
    /// `Services`: service name to base URL (informational).
    pub services: BTreeMap<String, String>,
    /// `Exchanges`: exchange name to kind.
    pub exchanges: BTreeMap<String, ExchangeKind>,
    /// Every other key of `ORCHESTRATORM8`: one queue section per service, by section name.
    pub queues: BTreeMap<String, ServiceQueue>,
}

/// An AMQP exchange kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ExchangeKind {
    /// `topic`.
    #[default]
    Topic,
    /// `direct`.
    Direct,
    /// `fanout`.
    Fanout,
    /// `headers`.
    Headers,
}

/// One service section of `ORCHESTRATORM8` (e.g. `asmm8`). Serialised in the file's
/// shape (`Queue: [exchange, queue, prefetch]`, `Routing-keys`, ...).
#[derive(Debug, Clone, PartialEq)]
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

impl ServiceQueue {
    /// The queue's `x-max-length` (the ready messages it holds at most, the Go
    /// services' backpressure), when `Queue-arguments` sets it as an integer.
    pub fn max_length(&self) -> Option<i64> {
        match self.queue_arguments.get("x-max-length") {
            Some(ArgValue::Int(n)) => Some(*n),
            _ => None,
        }
    }
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// `sslmode`: `disable` (the Go original's), `prefer`, `require`, `verify-ca` or
    /// `verify-full`, as libpq's.
    pub sslmode: SslMode,
    /// Root certificate file for TLS, when not the system's.
    pub sslrootcert: Option<PathBuf>,
    /// Largest pool size (`max_connections`, default 10).
    pub max_connections: u32,
    /// Idle connections kept (`min_connections`, default 1).
    pub min_connections: u32,
    /// Connect timeout (`connection_timeout`, default 10 s).
    #[serde(serialize_with = "crate::duration::serialize")]
    pub connection_timeout: Duration,
    /// Start-up connection attempts (`retry_attempts`, default 10 as the Go original).
    pub retry_attempts: u32,
    /// Delay between start-up attempts (`retry_delay`, default 5 s as the Go original).
    #[serde(serialize_with = "crate::duration::serialize")]
    pub retry_delay: Duration,
    /// Whether `launch` applies migrations at start (`migrate_on_start`, default true).
    pub migrate_on_start: bool,
}

/// PostgreSQL `sslmode`, as libpq's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS: the default, as the Go original's connection string.
    #[default]
    Disable,
    /// TLS when the server offers it.
    Prefer,
    /// TLS or fail.
    Require,
    /// TLS or fail; the server's certificate must chain to a trusted root (the host
    /// name is not checked).
    VerifyCa,
    /// As `verify-ca`, and the certificate must name the host connected to.
    VerifyFull,
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
    #[serde(serialize_with = "crate::duration::serialize")]
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
    #[serde(
        rename = "pool.max_idle_time",
        serialize_with = "crate::duration::serialize"
    )]
    pub max_idle_time: Duration,
    /// `max_lifetime` (2 h).
    #[serde(serialize_with = "crate::duration::serialize")]
    pub max_lifetime: Duration,
    /// `health_check_period` (30 min).
    #[serde(serialize_with = "crate::duration::serialize")]
    pub health_check_period: Duration,
    /// `connection_timeout` (30 s).
    #[serde(serialize_with = "crate::duration::serialize")]
    pub connection_timeout: Duration,
    /// `retry_attempts` (10).
    pub retry_attempts: u32,
    /// `retry_delay` (2 s).
    #[serde(serialize_with = "crate::duration::serialize")]
    pub retry_delay: Duration,
}

/// `Scheduler`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SchedulerSettings {
    /// `mode`: bootstrap (default) or managed.
    pub mode: SchedulerMode,
    /// `interval`: poll period (15 min); the first check runs at start.
    #[serde(serialize_with = "crate::duration::serialize")]
    pub interval: Duration,
    /// `observe` (default true): in bootstrap mode, follow the scanners' own ring
    /// (CONTRACT 3c) through a queue of the orchestrator's own.
    pub observe: bool,
    /// `heal` (default false): in bootstrap mode, the leader re-kicks a stalled stage
    /// (`max_attempts`, backoff), then kicks the next one.
    pub heal: bool,
}

/// `Scheduler.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SchedulerMode {
    /// The Go original's behaviour: one kick-off message.
    #[default]
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
    #[serde(serialize_with = "crate::duration::serialize")]
    pub rescan_after: Duration,
    /// `stages`, validated: names unique, dependencies known and acyclic.
    pub stages: Vec<StageSettings>,
    /// `fairness`: how a stage's slots are shared when its `max_in_flight` binds.
    pub fairness: Fairness,
    /// `company_weights`: with `fairness: company`, a company's share of the slots
    /// relative to the others (default 1 each; the key `""` weights the domains with
    /// no company).
    pub company_weights: BTreeMap<String, u32>,
    /// `windows`: when stage jobs may be published (every stage without windows of its
    /// own); empty: always.
    pub windows: Vec<ScanWindow>,
    /// `retention`: finished workflows older than this are deleted by the leader (30
    /// days); zero keeps everything.
    #[serde(serialize_with = "crate::duration::serialize")]
    pub retention: Duration,
}

/// `Workflow.fairness`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Fairness {
    /// Oldest first (the due time, then the workflow id).
    #[default]
    None,
    /// When a stage's `max_in_flight` binds, its slots go round-robin across
    /// `companyname` values (no company is one company), weighted by
    /// `company_weights`.
    Company,
}

/// `Workflow.granularity`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Granularity {
    /// One workflow per enabled domain.
    #[default]
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
    #[serde(serialize_with = "crate::duration::serialize")]
    pub timeout: Duration,
    /// `max_attempts` (default 3, at least 1).
    pub max_attempts: u32,
    /// `backoff`.
    pub backoff: BackoffSettings,
    /// `max_in_flight`: jobs of this stage out at once; 0 = no limit.
    pub max_in_flight: u32,
    /// `windows`: when this stage's jobs may be published, replacing
    /// `Workflow.windows`; `None` (absent): `Workflow.windows` applies.
    pub windows: Option<Vec<ScanWindow>>,
    /// `protocol`: how the stage's worker is driven (default `report`).
    pub protocol: StageProtocol,
}

/// `Workflow.stages[].protocol`: how a stage's worker is driven.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum StageProtocol {
    /// A worker of CONTRACT section 3: a job with a payload, reports naming the
    /// workflow and attempt.
    #[default]
    Report,
    /// An unmodified CPTM8 Go scanner (CONTRACT 3b): the Go kick-off without payload,
    /// its `Publisher` message as the report, at most one job in flight.
    Chain,
}

/// `backoff` of a stage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackoffSettings {
    /// `initial` (30 s).
    #[serde(serialize_with = "crate::duration::serialize")]
    pub initial: Duration,
    /// `max` (10 min).
    #[serde(serialize_with = "crate::duration::serialize")]
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
    #[serde(serialize_with = "crate::duration::serialize")]
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
    /// `apm_flush_timeout`: how long shutdown waits at most for spans still being sent
    /// to APM (2 s).
    #[serde(serialize_with = "crate::duration::serialize")]
    pub apm_flush_timeout: Duration,
    /// `console`: also log to stderr (true).
    pub console: bool,
    /// `max_size_mb`: a log file is rotated when it would grow beyond this many MiB
    /// (100, as the Go original).
    pub max_size_mb: u64,
    /// `max_backups`: rotated files kept, `<file>.1` (newest) to `<file>.N` (3, as the Go
    /// original).
    pub max_backups: u32,
}

// ---------------------------------------------------------------------------------------
// Defaults: what a configuration file without the key gives. `Settings::default()` is
// exactly what an empty file loads to.
// ---------------------------------------------------------------------------------------

/// The exchange a stage publishes to when neither the stage nor a service section of the
/// same name names one.
pub const DEFAULT_EXCHANGE: &str = model8::routing::EXCHANGE;

/// The managed-mode pipeline used when `Workflow.stages` is absent (or null): stage name
/// and its dependencies. asmm8 (subdomain enumeration) feeds naabum8 (port scan), whose
/// results feed katanam8 (crawling) and num8 (vulnerability scan) in parallel.
pub const DEFAULT_PIPELINE: &[(&str, &[&str])] = &[
    ("asmm8", &[]),
    ("naabum8", &["asmm8"]),
    ("katanam8", &["naabum8"]),
    ("num8", &["naabum8"]),
];

impl Settings {
    /// The stage called `name`, if configured.
    pub fn stage(&self, name: &str) -> Option<&StageSettings> {
        self.workflow.stages.iter().find(|s| s.name == name)
    }
}

impl LogLevel {
    /// The number used in the file (0 debug ... 3 error): the declaration order.
    pub fn as_number(self) -> u8 {
        self as u8
    }

    /// The level for a number 0-3.
    pub fn from_number(n: i64) -> Option<Self> {
        let all = [Self::Debug, Self::Info, Self::Warn, Self::Error];
        all.get(usize::try_from(n).ok()?).copied()
    }
}

impl Serialize for LogLevel {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.as_number())
    }
}

impl Default for OrchestratorSettings {
    /// No services and no queue sections; the three exchanges every CPTM8 service uses
    /// (`cptm8`, `scheduler`, `notification`, all `topic`).
    fn default() -> Self {
        OrchestratorSettings {
            services: BTreeMap::new(),
            exchanges: ["cptm8", "scheduler", "notification"]
                .into_iter()
                .map(|n| (n.to_owned(), ExchangeKind::Topic))
                .collect(),
            queues: BTreeMap::new(),
        }
    }
}

impl Default for DatabaseSettings {
    /// A local PostgreSQL: `postgres@127.0.0.1:5432/cptm8`, schema `public`, no password.
    fn default() -> Self {
        DatabaseSettings {
            location: "127.0.0.1".into(),
            port: 5432,
            schema: "public".into(),
            database: "cptm8".into(),
            username: "postgres".into(),
            password: Secret::default(),
            sslmode: SslMode::default(),
            sslrootcert: None,
            max_connections: 10,
            min_connections: 1,
            connection_timeout: Duration::from_secs(10),
            retry_attempts: 10,
            retry_delay: Duration::from_secs(5),
            migrate_on_start: true,
        }
    }
}

impl Default for RabbitMqSettings {
    /// A local RabbitMQ with its own defaults: `guest:guest@127.0.0.1:5672/`.
    fn default() -> Self {
        RabbitMqSettings {
            location: "127.0.0.1".into(),
            port: 5672,
            username: "guest".into(),
            password: Secret::new("guest"),
            vhost: "/".into(),
            tls: false,
            tls_ca: None,
            heartbeat: Duration::from_secs(10),
            pool: RabbitPoolSettings::default(),
        }
    }
}

impl Default for RabbitPoolSettings {
    /// The Go original's: 10, 2, 1 h, 2 h, 30 min, 30 s, 10, 2 s.
    fn default() -> Self {
        RabbitPoolSettings {
            max_connections: 10,
            min_connections: 2,
            max_idle_time: Duration::from_secs(3600),
            max_lifetime: Duration::from_secs(2 * 3600),
            health_check_period: Duration::from_secs(30 * 60),
            connection_timeout: Duration::from_secs(30),
            retry_attempts: 10,
            retry_delay: Duration::from_secs(2),
        }
    }
}

impl Default for SchedulerSettings {
    /// bootstrap, every 15 min, observing the ring, not healing it.
    fn default() -> Self {
        SchedulerSettings {
            mode: SchedulerMode::default(),
            interval: Duration::from_secs(15 * 60),
            observe: true,
            heal: false,
        }
    }
}

/// The default `Workflow.retention`: 30 days.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

impl WorkflowSettings {
    /// The scan windows that apply to stage `name`: its own when it has some, else
    /// `Workflow.windows`.
    pub fn windows_of(&self, name: &str) -> &[ScanWindow] {
        self.stages
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.windows.as_deref())
            .unwrap_or(&self.windows)
    }

    /// The weight of company `name` (`None`: no company) under `company_weights`.
    pub fn company_weight(&self, name: Option<&str>) -> u32 {
        self.company_weights
            .get(name.unwrap_or(""))
            .copied()
            .unwrap_or(1)
    }

    /// The defaults with the [`DEFAULT_PIPELINE`] stages, whose exchanges come from the
    /// service sections of `orchestrator` (see [`StageSettings::default_exchange`]).
    pub fn default_for(orchestrator: &OrchestratorSettings) -> Self {
        WorkflowSettings {
            granularity: Granularity::default(),
            rescan_after: Duration::ZERO,
            stages: DEFAULT_PIPELINE
                .iter()
                .map(|(name, deps)| {
                    let mut stage = StageSettings::new(
                        *name,
                        StageSettings::default_exchange(name, orchestrator),
                    );
                    stage.depends_on = deps.iter().map(|d| (*d).to_owned()).collect();
                    stage
                })
                .collect(),
            fairness: Fairness::None,
            company_weights: BTreeMap::new(),
            windows: Vec::new(),
            retention: DEFAULT_RETENTION,
        }
    }
}

impl Default for WorkflowSettings {
    /// per_domain, no cool-down, the [`DEFAULT_PIPELINE`] publishing to `cptm8`, no
    /// fairness, no windows, [`DEFAULT_RETENTION`].
    fn default() -> Self {
        WorkflowSettings::default_for(&OrchestratorSettings::default())
    }
}

impl StageSettings {
    /// A stage with every default: routing key `cptm8.<name>.get.scan`, no
    /// dependencies, 2 h timeout, 3 attempts, default backoff, no in-flight limit.
    pub fn new(name: impl Into<String>, exchange: impl Into<String>) -> Self {
        let name = name.into();
        StageSettings {
            routing_key: Self::default_routing_key(&name),
            name,
            exchange: exchange.into(),
            depends_on: Vec::new(),
            timeout: Duration::from_secs(2 * 3600),
            max_attempts: 3,
            backoff: BackoffSettings::default(),
            max_in_flight: 0,
            protocol: StageProtocol::Report,
            windows: None,
        }
    }

    /// `cptm8.<name>.get.scan`.
    pub fn default_routing_key(name: &str) -> String {
        model8::routing::stage_job_key(name)
    }

    /// The service section `name`'s `Queue[0]`, else [`DEFAULT_EXCHANGE`].
    pub fn default_exchange(name: &str, orchestrator: &OrchestratorSettings) -> String {
        orchestrator
            .queues
            .get(name)
            .map_or_else(|| DEFAULT_EXCHANGE.to_owned(), |q| q.exchange.clone())
    }
}

impl Default for BackoffSettings {
    /// 30 s, at most 10 min, doubling.
    fn default() -> Self {
        BackoffSettings {
            initial: Duration::from_secs(30),
            max: Duration::from_secs(600),
            multiplier: 2.0,
        }
    }
}

impl Default for HttpSettings {
    /// No token (API open), 64 KiB bodies.
    fn default() -> Self {
        HttpSettings {
            api_token: None,
            body_limit: 64 * 1024,
        }
    }
}

/// The default `LeaderElection.lock_key`: the bytes of `"orchestr"` as a big-endian i64.
pub const DEFAULT_LOCK_KEY: i64 = i64::from_be_bytes(*b"orchestr");

impl Default for LeaderElectionSettings {
    /// Enabled, [`DEFAULT_LOCK_KEY`], checked every second.
    fn default() -> Self {
        LeaderElectionSettings {
            enabled: true,
            lock_key: DEFAULT_LOCK_KEY,
            check_interval: Duration::from_secs(1),
        }
    }
}

impl Default for LogSettings {
    /// Console only; no file, no APM.
    fn default() -> Self {
        LogSettings {
            file: None,
            apm_server_url: None,
            apm_secret_token: None,
            apm_service_name: "orchestratorm8".into(),
            apm_flush_timeout: Duration::from_secs(2),
            console: true,
            max_size_mb: 100,
            max_backups: 3,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Serialisation in the file's shape, so that `config check` prints a loadable file.
// ---------------------------------------------------------------------------------------

impl Serialize for OrchestratorSettings {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(2 + self.queues.len()))?;
        map.serialize_entry("Services", &self.services)?;
        map.serialize_entry("Exchanges", &self.exchanges)?;
        for (name, queue) in &self.queues {
            map.serialize_entry(name, queue)?;
        }
        map.end()
    }
}

impl Serialize for ServiceQueue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry(
            "Queue",
            &(&self.exchange, &self.queue, u64::from(self.prefetch)),
        )?;
        map.serialize_entry("Routing-keys", &self.routing_keys)?;
        map.serialize_entry("Queue-arguments", &self.queue_arguments)?;
        if let Some(c) = &self.consumer {
            map.serialize_entry("Consumer", c)?;
        }
        map.end()
    }
}

impl Serialize for ConsumerSpec {
    /// `[queue, tag, "false"]`: the autoack flag as a string, like the Go file.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let autoack = if self.autoack { "true" } else { "false" };
        (&self.queue, &self.tag, autoack).serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_length_is_the_integer_x_max_length_only() {
        let queue = |args: &[(&str, ArgValue)]| ServiceQueue {
            exchange: "cptm8".into(),
            queue: "qasmm8".into(),
            prefetch: 1,
            routing_keys: Vec::new(),
            queue_arguments: args.iter().map(|(k, v)| ((*k).into(), v.clone())).collect(),
            consumer: None,
        };
        assert_eq!(
            queue(&[("x-max-length", ArgValue::Int(1))]).max_length(),
            Some(1)
        );
        assert_eq!(
            queue(&[("x-max-length", ArgValue::Int(0))]).max_length(),
            Some(0)
        );
        assert_eq!(queue(&[]).max_length(), None);
        assert_eq!(
            queue(&[("x-max-length-bytes", ArgValue::Int(10))]).max_length(),
            None
        );
        assert_eq!(
            queue(&[("x-max-length", ArgValue::Str("1".into()))]).max_length(),
            None
        );
    }

    #[test]
    fn rabbit_pool_defaults_are_the_go_originals() {
        let p = RabbitPoolSettings::default();
        assert_eq!(
            (p.max_connections, p.min_connections, p.retry_attempts),
            (10, 2, 10)
        );
        assert_eq!(p.max_idle_time, Duration::from_secs(3600));
        assert_eq!(p.max_lifetime, Duration::from_secs(7200));
        assert_eq!(p.health_check_period, Duration::from_secs(1800));
        assert_eq!(p.connection_timeout, Duration::from_secs(30));
        assert_eq!(p.retry_delay, Duration::from_secs(2));
    }

    #[test]
    fn default_pipeline_stages() {
        let s = Settings::default();
        let names: Vec<_> = s.workflow.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["asmm8", "naabum8", "katanam8", "num8"]);
        let num8 = s.stage("num8").unwrap();
        assert_eq!(num8.depends_on, ["naabum8"]);
        assert_eq!(num8.exchange, "cptm8");
        assert_eq!(num8.routing_key, "cptm8.num8.get.scan");
        assert_eq!(num8.timeout, Duration::from_secs(7200));
        assert_eq!(num8.max_attempts, 3);
        assert_eq!(s.scheduler.mode, SchedulerMode::Bootstrap);
        assert!(s.leader_election.enabled);
        assert_eq!(s.http.api_token, None);
    }

    #[test]
    fn stage_exchange_defaults_to_the_service_sections_queue_exchange() {
        let mut o = OrchestratorSettings::default();
        o.queues.insert(
            "asmm8".into(),
            ServiceQueue {
                exchange: "scheduler".into(),
                queue: "qasmm8".into(),
                prefetch: 1,
                routing_keys: vec![],
                queue_arguments: BTreeMap::new(),
                consumer: None,
            },
        );
        assert_eq!(StageSettings::default_exchange("asmm8", &o), "scheduler");
        assert_eq!(StageSettings::default_exchange("num8", &o), "cptm8");
    }
}
