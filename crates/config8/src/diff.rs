//! What changed between two configurations, and whether it can apply without a restart.

use std::collections::BTreeSet;

use crate::settings::Settings;

/// The key paths that differ between two configurations, split by how they apply.
///
/// Live (applied by the running service): `LOG_LEVEL`, `Scheduler.interval`,
/// `Workflow.rescan_after`, `fairness`, `company_weights`, `windows` and `retention`, a
/// stage's `timeout`, `max_attempts`, `backoff.*`, `max_in_flight` and `windows`,
/// `HTTP.api_token`, and `ORCHESTRATORM8.Services` (informational only).
/// Everything else needs a restart: connections (`Database`, `RabbitMQ`), topology
/// (`ORCHESTRATORM8.Exchanges` and service sections), `APP_ENV`, `Scheduler.mode`,
/// `Workflow.granularity`, stages added or removed or with another exchange, routing
/// key or dependencies, `HTTP.body_limit`, `LeaderElection`, `Log`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeReport {
    /// Changed settings that apply live, as key paths (`Workflow.stages.asmm8.timeout`).
    pub live: Vec<String>,
    /// Changed settings that only apply after a restart, as key paths.
    pub restart_required: Vec<String>,
}

impl ChangeReport {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty() && self.restart_required.is_empty()
    }

    /// Whether some change needs a restart.
    pub fn needs_restart(&self) -> bool {
        !self.restart_required.is_empty()
    }
}

/// Compares two configurations. Paths name what changed, never the values (which may
/// be secrets).
pub fn diff(old: &Settings, new: &Settings) -> ChangeReport {
    let mut r = ChangeReport::default();
    macro_rules! fields {
        ($list:ident, $prefix:expr, $o:expr, $n:expr, [$($f:ident $(= $name:literal)?),* $(,)?]) => {
            $(
                if $o.$f != $n.$f {
                    let name = fields!(@name $f $(= $name)?);
                    r.$list.push(format!("{}.{}", $prefix, name));
                }
            )*
        };
        (@name $f:ident = $name:literal) => { $name };
        (@name $f:ident) => { stringify!($f) };
    }

    if old.app_env != new.app_env {
        r.restart_required.push("APP_ENV".into());
    }
    if old.log_level != new.log_level {
        r.live.push("LOG_LEVEL".into());
    }

    // ORCHESTRATORM8
    let (o, n) = (&old.orchestrator, &new.orchestrator);
    if o.services != n.services {
        r.live.push("ORCHESTRATORM8.Services".into());
    }
    for name in changed_keys(&o.exchanges, &n.exchanges) {
        r.restart_required
            .push(format!("ORCHESTRATORM8.Exchanges.{name}"));
    }
    for name in changed_keys(&o.queues, &n.queues) {
        r.restart_required.push(format!("ORCHESTRATORM8.{name}"));
    }

    fields!(
        restart_required,
        "Database",
        old.database,
        new.database,
        [
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
            connection_timeout,
            retry_attempts,
            retry_delay,
            migrate_on_start,
        ]
    );
    fields!(
        restart_required,
        "RabbitMQ",
        old.rabbitmq,
        new.rabbitmq,
        [
            location, port, username, password, vhost, tls, tls_ca, heartbeat,
        ]
    );
    fields!(
        restart_required,
        "RabbitMQ.pool",
        old.rabbitmq.pool,
        new.rabbitmq.pool,
        [
            max_connections,
            min_connections,
            max_idle_time = "pool.max_idle_time",
            max_lifetime,
            health_check_period,
            connection_timeout,
            retry_attempts,
            retry_delay,
        ]
    );

    fields!(
        restart_required,
        "Scheduler",
        old.scheduler,
        new.scheduler,
        [mode, observe, heal]
    );
    fields!(live, "Scheduler", old.scheduler, new.scheduler, [interval]);

    fields!(
        restart_required,
        "Workflow",
        old.workflow,
        new.workflow,
        [granularity]
    );
    fields!(
        live,
        "Workflow",
        old.workflow,
        new.workflow,
        [rescan_after, fairness, company_weights, windows, retention]
    );
    let old_names: BTreeSet<&str> = old
        .workflow
        .stages
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    let new_names: BTreeSet<&str> = new
        .workflow
        .stages
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    for name in old_names.symmetric_difference(&new_names) {
        r.restart_required.push(format!("Workflow.stages.{name}"));
    }
    for o in &old.workflow.stages {
        let Some(n) = new.workflow.stages.iter().find(|s| s.name == o.name) else {
            continue;
        };
        let prefix = format!("Workflow.stages.{}", o.name);
        fields!(
            restart_required,
            prefix,
            o,
            n,
            [exchange, routing_key, depends_on, protocol]
        );
        fields!(
            live,
            prefix,
            o,
            n,
            [timeout, max_attempts, max_in_flight, windows]
        );
        fields!(
            live,
            format!("{prefix}.backoff"),
            o.backoff,
            n.backoff,
            [initial, max, multiplier]
        );
    }

    fields!(live, "HTTP", old.http, new.http, [api_token]);
    fields!(restart_required, "HTTP", old.http, new.http, [body_limit]);
    fields!(
        restart_required,
        "LeaderElection",
        old.leader_election,
        new.leader_election,
        [enabled, lock_key, check_interval,]
    );
    fields!(
        restart_required,
        "Log",
        old.log,
        new.log,
        [
            file,
            apm_server_url,
            apm_secret_token,
            apm_service_name,
            apm_flush_timeout,
            console,
            max_size_mb,
            max_backups,
        ]
    );
    r
}

/// Keys added, removed or with another value.
fn changed_keys<'a, V: PartialEq>(
    old: &'a std::collections::BTreeMap<String, V>,
    new: &'a std::collections::BTreeMap<String, V>,
) -> BTreeSet<&'a str> {
    let mut out = BTreeSet::new();
    for (k, v) in old {
        if new.get(k) != Some(v) {
            out.insert(k.as_str());
        }
    }
    for k in new.keys() {
        if !old.contains_key(k) {
            out.insert(k.as_str());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::secret::Secret;
    use crate::settings::{ExchangeKind, LogLevel, SchedulerMode};

    #[test]
    fn identical_configurations_do_not_differ() {
        assert!(diff(&Settings::default(), &Settings::default()).is_empty());
    }

    #[test]
    fn a_report_with_any_change_is_not_empty() {
        let one = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let live = ChangeReport {
            live: one(&["LOG_LEVEL"]),
            restart_required: vec![],
        };
        let restart = ChangeReport {
            live: vec![],
            restart_required: one(&["Database.port"]),
        };
        assert!(!live.is_empty() && !live.needs_restart());
        assert!(!restart.is_empty() && restart.needs_restart());
        assert!(ChangeReport::default().is_empty());
    }

    #[test]
    fn live_changes_are_told_apart_from_restart_ones() {
        let old = Settings::default();
        let mut new = old.clone();
        new.log_level = LogLevel::Debug;
        new.scheduler.interval = Duration::from_secs(60);
        new.workflow.rescan_after = Duration::from_secs(3600);
        new.workflow.stages[0].timeout = Duration::from_secs(60);
        new.workflow.stages[0].backoff.multiplier = 3.0;
        new.workflow.stages[1].max_in_flight = 2;
        new.http.api_token = Some(Secret::new("t"));
        let r = diff(&old, &new);
        assert_eq!(
            r.live,
            [
                "LOG_LEVEL",
                "Scheduler.interval",
                "Workflow.rescan_after",
                "Workflow.stages.asmm8.timeout",
                "Workflow.stages.asmm8.backoff.multiplier",
                "Workflow.stages.naabum8.max_in_flight",
                "HTTP.api_token",
            ]
        );
        assert!(!r.needs_restart(), "{r:?}");
    }

    #[test]
    fn restart_changes_name_their_keys() {
        let old = Settings::default();
        let mut new = old.clone();
        new.database.password = Secret::new("other");
        new.rabbitmq.pool.max_idle_time = Duration::from_secs(1);
        new.scheduler.mode = SchedulerMode::Managed;
        new.orchestrator
            .exchanges
            .insert("extra".into(), ExchangeKind::Fanout);
        new.workflow.stages.pop();
        new.workflow.stages[0].routing_key = "x.y".into();
        let r = diff(&old, &new);
        assert_eq!(
            r.restart_required,
            [
                "ORCHESTRATORM8.Exchanges.extra",
                "Database.password",
                "RabbitMQ.pool.pool.max_idle_time",
                "Scheduler.mode",
                "Workflow.stages.num8",
                "Workflow.stages.asmm8.routing_key",
            ]
        );
        assert!(r.live.is_empty());
        assert!(
            !format!("{r:?}").contains("other"),
            "no values in the report"
        );
    }
}
