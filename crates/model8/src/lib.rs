//! `model8`: the CPTM8 data types and their exact wire format.
//!
//! Everything that crosses a process boundary (AMQP bodies, HTTP bodies, database rows
//! seen by callers) is defined here, with golden tests that pin the JSON produced and
//! accepted by the Go services.
//!
//! ```
//! use model8::{AmqpM8Message, StageOutcome, StageResult};
//!
//! // A worker's report, as the Go services would write it.
//! let body = br#"{"channel":"cptm8.orchestratorm8.asmm8.completed",
//!     "payload":{"workflow_id":"6f1c1d0e-8a4b-4c1e-9f7a-2b3c4d5e6f70","stage":"asmm8","attempt":1},
//!     "timestamp":"2025-11-19T10:00:00.123456789+01:00","source":"asmm8"}"#;
//! let msg = AmqpM8Message::<StageResult>::from_slice(body).unwrap();
//! let (stage, outcome) = StageOutcome::parse_routing_key(&msg.channel).unwrap();
//! assert_eq!((stage.as_str(), outcome), ("asmm8", StageOutcome::Completed));
//! assert_eq!(msg.timestamp.to_string(), "2025-11-19T10:00:00.123456789+01:00");
//!
//! // The bootstrap kick-off: no payload, so no "payload" field on the wire.
//! let kickoff: AmqpM8Message = AmqpM8Message::new("cptm8.asmm8.get.scan", None);
//! assert!(!String::from_utf8(kickoff.to_vec().unwrap()).unwrap().contains("payload"));
//! ```
//!
//! The protocol's names ([`routing`]: exchanges, routing keys, queue names), the one AMQP
//! topic matcher ([`topic`]) and the one stage-graph check ([`stage_graph`]) live here,
//! so that every crate builds and checks them alike.
//!
//! Architecture invariant: this crate performs no I/O and depends on no other crate of
//! this workspace. It may only grow types, constructors, validation and (de)serialisation.

/// `as_str`, `Display` and `FromStr` (an error naming `$err` and the accepted names) of
/// an enum from its variants' wire names.
macro_rules! str_enum {
    ($t:ty, $err:literal, $($v:ident => $s:literal),+ $(,)?) => {
        impl $t {
            /// The lower-case name used on the wire (JSON, SQL, URLs, routing keys).
            pub const fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s),+ }
            }
        }
        impl ::std::fmt::Display for $t {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl ::std::str::FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok(Self::$v),)+
                    other => Err(format!(concat!("unknown ", $err, " {:?} (expected one of: {})"),
                        other, [$($s),+].join(", "))),
                }
            }
        }
    };
}

pub mod chain;
mod domain;
mod envelope;
mod notification;
mod replica;
pub mod routing;
pub mod stage_graph;
mod time;
pub mod topic;
mod workflow;

pub use domain::{
    CompanyName, Domain8, DomainName, DomainNameError, MAX_COMPANY_LEN, MAX_NAME_LEN, PostDomain8,
};
pub use envelope::{AmqpM8Message, EnvelopeError, SOURCE_ORCHESTRATORM8};
pub use notification::{
    Notification8, NotificationChannel, NotificationEvent, NotificationMetadata8,
    PLATFORM_NOTIFICATION_BINDING, RoleType, Severity, parse_platform_routing_key,
    platform_routing_key,
};
pub use replica::{ReplicaRole, ReplicaView};
pub use time::GoTime;
pub use workflow::{
    DomainRef, RESULT_QUEUE, RoutingKeyError, StageJob, StageOutcome, StageResult, StageStatus,
    StageView, WorkflowId, WorkflowKind, WorkflowStatus, WorkflowView,
};
