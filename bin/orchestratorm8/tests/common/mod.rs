//! What every integration test of the binary may share: the service lock of the
//! workspace convention, running commands, a throwaway database on the local
//! PostgreSQL, running `orchestratorm8` (a command, or `launch` as a server), free
//! ports, a minimal HTTP client and polling with a deadline.
//!
//! A test file includes it with `mod common;` (the e2e, fault and security support
//! modules build on it).

#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs::File;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_orchestratorm8");

/// A lock on `/tmp/cptm8-services.lock`: the shared services (PostgreSQL, RabbitMQ)
/// are not stopped or restarted while a SHARED one is held; tests that stop or restart
/// them hold the EXCLUSIVE one. One process cannot hold both (two `flock`s on one file
/// conflict even within a process).
pub struct ServiceLock(File);

impl ServiceLock {
    /// The shared lock, for tests that only use the services.
    pub fn shared() -> ServiceLock {
        ServiceLock::take(false)
    }

    /// The exclusive lock, for tests that stop or restart the services.
    pub fn exclusive() -> ServiceLock {
        ServiceLock::take(true)
    }

    fn take(exclusive: bool) -> ServiceLock {
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
        ServiceLock(lock)
    }
}

/// Runs `cmd` to completion (stdin closed); `Ok(stdout)` or `Err(what went wrong)`.
pub fn output(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        ))
    }
}

/// Runs `cmd` to completion; its stdout. Panics when it cannot run or fails.
pub fn run(cmd: &mut Command) -> String {
    output(cmd).unwrap_or_else(|e| panic!("{e}"))
}

/// Bytes of an output as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs SQL in database `db` of the local PostgreSQL as the superuser; psql's
/// unaligned output, trimmed.
pub fn psql(db: &str, sql: &str) -> String {
    run(Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-X", "-A", "-t"])
        .args(["-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql]))
    .trim()
    .to_owned()
}

/// A database of its own on the local PostgreSQL (127.0.0.1:5432, user postgres,
/// trust authentication), created under a service lock; dropped (sessions ended) and
/// the lock released on drop.
pub struct Database {
    pub name: String,
    _lock: ServiceLock,
}

impl Database {
    /// Takes the shared service lock and creates `<prefix>_<uuid>`.
    pub fn create(prefix: &str) -> Database {
        Database::create_under(ServiceLock::shared(), prefix)
    }

    /// Creates `<prefix>_<uuid>` under `lock`.
    pub fn create_under(lock: ServiceLock, prefix: &str) -> Database {
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        run(Command::new("createdb").args(["-h", "127.0.0.1", "-U", "postgres", &name]));
        Database { name, _lock: lock }
    }

    /// Runs SQL in this database; psql's unaligned output, trimmed.
    pub fn psql(&self, sql: &str) -> String {
        psql(&self.name, sql)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
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

/// Runs the binary with `args` in an environment of `env` only (so that the caller's
/// variables cannot leak in), in `cwd` (else this process's directory); its output.
pub fn cli<S: AsRef<OsStr>>(args: &[S], env: &[(&str, &str)], cwd: Option<&Path>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_clear().envs(env.iter().copied());
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    cmd.output().expect("the binary runs")
}

/// `program launch --ip 127.0.0.1 --port <port> --config <config>` (`program`: [`BIN`]
/// or another build of it), without `ORCHESTRATORM8_CONFIG`; not started yet.
pub fn launch(program: impl AsRef<OsStr>, config: &Path, port: u16) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(["launch", "--ip", "127.0.0.1", "--port", &port.to_string()])
        .arg("--config")
        .arg(config)
        .env_remove("ORCHESTRATORM8_CONFIG");
    cmd
}

/// Sends `cmd`'s stdout and stderr to the file `log` (created, or truncated).
pub fn log_to<'a>(cmd: &'a mut Command, log: &Path) -> &'a mut Command {
    let out = File::create(log).unwrap();
    cmd.stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
}

/// A TCP port of 127.0.0.1 nothing listens on (at the time of the call): free for a
/// server to take, closed to a client.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET` on 127.0.0.1:`port` (reqwest): status and body.
pub async fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    http_request(port, "GET", path, None).await
}

/// A request on 127.0.0.1:`port` (`body`: JSON) with reqwest: status and body; at
/// most 5 s to connect, 15 s for the whole exchange.
pub async fn http_request(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .build()
        .map_err(std::io::Error::other)?;
    let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(std::io::Error::other)?;
    let mut request = client.request(method, format!("http://127.0.0.1:{port}{path}"));
    if let Some(b) = body {
        request = request
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(b.to_owned());
    }
    let response = request.send().await.map_err(std::io::Error::other)?;
    let status = response.status().as_u16();
    let text = response.text().await.map_err(std::io::Error::other)?;
    Ok((status, text))
}

/// `GET /ready` on `port`: the status and the JSON body; `None` when the request
/// failed or the body is not JSON.
pub async fn ready(port: u16) -> Option<(u16, serde_json::Value)> {
    let (status, body) = http_get(port, "/ready").await.ok()?;
    Some((status, serde_json::from_str(&body).ok()?))
}

/// Calls `probe` every `every` until it gives a value, at most `limit`: that value,
/// or `None` when the time ran out.
pub async fn poll<T>(
    limit: Duration,
    every: Duration,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

/// Waits until `f` holds, polling, at most `limit`; panics with `what` otherwise.
pub async fn eventually(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> bool) {
    if poll(limit, Duration::from_millis(50), async || {
        f().await.then_some(())
    })
    .await
    .is_none()
    {
        panic!("timed out after {limit:?} waiting: {what}");
    }
}
