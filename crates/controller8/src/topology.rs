//! The RabbitMQ objects orchestratorm8 declares at start (documented in
//! `docs/ENGINE.md`): every exchange of `ORCHESTRATORM8.Exchanges`, every service
//! section's queue with its arguments and bindings, and in managed mode the
//! orchestrator's own result queue and its dead-letter queue.

use std::collections::{BTreeMap, BTreeSet};

use amqp8::{ArgValue, BindingDecl, ExchangeDecl, QueueDecl, Topology};
use config8::{SchedulerMode, Settings};
use model8::RESULT_QUEUE;

/// The exchange stage workers report results on (CONTRACT section 3).
pub const RESULT_EXCHANGE: &str = model8::routing::EXCHANGE;
/// The binding of [`RESULT_QUEUE`] to [`RESULT_EXCHANGE`].
pub const RESULT_BINDING: &str = model8::routing::RESULT_BINDING;
/// The exchange (`direct`) malformed results are dead-lettered to.
pub const DEAD_LETTER_EXCHANGE: &str = model8::routing::DEAD_LETTER_EXCHANGE;
/// The queue holding dead-lettered results, bound to [`DEAD_LETTER_EXCHANGE`] with
/// [`DEAD_LETTER_ROUTING_KEY`].
pub const DEAD_LETTER_QUEUE: &str = model8::routing::DEAD_LETTER_QUEUE;
/// The routing key dead letters are published with.
pub const DEAD_LETTER_ROUTING_KEY: &str = model8::routing::DEAD_LETTER_ROUTING_KEY;
/// The exchange workflow notifications go to.
pub const NOTIFICATION_EXCHANGE: &str = model8::routing::NOTIFICATION_EXCHANGE;
/// Routing key of the notification sent when a workflow completes: the platform's
/// `app.message.normal` (type `message`).
pub const NOTIFY_COMPLETED_KEY: &str = model8::routing::NOTIFY_COMPLETED_KEY;
/// Routing key of the notification sent when a workflow fails: the platform's
/// `app.error.high` (type `system_error`, severity `high`, e-mailed by the platform).
pub const NOTIFY_FAILED_KEY: &str = model8::routing::NOTIFY_FAILED_KEY;
/// The orchestrator's own queue of platform notifications (`app.#` on
/// [`NOTIFICATION_EXCHANGE`]), declared in managed mode when a stage has `protocol:
/// chain`. No length limit and no overflow policy (a `reject-publish` queue on a shared
/// routing key makes the broker nack publishes other queues received); messages
/// expire after [`CHAIN_NOTIFY_TTL_MS`], as only the last seconds matter.
pub const CHAIN_NOTIFY_QUEUE: &str = model8::routing::CHAIN_NOTIFY_QUEUE;
/// `x-message-ttl` of [`CHAIN_NOTIFY_QUEUE`] (1 min): notifications waiting while no
/// orchestrator consumes are dropped, not piled up.
pub const CHAIN_NOTIFY_TTL_MS: i64 = 60_000;
/// Bootstrap mode with `Scheduler.observe`: the orchestrator's own queue following the
/// scanners' ring (durable, no length limit, so it never refuses a publish).
pub const RING_QUEUE: &str = model8::routing::RING_QUEUE;
/// The exchange the scanners' kick-offs and chain messages go through.
pub const RING_EXCHANGE: &str = model8::routing::EXCHANGE;
/// The binding of [`RING_QUEUE`] on [`RING_EXCHANGE`] (and on the kick-off exchange):
/// every scanner's kick-off.
pub const RING_KICKOFF_BINDING: &str = model8::routing::RING_KICKOFF_BINDING;
/// Routing key of the bootstrap kick-off.
pub const KICKOFF_ROUTING_KEY: &str = "cptm8.asmm8.get.scan";
/// The service section whose `Queue[0]` names the kick-off's exchange.
pub const KICKOFF_SECTION: &str = "asmm8";

/// The exchange of the bootstrap kick-off: the `asmm8` section's `Queue[0]`, else
/// `cptm8`.
pub fn kickoff_exchange(settings: &Settings) -> String {
    settings
        .orchestrator
        .queues
        .get(KICKOFF_SECTION)
        .map_or_else(
            || config8::DEFAULT_EXCHANGE.to_owned(),
            |q| q.exchange.clone(),
        )
}

/// Whether a stage of the pipeline has `protocol: chain`.
pub fn has_chain_stage(settings: &Settings) -> bool {
    settings
        .workflow
        .stages
        .iter()
        .any(|s| s.protocol == config8::StageProtocol::Chain)
}

/// Everything to declare for `settings`.
///
/// - every exchange of `ORCHESTRATORM8.Exchanges` with its kind;
/// - every exchange a service section, a stage or the orchestrator itself uses but
///   that list omits, as `topic` (the CPTM8 convention);
/// - every service section's queue (durable, `Queue-arguments` as given) bound with
///   each of its `Routing-keys`; a queue named by two sections is declared once, with
///   the first section's (alphabetical) arguments;
/// - managed mode only: [`RESULT_QUEUE`] bound to [`RESULT_EXCHANGE`] with
///   [`RESULT_BINDING`] (its dead letters going to [`DEAD_LETTER_EXCHANGE`]), unless a
///   service section declares that queue itself (then as configured, plus the
///   binding), and [`DEAD_LETTER_QUEUE`] bound to [`DEAD_LETTER_EXCHANGE`]; with a
///   chain stage, [`CHAIN_NOTIFY_QUEUE`] bound to [`NOTIFICATION_EXCHANGE`] with `app.#`;
/// - bootstrap mode with `Scheduler.observe`: [`RING_QUEUE`] bound with
///   [`RING_KICKOFF_BINDING`] on [`RING_EXCHANGE`] (and the kick-off's exchange) and
///   with `app.#` on [`NOTIFICATION_EXCHANGE`].
pub fn topology(settings: &Settings) -> Topology {
    let o = &settings.orchestrator;
    let mut d = Decls {
        exchanges: o
            .exchanges
            .iter()
            .map(|(n, k)| (n.clone(), k.as_str().to_owned()))
            .collect(),
        ..Decls::default()
    };
    for section in o.queues.values() {
        d.topic(&section.exchange);
        d.queue(&section.queue, section.queue_arguments.clone());
        for key in &section.routing_keys {
            d.bind(&section.exchange, &section.queue, key);
        }
    }
    if settings.scheduler.mode == SchedulerMode::Managed {
        for s in &settings.workflow.stages {
            d.topic(&s.exchange);
        }
        d.topic(RESULT_EXCHANGE);
        d.topic(NOTIFICATION_EXCHANGE);
        d.exchanges
            .insert(DEAD_LETTER_EXCHANGE.into(), "direct".into());
        let dead_letters = [
            ("x-dead-letter-exchange", DEAD_LETTER_EXCHANGE),
            ("x-dead-letter-routing-key", DEAD_LETTER_ROUTING_KEY),
        ];
        d.queue(
            RESULT_QUEUE,
            dead_letters
                .map(|(k, v)| (k.to_owned(), ArgValue::Str(v.into())))
                .into(),
        );
        d.bind(RESULT_EXCHANGE, RESULT_QUEUE, RESULT_BINDING);
        d.queue(DEAD_LETTER_QUEUE, BTreeMap::new());
        d.bind(
            DEAD_LETTER_EXCHANGE,
            DEAD_LETTER_QUEUE,
            DEAD_LETTER_ROUTING_KEY,
        );
        if has_chain_stage(settings) {
            let ttl = (
                "x-message-ttl".to_owned(),
                ArgValue::Int(CHAIN_NOTIFY_TTL_MS),
            );
            if d.queue(CHAIN_NOTIFY_QUEUE, BTreeMap::from([ttl])) {
                let all = model8::PLATFORM_NOTIFICATION_BINDING;
                d.bind(NOTIFICATION_EXCHANGE, CHAIN_NOTIFY_QUEUE, all);
            }
        }
    } else {
        let kickoff = kickoff_exchange(settings);
        d.topic(&kickoff);
        if settings.scheduler.observe {
            d.topic(RING_EXCHANGE);
            d.topic(NOTIFICATION_EXCHANGE);
            d.queue(RING_QUEUE, BTreeMap::new());
            for e in BTreeSet::from([RING_EXCHANGE, kickoff.as_str()]) {
                d.bind(e, RING_QUEUE, RING_KICKOFF_BINDING);
            }
            let all = model8::PLATFORM_NOTIFICATION_BINDING;
            d.bind(NOTIFICATION_EXCHANGE, RING_QUEUE, all);
        }
    }
    Topology {
        exchanges: d
            .exchanges
            .into_iter()
            .map(|(name, kind)| ExchangeDecl { name, kind })
            .collect(),
        queues: d.queues,
        bindings: d
            .bindings
            .into_iter()
            .map(|(exchange, queue, routing_key)| BindingDecl {
                exchange,
                queue,
                routing_key,
            })
            .collect(),
    }
}

/// The declarations of [`topology`] being gathered: exchanges and bindings sorted and
/// once each, queues in the order first named.
#[derive(Default)]
struct Decls {
    exchanges: BTreeMap<String, String>,
    queues: Vec<QueueDecl>,
    bindings: BTreeSet<(String, String, String)>,
}

impl Decls {
    /// Exchange `name`, as `topic` unless it is already known.
    fn topic(&mut self, name: &str) {
        self.exchanges
            .entry(name.to_owned())
            .or_insert_with(|| "topic".into());
    }

    /// Queue `name` with `arguments`, unless it is already declared (`false`).
    fn queue(&mut self, name: &str, arguments: BTreeMap<String, ArgValue>) -> bool {
        let new = self.queues.iter().all(|q| q.name != name);
        if new {
            self.queues.push(QueueDecl {
                name: name.to_owned(),
                arguments,
            });
        }
        new
    }

    /// Binding of `queue` to `exchange` by `routing_key`.
    fn bind(&mut self, exchange: &str, queue: &str, routing_key: &str) {
        self.bindings
            .insert((exchange.into(), queue.into(), routing_key.into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use config8::{ExchangeKind, ServiceQueue};

    fn section(exchange: &str, queue: &str, keys: &[&str]) -> ServiceQueue {
        ServiceQueue {
            exchange: exchange.into(),
            queue: queue.into(),
            prefetch: 1,
            routing_keys: keys.iter().map(|k| k.to_string()).collect(),
            queue_arguments: BTreeMap::from([
                ("x-max-length".to_owned(), ArgValue::Int(1)),
                (
                    "x-overflow".to_owned(),
                    ArgValue::Str("reject-publish".into()),
                ),
            ]),
            consumer: None,
        }
    }

    fn go_like() -> Settings {
        let mut s = Settings::default();
        s.orchestrator.queues.insert(
            "asmm8".into(),
            section("cptm8", "qasmm8", &["cptm8.asmm8.#"]),
        );
        s.orchestrator.queues.insert(
            "reportingm8".into(),
            section("scheduler", "qreportingm8", &["scheduler.qreportingm8.#"]),
        );
        s
    }

    #[test]
    fn bootstrap_observing_adds_its_ring_queue_bound_to_kickoffs_and_notifications() {
        let t = topology(&go_like());
        let q: Vec<_> = t.queues.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(q, ["qasmm8", "qreportingm8", RING_QUEUE]);
        // No length limit: it never refuses a publish that other queues took.
        assert!(t.queues[2].arguments.is_empty());
        for (exchange, key) in [("cptm8", "cptm8.*.get.scan"), ("notification", "app.#")] {
            assert!(t.bindings.contains(&BindingDecl {
                exchange: exchange.into(),
                queue: RING_QUEUE.into(),
                routing_key: key.into()
            }));
        }
        assert_eq!(t.bindings.len(), 4);
    }

    #[test]
    fn bootstrap_declares_the_sections_but_no_result_queue() {
        let mut s = go_like();
        s.scheduler.observe = false;
        let t = topology(&s);
        let ex: Vec<_> = t
            .exchanges
            .iter()
            .map(|e| (e.name.as_str(), e.kind.as_str()))
            .collect();
        assert_eq!(
            ex,
            [
                ("cptm8", "topic"),
                ("notification", "topic"),
                ("scheduler", "topic")
            ]
        );
        let q: Vec<_> = t.queues.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(q, ["qasmm8", "qreportingm8"]);
        assert_eq!(t.queues[0].arguments["x-max-length"], ArgValue::Int(1));
        assert!(t.bindings.contains(&BindingDecl {
            exchange: "scheduler".into(),
            queue: "qreportingm8".into(),
            routing_key: "scheduler.qreportingm8.#".into()
        }));
        assert_eq!(t.bindings.len(), 2);
    }

    #[test]
    fn managed_adds_result_and_dead_letter_queues() {
        let mut s = go_like();
        s.scheduler.mode = SchedulerMode::Managed;
        s.orchestrator
            .exchanges
            .insert("cptm8".into(), ExchangeKind::Direct);
        let t = topology(&s);
        assert!(t.exchanges.contains(&ExchangeDecl {
            name: DEAD_LETTER_EXCHANGE.into(),
            kind: "direct".into()
        }));
        // a configured kind is kept
        assert!(t.exchanges.contains(&ExchangeDecl {
            name: "cptm8".into(),
            kind: "direct".into()
        }));
        let rq = t.queues.iter().find(|q| q.name == RESULT_QUEUE).unwrap();
        assert_eq!(
            rq.arguments["x-dead-letter-exchange"],
            ArgValue::Str(DEAD_LETTER_EXCHANGE.into())
        );
        assert!(t.queues.iter().any(|q| q.name == DEAD_LETTER_QUEUE));
        for (e, q, k) in [
            (RESULT_EXCHANGE, RESULT_QUEUE, RESULT_BINDING),
            (
                DEAD_LETTER_EXCHANGE,
                DEAD_LETTER_QUEUE,
                DEAD_LETTER_ROUTING_KEY,
            ),
        ] {
            assert!(t.bindings.contains(&BindingDecl {
                exchange: e.into(),
                queue: q.into(),
                routing_key: k.into()
            }));
        }
    }

    #[test]
    fn a_chain_stage_adds_a_notification_queue_without_limits() {
        let mut s = go_like();
        s.scheduler.mode = SchedulerMode::Managed;
        assert!(
            !topology(&s)
                .queues
                .iter()
                .any(|q| q.name == CHAIN_NOTIFY_QUEUE)
        );
        s.workflow.stages[1].protocol = config8::StageProtocol::Chain;
        let t = topology(&s);
        let q = t
            .queues
            .iter()
            .find(|q| q.name == CHAIN_NOTIFY_QUEUE)
            .unwrap();
        assert_eq!(
            q.arguments.keys().collect::<Vec<_>>(),
            ["x-message-ttl"],
            "no x-max-length, no x-overflow"
        );
        assert!(t.bindings.contains(&BindingDecl {
            exchange: NOTIFICATION_EXCHANGE.into(),
            queue: CHAIN_NOTIFY_QUEUE.into(),
            routing_key: "app.#".into()
        }));
    }

    #[test]
    fn a_configured_result_queue_keeps_its_arguments() {
        let mut s = go_like();
        s.scheduler.mode = SchedulerMode::Managed;
        s.orchestrator.queues.insert(
            "orchestratorm8".into(),
            section("cptm8", RESULT_QUEUE, &["cptm8.orchestratorm8.#"]),
        );
        let t = topology(&s);
        let rq: Vec<_> = t.queues.iter().filter(|q| q.name == RESULT_QUEUE).collect();
        assert_eq!(rq.len(), 1);
        assert_eq!(rq[0].arguments["x-max-length"], ArgValue::Int(1));
        assert_eq!(
            t.bindings
                .iter()
                .filter(|b| b.queue == RESULT_QUEUE)
                .count(),
            1,
            "the same binding is declared once"
        );
    }

    #[test]
    fn kickoff_exchange_follows_the_asmm8_section() {
        let mut s = go_like();
        assert_eq!(kickoff_exchange(&s), "cptm8");
        s.orchestrator.queues.get_mut("asmm8").unwrap().exchange = "scheduler".into();
        assert_eq!(kickoff_exchange(&s), "scheduler");
        s.orchestrator.queues.clear();
        assert_eq!(kickoff_exchange(&s), "cptm8");
    }
}
