//! Checks across values: the stage graph, exchanges that are used but not declared,
//! stage routing keys that no binding matches, and numeric queue arguments written as
//! text.

use std::collections::{BTreeMap, BTreeSet};

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
        for message in unroutable_stages(s) {
            ctx.warn(&stages_path, message);
        }
        for message in stages_routed_to_several_queues(s) {
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
    let secrets = secret_values(s);
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
            let shown =
                crate::tree::show(&serde_yaml::Value::String(scrub_str(text, &secrets)), false);
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

/// A warning for each stage whose routing key matches no binding, in this
/// configuration, of the exchange it publishes to (AMQP matching: exact for `direct`,
/// `*` one word and `#` zero or more for `topic`, any binding for `fanout`; `headers`
/// exchanges and undeclared ones are not judged). The broker would return such jobs
/// as unroutable, and the engine would retry them until a matching queue is bound.
fn unroutable_stages(s: &Settings) -> Vec<String> {
    let secrets = secret_values(s);
    let safe = |t: &str| scrub_str(t, &secrets);
    let mut out = Vec::new();
    for stage in &s.workflow.stages {
        let Some(kind) = s.orchestrator.exchanges.get(&stage.exchange).copied() else {
            continue;
        };
        let bindings: Vec<&str> = s
            .orchestrator
            .queues
            .values()
            .filter(|q| q.exchange == stage.exchange)
            .flat_map(|q| q.routing_keys.iter().map(String::as_str))
            .collect();
        let routed = match kind {
            ExchangeKind::Topic => bindings
                .iter()
                .any(|b| topic_matches(b, &stage.routing_key)),
            ExchangeKind::Direct => bindings.iter().any(|b| *b == stage.routing_key),
            ExchangeKind::Fanout => !bindings.is_empty(),
            ExchangeKind::Headers => true,
        };
        if routed {
            continue;
        }
        let known = if bindings.is_empty() {
            "it has no bindings here".to_owned()
        } else {
            let shown: Vec<String> = bindings.iter().map(|b| safe(b)).collect();
            format!("its bindings here: {}", shown.join(", "))
        };
        out.push(format!(
            "stage {:?} publishes with routing key {:?} to {} exchange {:?}, which matches no binding of that exchange in this configuration ({known}); its jobs would be returned unroutable and retried until a matching queue is bound",
            safe(&stage.name),
            safe(&stage.routing_key),
            kind.as_str(),
            safe(&stage.exchange),
        ));
    }
    out
}

/// A warning for each stage whose routing key reaches more than one queue declared in
/// this configuration (matched as in [`unroutable_stages`]). RabbitMQ confirms a
/// publish only when every queue it reaches accepts it: when another of them is full
/// and rejects (`x-overflow: reject-publish`), the stage's jobs are nacked although the
/// stage's queue received them, and each re-publish adds a copy (docs/ENGINE.md,
/// "Nacks").
fn stages_routed_to_several_queues(s: &Settings) -> Vec<String> {
    let secrets = secret_values(s);
    let safe = |t: &str| scrub_str(t, &secrets);
    let mut out = Vec::new();
    for stage in &s.workflow.stages {
        let Some(kind) = s.orchestrator.exchanges.get(&stage.exchange).copied() else {
            continue;
        };
        // Queue name -> the first of its bindings that routes the stage's key.
        let mut reached: BTreeMap<&str, &str> = BTreeMap::new();
        for q in s
            .orchestrator
            .queues
            .values()
            .filter(|q| q.exchange == stage.exchange)
        {
            let hit = q.routing_keys.iter().find(|b| match kind {
                ExchangeKind::Topic => topic_matches(b, &stage.routing_key),
                ExchangeKind::Direct => **b == stage.routing_key,
                ExchangeKind::Fanout => true,
                ExchangeKind::Headers => false,
            });
            if let Some(b) = hit {
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
        out.push(format!(
            "stage {:?} publishes with routing key {:?} to {} exchange {:?}, which reaches {} queues in this configuration: {}; RabbitMQ confirms a job only when every one of them accepts it, so if one is full and rejects (x-overflow: reject-publish) the job is nacked although the others received it, and every re-publish adds a copy (the engine re-publishes a nacked job at most 5 times in a row, then once per stage timeout)",
            safe(&stage.name),
            safe(&stage.routing_key),
            kind.as_str(),
            safe(&stage.exchange),
            reached.len(),
            shown.join(", "),
        ));
    }
    out
}

/// The non-empty secret values, for keeping them out of messages.
fn secret_values(s: &Settings) -> Vec<&str> {
    secrets(s)
        .into_iter()
        .map(|x| x.expose())
        .filter(|x| !x.is_empty())
        .collect()
}

/// Whether the AMQP topic binding key `pattern` matches the routing key `key`: words
/// are separated by `.`, `*` matches exactly one word, `#` zero or more. As RabbitMQ,
/// an empty key has no words. Linear in the product of the word counts.
pub(crate) fn topic_matches(pattern: &str, key: &str) -> bool {
    let words = |t: &str| -> Vec<String> {
        if t.is_empty() {
            Vec::new()
        } else {
            t.split('.').map(str::to_owned).collect()
        }
    };
    let (p, k) = (words(pattern), words(key));
    // m[i][j]: p[i..] matches k[j..].
    let mut m = vec![vec![false; k.len() + 1]; p.len() + 1];
    m[p.len()][k.len()] = true;
    for i in (0..p.len()).rev() {
        for j in (0..=k.len()).rev() {
            m[i][j] = match p[i].as_str() {
                "#" => m[i + 1][j] || (j < k.len() && m[i][j + 1]),
                "*" => j < k.len() && m[i + 1][j + 1],
                w => j < k.len() && k[j] == w && m[i + 1][j + 1],
            };
        }
    }
    m[0][0]
}

/// Duplicate names, unknown or self dependencies and cycles, as messages.
pub(crate) fn stage_graph_problems(stages: &[StageSettings]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for s in stages {
        if !seen.insert(s.name.as_str()) {
            problems.push(format!(
                "stage name {:?} is used twice; names must be unique",
                s.name
            ));
        }
    }
    let known: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
    for s in stages {
        for dep in &s.depends_on {
            if dep == &s.name {
                problems.push(format!("stage {:?} depends on itself", s.name));
            } else if !seen.contains(dep.as_str()) {
                problems.push(format!(
                    "stage {:?} depends on unknown stage {dep:?} (stages: {})",
                    s.name,
                    known.join(", ")
                ));
            }
        }
    }
    if let Some(cycle) = find_cycle(stages) {
        problems.push(format!("dependency cycle: {}", cycle.join(" -> ")));
    }
    problems
}

/// A dependency cycle (first name repeated at the end), ignoring self-dependencies and
/// unknown names, which are reported on their own.
fn find_cycle(stages: &[StageSettings]) -> Option<Vec<String>> {
    // A duplicate name is reported on its own; its first definition counts here.
    let mut deps: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for s in stages {
        deps.entry(s.name.as_str()).or_insert_with(|| {
            s.depends_on
                .iter()
                .map(String::as_str)
                .filter(|d| *d != s.name)
                .collect()
        });
    }
    // Depth-first search with colours: 0 unvisited, 1 on the stack, 2 done.
    let mut colour: BTreeMap<&str, u8> = deps.keys().map(|k| (*k, 0)).collect();
    let mut stack: Vec<&str> = Vec::new();

    fn visit<'a>(
        n: &'a str,
        deps: &BTreeMap<&'a str, Vec<&'a str>>,
        colour: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        colour.insert(n, 1);
        stack.push(n);
        for d in deps.get(n).into_iter().flatten() {
            match colour.get(d) {
                Some(1) => {
                    let start = stack.iter().position(|x| x == d).expect("on the stack");
                    let mut cycle: Vec<String> =
                        stack[start..].iter().map(|s| (*s).to_owned()).collect();
                    cycle.push((*d).to_owned());
                    return Some(cycle);
                }
                Some(0) => {
                    if let Some(c) = visit(d, deps, colour, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        colour.insert(n, 2);
        None
    }

    let names: Vec<&str> = deps.keys().copied().collect();
    for n in names {
        if colour[n] == 0
            && let Some(c) = visit(n, &deps, &mut colour, &mut stack)
        {
            return Some(c);
        }
    }
    None
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
    fn topic_matching_follows_amqp() {
        for (pattern, key, expected) in [
            ("cptm8.num8.#", "cptm8.num8.get.scan", true),
            ("cptm8.qnum8.#", "cptm8.num8.get.scan", false),
            ("#", "cptm8.num8.get.scan", true),
            ("#", "", true),
            ("cptm8.*.get.scan", "cptm8.num8.get.scan", true),
            ("cptm8.*.scan", "cptm8.num8.get.scan", false),
            ("*.num8", "cptm8.num8.get.scan", false),
            ("cptm8.num8.get.scan.#", "cptm8.num8.get.scan", true),
            ("cptm8.#.scan", "cptm8.num8.get.scan", true),
            ("cptm8.#.#.scan", "cptm8.scan", true),
            ("#.get.#", "cptm8.num8.get.scan", true),
            ("cptm8.num8.get.scan", "cptm8.num8.get.scan", true),
            ("cptm8.num8.get", "cptm8.num8.get.scan", false),
            ("cptm8.num8.get.scan", "cptm8.num8.get", false),
            ("*", "", false),
            ("*", "a", true),
            ("a.*", "a.", true),
            ("a.#", "a", true),
            ("", "", true),
            ("", "a", false),
        ] {
            assert_eq!(
                topic_matches(pattern, key),
                expected,
                "{pattern:?} against {key:?}"
            );
        }
        // Many `#` on a long key stay fast (no exponential backtracking).
        let key = vec!["w"; 200].join(".");
        let pattern = vec!["#"; 100].join(".") + ".x";
        assert!(!topic_matches(&pattern, &key));
    }

    #[test]
    fn reports_the_cycle_path() {
        let p = stage_graph_problems(&[stage("x", &["y"]), stage("y", &["x"])]);
        assert_eq!(p, ["dependency cycle: x -> y -> x"]);
    }
}
