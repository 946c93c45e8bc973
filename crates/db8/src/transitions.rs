//! The stage state machine of managed workflows, as data: which stage status each
//! event may move a stage from, and to which status. Both stores take their guards
//! from [`TABLE`]: the in-memory store applies every stage change through
//! [`StageEvent::apply`], the PostgreSQL store's guarded `UPDATE`s bind the allowed
//! from-states ([`StageEvent::from_strs`]) as `status = ANY($n)`.
//!
//! Two guards are not statuses and stay with the stores: the attempt number (a
//! result, a record or a release names the attempt it is about) and the lease (a
//! claim takes a `dispatched` attempt only when its lease has ended; a record or a
//! release only for the lease's owner).
//!
//! Pause and resume change no stage: they are not in the table (a paused workflow's
//! stages are simply not claimed).

use model8::StageStatus;

/// Something that changes a stage's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StageEvent {
    /// Every dependency completed: the stage becomes due.
    Due,
    /// A publisher claims a due attempt (`claim_due`, `claim_due_fair`,
    /// `create_claimed`): the next attempt number, with the publisher's lease.
    Claim,
    /// A lease ended with the attempt still dispatched (a publisher that crashed or
    /// could not record it): it is claimed again, same attempt number, new owner.
    Reclaim,
    /// The broker confirmed the publish (`mark_running`): running until a deadline.
    PublishConfirmed,
    /// The publish was refused (`release`): due again, the attempt not used.
    Release,
    /// A `completed` report of the attempt (`complete_stage`).
    Complete,
    /// A failure of the attempt, reported or timed out (`fail_stage`, `time_out`),
    /// with an attempt left: due again after the backoff.
    FailRetry,
    /// A failure of the attempt with no attempt left: the stage (and its workflow)
    /// failed.
    FailFinal,
    /// The workflow ended (cancelled, or failed by another stage): every unfinished
    /// stage is cancelled.
    Cancel,
    /// A failed or cancelled workflow runs again (`retry`): an unfinished stage whose
    /// dependencies are completed is due afresh (attempt 0).
    RetryDue,
    /// The same for a stage whose dependencies are not all completed: waiting.
    RetryWaiting,
}

/// One row of the table: `event` moves a stage in one of `from` to `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// The event.
    pub event: StageEvent,
    /// The statuses it applies to.
    pub from: &'static [StageStatus],
    /// The status it leaves.
    pub to: StageStatus,
}

use StageStatus::{Cancelled, Completed, Dispatched, Failed, Pending, Running, Stalled, Waiting};

/// The attempt in flight: published or being published, or running.
const IN_FLIGHT: &[StageStatus] = &[Dispatched, Running];

/// Every stage transition of a managed workflow (an observed ring stage follows
/// `crate::ring`; a cancelled cycle's stalled stage is cancelled too).
#[rustfmt::skip]
pub const TABLE: &[Rule] = &[
    Rule { event: StageEvent::Due, from: &[Waiting], to: Pending },
    Rule { event: StageEvent::Claim, from: &[Pending], to: Dispatched },
    Rule { event: StageEvent::Reclaim, from: &[Dispatched], to: Dispatched },
    Rule { event: StageEvent::PublishConfirmed, from: &[Dispatched], to: Running },
    Rule { event: StageEvent::Release, from: &[Dispatched], to: Pending },
    Rule { event: StageEvent::Complete, from: IN_FLIGHT, to: Completed },
    Rule { event: StageEvent::FailRetry, from: IN_FLIGHT, to: Pending },
    Rule { event: StageEvent::FailFinal, from: IN_FLIGHT, to: Failed },
    Rule {
        event: StageEvent::Cancel,
        from: &[Waiting, Pending, Dispatched, Running, Stalled],
        to: Cancelled,
    },
    Rule { event: StageEvent::RetryDue, from: &[Failed, Cancelled], to: Pending },
    Rule { event: StageEvent::RetryWaiting, from: &[Failed, Cancelled], to: Waiting },
];

impl StageEvent {
    /// Its row of [`TABLE`].
    pub fn rule(self) -> &'static Rule {
        TABLE
            .iter()
            .find(|r| r.event == self)
            .expect("every event has a row")
    }

    /// Whether the event applies to a stage in `status`.
    pub fn allows(self, status: StageStatus) -> bool {
        self.rule().from.contains(&status)
    }

    /// The status the event leaves.
    pub fn to(self) -> StageStatus {
        self.rule().to
    }

    /// Moves `status` as the event does; `false` (nothing changed) when the event does
    /// not apply to it.
    pub fn apply(self, status: &mut StageStatus) -> bool {
        let ok = self.allows(*status);
        if ok {
            *status = self.to();
        }
        ok
    }

    /// The statuses it applies to, as SQL text (for `status = ANY($n)`).
    pub fn from_strs(self) -> Vec<&'static str> {
        self.rule().from.iter().map(|s| s.as_str()).collect()
    }

    /// The statuses it applies to, with those of `others`, as SQL text.
    pub fn from_strs_with(self, others: &[StageEvent]) -> Vec<&'static str> {
        let mut out = self.from_strs();
        for s in others.iter().flat_map(|e| e.rule().from) {
            if !out.contains(&s.as_str()) {
                out.push(s.as_str());
            }
        }
        out
    }
}

/// Whether some event of [`TABLE`] moves a stage from `from` to `to`.
pub fn allowed(from: StageStatus, to: StageStatus) -> bool {
    TABLE.iter().any(|r| r.to == to && r.from.contains(&from))
}

/// Whether a stage in `status` has an attempt in flight that a result of its attempt
/// applies to (complete, fail, time out).
pub fn in_flight(status: StageStatus) -> bool {
    IN_FLIGHT.contains(&status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_has_exactly_one_row() {
        use StageEvent::*;
        for e in [
            Due,
            Claim,
            Reclaim,
            PublishConfirmed,
            Release,
            Complete,
            FailRetry,
            FailFinal,
            Cancel,
            RetryDue,
            RetryWaiting,
        ] {
            assert_eq!(TABLE.iter().filter(|r| r.event == e).count(), 1, "{e:?}");
        }
        assert_eq!(TABLE.len(), 11);
    }

    #[test]
    fn results_apply_to_dispatched_and_running_only() {
        for e in [
            StageEvent::Complete,
            StageEvent::FailRetry,
            StageEvent::FailFinal,
        ] {
            for s in [Waiting, Pending, Stalled, Completed, Failed, Cancelled] {
                assert!(!e.allows(s), "{e:?} from {s}");
            }
            assert!(e.allows(Dispatched) && e.allows(Running));
        }
        let mut s = Pending;
        assert!(!StageEvent::Complete.apply(&mut s));
        assert_eq!(s, Pending);
        assert!(StageEvent::Claim.apply(&mut s));
        assert_eq!(s, Dispatched);
        assert!(allowed(Dispatched, Pending) && !allowed(Completed, Pending));
        assert_eq!(
            StageEvent::Claim.from_strs_with(&[StageEvent::Reclaim]),
            ["pending", "dispatched"]
        );
    }
}
