//! The demo monitor's pieces: read the workflow API ([`http`], [`fetch_workflows`]),
//! follow the workflows between polls ([`board`]) and watch the demo's processes
//! ([`process_alive`]).

pub mod board;
pub mod http;

use std::time::Duration;

use model8::WorkflowView;

use http::{Endpoint, HttpError};

/// The workflow list of the API (CONTRACT section 5).
pub const WORKFLOWS_PATH: &str = "/api/orchestratorm8/workflows";

/// Why the workflows could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// No answer.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// 401: the API wants a token (set `ORCHESTRATORM8_API_TOKEN`).
    #[error("{0}: 401 unauthorized (set ORCHESTRATORM8_API_TOKEN to the API token)")]
    Unauthorized(String),
    /// Another status than 200.
    #[error("{endpoint}: HTTP {status}: {body}")]
    Status {
        /// The server.
        endpoint: String,
        /// Status code.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// The body is not the expected JSON.
    #[error("{endpoint}: unexpected body: {reason}")]
    Body {
        /// The server.
        endpoint: String,
        /// Why.
        reason: String,
    },
}

/// `GET /api/orchestratorm8/workflows`, decoded.
pub fn fetch_workflows(
    endpoint: &Endpoint,
    token: Option<&str>,
    timeout: Duration,
) -> Result<Vec<WorkflowView>, FetchError> {
    let r = http::get(endpoint, WORKFLOWS_PATH, token, timeout)?;
    match r.status {
        200 => serde_json::from_slice(&r.body).map_err(|e| FetchError::Body {
            endpoint: endpoint.to_string(),
            reason: e.to_string(),
        }),
        401 => Err(FetchError::Unauthorized(endpoint.to_string())),
        status => Err(FetchError::Status {
            endpoint: endpoint.to_string(),
            status,
            body: String::from_utf8_lossy(&r.body).chars().take(200).collect(),
        }),
    }
}

/// Whether process `pid` is running (Linux `/proc`; a zombie, exited but not yet
/// reaped by its parent, counts as gone).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses, which may hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_reaped_child_is_not() {
        assert!(process_alive(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!process_alive(pid));
    }

    #[test]
    fn an_exited_unreaped_child_counts_as_gone() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Wait (with a deadline) until it has exited but is not reaped: a zombie.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while process_alive(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "child {pid} never exited"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        child.wait().unwrap();
    }
}
