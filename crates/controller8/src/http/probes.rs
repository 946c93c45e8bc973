//! `/health`, `/ready` and `/metrics`: open endpoints for orchestrators and scrapers.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use amqp8::Refusal;
use model8::{GoTime, RESULT_QUEUE};
use serde::Serialize;
use warp::Reply;
use warp::http::{StatusCode, header};
use warp::reply::Response;

use super::error::{ApiError, json_response};
use super::state::HttpState;
use crate::metrics::ScrapeSnapshot;
use crate::role::Role;

/// The `service` field of the probe bodies.
const SERVICE: &str = "orchestratorm8";

#[derive(Serialize)]
struct Health {
    status: &'static str,
    timestamp: GoTime,
    service: &'static str,
}

/// `GET /health`: the process is up and serving HTTP (liveness). Always 200.
pub(crate) fn health() -> Response {
    json_response(
        StatusCode::OK,
        &Health {
            status: "healthy",
            timestamp: GoTime::now(),
            service: SERVICE,
        },
    )
}

/// The state of one readiness check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Check {
    Healthy,
    Unhealthy,
}

impl Check {
    fn from_ok(ok: bool) -> Self {
        if ok { Check::Healthy } else { Check::Unhealthy }
    }
}

#[derive(Serialize)]
struct Ready {
    status: &'static str,
    timestamp: GoTime,
    service: &'static str,
    /// The contract's two roles (a candidate is a standby there).
    role: model8::ReplicaRole,
    /// The leadership state: `leader`, `candidate` or `standby`.
    leadership: Role,
    checks: BTreeMap<&'static str, Check>,
    /// Consumers on each downstream queue; `null` when the queue could not be checked.
    consumers: BTreeMap<String, Option<u32>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<&'static str>,
}

/// Runs `fut` for at most `limit`; `None` when it took longer.
async fn bounded<T>(limit: Duration, fut: impl Future<Output = T>) -> Option<T> {
    tokio::time::timeout(limit, fut).await.ok()
}

/// `GET /ready`: 200 when this replica's own dependencies work (database ping, broker
/// connection, and in managed mode on the leader the stage-result consumer), 503
/// otherwise. Downstream consumer counts are reported, never decisive; `warnings`
/// says when RabbitMQ blocks publishers or refuses the login or virtual host (fixed
/// texts, nothing from the configuration). Each check is bounded by
/// [`HttpTimeouts::check`](super::HttpTimeouts::check).
pub(crate) async fn ready(state: &HttpState) -> Response {
    let limit = state.timeouts.check;
    let role = *state.role.borrow();

    let db_check = async {
        match bounded(limit, state.db.ping()).await {
            Some(Ok(())) => true,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "readiness: database ping failed");
                false
            }
            None => {
                tracing::warn!(timeout = ?limit, "readiness: database ping timed out");
                false
            }
        }
    };
    let queue_checks = futures::future::join_all(state.downstream_queues.iter().map(|q| async move {
        let count = match bounded(limit, state.broker.queue_info(q)).await {
            Some(Ok(info)) => Some(info.consumers),
            Some(Err(e)) => {
                tracing::debug!(queue = %q, error = %e, "readiness: queue check failed");
                None
            }
            None => {
                tracing::debug!(queue = %q, timeout = ?limit, "readiness: queue check timed out");
                None
            }
        };
        (q.clone(), count)
    }));
    let (db_ok, consumers) = tokio::join!(db_check, queue_checks);

    let broker = state.broker.health();
    let mut checks = BTreeMap::new();
    checks.insert("database", Check::from_ok(db_ok));
    checks.insert("rabbitmq", Check::from_ok(broker.connected));
    let mut ready = db_ok && broker.connected;
    if state.managed {
        let consuming = broker
            .consumers
            .iter()
            .any(|c| c.queue == RESULT_QUEUE && c.active);
        checks.insert("result_consumer", Check::from_ok(consuming));
        // A standby may legitimately not consume: it is ready to take over as long
        // as its connections work.
        if role == Role::Leader {
            ready &= consuming;
        }
    }
    let mut warnings = Vec::new();
    if broker.blocked {
        warnings.push("rabbitmq is blocking publishers (memory or disk alarm)");
    }
    // Fixed texts: /ready is open, so never the host, user name or password.
    match broker.refused {
        Some(Refusal::Login) => warnings
            .push("rabbitmq refused the login: check RabbitMQ.username and RabbitMQ.password"),
        Some(Refusal::VirtualHost) => warnings.push(
            "rabbitmq refused the virtual host: check RabbitMQ.vhost and the user's permissions",
        ),
        None => {}
    }
    let body = Ready {
        status: if ready { "ready" } else { "not ready" },
        timestamp: GoTime::now(),
        service: SERVICE,
        role: role.contract_role(),
        leadership: role,
        checks,
        consumers: consumers.into_iter().collect(),
        warnings,
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, &body)
}

/// `GET /metrics`: the registry plus pool and consumer gauges read now.
pub(crate) fn metrics(state: &HttpState) -> Response {
    state.metrics.set_role(*state.role.borrow());
    let snapshot = ScrapeSnapshot {
        db_pool: Some(state.db.pool_stats()),
        broker: Some(state.broker.health()),
    };
    match state.metrics.encode(&snapshot) {
        Ok(text) => {
            warp::reply::with_header(text, header::CONTENT_TYPE, crate::Metrics::CONTENT_TYPE)
                .into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot encode metrics");
            ApiError::internal().into_response()
        }
    }
}
