//! The one check of a stage dependency graph, used by every layer that receives one:
//! `config8` when it loads `Workflow.stages`, `controller8` when it builds the pipeline
//! from settings made in code, `db8` when it records the plan of new workflows.
//!
//! ```
//! use model8::stage_graph::{StageGraphProblem, problems};
//!
//! let deps = [vec!["c".to_owned()], vec!["a".to_owned()], vec!["b".to_owned()]];
//! let stages = [("a", &deps[0][..]), ("b", &deps[1][..]), ("c", &deps[2][..])];
//! let p = problems(stages);
//! assert_eq!(p[0].to_string(), "dependency cycle: a -> c -> b -> a");
//! assert_eq!(p[0].key_path("Workflow.stages"), "Workflow.stages");
//! ```

use std::collections::{BTreeMap, BTreeSet};

/// One problem of a stage graph. `Display` gives the message; [`key_path`] where it is.
///
/// [`key_path`]: StageGraphProblem::key_path
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StageGraphProblem {
    /// Stage `index` has the name of an earlier stage.
    #[error("stage name {name:?} is used twice; names must be unique")]
    Duplicate {
        /// Position of the second use.
        index: usize,
        /// The name.
        name: String,
    },
    /// Stage `index` depends on itself.
    #[error("stage {name:?} depends on itself")]
    SelfDependency {
        /// Position of the stage.
        index: usize,
        /// Its name.
        name: String,
    },
    /// Stage `index` depends on a stage that does not exist.
    #[error("stage {name:?} depends on unknown stage {dependency:?} (stages: {})", .known.join(", "))]
    UnknownDependency {
        /// Position of the stage.
        index: usize,
        /// Its name.
        name: String,
        /// The unknown name.
        dependency: String,
        /// Every stage name, in order.
        known: Vec<String>,
    },
    /// A dependency cycle: names from the first to itself again.
    #[error("dependency cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
}

impl StageGraphProblem {
    /// Where the problem is, under `stages` (the key path of the stage list, e.g.
    /// `Workflow.stages`): `stages[i].name`, `stages[i].depends_on`, or `stages` for a
    /// cycle.
    pub fn key_path(&self, stages: &str) -> String {
        match self {
            StageGraphProblem::Duplicate { index, .. } => format!("{stages}[{index}].name"),
            StageGraphProblem::SelfDependency { index, .. }
            | StageGraphProblem::UnknownDependency { index, .. } => {
                format!("{stages}[{index}].depends_on")
            }
            StageGraphProblem::Cycle(_) => stages.to_owned(),
        }
    }
}

/// Every problem of the graph of `stages` (name and dependencies, in order): names used
/// twice, then self and unknown dependencies in stage order, then one cycle if any (a
/// duplicate name counts with its first definition; self and unknown dependencies are
/// left out of the cycle search). Empty: the graph is a DAG of unique names.
pub fn problems<'a>(
    stages: impl IntoIterator<Item = (&'a str, &'a [String])>,
) -> Vec<StageGraphProblem> {
    let stages: Vec<(&str, &[String])> = stages.into_iter().collect();
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for (index, (name, _)) in stages.iter().enumerate() {
        if !seen.insert(*name) {
            problems.push(StageGraphProblem::Duplicate {
                index,
                name: (*name).to_owned(),
            });
        }
    }
    for (index, (name, deps)) in stages.iter().enumerate() {
        for dep in *deps {
            if dep == name {
                problems.push(StageGraphProblem::SelfDependency {
                    index,
                    name: (*name).to_owned(),
                });
            } else if !seen.contains(dep.as_str()) {
                problems.push(StageGraphProblem::UnknownDependency {
                    index,
                    name: (*name).to_owned(),
                    dependency: dep.clone(),
                    known: stages.iter().map(|(n, _)| (*n).to_owned()).collect(),
                });
            }
        }
    }
    if let Some(cycle) = find_cycle(&stages) {
        problems.push(StageGraphProblem::Cycle(cycle));
    }
    problems
}

/// A dependency cycle (first name repeated at the end), ignoring self-dependencies and
/// unknown names.
fn find_cycle(stages: &[(&str, &[String])]) -> Option<Vec<String>> {
    let mut deps: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, depends_on) in stages {
        deps.entry(name).or_insert_with(|| {
            depends_on
                .iter()
                .map(String::as_str)
                .filter(|d| d != name)
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
                    let start = stack.iter().position(|x| x == d).unwrap_or(0);
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

    fn graph(stages: &[(&str, &[&str])]) -> Vec<StageGraphProblem> {
        let owned: Vec<(String, Vec<String>)> = stages
            .iter()
            .map(|(n, d)| ((*n).to_owned(), d.iter().map(|s| (*s).to_owned()).collect()))
            .collect();
        problems(owned.iter().map(|(n, d)| (n.as_str(), d.as_slice())))
    }

    #[test]
    fn a_dag_has_no_problem() {
        let p = graph(&[("a", &[]), ("b", &["a"]), ("c", &["b"]), ("d", &["b", "a"])]);
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn finds_every_kind_of_problem_in_order_with_key_paths() {
        let p = graph(&[
            ("a", &["c"]),
            ("b", &["a"]),
            ("c", &["b"]),
            ("a", &[]),
            ("d", &["d", "zz"]),
        ]);
        let text: Vec<String> = p
            .iter()
            .map(|p| format!("{}: {p}", p.key_path("Workflow.stages")))
            .collect();
        assert_eq!(
            text,
            [
                "Workflow.stages[3].name: stage name \"a\" is used twice; names must be unique",
                "Workflow.stages[4].depends_on: stage \"d\" depends on itself",
                "Workflow.stages[4].depends_on: stage \"d\" depends on unknown stage \"zz\" (stages: a, b, c, a, d)",
                "Workflow.stages: dependency cycle: a -> c -> b -> a",
            ]
        );
    }

    #[test]
    fn reports_the_cycle_path() {
        assert_eq!(
            graph(&[("x", &["y"]), ("y", &["x"])]),
            [StageGraphProblem::Cycle(vec![
                "x".into(),
                "y".into(),
                "x".into()
            ])]
        );
    }
}
