//! A worker that behaves like the Go CPTM8 services (bootstrap mode): it reports
//! nothing to the orchestrator; when its scan is done it kicks off the next stages by
//! publishing their `get.scan` (no payload, `source` = its name), e.g. asmm8 →
//! `cptm8.naabum8.get.scan`, then acks its own message.
//!
//! The next stages default to the stages that depend on this one in `Workflow.stages`
//! (the default pipeline: asmm8 → naabum8 → katanam8 and num8).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use amqp8::{Broker, Decision, Handler, HandlerError, Message, OutgoingMessage, handler_fn};
use config8::Settings;
use model8::AmqpM8Message;
use rand::rngs::StdRng;

use crate::report::{RetryPolicy, publish_confirmed};
use crate::scan::{ScanEnd, ScanSim};

/// Where a finished scan goes next: an exchange and a routing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextStage {
    /// Stage name.
    pub stage: String,
    /// Exchange of its kick-off.
    pub exchange: String,
    /// Routing key of its kick-off, e.g. `cptm8.naabum8.get.scan`.
    pub routing_key: String,
}

impl NextStage {
    /// Stage `name` as `Workflow.stages` configures it (exchange and routing key), else
    /// with the defaults (`cptm8`, `cptm8.<name>.get.scan`).
    pub fn from_settings(settings: &Settings, name: &str) -> Self {
        match settings.stage(name) {
            Some(s) => NextStage {
                stage: name.into(),
                exchange: s.exchange.clone(),
                routing_key: s.routing_key.clone(),
            },
            None => NextStage {
                stage: name.into(),
                exchange: config8::StageSettings::default_exchange(name, &settings.orchestrator),
                routing_key: config8::StageSettings::default_routing_key(name),
            },
        }
    }

    /// The stages that list `stage` in their `depends_on`.
    pub fn after(settings: &Settings, stage: &str) -> Vec<NextStage> {
        settings
            .workflow
            .stages
            .iter()
            .filter(|s| s.depends_on.iter().any(|d| d == stage))
            .map(|s| NextStage::from_settings(settings, &s.name))
            .collect()
    }
}

/// What a [`ChainWorker`] does.
#[derive(Debug, Clone)]
pub struct ChainWorkerConfig {
    /// The worker's name: the `source` of what it publishes.
    pub name: String,
    /// The simulated scan (a failed or lost scan chains to nothing, as a Go service
    /// that failed would).
    pub sim: ScanSim,
    /// Kick-offs published after each successful scan.
    pub next: Vec<NextStage>,
    /// How long to keep trying to publish a kick-off (the next queue may be full:
    /// `x-max-length: 1`, `reject-publish`) before requeueing the message.
    pub retry: RetryPolicy,
}

/// The Go-style worker; turn it into a handler with [`ChainWorker::handler`].
pub struct ChainWorker {
    broker: Arc<dyn Broker>,
    config: ChainWorkerConfig,
    rng: Mutex<StdRng>,
    scans: AtomicU64,
    chained: AtomicU64,
}

impl std::fmt::Debug for ChainWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainWorker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ChainWorker {
    /// A worker publishing through `broker`.
    pub fn new(broker: Arc<dyn Broker>, config: ChainWorkerConfig, rng: StdRng) -> Arc<Self> {
        Arc::new(ChainWorker {
            broker,
            config,
            rng: Mutex::new(rng),
            scans: AtomicU64::new(0),
            chained: AtomicU64::new(0),
        })
    }

    /// This worker as the handler [`amqp8::Broker::consume`] takes.
    pub fn handler(self: &Arc<Self>) -> Arc<dyn Handler> {
        let worker = Arc::clone(self);
        Arc::new(handler_fn(move |m: Message| {
            let worker = Arc::clone(&worker);
            async move { worker.handle(m).await }
        }))
    }

    /// (scans done, kick-offs published) so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.scans.load(Ordering::Relaxed),
            self.chained.load(Ordering::Relaxed),
        )
    }

    /// Handles one message: any CPTM8 envelope (payload or not) starts a scan.
    pub async fn handle(&self, m: Message) -> Result<Decision, HandlerError> {
        let envelope = match AmqpM8Message::<serde_json::Value>::from_slice(&m.body) {
            Ok(e) => e,
            Err(e) => {
                let reason = format!("not a CPTM8 envelope: {e}");
                tracing::warn!(routing_key = %m.routing_key, %reason, "dead-lettering");
                return Ok(Decision::DeadLetter(reason));
            }
        };
        let plan = {
            let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
            self.config.sim.plan(1, &mut *rng)
        };
        tracing::info!(from = %envelope.source, routing_key = %m.routing_key,
            duration = ?plan.duration, "scan started");
        tokio::time::sleep(plan.duration).await;
        self.scans.fetch_add(1, Ordering::Relaxed);
        match plan.end {
            ScanEnd::Completed => {}
            ScanEnd::Failed(error) => {
                tracing::warn!(%error, "scan failed: chaining to nothing (a Go service logs and acks)");
                return Ok(Decision::Ack);
            }
            ScanEnd::Lost => {
                tracing::warn!("simulating a lost scan: acking without chaining");
                return Ok(Decision::Ack);
            }
        }
        for next in &self.config.next {
            let body = AmqpM8Message::<serde_json::Value>::with_source(
                &next.routing_key,
                None,
                &self.config.name,
            )
            .to_vec()
            .map_err(|e| HandlerError(e.to_string()))?;
            let message = OutgoingMessage::new(&next.exchange, &next.routing_key, body);
            if let Err(e) =
                publish_confirmed(self.broker.as_ref(), message, self.config.retry).await
            {
                tracing::error!(error = %e, next = %next.stage,
                    "kick-off not confirmed: returning the message to the queue");
                return Err(HandlerError(e.to_string()));
            }
            self.chained.fetch_add(1, Ordering::Relaxed);
            tracing::info!(next = %next.stage, routing_key = %next.routing_key, "next stage kicked off");
        }
        Ok(Decision::Ack)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amqp8::memory::{MemoryBroker, StoredMessage};
    use amqp8::{BindingDecl, ConsumeOptions, ExchangeDecl, QueueDecl, Topology};
    use std::time::Duration;

    const WAIT: Duration = Duration::from_secs(10);

    #[test]
    fn next_stages_follow_the_pipeline() {
        let s = Settings::default();
        let names = |v: Vec<NextStage>| v.into_iter().map(|n| n.stage).collect::<Vec<_>>();
        assert_eq!(names(NextStage::after(&s, "asmm8")), ["naabum8"]);
        assert_eq!(names(NextStage::after(&s, "naabum8")), ["katanam8", "num8"]);
        assert!(NextStage::after(&s, "num8").is_empty());
        let n = NextStage::from_settings(&s, "naabum8");
        assert_eq!(
            (n.exchange.as_str(), n.routing_key.as_str()),
            ("cptm8", "cptm8.naabum8.get.scan")
        );
    }

    #[tokio::test]
    async fn a_kickoff_without_payload_chains_to_the_next_stages() {
        let b = MemoryBroker::new();
        let q = |n: &str| QueueDecl {
            name: n.into(),
            arguments: Default::default(),
        };
        let bind = |q: &str, k: &str| BindingDecl {
            exchange: "cptm8".into(),
            queue: q.into(),
            routing_key: k.into(),
        };
        b.declare(&Topology {
            exchanges: vec![ExchangeDecl {
                name: "cptm8".into(),
                kind: "topic".into(),
            }],
            queues: vec![q("qnaabum8"), q("qkatanam8"), q("qnum8")],
            bindings: vec![
                bind("qnaabum8", "cptm8.naabum8.#"),
                bind("qkatanam8", "cptm8.katanam8.#"),
                bind("qnum8", "cptm8.num8.#"),
            ],
        })
        .await
        .unwrap();
        let s = Settings::default();
        let w = ChainWorker::new(
            b.as_dyn(),
            ChainWorkerConfig {
                name: "naabum8".into(),
                sim: ScanSim::new(0, 0, 0.0, 0.0, 0).unwrap(),
                next: NextStage::after(&s, "naabum8"),
                retry: RetryPolicy::default(),
            },
            crate::scan::rng(Some(1)),
        );
        let _h = b
            .consume(
                ConsumeOptions {
                    queue: "qnaabum8".into(),
                    tag: "cnaabum8".into(),
                    prefetch: 1,
                    autoack: false,
                    max_redeliveries: 3,
                    dead_letter: None,
                },
                w.handler(),
            )
            .await
            .unwrap();
        b.inject(
            "qnaabum8",
            StoredMessage::new(
                "cptm8",
                "cptm8.naabum8.get.scan",
                br#"{"channel":"cptm8.naabum8.get.scan","payload":null,"timestamp":"2025-11-19T10:00:00Z","source":"asmm8"}"#.to_vec(),
            ),
        )
        .unwrap();
        assert!(
            b.wait_until(WAIT, |b| b.messages_in("qkatanam8").len() == 1
                && b.messages_in("qnum8").len() == 1
                && b.unacked("qnaabum8") == 0)
                .await
        );
        let m = AmqpM8Message::<serde_json::Value>::from_slice(&b.messages_in("qnum8")[0].body)
            .unwrap();
        assert_eq!(
            (m.channel.as_str(), m.source.as_str()),
            ("cptm8.num8.get.scan", "naabum8")
        );
        assert_eq!(m.payload, None);
        assert!(b.messages_in("qnaabum8").is_empty());
        assert_eq!(w.counts(), (1, 2));
    }
}
