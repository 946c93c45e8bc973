//! The JSON error body of every failed request, and the mapping of domain errors and
//! warp rejections to it.
//!
//! Shape: `{"error": "<human message>", "code": "<stable machine code>", "status": <http status>}`.
//! Messages name the offending value (a bad status, a bad id) but never a secret, a
//! host or a database message: those are logged instead.

use std::convert::Infallible;

use serde::Serialize;
use warp::Reply;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;

use crate::scan_now::ScanNowError;

/// Seconds a client is told to wait (`Retry-After`) on a 503.
const RETRY_AFTER_SECS: &str = "5";

/// A request that failed, as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code (`bad_request`, `not_found`...).
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
    /// `WWW-Authenticate` value for a 401.
    www_authenticate: Option<&'static str>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    code: &'a str,
    status: u16,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            www_authenticate: None,
        }
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 401 `unauthorized` with `WWW-Authenticate: Bearer ...`; `invalid_token` when a
    /// token was sent but is wrong (RFC 6750 section 3).
    pub fn unauthorized(message: impl Into<String>, invalid_token: bool) -> Self {
        let mut e = Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
        e.www_authenticate = Some(if invalid_token {
            r#"Bearer realm="orchestratorm8", error="invalid_token""#
        } else {
            r#"Bearer realm="orchestratorm8""#
        });
        e
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 409 `conflict`.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 413 `payload_too_large`.
    pub fn payload_too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body larger than the limit of {limit} bytes"),
        )
    }

    /// 415 `unsupported_media_type`.
    pub fn unsupported_media_type(got: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("content type {got:?} is not supported; send application/json"),
        )
    }

    /// 503 `unavailable` (with `Retry-After`).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// 503 `timeout` (with `Retry-After`): the handler did not finish in time.
    pub fn timeout(after: std::time::Duration) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!("the request did not complete within {after:?}; retry later"),
        )
    }

    /// 500 `internal`: the details are logged, not returned.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error (see the service log)",
        )
    }

    /// The JSON response.
    pub fn into_response(self) -> Response {
        let body = ErrorBody {
            error: &self.message,
            code: self.code,
            status: self.status.as_u16(),
        };
        let mut res = json_response(self.status, &body);
        if let Some(v) = self.www_authenticate {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(v));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            res.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        res
    }

    /// Maps a data-store error: `NotFound` 404, `InvalidState`/`Conflict` 409,
    /// `Invalid` 400, `Unavailable` 503; anything else 500. Details of 503 and 500
    /// are logged, not returned (they name hosts and server messages).
    pub fn from_db(err: db8::DbError) -> Self {
        use db8::DbError as E;
        match err {
            E::NotFound(m) => Self::not_found(m),
            E::InvalidState(m) | E::Conflict(m) => Self::conflict(m),
            E::Invalid(m) => Self::bad_request(m),
            e @ E::Unavailable { .. } => {
                tracing::warn!(error = %e, "HTTP request failed: database unavailable");
                Self::unavailable("database unavailable; retry later")
            }
            e => {
                tracing::error!(error = %e, "HTTP request failed: database error");
                Self::internal()
            }
        }
    }

    /// Maps a "scan now" failure: `Invalid` 400, `NotLeader` 503 `not_leader` (the
    /// client should retry; another replica, the leader, can serve it), `Db` as
    /// [`ApiError::from_db`].
    pub fn from_scan(err: ScanNowError) -> Self {
        match err {
            ScanNowError::Invalid(m) => Self::bad_request(m),
            ScanNowError::NotLeader => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_leader",
                "this replica is a standby and cannot start workflows; retry (the leader can)",
            ),
            ScanNowError::Db(e) => Self::from_db(e),
        }
    }
}

/// A JSON response with a status.
pub(crate) fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => {
            let res = warp::reply::with_header(bytes, header::CONTENT_TYPE, "application/json");
            warp::reply::with_status(res, status).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot encode HTTP response body");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Turns what no route accepted into a JSON error: unknown path 404, known path with
/// another method 405, a malformed query string 400; anything else 500 (logged).
pub(crate) async fn recover(rejection: warp::Rejection) -> Result<Response, Infallible> {
    let err = if rejection.is_not_found() {
        ApiError::not_found("no such route")
    } else if rejection.find::<warp::reject::InvalidQuery>().is_some() {
        ApiError::bad_request("malformed query string")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed on this route",
        )
    } else {
        tracing::error!(?rejection, "unhandled HTTP rejection");
        ApiError::internal()
    };
    Ok(err.into_response())
}
