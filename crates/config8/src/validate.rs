//! Checks across values: the stage graph, exchanges that are used but not declared,
//! stage routing keys that no binding matches, and numeric queue arguments written as
//! text.

use crate::render::{scrub_str, secrets};
use crate::settings::{
    ArgValue, ExchangeKind, Granularity, SchedulerMode, Settings, StageProtocol, StageSettings,
};
use crate::tree::{Ctx, KeyPath};

/// Records every cross-value problem and warning of `s`.
pub(crate) fn check(ctx: &mut Ctx, s: &Settings) {
    let stages_path = KeyPath::default().key("Workflow").key("stages");
    for problem in stage_graph_problems(&s.workflow.stages) {
        ctx.problem(&stages_path, problem);
    }
    if s.scheduler.mode == SchedulerMode::Managed && s.workflow.stages.is_empty() {
        ctx.problem(
            &stages_path,
            "got an empty list, expected at least one stage in managed mode (leave it out for the default pipeline)",
        );
    }

    if s.scheduler.mode == SchedulerMode::Managed
        && s.workflow.granularity == Granularity::PerDomain
    {
        for (i, stage) in s.workflow.stages.iter().enumerate() {
            if stage.protocol == StageProtocol::Chain {
                ctx.problem(
                    &stages_path.index(i).key("protocol"),
                    format!(
                        "stage {:?} has protocol chain, which needs Workflow.granularity: per_cycle (a chain scanner scans every enabled domain), got per_domain",
                        stage.name
                    ),
                );
            }
        }
    }

    let exchanges_path = KeyPath::default().key("ORCHESTRATORM8").key("Exchanges");
    let declared = &s.orchestrator.exchanges;
    for (name, used_for) in [
        ("cptm8", "the bootstrap kick-off and stage results"),
        ("notification", "notifications"),
    ] {
        if !declared.contains_key(name) {
            ctx.warn(
                &exchanges_path,
                format!("exchange {name:?} ({used_for}) is not declared here"),
            );
        }
    }
    if s.scheduler.mode == SchedulerMode::Managed {
        for stage in &s.workflow.stages {
            if !declared.contains_key(&stage.exchange) {
                ctx.warn(
                    &stages_path,
                    format!(
                        "stage {:?} publishes to exchange {:?}, which is not declared in ORCHESTRATORM8.Exchanges",
                        stage.name, stage.exchange
                    ),
                );
            }
        }
        let (unroutable, several_queues) = stage_routing(s);
        for message in unroutable.into_iter().chain(several_queues) {
            ctx.warn(&stages_path, message);
        }
    }
    for (path, message) in numeric_arguments_as_text(s) {
        ctx.warn(&path, message);
    }
}

/// The queue arguments RabbitMQ reads as integers. Given as text, RabbitMQ refuses
/// some of them and accepts others without applying them (`x-delivery-limit` on
/// RabbitMQ 3.10: a poison message is then redelivered forever).
pub(crate) const NUMERIC_QUEUE_ARGUMENTS: &[&str] = &[
    "x-delivery-limit",
    "x-expires",
    "x-initial-cluster-size",
    "x-max-in-memory-bytes",
    "x-max-in-memory-length",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-message-ttl",
    "x-quorum-initial-group-size",
    "x-stream-max-segment-size-bytes",
];

/// A warning for each numeric queue argument given as text (`x-delivery-limit: "2"`),
/// at its key path, naming the queue and the argument. The value is not changed: a
/// text is sent as a text, as written.
fn numeric_arguments_as_text(s: &Settings) -> Vec<(KeyPath, String)> {
    let secrets = secrets(s);
    let mut out = Vec::new();
    for (section, q) in &s.orchestrator.queues {
        for (key, value) in &q.queue_arguments {
            let ArgValue::Str(text) = value else { continue };
            if !NUMERIC_QUEUE_ARGUMENTS.contains(&key.as_str()) {
                continue;
            }
            let path = KeyPath::default()
                .key("ORCHESTRATORM8")
                .key(section)
                .key("Queue-arguments")
                .key(key);
            let shown = crate::tree::show(
                &serde_norway::Value::String(scrub_str(text, &secrets)),
                false,
            );
            let hint = if text.trim().parse::<i64>().is_ok() {
                format!(" (write {key}: {} without quotes)", text.trim())
            } else {
                String::new()
            };
            out.push((
                path,
                format!(
                    "queue {:?}: {key} is the text {shown}, but RabbitMQ expects an integer; it refuses the queue or, for some arguments and versions (x-delivery-limit on RabbitMQ 3.10), accepts the text and never applies it{hint}",
                    scrub_str(&q.queue, &secrets)
                ),
            ));
        }
    }
    out
}

/// The warnings about where the stages' jobs are routed, in two lists:
///
/// - each stage whose routing key matches no binding, in this configuration, of the
///   exchange it publishes to (AMQP matching: exact for `direct`, `*` one word and `#`
///   zero or more for `topic`, any binding for `fanout`; `headers` exchanges and
///   undeclared ones are not judged). The broker would return such jobs as unroutable,
///   and the engine would retry them until a matching queue is bound;
/// - each stage whose routing key reaches more than one queue declared in this
///   configuration. RabbitMQ confirms a publish only when every queue it reaches
///   accepts it: when another of them is full and rejects (`x-overflow:
///   reject-publish`), the stage's jobs are nacked although the stage's queue received
///   them, and each re-publish adds a copy (docs/ENGINE.md, "Nacks").
fn stage_routing(s: &Settings) -> (Vec<String>, Vec<String>) {
    let secrets = secrets(s);
    let safe = |t: &str| scrub_str(t, &secrets);
    let (mut unroutable, mut several_queues) = (Vec::new(), Vec::new());
    for stage in &s.workflow.stages {
        let Some(kind) = s.orchestrator.exchanges.get(&stage.exchange).copied() else {
            continue;
        };
        let routes = |b: &str| model8::topic::routes(kind.as_str(), b, &stage.routing_key);
        let queues = || (s.orchestrator.queues.values()).filter(|q| q.exchange == stage.exchange);
        let bindings: Vec<&str> = queues()
            .flat_map(|q| q.routing_keys.iter().map(String::as_str))
            .collect();
        if kind != ExchangeKind::Headers && !bindings.iter().any(|b| routes(b)) {
            let known = if bindings.is_empty() {
                "it has no bindings here".to_owned()
            } else {
                let shown: Vec<String> = bindings.iter().map(|b| safe(b)).collect();
                format!("its bindings here: {}", shown.join(", "))
            };
            unroutable.push(format!(
                "stage {:?} publishes with routing key {:?} to {} exchange {:?}, which matches no binding of that exchange in this configuration ({known}); its jobs would be returned unroutable and retried until a matching queue is bound",
                safe(&stage.name),
                safe(&stage.routing_key),
                kind.as_str(),
                safe(&stage.exchange),
            ));
        }
        // Queue name -> the first of its bindings that routes the stage's key.
        let mut reached = std::collections::BTreeMap::new();
        for q in queues() {
            if let Some(b) = q.routing_keys.iter().find(|b| routes(b)) {
                reached.entry(q.queue.as_str()).or_insert(b.as_str());
            }
        }
        if reached.len() < 2 {
            continue;
        }
        let shown: Vec<String> = reached
            .iter()
            .map(|(q, b)| format!("{} (binding {})", safe(q), safe(b)))
            .collect();
        several_queues.push(format!(
            "stage {:?} publishes with routing key {:?} to {} exchange {:?}, which reaches {} queues in this configuration: {}; RabbitMQ confirms a job only when every one of them accepts it, so if one is full and rejects (x-overflow: reject-publish) the job is nacked although the others received it, and every re-publish adds a copy (the engine re-publishes a nacked job at most 5 times in a row, then once per stage timeout)",
            safe(&stage.name),
            safe(&stage.routing_key),
            kind.as_str(),
            safe(&stage.exchange),
            reached.len(),
            shown.join(", "),
        ));
    }
    (unroutable, several_queues)
}

/// Duplicate names, unknown or self dependencies and cycles, as messages
/// ([`model8::stage_graph`], the one check of the stage graph).
pub(crate) fn stage_graph_problems(stages: &[StageSettings]) -> Vec<String> {
    model8::stage_graph::problems(
        stages
            .iter()
            .map(|s| (s.name.as_str(), s.depends_on.as_slice())),
    )
    .iter()
    .map(ToString::to_string)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(name: &str, deps: &[&str]) -> StageSettings {
        let mut s = StageSettings::new(name, "cptm8");
        s.depends_on = deps.iter().map(|d| (*d).to_owned()).collect();
        s
    }

    #[test]
    fn default_pipeline_is_a_dag() {
        assert!(stage_graph_problems(&Settings::default().workflow.stages).is_empty());
    }

    #[test]
    fn finds_every_kind_of_graph_problem() {
        let p = stage_graph_problems(&[
            stage("a", &["c"]),
            stage("b", &["a"]),
            stage("c", &["b"]),
            stage("a", &[]),
            stage("d", &["d", "zz"]),
        ]);
        assert!(p.iter().any(|m| m.contains("\"a\" is used twice")), "{p:?}");
        assert!(
            p.iter().any(|m| m.contains("\"d\" depends on itself")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|m| m.contains("unknown stage \"zz\"")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|m| m.starts_with("dependency cycle: ")),
            "{p:?}"
        );
    }

    #[test]
    fn reports_the_cycle_path() {
        let p = stage_graph_problems(&[stage("x", &["y"]), stage("y", &["x"])]);
        assert_eq!(p, ["dependency cycle: x -> y -> x"]);
    }
}
