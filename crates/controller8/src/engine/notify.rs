//! Workflow notifications on the `notification` exchange, as the platform's own
//! consumer (socketm8, the dashboard) reads them (CONTRACT 3): a `message` on
//! `app.message.normal` when a workflow completes, a `system_error` on `app.error.high`
//! when one fails. The body is the usual envelope with a Go `Notification8` payload,
//! `userrole: admin`, `metadata: {severity, channeltype: "app", eventtype}`.
//!
//! They are not published here: the transition that ends a workflow writes the fact
//! into the outbox in its own transaction, and [`crate::outbox`] turns it into the
//! notification below and relays it.

use model8::{Notification8, NotificationEvent, Severity, WorkflowId};

/// How a workflow ended, for its notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Every stage completed.
    Completed,
    /// `stage` failed at `attempt` with no attempt left.
    Failed {
        /// The stage.
        stage: String,
        /// Its last attempt.
        attempt: u32,
        /// What happened (a worker's detail or "timed out").
        reason: String,
    },
}

/// The notification for `ending` of workflow `id` over `domains`.
pub(crate) fn notification(id: WorkflowId, domains: &[String], ending: &Ending) -> Notification8 {
    let over = match domains {
        [] => String::new(),
        [one] => format!(" for {one}"),
        many if many.len() <= 5 => format!(" for {}", many.join(", ")),
        many => format!(" for {} domains", many.len()),
    };
    match ending {
        Ending::Completed => Notification8::platform(
            NotificationEvent::Message,
            Severity::Normal,
            format!("orchestratorm8: workflow {id}{over} completed"),
        ),
        Ending::Failed {
            stage,
            attempt,
            reason,
        } => Notification8::platform(
            NotificationEvent::SystemError,
            Severity::High,
            format!(
                "orchestratorm8: workflow {id}{over} failed: stage {stage} failed at attempt {attempt} ({reason})"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_workflow_domains_and_cause() {
        let id = uuid::Uuid::nil();
        let n = notification(id, &["example.com".into()], &Ending::Completed);
        assert_eq!(n.kind, NotificationEvent::Message);
        assert_eq!(
            n.platform_routing_key(),
            crate::topology::NOTIFY_COMPLETED_KEY
        );
        assert_eq!(n.userrole, Some(model8::RoleType::Admin));
        assert!(
            n.message.contains("example.com") && n.message.contains("completed"),
            "{}",
            n.message
        );
        let n = notification(
            id,
            &(0..9).map(|i| format!("d{i}.com")).collect::<Vec<_>>(),
            &Ending::Failed {
                stage: "naabum8".into(),
                attempt: 3,
                reason: "timed out after 2h".into(),
            },
        );
        assert_eq!(n.kind, NotificationEvent::SystemError);
        assert_eq!(n.metadata.severity, "high");
        assert_eq!(n.platform_routing_key(), crate::topology::NOTIFY_FAILED_KEY);
        assert!(
            n.message.contains("9 domains")
                && n.message.contains("naabum8")
                && n.message.contains("attempt 3")
                && n.message.contains("timed out"),
            "{}",
            n.message
        );
        let json = serde_json::to_value(&n).unwrap();
        assert_eq!(json["type"], "system_error");
        assert_eq!(json["metadata"]["channeltype"], "app");
        assert_eq!(json["metadata"]["eventtype"], "system_error");
    }
}
