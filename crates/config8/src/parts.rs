//! The settings split by how a change applies: [`LiveSettings`] (the running service
//! applies a new value on reload) and [`RestartSettings`] (a new value waits for a
//! restart).
//!
//! [`Settings::split`] sorts every key of [`Settings`] into exactly one of the two: it
//! destructures every settings struct without `..`, so a new key does not compile until
//! it is placed, and a key left unplaced is an unused binding (a warning, denied by
//! clippy). [`crate::diff`] is derived from these two types: each part reports its own
//! changed key paths, so the split is written once.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::secret::Secret;
use crate::settings::*;
use crate::window::ScanWindow;

/// What changed between two values of one settings part, as key paths appended to
/// `out` (never the values, which may be secrets).
pub(crate) trait Changes {
    /// Appends the key paths under `path` that differ between `self` and `new`.
    fn changes(&self, new: &Self, path: &str, out: &mut Vec<String>);
}

/// `path.key`; `key` alone at the top; `path` when `key` is empty.
fn join(path: &str, key: &str) -> String {
    match (path.is_empty(), key.is_empty()) {
        (true, _) => key.to_owned(),
        (false, true) => path.to_owned(),
        (false, false) => format!("{path}.{key}"),
    }
}

/// Settings values compared whole: a change reports the key itself. Generic types
/// take their parameters in brackets: `[T] Option<T>`.
macro_rules! leaf {
    ($([$($g:ident),*] $t:ty),* $(,)?) => {$(
        impl<$($g: PartialEq),*> Changes for $t {
            fn changes(&self, new: &Self, path: &str, out: &mut Vec<String>) {
                if self != new {
                    out.push(path.to_owned());
                }
            }
        }
    )*};
}

leaf!(
    [] bool, [] u16, [] u32, [] u64, [] i64, [] f64, [] String, [] Duration, [] Secret,
    [] AppEnv, [] LogLevel, [] SslMode, [] SchedulerMode, [] Granularity, [] Fairness,
    [] StageProtocol, [T] Option<T>, [T] Vec<T>, [V] BTreeMap<String, V>,
);

/// A map whose entries are reported one by one (`ORCHESTRATORM8.Exchanges.<name>`): a
/// key added, removed or with another value.
#[derive(Debug, Clone, PartialEq)]
pub struct EachKey<V>(pub BTreeMap<String, V>);

impl<V: PartialEq> Changes for EachKey<V> {
    fn changes(&self, new: &Self, path: &str, out: &mut Vec<String>) {
        let (old, new) = (&self.0, &new.0);
        let changed: std::collections::BTreeSet<&String> = (old.keys().chain(new.keys()))
            .filter(|k| old.get(*k) != new.get(*k))
            .collect();
        out.extend(changed.into_iter().map(|k| join(path, k)));
    }
}

/// One part per stage of `Workflow.stages`, by stage name in the configured order.
/// A stage added or removed is reported by its name (`Workflow.stages.<name>`), then
/// the changed keys of the stages in both.
#[derive(Debug, Clone, PartialEq)]
pub struct ByStage<T>(pub Vec<(String, T)>);

impl<T> ByStage<T> {
    /// The part of stage `name`, if configured.
    pub fn get(&self, name: &str) -> Option<&T> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }
}

impl<T: Changes> Changes for ByStage<T> {
    fn changes(&self, new: &Self, path: &str, out: &mut Vec<String>) {
        fn names<T>(s: &ByStage<T>) -> std::collections::BTreeSet<&str> {
            s.0.iter().map(|(n, _)| n.as_str()).collect()
        }
        let (o, n) = (names(self), names(new));
        out.extend(o.symmetric_difference(&n).map(|name| join(path, name)));
        for (name, old) in &self.0 {
            if let Some(new) = new.get(name) {
                old.changes(new, &join(path, name), out);
            }
        }
    }
}

/// The key of a field: the one given, else the field's name.
macro_rules! key {
    ($field:ident) => {
        stringify!($field)
    };
    ($field:ident $key:literal) => {
        $key
    };
}

/// A settings part: a struct whose fields are compared key by key, each under its key
/// name in the file: the field's name unless given `"key" => field`.
macro_rules! part {
    (
        $(#[$m:meta])*
        pub struct $name:ident {
            $( $(#[$fm:meta])* $($key:literal =>)? $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name {
            $( $(#[$fm])* pub $field: $ty, )*
        }
        impl Changes for $name {
            fn changes(&self, new: &Self, path: &str, out: &mut Vec<String>) {
                $( self.$field.changes(&new.$field, &join(path, key!($field $($key)?)), out); )*
            }
        }
    };
}

/// Key-by-key comparison of an existing settings struct that sits whole in one part,
/// each field under its own name unless given `field => "key"`. The pattern names every
/// field (no `..`): a new field does not compile until listed.
macro_rules! fields {
    ($t:ident [$($field:ident $(=> $key:literal)?),* $(,)?]) => {
        impl Changes for $t {
            fn changes(&self, new: &Self, path: &str, out: &mut Vec<String>) {
                let $t { $($field),* } = self;
                $( $field.changes(&new.$field, &join(path, key!($field $($key)?)), out); )*
            }
        }
    };
}

fields!(DatabaseSettings [
    location, port, schema, database, username, password, sslmode, sslrootcert,
    max_connections, min_connections, connection_timeout, retry_attempts, retry_delay,
    migrate_on_start,
]);
fields!(RabbitMqSettings [
    location, port, username, password, vhost, tls, tls_ca, heartbeat, pool,
]);
fields!(RabbitPoolSettings [
    max_connections, min_connections, max_idle_time => "pool.max_idle_time", max_lifetime,
    health_check_period, connection_timeout, retry_attempts, retry_delay,
]);
fields!(BackoffSettings [initial, max, multiplier]);
fields!(HttpSettings [api_token, body_limit]);
fields!(LogSettings [
    file, apm_server_url, apm_secret_token, apm_service_name, apm_flush_timeout, console,
    max_size_mb, max_backups,
]);

part! {
    /// The settings the running service applies on reload, without a restart. Each key
    /// is read at its point of use from the watched settings (see docs/CONFIGURATION.md,
    /// "Changing the file while running").
    pub struct LiveSettings {
        /// `LOG_LEVEL`: the binary sets the log filter's level.
        "LOG_LEVEL" => log_level: LogLevel,
        /// `ORCHESTRATORM8.Services`: informational (nothing reads it).
        "ORCHESTRATORM8.Services" => services: BTreeMap<String, String>,
        /// `Scheduler.interval`: from the last tick.
        "Scheduler" => scheduler: LiveScheduler,
        /// The live part of `Workflow`.
        "Workflow" => workflow: LiveWorkflow,
        /// `HTTP`: read at every request.
        "HTTP" => http: HttpSettings,
        /// The live part of `LeaderElection`.
        "LeaderElection" => leader_election: LiveLeaderElection,
    }
}

part! {
    /// The live part of `Scheduler`.
    pub struct LiveScheduler {
        /// `interval`.
        interval: Duration,
    }
}

part! {
    /// The live part of `Workflow`.
    pub struct LiveWorkflow {
        /// `rescan_after`: read when workflows are started.
        rescan_after: Duration,
        /// `fairness`: read at every dispatch round.
        fairness: Fairness,
        /// `company_weights`: read at every dispatch round.
        company_weights: BTreeMap<String, u32>,
        /// `windows`: read before every publish.
        windows: Vec<ScanWindow>,
        /// `retention`: read at every retention pass.
        retention: Duration,
        /// The live part of each stage.
        stages: ByStage<LiveStage>,
    }
}

part! {
    /// The live part of one stage: read at every publish, timeout check and retry.
    pub struct LiveStage {
        /// `timeout`.
        timeout: Duration,
        /// `max_attempts`.
        max_attempts: u32,
        /// `max_in_flight`.
        max_in_flight: u32,
        /// `windows`.
        windows: Option<Vec<ScanWindow>>,
        /// `backoff`.
        backoff: BackoffSettings,
    }
}

part! {
    /// The live part of `LeaderElection`.
    pub struct LiveLeaderElection {
        /// `check_interval`: read before every lock check.
        check_interval: Duration,
    }
}

part! {
    /// The settings read once at start: connections, topology, the pipeline's shape,
    /// the mode, logging output. A new value waits for a restart.
    pub struct RestartSettings {
        /// `APP_ENV`.
        "APP_ENV" => app_env: AppEnv,
        /// `ORCHESTRATORM8.Exchanges` (topology).
        "ORCHESTRATORM8.Exchanges" => exchanges: EachKey<ExchangeKind>,
        /// The service sections of `ORCHESTRATORM8` (topology).
        "ORCHESTRATORM8" => queues: EachKey<ServiceQueue>,
        /// `Database`.
        "Database" => database: DatabaseSettings,
        /// `RabbitMQ`.
        "RabbitMQ" => rabbitmq: RabbitMqSettings,
        /// The restart part of `Scheduler`.
        "Scheduler" => scheduler: RestartScheduler,
        /// The restart part of `Workflow`.
        "Workflow" => workflow: RestartWorkflow,
        /// The restart part of `LeaderElection`.
        "LeaderElection" => leader_election: RestartLeaderElection,
        /// `Log`.
        "Log" => log: LogSettings,
    }
}

part! {
    /// The restart part of `Scheduler`.
    pub struct RestartScheduler {
        /// `mode`.
        mode: SchedulerMode,
        /// `observe`.
        observe: bool,
        /// `heal`.
        heal: bool,
    }
}

part! {
    /// The restart part of `Workflow`: the pipeline's shape.
    pub struct RestartWorkflow {
        /// `granularity`.
        granularity: Granularity,
        /// The restart part of each stage; a stage added or removed.
        stages: ByStage<RestartStage>,
    }
}

part! {
    /// The restart part of one stage (the topology and the plan depend on it).
    pub struct RestartStage {
        /// `exchange`.
        exchange: String,
        /// `routing_key`.
        routing_key: String,
        /// `depends_on`.
        depends_on: Vec<String>,
        /// `protocol`.
        protocol: StageProtocol,
    }
}

part! {
    /// The restart part of `LeaderElection`.
    pub struct RestartLeaderElection {
        /// `enabled`.
        enabled: bool,
        /// `lock_key`.
        lock_key: i64,
    }
}

impl LiveWorkflow {
    /// The scan windows that apply to stage `name`: its own when it has some, else
    /// `Workflow.windows` (as [`WorkflowSettings::windows_of`]).
    pub fn windows_of(&self, name: &str) -> &[ScanWindow] {
        self.stages
            .get(name)
            .and_then(|s| s.windows.as_deref())
            .unwrap_or(&self.windows)
    }
}

impl Settings {
    /// The settings split into what applies live and what needs a restart. Every key of
    /// [`Settings`] lands in exactly one of the two.
    pub fn split(&self) -> (LiveSettings, RestartSettings) {
        let Settings {
            app_env,
            log_level,
            orchestrator,
            database,
            rabbitmq,
            scheduler,
            workflow,
            http,
            leader_election,
            log,
        } = self;
        let OrchestratorSettings {
            services,
            exchanges,
            queues,
        } = orchestrator;
        let SchedulerSettings {
            mode,
            interval,
            observe,
            heal,
        } = scheduler;
        let WorkflowSettings {
            granularity,
            rescan_after,
            stages,
            fairness,
            company_weights,
            windows,
            retention,
        } = workflow;
        let LeaderElectionSettings {
            enabled,
            lock_key,
            check_interval,
        } = leader_election;
        let (live_stages, restart_stages) = stages.iter().map(split_stage).unzip();
        let live = LiveSettings {
            log_level: *log_level,
            services: services.clone(),
            scheduler: LiveScheduler {
                interval: *interval,
            },
            workflow: LiveWorkflow {
                rescan_after: *rescan_after,
                fairness: *fairness,
                company_weights: company_weights.clone(),
                windows: windows.clone(),
                retention: *retention,
                stages: ByStage(live_stages),
            },
            http: http.clone(),
            leader_election: LiveLeaderElection {
                check_interval: *check_interval,
            },
        };
        let restart = RestartSettings {
            app_env: *app_env,
            exchanges: EachKey(exchanges.clone()),
            queues: EachKey(queues.clone()),
            database: database.clone(),
            rabbitmq: rabbitmq.clone(),
            scheduler: RestartScheduler {
                mode: *mode,
                observe: *observe,
                heal: *heal,
            },
            workflow: RestartWorkflow {
                granularity: *granularity,
                stages: ByStage(restart_stages),
            },
            leader_election: RestartLeaderElection {
                enabled: *enabled,
                lock_key: *lock_key,
            },
            log: log.clone(),
        };
        (live, restart)
    }

    /// The part of the settings the running service applies live.
    pub fn live(&self) -> LiveSettings {
        self.split().0
    }
}

/// One stage's live and restart parts.
fn split_stage(stage: &StageSettings) -> ((String, LiveStage), (String, RestartStage)) {
    let StageSettings {
        name,
        exchange,
        routing_key,
        depends_on,
        timeout,
        max_attempts,
        backoff,
        max_in_flight,
        windows,
        protocol,
    } = stage;
    let live = LiveStage {
        timeout: *timeout,
        max_attempts: *max_attempts,
        max_in_flight: *max_in_flight,
        windows: windows.clone(),
        backoff: backoff.clone(),
    };
    let restart = RestartStage {
        exchange: exchange.clone(),
        routing_key: routing_key.clone(),
        depends_on: depends_on.clone(),
        protocol: *protocol,
    };
    ((name.clone(), live), (name.clone(), restart))
}
