//! Managed-mode workflow types: stage jobs, stage results and the API's views
//! (CONTRACT section 3 and 5).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::time::GoTime;

/// Identifies a workflow.
pub type WorkflowId = Uuid;

/// The durable queue orchestratorm8 consumes stage results from.
pub const RESULT_QUEUE: &str = crate::routing::RESULT_QUEUE;

/// Lifecycle of a workflow. `completed`, `failed` and `cancelled` are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkflowStatus {
    /// Created, no stage published yet.
    Pending,
    /// At least one stage published.
    Running,
    /// Paused by an operator: no new stage jobs are published.
    Paused,
    /// Every stage completed.
    Completed,
    /// A stage failed `max_attempts` times.
    Failed,
    /// Cancelled by an operator.
    Cancelled,
}

/// Whether orchestratorm8 runs a workflow or only watches one (CONTRACT section 5).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkflowKind {
    /// Managed mode: orchestratorm8 publishes the stage jobs and applies the results.
    #[default]
    Managed,
    /// Bootstrap mode: a cycle of the scanners' ring, observed on the wire.
    Observed,
}

/// Lifecycle of one stage of a workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageStatus {
    /// Waiting for the stages it depends on.
    Waiting,
    /// Ready to be published (possibly not before a retry time).
    Pending,
    /// Claimed by a publisher (an owner and a lease) and published or being
    /// published, not yet known to be running; its attempt number is the one
    /// published. A result of that attempt applies at once. When the lease ends
    /// unrecorded, the attempt is claimed and published again (same number).
    Dispatched,
    /// Published and confirmed; a result is awaited until the stage's deadline.
    Running,
    /// An observed ring stage (bootstrap mode) with no chain message within its
    /// timeout: still awaited, and reported (CONTRACT 3c).
    Stalled,
    /// Reported completed.
    Completed,
    /// Failed for good (attempts exhausted).
    Failed,
    /// Not run because the workflow was cancelled or failed.
    Cancelled,
}

str_enum!(WorkflowStatus, "workflow status",
    Pending => "pending", Running => "running", Paused => "paused",
    Completed => "completed", Failed => "failed", Cancelled => "cancelled");
str_enum!(StageStatus, "stage status",
    Waiting => "waiting", Pending => "pending", Dispatched => "dispatched",
    Running => "running", Stalled => "stalled",
    Completed => "completed", Failed => "failed", Cancelled => "cancelled");
str_enum!(WorkflowKind, "workflow kind", Managed => "managed", Observed => "observed");
str_enum!(StageOutcome, "stage outcome", Completed => "completed", Failed => "failed");

impl WorkflowStatus {
    /// Whether no further transition is possible.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

impl StageStatus {
    /// Whether no further transition is possible.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

/// A domain as carried in a stage job.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DomainRef {
    /// `cptm8domain.id`.
    pub id: Uuid,
    /// Domain name.
    pub name: String,
    /// Owner.
    pub companyname: String,
}

impl From<crate::Domain8> for DomainRef {
    fn from(d: crate::Domain8) -> Self {
        DomainRef {
            id: d.id,
            name: d.name,
            companyname: d.companyname,
        }
    }
}

/// The payload of a stage job published to a stage's exchange and routing key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageJob {
    /// The workflow the job belongs to.
    pub workflow_id: WorkflowId,
    /// Stage name.
    pub stage: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The domains to scan.
    pub domains: Vec<DomainRef>,
}

/// How a stage attempt ended, as reported by a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageOutcome {
    /// The stage's work is done.
    Completed,
    /// The attempt failed; the orchestrator may retry.
    Failed,
}

/// Why a result routing key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("routing key {0:?} is not of the form cptm8.orchestratorm8.<stage>.<completed|failed>")]
pub struct RoutingKeyError(pub String);

impl StageOutcome {
    /// The routing key a worker reports this outcome of `stage` with:
    /// `cptm8.orchestratorm8.<stage>.<completed|failed>`.
    pub fn routing_key(self, stage: &str) -> String {
        crate::routing::report_key(stage, self.as_str())
    }

    /// Splits a result routing key into stage name and outcome.
    pub fn parse_routing_key(key: &str) -> Result<(String, StageOutcome), RoutingKeyError> {
        let err = || RoutingKeyError(key.to_owned());
        let rest = key
            .strip_prefix(crate::routing::REPORT_KEY_PREFIX)
            .ok_or_else(err)?;
        let (stage, outcome) = rest.rsplit_once('.').ok_or_else(err)?;
        if stage.is_empty() {
            return Err(err());
        }
        Ok((stage.to_owned(), outcome.parse().map_err(|_| err())?))
    }
}

/// The payload of a stage result a worker reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageResult {
    /// The workflow the job belonged to.
    pub workflow_id: WorkflowId,
    /// Stage name.
    pub stage: String,
    /// The attempt being reported.
    pub attempt: u32,
    /// Free-form detail (an error message, counts...), kept for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

/// One stage of a workflow as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageView {
    /// Stage name.
    pub name: String,
    /// Current status.
    pub status: StageStatus,
    /// Attempts made so far (0 before the first publish).
    pub attempt: u32,
    /// When the current (last) attempt started running; `null` before the first.
    pub started_at: Option<GoTime>,
    /// When the last attempt ended (completed, failed, or the stage was cancelled);
    /// `null` while it runs or before it started.
    pub finished_at: Option<GoTime>,
    /// The worker's or scanner's last detail, or the reason of the last failure
    /// (a time-out); `null` when none was given. Free-form text or JSON: render as
    /// text.
    pub detail: Option<serde_json::Value>,
    /// "Waiting for window until T": set when the stage is due (`pending`, its workflow
    /// not paused) but outside its scan windows (`Workflow.windows`); the time its next
    /// window opens. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for_window_until: Option<GoTime>,
}

/// A workflow as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowView {
    /// Workflow id.
    pub id: WorkflowId,
    /// Managed (run by orchestratorm8) or observed (a bootstrap-mode ring cycle).
    pub kind: WorkflowKind,
    /// Current status.
    pub status: WorkflowStatus,
    /// Creation time.
    pub created_at: GoTime,
    /// Last change.
    pub updated_at: GoTime,
    /// Names of the workflow's domains.
    pub domains: Vec<String>,
    /// Its stages in pipeline order.
    pub stages: Vec<StageView>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_statuses() {
        use StageStatus as S;
        use WorkflowStatus as W;
        for (s, terminal) in [
            (S::Waiting, false),
            (S::Pending, false),
            (S::Dispatched, false),
            (S::Running, false),
            (S::Completed, true),
            (S::Failed, true),
            (S::Cancelled, true),
        ] {
            assert_eq!(s.is_terminal(), terminal, "{s:?}");
        }
        for (w, terminal) in [
            (W::Pending, false),
            (W::Running, false),
            (W::Paused, false),
            (W::Completed, true),
            (W::Failed, true),
            (W::Cancelled, true),
        ] {
            assert_eq!(w.is_terminal(), terminal, "{w:?}");
        }
    }

    #[test]
    fn routing_keys_round_trip() {
        let k = StageOutcome::Completed.routing_key("asmm8");
        assert_eq!(k, "cptm8.orchestratorm8.asmm8.completed");
        assert_eq!(
            StageOutcome::parse_routing_key(&k).unwrap(),
            ("asmm8".into(), StageOutcome::Completed)
        );
        assert_eq!(
            StageOutcome::parse_routing_key("cptm8.orchestratorm8.a.b.failed").unwrap(),
            ("a.b".into(), StageOutcome::Failed)
        );
        for bad in [
            "",
            "cptm8.orchestratorm8.asmm8",
            "cptm8.orchestratorm8..failed",
            "cptm8.asmm8.get.scan",
            "cptm8.orchestratorm8.x.done",
        ] {
            assert!(StageOutcome::parse_routing_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn golden_stage_job_and_result() {
        let id = Uuid::parse_str("6f1c1d0e-8a4b-4c1e-9f7a-2b3c4d5e6f70").unwrap();
        let job = StageJob {
            workflow_id: id,
            stage: "asmm8".into(),
            attempt: 1,
            domains: vec![DomainRef {
                id,
                name: "example.com".into(),
                companyname: "ACME".into(),
            }],
        };
        assert_eq!(
            serde_json::to_string(&job).unwrap(),
            r#"{"workflow_id":"6f1c1d0e-8a4b-4c1e-9f7a-2b3c4d5e6f70","stage":"asmm8","attempt":1,"domains":[{"id":"6f1c1d0e-8a4b-4c1e-9f7a-2b3c4d5e6f70","name":"example.com","companyname":"ACME"}]}"#
        );
        let r: StageResult = serde_json::from_str(
            r#"{"workflow_id":"6f1c1d0e-8a4b-4c1e-9f7a-2b3c4d5e6f70","stage":"asmm8","attempt":2,"detail":"timeout talking to target"}"#,
        )
        .unwrap();
        assert_eq!(r.attempt, 2);
        assert_eq!(
            r.detail,
            Some(serde_json::json!("timeout talking to target"))
        );
        assert!(
            serde_json::from_str::<StageResult>(
                r#"{"workflow_id":"nope","stage":"a","attempt":1}"#
            )
            .is_err()
        );
        assert!(
            serde_json::from_str::<StageResult>(
                r#"{"workflow_id":"6f1c1d0e-8a4b-4c1e-9f7a-2b3c4d5e6f70","stage":"a","attempt":-1}"#
            )
            .is_err()
        );
    }

    #[test]
    fn statuses_parse_and_print() {
        for s in [
            "pending",
            "running",
            "paused",
            "completed",
            "failed",
            "cancelled",
        ] {
            assert_eq!(s.parse::<WorkflowStatus>().unwrap().as_str(), s);
        }
        assert!(
            "done"
                .parse::<WorkflowStatus>()
                .unwrap_err()
                .contains("expected one of")
        );
        assert!(WorkflowStatus::Cancelled.is_terminal() && !WorkflowStatus::Paused.is_terminal());
        assert_eq!(
            serde_json::to_string(&StageStatus::Waiting).unwrap(),
            "\"waiting\""
        );
    }
}
