//! The machine a report was measured on.

use std::process::Command;

use serde::Serialize;

/// What the numbers depend on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPUs available to this process.
    pub nproc: usize,
    /// `MemTotal`, in MiB.
    pub memory_mib: u64,
    /// CPU model name.
    pub cpu_model: String,
    /// Kernel release.
    pub kernel: String,
    /// `/proc/loadavg` when the run started.
    pub loadavg_start: String,
    /// PostgreSQL server version.
    pub postgresql: String,
    /// RabbitMQ server version.
    pub rabbitmq: String,
    /// rustc version of the build.
    pub rustc: String,
    /// The git commit measured, with `+ uncommitted changes` when the work tree differs.
    pub revision: String,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn first_line_of(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(|l| l.trim().to_owned()))
        .unwrap_or_else(|| "unknown".into())
}

/// `git rev-parse --short HEAD`, marked when tracked files under `crates/` or `bin/`
/// differ from it (what the release build compiled).
fn revision() -> String {
    let head = first_line_of("git", &["rev-parse", "--short", "HEAD"]);
    if head == "unknown" {
        return head;
    }
    let dirty = Command::new("git")
        .args([
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            "crates",
            "bin",
        ])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    if dirty {
        format!("{head} + uncommitted changes")
    } else {
        head
    }
}

/// `/proc/loadavg`'s three averages.
pub fn loadavg() -> String {
    read("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

impl Machine {
    /// Describes this machine and the local services.
    pub async fn describe() -> Machine {
        let meminfo = read("/proc/meminfo");
        let memory_mib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kib| kib / 1024)
            .unwrap_or(0);
        let cpu_model = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == "model name").then(|| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let postgresql = match crate::services::pg_connect("postgres").await {
            Ok(c) => c
                .query_one("SHOW server_version", &[])
                .await
                .map(|r| r.get::<_, String>(0))
                .unwrap_or_else(|_| "unknown".into()),
            Err(_) => "unreachable".into(),
        };
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_mib,
            cpu_model,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            loadavg_start: loadavg(),
            postgresql,
            rabbitmq: first_line_of("rabbitmqctl", &["-q", "version"]),
            rustc: first_line_of("rustc", &["--version"]),
            revision: revision(),
        }
    }
}
