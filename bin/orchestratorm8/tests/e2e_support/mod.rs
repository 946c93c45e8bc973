//! Shared set-up of the end-to-end tests: the real `orchestratorm8` binary against the
//! local PostgreSQL (a database of its own per test) and RabbitMQ (a virtual host of its
//! own per test, so parallel tests never see each other's messages), with test workers
//! written on amqp8. Every test holds the shared lock on `/tmp/cptm8-services.lock`.

#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use amqp8::{
    BindingDecl, Broker, ConsumeOptions, ConsumerHandle, Decision, ExchangeDecl, Message,
    OutgoingMessage, PublishOutcome, QueueDecl, RabbitBroker, Topology, handler_fn,
};
use config8::{RabbitMqSettings, Secret};
use model8::{AmqpM8Message, StageJob, StageOutcome, StageResult};

/// The queue the tests bind to every notification.
pub const NOTIFY_QUEUE: &str = "qtest.notifications";

fn lock_services(exclusive: bool) -> File {
    let lock = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open("/tmp/cptm8-services.lock")
        .expect("open the service lock");
    if exclusive {
        lock.lock().expect("exclusive service lock");
    } else {
        lock.lock_shared().expect("shared service lock");
    }
    lock
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A database and a virtual host of their own, a temporary directory, and the lock.
pub struct Env {
    pub name: String,
    pub dir: tempfile::TempDir,
    _lock: File,
}

impl Default for Env {
    fn default() -> Self {
        Env::new()
    }
}

impl Env {
    pub fn new() -> Env {
        Env::locked(false)
    }

    /// Like [`Env::new`], holding the EXCLUSIVE service lock instead: for tests that
    /// stop or restart PostgreSQL or RabbitMQ (tests/fault_*.rs). One process cannot
    /// hold both (two `flock`s on one file conflict even within a process).
    pub fn exclusive() -> Env {
        Env::locked(true)
    }

    fn locked(exclusive: bool) -> Env {
        let lock = lock_services(exclusive);
        let name = format!("o8e2e_{}", uuid::Uuid::new_v4().simple());
        run(Command::new("createdb").args(["-h", "127.0.0.1", "-U", "postgres", &name]));
        run(Command::new("rabbitmqctl").args(["-q", "add_vhost", &name]));
        run(Command::new("rabbitmqctl").args([
            "-q",
            "set_permissions",
            "-p",
            &name,
            "guest",
            ".*",
            ".*",
            ".*",
        ]));
        Env {
            name,
            dir: tempfile::tempdir().unwrap(),
            _lock: lock,
        }
    }

    /// Runs SQL in the test database; returns psql's unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        run(Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-X", "-A", "-t"])
            .args(["-v", "ON_ERROR_STOP=1", "-d", &self.name, "-c", sql]))
        .trim()
        .to_owned()
    }

    /// Inserts `n` enabled domains `d<i>.<prefix>.example.com` in one statement.
    pub fn insert_domains(&self, prefix: &str, n: usize) {
        self.psql(&format!(
            "INSERT INTO cptm8domain (id, name, companyname, enabled) \
             SELECT gen_random_uuid(), 'd' || i || '.{prefix}.example.com', 'ACME', true \
             FROM generate_series(1, {n}) AS i"
        ));
    }

    /// Writes the configuration: the Go file's shape with this test's database and
    /// virtual host, the service sections `sections` (`(name, queue-arguments YAML)`),
    /// then `extra` (top-level sections such as `Scheduler` and `Workflow`).
    pub fn config(&self, sections: &[(&str, &str)], extra: &str) -> PathBuf {
        let mut yaml = String::from(
            "APP_ENV: TEST\nLOG_LEVEL: \"0\"\nORCHESTRATORM8:\n  Services: {}\n  \
             Exchanges: { cptm8: topic, scheduler: topic, notification: topic }\n",
        );
        for (name, args) in sections {
            yaml.push_str(&format!(
                "  {name}:\n    Queue: [cptm8, q{name}, 1]\n    Routing-keys: [\"cptm8.{name}.#\"]\n    \
                 Queue-arguments: {args}\n    Consumer: [q{name}, c{name}, \"false\"]\n"
            ));
        }
        yaml.push_str(&format!(
            "Database:\n  location: 127.0.0.1\n  port: 5432\n  schema: public\n  database: {db}\n  \
             username: postgres\n  password: \"\"\n\
             RabbitMQ:\n  location: 127.0.0.1\n  port: 5672\n  username: guest\n  password: guest\n  \
             vhost: {db}\n{extra}",
            db = self.name
        ));
        let path = self.dir.path().join("configuration.yaml");
        std::fs::write(&path, yaml).unwrap();
        path
    }

    pub fn rabbit_settings(&self) -> RabbitMqSettings {
        RabbitMqSettings {
            vhost: self.name.clone(),
            password: Secret::new("guest"),
            ..RabbitMqSettings::default()
        }
    }

    /// A RabbitMQ client on this test's virtual host.
    pub async fn client(&self) -> Client {
        let broker = RabbitBroker::connect(&self.rabbit_settings())
            .await
            .expect("connect to RabbitMQ");
        Client {
            broker: Arc::new(broker),
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Keep the service logs of a failed test.
            let kept = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap()).keep();
            eprintln!("e2e: logs of the failed test kept in {}", kept.display());
        }
        let _ = Command::new("dropdb")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "--force",
                "--if-exists",
            ])
            .arg(&self.name)
            .status();
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "delete_vhost", &self.name])
            .status();
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `orchestratorm8 launch`.
pub struct Service {
    child: Option<Child>,
    pub port: u16,
    pub log: PathBuf,
}

impl Service {
    /// Starts the binary with `config`, logging to `<dir>/<label>.log`, and waits until
    /// `/health` answers.
    pub async fn start(config: &Path, dir: &Path, label: &str) -> Service {
        let port = free_port();
        let log = dir.join(format!("{label}.log"));
        let out = File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_orchestratorm8"))
            .args(["launch", "--ip", "127.0.0.1", "--port", &port.to_string()])
            .arg("--config")
            .arg(config)
            .env_remove("ORCHESTRATORM8_CONFIG")
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("start orchestratorm8");
        let mut s = Service {
            child: Some(child),
            port,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = http_get(port, "/health").await {
                break;
            }
            if let Some(status) = s.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("orchestratorm8 exited at start ({status}):\n{}", s.logs());
            }
            assert!(
                Instant::now() < deadline,
                "not healthy in 60 s:\n{}",
                s.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        s
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path` on the service.
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let (status, body) = http_get(self.port, path).await.expect("HTTP request");
        let json = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body}"));
        (status, json)
    }

    /// The workflows as the API lists them.
    pub async fn workflows(&self) -> Vec<serde_json::Value> {
        let (status, v) = self.get("/api/orchestratorm8/workflows?limit=1000").await;
        assert_eq!(status, 200, "{v}");
        v.as_array().unwrap().clone()
    }

    /// Waits until `/ready` answers 200 as the leader: the topology is declared and,
    /// in managed mode, the result consumer runs. (A replica is ready as a standby
    /// before its first lock check; a single replica then becomes the leader.)
    pub async fn ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, body)) = http_get(self.port, "/ready").await
                && body.contains("\"role\":\"leader\"")
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not ready in 30 s:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then waits for the exit; returns the exit code and how long it took.
    pub fn terminate(&mut self) -> (Option<i32>, Duration) {
        let mut child = self.child.take().expect("running");
        let started = Instant::now();
        run(Command::new("kill").args(["-TERM", &child.id().to_string()]));
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status.code(), started.elapsed());
            }
            if started.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                panic!("did not exit within 60 s of SIGTERM:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: dies at once, mid-whatever.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A minimal HTTP/1.1 GET: status and body.
pub async fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .map_err(|_| std::io::Error::other("connect timed out"))??;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("response timed out"))??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {text}")))?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Waits until `f` holds, polling, at most `limit`; panics with `what` otherwise.
pub async fn eventually(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        if f().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a test worker does with a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// Report it completed.
    Complete,
    /// Report it failed.
    Fail,
    /// Take it and never report (a stuck worker).
    Ignore,
}

/// A RabbitMQ client for the test (workers, observers, raw publishes).
#[derive(Clone)]
pub struct Client {
    pub broker: Arc<RabbitBroker>,
}

impl Client {
    /// Declares [`NOTIFY_QUEUE`] bound to every notification.
    pub async fn observe_notifications(&self) {
        self.broker
            .declare(&Topology {
                exchanges: vec![ExchangeDecl {
                    name: "notification".into(),
                    kind: "topic".into(),
                }],
                queues: vec![QueueDecl {
                    name: NOTIFY_QUEUE.into(),
                    arguments: Default::default(),
                }],
                bindings: vec![BindingDecl {
                    exchange: "notification".into(),
                    queue: NOTIFY_QUEUE.into(),
                    routing_key: "#".into(),
                }],
            })
            .await
            .unwrap();
    }

    /// Ready messages in `queue` (0 when it does not exist).
    pub async fn depth(&self, queue: &str) -> u32 {
        self.broker
            .queue_info(queue)
            .await
            .map_or(0, |i| i.messages)
    }

    /// Collects every message of `queue` (routing key, body) into the returned list.
    pub async fn collect(&self, queue: &str) -> (Arc<Mutex<Vec<Message>>>, ConsumerHandle) {
        let got: Arc<Mutex<Vec<Message>>> = Arc::default();
        let sink = got.clone();
        let handle = self
            .broker
            .consume(
                ConsumeOptions {
                    queue: queue.into(),
                    tag: "test-collector".into(),
                    prefetch: 50,
                    autoack: false,
                    max_redeliveries: 100,
                    dead_letter: None,
                },
                Arc::new(handler_fn(move |m: Message| {
                    let sink = sink.clone();
                    async move {
                        sink.lock().unwrap().push(m);
                        Ok(Decision::Ack)
                    }
                })),
            )
            .await
            .unwrap();
        (got, handle)
    }

    /// A worker for `stage`: takes its jobs one at a time, waits `work`, and does
    /// what `act` says with each. Every job received is recorded.
    pub async fn worker(
        &self,
        stage: &str,
        work: Duration,
        act: impl Fn(&StageJob) -> Act + Send + Sync + 'static,
    ) -> (Arc<Mutex<Vec<StageJob>>>, ConsumerHandle) {
        let seen: Arc<Mutex<Vec<StageJob>>> = Arc::default();
        let record = seen.clone();
        let broker = self.broker.clone();
        let act = Arc::new(act);
        let handle = self
            .broker
            .consume(
                ConsumeOptions {
                    queue: format!("q{stage}"),
                    tag: format!("test-worker-{stage}"),
                    prefetch: 1,
                    autoack: false,
                    max_redeliveries: 100,
                    dead_letter: None,
                },
                Arc::new(handler_fn(move |m: Message| {
                    let (record, broker, act) = (record.clone(), broker.clone(), act.clone());
                    async move {
                        let job = AmqpM8Message::<StageJob>::from_slice(&m.body)
                            .ok()
                            .and_then(|e| e.payload)
                            .expect("a stage job");
                        record.lock().unwrap().push(job.clone());
                        tokio::time::sleep(work).await;
                        let outcome = match act(&job) {
                            Act::Complete => StageOutcome::Completed,
                            Act::Fail => StageOutcome::Failed,
                            Act::Ignore => return Ok(Decision::Ack),
                        };
                        report(&broker, &job, outcome).await;
                        Ok(Decision::Ack)
                    }
                })),
            )
            .await
            .unwrap();
        (seen, handle)
    }
}

/// Publishes a worker's report of `job`.
pub async fn report(broker: &RabbitBroker, job: &StageJob, outcome: StageOutcome) {
    let key = outcome.routing_key(&job.stage);
    let body = AmqpM8Message::with_source(
        key.clone(),
        Some(StageResult {
            workflow_id: job.workflow_id,
            stage: job.stage.clone(),
            attempt: job.attempt,
            detail: (outcome == StageOutcome::Failed).then(|| serde_json::json!("test failure")),
        }),
        "testworker",
    )
    .to_vec()
    .unwrap();
    let out = broker
        .publish(OutgoingMessage::new("cptm8", key, body))
        .await
        .expect("publish a result");
    assert_eq!(out, PublishOutcome::Confirmed);
}

/// The managed-mode sections: `Scheduler` and `Workflow` with `stages` (YAML list
/// items, indented by 4). A domain is scanned once per test: `rescan_after` is an hour
/// (a restart is a scheduler check, and would start a new workflow for a domain whose
/// workflow already ended).
pub fn managed(stages: &str) -> String {
    format!(
        "Scheduler:\n  mode: managed\n  interval: \"1h\"\nWorkflow:\n  granularity: per_domain\n  \
         rescan_after: \"1h\"\n  stages:\n{stages}"
    )
}

/// One stage list item.
pub fn stage(name: &str, deps: &[&str], timeout: &str, max_attempts: u32) -> String {
    format!(
        "    - name: {name}\n      depends_on: [{}]\n      timeout: \"{timeout}\"\n      max_attempts: {max_attempts}\n      \
         backoff: {{ initial: \"500ms\", max: \"1s\", multiplier: 2.0 }}\n",
        deps.join(", ")
    )
}
