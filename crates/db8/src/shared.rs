//! What the PostgreSQL and in-memory implementations share, so that both answer alike
//! whichever features are compiled in: the error texts and the list page size.

/// Domains.
pub(crate) mod domains {
    use model8::PostDomain8;
    use uuid::Uuid;

    use crate::error::DbError;

    /// Validates and normalises a domain as the PostgreSQL implementation does.
    pub(crate) fn validated(domain: &PostDomain8) -> Result<PostDomain8, DbError> {
        domain
            .validated()
            .map_err(|e| DbError::Invalid(e.to_string()))
    }

    /// The error for an absent domain (same text as PostgreSQL's).
    pub(crate) fn not_found(id: Uuid) -> DbError {
        DbError::NotFound(format!("domain {id}"))
    }

    /// The error for a taken name (same text as PostgreSQL's).
    pub(crate) fn conflict(name: &str) -> DbError {
        DbError::Conflict(format!("a domain named {name:?} already exists"))
    }
}

/// Workflows.
pub(crate) mod workflows {
    use model8::{WorkflowId, WorkflowStatus};

    use crate::error::DbError;

    /// Default and largest page of [`crate::WorkflowRepository::list`].
    pub(crate) const DEFAULT_LIST_LIMIT: usize = 100;

    /// The error for an absent workflow (same text as PostgreSQL's).
    pub(crate) fn not_found(id: WorkflowId) -> DbError {
        DbError::NotFound(format!("workflow {id}"))
    }

    /// The error for a transition the workflow's status refuses (same text as
    /// PostgreSQL's).
    pub(crate) fn invalid_state(id: WorkflowId, action: &str, status: WorkflowStatus) -> DbError {
        DbError::InvalidState(format!("cannot {action} workflow {id}: it is {status}"))
    }
}
