//! What a worker declares: its queue as the configuration describes it (the same
//! declaration as orchestratorm8's, so neither side trips over the other's arguments),
//! the exchanges it publishes to, and a dead-letter queue for jobs it cannot read.

use std::collections::BTreeMap;

use amqp8::{ArgValue, BindingDecl, ExchangeDecl, QueueDecl, Topology};
use config8::Settings;
use model8::topic::matches as topic_matches;

/// The exchange (`direct`) the example workers dead-letter unreadable jobs to.
pub const DEAD_LETTER_EXCHANGE: &str = "cptm8.examples.dlx";

/// The worker's queue and how to consume it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerQueue {
    /// Queue name.
    pub queue: String,
    /// Exchange the queue is bound to.
    pub exchange: String,
    /// Binding keys.
    pub bindings: Vec<String>,
    /// `x-` arguments.
    pub arguments: BTreeMap<String, ArgValue>,
    /// Prefetch count.
    pub prefetch: u16,
    /// Consumer tag prefix.
    pub tag: String,
}

impl WorkerQueue {
    /// The queue of the service section `ORCHESTRATORM8.<service>` (exchange, queue,
    /// prefetch, binding keys, arguments, consumer tag), else the CPTM8 convention:
    /// `q<service>` on `cptm8` bound with `cptm8.<service>.#`, prefetch 1, no arguments.
    pub fn from_settings(settings: &Settings, service: &str) -> Self {
        match settings.orchestrator.queues.get(service) {
            Some(s) => WorkerQueue {
                queue: s.queue.clone(),
                exchange: s.exchange.clone(),
                bindings: s.routing_keys.clone(),
                arguments: s.queue_arguments.clone(),
                prefetch: s.prefetch.max(1),
                tag: s
                    .consumer
                    .as_ref()
                    .map_or_else(|| format!("c{service}"), |c| c.tag.clone()),
            },
            None => WorkerQueue {
                queue: model8::routing::service_queue(service),
                exchange: config8::DEFAULT_EXCHANGE.into(),
                bindings: vec![model8::routing::service_binding(service)],
                arguments: BTreeMap::new(),
                prefetch: 1,
                tag: format!("c{service}"),
            },
        }
    }

    /// The dead-letter queue of this worker: `<queue>.dlq`.
    pub fn dead_letter_queue(&self) -> String {
        model8::routing::dead_letter_queue(&self.queue)
    }

    /// Where [`amqp8::ConsumeOptions::dead_letter`] sends unreadable jobs:
    /// ([`DEAD_LETTER_EXCHANGE`], queue name).
    pub fn dead_letter_route(&self) -> (String, String) {
        (DEAD_LETTER_EXCHANGE.into(), self.queue.clone())
    }
}

/// Everything a worker declares: the exchanges of `ORCHESTRATORM8.Exchanges` it uses
/// (its queue's, and each of `publishes_to`, `topic` unless configured otherwise), its
/// queue with its arguments and bindings, and its dead-letter exchange and queue.
pub fn worker_topology(settings: &Settings, q: &WorkerQueue, publishes_to: &[&str]) -> Topology {
    let kind_of = |name: &str| {
        settings
            .orchestrator
            .exchanges
            .get(name)
            .map_or("topic", |k| k.as_str())
            .to_owned()
    };
    let mut exchanges: BTreeMap<String, String> = BTreeMap::new();
    exchanges.insert(q.exchange.clone(), kind_of(&q.exchange));
    for e in publishes_to {
        exchanges.insert((*e).to_owned(), kind_of(e));
    }
    let mut t = Topology {
        exchanges: exchanges
            .into_iter()
            .map(|(name, kind)| ExchangeDecl { name, kind })
            .collect(),
        queues: vec![
            QueueDecl {
                name: q.queue.clone(),
                arguments: q.arguments.clone(),
            },
            QueueDecl {
                name: q.dead_letter_queue(),
                arguments: BTreeMap::new(),
            },
        ],
        bindings: q
            .bindings
            .iter()
            .map(|k| BindingDecl {
                exchange: q.exchange.clone(),
                queue: q.queue.clone(),
                routing_key: k.clone(),
            })
            .collect(),
    };
    t.exchanges.push(ExchangeDecl {
        name: DEAD_LETTER_EXCHANGE.into(),
        kind: "direct".into(),
    });
    t.bindings.push(BindingDecl {
        exchange: DEAD_LETTER_EXCHANGE.into(),
        queue: q.dead_letter_queue(),
        routing_key: q.queue.clone(),
    });
    t
}

/// A warning when the managed-mode jobs of `stage` (its configured exchange and routing
/// key) would not reach queue `q`: e.g. the Go template binds `qnum8` with
/// `cptm8.qnum8.#`, which `cptm8.num8.get.scan` does not match.
pub fn unreachable_stage_warning(
    settings: &Settings,
    stage: &str,
    q: &WorkerQueue,
) -> Option<String> {
    let s = settings.stage(stage)?;
    let reached =
        s.exchange == q.exchange && q.bindings.iter().any(|b| topic_matches(b, &s.routing_key));
    (!reached).then(|| {
        format!(
            "stage {stage} jobs are published to exchange {:?} with routing key {:?}, but queue {:?} is bound to exchange {:?} with {:?} only: they will not reach this worker (fix ORCHESTRATORM8.{stage}.Routing-keys or Workflow.stages)",
            s.exchange, s.routing_key, q.queue, q.exchange, q.bindings
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_patterns() {
        for (p, k, m) in [
            ("cptm8.asmm8.#", "cptm8.asmm8.get.scan", true),
            ("cptm8.asmm8.#", "cptm8.asmm8", true),
            ("cptm8.*.get.scan", "cptm8.num8.get.scan", true),
            ("cptm8.*", "cptm8.num8.get", false),
            ("cptm8.qnum8.#", "cptm8.num8.get.scan", false),
            ("#", "anything.at.all", true),
            ("a.#.z", "a.z", true),
            ("a.#.z", "a.b.c.z", true),
            ("a.#.z", "a.b.c", false),
            ("a.b", "a.b", true),
            ("a.b", "a.b.c", false),
        ] {
            assert_eq!(topic_matches(p, k), m, "{p} vs {k}");
        }
    }

    fn managed() -> Settings {
        config8::from_yaml_str(
            r#"
ORCHESTRATORM8:
  Exchanges: { cptm8: topic }
  asmm8:
    Queue: [cptm8, qasmm8, 2]
    Routing-keys: ["cptm8.asmm8.#"]
    Queue-arguments: { "x-max-length": 1, "x-overflow": "reject-publish" }
    Consumer: [qasmm8, casmm8, "false"]
  num8:
    Queue: [cptm8, qnum8, 1]
    Routing-keys: ["cptm8.qnum8.#"]
Scheduler: { mode: managed }
"#,
            &config8::Env::empty(),
        )
        .unwrap()
        .settings
    }

    #[test]
    fn queue_comes_from_the_service_section() {
        let s = managed();
        let q = WorkerQueue::from_settings(&s, "asmm8");
        assert_eq!(q.queue, "qasmm8");
        assert_eq!(q.prefetch, 2);
        assert_eq!(q.tag, "casmm8");
        assert_eq!(q.arguments["x-max-length"], ArgValue::Int(1));
        let t = worker_topology(&s, &q, &["cptm8"]);
        let names: Vec<_> = t.queues.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(names, ["qasmm8", "qasmm8.dlq"]);
        assert!(t.bindings.contains(&BindingDecl {
            exchange: DEAD_LETTER_EXCHANGE.into(),
            queue: "qasmm8.dlq".into(),
            routing_key: "qasmm8".into()
        }));
        assert_eq!(unreachable_stage_warning(&s, "asmm8", &q), None);
    }

    #[test]
    fn convention_without_a_section_and_a_warning_for_unbound_jobs() {
        let s = managed();
        let q = WorkerQueue::from_settings(&s, "katanam8");
        assert_eq!(
            (q.queue.as_str(), q.bindings.as_slice(), q.prefetch),
            ("qkatanam8", &["cptm8.katanam8.#".to_owned()][..], 1)
        );
        let num8 = WorkerQueue::from_settings(&s, "num8");
        let w = unreachable_stage_warning(&s, "num8", &num8).unwrap();
        assert!(
            w.contains("cptm8.num8.get.scan") && w.contains("qnum8"),
            "{w}"
        );
    }
}
