//! Checks across values: the stage graph, and exchanges that are used but not declared.

use std::collections::{BTreeMap, BTreeSet};

use crate::settings::{SchedulerMode, Settings, StageSettings};
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
    }
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
    fn reports_the_cycle_path() {
        let p = stage_graph_problems(&[stage("x", &["y"]), stage("y", &["x"])]);
        assert_eq!(p, ["dependency cycle: x -> y -> x"]);
    }
}
