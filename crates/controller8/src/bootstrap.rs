//! Bootstrap mode: the Go original's behaviour. One kick-off message
//! (`cptm8.asmm8.get.scan`, no payload) when enabled domains appear (none → some),
//! and again only after there were none. Unlike the original, checked at start and
//! on every domain change as well as on every tick.

use amqp8::PublishOutcome;

use crate::engine::Engine;
use crate::engine::dispatcher::StepError;
use crate::engine::protocol::kickoff;
use crate::topology::{KICKOFF_ROUTING_KEY, kickoff_exchange};

/// What one bootstrap check did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// No enabled domain: the next one triggers a kick-off.
    NoDomains,
    /// Domains were already there at the previous check: nothing to do.
    AlreadyKicked,
    /// Domains are enabled but this replica is a standby: the leader kicks off; this
    /// replica kicks off when it becomes the leader (as a restarted Go orchestrator
    /// would).
    Standby,
    /// Kick-off published and confirmed.
    Published,
    /// The kick-off was refused because the asmm8 queue is full: the pipeline is busy,
    /// which is as good as a kick-off.
    Busy,
    /// No queue is bound for the kick-off.
    Unroutable,
}

/// The none → some detector.
#[derive(Debug, Default)]
pub(crate) struct Bootstrap {
    /// Whether the domains found were kicked off already (the complement of Go's
    /// `first`): the next check that finds domains publishes while it is `false`.
    kicked: bool,
    /// Kick-offs this detector decided on (the one being published included): part
    /// of the kick-off's `message_id`, so a publish retried after an error is a copy.
    kickoffs: u64,
}

/// The `message_id` of the `n`-th kick-off (from 1) decided by the process whose
/// claim owner id is `owner` (docs/AMQP.md, "Message identity"):
/// `kickoff:<owner>:<n>`. A kick-off retried after a publish error keeps its id.
pub(crate) fn kickoff_message_id(owner: uuid::Uuid, n: u64) -> String {
    format!("kickoff:{owner}:{n}")
}

impl Bootstrap {
    /// One check. A database or broker failure leaves the detector as it was, so the
    /// check is simply retried.
    pub(crate) async fn check(&mut self, engine: &Engine) -> Result<Check, StepError> {
        if !engine.domains.exists_enabled().await? {
            if self.kicked {
                tracing::info!(
                    "no enabled domain left; the next enabled domain triggers a new kick-off"
                );
                // The previous kick-off is over; the next one is a new message.
                self.kickoffs += 1;
            }
            self.kicked = false;
            return Ok(Check::NoDomains);
        }
        if self.kicked {
            return Ok(Check::AlreadyKicked);
        }
        if !engine.is_leader() {
            // The leader sees the same change and kicks off. `kicked` stays as it is: a
            // standby that becomes the leader (at start-up, on taking the lock, or
            // after a failover) does what a freshly started Go orchestrator does and
            // kicks off once while domains are enabled. Setting `kicked` here lost the
            // kick-off of a replica that starts alone, because it waits out the grace
            // as a standby before it leads.
            return Ok(Check::Standby);
        }
        let exchange = kickoff_exchange(engine.start_settings());
        let id = kickoff_message_id(engine.owner, self.kickoffs + 1);
        let message = kickoff(exchange.clone(), KICKOFF_ROUTING_KEY, id)
            .map_err(|e| amqp8::AmqpError::Encode(e.to_string()))?;
        tracing::info!(%exchange, routing_key = KICKOFF_ROUTING_KEY, "enabled domains found; publishing the asmm8 kick-off");
        let outcome = engine.broker.publish(message).await?;
        self.kicked = true;
        Ok(match outcome {
            PublishOutcome::Confirmed => {
                engine.metrics.bootstrap_kickoff_sent();
                tracing::info!(%exchange, routing_key = KICKOFF_ROUTING_KEY, "kick-off published");
                Check::Published
            }
            PublishOutcome::Nacked => {
                tracing::info!(
                    %exchange, routing_key = KICKOFF_ROUTING_KEY,
                    "kick-off refused: the asmm8 queue is full, the pipeline is busy"
                );
                Check::Busy
            }
            PublishOutcome::Unroutable => {
                tracing::warn!(
                    %exchange, routing_key = KICKOFF_ROUTING_KEY,
                    "kick-off unroutable: no queue is bound for it (check the asmm8 section's Routing-keys)"
                );
                Check::Unroutable
            }
        })
    }
}
