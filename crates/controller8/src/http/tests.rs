//! Request-level tests of every route and error status, on the in-memory store
//! (`db8::MemoryStore`) and broker (`amqp8::memory::MemoryBroker`), with a "scan now"
//! double that creates real workflows in the store.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use amqp8::memory::MemoryBroker;
use amqp8::{Broker, ConsumeOptions, ConsumerHandle, Decision, QueueDecl, Topology, handler_fn};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use config8::{HttpSettings, Secret};
use db8::{DbError, DbHealth, MemoryStore, NewWorkflow, StagePlan, WorkflowRepository};
use model8::{DomainRef, GoTime, RESULT_QUEUE, WorkflowStatus, WorkflowView};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use uuid::Uuid;
use warp::http::StatusCode;
use warp::test::request;

use super::*;
use crate::clock::ManualClock;
use crate::metrics::Metrics;
use crate::role::Role;
use crate::scan_now::{ScanNow, ScanNowError};

const API: &str = "/api/orchestratorm8/workflows";
const TOKEN: &str = "0123456789abcdef";

// ----- doubles ---------------------------------------------------------------------

/// Declares durable queues on the broker.
async fn declare_queues(broker: &MemoryBroker, names: &[&str]) {
    let topology = Topology {
        exchanges: vec![],
        queues: names
            .iter()
            .map(|n| QueueDecl {
                name: (*n).to_owned(),
                arguments: BTreeMap::new(),
            })
            .collect(),
        bindings: vec![],
    };
    broker.declare(&topology).await.unwrap();
}

/// Starts an acking consumer on `queue`.
async fn start_consumer(broker: &MemoryBroker, queue: &str, tag: &str) -> ConsumerHandle {
    broker
        .consume(
            ConsumeOptions {
                queue: queue.into(),
                tag: tag.into(),
                prefetch: 1,
                autoack: false,
                max_redeliveries: 5,
                dead_letter: None,
            },
            Arc::new(handler_fn(|_| async { Ok(Decision::Ack) })),
        )
        .await
        .unwrap()
}

/// A database whose ping never answers.
struct HangingDb;

#[async_trait]
impl DbHealth for HangingDb {
    async fn ping(&self) -> Result<(), DbError> {
        std::future::pending().await
    }
    fn pool_stats(&self) -> db8::PoolStats {
        db8::PoolStats::default()
    }
}

#[derive(Debug, Clone)]
enum ScanMode {
    Create,
    NotLeader,
    Invalid(&'static str),
    Unavailable,
    Hang,
    /// Waits for the notification, then creates.
    Gate(Arc<tokio::sync::Notify>),
}

/// "Scan now" that records its calls and creates one workflow per requested domain
/// (two new domains when asked for all) in the store.
struct TestScan {
    store: MemoryStore,
    calls: Mutex<Vec<Option<Vec<Uuid>>>>,
    mode: Mutex<ScanMode>,
}

#[async_trait]
impl ScanNow for TestScan {
    async fn scan_now(
        &self,
        domain_ids: Option<Vec<Uuid>>,
    ) -> Result<Vec<WorkflowView>, ScanNowError> {
        self.calls.lock().unwrap().push(domain_ids.clone());
        let mode = self.mode.lock().unwrap().clone();
        match mode {
            ScanMode::Create => {}
            ScanMode::NotLeader => return Err(ScanNowError::NotLeader),
            ScanMode::Invalid(m) => return Err(ScanNowError::Invalid(m.into())),
            ScanMode::Unavailable => {
                return Err(ScanNowError::Db(DbError::Unavailable {
                    host: "db.internal:5432/cptm8".into(),
                    reason: "connection refused".into(),
                }));
            }
            ScanMode::Hang => std::future::pending().await,
            ScanMode::Gate(gate) => gate.notified().await,
        }
        let ids = domain_ids.unwrap_or_else(|| vec![Uuid::new_v4(), Uuid::new_v4()]);
        let mut out = Vec::new();
        for d in ids {
            let id = new_workflow(&self.store, d, &format!("d{}.example.com", d.as_u128())).await;
            out.push(WorkflowRepository::get(&self.store, id).await?);
        }
        Ok(out)
    }
}

fn t0() -> DateTime<Utc> {
    "2025-11-19T10:00:00Z".parse().unwrap()
}

async fn new_workflow(store: &MemoryStore, domain: Uuid, name: &str) -> Uuid {
    let id = Uuid::new_v4();
    let created = store
        .create_workflows(
            &[NewWorkflow {
                id,
                domains: vec![DomainRef {
                    id: domain,
                    name: name.into(),
                    companyname: "ACME".into(),
                }],
                stages: vec![
                    StagePlan {
                        name: "asmm8".into(),
                        depends_on: vec![],
                    },
                    StagePlan {
                        name: "naabum8".into(),
                        depends_on: vec!["asmm8".into()],
                    },
                ],
            }],
            t0(),
        )
        .await
        .unwrap();
    assert_eq!(created, vec![id]);
    id
}

// ----- fixture ---------------------------------------------------------------------

struct Fx {
    store: MemoryStore,
    broker: MemoryBroker,
    scan: Arc<TestScan>,
    metrics: Arc<Metrics>,
    role: watch::Sender<Role>,
    settings: watch::Sender<HttpSettings>,
    state: HttpState,
}

impl Fx {
    /// Store and broker up; downstream queues `qasmm8` (one consumer) and `qnaabum8`
    /// (none) declared, `qmissing` not; the result queue declared, not consumed.
    async fn new() -> Self {
        let store = MemoryStore::new();
        let broker = MemoryBroker::new();
        declare_queues(&broker, &["qasmm8", "qnaabum8", RESULT_QUEUE]).await;
        // Consumers run until stopped; the handle is not needed.
        let _ = start_consumer(&broker, "qasmm8", "casmm8").await;
        let scan = Arc::new(TestScan {
            store: store.clone(),
            calls: Mutex::new(vec![]),
            mode: Mutex::new(ScanMode::Create),
        });
        let metrics = Arc::new(Metrics::new());
        let (role, role_rx) = watch::channel(Role::Leader);
        let (settings, settings_rx) = watch::channel(HttpSettings {
            api_token: None,
            body_limit: 1024,
        });
        let state = HttpState {
            workflows: Arc::new(store.clone()),
            scan: scan.clone(),
            db: Arc::new(store.clone()),
            replicas: Arc::new(store.clone()),
            broker: Arc::new(broker.clone()),
            role: role_rx,
            metrics: metrics.clone(),
            settings: settings_rx,
            clock: Arc::new(ManualClock::new(t0() + chrono::Duration::minutes(5))),
            downstream_queues: vec!["qasmm8".into(), "qnaabum8".into(), "qmissing".into()],
            managed: false,
            stages: vec![
                StageInfo {
                    name: "asmm8".into(),
                    queue: Some("qasmm8".into()),
                    queue_max_length: Some(1),
                    max_in_flight: 1,
                },
                StageInfo {
                    name: "naabum8".into(),
                    queue: Some("qmissing".into()),
                    queue_max_length: None,
                    max_in_flight: 0,
                },
            ],
            timeouts: HttpTimeouts {
                request: Duration::from_secs(10),
                check: Duration::from_millis(500),
                drain: Duration::from_secs(5),
                ..HttpTimeouts::default()
            },
        };
        Fx {
            store,
            broker,
            scan,
            metrics,
            role,
            settings,
            state,
        }
    }

    /// A fixture, its routes and one pending workflow (of `a.example.com`).
    async fn with_workflow() -> (Self, BoxedFilter<(Response,)>, Uuid) {
        let fx = Self::new().await;
        let routes = fx.routes();
        let id = new_workflow(&fx.store, Uuid::new_v4(), "a.example.com").await;
        (fx, routes, id)
    }

    fn routes(&self) -> BoxedFilter<(Response,)> {
        routes(self.state.clone())
    }

    fn set_token(&self, token: Option<&str>) {
        self.settings
            .send_modify(|s| s.api_token = token.map(Secret::new));
    }

    fn calls(&self) -> Vec<Option<Vec<Uuid>>> {
        self.scan.calls.lock().unwrap().clone()
    }
}

struct Reply {
    status: StatusCode,
    headers: warp::http::HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text))
    }

    /// Asserts an error reply of this status and code, with the JSON error shape.
    fn assert_error(&self, status: StatusCode, code: &str) -> String {
        assert_eq!(self.status, status, "{}", self.text);
        assert_eq!(
            self.headers.get("content-type").unwrap(),
            "application/json",
            "{}",
            self.text
        );
        let v = self.json();
        assert_eq!(v["code"], code, "{v}");
        assert_eq!(v["status"], status.as_u16(), "{v}");
        v["error"].as_str().expect("error message").to_owned()
    }
}

async fn send(
    routes: &BoxedFilter<(Response,)>,
    method: &str,
    path: &str,
    build: impl FnOnce(warp::test::RequestBuilder) -> warp::test::RequestBuilder,
) -> Reply {
    let res = build(request().method(method).path(path))
        .reply(routes)
        .await;
    Reply {
        status: res.status(),
        headers: res.headers().clone(),
        text: String::from_utf8(res.body().to_vec()).unwrap(),
    }
}

async fn get(routes: &BoxedFilter<(Response,)>, path: &str) -> Reply {
    send(routes, "GET", path, |r| r).await
}

async fn post_json(routes: &BoxedFilter<(Response,)>, path: &str, body: &str) -> Reply {
    send(routes, "POST", path, |r| {
        r.header("content-type", "application/json").body(body)
    })
    .await
}

fn bearer(token: &str) -> impl FnOnce(warp::test::RequestBuilder) -> warp::test::RequestBuilder {
    let value = format!("Bearer {token}");
    move |r| r.header("authorization", value)
}

// ----- probes ----------------------------------------------------------------------

#[tokio::test]
async fn health_is_200_with_service_and_rfc3339_timestamp() {
    let fx = Fx::new().await;
    let r = get(&fx.routes(), "/health").await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["status"], "healthy");
    assert_eq!(v["service"], "orchestratorm8");
    v["timestamp"].as_str().unwrap().parse::<GoTime>().unwrap();
    // Liveness does not depend on the database.
    fx.store.set_available(false);
    assert_eq!(get(&fx.routes(), "/health").await.status, StatusCode::OK);
}

#[tokio::test]
async fn ready_reports_checks_role_and_downstream_consumers() {
    let fx = Fx::new().await;
    let r = get(&fx.routes(), "/ready").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let v = r.json();
    assert_eq!(v["status"], "ready");
    assert_eq!(v["service"], "orchestratorm8");
    assert_eq!(v["role"], "leader");
    assert_eq!(
        v["checks"],
        json!({"database": "healthy", "rabbitmq": "healthy"})
    );
    // A missing downstream queue is null and does not make it unready.
    assert_eq!(
        v["consumers"],
        json!({"qasmm8": 1, "qnaabum8": 0, "qmissing": null})
    );
    assert!(v.get("warnings").is_none(), "{v}");
    v["timestamp"].as_str().unwrap().parse::<GoTime>().unwrap();
}

/// `/ready` answers 503, "not ready", with check `down` unhealthy and `up` healthy.
async fn not_ready(fx: &Fx, down: &str, up: &str) -> Reply {
    let r = get(&fx.routes(), "/ready").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    let v = r.json();
    assert_eq!(v["status"], "not ready");
    assert_eq!(v["checks"][down], "unhealthy");
    assert_eq!(v["checks"][up], "healthy");
    r
}

/// [`not_ready`] during an outage (`outage(true)`), 200 again after it
/// (`outage(false)`). Returns the 503 body.
async fn not_ready_during(fx: &Fx, outage: impl Fn(bool), down: &str, up: &str) -> Value {
    outage(true);
    let v = not_ready(fx, down, up).await.json();
    outage(false);
    assert_eq!(get(&fx.routes(), "/ready").await.status, StatusCode::OK);
    v
}

#[tokio::test]
async fn ready_is_503_when_the_database_is_down() {
    let fx = Fx::new().await;
    let outage = |down: bool| fx.store.set_available(!down);
    not_ready_during(&fx, outage, "database", "rabbitmq").await;
}

#[tokio::test]
async fn ready_is_503_when_the_broker_is_disconnected() {
    let fx = Fx::new().await;
    let outage = |down: bool| fx.broker.set_outage(down);
    let v = not_ready_during(&fx, outage, "rabbitmq", "database").await;
    assert_eq!(
        v["consumers"],
        json!({"qasmm8": null, "qnaabum8": null, "qmissing": null})
    );
}

#[tokio::test]
async fn blocked_broker_is_a_warning_not_unready() {
    let fx = Fx::new().await;
    fx.broker.set_blocked(true);
    let r = get(&fx.routes(), "/ready").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let w = r.json()["warnings"].to_string();
    assert!(w.contains("blocking publishers"), "{w}");
}

#[tokio::test]
async fn standby_with_healthy_connections_is_ready() {
    let mut fx = Fx::new().await;
    fx.state.managed = true;
    fx.role.send(Role::Standby).unwrap();
    // Not consuming results: fine for a standby.
    let r = get(&fx.routes(), "/ready").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let v = r.json();
    assert_eq!(v["role"], "standby");
    assert_eq!(v["leadership"], "standby");
    assert_eq!(v["checks"]["result_consumer"], "unhealthy");
    // A candidate (the lock unknown) is a standby for the contract's role, and ready.
    fx.role.send(Role::Candidate).unwrap();
    let r = get(&fx.routes(), "/ready").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        (r.json()["role"].clone(), r.json()["leadership"].clone()),
        (serde_json::json!("standby"), serde_json::json!("candidate"))
    );
    // The same replica as leader must consume results to be ready.
    fx.role.send(Role::Leader).unwrap();
    let r = get(&fx.routes(), "/ready").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert_eq!(r.json()["role"], "leader");
    let consumer = start_consumer(&fx.broker, RESULT_QUEUE, "corchestratorm8").await;
    let r = get(&fx.routes(), "/ready").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["checks"]["result_consumer"], "healthy");
    consumer.stop(Duration::ZERO).await;
    assert_eq!(
        get(&fx.routes(), "/ready").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // A standby with a dead database is not ready.
    fx.role.send(Role::Standby).unwrap();
    fx.store.set_available(false);
    assert_eq!(
        get(&fx.routes(), "/ready").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test(start_paused = true)]
async fn ready_answers_within_the_check_timeout_when_dependencies_hang() {
    let mut fx = Fx::new().await;
    fx.state.db = Arc::new(HangingDb);
    // Queue checks wait (up to an hour) for a broker that is down.
    fx.broker.set_outage_wait(Duration::from_secs(3600));
    fx.broker.set_outage(true);
    let started = tokio::time::Instant::now();
    let r = get(&fx.routes(), "/ready").await;
    let took = started.elapsed();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    let v = r.json();
    assert_eq!(v["checks"]["database"], "unhealthy");
    assert_eq!(
        v["consumers"],
        json!({"qasmm8": null, "qnaabum8": null, "qmissing": null})
    );
    // Checks run concurrently: one check timeout in all (virtual time).
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(took < Duration::from_millis(1000), "{took:?}");
}

#[tokio::test]
async fn metrics_expose_counters_and_scrape_time_gauges() {
    let fx = Fx::new().await;
    fx.metrics.stage_published("asmm8");
    fx.metrics.stage_publish_nacked("asmm8");
    fx.metrics.workflows_started(2);
    let _consumer = start_consumer(&fx.broker, RESULT_QUEUE, "corchestratorm8").await;
    fx.set_token(Some(TOKEN)); // /metrics stays open
    let routes = fx.routes();
    let _ = get(&routes, "/health").await;
    let r = get(&routes, "/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.headers.get("content-type").unwrap(),
        Metrics::CONTENT_TYPE
    );
    for needle in [
        "orchestratorm8_stage_publishes_total{stage=\"asmm8\"} 1",
        "orchestratorm8_stage_publish_nacks_total{stage=\"asmm8\"} 1",
        "orchestratorm8_workflows_started_total 2",
        "orchestratorm8_leader 1",
        "orchestratorm8_amqp_connected 1",
        "orchestratorm8_db_pool_connections 0",
        "orchestratorm8_amqp_pool_connections 1",
        "orchestratorm8_consumer_active{consumer=\"casmm8\",queue=\"qasmm8\"} 1",
        "orchestratorm8_http_requests_total{route=\"health\",status=\"200\"} 1",
        "# EOF",
    ] {
        assert!(r.text.contains(needle), "missing {needle:?} in\n{}", r.text);
    }
    assert!(
        r.text.contains(
            "orchestratorm8_consumer_active{consumer=\"corchestratorm8\",queue=\"qorchestratorm8\"} 1"
        ),
        "{}",
        r.text
    );
    // The role gauge follows the role watch at scrape time.
    fx.role.send(Role::Standby).unwrap();
    let r = get(&routes, "/metrics").await;
    assert!(r.text.contains("orchestratorm8_leader 0"), "{}", r.text);
    assert!(!r.text.contains(TOKEN));
}

// ----- routing errors --------------------------------------------------------------

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405_as_json() {
    let fx = Fx::new().await;
    let routes = fx.routes();
    for (method, path) in [
        ("GET", "/nope"),
        ("POST", "/nope"),
        ("GET", "/api/orchestratorm8"),
        ("POST", &format!("{API}/{}/restart", Uuid::new_v4())),
        ("GET", &format!("{API}/{}/cancel/x", Uuid::new_v4())),
    ] {
        send(&routes, method, path, |r| r)
            .await
            .assert_error(StatusCode::NOT_FOUND, "not_found");
    }
    for (method, path, allow) in [
        ("POST", "/health".to_owned(), "GET"),
        ("DELETE", "/ready".to_owned(), "GET"),
        ("PUT", "/metrics".to_owned(), "GET"),
        ("TRACE", "/".to_owned(), "GET"),
        ("DELETE", API.to_owned(), "GET, POST"),
        ("POST", format!("{API}/{}", Uuid::new_v4()), "GET"),
        ("GET", format!("{API}/{}/cancel", Uuid::new_v4()), "POST"),
    ] {
        let r = send(&routes, method, &path, |r| r).await;
        r.assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
        assert_eq!(r.headers.get("allow").unwrap(), allow, "{method} {path}");
    }
}

// ----- workflow API ----------------------------------------------------------------

#[tokio::test]
async fn list_returns_workflows_and_filters_by_status() {
    let fx = Fx::new().await;
    let routes = fx.routes();
    assert_eq!(get(&routes, API).await.json(), json!([]));
    let a = new_workflow(&fx.store, Uuid::new_v4(), "a.example.com").await;
    let b = new_workflow(&fx.store, Uuid::new_v4(), "b.example.com").await;
    WorkflowRepository::pause(&fx.store, b, t0()).await.unwrap();

    let r = get(&routes, API).await;
    assert_eq!(r.status, StatusCode::OK);
    let all: Vec<WorkflowView> = serde_json::from_str(&r.text).unwrap();
    assert_eq!(all.len(), 2);
    let v = r.json();
    let first = &v[0];
    for key in [
        "id",
        "status",
        "created_at",
        "updated_at",
        "domains",
        "stages",
    ] {
        assert!(first.get(key).is_some(), "{key} missing in {first}");
    }
    assert_eq!(first["stages"][0]["name"], "asmm8");
    assert_eq!(first["stages"][0]["attempt"], 0);

    let paused: Vec<WorkflowView> =
        serde_json::from_str(&get(&routes, &format!("{API}?status=paused")).await.text).unwrap();
    assert_eq!(paused.iter().map(|w| w.id).collect::<Vec<_>>(), vec![b]);
    assert_eq!(paused[0].status, WorkflowStatus::Paused);
    assert_eq!(paused[0].domains, vec!["b.example.com".to_owned()]);
    let pending: Vec<WorkflowView> =
        serde_json::from_str(&get(&routes, &format!("{API}?status=pending")).await.text).unwrap();
    assert_eq!(pending.iter().map(|w| w.id).collect::<Vec<_>>(), vec![a]);
    let one: Vec<WorkflowView> =
        serde_json::from_str(&get(&routes, &format!("{API}?limit=1")).await.text).unwrap();
    assert_eq!(one.len(), 1);
}

#[tokio::test]
async fn list_rejects_bad_query_parameters() {
    let fx = Fx::new().await;
    let routes = fx.routes();
    let msg = get(&routes, &format!("{API}?status=done"))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    assert!(
        msg.contains("\"done\"")
            && msg.contains("pending, running, paused, completed, failed, cancelled"),
        "{msg}"
    );
    for q in [
        "status=",
        "limit=0",
        "limit=1001",
        "limit=ten",
        "stauts=running",
        "status=running&status=paused",
    ] {
        get(&routes, &format!("{API}?{q}"))
            .await
            .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    }
}

#[tokio::test]
async fn get_one_workflow_or_404_or_400() {
    let (_fx, routes, id) = Fx::with_workflow().await;
    let r = get(&routes, &format!("{API}/{id}")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let v: WorkflowView = serde_json::from_str(&r.text).unwrap();
    assert_eq!(v.id, id);
    assert_eq!(v.status, WorkflowStatus::Pending);

    let unknown = Uuid::new_v4();
    get(&routes, &format!("{API}/{unknown}"))
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    let msg = get(&routes, &format!("{API}/not-a-uuid"))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    assert!(msg.contains("not-a-uuid"), "{msg}");
}

#[tokio::test]
async fn scan_now_creates_workflows() {
    let fx = Fx::new().await;
    let routes = fx.routes();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());

    let r = post_json(&routes, API, "{}").await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let created: Vec<WorkflowView> = serde_json::from_str(&r.text).unwrap();
    assert_eq!(created.len(), 2);
    for w in &created {
        assert_eq!(WorkflowRepository::get(&fx.store, w.id).await.unwrap(), *w);
    }

    let body = json!({"domain_ids": [a, b, a]}).to_string();
    let r = post_json(&routes, API, &body).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(r.json().as_array().unwrap().len(), 2);

    // An empty body and a null list mean "every enabled domain", like {}.
    let r = send(&routes, "POST", API, |r| r).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let r = post_json(&routes, API, r#"{"domain_ids": null}"#).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    // Content type with parameters is fine.
    let r = send(&routes, "POST", API, |r| {
        r.header("content-type", "application/json; charset=utf-8")
            .body(json!({"domain_ids": [Uuid::new_v4()]}).to_string())
    })
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);

    let calls = fx.calls();
    assert_eq!(calls[0], None);
    assert_eq!(calls[1], Some(vec![a, b]), "duplicates dropped, order kept");
    assert_eq!(calls[2], None);
    assert_eq!(calls[3], None);
    assert_eq!(calls.len(), 5);
}

#[tokio::test]
async fn scan_now_rejects_bad_bodies_without_calling_the_engine() {
    let fx = Fx::new().await;
    let routes = fx.routes();
    for (body, needle) in [
        (r#"{"domain_ids": []}"#, "empty"),
        (r#"{"domain_id": []}"#, "domain_id"),
        (r#"{"domain_ids": ["nope"]}"#, "invalid domain id \"nope\""),
        (r#"{"domain_ids": [42]}"#, "invalid JSON"),
        (r#"{"domain_ids": "#, "invalid JSON"),
        (r#"[1,2]"#, "invalid JSON"),
        // An array of the fields would otherwise read as {"domain_ids": null}: every
        // domain (found by schemathesis).
        (r#"[null]"#, "expected an object"),
        (r#"null"#, "expected an object"),
    ] {
        let msg = post_json(&routes, API, body)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "bad_request");
        assert!(msg.contains(needle), "{body}: {msg}");
    }
    let msg = send(&routes, "POST", API, |r| {
        r.header("content-type", "text/plain").body("{}")
    })
    .await
    .assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    assert!(msg.contains("text/plain"), "{msg}");

    // Over the live body limit (1024 bytes): 413, before the engine is asked.
    let big = json!({"domain_ids": vec![Uuid::nil(); 40]}).to_string();
    assert!(big.len() > 1024);
    let msg = post_json(&routes, API, &big)
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    assert!(msg.contains("1024"), "{msg}");
    // The limit is live, and a reload reports it live.
    assert_eq!(reported(|s| s.body_limit = 4096).live, ["HTTP.body_limit"]);
    fx.settings.send_modify(|s| s.body_limit = 4096);
    let r = post_json(&routes, API, &big).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(fx.calls().len(), 1);
}

#[tokio::test]
async fn scan_now_engine_errors_map_to_statuses() {
    let fx = Fx::new().await;
    let routes = fx.routes();
    *fx.scan.mode.lock().unwrap() = ScanMode::NotLeader;
    let r = post_json(&routes, API, "{}").await;
    r.assert_error(StatusCode::SERVICE_UNAVAILABLE, "not_leader");
    assert_eq!(r.headers.get("retry-after").unwrap(), "5");

    *fx.scan.mode.lock().unwrap() = ScanMode::Invalid("unknown domain ids: 42");
    let msg = post_json(&routes, API, "{}")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    assert_eq!(msg, "unknown domain ids: 42");

    *fx.scan.mode.lock().unwrap() = ScanMode::Unavailable;
    let r = post_json(&routes, API, "{}").await;
    let msg = r.assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert!(!msg.contains("db.internal"), "host leaked: {msg}");
}

#[tokio::test(start_paused = true)]
async fn a_handler_that_hangs_gets_503_timeout() {
    let fx = Fx::new().await;
    *fx.scan.mode.lock().unwrap() = ScanMode::Hang;
    let msg = post_json(&fx.routes(), API, "{}")
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "timeout");
    assert!(msg.contains("10s"), "{msg}");
}

/// `POST {API}/{id}/{action}`, without credentials.
async fn act(routes: &BoxedFilter<(Response,)>, id: impl std::fmt::Display, action: &str) -> Reply {
    send(routes, "POST", &format!("{API}/{id}/{action}"), |r| r).await
}

/// `action` on workflow `id` is answered 200 and, sent again, 409; returns the first
/// answer's body.
async fn act_then_conflict(routes: &BoxedFilter<(Response,)>, id: Uuid, action: &str) -> Value {
    let r = act(routes, id, action).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    act(routes, id, action)
        .await
        .assert_error(StatusCode::CONFLICT, "conflict");
    r.json()
}

#[tokio::test]
async fn pause_resume_cancel_follow_the_state_machine() {
    let (fx, routes, id) = Fx::with_workflow().await;

    let v = act_then_conflict(&routes, id, "pause").await;
    assert_eq!(v["status"], "paused");
    assert_eq!(v["id"], id.to_string());

    let v = act_then_conflict(&routes, id, "resume").await;
    assert_ne!(v["status"], "paused");

    let r = act(&routes, id, "cancel").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["status"], "cancelled");
    assert_eq!(
        WorkflowRepository::get(&fx.store, id).await.unwrap().status,
        WorkflowStatus::Cancelled
    );
    for action in ["cancel", "pause", "resume"] {
        act(&routes, id, action)
            .await
            .assert_error(StatusCode::CONFLICT, "conflict");
    }
    let text = fx.metrics.encode(&Default::default()).unwrap();
    assert!(
        crate::Metrics::sample(&text, "orchestratorm8_workflows_cancelled_total") == Some(1.0),
        "{text}"
    );

    let unknown = Uuid::new_v4();
    for action in ["cancel", "pause", "resume"] {
        act(&routes, unknown, action)
            .await
            .assert_error(StatusCode::NOT_FOUND, "not_found");
        act(&routes, "123", action)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "bad_request");
    }
}

#[tokio::test]
async fn database_outage_is_503_on_the_api() {
    let (fx, routes, id) = Fx::with_workflow().await;
    fx.store.set_available(false);
    for r in [
        get(&routes, API).await,
        get(&routes, &format!("{API}/{id}")).await,
        act(&routes, id, "pause").await,
    ] {
        r.assert_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
        assert_eq!(r.headers.get("retry-after").unwrap(), "5");
    }
}

// ----- authentication --------------------------------------------------------------

#[tokio::test]
async fn token_protects_the_api_but_not_the_probes() {
    let fx = Fx::new().await;
    fx.set_token(Some(TOKEN));
    let routes = fx.routes();
    let id = new_workflow(&fx.store, Uuid::new_v4(), "a.example.com").await;

    let r = get(&routes, API).await;
    let msg = r.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(msg.contains("missing"), "{msg}");
    assert_eq!(
        r.headers.get("www-authenticate").unwrap(),
        r#"Bearer realm="orchestratorm8""#
    );

    // Wrong token of the same length, and other malformed credentials.
    let wrong = "0123456789abcdeF";
    assert_eq!(wrong.len(), TOKEN.len());
    let r = send(&routes, "GET", API, bearer(wrong)).await;
    r.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(
        r.headers.get("www-authenticate").unwrap(),
        r#"Bearer realm="orchestratorm8", error="invalid_token""#
    );
    assert!(!r.text.contains(TOKEN) && !r.text.contains(wrong));
    for value in [TOKEN.to_owned(), format!("Basic {TOKEN}"), "Bearer ".into()] {
        send(&routes, "GET", API, |r| r.header("authorization", value))
            .await
            .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    }

    // Every API route is protected; an unauthenticated body is never read.
    for r in [
        send(&routes, "GET", &format!("{API}/{id}"), |r| r).await,
        act(&routes, id, "cancel").await,
        post_json(&routes, API, &"x".repeat(5000)).await,
    ] {
        r.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    assert!(fx.calls().is_empty());
    assert_eq!(
        WorkflowRepository::get(&fx.store, id).await.unwrap().status,
        WorkflowStatus::Pending
    );

    // The right token works on every route.
    assert_eq!(list_status_with(&routes, TOKEN).await, StatusCode::OK);
    assert_eq!(
        send(&routes, "GET", &format!("{API}/{id}"), bearer(TOKEN))
            .await
            .status,
        StatusCode::OK
    );
    let r = send(&routes, "POST", API, |r| {
        bearer(TOKEN)(r)
            .header("content-type", "application/json")
            .body("{}")
    })
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(
        send(
            &routes,
            "POST",
            &format!("{API}/{id}/cancel"),
            bearer(TOKEN)
        )
        .await
        .status,
        StatusCode::OK
    );

    // Probes stay open.
    for path in ["/health", "/ready", "/metrics"] {
        assert_eq!(get(&routes, path).await.status, StatusCode::OK, "{path}");
    }
}

/// The status of `GET {API}` with bearer `token`.
async fn list_status_with(routes: &BoxedFilter<(Response,)>, token: &str) -> StatusCode {
    send(routes, "GET", API, bearer(token)).await.status
}

#[tokio::test]
async fn token_changes_apply_to_the_next_request() {
    let r = reported(|s| s.api_token = Some(Secret::new("first-token")));
    assert_eq!(
        (r.live, r.restart_required.len()),
        (vec!["HTTP.api_token".to_owned()], 0)
    );
    let fx = Fx::new().await;
    let routes = fx.routes();
    // Open at first.
    assert_eq!(get(&routes, API).await.status, StatusCode::OK);

    fx.set_token(Some("first-token"));
    assert_eq!(get(&routes, API).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        list_status_with(&routes, "first-token").await,
        StatusCode::OK
    );

    fx.set_token(Some("second-token"));
    assert_eq!(
        list_status_with(&routes, "first-token").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        list_status_with(&routes, "second-token").await,
        StatusCode::OK
    );

    // An emptied token opens the API again.
    fx.set_token(Some(""));
    assert_eq!(get(&routes, API).await.status, StatusCode::OK);
}

/// What `config8::diff` reports of the HTTP change `f` in a reload.
fn reported(f: impl FnOnce(&mut HttpSettings)) -> config8::ChangeReport {
    let old = config8::Settings::default();
    let mut new = old.clone();
    f(&mut new.http);
    config8::diff(&old, &new)
}

// ----- real socket -----------------------------------------------------------------

/// One request as raw bytes, the whole response as text. Raw on purpose, not reqwest:
/// these tests send malformed, oversized, chunked and slow requests a client library
/// refuses to send, and read the exact status line and headers.
async fn raw_http(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = connect(addr).await;
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .expect("response within 10 s")
        .unwrap();
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn serves_on_a_real_socket_and_shuts_down() {
    let served = Served::start(|_| {}).await;
    let (fx, addr) = (&served.fx, served.addr);
    assert_ne!(addr.port(), 0);

    let res = health_ok(addr).await;
    assert!(
        res.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{res}"
    );
    let body = res.split("\r\n\r\n").nth(1).unwrap();
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["status"], "healthy");

    // A chunked body (no Content-Length) over the limit is cut off with 413.
    let mut req = b"POST /api/orchestratorm8/workflows HTTP/1.1\r\nHost: localhost\r\n\
Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        .to_vec();
    for _ in 0..2 {
        req.extend_from_slice(format!("{:x}\r\n{}\r\n", 1000, " ".repeat(1000)).as_bytes());
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let res = raw_http(addr, &req).await;
    assert!(res.starts_with("HTTP/1.1 413 "), "{res}");
    assert!(res.contains("payload_too_large"), "{res}");
    assert!(fx.calls().is_empty());

    // Another server on the same address: a clear error naming it.
    let err = serve(addr, fx.state.clone(), std::future::pending())
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(err, HttpError::AddrInUse { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains(&format!("address {addr} already in use")),
        "{err}"
    );

    served.stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), served.server)
        .await
        .expect("server stops within 10 s of the signal")
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed after shutdown"
    );
}

#[tokio::test]
async fn shutdown_does_not_wait_forever_for_a_hung_request() {
    let served = Served::start(|t| {
        t.request = Duration::from_secs(600);
        t.drain = Duration::from_millis(200);
    })
    .await;
    let (fx, addr) = (&served.fx, served.addr);
    *fx.scan.mode.lock().unwrap() = ScanMode::Hang;

    // Wait until the request is inside the (hanging) engine call.
    let client = scan_now_in_progress(addr, fx).await;
    served.stop.send(()).unwrap();
    // Without the drain bound the server would wait for the request (600 s).
    tokio::time::timeout(Duration::from_secs(10), served.server)
        .await
        .expect("server stops after the drain time despite the hung request")
        .unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    drop(client);
}

// ----- connection limits (real sockets) ----------------------------------------------
//
// Every wait below is on a condition (a close, a response, the server's end) under a
// generous outer timeout; no test asserts how long something took.

const GET_HEALTH_KEEP_ALIVE: &[u8] = b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// Serves `state` on a free port; returns the address, the shutdown trigger and the
/// server future's task.
async fn start(
    state: HttpState,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (addr, server) = serve("127.0.0.1:0".parse().unwrap(), state, async {
        let _ = stopped.await;
    })
    .await
    .unwrap();
    (addr, stop, tokio::spawn(server))
}

/// A fixture served on a real socket (see [`start`]).
struct Served {
    fx: Fx,
    addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
}

impl Served {
    /// [`Fx::new`] with its timeouts set by `tune`, served on a free port.
    async fn start(tune: impl FnOnce(&mut HttpTimeouts)) -> Served {
        let mut fx = Fx::new().await;
        tune(&mut fx.state.timeouts);
        let (addr, stop, server) = start(fx.state.clone()).await;
        Served {
            fx,
            addr,
            stop,
            server,
        }
    }

    /// Sends the shutdown signal and waits (30 s at most) for the server to stop.
    async fn stop(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(30), self.server)
            .await
            .expect("server stops")
            .unwrap();
    }
}

/// `GET /health` on a new connection (closed after the answer); asserts a 200 and
/// returns the response.
async fn health_ok(addr: std::net::SocketAddr) -> String {
    let res = raw_http(
        addr,
        b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 200 OK\r\n"), "{res}");
    res
}

/// `GET /health` on the keep-alive connection `conn`; asserts a 200 and returns the
/// response, leaving the connection open.
async fn health_ok_keep_alive(conn: &mut tokio::net::TcpStream) -> String {
    conn.write_all(GET_HEALTH_KEEP_ALIVE).await.unwrap();
    let res = read_response(conn).await;
    assert!(res.starts_with("HTTP/1.1 200 OK\r\n"), "{res}");
    res
}

/// Sends "scan now" on a new connection and waits until the request is inside the
/// engine call (which the test made hang or wait at a gate); returns the connection.
async fn scan_now_in_progress(addr: std::net::SocketAddr, fx: &Fx) -> tokio::net::TcpStream {
    let mut client = connect(addr).await;
    client
        .write_all(
            b"POST /api/orchestratorm8/workflows HTTP/1.1\r\nHost: localhost\r\n\
Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
        )
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while fx.calls().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "request never reached the engine"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    client
}

async fn connect(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .expect("connect within 10 s")
    .unwrap()
}

/// Waits until the server closes `stream` (end of stream, or a reset), reading and
/// discarding whatever arrives; panics after 30 s.
async fn wait_closed(stream: &mut tokio::net::TcpStream, what: &str) {
    tokio::time::timeout(Duration::from_secs(30), read_until_closed(stream))
        .await
        .unwrap_or_else(|_| panic!("{what}: the server did not close the connection within 30 s"));
}

/// Reads and discards until the end of stream or an error (a reset).
async fn read_until_closed(stream: &mut (impl tokio::io::AsyncRead + Unpin)) {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Reads one response with a `Content-Length` (head and body) from a keep-alive
/// connection, leaving the connection open.
async fn read_response(stream: &mut tokio::net::TcpStream) -> String {
    let read = async {
        let mut data = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&data).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let len: usize = text[..end]
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().unwrap())
                    })
                    .expect("a Content-Length");
                if data.len() >= end + 4 + len {
                    return text;
                }
            }
            let n = stream.read(&mut buf).await.unwrap();
            assert_ne!(n, 0, "connection closed mid-response: {text}");
            data.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("response within 10 s")
}

/// Whether the server has closed `stream`, without waiting.
fn is_closed_now(stream: &tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match stream.try_read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

#[tokio::test]
async fn slow_or_incomplete_request_heads_are_disconnected_while_others_are_served() {
    let served = Served::start(|t| t.header_read = Duration::from_secs(1)).await;
    let addr = served.addr;

    // A: the request line and one header, never the blank line that ends the head.
    let mut stalled = connect(addr).await;
    stalled
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    // B: a slowloris, one byte of an endless header every 50 ms.
    let slow = connect(addr).await;
    let (mut slow_read, mut slow_write) = slow.into_split();
    let trickle = tokio::spawn(async move {
        slow_write
            .write_all(b"GET /health HTTP/1.1\r\nX-Slow: ")
            .await
            .unwrap();
        loop {
            if slow_write.write_all(b"a").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // C: connected, nothing sent.
    let mut silent = connect(addr).await;

    // Meanwhile a normal request on another connection is served.
    health_ok(addr).await;

    // Each stalled connection is closed by the server, without an answer.
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stalled.read_to_end(&mut out))
        .await
        .expect("the incomplete head is disconnected within 30 s")
        .unwrap();
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    wait_closed(&mut silent, "a connection that sends nothing").await;
    tokio::time::timeout(Duration::from_secs(30), read_until_closed(&mut slow_read))
        .await
        .expect("the slowloris is disconnected within 30 s although it keeps sending");
    trickle.abort();

    // The server is unaffected.
    health_ok(addr).await;
    served.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let served = Served::start(|t| t.header_read = Duration::from_millis(500)).await;

    let mut conn = connect(served.addr).await;
    for _ in 0..2 {
        let res = health_ok_keep_alive(&mut conn).await;
        assert!(
            !res.to_ascii_lowercase().contains("connection: close"),
            "{res}"
        );
    }
    wait_closed(&mut conn, "an idle keep-alive connection").await;

    served.stop().await;
}

#[tokio::test]
async fn a_connection_is_closed_after_its_maximum_age() {
    let served = Served::start(|t| {
        t.header_read = Duration::from_secs(600);
        t.max_age = Duration::from_millis(300);
    })
    .await;

    let mut conn = connect(served.addr).await;
    health_ok_keep_alive(&mut conn).await;
    // Not the header timeout (600 s): the age limit closes it.
    wait_closed(&mut conn, "a connection past its age").await;

    served.stop().await;
}

#[tokio::test]
async fn a_client_that_does_not_read_its_responses_is_disconnected() {
    let served = Served::start(|t| {
        t.write = Duration::from_millis(500);
        t.header_read = Duration::from_secs(600);
        t.max_age = Duration::from_secs(600);
    })
    .await;
    let addr = served.addr;

    // Pipelined requests, responses never read: once the socket buffers are full the
    // server's writes stall.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let conn = tokio::time::timeout(Duration::from_secs(10), socket.connect(addr))
        .await
        .expect("connect within 10 s")
        .unwrap();
    let (_unread, mut write) = conn.into_split();
    let batch = GET_HEALTH_KEEP_ALIVE.repeat(100);
    let writer = tokio::spawn(async move {
        loop {
            if let Err(e) = write.write_all(&batch).await {
                return e;
            }
        }
    });
    // Without the write timeout the server would hold the connection forever, and the
    // writer would block forever once the server stops reading.
    let err = tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .expect("the server drops the connection within 60 s")
        .unwrap();
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "{err:?}"
    );

    health_ok(addr).await;
    served.stop().await;
}

#[tokio::test]
async fn connections_over_the_cap_wait_for_a_free_slot() {
    let served = Served::start(|t| {
        t.max_connections = 2;
        t.header_read = Duration::from_secs(1);
    })
    .await;

    // Two connections that send nothing take both slots...
    let first = connect(served.addr).await;
    let second = connect(served.addr).await;
    // ...so this request waits in the backlog until the header timeout frees one.
    health_ok(served.addr).await;
    assert!(
        is_closed_now(&first) || is_closed_now(&second),
        "the third connection was served while both slots were taken"
    );

    served.stop().await;
}

#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections_and_finishes_requests_in_progress() {
    // Long enough that only the graceful shutdown can explain a prompt end.
    let served = Served::start(|t| {
        t.header_read = Duration::from_secs(600);
        t.max_age = Duration::from_secs(600);
        t.drain = Duration::from_secs(600);
    })
    .await;
    let (fx, addr) = (&served.fx, served.addr);
    let gate = Arc::new(tokio::sync::Notify::new());
    *fx.scan.mode.lock().unwrap() = ScanMode::Gate(gate.clone());

    // An idle keep-alive connection: one request answered, then nothing.
    let mut idle = connect(addr).await;
    health_ok_keep_alive(&mut idle).await;

    // A request in progress: "scan now" waiting at the gate.
    let mut busy = scan_now_in_progress(addr, fx).await;

    served.stop.send(()).unwrap();
    // The idle connection is closed at once, the listener stops accepting...
    wait_closed(&mut idle, "an idle keep-alive connection at shutdown").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the listener still accepts 30 s after the shutdown signal"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !served.server.is_finished(),
        "a request is still in progress"
    );

    // ...and the request in progress is answered, then the server stops.
    gate.notify_one();
    let res = read_response(&mut busy).await;
    assert!(res.starts_with("HTTP/1.1 202 Accepted\r\n"), "{res}");
    assert!(
        res.to_ascii_lowercase().contains("connection: close"),
        "{res}"
    );
    tokio::time::timeout(Duration::from_secs(30), served.server)
        .await
        .expect("server stops once the last request is answered")
        .unwrap();
}

#[tokio::test]
async fn a_body_that_never_arrives_gets_503_timeout() {
    let served = Served::start(|t| t.request = Duration::from_millis(500)).await;

    // The head announces 10 bytes of body; none follows.
    let mut conn = connect(served.addr).await;
    conn.write_all(
        b"POST /api/orchestratorm8/workflows HTTP/1.1\r\nHost: localhost\r\n\
Content-Type: application/json\r\nContent-Length: 10\r\n\r\n",
    )
    .await
    .unwrap();
    let res = read_response(&mut conn).await;
    assert!(res.starts_with("HTTP/1.1 503 "), "{res}");
    assert!(res.contains("\"code\":\"timeout\""), "{res}");
    assert!(served.fx.calls().is_empty(), "the engine was not called");
    // The unread body makes the connection unusable: the server closes it.
    wait_closed(&mut conn, "a connection with an unfinished body").await;

    served.stop().await;
}

#[tokio::test]
async fn a_request_head_over_the_limit_is_431() {
    let served = Served::start(|_| {}).await;

    let mut req = b"GET /health HTTP/1.1\r\nHost: localhost\r\n".to_vec();
    let big = format!("X-Big: {}\r\n", "a".repeat(server::MAX_HEAD_BYTES));
    req.extend_from_slice(big.as_bytes());
    req.extend_from_slice(b"\r\n");
    let res = raw_http(served.addr, &req).await;
    assert!(res.starts_with("HTTP/1.1 431 "), "{res}");

    served.stop().await;
}

#[tokio::test]
async fn a_refused_broker_connection_is_unready_with_a_fixed_warning() {
    use amqp8::Refusal;
    let fx = Fx::new().await;
    for (refusal, warning) in [
        (
            Refusal::Login,
            "rabbitmq refused the login: check RabbitMQ.username and RabbitMQ.password",
        ),
        (
            Refusal::VirtualHost,
            "rabbitmq refused the virtual host: check RabbitMQ.vhost and the user's permissions",
        ),
    ] {
        fx.broker.set_refused(Some(refusal));
        let r = not_ready(&fx, "rabbitmq", "database").await;
        let v = r.json();
        // Only the fixed text: nothing from the broker's error (host, user name).
        assert_eq!(v["warnings"], json!([warning]), "{v}");
        assert!(!r.text.contains("memory"), "{}", r.text);
    }
    fx.broker.set_refused(None);
    let r = get(&fx.routes(), "/ready").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(r.json().get("warnings").is_none(), "{}", r.text);
}

// ----- issue 15: filters, cursor, retry, OpenAPI, console, events --------------------

/// The OpenAPI document as JSON.
fn openapi_doc() -> Value {
    serde_json::from_str(openapi::DOCUMENT).expect("the OpenAPI document is JSON")
}

#[tokio::test]
async fn openapi_describes_exactly_the_routes() {
    let doc = openapi_doc();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut described = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            described.push((
                op["operationId"].as_str().unwrap().to_owned(),
                method.clone(),
                path.clone(),
            ));
        }
    }
    let mut routes: Vec<(String, String, String)> = ROUTES
        .iter()
        .map(|r| (r.name.into(), r.method.into(), r.path.into()))
        .collect();
    described.sort();
    routes.sort();
    assert_eq!(described, routes, "the OpenAPI document and ROUTES differ");

    // Every route of the table is served (not the "no such route" fallback), and
    // answers a status the document lists for it.
    let (fx, routes, id) = Fx::with_workflow().await;
    for r in ROUTES.iter().filter(|r| r.name != "events") {
        let path = r.path.replace("{id}", &id.to_string());
        let reply = match r.method {
            "get" => get(&routes, &path).await,
            _ => post_json(&routes, &path, "{}").await,
        };
        assert!(
            !reply.text.contains("no such route") && reply.status != StatusCode::METHOD_NOT_ALLOWED,
            "{} {path}: {} {}",
            r.method,
            reply.status,
            reply.text
        );
        let op = &doc["paths"][r.path][r.method];
        assert!(
            op["responses"][reply.status.as_str()].is_object(),
            "{} {path}: status {} not documented",
            r.method,
            reply.status
        );
    }
    drop(fx);
}

#[tokio::test]
async fn served_bodies_match_the_openapi_schemas() {
    use openapi::validate::check;
    let doc = openapi_doc();
    let (_fx, routes, id) = Fx::with_workflow().await;
    let schema = "/components/schemas/Workflow";
    let list = get(&routes, API).await;
    assert_eq!(list.status, StatusCode::OK);
    for v in list.json().as_array().unwrap() {
        assert_eq!(check(&doc, schema, v), Vec::<String>::new(), "{v}");
    }
    let one = get(&routes, &format!("{API}/{id}")).await.json();
    assert_eq!(check(&doc, schema, &one), Vec::<String>::new());
    // Every field of the model's view, set, is described.
    let mut view: WorkflowView = serde_json::from_value(one).unwrap();
    view.stages[0].started_at = Some(GoTime::from_utc(t0()));
    view.stages[0].finished_at = Some(GoTime::from_utc(t0()));
    view.stages[0].detail = Some(json!({"error": "<script>", "n": 1}));
    view.kind = model8::WorkflowKind::Observed;
    let full = serde_json::to_value(&view).unwrap();
    assert_eq!(check(&doc, schema, &full), Vec::<String>::new());
    // A field the document does not know fails.
    let mut extra = full.clone();
    extra["stages"][0]["queue"] = json!("qasmm8");
    assert_eq!(check(&doc, schema, &extra).len(), 1);
    // Errors, health and readiness.
    let err = get(&routes, &format!("{API}/nope")).await;
    assert_eq!(
        check(&doc, "/components/schemas/Error", &err.json()),
        Vec::<String>::new()
    );
    let health = get(&routes, "/health").await.json();
    assert_eq!(
        check(&doc, "/components/schemas/Health", &health),
        Vec::<String>::new()
    );
    let ready = get(&routes, "/ready").await.json();
    assert_eq!(
        check(&doc, "/components/schemas/Ready", &ready),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn list_pages_with_x_next_cursor_and_filters() {
    let fx = Fx::new().await;
    let routes = fx.routes();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(new_workflow(&fx.store, Uuid::new_v4(), &format!("d{i}.example")).await);
    }
    let mut seen = Vec::new();
    let mut path = format!("{API}?limit=2");
    let mut pages = 0;
    loop {
        let r = get(&routes, &path).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        pages += 1;
        for v in r.json().as_array().unwrap() {
            seen.push(v["id"].as_str().unwrap().to_owned());
        }
        match r.headers.get("x-next-cursor") {
            Some(c) => path = format!("{API}?limit=2&cursor={}", c.to_str().unwrap()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    seen.sort();
    let mut want: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    want.sort();
    assert_eq!(seen, want);
    let r = get(&routes, &format!("{API}?cursor=abc")).await;
    r.assert_error(StatusCode::BAD_REQUEST, "bad_request");
    let r = get(
        &routes,
        &format!("{API}?domain=D3.Example&kind=managed&company=ACME"),
    )
    .await;
    let list = r.json();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["domains"][0], "d3.example");
    assert!(r.headers.get("x-next-cursor").is_none());
    let r = get(&routes, &format!("{API}?kind=observed")).await;
    assert_eq!(r.json(), json!([]));
}

#[tokio::test]
async fn retry_is_202_for_a_cancelled_workflow_and_409_otherwise() {
    let (_fx, routes, id) = Fx::with_workflow().await;
    let msg = act(&routes, id, "retry")
        .await
        .assert_error(StatusCode::CONFLICT, "conflict");
    assert!(msg.contains("it is pending"), "{msg}");
    assert_eq!(act(&routes, id, "cancel").await.status, StatusCode::OK);
    let r = act(&routes, id, "retry").await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(r.json()["status"], "pending");
    assert_eq!(r.json()["stages"][0]["status"], "pending");
    act(&routes, Uuid::new_v4(), "retry")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn every_response_has_the_security_headers() {
    let (_fx, routes, _) = Fx::with_workflow().await;
    for path in ["/", "/console.js", "/health", API, "/nope"] {
        let r = get(&routes, path).await;
        let h = |n: &str| r.headers.get(n).map(|v| v.to_str().unwrap().to_owned());
        let csp = h("content-security-policy").unwrap_or_default();
        assert!(
            csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{path}: {csp}"
        );
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(
            h("x-content-type-options").as_deref(),
            Some("nosniff"),
            "{path}"
        );
    }
}

#[tokio::test]
async fn console_renders_hostile_details_and_names_as_text() {
    let fx = Fx::new().await;
    let routes = fx.routes();
    let hostile = "<script>alert(1)</script>\"><img src=x onerror=alert(2)>";
    let id = new_workflow(&fx.store, Uuid::new_v4(), hostile).await;
    let page = get(&routes, "/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        page.text.contains(&id.to_string()),
        "the open API's list is rendered"
    );
    assert!(!page.text.contains("<script>alert"), "{}", page.text);
    assert!(!page.text.contains("<img src=x"), "{}", page.text);
    assert!(
        page.text
            .contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&gt;&lt;img")
    );
    // No inline script: the only script is the same-origin file.
    assert_eq!(page.text.matches("<script").count(), 1);
    assert!(
        page.text
            .contains("<script src=\"/console.js\" defer></script>")
    );
    // With a token configured, the page is open but lists nothing.
    fx.set_token(Some(TOKEN));
    let page = get(&routes, "/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.text.contains(&id.to_string()));
    assert!(page.text.contains("token-notice"));
    // A bad filter is a 400 page.
    fx.set_token(None);
    let page = get(&routes, "/?status=done").await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert!(page.text.contains("&quot;done&quot;"), "{}", page.text);
}

/// Reads from `stream` until `needle` appears (30 s at most); returns what was read.
async fn read_until(stream: &mut tokio::net::TcpStream, needle: &str) -> String {
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "stream closed: {}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&chunk[..n]);
            if String::from_utf8_lossy(&buf).contains(needle) {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "no {needle:?} within 30 s: {}",
            String::from_utf8_lossy(&buf)
        )
    });
    String::from_utf8_lossy(&buf).into_owned()
}

async fn open_events(addr: std::net::SocketAddr, extra: &str) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET /api/orchestratorm8/events HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    s
}

#[tokio::test]
async fn events_stream_workflow_changes_and_resume_with_last_event_id() {
    let served = Served::start(|_| {}).await;
    let store = served.fx.store.clone();
    let id = new_workflow(&store, Uuid::new_v4(), "a.example.com").await;
    let mut s = open_events(served.addr, "").await;
    let head = read_until(&mut s, "\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/event-stream"), "{head}");
    // Created before the stream's start (the clock's now): not sent. Paused after: sent.
    WorkflowRepository::pause(&store, id, t0() + chrono::Duration::minutes(6))
        .await
        .unwrap();
    let got = read_until(&mut s, "\"status\":\"paused\"").await;
    assert!(got.contains("event:workflow"), "{got}");
    let event_id = got
        .lines()
        .find_map(|l| l.strip_prefix("id:"))
        .expect("an id")
        .trim()
        .to_owned();
    drop(s);
    // Resuming from that id sends the change again (at least once), then the next.
    let mut s = open_events(served.addr, &format!("Last-Event-ID: {event_id}\r\n")).await;
    read_until(&mut s, "\"status\":\"paused\"").await;
    WorkflowRepository::resume(&store, id, t0() + chrono::Duration::minutes(7))
        .await
        .unwrap();
    read_until(&mut s, "\"status\":\"pending\"").await;
    drop(s);
    // A token protects the stream; a bad Last-Event-ID is a 400.
    served.fx.set_token(Some(TOKEN));
    let mut s = open_events(served.addr, "").await;
    assert!(
        read_until(&mut s, "\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 401")
    );
    let mut s = open_events(
        served.addr,
        &format!("Authorization: Bearer {TOKEN}\r\nLast-Event-ID: soon\r\n"),
    )
    .await;
    assert!(
        read_until(&mut s, "\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 400")
    );
    served.stop().await;
}

#[tokio::test]
async fn stages_report_queues_in_flight_and_backpressure() {
    let (fx, routes, id) = Fx::with_workflow().await;
    let doc = openapi_doc();
    let r = get(&routes, "/api/orchestratorm8/stages").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let v = r.json();
    for st in v.as_array().unwrap() {
        assert_eq!(
            openapi::validate::check(&doc, "/components/schemas/StageState", st),
            Vec::<String>::new()
        );
    }
    assert_eq!(v[0]["name"], "asmm8");
    assert_eq!(v[0]["consumers"], 1);
    assert_eq!(v[0]["queue_depth"], 0);
    assert_eq!(v[0]["in_flight"], 0);
    assert_eq!(v[0]["backpressure"], Value::Null);
    assert_eq!(v[1]["consumers"], Value::Null, "qmissing cannot be checked");
    // One attempt of asmm8 claimed: the stage is at its max_in_flight of 1.
    let now = t0() + chrono::Duration::minutes(5);
    let claimed = fx
        .store
        .claim_due("asmm8", Uuid::new_v4(), now, Duration::from_secs(600), 10)
        .await
        .unwrap();
    assert_eq!(claimed[0].key.workflow_id, id);
    let v = get(&routes, "/api/orchestratorm8/stages").await.json();
    assert_eq!(v[0]["in_flight"], 1);
    assert_eq!(v[0]["backpressure"], "max_in_flight");
    fx.set_token(Some(TOKEN));
    get(&routes, "/api/orchestratorm8/stages")
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn replicas_lists_the_live_ones_leader_first_as_described() {
    use db8::ReplicaRegistry;
    use model8::{GoTime, ReplicaRole, ReplicaView};
    let fx = Fx::new().await;
    let routes = fx.routes();
    // The fixture's clock stands at t0 + 5 min.
    let now = t0() + chrono::Duration::minutes(5);
    let row = |name: &str, role, seen_secs_ago: i64| ReplicaView {
        id: Uuid::new_v4(),
        name: name.into(),
        role,
        version: "0.1.0".into(),
        started_at: GoTime::from_utc(t0()),
        seen_at: GoTime::from_utc(now - chrono::Duration::seconds(seen_secs_ago)),
    };
    for r in [
        row("b-standby", ReplicaRole::Standby, 1),
        row("a-leader", ReplicaRole::Leader, 3),
        row("c-gone", ReplicaRole::Standby, 60),
    ] {
        fx.store.replica_beat(&r).await.unwrap();
    }
    let r = get(&routes, "/api/orchestratorm8/replicas").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let v = r.json();
    let doc = openapi_doc();
    for x in v.as_array().unwrap() {
        assert_eq!(
            openapi::validate::check(&doc, "/components/schemas/Replica", x),
            Vec::<String>::new()
        );
    }
    let listed: Vec<(&str, &str)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["name"].as_str().unwrap(), x["role"].as_str().unwrap()))
        .collect();
    assert_eq!(
        listed,
        [("a-leader", "leader"), ("b-standby", "standby")],
        "silent for 60 s: not listed"
    );
    fx.set_token(Some(TOKEN));
    get(&routes, "/api/orchestratorm8/replicas")
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
}
