//! Stage protocols: the one place that decides, for a stage's protocol
//! (`Workflow.stages[].protocol`), how its job is published, how a report is decoded
//! into an outcome, how a report is matched to an attempt, and what in-flight limit it
//! implies. The engine never asks a stage's protocol anything else.
//!
//! - [`ReportProtocol`] (`report`, CONTRACT 3): a job with a [`StageJob`] payload; the
//!   report names workflow, stage and attempt on `...<stage>.<completed|failed>`.
//! - [`ChainProtocol`] (`chain`, CONTRACT 3b): an unmodified CPTM8 Go scanner. The job
//!   is the Go kick-off without payload; the report is the scanner's `Publisher`
//!   message on `...<stage>.<any word>`, matched to the stage's one running attempt
//!   (hence at most one in flight); an empty report is a failure only when an
//!   `app.error.*` of the same scanner arrives within the error window.
//!
//! Adding a protocol: a `config8::StageProtocol` variant, a type implementing
//! [`Protocol`] here and its arm in [`of`]; docs/ENGINE.md "Stage protocols".

use amqp8::OutgoingMessage;
use config8::{StageProtocol, StageSettings};
use db8::{ClaimedStage, StageKey};
use model8::chain::{ChainOutcome, ChainReport};
use model8::{AmqpM8Message, EnvelopeError, StageJob, StageOutcome, StageResult};

/// How a decoded report finds the attempt it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Match {
    /// The report names its attempt.
    Attempt(StageKey),
    /// The report names only its stage: it is about that stage's one running attempt
    /// (none running: unsolicited).
    RunningOf(String),
}

/// What a decoded report says happened.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    /// The outcome is known from the report alone.
    Outcome {
        /// Completed or failed.
        outcome: StageOutcome,
        /// Kept as the stage's detail (a failure's reason).
        detail: Option<serde_json::Value>,
    },
    /// Completed ([`model8::chain::NOTHING_TO_SCAN`]) unless an `app.error.*`
    /// notification from `source` arrives within the error window: then failed with
    /// its message.
    CompletedUnlessError {
        /// The scanner.
        source: String,
    },
}

/// A report, decoded by its stage's protocol.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Report {
    /// Which attempt it is about.
    pub(crate) matched: Match,
    /// What happened.
    pub(crate) verdict: Verdict,
}

/// A stage protocol. Implementations are stateless.
pub(crate) trait Protocol: Send + Sync + std::fmt::Debug {
    /// The message that publishes the claimed attempt `claimed` of `stage` (to the
    /// stage's exchange and routing key; mandatory and confirmed by the dispatcher).
    fn job(
        &self,
        stage: &StageSettings,
        claimed: ClaimedStage,
    ) -> Result<OutgoingMessage, EnvelopeError>;

    /// The limit of claimed plus running attempts of a stage, given the configured
    /// `max_in_flight` (0: no limit).
    fn in_flight_limit(&self, configured: u32) -> u32;

    /// Decodes a delivery of the result queue whose routing key names one of this
    /// protocol's stages; `Err` is the dead-letter reason.
    fn decode(&self, routing_key: &str, body: &[u8]) -> Result<Report, String>;
}

/// The AMQP `message_id` of the job of attempt `key` (docs/AMQP.md, "Message
/// identity"): `job:<workflow id>:<stage>:<attempt>`. Every copy of the job (a
/// re-publish after a lost confirm or an expired claim) has the same id; the next
/// attempt has another.
pub(crate) fn job_message_id(key: &StageKey) -> String {
    format!("job:{}:{}:{}", key.workflow_id, key.stage, key.attempt)
}

/// A CPTM8 kick-off (the envelope without payload the Go scanners start on) to
/// `exchange` with `routing_key`, identified by `message_id`.
pub(crate) fn kickoff(
    exchange: String,
    routing_key: &str,
    message_id: String,
) -> Result<OutgoingMessage, EnvelopeError> {
    let body = AmqpM8Message::<()>::new(routing_key, None).to_vec()?;
    Ok(OutgoingMessage::new(exchange, routing_key, body).with_message_id(message_id))
}

/// The implementation of `protocol`.
pub(crate) fn of(protocol: StageProtocol) -> &'static dyn Protocol {
    match protocol {
        StageProtocol::Report => &ReportProtocol,
        StageProtocol::Chain => &ChainProtocol,
    }
}

/// CONTRACT 3: a worker that reads the job and reports on its attempt.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReportProtocol;

impl Protocol for ReportProtocol {
    fn job(
        &self,
        stage: &StageSettings,
        claimed: ClaimedStage,
    ) -> Result<OutgoingMessage, EnvelopeError> {
        let message_id = job_message_id(&claimed.key);
        let job = StageJob {
            workflow_id: claimed.key.workflow_id,
            stage: claimed.key.stage,
            attempt: claimed.key.attempt,
            domains: claimed.domains,
        };
        let body = AmqpM8Message::new(stage.routing_key.clone(), Some(job)).to_vec()?;
        Ok(
            OutgoingMessage::new(stage.exchange.clone(), stage.routing_key.clone(), body)
                .with_message_id(message_id),
        )
    }

    fn in_flight_limit(&self, configured: u32) -> u32 {
        configured
    }

    fn decode(&self, routing_key: &str, body: &[u8]) -> Result<Report, String> {
        let (stage, outcome) =
            StageOutcome::parse_routing_key(routing_key).map_err(|e| e.to_string())?;
        let envelope = AmqpM8Message::<StageResult>::from_slice(body).map_err(|e| e.to_string())?;
        let result = envelope
            .payload
            .ok_or_else(|| "message has no payload (expected a stage result)".to_owned())?;
        if result.stage != stage {
            return Err(format!(
                "routing key {routing_key:?} names stage {stage:?} but the payload names stage {:?}",
                result.stage
            ));
        }
        if result.attempt == 0 {
            return Err("attempt 0 is not an attempt (attempts start at 1)".into());
        }
        Ok(Report {
            matched: Match::Attempt(StageKey {
                workflow_id: result.workflow_id,
                stage,
                attempt: result.attempt,
            }),
            verdict: Verdict::Outcome {
                outcome,
                detail: result.detail,
            },
        })
    }
}

/// CONTRACT 3b: an unmodified CPTM8 Go scanner.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChainProtocol;

impl Protocol for ChainProtocol {
    fn job(
        &self,
        stage: &StageSettings,
        claimed: ClaimedStage,
    ) -> Result<OutgoingMessage, EnvelopeError> {
        let id = job_message_id(&claimed.key);
        kickoff(stage.exchange.clone(), &stage.routing_key, id)
    }

    fn in_flight_limit(&self, _configured: u32) -> u32 {
        // A report carries no id: it can only be matched to the one attempt out.
        1
    }

    fn decode(&self, routing_key: &str, body: &[u8]) -> Result<Report, String> {
        let report = ChainReport::decode(routing_key, body).map_err(|e| e.to_string())?;
        let verdict = if report.needs_error_check() {
            Verdict::CompletedUnlessError {
                source: report.stage.clone(),
            }
        } else {
            chain_verdict(report.outcome(None))
        };
        Ok(Report {
            matched: Match::RunningOf(report.stage),
            verdict,
        })
    }
}

/// A chain outcome as the engine applies it.
pub(crate) fn chain_verdict(outcome: ChainOutcome) -> Verdict {
    match outcome {
        ChainOutcome::Completed { detail } => Verdict::Outcome {
            outcome: StageOutcome::Completed,
            detail: detail.map(serde_json::Value::String),
        },
        ChainOutcome::Failed { message } => Verdict::Outcome {
            outcome: StageOutcome::Failed,
            detail: Some(serde_json::Value::String(message)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claimed() -> ClaimedStage {
        ClaimedStage {
            key: StageKey {
                workflow_id: uuid::Uuid::nil(),
                stage: "asmm8".into(),
                attempt: 2,
            },
            domains: Vec::new(),
        }
    }

    #[test]
    fn a_chain_job_is_the_go_kickoff() {
        let stage = StageSettings::new("asmm8", "cptm8");
        let m = of(StageProtocol::Chain).job(&stage, claimed()).unwrap();
        assert_eq!(
            (m.exchange.as_str(), m.routing_key.as_str()),
            ("cptm8", "cptm8.asmm8.get.scan")
        );
        let env = AmqpM8Message::<serde_json::Value>::from_slice(&m.body).unwrap();
        assert_eq!(env.payload, None);
        assert_eq!(env.source, "orchestratorm8");
        assert!(
            !String::from_utf8(m.body.clone())
                .unwrap()
                .contains("payload")
        );
        let m = of(StageProtocol::Report).job(&stage, claimed()).unwrap();
        let env = AmqpM8Message::<StageJob>::from_slice(&m.body).unwrap();
        assert_eq!(env.payload.unwrap().attempt, 2);
    }

    #[test]
    fn limits() {
        assert_eq!(of(StageProtocol::Chain).in_flight_limit(0), 1);
        assert_eq!(of(StageProtocol::Chain).in_flight_limit(5), 1);
        assert_eq!(of(StageProtocol::Report).in_flight_limit(0), 0);
        assert_eq!(of(StageProtocol::Report).in_flight_limit(5), 5);
    }

    #[test]
    fn chain_reports_decode_to_verdicts() {
        let body = |p: &str| {
            format!(r#"{{"channel":"x",{p}"timestamp":"2025-11-19T10:00:00Z","source":"naabum8"}}"#)
                .into_bytes()
        };
        let key = "cptm8.orchestratorm8.naabum8.done";
        let r = of(StageProtocol::Chain).decode(key, &body("")).unwrap();
        assert_eq!(r.matched, Match::RunningOf("naabum8".into()));
        assert_eq!(
            r.verdict,
            Verdict::CompletedUnlessError {
                source: "naabum8".into()
            }
        );
        let r = of(StageProtocol::Chain)
            .decode(
                key,
                &body(r#""payload":{"status":"incomplete","message":"m"},"#),
            )
            .unwrap();
        assert_eq!(
            r.verdict,
            Verdict::Outcome {
                outcome: StageOutcome::Failed,
                detail: Some("incomplete: m".into())
            }
        );
        // A chain report is not a report-protocol result, and the reverse.
        assert!(of(StageProtocol::Report).decode(key, &body("")).is_err());
        assert!(
            of(StageProtocol::Chain)
                .decode(key, &body("").iter().map(|_| b' ').collect::<Vec<_>>())
                .is_err()
        );
    }
}
