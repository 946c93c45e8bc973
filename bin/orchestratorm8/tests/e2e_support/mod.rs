//! Shared set-up of the end-to-end tests: the real `orchestratorm8` binary against the
//! local PostgreSQL (a database of its own per test) and RabbitMQ (a virtual host of its
//! own per test, so parallel tests never see each other's messages), with test workers
//! written on amqp8. Every test holds the shared lock on `/tmp/cptm8-services.lock`.
//! Built on `common` (the test file includes both).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use amqp8::{
    Broker, ConsumeOptions, ConsumerHandle, Decision, Message, OutgoingMessage, PublishOutcome,
    RabbitBroker, Topology, handler_fn,
};
use config8::{RabbitMqSettings, Secret};
use model8::{AmqpM8Message, StageJob, StageOutcome, StageResult};

use crate::common::{BIN, Database, ServiceLock, free_port, http_get, launch, log_to, poll, run};

/// The queue the tests bind to every notification.
pub const NOTIFY_QUEUE: &str = "qtest.notifications";

/// A database and a virtual host of their own, a temporary directory, and the lock.
pub struct Env {
    pub name: String,
    pub dir: tempfile::TempDir,
    /// Dropped after the virtual host is deleted; releases the lock last.
    db: Database,
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
        let lock = if exclusive {
            ServiceLock::exclusive()
        } else {
            ServiceLock::shared()
        };
        let db = Database::create_under(lock, "o8e2e");
        let name = db.name.clone();
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
            db,
        }
    }

    /// Runs SQL in the test database; returns psql's unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        self.db.psql(sql)
    }

    /// The scanners' chain messages recorded by the ring observer (keys in
    /// `orchestratorm8_ring_message` on a kick-off key, not sent by the orchestrator).
    pub fn chain_messages_recorded(&self) -> usize {
        self.psql(
            "SELECT count(*) FROM orchestratorm8_ring_message \
             WHERE key LIKE 'cptm8.%' AND key NOT LIKE '%|orchestratorm8|%'",
        )
        .parse()
        .unwrap()
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
            vhost: self.name.clone(),
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
        // The database (then the lock) goes with `self.db`.
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "delete_vhost", &self.name])
            .status();
    }
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
        let child = log_to(&mut launch(BIN, config, port), &log)
            .spawn()
            .expect("start orchestratorm8");
        let mut s = Service {
            child: Some(child),
            port,
            log,
        };
        let healthy = poll(
            Duration::from_secs(60),
            Duration::from_millis(50),
            async || {
                if let Ok((200, _)) = http_get(port, "/health").await {
                    return Some(());
                }
                if let Some(status) = s.child.as_mut().unwrap().try_wait().unwrap() {
                    panic!("orchestratorm8 exited at start ({status}):\n{}", s.logs());
                }
                None
            },
        )
        .await;
        if healthy.is_none() {
            panic!("not healthy in 60 s:\n{}", s.logs());
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
        let leading = poll(
            Duration::from_secs(30),
            Duration::from_millis(50),
            async || match http_get(self.port, "/ready").await {
                Ok((200, body)) if body.contains("\"role\":\"leader\"") => Some(()),
                _ => None,
            },
        )
        .await;
        if leading.is_none() {
            panic!("not ready in 30 s:\n{}", self.logs());
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
    /// The test's virtual host (for `rabbitmqctl`).
    pub vhost: String,
}

/// The jobs a test worker received, in order.
pub type Jobs = Arc<Mutex<Vec<StageJob>>>;

/// The messages a collector received, in order.
pub type Collected = Arc<Mutex<Vec<Message>>>;

impl Client {
    /// Declares [`NOTIFY_QUEUE`] bound to every platform notification (`app.#`, as the
    /// platform's own consumer binds).
    pub async fn observe_notifications(&self) {
        bind_queue(&self.broker, "notification", NOTIFY_QUEUE, "app.#").await;
    }

    /// [`Client::observe_notifications`], then collects [`NOTIFY_QUEUE`].
    pub async fn notifications(&self) -> (Collected, ConsumerHandle) {
        self.observe_notifications().await;
        self.collect(NOTIFY_QUEUE).await
    }

    /// Every message `queue` holds: ready ones and those delivered to a consumer and
    /// not yet settled (a message being redelivered is one of those), as `rabbitmqctl
    /// list_queues` reports them (about a second per call). Panics when the queue does
    /// not exist or `rabbitmqctl` fails: a "nothing requeued" assertion on a renamed
    /// queue or an unreachable broker must fail, not read 0.
    pub async fn depth(&self, queue: &str) -> u32 {
        let (vhost, q) = (self.vhost.clone(), queue.to_owned());
        tokio::task::spawn_blocking(move || queue_depth(&vhost, &q))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("depth of {queue}: {e}"))
    }

    /// Ready messages of `queue` (an AMQP passive declare: fast, but blind to messages
    /// delivered and not yet settled; for queues nothing consumes, polled under a time
    /// limit). Panics when the queue does not exist or the broker errs.
    pub async fn ready(&self, queue: &str) -> u32 {
        self.broker
            .queue_info(queue)
            .await
            .unwrap_or_else(|e| panic!("ready messages of {queue}: {e}"))
            .messages
    }

    /// Collects every message of `queue` (routing key, body) into the returned list.
    pub async fn collect(&self, queue: &str) -> (Collected, ConsumerHandle) {
        let got: Collected = Arc::default();
        let sink = got.clone();
        let handle = consume_each(&self.broker, queue, "test-collector", 50, move |m| {
            sink.lock().unwrap().push(m);
        })
        .await;
        (got, handle)
    }

    /// A worker for `stage`: takes its jobs one at a time, waits `work`, and does
    /// what `act` says with each. Every job received is recorded.
    pub async fn worker(
        &self,
        stage: &str,
        work: Duration,
        act: impl Fn(&StageJob) -> Act + Send + Sync + 'static,
    ) -> (Jobs, ConsumerHandle) {
        let seen: Jobs = Arc::default();
        let record = seen.clone();
        let broker = self.broker.clone();
        let act = Arc::new(act);
        let handle = self
            .broker
            .consume(
                consume_options(&format!("q{stage}"), &format!("test-worker-{stage}"), 1),
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

    /// A [`Client::worker`] per stage of `stages`, each completing every job after
    /// `work`: the jobs each received (in the order of `stages`) and their handles.
    pub async fn completing_workers(
        &self,
        stages: &[&str],
        work: Duration,
    ) -> (Vec<Jobs>, Vec<ConsumerHandle>) {
        let mut seen = Vec::new();
        let mut handles = Vec::new();
        for s in stages {
            let (jobs, h) = self.worker(s, work, |_| Act::Complete).await;
            seen.push(jobs);
            handles.push(h);
        }
        (seen, handles)
    }
}

/// A consumer's options as the tests use them: acks after handling, `prefetch` at a
/// time, no dead-lettering.
pub fn consume_options(queue: &str, tag: &str, prefetch: u16) -> ConsumeOptions {
    ConsumeOptions {
        queue: queue.into(),
        tag: tag.into(),
        prefetch,
        autoack: false,
        max_redeliveries: 100,
        dead_letter: None,
    }
}

/// Ready plus unacknowledged messages of `queue` on virtual host `vhost`, read live;
/// an error when a command fails or lists no such queue.
///
/// `rabbitmqctl list_queues` is live for classic queues only: for a quorum queue its
/// counts are metrics refreshed every few seconds (seen: 30 ready listed a second after
/// the 30 were acked). A quorum queue's counts are therefore asked of its Raft state
/// machine on the broker (`rabbit_fifo` queries through `rabbitmqctl eval`).
pub fn queue_depth(vhost: &str, queue: &str) -> Result<u32, String> {
    let listed = rabbitmqctl(&[
        "-q",
        "list_queues",
        "-p",
        vhost,
        "--no-table-headers",
        "name",
        "type",
        "messages_ready",
        "messages_unacknowledged",
    ])?;
    for line in listed.lines() {
        let cols: Vec<&str> = line.split('\t').collect();
        if let [name, kind, ready, unacked] = cols[..]
            && name == queue
        {
            return match kind.trim() {
                "quorum" => quorum_depth(vhost, queue),
                _ => Ok(count(line, ready)? + count(line, unacked)?),
            };
        }
    }
    Err(format!(
        "no queue {queue} on virtual host {vhost}:\n{listed}"
    ))
}

/// A quorum queue's ready plus checked-out messages, live from its Raft leader.
fn quorum_depth(vhost: &str, queue: &str) -> Result<u32, String> {
    let erlang = format!(
        "{{ok, Q}} = rabbit_amqqueue:lookup(rabbit_misc:r(<<\"{vhost}\">>, queue, <<\"{queue}\">>)), \
         L = amqqueue:get_pid(Q), \
         {{ok, {{_, R}}, _}} = ra:local_query(L, fun rabbit_fifo:query_messages_ready/1), \
         {{ok, {{_, U}}, _}} = ra:local_query(L, fun rabbit_fifo:query_messages_checked_out/1), \
         io:format(\"~b ~b~n\", [R, U])."
    );
    let out = rabbitmqctl(&["-q", "eval", &erlang])?;
    let line = out.lines().next().unwrap_or_default();
    match line.split(' ').collect::<Vec<_>>()[..] {
        [ready, unacked] => Ok(count(line, ready)? + count(line, unacked)?),
        _ => Err(format!("quorum queue {queue}: unexpected answer {out:?}")),
    }
}

fn count(line: &str, s: &str) -> Result<u32, String> {
    s.trim()
        .parse::<u32>()
        .map_err(|e| format!("{line:?}: {e}"))
}

fn rabbitmqctl(args: &[&str]) -> Result<String, String> {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .map_err(|e| format!("rabbitmqctl: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "rabbitmqctl {}: {}{text}",
            args[..2].join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(text)
}

/// Consumes `queue` on `broker`, `prefetch` at a time: `each` sees every message, which
/// is then acked.
pub async fn consume_each(
    broker: &RabbitBroker,
    queue: &str,
    tag: &str,
    prefetch: u16,
    each: impl Fn(Message) + Send + Sync + 'static,
) -> ConsumerHandle {
    let each = Arc::new(each);
    broker
        .consume(
            consume_options(queue, tag, prefetch),
            Arc::new(handler_fn(move |m: Message| {
                let each = each.clone();
                async move {
                    each(m);
                    Ok(Decision::Ack)
                }
            })),
        )
        .await
        .unwrap()
}

/// Declares the topic exchange `exchange` and the queue `queue` bound to it with
/// `routing_key`.
pub async fn bind_queue(broker: &RabbitBroker, exchange: &str, queue: &str, routing_key: &str) {
    broker
        .declare(&Topology::topic_queue(exchange, queue, routing_key))
        .await
        .unwrap();
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
    managed_rescanning_after("1h", stages)
}

/// The managed-mode sections with `rescan_after` (a duration, e.g. `1h`).
pub fn managed_rescanning_after(rescan_after: &str, stages: &str) -> String {
    format!(
        "Scheduler:\n  mode: managed\n  interval: \"1h\"\nWorkflow:\n  granularity: per_domain\n  \
         rescan_after: \"{rescan_after}\"\n  stages:\n{stages}"
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

/// The stages of the pipeline most managed tests run: `a`, then `b`, then `c`.
pub const PIPELINE: [&str; 3] = ["a", "b", "c"];

/// The [`PIPELINE`] as stage list items, each stage with `timeout` and 3 attempts.
pub fn pipeline(timeout: &str) -> String {
    stage("a", &[], timeout, 3) + &stage("b", &["a"], timeout, 3) + &stage("c", &["b"], timeout, 3)
}

impl Env {
    /// The configuration of the [`PIPELINE`]: a service section per stage (no queue
    /// arguments) and `sections` (e.g. [`managed`]) of [`pipeline`]`(timeout)`.
    pub fn pipeline_config(&self, timeout: &str, sections: impl Fn(&str) -> String) -> PathBuf {
        self.config(
            &[("a", "{}"), ("b", "{}"), ("c", "{}")],
            &sections(&pipeline(timeout)),
        )
    }

    /// Starts the service with `config` (its log `<label>.log`) and waits until it
    /// leads: the topology is declared. Then a client collects every notification and a
    /// worker per stage of the [`PIPELINE`] completes each job after `work`.
    pub async fn start_pipeline(&self, config: &Path, label: &str, work: Duration) -> Pipeline {
        let svc = Service::start(config, self.dir.path(), label).await;
        svc.ready().await;
        let client = self.client().await;
        let (notes, notes_handle) = client.notifications().await;
        let (seen, mut handles) = client.completing_workers(&PIPELINE, work).await;
        handles.push(notes_handle);
        Pipeline {
            svc,
            client,
            notes,
            seen,
            _handles: handles,
        }
    }
}

/// A managed run set up by [`Env::start_pipeline`].
pub struct Pipeline {
    /// The service, leading.
    pub svc: Service,
    pub client: Client,
    /// Every notification published since.
    pub notes: Collected,
    /// The jobs each stage's worker received, in [`PIPELINE`] order.
    pub seen: Vec<Jobs>,
    /// Keep the consumers.
    _handles: Vec<ConsumerHandle>,
}
