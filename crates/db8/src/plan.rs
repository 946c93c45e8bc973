//! Checks on a batch of new workflows shared by every implementation, so that both
//! refuse the same input the same way.

use std::collections::HashSet;

use crate::error::DbError;
use crate::traits::NewWorkflow;

/// Refuses a batch holding a workflow without domains or stages, a stage name that is
/// empty or holds control characters (the SQL batch encoding uses one), a stage graph
/// that [`model8::stage_graph`] refuses (a stage named twice, a dependency on itself or
/// on an unknown stage, a cycle), or the same workflow id twice.
pub(crate) fn validate_batch(batch: &[NewWorkflow]) -> Result<(), DbError> {
    let mut ids = HashSet::with_capacity(batch.len());
    for wf in batch {
        if !ids.insert(wf.id) {
            return Err(DbError::Invalid(format!(
                "workflow {} appears twice in one batch",
                wf.id
            )));
        }
        if wf.domains.is_empty() {
            return Err(DbError::Invalid(format!(
                "workflow {} has no domain",
                wf.id
            )));
        }
        if wf.stages.is_empty() {
            return Err(DbError::Invalid(format!("workflow {} has no stage", wf.id)));
        }
        for stage in &wf.stages {
            if stage.name.is_empty() || stage.name.chars().any(char::is_control) {
                return Err(DbError::Invalid(format!(
                    "workflow {}: stage name {:?} is empty or holds control characters",
                    wf.id, stage.name
                )));
            }
        }
        let graph = model8::stage_graph::problems(
            wf.stages
                .iter()
                .map(|s| (s.name.as_str(), s.depends_on.as_slice())),
        );
        if let Some(p) = graph.first() {
            return Err(DbError::Invalid(format!(
                "workflow {}: {}: {p}",
                wf.id,
                p.key_path("stages")
            )));
        }
    }
    Ok(())
}

/// The domain a workflow of `domains` keeps busy while active, when it has exactly
/// one: at most one active workflow may exist per such domain (the `per_domain` rule).
pub(crate) fn active_domain(domains: &[model8::DomainRef]) -> Option<uuid::Uuid> {
    match domains {
        [only] => Some(only.id),
        _ => None,
    }
}
