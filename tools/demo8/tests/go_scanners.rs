//! The Go-scanner stand-in (`go_scanners`) against the local RabbitMQ and PostgreSQL,
//! each test in a virtual host and a database of its own (the scanners' queue names are
//! fixed, as in the Go services): the Go queue arguments, prefetch 1, payload ignored,
//! targets read from PostgreSQL, the ring, and every failure on demand of
//! CPTM8-PLATFORM.md's behaviour tables, observed on the wire.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use amqp8::{
    Broker, ConsumerHandle, Message, OutgoingMessage, PublishOutcome, RabbitBroker, Topology,
};
use config8::{RabbitMqSettings, Secret};
use model8::{AmqpM8Message, Notification8};
use tokio::sync::mpsc;

mod support;
use support::{ServiceLock, Worker, collect_queue, lock_shared, next, wait_queue};

/// A virtual host and a database (with the platform's `cptm8domain` table and one
/// enabled domain) of their own; both deleted on drop.
struct Env {
    name: String,
    dir: tempfile::TempDir,
    _lock: ServiceLock,
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run a command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Env {
    fn new() -> Env {
        let lock = lock_shared();
        let name = format!("o8scan_{}", uuid::Uuid::new_v4().simple());
        run(Command::new("createdb").args(["-h", "127.0.0.1", "-U", "postgres", &name]));
        let env = Env {
            name,
            dir: tempfile::tempdir().unwrap(),
            _lock: lock,
        };
        // The platform's definition of the table (CPTM8-PLATFORM.md).
        env.psql(
            "CREATE TABLE cptm8domain (name varchar(200) NOT NULL UNIQUE, \
             companyname varchar(50), enabled boolean NOT NULL DEFAULT true, \
             id uuid PRIMARY KEY DEFAULT gen_random_uuid()); \
             INSERT INTO cptm8domain (name, companyname) VALUES ('example.com', NULL)",
        );
        run(Command::new("rabbitmqctl").args(["-q", "add_vhost", &env.name]));
        run(Command::new("rabbitmqctl").args([
            "-q",
            "set_permissions",
            "-p",
            &env.name,
            "guest",
            ".*",
            ".*",
            ".*",
        ]));
        env
    }

    fn psql(&self, sql: &str) {
        run(Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-X", "-q"])
            .args(["-v", "ON_ERROR_STOP=1", "-d", &self.name, "-c", sql]));
    }

    fn config(&self) -> PathBuf {
        let yaml = format!(
            "APP_ENV: TEST\nLOG_LEVEL: \"1\"\nORCHESTRATORM8:\n  Exchanges: {{ cptm8: topic, notification: topic }}\n\
             Database:\n  location: 127.0.0.1\n  port: 5432\n  schema: public\n  database: {n}\n  \
             username: postgres\n  password: \"\"\n\
             RabbitMQ:\n  location: 127.0.0.1\n  port: 5672\n  username: guest\n  password: guest\n  vhost: {n}\n",
            n = self.name
        );
        let path = self.dir.path().join("configuration.yaml");
        std::fs::write(&path, yaml).unwrap();
        path
    }

    async fn client(&self) -> Arc<RabbitBroker> {
        let settings = RabbitMqSettings {
            vhost: self.name.clone(),
            password: Secret::new("guest"),
            ..RabbitMqSettings::default()
        };
        Arc::new(
            amqp8::connect(&settings)
                .await
                .expect("connect to RabbitMQ"),
        )
    }

    /// Starts `go_scanners` with this environment's configuration and `args`.
    fn scanners(&self, args: &[&str]) -> Worker {
        let config = self.config();
        let mut all = vec!["--config", config.to_str().unwrap(), "--scan-ms", "200"];
        all.extend_from_slice(args);
        Worker::start(env!("CARGO_BIN_EXE_go_scanners"), self.dir.path(), &all)
    }

    /// `rabbitmqctl list_<what>` of this virtual host, tab-separated.
    fn rabbitmqctl_list(&self, what: &str, columns: &[&str]) -> String {
        let out = Command::new("rabbitmqctl")
            .args(["-q", "--no-table-headers", what, "-p", &self.name])
            .args(columns)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "delete_vhost", &self.name])
            .status();
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
    }
}

/// A queue of the test bound to `#` on `cptm8` and `app.#` on `notification`: every
/// chain message, kick-off and notification, in arrival order.
async fn collect_all(b: &RabbitBroker) -> (mpsc::UnboundedReceiver<Message>, ConsumerHandle) {
    let mut t = Topology::topic_queue("cptm8", "qtest.all", "#");
    let mut n = Topology::topic_queue("notification", "qtest.all", "app.#");
    t.exchanges.append(&mut n.exchanges);
    t.bindings.append(&mut n.bindings);
    collect_queue(b, &t, "qtest.all").await
}

/// What a collected message is, in short: `key source status|none|empty`.
fn describe(m: &Message) -> String {
    if m.body.is_empty() {
        return format!(
            "{} app_id={} empty",
            m.routing_key,
            m.app_id.as_deref().unwrap_or("-")
        );
    }
    let Ok(e) = AmqpM8Message::<serde_json::Value>::from_slice(&m.body) else {
        return format!("{} test not-json", m.routing_key);
    };
    let status = match &e.payload {
        None => "none".to_owned(),
        Some(p) if m.exchange == "notification" => {
            let n: Notification8 = serde_json::from_value(p.clone()).unwrap();
            format!("{:?}", n.kind)
        }
        Some(p) => p["status"].as_str().unwrap_or("?").to_owned(),
    };
    format!("{} {} {status}", m.routing_key, e.source)
}

/// The next collected message that is not one of the test's own kick-offs.
async fn next_from_scanner(rx: &mut mpsc::UnboundedReceiver<Message>, w: &Worker) -> String {
    loop {
        let m = next(rx, w).await;
        let d = describe(&m);
        if !d.contains(" test ") {
            return d;
        }
    }
}

async fn kick(b: &RabbitBroker, key: &str, body: Vec<u8>) -> PublishOutcome {
    b.publish(OutgoingMessage::new("cptm8", key, body))
        .await
        .unwrap()
}

fn kickoff(key: &str) -> Vec<u8> {
    AmqpM8Message::<serde_json::Value>::with_source(key, None, "test")
        .to_vec()
        .unwrap()
}

/// Waits until the stand-in's queue `q` exists with a consumer.
async fn consuming(b: &RabbitBroker, q: &str, w: &Worker) {
    wait_queue(b, q, "scanner consuming", |_, c| c == 1, w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_scanners_declare_go_queues_and_run_the_ring() {
    let env = Env::new();
    let b = env.client().await;
    let (mut rx, h) = collect_all(&b).await;
    let w = env.scanners(&[]);
    for s in ["asmm8", "naabum8", "katanam8", "num8"] {
        consuming(&b, &format!("q{s}"), &w).await;
    }
    // The Go arguments (x-max-length an integer), durable, prefetch 1, manual ack.
    let queues = env.rabbitmqctl_list("list_queues", &["name", "durable", "arguments"]);
    for s in ["asmm8", "naabum8", "katanam8", "num8"] {
        let line = queues
            .lines()
            .find(|l| l.starts_with(&format!("q{s}\t")))
            .unwrap_or_else(|| panic!("q{s} in {queues}"));
        assert!(line.contains("true"), "{line}");
        assert!(
            line.contains("x-max-length") && line.contains("reject-publish"),
            "{line}"
        );
    }
    let consumers = env.rabbitmqctl_list(
        "list_consumers",
        &["queue_name", "ack_required", "prefetch_count"],
    );
    for s in ["asmm8", "naabum8", "katanam8", "num8"] {
        assert!(
            consumers.contains(&format!("q{s}\ttrue\t1")),
            "q{s} consumed with manual ack, prefetch 1: {consumers}"
        );
    }
    // The payload is ignored: not even JSON.
    assert_eq!(
        kick(&b, "cptm8.asmm8.get.scan", b"not json at all".to_vec()).await,
        PublishOutcome::Confirmed
    );
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(next_from_scanner(&mut rx, &w).await);
    }
    assert_eq!(
        seen,
        [
            "cptm8.naabum8.get.scan asmm8 complete",
            "cptm8.katanam8.get.scan naabum8 complete",
            "cptm8.num8.get.scan katanam8 complete",
            "cptm8.asmm8.get.scan num8 complete",
            "cptm8.naabum8.get.scan asmm8 complete",
        ],
        "the ring goes round on its own; output:\n{}",
        w.output()
    );
    drop(w);
    h.stop(Duration::from_secs(1)).await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_on_demand_as_the_behaviour_tables_say() {
    let env = Env::new();
    let b = env.client().await;
    let (mut rx, h) = collect_all(&b).await;
    let done = "asmm8=cptm8,cptm8.orchestratorm8.asmm8.done,asmm8";
    let w = env.scanners(&[
        "--scanner",
        "asmm8",
        "--publisher",
        done,
        "--unacked-ms",
        "4000",
        "--slow-ms",
        "1500",
        "--fail",
        "asmm8:soft:1",
        "--fail",
        "asmm8:hard:2",
        "--fail",
        "asmm8:warning:3",
        "--fail",
        "asmm8:incomplete:4",
        "--fail",
        "asmm8:silent:5",
        "--fail",
        "asmm8:failover:6",
        "--fail",
        "asmm8:unacked:8",
        "--fail",
        "asmm8:slow:10",
    ]);
    consuming(&b, "qasmm8", &w).await;
    let key = "cptm8.asmm8.get.scan";
    let done = "cptm8.orchestratorm8.asmm8.done";
    // Run 1, soft: only an app.warning.normal; run 2, hard: app.error.high, then the
    // Publisher message with no payload (nothing in between from run 1).
    kick(&b, key, kickoff(key)).await;
    assert_eq!(
        next_from_scanner(&mut rx, &w).await,
        "app.warning.normal asmm8 SystemWarning"
    );
    kick(&b, key, kickoff(key)).await;
    assert_eq!(
        next_from_scanner(&mut rx, &w).await,
        "app.error.high asmm8 SystemError"
    );
    assert_eq!(
        next_from_scanner(&mut rx, &w).await,
        format!("{done} asmm8 none")
    );
    // Runs 3 and 4: warning and incomplete.
    kick(&b, key, kickoff(key)).await;
    assert_eq!(
        next_from_scanner(&mut rx, &w).await,
        format!("{done} asmm8 warning")
    );
    kick(&b, key, kickoff(key)).await;
    assert_eq!(
        next_from_scanner(&mut rx, &w).await,
        format!("{done} asmm8 incomplete")
    );
    // Run 5, a panic: nothing at all; the kick-off is acked all the same, so run 6 is
    // the next kick-off: the channel closes, the hard-coded failover message goes out
    // and the kick-off comes back: run 7 completes with no kick-off of ours.
    kick(&b, key, kickoff(key)).await;
    wait_queue(&b, "qasmm8", "run 5 took the kick-off", |m, _| m == 0, &w).await;
    kick(&b, key, kickoff(key)).await;
    assert_eq!(
        next_from_scanner(&mut rx, &w).await,
        "cptm8.naabum8.get.scan app_id=asmm8 empty"
    );
    assert_eq!(
        next_from_scanner(&mut rx, &w).await,
        format!("{done} asmm8 complete")
    );
    // Run 8: completes, the kick-off stays unacked, then is redelivered (run 9).
    kick(&b, key, kickoff(key)).await;
    assert_eq!(
        next_from_scanner(&mut rx, &w).await,
        format!("{done} asmm8 complete")
    );
    let unacked = env.rabbitmqctl_list("list_queues", &["name", "messages_unacknowledged"]);
    assert!(
        unacked.contains("qasmm8\t1"),
        "kick-off held unacked: {unacked}"
    );
    assert_eq!(
        next_from_scanner(&mut rx, &w).await,
        format!("{done} asmm8 complete")
    );
    // Run 10, slow: while it runs the queue holds one more kick-off, and a third is
    // refused by the broker (x-max-length 1, reject-publish).
    let started = Instant::now();
    kick(&b, key, kickoff(key)).await;
    wait_queue(&b, "qasmm8", "run 10 took the kick-off", |m, _| m == 0, &w).await;
    assert_eq!(kick(&b, key, kickoff(key)).await, PublishOutcome::Confirmed);
    assert_eq!(kick(&b, key, kickoff(key)).await, PublishOutcome::Nacked);
    assert_eq!(
        next_from_scanner(&mut rx, &w).await,
        format!("{done} asmm8 complete")
    );
    assert!(started.elapsed() >= Duration::from_millis(1500));
    // Run 11 (the queued kick-off) completes; run 12 finds no enabled target: no
    // payload, no notification.
    assert_eq!(
        next_from_scanner(&mut rx, &w).await,
        format!("{done} asmm8 complete")
    );
    env.psql("UPDATE cptm8domain SET enabled = false");
    kick(&b, key, kickoff(key)).await;
    assert_eq!(
        next_from_scanner(&mut rx, &w).await,
        format!("{done} asmm8 none")
    );
    let out = w.output();
    assert!(out.contains("redelivered=true"), "{out}");
    drop(w);
    h.stop(Duration::from_secs(1)).await;
    b.close().await;
}
