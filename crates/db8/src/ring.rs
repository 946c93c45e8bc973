//! The observed ring (CONTRACT 3c): bootstrap mode follows the scanners' own ring and
//! records each cycle as a workflow of kind `observed`.
//!
//! The state machine is written once, here, on a snapshot of the latest cycles
//! ([`Cycle`]); the PostgreSQL store loads the snapshot under a lock, applies it, and
//! writes back what changed, the in-memory store does the same on its maps. Each
//! message is applied at most once: its key is recorded with the change, in the same
//! transaction, and a key seen before changes nothing.

use std::time::Duration;

use chrono::{DateTime, Utc};
use model8::chain::{ChainOutcome, ERROR_WINDOW, NOTHING_TO_SCAN, ScanPayload, outcome};
use model8::{StageStatus, WorkflowId, WorkflowStatus};

use crate::time::plus;

/// One stage of the ring, in ring order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingStage {
    /// Stage (scanner) name.
    pub name: String,
    /// How long it may stay silent before it is stalled.
    pub timeout: Duration,
}

/// What a message seen on the ring says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RingMessage {
    /// A kick-off of `stage` that ends no stage: the orchestrator's own (bootstrap
    /// kick-off, a heal) or another orchestrator's.
    Kick {
        /// The stage kicked.
        stage: String,
    },
    /// A scanner's chain message: stage `from` ended (its payload decides how, CONTRACT
    /// 3b) and kicks `to`.
    Chain {
        /// The scanner that ended (the envelope's `source`).
        from: String,
        /// The stage its message kicks.
        to: String,
        /// The report payload; `None` for an early exit.
        payload: Option<ScanPayload>,
    },
    /// An `app.error.*` notification from `source`.
    Error {
        /// The scanner.
        source: String,
        /// Its message.
        message: String,
    },
    /// An `app.warning.*` notification from `source` (e.g. a soft failure).
    Warning {
        /// The scanner.
        source: String,
        /// Its message.
        message: String,
    },
}

/// One message seen on the ring, to apply exactly once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingEvent {
    /// Identifies the message (routing key, source and the envelope's timestamp): a
    /// redelivery of it has the same key.
    pub key: String,
    /// When it was sent (the envelope's timestamp) or received.
    pub at: DateTime<Utc>,
    /// What it says.
    pub message: RingMessage,
}

/// What applying a [`RingEvent`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum RingApplied {
    /// Its key was seen before: nothing changed.
    Duplicate,
    /// A stage started running (a new cycle's first stage, or the next stage).
    StageStarted {
        /// The cycle.
        cycle: WorkflowId,
        /// The stage.
        stage: String,
        /// Its attempt (2 and more: kicked again).
        attempt: u32,
        /// Whether the cycle is new.
        new_cycle: bool,
    },
    /// A stage ended (then maybe the next started, see `next`).
    StageEnded {
        /// The cycle.
        cycle: WorkflowId,
        /// The stage.
        stage: String,
        /// `completed` or `failed`.
        status: StageStatus,
        /// How long it ran (from its last kick).
        duration: Duration,
        /// The cycle's end status when this was its last stage.
        cycle_ended: Option<WorkflowStatus>,
        /// The stage started next, with its cycle (a new one after the last stage).
        next: Option<(WorkflowId, String)>,
    },
    /// A kick of a stage that is already running (two orchestrators, a duplicate):
    /// nothing changed.
    AlreadyRunning {
        /// The stage.
        stage: String,
    },
    /// A chain message from a stage that is not running (a redelivered kick-off scanned
    /// again), or a kick of a stage already done in the running cycle: not a stage's
    /// end; nothing changed.
    Rerun {
        /// The stage.
        stage: String,
    },
    /// A notification recorded on its scanner's stage (a later empty report of it
    /// fails; or an empty report just before it now fails).
    Noted,
    /// Nothing to do with the ring (unknown stage, no cycle).
    Ignored,
}

/// A stage newly found stalled.
#[derive(Debug, Clone, PartialEq)]
pub struct RingStall {
    /// The cycle.
    pub cycle: WorkflowId,
    /// The stage.
    pub stage: String,
    /// Its attempt.
    pub attempt: u32,
    /// How long it has been silent.
    pub silent_for: Duration,
    /// The scanner's last warning, if any.
    pub message: Option<String>,
}

/// A stage of the open cycle that is stalled now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StalledStage {
    /// The cycle.
    pub cycle: WorkflowId,
    /// The stage.
    pub stage: String,
    /// Its attempt (kicks so far).
    pub attempt: u32,
    /// When it became stalled (its last kick plus its timeout).
    pub since: DateTime<Utc>,
}

/// A cycle, as the state machine sees it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Cycle {
    pub(crate) id: WorkflowId,
    pub(crate) status: WorkflowStatus,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
    pub(crate) ended_at: Option<DateTime<Utc>>,
    /// Every stage of the ring, in ring order.
    pub(crate) stages: Vec<CycleStage>,
    /// Not stored yet.
    pub(crate) new: bool,
    /// Changed (the row and the `dirty` stages are to be written).
    pub(crate) dirty: bool,
}

/// A stage of a [`Cycle`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CycleStage {
    pub(crate) name: String,
    pub(crate) status: StageStatus,
    pub(crate) attempt: u32,
    pub(crate) started_at: Option<DateTime<Utc>>,
    pub(crate) finished_at: Option<DateTime<Utc>>,
    pub(crate) stall_at: Option<DateTime<Utc>>,
    pub(crate) detail: Option<serde_json::Value>,
    pub(crate) dirty: bool,
}

impl Cycle {
    fn open(&self) -> bool {
        self.ended_at.is_none()
    }

    fn stage(&mut self, name: &str) -> Option<&mut CycleStage> {
        self.stages.iter_mut().find(|s| s.name == name)
    }

    fn touch(&mut self, at: DateTime<Utc>) {
        self.dirty = true;
        if at > self.updated_at {
            self.updated_at = at;
        }
    }

    /// Starts `stage` (attempt + 1) at `at`.
    fn start(&mut self, ring: &[RingStage], stage: &str, at: DateTime<Utc>) -> Option<u32> {
        let timeout = ring.iter().find(|r| r.name == stage)?.timeout;
        let s = self.stage(stage)?;
        s.status = StageStatus::Running;
        s.attempt += 1;
        s.started_at = Some(at);
        s.finished_at = None;
        s.stall_at = Some(plus(at, timeout));
        s.detail = None;
        s.dirty = true;
        let attempt = s.attempt;
        if self.status == WorkflowStatus::Pending {
            self.status = WorkflowStatus::Running;
        }
        self.touch(at);
        Some(attempt)
    }

    /// Ends the cycle: completed when every stage completed, else failed; stages not
    /// finished are cancelled.
    fn end(&mut self, at: DateTime<Utc>) -> WorkflowStatus {
        let ok = self
            .stages
            .iter()
            .all(|s| s.status == StageStatus::Completed);
        self.status = if ok {
            WorkflowStatus::Completed
        } else {
            WorkflowStatus::Failed
        };
        for s in &mut self.stages {
            if !s.status.is_terminal() {
                s.status = StageStatus::Cancelled;
                s.stall_at = None;
                s.dirty = true;
            }
        }
        self.ended_at = Some(at);
        self.touch(at);
        self.status
    }
}

/// A new cycle of `ring` created at `at`, joined at `first` (the stages before it,
/// not observed, are cancelled).
fn new_cycle(ring: &[RingStage], first: &str, at: DateTime<Utc>) -> Cycle {
    let before = ring.iter().position(|r| r.name == first).unwrap_or(0);
    Cycle {
        id: uuid::Uuid::new_v4(),
        status: WorkflowStatus::Pending,
        created_at: at,
        updated_at: at,
        ended_at: None,
        stages: ring
            .iter()
            .enumerate()
            .map(|(i, r)| CycleStage {
                name: r.name.clone(),
                status: if i < before {
                    StageStatus::Cancelled
                } else {
                    StageStatus::Waiting
                },
                attempt: 0,
                started_at: None,
                finished_at: None,
                stall_at: None,
                detail: (i < before).then(|| {
                    serde_json::Value::String(
                        "not observed: the orchestrator joined the ring later".into(),
                    )
                }),
                dirty: i < before,
            })
            .collect(),
        new: true,
        dirty: true,
    }
}

/// The message of an `app.error.*` recorded on a stage within the window around `at`.
fn recorded_error(s: &CycleStage, at: DateTime<Utc>) -> Option<String> {
    let d = s.detail.as_ref()?;
    let message = d.get("error")?.as_str()?;
    let when: DateTime<Utc> = d.get("at")?.as_str()?.parse().ok()?;
    let window = chrono::Duration::from_std(ERROR_WINDOW).ok()?;
    ((when - at).abs() <= window).then(|| message.to_owned())
}

fn since(from: Option<DateTime<Utc>>, to: DateTime<Utc>) -> Duration {
    from.and_then(|f| (to - f).to_std().ok())
        .unwrap_or_default()
}

/// Applies `event` to `cycles` (the latest cycles, newest first; a new cycle is
/// inserted first). Does not check the key (the store does).
pub(crate) fn apply(cycles: &mut Vec<Cycle>, ring: &[RingStage], event: &RingEvent) -> RingApplied {
    let at = event.at;
    let in_ring = |s: &str| ring.iter().any(|r| r.name == s);
    let open = cycles.first().is_some_and(Cycle::open);
    match &event.message {
        RingMessage::Kick { stage } => {
            if !in_ring(stage) {
                return RingApplied::Ignored;
            }
            let status = cycles
                .first_mut()
                .and_then(|c| c.stage(stage))
                .map(|s| s.status);
            // Without an open cycle, or a kick-off of the first stage after it ended
            // (healing after the last stage gave up, or a new bootstrap kick-off): the
            // next cycle starts.
            let first = ring.first().is_some_and(|r| r.name == *stage);
            if !open || (first && status.is_some_and(StageStatus::is_terminal)) {
                if open {
                    cycles[0].end(at);
                }
                let mut n = new_cycle(ring, stage, at);
                let attempt = n.start(ring, stage, at).unwrap_or(1);
                let id = n.id;
                cycles.insert(0, n);
                return RingApplied::StageStarted {
                    cycle: id,
                    stage: stage.clone(),
                    attempt,
                    new_cycle: true,
                };
            }
            let c = &mut cycles[0];
            match status {
                Some(StageStatus::Running) => RingApplied::AlreadyRunning {
                    stage: stage.clone(),
                },
                Some(StageStatus::Completed) => RingApplied::Rerun {
                    stage: stage.clone(),
                },
                _ => match c.start(ring, stage, at) {
                    Some(attempt) => RingApplied::StageStarted {
                        cycle: c.id,
                        stage: stage.clone(),
                        attempt,
                        new_cycle: false,
                    },
                    None => RingApplied::Ignored,
                },
            }
        }
        RingMessage::Chain { from, to, payload } => {
            let running = open
                && cycles[0].stages.iter().any(|s| {
                    s.name == *from
                        && matches!(s.status, StageStatus::Running | StageStatus::Stalled)
                });
            if !running {
                if open && in_ring(from) {
                    return RingApplied::Rerun {
                        stage: from.clone(),
                    };
                }
                // No cycle open (the orchestrator joined the ring late): the next
                // stage starts one.
                if !open && in_ring(to) {
                    return apply(
                        cycles,
                        ring,
                        &RingEvent {
                            key: event.key.clone(),
                            at,
                            message: RingMessage::Kick { stage: to.clone() },
                        },
                    );
                }
                return RingApplied::Ignored;
            }
            let c = &mut cycles[0];
            let last = ring.last().is_some_and(|r| r.name == *from);
            let s = c.stage(from).expect("running stage exists");
            let error = payload.is_none().then(|| recorded_error(s, at)).flatten();
            let (status, detail) = match outcome(payload.as_ref(), error.as_deref()) {
                ChainOutcome::Completed { detail } => (StageStatus::Completed, detail),
                ChainOutcome::Failed { message } => (StageStatus::Failed, Some(message)),
            };
            let duration = since(s.started_at, at);
            s.status = status;
            s.finished_at = Some(at);
            s.stall_at = None;
            s.detail = detail.map(serde_json::Value::String);
            s.dirty = true;
            c.touch(at);
            let cycle = c.id;
            let mut cycle_ended = None;
            let mut next = None;
            if last {
                cycle_ended = Some(c.end(at));
                if ring.first().is_some_and(|r| r.name == *to) {
                    let mut n = new_cycle(ring, to, at);
                    n.start(ring, to, at);
                    next = Some((n.id, to.clone()));
                    cycles.insert(0, n);
                }
            } else if c
                .stage(to)
                .is_some_and(|s| !matches!(s.status, StageStatus::Running))
                && c.start(ring, to, at).is_some()
            {
                next = Some((cycle, to.clone()));
            }
            RingApplied::StageEnded {
                cycle,
                stage: from.clone(),
                status,
                duration,
                cycle_ended,
                next,
            }
        }
        RingMessage::Warning { source, message } | RingMessage::Error { source, message } => {
            let key = if matches!(event.message, RingMessage::Error { .. }) {
                "error"
            } else {
                "warning"
            };
            let note = serde_json::json!({ key: message, "at": at.to_rfc3339() });
            // The stage running now records it.
            if open
                && let Some(s) = cycles[0].stage(source)
                && matches!(s.status, StageStatus::Running | StageStatus::Stalled)
            {
                s.detail = Some(note);
                s.dirty = true;
                cycles[0].touch(at);
                return RingApplied::Noted;
            }
            // An empty report just before an error: the stage failed after all.
            if key == "error" {
                let window = chrono::Duration::from_std(ERROR_WINDOW).unwrap_or_default();
                for c in cycles.iter_mut() {
                    let Some(s) = c.stage(source) else { continue };
                    if s.status == StageStatus::Completed
                        && s.detail.as_ref().and_then(|v| v.as_str()) == Some(NOTHING_TO_SCAN)
                        && s.finished_at.is_some_and(|f| (f - at).abs() <= window)
                    {
                        s.status = StageStatus::Failed;
                        s.detail = Some(serde_json::Value::String(message.clone()));
                        s.dirty = true;
                        if c.status == WorkflowStatus::Completed {
                            c.status = WorkflowStatus::Failed;
                        }
                        c.touch(at);
                        return RingApplied::Noted;
                    }
                }
            }
            RingApplied::Ignored
        }
    }
}

/// Marks the running stages of the open cycle silent past their timeout as stalled.
pub(crate) fn stall(cycles: &mut [Cycle], now: DateTime<Utc>) -> Vec<RingStall> {
    let mut out = Vec::new();
    let Some(c) = cycles.first_mut().filter(|c| c.open()) else {
        return out;
    };
    let id = c.id;
    for s in &mut c.stages {
        if s.status == StageStatus::Running && s.stall_at.is_some_and(|t| t <= now) {
            s.status = StageStatus::Stalled;
            s.dirty = true;
            out.push(RingStall {
                cycle: id,
                stage: s.name.clone(),
                attempt: s.attempt,
                silent_for: since(s.started_at, now),
                message: s
                    .detail
                    .as_ref()
                    .and_then(|d| d.get("warning"))
                    .and_then(|w| w.as_str())
                    .map(str::to_owned),
            });
        }
    }
    if !out.is_empty() {
        c.touch(now);
    }
    out
}

/// The stalled stages of the open cycle.
pub(crate) fn stalled(cycles: &[Cycle]) -> Vec<StalledStage> {
    let Some(c) = cycles.first().filter(|c| c.open()) else {
        return Vec::new();
    };
    c.stages
        .iter()
        .filter(|s| s.status == StageStatus::Stalled)
        .map(|s| StalledStage {
            cycle: c.id,
            stage: s.name.clone(),
            attempt: s.attempt,
            since: s.stall_at.unwrap_or(c.updated_at),
        })
        .collect()
}

/// Gives up on stalled `stage` of open cycle `cycle` (healing kicked the next one):
/// failed, with `message`. Whether it was still stalled.
pub(crate) fn give_up(
    cycles: &mut [Cycle],
    cycle: WorkflowId,
    stage: &str,
    message: &str,
    at: DateTime<Utc>,
) -> bool {
    let Some(c) = cycles.first_mut().filter(|c| c.open() && c.id == cycle) else {
        return false;
    };
    let Some(s) = c.stage(stage).filter(|s| s.status == StageStatus::Stalled) else {
        return false;
    };
    s.status = StageStatus::Failed;
    s.finished_at = Some(at);
    s.stall_at = None;
    s.detail = Some(serde_json::Value::String(message.to_owned()));
    s.dirty = true;
    c.touch(at);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use model8::chain::ScanStatus;

    fn ring() -> Vec<RingStage> {
        ["asmm8", "naabum8", "katanam8", "num8"]
            .map(|n| RingStage {
                name: n.into(),
                timeout: Duration::from_secs(10),
            })
            .to_vec()
    }

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn ev(at: i64, message: RingMessage) -> RingEvent {
        RingEvent {
            key: format!("k{at}"),
            at: t(at),
            message,
        }
    }

    fn chain(from: &str, to: &str, status: Option<ScanStatus>) -> RingMessage {
        RingMessage::Chain {
            from: from.into(),
            to: to.into(),
            payload: status.map(|status| ScanPayload {
                status,
                message: "m".into(),
            }),
        }
    }

    fn kick(stage: &str) -> RingMessage {
        RingMessage::Kick {
            stage: stage.into(),
        }
    }

    #[test]
    fn a_full_cycle_then_the_next_one() {
        let r = ring();
        let mut c = Vec::new();
        assert!(matches!(
            apply(&mut c, &r, &ev(0, kick("asmm8"))),
            RingApplied::StageStarted {
                new_cycle: true,
                attempt: 1,
                ..
            }
        ));
        let ok = Some(ScanStatus::Complete);
        apply(&mut c, &r, &ev(2, chain("asmm8", "naabum8", ok)));
        apply(&mut c, &r, &ev(5, chain("naabum8", "katanam8", ok)));
        apply(&mut c, &r, &ev(6, chain("katanam8", "num8", ok)));
        let end = apply(&mut c, &r, &ev(9, chain("num8", "asmm8", ok)));
        let RingApplied::StageEnded {
            cycle_ended,
            next,
            duration,
            ..
        } = end
        else {
            panic!("{end:?}")
        };
        assert_eq!(cycle_ended, Some(WorkflowStatus::Completed));
        assert_eq!(duration, Duration::from_secs(3));
        assert_eq!(c.len(), 2);
        assert_eq!(next, Some((c[0].id, "asmm8".into())));
        assert_eq!(c[0].stages[0].status, StageStatus::Running);
        assert_eq!(c[1].stages[1].started_at, Some(t(2)));
    }

    #[test]
    fn failover_reruns_kicks_and_notifications() {
        let r = ring();
        let mut c = Vec::new();
        apply(&mut c, &r, &ev(0, kick("asmm8")));
        assert_eq!(
            apply(&mut c, &r, &ev(1, kick("asmm8"))),
            RingApplied::AlreadyRunning {
                stage: "asmm8".into()
            }
        );
        apply(
            &mut c,
            &r,
            &ev(2, chain("asmm8", "naabum8", Some(ScanStatus::Complete))),
        );
        // asmm8's kick-off redelivered: it scans again and chains again.
        assert_eq!(
            apply(
                &mut c,
                &r,
                &ev(3, chain("asmm8", "naabum8", Some(ScanStatus::Complete)))
            ),
            RingApplied::Rerun {
                stage: "asmm8".into()
            }
        );
        // Soft failure of naabum8: a warning, then silence: stalled after 10 s.
        apply(
            &mut c,
            &r,
            &ev(
                4,
                RingMessage::Warning {
                    source: "naabum8".into(),
                    message: "httpx".into(),
                },
            ),
        );
        assert!(stall(&mut c, t(11)).is_empty());
        let s = stall(&mut c, t(12));
        assert_eq!(s.len(), 1);
        assert_eq!(
            (s[0].stage.as_str(), s[0].message.as_deref()),
            ("naabum8", Some("httpx"))
        );
        assert!(stall(&mut c, t(13)).is_empty(), "stalled once");
        // A re-kick: attempt 2; an error then an empty report: failed.
        assert!(matches!(
            apply(&mut c, &r, &ev(20, kick("naabum8"))),
            RingApplied::StageStarted { attempt: 2, .. }
        ));
        apply(
            &mut c,
            &r,
            &ev(
                21,
                RingMessage::Error {
                    source: "naabum8".into(),
                    message: "db down".into(),
                },
            ),
        );
        let end = apply(&mut c, &r, &ev(22, chain("naabum8", "katanam8", None)));
        assert!(matches!(
            end,
            RingApplied::StageEnded {
                status: StageStatus::Failed,
                ..
            }
        ));
        assert_eq!(c[0].stages[1].detail, Some("db down".into()));
        // katanam8 ends empty, then its error arrives: failed after all.
        apply(&mut c, &r, &ev(23, chain("katanam8", "num8", None)));
        assert_eq!(c[0].stages[2].status, StageStatus::Completed);
        apply(
            &mut c,
            &r,
            &ev(
                24,
                RingMessage::Error {
                    source: "katanam8".into(),
                    message: "tool".into(),
                },
            ),
        );
        assert_eq!(c[0].stages[2].status, StageStatus::Failed);
        let end = apply(
            &mut c,
            &r,
            &ev(25, chain("num8", "asmm8", Some(ScanStatus::Warning))),
        );
        assert!(matches!(
            end,
            RingApplied::StageEnded {
                cycle_ended: Some(WorkflowStatus::Failed),
                ..
            }
        ));
    }

    #[test]
    fn joining_mid_ring() {
        let r = ring();
        let mut c = Vec::new();
        let got = apply(
            &mut c,
            &r,
            &ev(0, chain("naabum8", "katanam8", Some(ScanStatus::Complete))),
        );
        assert!(
            matches!(
                got,
                RingApplied::StageStarted {
                    new_cycle: true,
                    ..
                }
            ),
            "{got:?}"
        );
        let st: Vec<StageStatus> = c[0].stages.iter().map(|s| s.status).collect();
        assert_eq!(
            st,
            [
                StageStatus::Cancelled,
                StageStatus::Cancelled,
                StageStatus::Running,
                StageStatus::Waiting
            ]
        );
    }
}
