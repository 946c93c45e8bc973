//! `bench8 run`: runs the selected benchmarks one after the other, prints a PASS/MISS
//! line per row, writes `report.json` and (for a full run) the results section of
//! docs/BENCHMARKS.md.
//!
//! Exit status: 0 when every selected benchmark ran (goals missed or not), 1 when one
//! could not run or failed (or, with `--strict`, when a goal was missed), 2 on a usage
//! error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use crate::benches::{self, ALL};
use crate::cli::RunArgs;
use crate::ctx::Ctx;
use crate::machine::{Machine, loadavg};
use crate::report::{Row, Status, console_line};

/// Runs the command.
pub async fn run(args: RunArgs) -> ExitCode {
    for name in &args.names {
        if !ALL.iter().any(|b| b.name == name) {
            eprintln!(
                "bench8: unknown benchmark {name:?}; known: {}",
                ALL.iter().map(|b| b.name).collect::<Vec<_>>().join(", ")
            );
            return ExitCode::from(2);
        }
    }
    if args.reps == Some(0) {
        eprintln!("bench8: --reps must be at least 1");
        return ExitCode::from(2);
    }
    let selected: Vec<_> = ALL
        .iter()
        .filter(|b| args.names.is_empty() || args.names.iter().any(|n| n == b.name))
        .collect();
    let full_run = selected.len() == ALL.len() && !args.quick;

    let self_exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("bench8: cannot find my own executable: {e}");
            return ExitCode::from(1);
        }
    };
    let orchestrator = args.orchestrator.clone().unwrap_or_else(|| {
        self_exe
            .parent()
            .map(|d| d.join("orchestratorm8"))
            .unwrap_or_else(|| PathBuf::from("orchestratorm8"))
    });
    let ctx = Ctx {
        quick: args.quick,
        reps: args.reps.unwrap_or(if args.quick { 1 } else { 5 }),
        orchestrator,
        self_exe,
        started: Instant::now(),
        out_dir: args
            .report
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map(|d| d.to_owned())
            .unwrap_or_else(|| PathBuf::from(".")),
    };
    let command = args
        .command_line
        .clone()
        .unwrap_or_else(|| std::env::args().collect::<Vec<_>>().join(" "));
    let date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string();
    let machine = Machine::describe().await;
    eprintln!(
        "bench8: {} CPUs ({}), {} MiB, load {}; PostgreSQL {}, RabbitMQ {}; {} benchmark(s){}",
        machine.nproc,
        machine.cpu_model,
        machine.memory_mib,
        machine.loadavg_start,
        machine.postgresql,
        machine.rabbitmq,
        selected.len(),
        if ctx.quick { ", quick mode" } else { "" }
    );

    let mut rows: Vec<Row> = Vec::new();
    for bench in &selected {
        ctx.log(bench.name, format!("start: {}", bench.about));
        // Ctrl-C drops the running benchmark, whose guards restore what it disturbed
        // (e.g. the RabbitMQ application amqp_recovery stopped).
        let bench_rows = tokio::select! {
            rows = benches::run(bench, &ctx) => rows,
            _ = tokio::signal::ctrl_c() => {
                eprintln!(
                    "bench8: interrupted during {}; databases bench_* and vhosts bench8-* \
                     it created may be left behind",
                    bench.name
                );
                return ExitCode::from(130);
            }
        };
        for r in &bench_rows {
            println!("{}", console_line(r));
        }
        rows.extend(bench_rows);
    }
    let duration_s = ctx.started.elapsed().as_secs_f64();
    let loadavg_end = loadavg();

    let mut failed = false;
    if let Err(e) = write_report(&args.report, &rows, &machine, &command, &date) {
        eprintln!("bench8: {e}");
        failed = true;
    } else {
        eprintln!("bench8: wrote {}", args.report.display());
    }
    let section = crate::doc::section(&rows, &machine, &command, &date, duration_s, &loadavg_end);
    if !args.no_doc && (full_run || args.update_doc) {
        match crate::doc::update(&args.doc, &section) {
            Ok(()) => eprintln!("bench8: updated the results in {}", args.doc.display()),
            Err(e) => {
                eprintln!("bench8: {e}");
                failed = true;
            }
        }
    } else {
        eprintln!(
            "bench8: {} not updated ({}); the table:",
            args.doc.display(),
            if args.no_doc {
                "--no-doc"
            } else {
                "partial or quick run; --update-doc forces it"
            }
        );
        println!("{section}");
    }

    let count = |s: Status| rows.iter().filter(|r| r.status == s).count();
    let (pass, miss, not_run, error) = (
        count(Status::Pass),
        count(Status::Miss),
        count(Status::NotRun),
        count(Status::Error),
    );
    eprintln!(
        "bench8: {pass} pass, {miss} miss, {not_run} not run, {error} error ({duration_s:.0} s)"
    );
    if failed || not_run + error > 0 || (args.strict && miss > 0) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn write_report(
    path: &std::path::Path,
    rows: &[Row],
    machine: &Machine,
    command: &str,
    date: &str,
) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(rows).map_err(|e| e.to_string())?;
    std::fs::write(path, json + "\n")
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    // The context of the numbers, next to the report.
    let run_path = path.with_file_name("run.json");
    let run = serde_json::json!({ "machine": machine, "command": command, "date": date });
    std::fs::write(
        &run_path,
        serde_json::to_string_pretty(&run).map_err(|e| e.to_string())? + "\n",
    )
    .map_err(|e| format!("cannot write {}: {e}", run_path.display()))
}
