//! `model8`: the CPTM8 data types and their exact wire format.
//!
//! Everything that crosses a process boundary (AMQP bodies, HTTP bodies, database rows
//! seen by callers) is defined here, with golden tests that pin the JSON produced and
//! accepted by the Go services.
//!
//! Architecture invariant: this crate performs no I/O and depends on no other crate of
//! this workspace. It may only grow types, constructors, validation and (de)serialisation.

mod domain;
mod envelope;
mod notification;
mod time;
mod workflow;

pub use domain::{CompanyName, Domain8, DomainName, DomainNameError, PostDomain8};
pub use envelope::{AmqpM8Message, EnvelopeError, SOURCE_ORCHESTRATORM8};
pub use notification::{
    Notification8, NotificationChannel, NotificationEvent, NotificationMetadata8, RoleType,
};
pub use time::GoTime;
pub use workflow::{
    DomainRef, RESULT_QUEUE, RoutingKeyError, StageJob, StageOutcome, StageResult, StageStatus,
    StageView, WorkflowId, WorkflowStatus, WorkflowView,
};
