//! The example worker binaries against the local RabbitMQ (guest@127.0.0.1:5672): jobs
//! in, confirmed reports (or kick-offs) out, jobs acked only then, unreadable jobs
//! dead-lettered, in-flight jobs requeued at shutdown. Every name is unique to the
//! test; every test holds the shared lock on /tmp/cptm8-services.lock.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use amqp8::{Broker, ConsumerHandle, Message, OutgoingMessage, RabbitBroker, Topology};
use demo8::report::{RetryPolicy, publish_confirmed};
use model8::{AmqpM8Message, DomainRef, StageJob, StageResult};
use tokio::sync::mpsc;
use uuid::Uuid;

mod support;
use support::{N, WAIT, Worker, collect_queue, lock_shared, next, wait_queue};

/// A stage name no other test or run uses (letters and digits only).
fn unique_stage() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "ex{}x{:x}x{}",
        std::process::id(),
        nanos & 0xffff_ffff,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A configuration with a service section per stage (queue `q<stage>`, bound with
/// `cptm8.<stage>.#`, Go-style arguments plus `x-expires` so that a failed test leaves
/// nothing behind for long).
fn write_config(dir: &Path, stages: &[&str]) -> PathBuf {
    let mut yaml = String::from(
        "APP_ENV: TEST\nLOG_LEVEL: 1\nORCHESTRATORM8:\n  Exchanges: { cptm8: topic }\n",
    );
    for s in stages {
        yaml.push_str(&format!(
            "  {s}:\n    Queue: [cptm8, q{s}, 1]\n    Routing-keys: [\"cptm8.{s}.#\"]\n    Queue-arguments: {{ \"x-max-length\": 1, \"x-overflow\": \"reject-publish\", \"x-expires\": 600000 }}\n    Consumer: [q{s}, c{s}, \"false\"]\n"
        ));
    }
    yaml.push_str("RabbitMQ:\n  location: 127.0.0.1\n  port: 5672\n  username: guest\n  password: guest\nWorkflow:\n  stages:\n");
    for s in stages {
        yaml.push_str(&format!("    - name: {s}\n"));
    }
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

async fn broker() -> Arc<RabbitBroker> {
    let settings = config8::RabbitMqSettings::default();
    Arc::new(
        amqp8::connect(&settings)
            .await
            .expect("connect to the local RabbitMQ (scripts/services.sh starts it)"),
    )
}

/// Declares queue `name` (auto-expiring) bound to `cptm8` with `key`, and collects what
/// arrives on it.
async fn collect(
    b: &Arc<RabbitBroker>,
    name: &str,
    key: &str,
) -> (mpsc::UnboundedReceiver<Message>, ConsumerHandle) {
    let mut topology = Topology::topic_queue("cptm8", name, key);
    topology.queues[0]
        .arguments
        .insert("x-expires".to_owned(), amqp8::ArgValue::Int(600_000));
    collect_queue(b, &topology, name).await
}

fn job_body(stage: &str, workflow: Uuid, attempt: u32) -> Vec<u8> {
    let job = StageJob {
        workflow_id: workflow,
        stage: stage.into(),
        attempt,
        domains: vec![DomainRef {
            id: Uuid::new_v4(),
            name: "example.com".into(),
            companyname: "ACME".into(),
        }],
    };
    AmqpM8Message::new(format!("cptm8.{stage}.get.scan"), Some(job))
        .to_vec()
        .unwrap()
}

async fn publish(b: &RabbitBroker, key: &str, body: Vec<u8>) {
    // The stage queue holds one message (x-max-length 1, reject-publish): a nack is
    // backpressure, retried until the worker takes the previous job.
    publish_confirmed(
        b,
        OutgoingMessage::new("cptm8", key, body),
        RetryPolicy {
            give_up_after: WAIT,
            ..RetryPolicy::default()
        },
    )
    .await
    .expect("publish confirmed");
}

async fn cleanup(b: &RabbitBroker, queues: &[String]) {
    for q in queues {
        let _ = b.delete_queue(q).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_worker_reports_each_job_then_acks_it_and_dead_letters_junk() {
    let _lock = lock_shared();
    let dir = tempfile::tempdir().unwrap();
    let stage = unique_stage();
    let config = write_config(dir.path(), &[&stage]);
    let b = broker().await;
    let (mut results, results_consumer) = collect(
        &b,
        &format!("r{stage}"),
        &format!("cptm8.orchestratorm8.{stage}.#"),
    )
    .await;

    let name = format!("sim-{stage}");
    let mut w = Worker::start(
        env!("CARGO_BIN_EXE_stage_worker"),
        dir.path(),
        &[
            "--stage",
            &stage,
            "--name",
            &name,
            "--config",
            config.to_str().unwrap(),
            "--min-ms",
            "20",
            "--max-ms",
            "60",
            "--failure-rate",
            "0",
        ],
    );
    let q = format!("q{stage}");
    wait_queue(&b, &q, "a consumer", |_, c| c == 1, &w).await;

    publish(&b, &format!("cptm8.{stage}.get.scan"), b"not json".to_vec()).await;
    let jobs: Vec<(Uuid, u32)> = (1..=3).map(|a| (Uuid::new_v4(), a)).collect();
    for (id, attempt) in &jobs {
        publish(
            &b,
            &format!("cptm8.{stage}.get.scan"),
            job_body(&stage, *id, *attempt),
        )
        .await;
    }
    for (id, attempt) in &jobs {
        let m = next(&mut results, &w).await;
        assert_eq!(
            m.routing_key,
            format!("cptm8.orchestratorm8.{stage}.completed")
        );
        let env = AmqpM8Message::<StageResult>::from_slice(&m.body).unwrap();
        assert_eq!(env.source, name);
        assert_eq!(env.channel, m.routing_key);
        let r = env.payload.expect("a stage result");
        assert_eq!(
            (r.workflow_id, r.stage.as_str(), r.attempt),
            (*id, stage.as_str(), *attempt)
        );
        assert!(r.detail.unwrap()["duration_ms"].is_u64());
    }
    // Every job acked, the junk dead-lettered with its reason.
    wait_queue(&b, &q, "empty", |m, _| m == 0, &w).await;
    wait_queue(
        &b,
        &format!("{q}.dlq"),
        "one dead letter",
        |m, _| m == 1,
        &w,
    )
    .await;

    w.terminate();
    let status = w.wait(WAIT);
    assert!(status.success(), "exit {status}; output:\n{}", w.output());
    let out = w.output();
    assert!(
        out.contains("completed=3") && out.contains("dead_lettered=1"),
        "{out}"
    );
    assert!(
        !out.contains("guest"),
        "no credentials in the output:\n{out}"
    );
    results_consumer.stop(Duration::from_secs(1)).await;
    cleanup(&b, &[q.clone(), format!("{q}.dlq"), format!("r{stage}")]).await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_reported_failed_with_the_error() {
    let _lock = lock_shared();
    let dir = tempfile::tempdir().unwrap();
    let stage = unique_stage();
    let config = write_config(dir.path(), &[&stage]);
    let b = broker().await;
    let (mut results, results_consumer) = collect(
        &b,
        &format!("r{stage}"),
        &format!("cptm8.orchestratorm8.{stage}.#"),
    )
    .await;
    let w = Worker::start(
        env!("CARGO_BIN_EXE_stage_worker"),
        dir.path(),
        &[
            "--stage",
            &stage,
            "--config",
            config.to_str().unwrap(),
            "--min-ms",
            "0",
            "--max-ms",
            "0",
            "--failure-rate",
            "1",
        ],
    );
    // The worker declares its queue: a job published before then is unroutable.
    let q = format!("q{stage}");
    wait_queue(&b, &q, "a consumer", |_, c| c == 1, &w).await;
    let id = Uuid::new_v4();
    publish(
        &b,
        &format!("cptm8.{stage}.get.scan"),
        job_body(&stage, id, 1),
    )
    .await;
    let m = next(&mut results, &w).await;
    assert_eq!(
        m.routing_key,
        format!("cptm8.orchestratorm8.{stage}.failed")
    );
    let r = AmqpM8Message::<StageResult>::from_slice(&m.body)
        .unwrap()
        .payload
        .unwrap();
    assert_eq!((r.workflow_id, r.attempt), (id, 1));
    assert!(
        r.detail.unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("simulated")
    );
    drop(w);
    results_consumer.stop(Duration::from_secs(1)).await;
    cleanup(&b, &[q.clone(), format!("{q}.dlq"), format!("r{stage}")]).await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_returns_an_unfinished_job_to_the_queue_and_exits_cleanly() {
    let _lock = lock_shared();
    let dir = tempfile::tempdir().unwrap();
    let stage = unique_stage();
    let config = write_config(dir.path(), &[&stage]);
    let b = broker().await;
    let (mut results, results_consumer) = collect(
        &b,
        &format!("r{stage}"),
        &format!("cptm8.orchestratorm8.{stage}.#"),
    )
    .await;
    let mut slow = Worker::start(
        env!("CARGO_BIN_EXE_stage_worker"),
        dir.path(),
        &[
            "--stage",
            &stage,
            "--config",
            config.to_str().unwrap(),
            "--min-ms",
            "600000",
            "--max-ms",
            "600000",
            "--grace-ms",
            "200",
        ],
    );
    let q = format!("q{stage}");
    // The worker declares its queue: a job published before then is unroutable.
    wait_queue(&b, &q, "a consumer", |_, c| c == 1, &slow).await;
    let id = Uuid::new_v4();
    publish(
        &b,
        &format!("cptm8.{stage}.get.scan"),
        job_body(&stage, id, 1),
    )
    .await;
    // Delivered (not ready any more) to the one consumer: the scan is in flight.
    wait_queue(&b, &q, "job taken", |m, c| m == 0 && c == 1, &slow).await;
    slow.terminate();
    let status = slow.wait(WAIT);
    assert!(
        status.success(),
        "exit {status}; output:\n{}",
        slow.output()
    );
    wait_queue(
        &b,
        &q,
        "job back in the queue",
        |m, c| m == 1 && c == 0,
        &slow,
    )
    .await;

    // Nothing lost: the next worker does the job and reports it.
    let fast = Worker::start(
        env!("CARGO_BIN_EXE_stage_worker"),
        dir.path(),
        &[
            "--stage",
            &stage,
            "--config",
            config.to_str().unwrap(),
            "--min-ms",
            "0",
            "--max-ms",
            "0",
            "--failure-rate",
            "0",
        ],
    );
    let m = next(&mut results, &fast).await;
    let r = AmqpM8Message::<StageResult>::from_slice(&m.body)
        .unwrap()
        .payload
        .unwrap();
    assert_eq!((r.workflow_id, r.attempt), (id, 1));
    drop(fast);
    results_consumer.stop(Duration::from_secs(1)).await;
    cleanup(&b, &[q.clone(), format!("{q}.dlq"), format!("r{stage}")]).await;
    b.close().await;
}

#[test]
fn bad_flags_and_configuration_exit_2_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &["asmm8"]);
    let run = |bin: &str, args: &[&str]| {
        let out = Command::new(bin).args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let c = config.to_str().unwrap();
    let (code, err) = run(
        env!("CARGO_BIN_EXE_stage_worker"),
        &["--stage", "asmm8", "--config", c, "--failure-rate", "2"],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--failure-rate must be between 0 and 1, got 2"),
        "{err}"
    );
    let (code, err) = run(
        env!("CARGO_BIN_EXE_stage_worker"),
        &[
            "--stage", "asmm8", "--config", c, "--min-ms", "9", "--max-ms", "1",
        ],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--min-ms (9)"), "{err}");
    let (code, err) = run(
        env!("CARGO_BIN_EXE_stage_worker"),
        &["--stage", "a.b", "--config", c],
    );
    assert_eq!(code, Some(2), "{err}");
    let missing = dir.path().join("nope.yaml");
    let (code, err) = run(
        env!("CARGO_BIN_EXE_go_scanners"),
        &["--config", missing.to_str().unwrap()],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("nope.yaml"), "{err}");
    let (code, err) = run(
        env!("CARGO_BIN_EXE_go_scanners"),
        &["--config", c, "--fail", "naabum8:boom:1"],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("unknown kind"), "{err}");
    let (code, err) = run(
        env!("CARGO_BIN_EXE_go_scanners"),
        &["--config", c, "--publisher", "zz=cptm8,k,zz"],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("zz is not a scanner"), "{err}");
    let (code, err) = run(env!("CARGO_BIN_EXE_demo_monitor"), &["--url", "https://x"]);
    assert_eq!(code, Some(2), "{err}");
    let (code, err) = run(
        env!("CARGO_BIN_EXE_demo_monitor"),
        &["--watch", "orchestrator"],
    );
    assert_eq!(code, Some(2), "{err}");
}
