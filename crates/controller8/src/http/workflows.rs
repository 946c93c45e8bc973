//! The workflow API under `/api/orchestratorm8/workflows`.

use std::str::FromStr;

use db8::WorkflowFilter;
use model8::{WorkflowId, WorkflowStatus};
use serde::Deserialize;
use uuid::Uuid;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;

use super::body::{BodyStream, read_json};
use super::error::{ApiError, json_response};
use super::state::HttpState;

/// Default and largest `limit` of the list.
pub(crate) const DEFAULT_LIMIT: usize = 100;
/// Largest accepted `limit`.
pub(crate) const MAX_LIMIT: usize = 1000;

/// An operator action on one workflow (the last path segment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Cancel,
    Pause,
    Resume,
}

impl FromStr for Action {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "cancel" => Ok(Action::Cancel),
            "pause" => Ok(Action::Pause),
            "resume" => Ok(Action::Resume),
            _ => Err(()),
        }
    }
}

impl Action {
    /// Name used in metrics labels.
    pub(crate) fn route(self) -> &'static str {
        match self {
            Action::Cancel => "workflows.cancel",
            Action::Pause => "workflows.pause",
            Action::Resume => "workflows.resume",
        }
    }
}

fn parse_id(raw: &str) -> Result<WorkflowId, ApiError> {
    Uuid::parse_str(raw)
        .map_err(|_| ApiError::bad_request(format!("invalid workflow id {raw:?}: not a UUID")))
}

fn parse_filter(query: &[(String, String)]) -> Result<WorkflowFilter, ApiError> {
    let mut filter = WorkflowFilter {
        status: None,
        limit: Some(DEFAULT_LIMIT),
        ..Default::default()
    };
    let mut seen = Vec::new();
    for (key, value) in query {
        if seen.contains(&key.as_str()) {
            return Err(ApiError::bad_request(format!(
                "query parameter {key:?} given more than once"
            )));
        }
        match key.as_str() {
            "status" => {
                filter.status = Some(value.parse::<WorkflowStatus>().map_err(|e| {
                    ApiError::bad_request(format!("invalid query parameter status: {e}"))
                })?);
                seen.push("status");
            }
            "limit" => {
                let n = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "invalid query parameter limit {value:?} (expected an integer from 1 to {MAX_LIMIT})"
                        ))
                    })?;
                filter.limit = Some(n);
                seen.push("limit");
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?} (expected: status, limit)"
                )));
            }
        }
    }
    Ok(filter)
}

/// `GET /api/orchestratorm8/workflows[?status=S][&limit=N]`.
pub(crate) async fn list(
    state: &HttpState,
    query: &[(String, String)],
) -> Result<Response, ApiError> {
    let filter = parse_filter(query)?;
    let views = state
        .workflows
        .list(&filter)
        .await
        .map_err(ApiError::from_db)?;
    Ok(json_response(StatusCode::OK, &views))
}

/// `GET /api/orchestratorm8/workflows/{id}`.
pub(crate) async fn get(state: &HttpState, id: &str) -> Result<Response, ApiError> {
    let id = parse_id(id)?;
    let view = state.workflows.get(id).await.map_err(ApiError::from_db)?;
    Ok(json_response(StatusCode::OK, &view))
}

/// The body of "scan now".
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScanRequest {
    /// The domains to scan; absent or `null`: every enabled domain. Strings, parsed
    /// afterwards so that an error names the bad value.
    #[serde(default)]
    domain_ids: Option<Vec<String>>,
}

/// `POST /api/orchestratorm8/workflows` (`{"domain_ids": [...]}` or `{}`): 202 and the
/// workflows created.
pub(crate) async fn create(
    state: &HttpState,
    headers: &HeaderMap,
    body: BodyStream,
) -> Result<Response, ApiError> {
    let limit = state.settings.borrow().body_limit;
    let req: ScanRequest = read_json(headers, body, limit).await?;
    let ids = match req.domain_ids {
        Some(ids) if ids.is_empty() => {
            return Err(ApiError::bad_request(
                "domain_ids is empty; omit it (send {}) to scan every enabled domain",
            ));
        }
        Some(raw) => {
            let mut ids = Vec::with_capacity(raw.len());
            let mut seen = std::collections::HashSet::with_capacity(raw.len());
            for r in &raw {
                let id = Uuid::parse_str(r).map_err(|_| {
                    ApiError::bad_request(format!("invalid domain id {r:?}: not a UUID"))
                })?;
                if seen.insert(id) {
                    ids.push(id);
                }
            }
            Some(ids)
        }
        None => None,
    };
    let created = state
        .scan
        .scan_now(ids)
        .await
        .map_err(ApiError::from_scan)?;
    Ok(json_response(StatusCode::ACCEPTED, &created))
}

/// `POST /api/orchestratorm8/workflows/{id}/{cancel|pause|resume}`.
pub(crate) async fn act(state: &HttpState, id: &str, action: Action) -> Result<Response, ApiError> {
    let id = parse_id(id)?;
    let now = state.clock.now();
    let repo = &state.workflows;
    let view = match action {
        Action::Cancel => repo.cancel(id, now).await,
        Action::Pause => repo.pause(id, now).await,
        Action::Resume => repo.resume(id, now).await,
    }
    .map_err(ApiError::from_db)?;
    if action == Action::Cancel {
        state.metrics.workflow_cancelled();
    }
    Ok(json_response(StatusCode::OK, &view))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn filter_parsing() {
        assert_eq!(
            parse_filter(&[]).unwrap(),
            WorkflowFilter {
                status: None,
                limit: Some(DEFAULT_LIMIT)
            }
        );
        assert_eq!(
            parse_filter(&q(&[("status", "paused"), ("limit", "5")])).unwrap(),
            WorkflowFilter {
                status: Some(WorkflowStatus::Paused),
                limit: Some(5)
            }
        );
        let e = parse_filter(&q(&[("status", "done")])).unwrap_err();
        assert!(
            e.message.contains("\"done\"") && e.message.contains("pending, running, paused"),
            "{}",
            e.message
        );
        for bad in [
            q(&[("limit", "0")]),
            q(&[("limit", "1001")]),
            q(&[("limit", "x")]),
            q(&[("stauts", "running")]),
            q(&[("status", "running"), ("status", "paused")]),
        ] {
            assert_eq!(
                parse_filter(&bad).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{bad:?}"
            );
        }
    }
}
