//! `GET /api/orchestratorm8/replicas`: the replicas that wrote their row within
//! [`crate::replicas::LIVE`], the leader first (see [`crate::replicas`]).

use warp::http::StatusCode;
use warp::reply::Response;

use super::error::{ApiError, json_response};
use super::state::HttpState;

/// `GET /api/orchestratorm8/replicas`.
pub(crate) async fn replicas(state: &HttpState) -> Result<Response, ApiError> {
    let live = chrono::Duration::from_std(crate::replicas::LIVE).unwrap_or_default();
    let list = state
        .replicas
        .replicas(state.clock.now() - live)
        .await
        .map_err(ApiError::from_db)?;
    Ok(json_response(StatusCode::OK, &list))
}
