//! The protocol's AMQP names in one place (CONTRACT section 3, CPTM8-PLATFORM.md):
//! exchanges, the routing keys of stage jobs, reports and notifications, and the queue
//! names built from a service name. Every crate builds these names here, never with
//! its own `format!`.
//!
//! ```
//! use model8::routing;
//!
//! assert_eq!(routing::stage_job_key("asmm8"), "cptm8.asmm8.get.scan");
//! assert_eq!(routing::report_key("asmm8", "completed"), "cptm8.orchestratorm8.asmm8.completed");
//! assert_eq!(routing::service_queue("num8"), "qnum8");
//! assert_eq!(routing::service_binding("num8"), "cptm8.num8.#");
//! assert!(model8::topic::matches(routing::RESULT_BINDING, &routing::report_key("a", "done")));
//! ```

/// The platform's work exchange: stage jobs, kick-offs and reports.
pub const EXCHANGE: &str = "cptm8";
/// The exchange of platform notifications.
pub const NOTIFICATION_EXCHANGE: &str = "notification";
/// The prefix of every report routing key: `cptm8.orchestratorm8.<stage>.<word>`.
pub const REPORT_KEY_PREFIX: &str = "cptm8.orchestratorm8.";
/// The durable queue orchestratorm8 consumes stage results from.
pub const RESULT_QUEUE: &str = "qorchestratorm8";
/// The binding of [`RESULT_QUEUE`] on [`EXCHANGE`]: every report.
pub const RESULT_BINDING: &str = "cptm8.orchestratorm8.#";
/// The exchange (`direct`) malformed results are dead-lettered to.
pub const DEAD_LETTER_EXCHANGE: &str = "orchestratorm8.dlx";
/// The queue of dead-lettered results.
pub const DEAD_LETTER_QUEUE: &str = "qorchestratorm8.dlq";
/// The routing key dead letters are published with.
pub const DEAD_LETTER_ROUTING_KEY: &str = RESULT_QUEUE;
/// orchestratorm8's queue of platform notifications (chain stages).
pub const CHAIN_NOTIFY_QUEUE: &str = "qorchestratorm8.notifications";
/// orchestratorm8's queue following the scanners' ring (bootstrap mode).
pub const RING_QUEUE: &str = "qorchestratorm8.ring";
/// The binding of the ring queue: every scanner's kick-off.
pub const RING_KICKOFF_BINDING: &str = "cptm8.*.get.scan";
/// The binding of every platform notification.
pub const NOTIFICATION_BINDING: &str = "app.#";
/// The notification of a completed workflow (`message`).
pub const NOTIFY_COMPLETED_KEY: &str = "app.message.normal";
/// The notification of a failed workflow (`system_error`, severity `high`).
pub const NOTIFY_FAILED_KEY: &str = "app.error.high";

/// The routing key of a stage's job (a scanner's kick-off): `cptm8.<stage>.get.scan`.
pub fn stage_job_key(stage: &str) -> String {
    format!("{EXCHANGE}.{stage}.get.scan")
}

/// The stage of a stage job's routing key `cptm8.<stage>.get.scan` (one non-empty
/// word), if it is one.
pub fn parse_stage_job_key(key: &str) -> Option<&str> {
    key.strip_prefix(EXCHANGE)?
        .strip_prefix('.')?
        .strip_suffix(".get.scan")
        .filter(|s| !s.is_empty() && !s.contains('.'))
}

/// The routing key of a stage's report: `cptm8.orchestratorm8.<stage>.<word>`.
pub fn report_key(stage: &str, word: &str) -> String {
    format!("{REPORT_KEY_PREFIX}{stage}.{word}")
}

/// The routing key of a platform notification: `app.<kind>.<severity>`.
pub fn notification_key(kind: &str, severity: &str) -> String {
    format!("app.{kind}.{severity}")
}

/// A service's work queue: `q<service>`.
pub fn service_queue(service: &str) -> String {
    format!("q{service}")
}

/// The binding of a service's work queue on [`EXCHANGE`]: `cptm8.<service>.#`.
pub fn service_binding(service: &str) -> String {
    format!("{EXCHANGE}.{service}.#")
}

/// The dead-letter queue of `queue`: `<queue>.dlq`.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dlq")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_platforms() {
        assert_eq!(stage_job_key("naabum8"), "cptm8.naabum8.get.scan");
        assert_eq!(
            parse_stage_job_key("cptm8.naabum8.get.scan"),
            Some("naabum8")
        );
        for not in [
            "cptm8..get.scan",
            "cptm8.a.b.get.scan",
            "x.a.get.scan",
            "cptm8.a.get",
        ] {
            assert_eq!(parse_stage_job_key(not), None, "{not}");
        }
        assert_eq!(
            report_key("num8", "failed"),
            "cptm8.orchestratorm8.num8.failed"
        );
        assert_eq!(notification_key("error", "high"), NOTIFY_FAILED_KEY);
        assert_eq!(notification_key("message", "normal"), NOTIFY_COMPLETED_KEY);
        assert_eq!(service_queue("orchestratorm8"), RESULT_QUEUE);
        assert_eq!(dead_letter_queue(RESULT_QUEUE), DEAD_LETTER_QUEUE);
        assert!(crate::topic::matches(
            RING_KICKOFF_BINDING,
            &stage_job_key("asmm8")
        ));
        assert!(crate::topic::matches(
            &service_binding("asmm8"),
            &stage_job_key("asmm8")
        ));
        assert!(crate::topic::matches(
            NOTIFICATION_BINDING,
            NOTIFY_FAILED_KEY
        ));
    }
}
