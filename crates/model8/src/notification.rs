//! `Notification8`, the body the `notification` exchange carries (Go `model8.Notification8`).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::time::GoTime;

/// What a notification is about (Go `Notificationevent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NotificationEvent {
    /// A chat-style message.
    #[serde(rename = "message")]
    Message,
    /// A security discovery.
    #[serde(rename = "security")]
    Security,
    /// An application error.
    #[serde(rename = "system_error")]
    SystemError,
    /// An application warning.
    #[serde(rename = "system_warning")]
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
}
