//! `Notification8`, the body the `notification` exchange carries (Go `model8.Notification8`).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::time::GoTime;

/// What a notification is about (Go `Notificationevent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationEvent {
    /// A chat-style message.
    Message,
    /// A security discovery.
    Security,
    /// An application error.
    SystemError,
    /// An application warning.
    SystemWarning,
}

/// Where a notification is delivered (Go `Notificationchannel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotificationChannel {
    /// In the application.
    App,
    /// By e-mail.
    Email,
    /// By SMS.
    Sms,
}

/// The role of the notified user (Go `Roletype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoleType {
    /// A standard user.
    User,
    /// An administrator.
    Admin,
}

/// Optional details of a notification (Go `NotificationMetadata8`); every field is
/// omitted from the JSON when empty.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NotificationMetadata8 {
    /// Chat room.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub room: String,
    /// Path in the web application the notification links to.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub relativepath: String,
    /// Sender's user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub senderid: Option<Uuid>,
    /// Sender's display name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sendername: String,
    /// Sender's e-mail address.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub senderemail: String,
    /// Sender's picture.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub senderimage: String,
    /// Severity, free text (`info`, `high`, ...).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub severity: String,
    /// Delivery channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channeltype: Option<NotificationChannel>,
    /// Event type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eventtype: Option<NotificationEvent>,
}

/// A notification (Go `Notification8`). As in Go, `metadata` is always written (a Go
/// struct is never omitted), `read` only when true.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification8 {
    /// Notification id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    /// Addressed user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userid: Option<Uuid>,
    /// Addressed role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userrole: Option<RoleType>,
    /// What it is about.
    #[serde(rename = "type")]
    pub kind: NotificationEvent,
    /// Human-readable text.
    pub message: String,
    /// Details.
    #[serde(default)]
    pub metadata: NotificationMetadata8,
    /// Whether it was read.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read: bool,
    /// When it was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<GoTime>,
}

impl Notification8 {
    /// A notification of the given kind with a message and nothing else.
    pub fn new(kind: NotificationEvent, message: impl Into<String>) -> Self {
        Notification8 {
            id: None,
            userid: None,
            userrole: None,
            kind,
            message: message.into(),
            metadata: NotificationMetadata8::default(),
            read: false,
            created_at: None,
        }
    }
}

/// A platform notification's severity (the last word of its routing key and
/// `metadata.severity`). The platform sends e-mail for `high`, `urgent` and `critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Informational.
    Normal,
    /// Needs attention (e-mailed).
    High,
    /// Needs attention soon (e-mailed).
    Urgent,
    /// Needs attention now (e-mailed).
    Critical,
}

impl Severity {
    /// Every severity, mildest first.
    pub const ALL: [Severity; 4] = [
        Severity::Normal,
        Severity::High,
        Severity::Urgent,
        Severity::Critical,
    ];

    /// Parses a wire name (`normal`, `high`, `urgent`, `critical`).
    pub fn parse(s: &str) -> Option<Severity> {
        s.parse().ok()
    }
}

str_enum!(Severity, "severity",
    Normal => "normal", High => "high", Urgent => "urgent", Critical => "critical");

/// The binding that receives every platform notification on the `notification`
/// exchange.
pub const PLATFORM_NOTIFICATION_BINDING: &str = crate::routing::NOTIFICATION_BINDING;

/// The routing key of a platform notification (CONTRACT 3, CPTM8-PLATFORM.md):
/// `app.error.<severity>` for `system_error`, `app.warning.<severity>` for
/// `system_warning`, `app.security.<severity>` for `security` and always
/// `app.message.normal` for `message`.
pub fn platform_routing_key(kind: NotificationEvent, severity: Severity) -> String {
    match kind {
        NotificationEvent::SystemError => {
            crate::routing::notification_key("error", severity.as_str())
        }
        NotificationEvent::SystemWarning => {
            crate::routing::notification_key("warning", severity.as_str())
        }
        NotificationEvent::Security => {
            crate::routing::notification_key("security", severity.as_str())
        }
        NotificationEvent::Message => crate::routing::NOTIFY_COMPLETED_KEY.to_owned(),
    }
}

/// Splits a platform notification routing key (`app.<error|warning|security|message>.<severity>`)
/// into its event type and severity; `None` for any other key.
pub fn parse_platform_routing_key(key: &str) -> Option<(NotificationEvent, Severity)> {
    let rest = key.strip_prefix("app.")?;
    let (kind, severity) = rest.split_once('.')?;
    let kind = match kind {
        "error" => NotificationEvent::SystemError,
        "warning" => NotificationEvent::SystemWarning,
        "security" => NotificationEvent::Security,
        "message" => NotificationEvent::Message,
        _ => return None,
    };
    Some((kind, Severity::parse(severity)?))
}

impl Notification8 {
    /// A notification as the platform's consumer (socketm8, the dashboard) reads it:
    /// `userrole: admin`, `metadata: {severity, channeltype: "app", eventtype: <kind>}`.
    /// A `message` is always of severity `normal`. Publish it on
    /// [`Notification8::platform_routing_key`].
    pub fn platform(
        kind: NotificationEvent,
        severity: Severity,
        message: impl Into<String>,
    ) -> Self {
        let severity = if kind == NotificationEvent::Message {
            Severity::Normal
        } else {
            severity
        };
        let mut n = Notification8::new(kind, message);
        n.userrole = Some(RoleType::Admin);
        n.metadata.severity = severity.as_str().to_owned();
        n.metadata.channeltype = Some(NotificationChannel::App);
        n.metadata.eventtype = Some(kind);
        n
    }

    /// The routing key this notification goes out with on the `notification` exchange,
    /// from its type and `metadata.severity` (an unknown or empty severity counts as
    /// `normal`).
    pub fn platform_routing_key(&self) -> String {
        let severity = Severity::parse(&self.metadata.severity).unwrap_or(Severity::Normal);
        platform_routing_key(self.kind, severity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_minimal_like_go() {
        let n = Notification8::new(NotificationEvent::SystemError, "workflow failed");
        assert_eq!(
            serde_json::to_string(&n).unwrap(),
            r#"{"type":"system_error","message":"workflow failed","metadata":{}}"#
        );
    }

    #[test]
    fn golden_full() {
        let id = Uuid::parse_str("6f1c1d0e-8a4b-4c1e-9f7a-2b3c4d5e6f70").unwrap();
        let mut n = Notification8::new(NotificationEvent::Message, "done");
        n.id = Some(id);
        n.userrole = Some(RoleType::Admin);
        n.read = true;
        n.metadata.severity = "info".into();
        n.metadata.channeltype = Some(NotificationChannel::App);
        n.metadata.eventtype = Some(NotificationEvent::SystemWarning);
        n.created_at = Some("2025-11-19T10:00:00.5+01:00".parse().unwrap());
        assert_eq!(
            serde_json::to_string(&n).unwrap(),
            r#"{"id":"6f1c1d0e-8a4b-4c1e-9f7a-2b3c4d5e6f70","userrole":"admin","type":"message","message":"done","metadata":{"severity":"info","channeltype":"app","eventtype":"system_warning"},"read":true,"created_at":"2025-11-19T10:00:00.5+01:00"}"#
        );
        let back: Notification8 =
            serde_json::from_str(&serde_json::to_string(&n).unwrap()).unwrap();
        assert_eq!(back, n);
    }

    #[test]
    fn unknown_event_type_is_rejected() {
        assert!(serde_json::from_str::<Notification8>(r#"{"type":"spam","message":"x"}"#).is_err());
    }

    #[test]
    fn golden_platform_notifications() {
        let n = Notification8::platform(
            NotificationEvent::SystemError,
            Severity::High,
            "orchestratorm8: stage naabum8 failed",
        );
        assert_eq!(n.platform_routing_key(), "app.error.high");
        assert_eq!(
            serde_json::to_string(&n).unwrap(),
            r#"{"userrole":"admin","type":"system_error","message":"orchestratorm8: stage naabum8 failed","metadata":{"severity":"high","channeltype":"app","eventtype":"system_error"}}"#
        );
        let n = Notification8::platform(NotificationEvent::SystemWarning, Severity::Normal, "w");
        assert_eq!(n.platform_routing_key(), "app.warning.normal");
        assert_eq!(
            serde_json::to_string(&n).unwrap(),
            r#"{"userrole":"admin","type":"system_warning","message":"w","metadata":{"severity":"normal","channeltype":"app","eventtype":"system_warning"}}"#
        );
        // A message is always app.message.normal, whatever severity was asked for.
        let n = Notification8::platform(NotificationEvent::Message, Severity::Critical, "done");
        assert_eq!(n.platform_routing_key(), "app.message.normal");
        assert_eq!(
            serde_json::to_string(&n).unwrap(),
            r#"{"userrole":"admin","type":"message","message":"done","metadata":{"severity":"normal","channeltype":"app","eventtype":"message"}}"#
        );
    }

    #[test]
    fn platform_routing_keys_round_trip() {
        for kind in [
            NotificationEvent::SystemError,
            NotificationEvent::SystemWarning,
            NotificationEvent::Security,
        ] {
            for sev in Severity::ALL {
                let key = platform_routing_key(kind, sev);
                assert_eq!(parse_platform_routing_key(&key), Some((kind, sev)), "{key}");
            }
        }
        assert_eq!(
            parse_platform_routing_key("app.message.normal"),
            Some((NotificationEvent::Message, Severity::Normal))
        );
        for bad in [
            "app.error",
            "app.error.info",
            "app.spam.high",
            "notification.orchestratorm8.workflow.failed",
            "app.error.high.x",
            "",
        ] {
            assert_eq!(parse_platform_routing_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn decodes_a_go_platform_notification() {
        let n: Notification8 = serde_json::from_str(
            r#"{"userrole":"admin","type":"system_error","message":"database down","metadata":{"severity":"urgent","channeltype":"app","eventtype":"system_error"}}"#,
        )
        .unwrap();
        assert_eq!(n.platform_routing_key(), "app.error.urgent");
        assert_eq!(n.message, "database down");
    }
}
