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

/// A minimal HTTP/1.1 GET on 127.0.0.1:`port`: status and body.
pub async fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    http_request(port, "GET", path, None).await
}

/// A minimal HTTP/1.1 request on 127.0.0.1:`port` (`body`: JSON): status and body.
pub async fn http_request(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .map_err(|_| std::io::Error::other("connect timed out"))??;
    let content = body.map_or_else(String::new, |b| {
        format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        )
    });
    let head_end = if body.is_some() { "" } else { "\r\n" };
    s.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{head_end}{content}"
        )
        .as_bytes(),
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
