//! With every secret set to a distinctive canary and logging at LOG_LEVEL 0 (debug)
//! into a file, the service's real building blocks (PgStore on a throwaway PostgreSQL
//! with password authentication, RabbitBroker on the shared RabbitMQ with a user of its
//! own, the HTTP surface of controller8 on a real socket) are driven through success
//! and failure (wrong passwords, unreachable servers, TLS against a plain server, a
//! database that goes down, a wrong API token). Then neither the log file nor any
//! `/ready`, `/metrics` or API response body holds a canary.
//!
//! One test only: log8 installs the process-wide subscriber. See docs/SECURITY.md.

mod common;
mod security_support;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use common::{ServiceLock, free_port};
use config8::{HttpSettings, LogLevel, Secret, SslMode};
use controller8::http::{HttpState, HttpTimeouts, serve};
use controller8::{Metrics, Role, ScanNow, ScanNowError, SystemClock};
use db8::PgStore;
use model8::WorkflowView;
use security_support::*;
use tokio::sync::watch;
use uuid::Uuid;

/// "Scan now" is not under test here.
struct NoScan;

impl ScanNow for NoScan {
    fn scan_now<'a, 'b>(
        &'a self,
        _domain_ids: Option<Vec<Uuid>>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<WorkflowView>, ScanNowError>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(async { Err(ScanNowError::NotLeader) })
    }
}

/// One `GET` (reqwest); returns the status code and the body.
async fn http(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut request = client
        .get(format!("http://{addr}{path}"))
        .timeout(Duration::from_secs(30));
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let response = request.send().await.expect("a response within 30 s");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// Serves `state` on a free port of 127.0.0.1 until the returned sender is dropped.
async fn start(state: HttpState) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (addr, server) = serve("127.0.0.1:0".parse().unwrap(), state, async move {
        let _ = stopped.await;
    })
    .await
    .unwrap();
    tokio::spawn(server);
    (addr, stop)
}

#[test]
fn no_secret_in_debug_logs_or_probe_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("log/orchestratorm8.log");
    let guard = log8::init(&log8::LogConfig {
        format: log8::Format::Json,
        level: LogLevel::Debug,
        console: false,
        file: Some(log8::FileOutput {
            path: log_path.clone(),
            max_bytes: 64 * 1024 * 1024,
            max_backups: 1,
        }),
        apm: None,
    })
    .unwrap();

    let _lock = ServiceLock::shared();
    let pg = ThrowawayPg::start();
    let mq = RabbitUser::create();
    let api_token = canary("api-token");
    let mut bodies = Vec::new();

    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            // ----- failures, each logged -----
            let wrong = canary("wrong");
            let mut s = pg.settings(&wrong);
            s.retry_attempts = 2;
            bounded("pg wrong password", PgStore::connect(&s))
                .await
                .unwrap_err();
            let mut s = pg.settings(&pg.password);
            s.sslmode = SslMode::Require;
            bounded("pg require", PgStore::connect(&s))
                .await
                .unwrap_err();
            s.sslmode = SslMode::Disable;
            s.port = free_port();
            s.retry_attempts = 2;
            bounded("pg closed", PgStore::connect(&s))
                .await
                .unwrap_err();

            let mut m = rabbit_settings(&mq.name, &wrong, 5672);
            m.pool.retry_attempts = 2;
            bounded("mq wrong password", amqp8::connect(&m))
                .await
                .unwrap_err();
            m.password = Secret::new(&mq.password);
            m.tls = true;
            bounded("mq tls on a plain port", amqp8::connect(&m))
                .await
                .unwrap_err();
            m.tls = false;
            m.port = free_port();
            bounded("mq closed", amqp8::connect(&m)).await.unwrap_err();

            // ----- a working service, then its dependencies failing -----
            let store = Arc::new(
                bounded("pg", PgStore::connect(&pg.settings(&pg.password)))
                    .await
                    .unwrap(),
            );
            bounded("migrate", store.migrate()).await.unwrap();
            let broker = Arc::new(
                bounded(
                    "mq",
                    amqp8::connect(&rabbit_settings(&mq.name, &mq.password, 5672)),
                )
                .await
                .unwrap(),
            );
            let (_settings_tx, settings) = watch::channel(HttpSettings {
                api_token: Some(Secret::new(&api_token)),
                body_limit: 64 * 1024,
            });
            let (_role_tx, role) = watch::channel(Role::Leader);
            let state = HttpState {
                workflows: store.clone(),
                scan: Arc::new(NoScan),
                db: store.clone(),
                replicas: store.clone(),
                broker: broker.clone(),
                role,
                metrics: Arc::new(Metrics::new()),
                settings,
                clock: Arc::new(SystemClock),
                downstream_queues: vec!["cptm8_sec_no_such_queue".into()],
                managed: false,
                stages: vec![],
                timeouts: HttpTimeouts {
                    check: Duration::from_secs(3),
                    ..HttpTimeouts::default()
                },
            };
            let (addr, _stop) = start(state.clone()).await;

            let (status, body) = http(addr, "/ready", None).await;
            assert_eq!(status, 200, "{body}");
            assert!(body.contains("\"database\":\"healthy\""), "{body}");
            bodies.push(body);
            let (status, body) = http(addr, "/metrics", None).await;
            assert_eq!(status, 200, "{body}");
            bodies.push(body);
            let api = "/api/orchestratorm8/workflows";
            let (status, body) = http(addr, api, Some(&api_token)).await;
            assert_eq!(status, 200, "{body}");
            bodies.push(body);
            for token in [None, Some(canary("wrong-token").as_str()), Some("")] {
                let (status, body) = http(addr, api, token).await;
                assert_eq!(status, 401, "{body}");
                bodies.push(body);
            }

            // The database goes away: /ready names the failing check, not its error.
            pg.stop();
            let (status, body) = http(addr, "/ready", None).await;
            assert_eq!(status, 503, "{body}");
            assert!(body.contains("\"database\":\"unhealthy\""), "{body}");
            bodies.push(body);
            let (_, body) = http(addr, "/metrics", None).await;
            bodies.push(body);
            let (status, body) = http(addr, api, Some(&api_token)).await;
            assert_eq!(status, 503, "{body}");
            bodies.push(body);

            // A broker that cannot log in.
            let refused =
                amqp8::RabbitBroker::new(&rabbit_settings(&mq.name, &wrong, 5672)).unwrap();
            let (addr2, _stop2) = start(HttpState {
                broker: Arc::new(refused),
                ..state
            })
            .await;
            let (status, body) = http(addr2, "/ready", None).await;
            assert_eq!(status, 503, "{body}");
            assert!(body.contains("\"rabbitmq\":\"unhealthy\""), "{body}");
            bodies.push(body);
            let (_, body) = http(addr2, "/metrics", None).await;
            bodies.push(body);
        });

    for body in &bodies {
        assert_no_canary("an HTTP response body", body);
    }
    drop(guard); // flushes the file
    let mut log = String::new();
    for entry in std::fs::read_dir(log_path.parent().unwrap()).unwrap() {
        log.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
    }
    assert_no_canary("the debug log", &log);
    // The log did record the failures, at debug level: the check above saw them.
    for expected in [
        "password authentication failed",
        "cannot connect to RabbitMQ yet",
        "readiness: database ping failed",
        "\"level\":\"DEBUG\"",
    ] {
        assert!(log.contains(expected), "{expected:?} not logged:\n{log}");
    }
}
