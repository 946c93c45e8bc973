//! Reading the (overridden, expanded) YAML tree into [`Settings`], value by value.
//!
//! Each reader takes its keys out of its section; whatever is left is an unknown key.
//! Absent and null values give the default. Invalid values are recorded as problems and
//! reading goes on, so that every problem of a file is reported at once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_norway::Value;

use crate::secret::Secret;
use crate::settings::*;
use crate::tree::{
    Ctx, KeyPath, Section, boolean, duration_at_least, float, go_duration, int, key_text,
    mapping_entries, non_empty, one_of, string, structured, uint,
};
use crate::window::ScanWindow;

const PORT_MAX: i64 = 65535;
/// Largest count accepted for pool sizes, attempts and the like.
const COUNT_MAX: i64 = 1_000_000;
const ONE_MS: Duration = Duration::from_millis(1);

/// Reads the whole tree. Stage names are matched with their indexes for later checks.
pub(crate) fn settings(ctx: &mut Ctx, root: Value) -> Settings {
    let mut top = Section::new(ctx, KeyPath::default(), Some(root));
    let d = Settings::default();

    let app_env = top.get(ctx, "APP_ENV", d.app_env, one_of(AppEnv::NAMES));
    let log_level = top.get(ctx, "LOG_LEVEL", d.log_level, |v| {
        int(0, 3)(v)
            .map(|n| LogLevel::from_number(n).expect("in range"))
            .map_err(|_| "0 (debug), 1 (info), 2 (warn) or 3 (error)".to_owned())
    });

    let orchestrator = top.read(
        ctx,
        "ORCHESTRATORM8",
        Some("section absent: no service queues; exchanges cptm8, scheduler and notification (topic)"),
        orchestrator,
    );
    let settings = Settings {
        app_env,
        log_level,
        database: top.read(
            ctx,
            "Database",
            Some("section absent: using postgres@127.0.0.1:5432/cptm8 without password"),
            database,
        ),
        rabbitmq: top.read(
            ctx,
            "RabbitMQ",
            Some("section absent: using guest@127.0.0.1:5672"),
            rabbitmq,
        ),
        scheduler: top.read(ctx, "Scheduler", None, |ctx, s| SchedulerSettings {
            mode: s.get(ctx, "mode", d.scheduler.mode, one_of(SchedulerMode::NAMES)),
            interval: s.get(
                ctx,
                "interval",
                d.scheduler.interval,
                duration_at_least(Duration::from_secs(1)),
            ),
            observe: s.get(ctx, "observe", d.scheduler.observe, boolean),
            heal: s.get(ctx, "heal", d.scheduler.heal, boolean),
        }),
        workflow: top.read(ctx, "Workflow", None, |ctx, s| {
            workflow(ctx, s, &orchestrator)
        }),
        http: top.read(ctx, "HTTP", None, |ctx, s| HttpSettings {
            api_token: optional_secret(ctx, s, "api_token"),
            body_limit: s.get(ctx, "body_limit", d.http.body_limit, uint(1, 64 << 20)),
        }),
        leader_election: top.read(ctx, "LeaderElection", None, |ctx, s| {
            LeaderElectionSettings {
                enabled: s.get(ctx, "enabled", d.leader_election.enabled, boolean),
                lock_key: s.get(
                    ctx,
                    "lock_key",
                    d.leader_election.lock_key,
                    int(i64::MIN, i64::MAX),
                ),
                check_interval: s.get(
                    ctx,
                    "check_interval",
                    d.leader_election.check_interval,
                    duration_at_least(Duration::from_millis(10)),
                ),
            }
        }),
        log: top.read(ctx, "Log", None, log),
        orchestrator,
    };
    top.finish(ctx);
    settings
}

fn orchestrator(ctx: &mut Ctx, s: &mut Section) -> OrchestratorSettings {
    let d = OrchestratorSettings::default();

    let services = s.take_or(ctx, "Services", BTreeMap::new(), |ctx, path, value| {
        string_map(ctx, path, value, "a URL string", string)
    });
    let exchanges = match s.take(ctx, "Exchanges") {
        None | Some((_, Value::Null)) => d.exchanges,
        Some((path, value)) => string_map(
            ctx,
            &path,
            value,
            "an exchange kind",
            one_of(ExchangeKind::NAMES),
        ),
    };

    let mut queues = BTreeMap::new();
    for (name, path, value) in s.rest() {
        let mut section = Section::new(ctx, path.clone(), Some(value));
        if !section.present {
            ctx.problem(
                &path,
                "a service section needs at least Queue: [exchange, queue, prefetch]",
            );
            continue;
        }
        if let Some(q) = service_queue(ctx, &mut section) {
            if !exchanges.contains_key(&q.exchange) {
                ctx.warn(
                    &path.key("Queue").index(0),
                    format!(
                        "exchange {:?} is not declared in ORCHESTRATORM8.Exchanges",
                        q.exchange
                    ),
                );
            }
            queues.insert(name, q);
        }
        section.finish(ctx);
    }
    OrchestratorSettings {
        services,
        exchanges,
        queues,
    }
}

/// A mapping of names to values read with `read`.
fn string_map<T>(
    ctx: &mut Ctx,
    path: &KeyPath,
    value: Value,
    what: &str,
    read: impl Fn(&Value) -> Result<T, String>,
) -> BTreeMap<String, T> {
    let mut out = BTreeMap::new();
    match structured(value) {
        Value::Null => {}
        Value::Mapping(m) => {
            for (key, v, _) in mapping_entries(ctx, path, m) {
                let p = path.key(&key);
                match read(&v) {
                    Ok(t) => {
                        out.insert(key, t);
                    }
                    Err(expected) => ctx.bad(&p, &v, &expected),
                }
            }
        }
        other => ctx.bad(path, &other, &format!("a mapping of names to {what}s")),
    }
    out
}

/// A list of values read with `read`; null is empty.
fn list<T>(
    ctx: &mut Ctx,
    path: &KeyPath,
    value: Value,
    what: &str,
    read: impl Fn(&Value) -> Result<T, String>,
) -> Vec<T> {
    match structured(value) {
        Value::Null => Vec::new(),
        Value::Sequence(items) => items
            .iter()
            .enumerate()
            .filter_map(|(i, v)| match read(v) {
                Ok(t) => Some(t),
                Err(expected) => {
                    ctx.bad(&path.index(i), v, &expected);
                    None
                }
            })
            .collect(),
        other => {
            ctx.bad(path, &other, &format!("a list of {what}"));
            Vec::new()
        }
    }
}

fn service_queue(ctx: &mut Ctx, s: &mut Section) -> Option<ServiceQueue> {
    let queue = match s.take(ctx, "Queue") {
        None | Some((_, Value::Null)) => {
            ctx.problem(
                &s.path.key("Queue"),
                "missing: expected [exchange, queue, prefetch count]",
            );
            None
        }
        Some((path, value)) => queue_triple(ctx, &path, value),
    };
    let routing_keys = match s.take(ctx, "Routing-keys") {
        None => {
            ctx.warn(
                &s.path.key("Routing-keys"),
                "absent: the queue is bound with no routing key and receives nothing",
            );
            Vec::new()
        }
        Some((path, value)) => list(ctx, &path, value, "binding keys", non_empty),
    };
    let queue_arguments = s.take_or(ctx, "Queue-arguments", BTreeMap::new(), queue_args);
    let consumer = match s.take(ctx, "Consumer") {
        None | Some((_, Value::Null)) => None,
        Some((path, value)) => consumer(ctx, &path, value),
    };
    let (exchange, queue, prefetch) = queue?;
    Some(ServiceQueue {
        exchange,
        queue,
        prefetch,
        routing_keys,
        queue_arguments,
        consumer,
    })
}

/// `[exchange, queue, prefetch]`.
fn queue_triple(ctx: &mut Ctx, path: &KeyPath, value: Value) -> Option<(String, String, u16)> {
    const SHAPE: &str = "[exchange, queue, prefetch count], e.g. [\"cptm8\", \"qasmm8\", 1]";
    let items = triple(ctx, path, value, SHAPE)?;
    let exchange = read_at(ctx, path, &items, 0, "an exchange name", non_empty);
    let queue = read_at(ctx, path, &items, 1, "a queue name", non_empty);
    let prefetch = read_at(
        ctx,
        path,
        &items,
        2,
        "a prefetch count",
        uint::<u16>(0, i64::from(u16::MAX)),
    );
    Some((exchange?, queue?, prefetch?))
}

/// A list of three values; anything else is a problem (`shape` is what is expected).
fn triple(ctx: &mut Ctx, path: &KeyPath, value: Value, shape: &str) -> Option<Vec<Value>> {
    match structured(value) {
        Value::Sequence(items) if items.len() == 3 => Some(items),
        other => {
            ctx.bad(path, &other, shape);
            None
        }
    }
}

fn read_at<T>(
    ctx: &mut Ctx,
    path: &KeyPath,
    items: &[Value],
    i: usize,
    what: &str,
    read: impl Fn(&Value) -> Result<T, String>,
) -> Option<T> {
    match read(&items[i]) {
        Ok(t) => Some(t),
        Err(expected) => {
            ctx.bad(&path.index(i), &items[i], &format!("{what}: {expected}"));
            None
        }
    }
}

/// `[queue, consumer tag, autoack]`.
fn consumer(ctx: &mut Ctx, path: &KeyPath, value: Value) -> Option<ConsumerSpec> {
    const SHAPE: &str = "[queue, consumer tag, autoack], e.g. [\"qasmm8\", \"casmm8\", \"false\"]";
    let items = triple(ctx, path, value, SHAPE)?;
    let queue = read_at(ctx, path, &items, 0, "a queue name", non_empty);
    let tag = read_at(ctx, path, &items, 1, "a consumer tag", non_empty);
    let autoack = read_at(ctx, path, &items, 2, "the autoack flag", boolean);
    Some(ConsumerSpec {
        queue: queue?,
        tag: tag?,
        autoack: autoack?,
    })
}

/// `Queue-arguments`: scalars keep their YAML type. A value set from the environment
/// is text; it is read as a YAML scalar so that `5` stays an integer.
fn queue_args(ctx: &mut Ctx, path: &KeyPath, value: Value) -> BTreeMap<String, ArgValue> {
    let mut out = BTreeMap::new();
    let m = match structured(value) {
        Value::Null => return out,
        Value::Mapping(m) => m,
        other => {
            ctx.bad(
                path,
                &other,
                "a mapping of queue arguments, e.g. {x-max-length: 1}",
            );
            return out;
        }
    };
    for (k, v) in m {
        let Some(key) = key_text(&k) else {
            ctx.bad_key(path, &k);
            continue;
        };
        let p = path.key(&key);
        let v = match v {
            Value::String(s) if ctx.set_by_env(&p) => {
                serde_norway::from_str(&s).unwrap_or(Value::String(s))
            }
            v => v,
        };
        let arg = match &v {
            Value::Bool(b) => Some(ArgValue::Bool(*b)),
            Value::Number(n) => n
                .as_i64()
                .map(ArgValue::Int)
                .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(ArgValue::Float)),
            Value::String(s) => Some(ArgValue::Str(s.clone())),
            _ => None,
        };
        match arg {
            Some(a) => {
                out.insert(key, a);
            }
            None => ctx.bad(&p, &v, "a finite number, boolean or string"),
        }
    }
    out
}

fn database(ctx: &mut Ctx, s: &mut Section) -> DatabaseSettings {
    let d = DatabaseSettings::default();
    let location = s.get(ctx, "location", d.location, non_empty);
    let port = s.get(ctx, "port", d.port, uint(1, PORT_MAX));
    let schema = s.get(ctx, "schema", d.schema, non_empty);
    let database = s.get(ctx, "database", d.database, non_empty);
    let username = s.get(ctx, "username", d.username, non_empty);
    let password = s.get(ctx, "password", d.password, |v| string(v).map(Secret::new));
    let sslmode = s.get(ctx, "sslmode", d.sslmode, one_of(SslMode::NAMES));
    let sslrootcert = optional_path(ctx, s, "sslrootcert");
    let max_connections = s.get(
        ctx,
        "max_connections",
        d.max_connections,
        uint(1, COUNT_MAX),
    );
    let min_connections = s.get(
        ctx,
        "min_connections",
        d.min_connections,
        uint(0, COUNT_MAX),
    );
    connections_in_order(ctx, s, min_connections, max_connections);
    DatabaseSettings {
        location,
        port,
        schema,
        database,
        username,
        password,
        sslmode,
        sslrootcert,
        max_connections,
        min_connections,
        connection_timeout: s.get(
            ctx,
            "connection_timeout",
            d.connection_timeout,
            duration_at_least(ONE_MS),
        ),
        retry_attempts: s.get(ctx, "retry_attempts", d.retry_attempts, uint(1, COUNT_MAX)),
        retry_delay: s.get(ctx, "retry_delay", d.retry_delay, go_duration),
        migrate_on_start: s.get(ctx, "migrate_on_start", d.migrate_on_start, boolean),
    }
}

fn rabbitmq(ctx: &mut Ctx, s: &mut Section) -> RabbitMqSettings {
    let d = RabbitMqSettings::default();
    RabbitMqSettings {
        location: s.get(ctx, "location", d.location, non_empty),
        port: s.get(ctx, "port", d.port, uint(1, PORT_MAX)),
        username: s.get(ctx, "username", d.username, non_empty),
        password: s.get(ctx, "password", d.password, |v| string(v).map(Secret::new)),
        vhost: s.get(ctx, "vhost", d.vhost, non_empty),
        tls: s.get(ctx, "tls", d.tls, boolean),
        tls_ca: optional_path(ctx, s, "tls_ca"),
        heartbeat: s.get(
            ctx,
            "heartbeat",
            d.heartbeat,
            duration_at_least(Duration::from_secs(2)),
        ),
        pool: s.read(ctx, "pool", None, pool),
    }
}

/// `RabbitMQ.pool`. As in the Go original, 0 (like null) means "the default".
fn pool(ctx: &mut Ctx, s: &mut Section) -> RabbitPoolSettings {
    let d = RabbitPoolSettings::default();
    let count = || uint(0, COUNT_MAX);
    let max_connections = non_zero(ctx, s, "max_connections", d.max_connections, count());
    let min_connections = non_zero(ctx, s, "min_connections", d.min_connections, count());
    connections_in_order(ctx, s, min_connections, max_connections);
    RabbitPoolSettings {
        max_connections,
        min_connections,
        max_idle_time: match s.get_any(
            ctx,
            "pool.max_idle_time",
            &["max_idle_time"],
            d.max_idle_time,
            go_duration,
        ) {
            Duration::ZERO => d.max_idle_time,
            t => t,
        },
        max_lifetime: non_zero(ctx, s, "max_lifetime", d.max_lifetime, go_duration),
        health_check_period: non_zero(
            ctx,
            s,
            "health_check_period",
            d.health_check_period,
            go_duration,
        ),
        connection_timeout: non_zero(
            ctx,
            s,
            "connection_timeout",
            d.connection_timeout,
            go_duration,
        ),
        retry_attempts: non_zero(ctx, s, "retry_attempts", d.retry_attempts, count()),
        retry_delay: non_zero(ctx, s, "retry_delay", d.retry_delay, go_duration),
    }
}

/// [`Section::get`], where 0 (like null) gives `default`.
fn non_zero<T: Copy + Default + PartialEq>(
    ctx: &mut Ctx,
    s: &mut Section,
    name: &str,
    default: T,
    read: impl FnOnce(&Value) -> Result<T, String>,
) -> T {
    match s.get(ctx, name, default, read) {
        v if v == T::default() => default,
        v => v,
    }
}

/// Records a problem when `min_connections` is above `max_connections`.
fn connections_in_order(ctx: &mut Ctx, s: &Section, min_connections: u32, max_connections: u32) {
    if min_connections > max_connections {
        ctx.problem(
            &s.path.key("min_connections"),
            format!("got {min_connections}, expected at most max_connections ({max_connections})"),
        );
    }
}

fn workflow(
    ctx: &mut Ctx,
    s: &mut Section,
    orchestrator: &OrchestratorSettings,
) -> WorkflowSettings {
    let d = WorkflowSettings::default_for(orchestrator);
    WorkflowSettings {
        granularity: s.get(
            ctx,
            "granularity",
            d.granularity,
            one_of(Granularity::NAMES),
        ),
        rescan_after: s.get(ctx, "rescan_after", d.rescan_after, go_duration),
        stages: match s.take(ctx, "stages") {
            None | Some((_, Value::Null)) => d.stages,
            Some((path, value)) => match structured(value) {
                Value::Sequence(items) => items
                    .into_iter()
                    .enumerate()
                    .filter_map(|(i, item)| stage(ctx, path.index(i), item, orchestrator))
                    .collect(),
                other => {
                    ctx.bad(
                        &path,
                        &other,
                        "a list of stages (each with at least a name)",
                    );
                    Vec::new()
                }
            },
        },
        fairness: s.get(ctx, "fairness", d.fairness, one_of(Fairness::NAMES)),
        company_weights: s.take_or(ctx, "company_weights", BTreeMap::new(), |ctx, p, v| {
            string_map(
                ctx,
                p,
                v,
                "a weight (a whole number from 1 to 1000)",
                uint(1, 1000),
            )
        }),
        windows: s.take_or(ctx, "windows", Vec::new(), windows),
        retention: s.get(ctx, "retention", d.retention, days_or_go_duration),
    }
}

/// A Go duration, or whole days first (`"30d"`, `"1d12h"`): the `d` unit the Go
/// syntax lacks, for retention periods.
fn days_or_go_duration(v: &Value) -> Result<Duration, String> {
    const EXPECTED: &str =
        "a Go duration such as \"720h\", or days such as \"30d\" (\"0s\" keeps everything)";
    if let Value::String(text) = v {
        let t = text.trim();
        let digits = t.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && t[digits..].starts_with('d') {
            let days: u64 = t[..digits].parse().map_err(|_| EXPECTED.to_owned())?;
            let rest = &t[digits + 1..];
            let extra = if rest.is_empty() {
                Duration::ZERO
            } else {
                crate::duration::parse(rest).map_err(|e| format!("{EXPECTED}: {e}"))?
            };
            return days
                .checked_mul(24 * 3600)
                .map(Duration::from_secs)
                .and_then(|d| d.checked_add(extra))
                .filter(|d| *d <= crate::duration::MAX)
                .ok_or_else(|| format!("{EXPECTED}: out of range"));
        }
    }
    go_duration(v).map_err(|_| EXPECTED.to_owned())
}

/// A list of scan windows (`Workflow.windows`, `Workflow.stages[].windows`); null is
/// empty. Every bad value is a problem naming its key path.
fn windows(ctx: &mut Ctx, path: &KeyPath, value: Value) -> Vec<ScanWindow> {
    let items = match structured(value) {
        Value::Null => return Vec::new(),
        Value::Sequence(items) => items,
        other => {
            ctx.bad(
                path,
                &other,
                "a list of windows such as [{days: [mon, fri], from: \"22:00\", to: \"06:00\", timezone: Europe/Madrid}]",
            );
            return Vec::new();
        }
    };
    const TIME: &str = "a local time HH:MM or HH:MM:SS (24-hour clock), e.g. \"22:00\"";
    let mut out = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let wpath = path.index(i);
        let mut s = Section::new(ctx, wpath.clone(), Some(item));
        if !s.present {
            ctx.problem(&wpath, "a window needs at least from and to");
            continue;
        }
        let days = s.take_or(ctx, "days", Vec::new(), |ctx, p, v| {
            let given = match &v {
                Value::Sequence(items) => items.len(),
                _ => 0,
            };
            let days = list(ctx, p, v, "days", |d| {
                match d {
                    Value::String(t) => crate::window::parse_day(t),
                    _ => None,
                }
                .ok_or_else(|| "a day: mon, tue, wed, thu, fri, sat or sun".to_owned())
            });
            if given == 0 && days.is_empty() {
                ctx.problem(
                    p,
                    "an empty list of days never opens: list days, or leave days out for every day",
                );
            }
            days
        });
        let time = |s: &mut Section, ctx: &mut Ctx, name: &str| match s.take(ctx, name) {
            None | Some((_, Value::Null)) => {
                ctx.problem(&wpath.key(name), format!("missing: expected {TIME}"));
                None
            }
            Some((p, v)) => {
                let t = match &v {
                    Value::String(t) => crate::window::parse_time(t),
                    _ => None,
                };
                if t.is_none() {
                    ctx.bad(&p, &v, TIME);
                }
                t
            }
        };
        let from = time(&mut s, ctx, "from");
        let to = time(&mut s, ctx, "to");
        let timezone = s.get(ctx, "timezone", chrono_tz::UTC, |v| match v {
            Value::String(t) => t.trim().parse::<chrono_tz::Tz>().map_err(|_| {
                "an IANA time zone name such as \"Europe/Madrid\" or \"UTC\"".to_owned()
            }),
            _ => Err("an IANA time zone name such as \"Europe/Madrid\" or \"UTC\"".to_owned()),
        });
        s.finish(ctx);
        let (Some(from), Some(to)) = (from, to) else {
            continue;
        };
        if from == to {
            ctx.problem(
                &wpath.key("to"),
                format!(
                    "got {:?}, the same as from: a window needs from and to apart (leave windows out to always allow)",
                    crate::window::format_time(to)
                ),
            );
            continue;
        }
        out.push(ScanWindow {
            days,
            from,
            to,
            timezone,
        });
    }
    out
}

fn stage(
    ctx: &mut Ctx,
    path: KeyPath,
    value: Value,
    orchestrator: &OrchestratorSettings,
) -> Option<StageSettings> {
    let mut s = Section::new(ctx, path.clone(), Some(value));
    if !s.present {
        ctx.problem(&path, "a stage needs at least a name");
        return None;
    }
    let name = match s.take(ctx, "name") {
        None | Some((_, Value::Null)) => {
            ctx.problem(&path.key("name"), "missing: every stage needs a name");
            None
        }
        Some((p, v)) => match non_empty(&v) {
            Ok(n) if valid_stage_name(&n) => Some(n),
            Ok(_) | Err(_) => {
                ctx.bad(
                    &p,
                    &v,
                    "a stage name of letters, digits, '_' and '-' (it is part of routing keys)",
                );
                None
            }
        },
    };
    let exchange = StageSettings::default_exchange(name.as_deref().unwrap_or(""), orchestrator);
    let dflt = StageSettings::new(name.clone().unwrap_or_default(), exchange);
    let stage = StageSettings {
        exchange: s.get(ctx, "exchange", dflt.exchange, non_empty),
        routing_key: s.get(ctx, "routing_key", dflt.routing_key, non_empty),
        depends_on: s.take_or(ctx, "depends_on", Vec::new(), |ctx, p, v| {
            list(ctx, p, v, "stage names", non_empty)
        }),
        timeout: s.get(
            ctx,
            "timeout",
            dflt.timeout,
            duration_at_least(Duration::from_secs(1)),
        ),
        max_attempts: s.get(ctx, "max_attempts", dflt.max_attempts, uint(1, COUNT_MAX)),
        backoff: s.read(ctx, "backoff", None, |ctx, b| {
            let initial = b.get(ctx, "initial", dflt.backoff.initial, go_duration);
            let max = b.get(ctx, "max", dflt.backoff.max, go_duration);
            let multiplier = b.get(ctx, "multiplier", dflt.backoff.multiplier, |v| {
                float(v).and_then(|f| {
                    if (1.0..=1000.0).contains(&f) {
                        Ok(f)
                    } else {
                        Err("a number between 1.0 and 1000".into())
                    }
                })
            });
            if max < initial {
                ctx.problem(
                    &b.path.key("max"),
                    format!(
                        "got {}, expected at least backoff.initial ({})",
                        crate::duration::format(max),
                        crate::duration::format(initial)
                    ),
                );
            }
            BackoffSettings {
                initial,
                max,
                multiplier,
            }
        }),
        max_in_flight: s.get(ctx, "max_in_flight", dflt.max_in_flight, uint(0, COUNT_MAX)),
        protocol: s.get(ctx, "protocol", dflt.protocol, one_of(StageProtocol::NAMES)),
        windows: match s.take(ctx, "windows") {
            None | Some((_, Value::Null)) => None,
            Some((p, v)) => Some(windows(ctx, &p, v)),
        },
        name: dflt.name,
    };
    s.finish(ctx);
    name.map(|_| stage)
}

fn valid_stage_name(name: &str) -> bool {
    name.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn log(ctx: &mut Ctx, s: &mut Section) -> LogSettings {
    let d = LogSettings::default();
    LogSettings {
        file: optional_path(ctx, s, "file"),
        apm_server_url: s.get(ctx, "apm_server_url", None, |v| {
            let url = string(v)?;
            let url = url.trim();
            if url.is_empty() {
                Ok(None)
            } else if url.starts_with("http://") || url.starts_with("https://") {
                Ok(Some(url.trim_end_matches('/').to_owned()))
            } else {
                Err("an http:// or https:// URL".into())
            }
        }),
        apm_secret_token: optional_secret(ctx, s, "apm_secret_token"),
        apm_service_name: s.get(ctx, "apm_service_name", d.apm_service_name, non_empty),
        apm_flush_timeout: s.get(ctx, "apm_flush_timeout", d.apm_flush_timeout, go_duration),
        console: s.get(ctx, "console", d.console, boolean),
        max_size_mb: s.get(ctx, "max_size_mb", d.max_size_mb, uint(1, 1 << 20)),
        max_backups: s.get(ctx, "max_backups", d.max_backups, uint(0, 10_000)),
    }
}

/// A path; empty or null is `None`.
fn optional_path(ctx: &mut Ctx, s: &mut Section, name: &str) -> Option<PathBuf> {
    s.get(ctx, name, None, |v| {
        let p = string(v).map_err(|_| "a file path".to_owned())?;
        Ok((!p.trim().is_empty()).then(|| PathBuf::from(p.trim())))
    })
}

/// A secret; empty or null is `None`.
fn optional_secret(ctx: &mut Ctx, s: &mut Section, name: &str) -> Option<Secret> {
    s.get(ctx, name, None, |v| {
        let t = string(v)?;
        Ok((!t.is_empty()).then(|| Secret::new(t)))
    })
}
