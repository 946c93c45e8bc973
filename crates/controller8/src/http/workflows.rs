//! The workflow API under `/api/orchestratorm8/workflows`.

use std::str::FromStr;

use db8::{ListCursor, WorkflowFilter};
use model8::{WorkflowId, WorkflowView};
use serde::Deserialize;
use uuid::Uuid;
use warp::http::{HeaderMap, HeaderValue, StatusCode};
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
    Retry,
}

impl FromStr for Action {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "cancel" => Ok(Action::Cancel),
            "pause" => Ok(Action::Pause),
            "resume" => Ok(Action::Resume),
            "retry" => Ok(Action::Retry),
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
            Action::Retry => "workflows.retry",
        }
    }
}

fn parse_id(raw: &str) -> Result<WorkflowId, ApiError> {
    Uuid::parse_str(raw)
        .map_err(|_| ApiError::bad_request(format!("invalid workflow id {raw:?}: not a UUID")))
}

/// The query parameters of the list.
const LIST_PARAMS: &str = "status, kind, domain, company, cursor, limit";

fn invalid(key: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("invalid query parameter {key}: {e}"))
}

pub(crate) fn parse_filter(query: &[(String, String)]) -> Result<WorkflowFilter, ApiError> {
    let mut filter = WorkflowFilter {
        limit: Some(DEFAULT_LIMIT),
        ..Default::default()
    };
    let mut seen: Vec<&str> = Vec::new();
    for (key, value) in query {
        if seen.contains(&key.as_str()) {
            return Err(ApiError::bad_request(format!(
                "query parameter {key:?} given more than once"
            )));
        }
        match key.as_str() {
            "status" => filter.status = Some(value.parse().map_err(|e| invalid(key, e))?),
            "kind" => filter.kind = Some(value.parse().map_err(|e| invalid(key, e))?),
            // Names are stored canonical (lower case).
            "domain" => filter.domain = Some(non_empty(key, value)?.to_lowercase()),
            "company" => filter.company = Some(non_empty(key, value)?.to_owned()),
            "cursor" => filter.after = Some(decode_cursor(value)?),
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
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?} (expected: {LIST_PARAMS})"
                )));
            }
        }
        seen.push(key.as_str());
    }
    Ok(filter)
}

/// A text filter: not empty, and without NUL (which no stored text holds, and which
/// PostgreSQL refuses in a parameter).
fn non_empty<'a>(key: &str, value: &'a str) -> Result<&'a str, ApiError> {
    if value.is_empty() {
        Err(invalid(key, "empty"))
    } else if value.contains('\0') {
        Err(invalid(key, "contains a NUL character"))
    } else {
        Ok(value)
    }
}

/// The opaque `cursor` of the list: the position after a workflow (its creation time
/// in microseconds and its id), as 48 hexadecimal digits.
pub(crate) fn encode_cursor(c: &ListCursor) -> String {
    let mut bytes = c.created_at.timestamp_micros().to_be_bytes().to_vec();
    bytes.extend_from_slice(c.id.as_bytes());
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_cursor(raw: &str) -> Result<ListCursor, ApiError> {
    let bad = || {
        ApiError::bad_request(format!(
            "invalid query parameter cursor {raw:?}: pass the X-Next-Cursor value of a previous page unchanged"
        ))
    };
    if raw.len() != 48 || !raw.is_ascii() {
        return Err(bad());
    }
    let bytes = (0..raw.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&raw[i..i + 2], 16).map_err(|_| bad()))
        .collect::<Result<Vec<u8>, _>>()?;
    let micros = i64::from_be_bytes(bytes[..8].try_into().map_err(|_| bad())?);
    // Creation times the server writes are within years 1 to 9999 (PostgreSQL's
    // range is wider; chrono's narrower).
    let created_at = chrono::DateTime::from_timestamp_micros(micros)
        .filter(|t| (1..=9999).contains(&chrono::Datelike::year(t)))
        .ok_or_else(bad)?;
    let id = Uuid::from_slice(&bytes[8..]).map_err(|_| bad())?;
    Ok(ListCursor { created_at, id })
}

/// `GET /api/orchestratorm8/workflows[?status=S][&kind=K][&domain=D][&company=C]
/// [&cursor=X][&limit=N]`: a page, newest first; `X-Next-Cursor` when more follow.
pub(crate) async fn list(
    state: &HttpState,
    query: &[(String, String)],
) -> Result<Response, ApiError> {
    let filter = parse_filter(query)?;
    let views = list_page(state, filter).await?;
    let mut res = json_response(StatusCode::OK, &views.0);
    if let Some(next) = views.1 {
        res.headers_mut().insert(
            NEXT_CURSOR,
            HeaderValue::from_str(&encode_cursor(&next)).map_err(|_| ApiError::internal())?,
        );
    }
    Ok(res)
}

/// The header holding the cursor of the next page.
pub(crate) const NEXT_CURSOR: &str = "x-next-cursor";

/// One page of the list and, when more follow, the cursor after it (one more row is
/// read to know).
pub(crate) async fn list_page(
    state: &HttpState,
    mut filter: WorkflowFilter,
) -> Result<(Vec<WorkflowView>, Option<ListCursor>), ApiError> {
    let limit = filter.limit.unwrap_or(DEFAULT_LIMIT);
    filter.limit = Some(limit + 1);
    let mut views = state
        .workflows
        .list(&filter)
        .await
        .map_err(ApiError::from_db)?;
    let next = if views.len() > limit {
        views.truncate(limit);
        views.last().map(ListCursor::after)
    } else {
        None
    };
    Ok((views, next))
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

/// `POST /api/orchestratorm8/workflows/{id}/{cancel|pause|resume|retry}`: 200 (202
/// for retry: the workflow runs again) and the workflow.
pub(crate) async fn act(state: &HttpState, id: &str, action: Action) -> Result<Response, ApiError> {
    let id = parse_id(id)?;
    let now = state.clock.now();
    let repo = &state.workflows;
    let view = match action {
        Action::Cancel => repo.cancel(id, now).await,
        Action::Pause => repo.pause(id, now).await,
        Action::Resume => repo.resume(id, now).await,
        Action::Retry => repo.retry(id, now).await,
    }
    .map_err(ApiError::from_db)?;
    if action == Action::Cancel {
        state.metrics.workflow_cancelled();
    }
    let status = if action == Action::Retry {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok(json_response(status, &view))
}

#[cfg(test)]
mod tests {
    use super::*;
    use model8::{WorkflowKind, WorkflowStatus};

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn cursors_round_trip() {
        let c = ListCursor {
            created_at: chrono::DateTime::from_timestamp_micros(1_900_000_000_123_456).unwrap(),
            id: Uuid::new_v4(),
        };
        let raw = encode_cursor(&c);
        assert_eq!(raw.len(), 48);
        let f = parse_filter(&q(&[
            ("cursor", &raw),
            ("kind", "observed"),
            ("domain", "A.Example"),
            ("company", "ACME"),
        ]))
        .unwrap();
        assert_eq!(f.after, Some(c));
        assert_eq!(f.kind, Some(WorkflowKind::Observed));
        assert_eq!(f.domain.as_deref(), Some("a.example"));
        assert_eq!(f.company.as_deref(), Some("ACME"));
    }

    #[test]
    fn filter_parsing() {
        assert_eq!(
            parse_filter(&[]).unwrap(),
            WorkflowFilter {
                limit: Some(DEFAULT_LIMIT),
                ..Default::default()
            }
        );
        assert_eq!(
            parse_filter(&q(&[("status", "paused"), ("limit", "5")])).unwrap(),
            WorkflowFilter {
                status: Some(WorkflowStatus::Paused),
                limit: Some(5),
                ..Default::default()
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
            q(&[("kind", "other")]),
            q(&[("domain", "")]),
            q(&[("company", "a\0b")]),
            q(&[("domain", "\0")]),
            q(&[("cursor", "x")]),
            q(&[("cursor", &"z".repeat(48))]),
            q(&[("cursor", &"é".repeat(24))]),
            // Decodes, but to a time no workflow has (year -292,000).
            q(&[("cursor", "b3f70d10406e13abf0a9ba50b03e9803466b4488d097b1ae")]),
        ] {
            assert_eq!(
                parse_filter(&bad).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{bad:?}"
            );
        }
    }
}
