//! `GET /api/orchestratorm8/stages`: per configured stage, its queue's depth and
//! consumers, the jobs in flight against `max_in_flight`, and whether dispatch is held
//! back (backpressure). What the console's stages view shows.

use serde::Serialize;
use warp::http::StatusCode;
use warp::reply::Response;

use super::error::{ApiError, json_response};
use super::state::HttpState;

/// One stage in the response.
#[derive(Debug, Serialize)]
struct StageStatus {
    name: String,
    queue: Option<String>,
    /// Ready messages in the queue; `null` when it could not be checked.
    queue_depth: Option<u32>,
    /// `x-max-length` of the queue, when configured.
    queue_max_length: Option<u32>,
    /// Consumers on the queue; `null` when it could not be checked.
    consumers: Option<u32>,
    /// Attempts claimed or running now (every replica).
    in_flight: u64,
    /// 0: no limit.
    max_in_flight: u32,
    /// Why new jobs of the stage wait, if they do: `max_in_flight` (the limit is
    /// reached) or `queue_full` (the queue holds `x-max-length` messages, so a publish
    /// would be refused); `null` otherwise.
    backpressure: Option<&'static str>,
}

/// `GET /api/orchestratorm8/stages`.
pub(crate) async fn stages(state: &HttpState) -> Result<Response, ApiError> {
    let counts = state
        .workflows
        .in_flight_counts(state.clock.now())
        .await
        .map_err(ApiError::from_db)?;
    let limit = state.timeouts.check;
    let mut out = Vec::with_capacity(state.stages.len());
    for st in &state.stages {
        let info = match &st.queue {
            Some(q) => match tokio::time::timeout(limit, state.broker.queue_info(q)).await {
                Ok(Ok(i)) => Some(i),
                _ => None,
            },
            None => None,
        };
        let in_flight = counts.get(&st.name).copied().unwrap_or(0);
        let depth = info.map(|i| i.messages);
        let backpressure = if st.max_in_flight > 0 && in_flight >= u64::from(st.max_in_flight) {
            Some("max_in_flight")
        } else if matches!((depth, st.queue_max_length), (Some(d), Some(m)) if d >= m) {
            Some("queue_full")
        } else {
            None
        };
        out.push(StageStatus {
            name: st.name.clone(),
            queue: st.queue.clone(),
            queue_depth: depth,
            queue_max_length: st.queue_max_length,
            consumers: info.map(|i| i.consumers),
            in_flight,
            max_in_flight: st.max_in_flight,
            backpressure,
        });
    }
    Ok(json_response(StatusCode::OK, &out))
}
