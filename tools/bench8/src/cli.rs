//! The command line.

use std::path::PathBuf;

use argh::FromArgs;

/// bench8: runs the orchestratorm8 benchmarks against floors measured in the same run.
#[derive(FromArgs, Debug)]
pub struct Cli {
    /// what to do
    #[argh(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Command {
    /// Runs benchmarks.
    Run(RunArgs),
    /// Lists the benchmarks.
    List(ListArgs),
    /// Internal: the streaming side of `db_stream`, in its own process.
    ChildDbStream(ChildDbStreamArgs),
}

/// Runs benchmarks (all, or those named) and writes the report.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "run")]
pub struct RunArgs {
    /// ten times fewer rows and messages, one repetition: a smoke test
    #[argh(switch)]
    pub quick: bool,
    /// exit 1 when a goal is missed (by default only a benchmark that fails to run does)
    #[argh(switch)]
    pub strict: bool,
    /// repetitions of each throughput pair (default 5, 1 with --quick); the median is
    /// reported
    #[argh(option)]
    pub reps: Option<usize>,
    /// where to write the JSON report (default target/bench/report.json)
    #[argh(option, default = "PathBuf::from(\"target/bench/report.json\")")]
    pub report: PathBuf,
    /// the Markdown file whose results section is replaced (default
    /// docs/BENCHMARKS.md); only a full run (every benchmark, not --quick) updates it
    /// unless --update-doc is given
    #[argh(option, default = "PathBuf::from(\"docs/BENCHMARKS.md\")")]
    pub doc: PathBuf,
    /// update the doc even for a partial or quick run
    #[argh(switch)]
    pub update_doc: bool,
    /// never update the doc
    #[argh(switch)]
    pub no_doc: bool,
    /// the orchestratorm8 binary (default: next to this one)
    #[argh(option)]
    pub orchestrator: Option<PathBuf>,
    /// the command line to record in the doc (set by scripts/bench.sh)
    #[argh(option)]
    pub command_line: Option<String>,
    /// benchmarks to run (default: all; see `bench8 list`)
    #[argh(positional)]
    pub names: Vec<String>,
}

/// Lists the benchmarks.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list")]
pub struct ListArgs {}

/// Internal: streams the enabled domains of a database through db8 and prints
/// `{"rows", "seconds", "vm_hwm_kib"}`.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "child-db-stream")]
pub struct ChildDbStreamArgs {
    /// database name
    #[argh(option)]
    pub database: String,
    /// rows expected
    #[argh(option)]
    pub expect: u64,
}
