//! The stage pipeline of managed mode, built from `Workflow.stages`: a DAG of stages
//! with their publishing settings.
//!
//! config8 validates the same rules when loading the file; they are checked again here
//! because settings can also be built in code, and a bad pipeline must never reach the
//! database.

use std::collections::{BTreeMap, HashMap, HashSet};

use config8::{StageSettings, WorkflowSettings};
use db8::StagePlan;

/// Why a pipeline is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Workflow.stages: {0}")]
pub(crate) struct PipelineError(pub(crate) String);

/// A validated pipeline.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan {
    /// Stages in configuration order.
    stages: Vec<StageSettings>,
}

impl Plan {
    /// Validates `workflow.stages`: at least one stage; names non-empty and unique;
    /// exchange and routing key non-empty; `max_attempts` at least 1; every
    /// dependency another known stage; no cycle.
    pub(crate) fn new(workflow: &WorkflowSettings) -> Result<Plan, PipelineError> {
        let stages = &workflow.stages;
        if stages.is_empty() {
            return Err(PipelineError("no stage configured".into()));
        }
        let mut names = HashSet::with_capacity(stages.len());
        for (i, s) in stages.iter().enumerate() {
            let at = format!("Workflow.stages[{i}]");
            if s.name.trim().is_empty() {
                return Err(PipelineError(format!("{at}.name is empty")));
            }
            if !names.insert(s.name.as_str()) {
                return Err(PipelineError(format!(
                    "{at}.name {:?} is used by another stage",
                    s.name
                )));
            }
            if s.exchange.is_empty() {
                return Err(PipelineError(format!("{at}.exchange is empty")));
            }
            if s.routing_key.is_empty() {
                return Err(PipelineError(format!("{at}.routing_key is empty")));
            }
            if s.max_attempts == 0 {
                return Err(PipelineError(format!(
                    "{at}.max_attempts is 0 (expected at least 1)"
                )));
            }
        }
        for (i, s) in stages.iter().enumerate() {
            for d in &s.depends_on {
                if d == &s.name {
                    return Err(PipelineError(format!(
                        "Workflow.stages[{i}] ({:?}) depends on itself",
                        s.name
                    )));
                }
                if !names.contains(d.as_str()) {
                    return Err(PipelineError(format!(
                        "Workflow.stages[{i}] ({:?}) depends on unknown stage {d:?}",
                        s.name
                    )));
                }
            }
        }
        if let Some(cycle) = find_cycle(stages) {
            return Err(PipelineError(format!(
                "dependency cycle: {}",
                cycle.join(" -> ")
            )));
        }
        Ok(Plan {
            stages: stages.clone(),
        })
    }

    /// The stages in configuration order.
    pub(crate) fn stages(&self) -> &[StageSettings] {
        &self.stages
    }

    /// The stage called `name`.
    pub(crate) fn stage(&self, name: &str) -> Option<&StageSettings> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// The shape new workflows record.
    pub(crate) fn stage_plans(&self) -> Vec<StagePlan> {
        self.stages
            .iter()
            .map(|s| StagePlan {
                name: s.name.clone(),
                depends_on: s.depends_on.clone(),
            })
            .collect()
    }
}

/// A dependency cycle, as stage names from the first to itself again, if any.
fn find_cycle(stages: &[StageSettings]) -> Option<Vec<String>> {
    let deps: HashMap<&str, &[String]> = stages
        .iter()
        .map(|s| (s.name.as_str(), s.depends_on.as_slice()))
        .collect();
    // 0 unvisited, 1 on the current path, 2 done.
    let mut mark: BTreeMap<&str, u8> = BTreeMap::new();
    fn visit<'a>(
        n: &'a str,
        deps: &HashMap<&'a str, &'a [String]>,
        mark: &mut BTreeMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match mark.get(n).copied().unwrap_or(0) {
            2 => return None,
            1 => {
                let start = path.iter().position(|p| *p == n).unwrap_or(0);
                let mut cycle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
                cycle.push(n.to_owned());
                return Some(cycle);
            }
            _ => {}
        }
        mark.insert(n, 1);
        path.push(n);
        for d in deps.get(n).copied().unwrap_or_default() {
            if let Some(c) = visit(d.as_str(), deps, mark, path) {
                return Some(c);
            }
        }
        path.pop();
        mark.insert(n, 2);
        None
    }
    for s in stages {
        let mut path = Vec::new();
        if let Some(c) = visit(s.name.as_str(), &deps, &mut mark, &mut path) {
            return Some(c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use config8::Settings;

    fn stage(name: &str, deps: &[&str]) -> StageSettings {
        let mut s = StageSettings::new(name, "cptm8");
        s.depends_on = deps.iter().map(|d| d.to_string()).collect();
        s
    }

    fn wf(stages: Vec<StageSettings>) -> WorkflowSettings {
        WorkflowSettings {
            stages,
            ..WorkflowSettings::default()
        }
    }

    #[test]
    fn default_pipeline_is_valid() {
        let plan = Plan::new(&Settings::default().workflow).unwrap();
        let plans = plan.stage_plans();
        assert_eq!(plans.len(), 4);
        assert_eq!(plans[3].name, "num8");
        assert_eq!(plans[3].depends_on, ["naabum8"]);
        assert_eq!(
            plan.stage("asmm8").unwrap().routing_key,
            "cptm8.asmm8.get.scan"
        );
        assert!(plan.stage("nope").is_none());
    }

    /// 40 diamonds in a row: each stage is reached by two paths, so a search that
    /// visited a finished stage again would take 2^40 steps.
    #[test]
    fn a_deep_diamond_chain_is_validated_at_once() {
        let mut stages = vec![stage("s0", &[])];
        for i in 1..=40 {
            let prev = format!("s{}", i - 1);
            let (a, b) = (format!("a{i}"), format!("b{i}"));
            stages.push(stage(&a, &[&prev]));
            stages.push(stage(&b, &[&prev]));
            stages.push(stage(&format!("s{i}"), &[&a, &b]));
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let settings = wf(stages);
        std::thread::spawn(move || tx.send(Plan::new(&settings).map(|p| p.stages().len())));
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("validated within 20 s");
        assert_eq!(got, Ok(121));
    }

    #[test]
    fn refuses_cycles_naming_them() {
        let e = Plan::new(&wf(vec![
            stage("a", &["c"]),
            stage("b", &["a"]),
            stage("c", &["b"]),
        ]))
        .unwrap_err();
        assert!(e.0.contains("cycle: a -> c -> b -> a"), "{e}");
    }

    #[test]
    fn refuses_unknown_dependency_self_dependency_duplicates_and_empty() {
        let cases = [
            (wf(vec![stage("a", &["x"])]), "unknown stage \"x\""),
            (wf(vec![stage("a", &["a"])]), "depends on itself"),
            (
                wf(vec![stage("a", &[]), stage("a", &[])]),
                "used by another stage",
            ),
            (wf(vec![]), "no stage"),
            (wf(vec![stage(" ", &[])]), "name is empty"),
        ];
        for (w, needle) in cases {
            let e = Plan::new(&w).unwrap_err();
            assert!(
                e.to_string().contains(needle),
                "{e} should contain {needle}"
            );
        }
        let mut s = stage("a", &[]);
        s.max_attempts = 0;
        assert!(
            Plan::new(&wf(vec![s]))
                .unwrap_err()
                .0
                .contains("max_attempts")
        );
        let mut s = stage("a", &[]);
        s.routing_key.clear();
        assert!(
            Plan::new(&wf(vec![s]))
                .unwrap_err()
                .0
                .contains("routing_key")
        );
    }

    #[test]
    fn diamond_is_fine() {
        Plan::new(&wf(vec![
            stage("a", &[]),
            stage("b", &["a"]),
            stage("c", &["a"]),
            stage("d", &["b", "c"]),
        ]))
        .unwrap();
    }
}
