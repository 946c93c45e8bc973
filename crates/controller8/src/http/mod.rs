//! The HTTP surface on warp (CONTRACT section 5, documented in `docs/HTTP.md`):
//! `/health`, `/ready`, `/metrics` (open) and the workflow API under
//! `/api/orchestratorm8/workflows` (bearer token when one is configured).
//!
//! Every response is JSON except `/metrics`; every error has the shape
//! `{"error", "code", "status"}` ([`ApiError`]). Build an [`HttpState`], then either
//! [`serve`] it (binds, returns the bound address and the server future) or take the
//! [`routes`] filter (tests).

mod auth;
mod body;
mod error;
mod probes;
mod server;
mod state;
#[cfg(test)]
mod tests;
mod workflows;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::HeaderMap;
use warp::reply::Response;

pub use error::ApiError;
pub use server::{HttpError, serve};
pub use state::{HttpState, HttpTimeouts, api_is_open, follow_settings};

use body::BodyStream;
use workflows::Action;

/// Runs one handler within the request time limit, turns its error into the JSON
/// error response, and counts the request.
async fn finish<F>(state: &HttpState, route: &'static str, fut: F) -> Response
where
    F: Future<Output = Result<Response, ApiError>>,
{
    let res = match tokio::time::timeout(state.timeouts.request, fut).await {
        Ok(Ok(res)) => res,
        Ok(Err(e)) => e.into_response(),
        Err(_) => {
            tracing::warn!(route, timeout = ?state.timeouts.request, "HTTP request timed out");
            ApiError::timeout(state.timeouts.request).into_response()
        }
    };
    let status = res.status().as_u16();
    tracing::debug!(route, status, "HTTP request answered");
    state.metrics.http_request(route, status);
    res
}

/// Checks the bearer token against the settings of this moment.
fn authorize(state: &HttpState, headers: &HeaderMap) -> Result<(), ApiError> {
    auth::authorize(&state.settings.borrow(), headers)
}

/// Every route, with unmatched requests turned into JSON 404/405/400 errors. The
/// filter never rejects.
pub fn routes(state: HttpState) -> BoxedFilter<(Response,)> {
    let state = Arc::new(state);
    let metrics = state.metrics.clone();
    let with_state = warp::any().map(move || state.clone());

    // Path first, then method: a wrong method on a known path is 405, an unknown
    // path 404 whatever the method.
    let health = warp::path!("health")
        .and(warp::get())
        .and(with_state.clone())
        .then(|s: Arc<HttpState>| async move {
            finish(&s, "health", async { Ok(probes::health()) }).await
        });
    let ready = warp::path!("ready")
        .and(warp::get())
        .and(with_state.clone())
        .then(|s: Arc<HttpState>| async move {
            finish(&s, "ready", async { Ok(probes::ready(&s).await) }).await
        });
    let metrics_route = warp::path!("metrics")
        .and(warp::get())
        .and(with_state.clone())
        .then(|s: Arc<HttpState>| async move {
            finish(&s, "metrics", async { Ok(probes::metrics(&s)) }).await
        });

    let list = warp::path!("api" / "orchestratorm8" / "workflows")
        .and(warp::get())
        .and(with_state.clone())
        .and(warp::header::headers_cloned())
        .and(warp::query::<Vec<(String, String)>>())
        .then(
            |s: Arc<HttpState>, h: HeaderMap, q: Vec<(String, String)>| async move {
                finish(&s, "workflows.list", async {
                    authorize(&s, &h)?;
                    workflows::list(&s, &q).await
                })
                .await
            },
        );
    let create = warp::path!("api" / "orchestratorm8" / "workflows")
        .and(warp::post())
        .and(with_state.clone())
        .and(warp::header::headers_cloned())
        .and(body::body_stream())
        .then(
            |s: Arc<HttpState>, h: HeaderMap, b: BodyStream| async move {
                finish(&s, "workflows.create", async {
                    authorize(&s, &h)?;
                    workflows::create(&s, &h, b).await
                })
                .await
            },
        );
    let get = warp::path!("api" / "orchestratorm8" / "workflows" / String)
        .and(warp::get())
        .and(with_state.clone())
        .and(warp::header::headers_cloned())
        .then(|id: String, s: Arc<HttpState>, h: HeaderMap| async move {
            finish(&s, "workflows.get", async {
                authorize(&s, &h)?;
                workflows::get(&s, &id).await
            })
            .await
        });
    let act = warp::path!("api" / "orchestratorm8" / "workflows" / String / Action)
        .and(warp::post())
        .and(with_state)
        .and(warp::header::headers_cloned())
        .then(
            |id: String, action: Action, s: Arc<HttpState>, h: HeaderMap| async move {
                finish(&s, action.route(), async {
                    authorize(&s, &h)?;
                    workflows::act(&s, &id, action).await
                })
                .await
            },
        );

    health
        .or(ready)
        .unify()
        .or(metrics_route)
        .unify()
        .or(list)
        .unify()
        .or(create)
        .unify()
        .or(get)
        .unify()
        .or(act)
        .unify()
        .recover(move |rejection| {
            let metrics = metrics.clone();
            async move {
                let res = error::recover(rejection).await?;
                metrics.http_request("unmatched", res.status().as_u16());
                Ok::<_, Infallible>(res)
            }
        })
        .unify()
        .boxed()
}
