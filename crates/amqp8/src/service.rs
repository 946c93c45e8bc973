//! Building a sibling service's topology and consumer options from its section of the
//! CPTM8 configuration (`ORCHESTRATORM8.<service>`), as the Go services do.

use crate::broker::{BindingDecl, ConsumeOptions, ExchangeDecl, QueueDecl, Topology};

/// The redelivery limit of [`ConsumeOptions::new`].
pub const DEFAULT_MAX_REDELIVERIES: u32 = 5;

impl Topology {
    /// A topic exchange and one queue (no arguments) bound to it by `routing_key`: the
    /// shape of one CPTM8 service section. Arguments are set on `queues[0]`:
    ///
    /// ```
    /// # use amqp8::{ArgValue, Topology};
    /// let mut t = Topology::topic_queue("cptm8", "qasmm8", "cptm8.asmm8.#");
    /// t.queues[0].arguments.insert("x-max-length".into(), ArgValue::Int(1));
    /// assert_eq!(t.bindings[0].routing_key, "cptm8.asmm8.#");
    /// ```
    pub fn topic_queue(exchange: &str, queue: &str, routing_key: &str) -> Topology {
        Topology {
            exchanges: vec![ExchangeDecl {
                name: exchange.to_owned(),
                kind: "topic".to_owned(),
            }],
            queues: vec![QueueDecl {
                name: queue.to_owned(),
                arguments: Default::default(),
            }],
            bindings: vec![BindingDecl {
                exchange: exchange.to_owned(),
                queue: queue.to_owned(),
                routing_key: routing_key.to_owned(),
            }],
        }
    }

    /// The exchange (its kind from `Exchanges`, topic when absent), the queue with its
    /// `Queue-arguments`, and one binding per `Routing-keys` entry of one service
    /// section; `None` when the section does not exist.
    pub fn for_service(
        settings: &config8::OrchestratorSettings,
        service: &str,
    ) -> Option<Topology> {
        let s = settings.queues.get(service)?;
        let kind = settings
            .exchanges
            .get(&s.exchange)
            .copied()
            .unwrap_or_default();
        Some(Topology {
            exchanges: vec![ExchangeDecl {
                name: s.exchange.clone(),
                kind: kind.as_str().to_owned(),
            }],
            queues: vec![QueueDecl {
                name: s.queue.clone(),
                arguments: s.queue_arguments.clone(),
            }],
            bindings: s
                .routing_keys
                .iter()
                .map(|k| BindingDecl {
                    exchange: s.exchange.clone(),
                    queue: s.queue.clone(),
                    routing_key: k.clone(),
                })
                .collect(),
        })
    }
}

impl ConsumeOptions {
    /// Manual ack, at most [`DEFAULT_MAX_REDELIVERIES`] redeliveries, and no
    /// dead-letter target (a message given up on is rejected: the queue's
    /// `x-dead-letter-exchange` gets it, if it has one).
    pub fn new(queue: impl Into<String>, tag: impl Into<String>, prefetch: u16) -> Self {
        ConsumeOptions {
            queue: queue.into(),
            tag: tag.into(),
            prefetch,
            autoack: false,
            max_redeliveries: DEFAULT_MAX_REDELIVERIES,
            dead_letter: None,
        }
    }

    /// The options of a service section: its queue and prefetch (`Queue[1]`,
    /// `Queue[2]`), and the tag and autoack of `Consumer` when given (else tag
    /// `c<queue>`, manual ack).
    pub fn for_service(section: &config8::ServiceQueue) -> Self {
        let mut o = ConsumeOptions::new(
            section.queue.clone(),
            format!("c{}", section.queue),
            section.prefetch,
        );
        if let Some(c) = &section.consumer {
            o.tag = c.tag.clone();
            o.autoack = c.autoack;
        }
        o
    }

    /// Sends messages given up on to `exchange` with `routing_key`, with the reason.
    pub fn dead_letter_to(
        mut self,
        exchange: impl Into<String>,
        routing_key: impl Into<String>,
    ) -> Self {
        self.dead_letter = Some((exchange.into(), routing_key.into()));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ArgValue;

    #[test]
    fn service_section_to_topology_and_options() {
        let yaml = r#"
ORCHESTRATORM8:
  Exchanges: { cptm8: "topic" }
  asmm8:
    Queue: ["cptm8", "qasmm8", 3]
    Routing-keys: ["cptm8.asmm8.#", "cptm8.all.#"]
    Queue-arguments: { "x-max-length": 1, "x-overflow": "reject-publish" }
    Consumer: ["qasmm8", "casmm8", "false"]
"#;
        let loaded = config8::from_yaml_str(yaml, &config8::Env::empty()).unwrap();
        let o = &loaded.settings.orchestrator;
        let t = Topology::for_service(o, "asmm8").unwrap();
        assert_eq!(t.exchanges[0].kind, "topic");
        assert_eq!(t.queues[0].name, "qasmm8");
        assert_eq!(t.queues[0].arguments["x-max-length"], ArgValue::Int(1));
        assert_eq!(t.bindings.len(), 2);
        assert!(Topology::for_service(o, "nope").is_none());
        let c = ConsumeOptions::for_service(&o.queues["asmm8"]).dead_letter_to("dlx", "dead");
        assert_eq!(
            (c.queue.as_str(), c.tag.as_str(), c.prefetch, c.autoack),
            ("qasmm8", "casmm8", 3, false)
        );
        assert_eq!(c.dead_letter, Some(("dlx".into(), "dead".into())));
    }
}
