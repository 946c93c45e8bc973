//! The PostgreSQL floors: `psql \copy ... to '/dev/null'` (the fastest way a client
//! reads rows out) and a plain `COPY ... FROM STDIN` (the fastest way a client writes
//! rows in).

use std::process::Command;
use std::time::{Duration, Instant};

use futures::SinkExt;
use tokio_postgres::Client;

use crate::report::Failure;
use crate::services::{PG_HOST, PG_PORT, PG_USER};

/// Runs `psql -c "\copy (<query>) to '/dev/null'"` against `db` and returns its wall
/// time, process start and connection included.
pub fn psql_copy_out(db: &str, query: &str) -> Result<Duration, Failure> {
    let start = Instant::now();
    let out = Command::new("psql")
        .args(["-X", "-q", "-w", "-h", PG_HOST, "-p"])
        .arg(PG_PORT.to_string())
        .args(["-U", PG_USER, "-d", db, "-v", "ON_ERROR_STOP=1", "-c"])
        .arg(format!("\\copy ({query}) to '/dev/null'"))
        .env_remove("PGPASSWORD")
        .output()
        .map_err(|e| Failure::Error(format!("cannot run psql (package postgresql-client): {e}")))?;
    let elapsed = start.elapsed();
    if !out.status.success() {
        return Err(Failure::Error(format!(
            "psql \\copy failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(elapsed)
}

/// `COPY <table> TO STDOUT` into memory (text format).
pub async fn copy_out(client: &Client, table: &str) -> Result<bytes::Bytes, Failure> {
    use futures::TryStreamExt;
    let stream = client
        .copy_out(&format!("COPY {table} TO STDOUT"))
        .await
        .map_err(|e| Failure::Error(format!("COPY {table} TO STDOUT: {e}")))?;
    let chunks: Vec<bytes::Bytes> = stream
        .try_collect()
        .await
        .map_err(|e| Failure::Error(format!("COPY {table} TO STDOUT: {e}")))?;
    Ok(bytes::Bytes::from(chunks.concat()))
}

/// `COPY <table> FROM STDIN` of `data` (text format) in chunks of 64 KiB; returns the
/// rows copied.
pub async fn copy_in(client: &Client, table: &str, data: &bytes::Bytes) -> Result<u64, Failure> {
    let sink = client
        .copy_in::<_, bytes::Bytes>(&format!("COPY {table} FROM STDIN"))
        .await
        .map_err(|e| Failure::Error(format!("COPY {table} FROM STDIN: {e}")))?;
    futures::pin_mut!(sink);
    const CHUNK: usize = 64 * 1024;
    for start in (0..data.len()).step_by(CHUNK) {
        sink.send(data.slice(start..(start + CHUNK).min(data.len())))
            .await
            .map_err(|e| Failure::Error(format!("COPY {table} FROM STDIN: {e}")))?;
    }
    sink.as_mut()
        .finish()
        .await
        .map_err(|e| Failure::Error(format!("COPY {table} FROM STDIN: {e}")))
}
