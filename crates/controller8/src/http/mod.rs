//! The HTTP surface on warp (CONTRACT section 5, documented in `docs/HTTP.md` and
//! described by `GET /api/orchestratorm8/openapi.json`): `/health`, `/ready`,
//! `/metrics`, the OpenAPI document and the operator console at `/` (open), and the
//! workflow API under `/api/orchestratorm8/workflows` and its event stream
//! `/api/orchestratorm8/events` (bearer token when one is configured).
//!
//! Every route is listed in [`ROUTES`]; a test checks that the OpenAPI document
//! describes exactly those. Every error has the shape `{"error", "code", "status"}`
//! ([`ApiError`]). Every response carries the security headers
//! ([`CONTENT_SECURITY_POLICY`], `nosniff`, ...). Build an [`HttpState`], then either [`serve`] it (binds, returns the bound address and
//! the server future) or take the [`routes`] filter (tests).

mod auth;
mod body;
mod console;
mod error;
mod events;
mod openapi;
mod probes;
mod replicas;
mod server;
mod stages;
mod state;
#[cfg(test)]
mod tests;
mod workflow_api;
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
pub use state::{HttpState, HttpTimeouts, StageInfo, api_is_open, follow_settings};
pub use workflow_api::WorkflowApi;

use body::BodyStream;
use workflows::Action;

/// One route of the HTTP surface: its name (the `route` label of the request metrics
/// and the `operationId` of the OpenAPI document), method and path (`{id}` for a path
/// parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Name.
    pub name: &'static str,
    /// HTTP method.
    pub method: &'static str,
    /// Path template.
    pub path: &'static str,
}

const fn route(name: &'static str, method: &'static str, path: &'static str) -> Route {
    Route { name, method, path }
}

/// Every route [`routes`] serves. The OpenAPI document must describe exactly these
/// (tested), and a handler may only be run under a name listed here.
pub const ROUTES: &[Route] = &[
    route("console", "get", "/"),
    route("console.js", "get", "/console.js"),
    route("console.css", "get", "/console.css"),
    route("health", "get", "/health"),
    route("ready", "get", "/ready"),
    route("metrics", "get", "/metrics"),
    route("openapi", "get", "/api/orchestratorm8/openapi.json"),
    route("events", "get", "/api/orchestratorm8/events"),
    route("stages", "get", "/api/orchestratorm8/stages"),
    route("replicas", "get", "/api/orchestratorm8/replicas"),
    route("workflows.list", "get", "/api/orchestratorm8/workflows"),
    route("workflows.create", "post", "/api/orchestratorm8/workflows"),
    route("workflows.get", "get", "/api/orchestratorm8/workflows/{id}"),
    route(
        "workflows.cancel",
        "post",
        "/api/orchestratorm8/workflows/{id}/cancel",
    ),
    route(
        "workflows.pause",
        "post",
        "/api/orchestratorm8/workflows/{id}/pause",
    ),
    route(
        "workflows.resume",
        "post",
        "/api/orchestratorm8/workflows/{id}/resume",
    ),
    route(
        "workflows.retry",
        "post",
        "/api/orchestratorm8/workflows/{id}/retry",
    ),
];

/// The Content-Security-Policy of every response: nothing from another host, no
/// inline script or style, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// Adds the security headers to a response: [`CONTENT_SECURITY_POLICY`],
/// `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY`, `Referrer-Policy:
/// no-referrer`.
fn secure(mut res: Response) -> Response {
    use warp::http::{HeaderValue, header};
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    res
}

/// Runs one handler within the request time limit, turns its error into the JSON
/// error response, and counts the request.
async fn finish<F>(state: &HttpState, route: &'static str, fut: F) -> Response
where
    F: Future<Output = Result<Response, ApiError>>,
{
    debug_assert!(
        ROUTES.iter().any(|r| r.name == route),
        "route {route:?} is not in ROUTES (and so not in the OpenAPI document)"
    );
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
        .and(with_state.clone())
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

    let events = warp::path!("api" / "orchestratorm8" / "events")
        .and(warp::get())
        .and(with_state.clone())
        .and(warp::header::headers_cloned())
        .then(|s: Arc<HttpState>, h: HeaderMap| async move {
            finish(&s, "events", async {
                authorize(&s, &h)?;
                let last = h.get("last-event-id").and_then(|v| v.to_str().ok());
                events::events(s.clone(), last)
            })
            .await
        });
    let stages_route = warp::path!("api" / "orchestratorm8" / "stages")
        .and(warp::get())
        .and(with_state.clone())
        .and(warp::header::headers_cloned())
        .then(|s: Arc<HttpState>, h: HeaderMap| async move {
            finish(&s, "stages", async {
                authorize(&s, &h)?;
                stages::stages(&s).await
            })
            .await
        });
    let replicas_route = warp::path!("api" / "orchestratorm8" / "replicas")
        .and(warp::get())
        .and(with_state.clone())
        .and(warp::header::headers_cloned())
        .then(|s: Arc<HttpState>, h: HeaderMap| async move {
            finish(&s, "replicas", async {
                authorize(&s, &h)?;
                replicas::replicas(&s).await
            })
            .await
        });
    let openapi_route = warp::path!("api" / "orchestratorm8" / "openapi.json")
        .and(warp::get())
        .and(with_state.clone())
        .then(|s: Arc<HttpState>| async move {
            finish(&s, "openapi", async { Ok(openapi::response()) }).await
        });
    let console_page = warp::path::end()
        .and(warp::get())
        .and(with_state.clone())
        .and(warp::query::<Vec<(String, String)>>())
        .then(|s: Arc<HttpState>, q: Vec<(String, String)>| async move {
            finish(&s, "console", async { Ok(console::page(&s, &q).await) }).await
        });
    let console_js = warp::path!("console.js")
        .and(warp::get())
        .and(with_state.clone())
        .then(|s: Arc<HttpState>| async move {
            finish(&s, "console.js", async { Ok(console::script()) }).await
        });
    let console_css = warp::path!("console.css")
        .and(warp::get())
        .and(with_state)
        .then(|s: Arc<HttpState>| async move {
            finish(&s, "console.css", async { Ok(console::style()) }).await
        });

    let all = health
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
        .or(events)
        .unify()
        .or(openapi_route)
        .unify()
        .or(stages_route)
        .unify()
        .or(replicas_route)
        .unify()
        .or(console_page)
        .unify()
        .or(console_js)
        .unify()
        .or(console_css)
        .unify()
        .recover(move |rejection| {
            let metrics = metrics.clone();
            async move {
                let res = error::recover(rejection).await?;
                metrics.http_request("unmatched", res.status().as_u16());
                Ok::<_, Infallible>(res)
            }
        })
        .unify();
    warp::path::full()
        .and(all)
        .map(|path: warp::path::FullPath, res: Response| secure(allow(path.as_str(), res)))
        .boxed()
}

/// The methods [`ROUTES`] serve on `path` (`{id}` matching any one segment).
fn methods_of(path: &str) -> Vec<&'static str> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let mut methods: Vec<&'static str> = ROUTES
        .iter()
        .filter(|r| {
            let template: Vec<&str> = r.path.trim_end_matches('/').split('/').collect();
            template.len() == segments.len()
                && template
                    .iter()
                    .zip(&segments)
                    .all(|(t, s)| t == s || (*t == "{id}" && !s.is_empty()))
        })
        .map(|r| if r.method == "get" { "GET" } else { "POST" })
        .collect();
    methods.sort_unstable();
    methods.dedup();
    methods
}

/// Adds `Allow` to a 405 (RFC 9110): the methods the path is served with.
fn allow(path: &str, mut res: Response) -> Response {
    if res.status() == warp::http::StatusCode::METHOD_NOT_ALLOWED {
        let methods = methods_of(path).join(", ");
        if let Ok(v) = warp::http::HeaderValue::from_str(&methods) {
            res.headers_mut().insert(warp::http::header::ALLOW, v);
        }
    }
    res
}
