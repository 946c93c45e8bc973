//! `GET /api/orchestratorm8/events`: Server-Sent Events of workflow and stage changes.
//!
//! Every change of a workflow (its status, or any of its stages: a stage published,
//! completed, failed, retried, cancelled) is sent as one event `workflow` whose data is
//! the workflow's whole view (the object of `GET /api/orchestratorm8/workflows/{id}`)
//! and whose id is the change's time (`updated_at`, in microseconds since the epoch).
//! Comments (`: keep-alive`) are sent every [`HEARTBEAT`] when nothing changes.
//!
//! The stream polls the repository ([`db8::WorkflowRepository::changed_since`]) every
//! [`POLL`], so it sees the changes of every replica, whichever wrote them. A change is
//! sent at least once: a client that reconnects with `Last-Event-ID` (browsers do it by
//! themselves) gets every change at or after that time again, and each poll looks back
//! [`OVERLAP`] so that a transaction that committed late (its `updated_at` written before
//! a later one's) is not missed; a change already sent on this connection is not sent
//! twice. Clients keep the view with the newest `updated_at` per workflow.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use futures::Stream;
use model8::WorkflowId;
use warp::Reply;
use warp::reply::Response;
use warp::sse::Event;

use super::error::ApiError;
use super::state::HttpState;

/// How often the repository is asked for changes.
pub(crate) const POLL: Duration = Duration::from_secs(1);
/// How far each poll looks back before the newest change already seen.
pub(crate) const OVERLAP: Duration = Duration::from_secs(2);
/// Interval of the keep-alive comments.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(15);
/// Most changes read per poll (the rest come at the next poll).
const PAGE: usize = 500;

/// Parses `Last-Event-ID` (microseconds since the epoch, as sent in `id:`).
fn resume_from(last_event_id: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    let Some(raw) = last_event_id else {
        return Ok(None);
    };
    raw.trim()
        .parse::<i64>()
        .ok()
        .and_then(DateTime::from_timestamp_micros)
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "invalid Last-Event-ID {raw:?}: pass the id of an event of this stream"
            ))
        })
}

/// The event stream; starts at `Last-Event-ID` when given, else now.
pub(crate) fn events(
    state: Arc<HttpState>,
    last_event_id: Option<&str>,
) -> Result<Response, ApiError> {
    let since = resume_from(last_event_id)?.unwrap_or_else(|| state.clock.now());
    let stream = changes(state, since);
    Ok(warp::sse::reply(
        warp::sse::keep_alive()
            .interval(HEARTBEAT)
            .text("keep-alive")
            .stream(stream),
    )
    .into_response())
}

struct Follow {
    state: Arc<HttpState>,
    /// Changes at or after this time are wanted.
    since: DateTime<Utc>,
    /// What this connection sent within the look-back window: id -> `updated_at`.
    sent: HashMap<WorkflowId, DateTime<Utc>>,
}

/// The events from `since` on. A task of its own polls and feeds a small channel
/// (warp needs a `Sync` stream); it ends when the client goes away (the channel
/// closes) or the server stops.
fn changes(
    state: Arc<HttpState>,
    since: DateTime<Utc>,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + Sync + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Event, Infallible>>(64);
    let mut follow = Follow {
        state,
        since,
        sent: HashMap::new(),
    };
    tokio::spawn(async move {
        loop {
            for ev in follow.poll().await {
                if tx.send(Ok(ev)).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                () = tx.closed() => return,
                () = tokio::time::sleep(POLL) => {}
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

impl Follow {
    /// Reads every change from the look-back window on, page by page: the events of
    /// those not sent yet.
    async fn poll(&mut self) -> Vec<Event> {
        let overlap = TimeDelta::from_std(OVERLAP).unwrap_or(TimeDelta::zero());
        let newest_sent = self.sent.values().max().copied();
        let mut from = newest_sent.map_or(self.since, |t| (t - overlap).max(self.since));
        let mut after = None;
        let mut events = Vec::new();
        loop {
            let views = match self.state.workflows.changed_since(from, after, PAGE).await {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "event stream: reading changes failed; retrying");
                    return events;
                }
            };
            let full = views.len() == PAGE;
            if let Some(last) = views.last() {
                from = last.updated_at.to_utc();
                after = Some(last.id);
            }
            for v in views {
                let at = v.updated_at.to_utc();
                if self.sent.get(&v.id).is_some_and(|t| *t >= at) {
                    continue;
                }
                self.sent.insert(v.id, at);
                match Event::default()
                    .event("workflow")
                    .id(at.timestamp_micros().to_string())
                    .json_data(&v)
                {
                    Ok(ev) => events.push(ev),
                    Err(e) => {
                        tracing::error!(error = %e, "event stream: cannot encode a workflow")
                    }
                }
            }
            if !full {
                break;
            }
        }
        // Forget what fell out of the look-back window (bounded memory).
        if let Some(newest) = self.sent.values().max().copied() {
            let keep = newest - overlap - overlap;
            self.sent.retain(|_, t| *t >= keep);
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_event_id_parses() {
        assert_eq!(resume_from(None).unwrap(), None);
        assert_eq!(
            resume_from(Some("1900000000123456")).unwrap(),
            DateTime::from_timestamp_micros(1_900_000_000_123_456)
        );
        assert!(resume_from(Some("yesterday")).is_err());
    }
}
