//! `db_stream`: db8's PostgreSQL `DomainRepository::stream_enabled` over 1,000,000
//! enabled domains.
//!
//! - throughput (rows/s) vs the floor `psql \copy (select id,name,companyname from
//!   cptm8domain where enabled) to '/dev/null'`, whose process start and connection
//!   (the same `\copy` with `limit 0`) are subtracted; goal: within 2x (ratio >= 0.5);
//! - peak RSS of the streaming process vs the absolute budget of 64 MiB. The streaming
//!   runs in a child process (`bench8 child-db-stream`) that reports its own `VmHWM`.
//!
//! The table is vacuumed and analysed before the first measurement, so no side pays
//! for setting hint bits.

use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::Outcomes;
use crate::cli::ChildDbStreamArgs;
use crate::ctx::{Ctx, list, median};
use crate::floors::pg::psql_copy_out;
use crate::report::{Better, Failure, Measured, Spec};
use crate::services::TempDatabase;
use crate::workload::insert_domains;

/// The rows.
pub const SPECS: &[Spec] = &[
    Spec {
        name: "db_stream.throughput",
        unit: "rows/s",
        better: Better::Higher,
        goal: 0.5,
        resolution: 0.0,
    },
    Spec {
        name: "db_stream.peak_rss",
        unit: "MiB",
        better: Better::Lower,
        goal: 1.0,
        resolution: 0.0,
    },
];

/// Budget for the streaming process's peak RSS, MiB.
const RSS_BUDGET_MIB: f64 = 64.0;
const FLOOR_QUERY: &str = "select id,name,companyname from cptm8domain where enabled";
const CHILD_TIMEOUT: Duration = Duration::from_secs(300);

/// What the child prints.
#[derive(Debug, Serialize, Deserialize)]
struct ChildReport {
    rows: u64,
    seconds: f64,
    vm_hwm_kib: u64,
}

/// Runs the benchmark.
pub async fn run(ctx: &Ctx) -> Outcomes {
    TempDatabase::with(async |db| measure(ctx, db).await).await
}

async fn measure(ctx: &Ctx, db: &TempDatabase) -> Outcomes {
    let n = ctx.size(1_000_000);
    let store = db8::PgStore::connect(&db.settings()).await?;
    store.migrate().await?;
    drop(store);
    let client = db.client().await?;
    insert_domains(&client, n).await?;
    client.batch_execute("VACUUM ANALYZE cptm8domain").await?;
    ctx.log("db_stream", format!("{n} enabled domains in {}", db.name));

    let mut ours = Vec::new();
    let mut floors = Vec::new();
    let mut hwm_kib = 0u64;
    for rep in 0..ctx.reps {
        let empty = psql_copy_out(&db.name, &format!("{FLOOR_QUERY} limit 0"))?;
        let full = psql_copy_out(&db.name, FLOOR_QUERY)?;
        let floor_s = full.saturating_sub(empty).as_secs_f64();
        floors.push(n as f64 / floor_s);
        let child = run_child(ctx, &db.name, n).await?;
        if child.rows != n {
            return Err(Failure::Error(format!(
                "stream_enabled yielded {} rows, expected {n}",
                child.rows
            )));
        }
        ours.push(n as f64 / child.seconds);
        hwm_kib = hwm_kib.max(child.vm_hwm_kib);
        ctx.log(
            "db_stream",
            format!(
                "rep {}: db8 {:.3}s ({} KiB peak RSS), psql \\copy {:.3}s - {:.3}s start-up",
                rep + 1,
                child.seconds,
                child.vm_hwm_kib,
                full.as_secs_f64(),
                empty.as_secs_f64()
            ),
        );
    }
    let value = median(&ours);
    let floor = median(&floors);
    Ok(vec![
        (
            "db_stream.throughput",
            Ok(Measured {
                value,
                floor,
                detail: format!(
                    "{n} rows; median of {} runs each; db8 rows/s [{}]; psql \\copy rows/s [{}] \
                     (its process start and connection, the same \\copy with limit 0, subtracted)",
                    ctx.reps,
                    list(&ours),
                    list(&floors)
                ),
            }),
        ),
        (
            "db_stream.peak_rss",
            Ok(Measured {
                value: hwm_kib as f64 / 1024.0,
                floor: RSS_BUDGET_MIB,
                detail: format!(
                    "VmHWM of the streaming process (bench8 child-db-stream: tokio runtime, \
                     PgStore pool, {n} rows streamed), the highest of {} runs; floor = the \
                     64 MiB budget",
                    ctx.reps
                ),
            }),
        ),
    ])
}

async fn run_child(ctx: &Ctx, db: &str, n: u64) -> Result<ChildReport, Failure> {
    let child = tokio::process::Command::new(&ctx.self_exe)
        .args(["child-db-stream", "--database", db, "--expect"])
        .arg(n.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Failure::Error(format!("cannot start {}: {e}", ctx.self_exe.display())))?;
    let out = tokio::time::timeout(CHILD_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| Failure::Error(format!("the streaming child took over {CHILD_TIMEOUT:?}")))?
        .map_err(|e| Failure::Error(format!("waiting for the streaming child: {e}")))?;
    if !out.status.success() {
        return Err(Failure::Error(format!(
            "the streaming child failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).map_err(|e| {
        Failure::Error(format!(
            "the streaming child printed {line:?}, not its report: {e}"
        ))
    })
}

/// `bench8 child-db-stream`: connects, streams, prints its report.
pub async fn child(args: ChildDbStreamArgs) -> std::process::ExitCode {
    match child_inner(&args).await {
        Ok(report) => {
            println!(
                "{}",
                serde_json::to_string(&report).expect("a plain struct serialises")
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench8 child-db-stream: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn child_inner(args: &ChildDbStreamArgs) -> Result<ChildReport, String> {
    use db8::DomainRepository;
    let settings = config8::DatabaseSettings {
        location: crate::services::PG_HOST.into(),
        port: crate::services::PG_PORT,
        database: args.database.clone(),
        username: crate::services::PG_USER.into(),
        ..config8::DatabaseSettings::default()
    };
    let store = db8::PgStore::connect(&settings)
        .await
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut stream = store.stream_enabled().await.map_err(|e| e.to_string())?;
    let mut rows = 0u64;
    let mut bytes = 0usize;
    while let Some(domain) = stream.next().await {
        let domain = domain.map_err(|e| e.to_string())?;
        bytes += domain.name.len() + domain.companyname.len();
        rows += 1;
    }
    let seconds = start.elapsed().as_secs_f64();
    drop(stream);
    if bytes == 0 && args.expect > 0 {
        return Err("every streamed domain was empty".into());
    }
    let vm_hwm_kib =
        crate::procfs::status_kib(std::process::id(), "VmHWM").map_err(|e| e.to_string())?;
    Ok(ChildReport {
        rows,
        seconds,
        vm_hwm_kib,
    })
}
