//! What changed between two configurations, and whether it can apply without a restart.

use crate::parts::Changes;
use crate::settings::Settings;

/// The key paths that differ between two configurations, split by how they apply.
///
/// Derived from the two parts of [`Settings::split`]: a key of
/// [`LiveSettings`](crate::LiveSettings) that changed is listed in `live`, a key of
/// [`RestartSettings`](crate::RestartSettings) in `restart_required`. Live today:
/// `LOG_LEVEL`, `Scheduler.interval`, `Workflow.rescan_after`, `fairness`,
/// `company_weights`, `windows` and `retention`, a stage's `timeout`, `max_attempts`,
/// `max_in_flight`, `windows` and `backoff.*`, `HTTP.api_token` and `body_limit`,
/// `LeaderElection.check_interval`, and `ORCHESTRATORM8.Services` (informational only).
/// Everything else needs a restart.
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
/// be secrets). A stage added or removed is reported once, as needing a restart.
pub fn diff(old: &Settings, new: &Settings) -> ChangeReport {
    let ((old_live, old_restart), (new_live, new_restart)) = (old.split(), new.split());
    let mut r = ChangeReport::default();
    old_restart.changes(&new_restart, "", &mut r.restart_required);
    old_live.changes(&new_live, "", &mut r.live);
    // What a restart applies anyway (a stage added or removed) is not also live.
    r.live.retain(|p| !r.restart_required.contains(p));
    r
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
    fn the_http_body_limit_and_the_leader_check_interval_are_live() {
        let old = Settings::default();
        let mut new = old.clone();
        new.http.body_limit = 1024;
        new.leader_election.check_interval = Duration::from_secs(5);
        let r = diff(&old, &new);
        assert_eq!(r.live, ["HTTP.body_limit", "LeaderElection.check_interval"]);
        assert!(!r.needs_restart(), "{r:?}");
    }

    #[test]
    fn leader_election_enabled_and_lock_key_need_a_restart() {
        let old = Settings::default();
        let mut new = old.clone();
        new.leader_election.enabled = false;
        new.leader_election.lock_key = 7;
        new.scheduler.heal = true;
        new.log.console = false;
        let r = diff(&old, &new);
        assert_eq!(
            r.restart_required,
            [
                "Scheduler.heal",
                "LeaderElection.enabled",
                "LeaderElection.lock_key",
                "Log.console",
            ]
        );
        assert!(r.live.is_empty(), "{r:?}");
    }

    #[test]
    fn a_stage_added_is_reported_once_as_needing_a_restart() {
        let old = Settings::default();
        let mut new = old.clone();
        new.workflow
            .stages
            .push(crate::StageSettings::new("extra", "cptm8"));
        let r = diff(&old, &new);
        assert_eq!(r.restart_required, ["Workflow.stages.extra"]);
        assert!(r.live.is_empty(), "{r:?}");
    }

    #[test]
    fn the_live_part_holds_exactly_the_live_keys() {
        let s = Settings::default();
        let (live, _) = s.split();
        assert_eq!(live, s.live());
        assert_eq!(live.http, s.http);
        assert_eq!(
            live.leader_election.check_interval,
            s.leader_election.check_interval
        );
        let names: Vec<_> = live
            .workflow
            .stages
            .0
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(names, ["asmm8", "naabum8", "katanam8", "num8"]);
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
