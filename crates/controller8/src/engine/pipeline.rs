//! The stage pipeline of managed mode, built from `Workflow.stages`: a DAG of stages
//! with their publishing settings.
//!
//! config8 validates the same rules when loading the file; they are checked again here
//! because settings can also be built in code, and a bad pipeline must never reach the
//! database. The graph rules (unique names, known dependencies, no cycle) are
//! [`model8::stage_graph`], the one check every layer uses.

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
        for (i, s) in stages.iter().enumerate() {
            let at = format!("Workflow.stages[{i}]");
            if s.name.trim().is_empty() {
                return Err(PipelineError(format!("{at}.name is empty")));
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
        let graph = model8::stage_graph::problems(
            stages
                .iter()
                .map(|s| (s.name.as_str(), s.depends_on.as_slice())),
        );
        if let Some(p) = graph.first() {
            return Err(PipelineError(format!(
                "{}: {p}",
                p.key_path("Workflow.stages")
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
                "\"a\" is used twice",
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
