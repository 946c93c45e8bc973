//! What the fault-injection tests (tests/fault_*.rs) add to `e2e_support`: taking
//! RabbitMQ and PostgreSQL away and always giving them back (drop guards), a seeded
//! random number generator, starting the binary without waiting for it (to kill it at
//! any point, start-up included), readiness probes and database summaries.
//!
//! Every guard restores its service when dropped, so a failing (panicking) test never
//! leaves the machine without a broker or a database; `scripts/fault.sh` restores them
//! once more at the end (a test killed by a signal runs no destructor).

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{BIN, free_port, launch, log_to, output, poll, ready};
use crate::e2e_support::{Env, managed_rescanning_after};

/// `rabbitmqctl -q ARGS`.
pub fn rabbitmqctl(args: &[&str]) -> Result<String, String> {
    output(Command::new("rabbitmqctl").arg("-q").args(args))
}

/// The RabbitMQ application, stopped with `rabbitmqctl stop_app` while this exists and
/// started again with `start_app` when it is dropped (or by [`RabbitApp::start`]).
pub struct RabbitApp {
    stopped: bool,
}

impl RabbitApp {
    /// `rabbitmqctl stop_app`; panics when it fails (after trying to start it again).
    pub fn stop() -> RabbitApp {
        let app = RabbitApp { stopped: true };
        if let Err(e) = rabbitmqctl(&["stop_app"]) {
            panic!("cannot stop RabbitMQ: {e}");
        }
        app
    }

    /// `rabbitmqctl start_app`; panics when it fails.
    pub fn start(mut self) {
        if let Err(e) = rabbitmqctl(&["start_app"]) {
            // Dropping `self` tries once more.
            panic!("cannot start RabbitMQ again: {e}");
        }
        self.stopped = false;
    }
}

impl Drop for RabbitApp {
    fn drop(&mut self) {
        if self.stopped
            && let Err(e) = rabbitmqctl(&["start_app"])
        {
            eprintln!("fault: restoring RabbitMQ: {e}");
        }
    }
}

/// A RabbitMQ memory alarm, raised by setting the memory high watermark far below the
/// node's use; the watermark in force before is put back on [`MemoryAlarm::clear`] or
/// when dropped.
pub struct MemoryAlarm {
    restore_to: String,
    raised: bool,
}

impl MemoryAlarm {
    /// Raises the alarm: every connection that publishes is blocked.
    pub fn raise() -> MemoryAlarm {
        // The relative watermark in force (0.4 unless configured otherwise).
        let restore_to =
            rabbitmqctl(&["eval", "vm_memory_monitor:get_vm_memory_high_watermark()."])
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| s.parse::<f64>().is_ok_and(|v| v > 0.0 && v < 1.0))
                .unwrap_or_else(|| "0.4".to_owned());
        let alarm = MemoryAlarm {
            restore_to,
            raised: true,
        };
        if let Err(e) = rabbitmqctl(&["set_vm_memory_high_watermark", "0.0000001"]) {
            panic!("cannot raise a memory alarm: {e}");
        }
        alarm
    }

    /// Puts the watermark back: the alarm clears.
    pub fn clear(mut self) {
        if let Err(e) = rabbitmqctl(&["set_vm_memory_high_watermark", &self.restore_to]) {
            // Dropping `self` tries once more.
            panic!("cannot clear the memory alarm: {e}");
        }
        self.raised = false;
    }
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        if self.raised
            && let Err(e) = rabbitmqctl(&["set_vm_memory_high_watermark", &self.restore_to])
        {
            eprintln!("fault: restoring the RabbitMQ memory watermark: {e}");
        }
    }
}

/// The Debian PostgreSQL cluster serving port 5432, `<version> <name>` (e.g. `15
/// main`): `CPTM8_PG_CLUSTER` (scripts/fault.sh sets it), else found with
/// `pg_lsclusters`.
fn pg_cluster() -> Result<(String, String), String> {
    let text = match std::env::var("CPTM8_PG_CLUSTER") {
        Ok(v) => v,
        Err(_) => {
            let out = Command::new("pg_lsclusters")
                .arg("-h")
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("pg_lsclusters: {e}"))?;
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .find(|f| f.len() >= 3 && f[2] == "5432")
                .map(|f| format!("{} {}", f[0], f[1]))
                .ok_or("no PostgreSQL cluster on port 5432 in pg_lsclusters")?
        }
    };
    match text.split_whitespace().collect::<Vec<_>>()[..] {
        [version, name] => Ok((version.to_owned(), name.to_owned())),
        _ => Err(format!(
            "CPTM8_PG_CLUSTER={text:?}: expected \"<version> <name>\""
        )),
    }
}

/// `pg_ctlcluster <version> <name> ACTION` for the cluster on port 5432, without
/// systemd; output discarded so that the server never holds our pipes.
fn pg_ctl(action: &str) -> Result<(), String> {
    let (version, name) = pg_cluster()?;
    let status = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, &name, action])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("pg_ctlcluster {action}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "pg_ctlcluster {version} {name} {action} failed ({status})"
        ))
    }
}

/// Whether PostgreSQL accepts connections on 127.0.0.1:5432.
pub fn pg_ready() -> bool {
    Command::new("pg_isready")
        .args(["-h", "127.0.0.1", "-p", "5432", "-q"])
        .stdin(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// PostgreSQL taken away by a test. Dropping it starts the server again (when it is
/// not accepting connections) and waits until it does (at most 60 s).
pub struct Postgres {
    _private: (),
}

impl Postgres {
    /// `pg_ctlcluster <version> main restart`: stops (fast mode: sessions are terminated)
    /// and starts the server again at once.
    pub fn restart() -> Postgres {
        let g = Postgres { _private: () };
        if let Err(e) = pg_ctl("restart") {
            panic!("cannot restart PostgreSQL: {e}");
        }
        g
    }

    /// `pg_ctlcluster <version> main stop`.
    pub fn stop() -> Postgres {
        let g = Postgres { _private: () };
        if let Err(e) = pg_ctl("stop") {
            panic!("cannot stop PostgreSQL: {e}");
        }
        g
    }

    /// Starts it again and waits until it accepts connections.
    pub fn start(self) {
        // The work is in Drop, which also runs when the test fails.
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if !pg_ready()
            && let Err(e) = pg_ctl("start")
        {
            eprintln!("fault: restoring PostgreSQL: {e}");
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while !pg_ready() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// SplitMix64: a small seeded generator, so that a failing run can be replayed.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A duration in `[0, max)`, by the millisecond.
    pub fn millis_below(&mut self, max: Duration) -> Duration {
        let ms = max.as_millis().max(1) as u64;
        Duration::from_millis(self.next_u64() % ms)
    }
}

/// `FAULT_SEED` when set, else a fresh seed from the clock; printed either way.
pub fn seed() -> u64 {
    let seed = match std::env::var("FAULT_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("FAULT_SEED must be an unsigned integer, got {s:?}")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    };
    eprintln!("fault: seed {seed} (replay with FAULT_SEED={seed})");
    seed
}

/// A number from the environment variable `var`, else `default`.
pub fn env_number(var: &str, default: u64) -> u64 {
    match std::env::var(var) {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{var} must be an unsigned integer, got {s:?}")),
        Err(_) => default,
    }
}

/// The managed-mode sections with a cool-down of a day: a domain gets one workflow
/// and never a second within the test, however often the service restarts.
pub fn managed_once(stages: &str) -> String {
    managed_rescanning_after("24h", stages)
}

/// `orchestratorm8 launch` started without waiting for anything (to be killed at any
/// point of its life, start-up included); logs to `<dir>/<label>.log`.
pub fn spawn(config: &Path, dir: &Path, label: &str) -> Child {
    log_to(
        &mut launch(BIN, config, free_port()),
        &dir.join(format!("{label}.log")),
    )
    .stdin(Stdio::null())
    .spawn()
    .expect("start orchestratorm8")
}

/// Polls `/ready` until `want` holds for the answer; returns that answer. Panics with
/// the last answer and `what` after `limit`.
pub async fn ready_until(
    port: u16,
    what: &str,
    limit: Duration,
    want: impl Fn(u16, &serde_json::Value) -> bool,
) -> (u16, serde_json::Value) {
    let mut last = None;
    let wanted = poll(limit, Duration::from_millis(100), async || {
        let (status, body) = ready(port).await?;
        if want(status, &body) {
            return Some((status, body));
        }
        last = Some((status, body));
        None
    })
    .await;
    wanted.unwrap_or_else(|| {
        panic!("/ready: timed out after {limit:?} waiting: {what}; last answer: {last:?}")
    })
}

/// A number from a one-value SQL query.
pub fn count(env: &Env, sql: &str) -> u64 {
    let out = env.psql(sql);
    out.parse()
        .unwrap_or_else(|_| panic!("{sql}: not a number: {out:?}"))
}

/// What the database says about the workflows of a test, and what must hold after a
/// fault: every domain has exactly one workflow, every workflow and every stage is
/// completed, at the first attempt.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Domains in `cptm8domain`.
    pub domains: u64,
    /// Workflows.
    pub workflows: u64,
    /// Domains with exactly one workflow.
    pub domains_with_one_workflow: u64,
    /// Workflows not `completed`.
    pub not_completed: u64,
    /// Stage runs not `completed`.
    pub stages_not_completed: u64,
    /// Stage runs whose attempt is not 1 (a retry: something timed out or failed).
    pub stages_retried: u64,
}

impl Outcome {
    /// Reads it from the test database.
    pub fn read(env: &Env) -> Outcome {
        Outcome {
            domains: count(env, "SELECT count(*) FROM cptm8domain"),
            workflows: count(env, "SELECT count(*) FROM orchestratorm8_workflow"),
            domains_with_one_workflow: count(
                env,
                "SELECT count(*) FROM (SELECT domain_id FROM orchestratorm8_workflow_domain \
                 GROUP BY domain_id HAVING count(DISTINCT workflow_id) = 1) AS one",
            ),
            not_completed: count(
                env,
                "SELECT count(*) FROM orchestratorm8_workflow WHERE status <> 'completed'",
            ),
            stages_not_completed: count(
                env,
                "SELECT count(*) FROM orchestratorm8_stage_run WHERE status <> 'completed'",
            ),
            stages_retried: count(
                env,
                "SELECT count(*) FROM orchestratorm8_stage_run WHERE attempt <> 1",
            ),
        }
    }

    /// What a clean run of `domains` domains ends with.
    pub fn clean(domains: u64) -> Outcome {
        Outcome {
            domains,
            workflows: domains,
            domains_with_one_workflow: domains,
            not_completed: 0,
            stages_not_completed: 0,
            stages_retried: 0,
        }
    }
}

/// Waits (polling the database) until `n` workflows exist and all are completed.
pub async fn all_completed(env: &Env, n: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let total = count(env, "SELECT count(*) FROM orchestratorm8_workflow");
        let done = count(
            env,
            "SELECT count(*) FROM orchestratorm8_workflow WHERE status = 'completed'",
        );
        if total >= n && done == total {
            return;
        }
        let ended_otherwise = count(
            env,
            "SELECT count(*) FROM orchestratorm8_workflow WHERE status IN ('failed', 'cancelled')",
        );
        if ended_otherwise > 0 || Instant::now() >= deadline {
            let stuck = env.psql(
                "SELECT w.id || ' ' || w.status || ' ' || string_agg(s.stage || '=' || s.status \
                 || '#' || s.attempt || coalesce(' claim ' || s.claim_until, ''), ', ' ORDER BY s.position) \
                 FROM orchestratorm8_workflow w JOIN orchestratorm8_stage_run s ON s.workflow_id = w.id \
                 WHERE w.status <> 'completed' GROUP BY w.id, w.status LIMIT 20",
            );
            panic!(
                "{}: {done} of {total} workflows completed (want {n}); not completed:\n{stuck}",
                if ended_otherwise > 0 {
                    format!("{ended_otherwise} workflow(s) failed or were cancelled")
                } else {
                    format!("timed out after {limit:?}")
                }
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The workflow ids named in completion notifications (`orchestratorm8: workflow <id> ...`).
pub fn completion_notices(got: &[amqp8::Message]) -> Vec<String> {
    got.iter()
        .filter(|m| m.routing_key == "app.message.normal")
        .filter_map(|m| {
            let v: serde_json::Value = serde_json::from_slice(&m.body).ok()?;
            let text = v["payload"]["message"].as_str()?;
            let rest = text.split("workflow ").nth(1)?;
            Some(rest.chars().take(36).collect())
        })
        .collect()
}

/// The completion notifications of `got` as (`message_id`, workflow id) pairs: copies
/// of one notification (an outbox row published again after a kill) share the
/// `message_id` (docs/AMQP.md, "Message identity").
pub fn completion_notices_by_id(got: &[amqp8::Message]) -> Vec<(String, String)> {
    got.iter()
        .filter(|m| m.routing_key == "app.message.normal")
        .filter_map(|m| {
            let workflow = completion_notices(std::slice::from_ref(m)).pop()?;
            Some((m.message_id.clone().unwrap_or_default(), workflow))
        })
        .collect()
}

/// A metric's value from a `/metrics` text (`None` when absent): the sample whose
/// series is exactly `name` (see `controller8::Metrics::sample`).
pub fn metric(text: &str, name: &str) -> Option<f64> {
    controller8::Metrics::sample(text, name)
}

/// Prints how long a fault test ran, not counting the wait for the service lock
/// (other test runs on a shared machine), when dropped.
pub struct Timing {
    name: &'static str,
    started: Instant,
}

impl Drop for Timing {
    fn drop(&mut self) {
        eprintln!(
            "fault: {} ran {:.1?}{}",
            self.name,
            self.started.elapsed(),
            if std::thread::panicking() {
                " (failed)"
            } else {
                ""
            }
        );
    }
}

/// The test's [`Env`] (with the exclusive service lock when `exclusive`), and its
/// [`Timing`] from the moment the lock was taken.
pub fn env(name: &'static str, exclusive: bool) -> (Env, Timing) {
    let asked = Instant::now();
    let env = if exclusive {
        Env::exclusive()
    } else {
        Env::new()
    };
    let waited = asked.elapsed();
    if waited > Duration::from_secs(1) {
        eprintln!("fault: {name}: waited {waited:.1?} for the service lock");
    }
    (
        env,
        Timing {
            name,
            started: Instant::now(),
        },
    )
}

/// Copies the test's service logs to `$FAULT_LOGS_DIR/<name>/` when that variable is set
/// (a passing test's temporary directory is deleted; a failing one's is kept anyway).
pub fn keep_logs(env: &Env, name: &str) {
    let Ok(dir) = std::env::var("FAULT_LOGS_DIR") else {
        return;
    };
    let to = Path::new(&dir).join(name);
    let _ = std::fs::create_dir_all(&to);
    if let Ok(entries) = std::fs::read_dir(env.dir.path()) {
        for e in entries.flatten() {
            let _ = std::fs::copy(e.path(), to.join(e.file_name()));
        }
    }
    eprintln!("fault: logs copied to {}", to.display());
}
