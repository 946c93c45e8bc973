//! `demo_monitor`: follows the orchestrator's workflows for `scripts/demo.sh`.
//!
//! ```text
//! demo_monitor [--url http://127.0.0.1:8005] [--interval-ms 1000] [--until-done]
//!              [--timeout 180] [--expect N] [--watch NAME=PID ...] [--plain] [--summary]
//! ```
//!
//! Polls `GET /api/orchestratorm8/workflows` (bearer token from
//! `$ORCHESTRATORM8_API_TOKEN` when set) and shows what changed: on a terminal, a
//! table redrawn in place with the latest events below it; otherwise (`--plain`, logs,
//! CI) one line per event. `--until-done` exits 0 once at least `--expect` workflows
//! exist and every one is completed, 1 as soon as one fails or is cancelled or when
//! `--timeout` seconds pass, with the summary table either way. Without it, it runs
//! until interrupted. `--watch NAME=PID` names a process of the demo: when it exits,
//! the monitor stops with status 3. `--summary` prints the summary table once.
//!
//! Synchronous: `reqwest`'s blocking client reads the API.

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use argh::FromArgs;
use demo8::monitor::board::{self, Board, Verdict};
use demo8::monitor::http::Endpoint;
use demo8::monitor::{FetchError, fetch_workflows, process_alive};
use model8::{GoTime, WorkflowView};

/// Follows orchestratorm8's workflows (the demo's progress display).
#[derive(FromArgs, Debug)]
struct Args {
    /// orchestratorm8's HTTP address (default http://127.0.0.1:8005)
    #[argh(option, default = "String::from(\"http://127.0.0.1:8005\")")]
    url: String,
    /// poll period in milliseconds (default 1000)
    #[argh(option, default = "1000")]
    interval_ms: u64,
    /// exit once every expected workflow is completed (0), or failed / timed out (1)
    #[argh(switch)]
    until_done: bool,
    /// with --until-done: give up after this many seconds (default 180)
    #[argh(option, default = "180")]
    timeout: u64,
    /// workflows expected (default 1)
    #[argh(option, default = "1")]
    expect: usize,
    /// a demo process to watch, NAME=PID (repeatable): its exit stops the monitor
    #[argh(option)]
    watch: Vec<String>,
    /// one line per event, no redrawn table (the default when stdout is not a terminal)
    #[argh(switch)]
    plain: bool,
    /// print the summary table once and exit
    #[argh(switch)]
    summary: bool,
}

const PROGRAM: &str = "demo_monitor";
/// Events kept under the table on a terminal.
const EVENTS_SHOWN: usize = 14;
/// Exit status when a watched process exits.
const WATCHED_EXITED: u8 = 3;

fn main() -> ExitCode {
    let args: Args = argh::from_env();
    let endpoint: Endpoint = match args.url.parse() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("{PROGRAM}: error: --url: {e}");
            return ExitCode::from(2);
        }
    };
    let mut watched = Vec::new();
    for w in &args.watch {
        match w.split_once('=').map(|(n, p)| (n, p.parse::<u32>())) {
            Some((name, Ok(pid))) if !name.is_empty() => watched.push((name.to_owned(), pid)),
            _ => {
                eprintln!("{PROGRAM}: error: --watch {w:?}: expected NAME=PID");
                return ExitCode::from(2);
            }
        }
    }
    let token = std::env::var("ORCHESTRATORM8_API_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let monitor = Monitor {
        endpoint,
        token,
        interval: Duration::from_millis(args.interval_ms.max(100)),
        watched,
        redraw: !args.plain && std::io::stdout().is_terminal(),
    };
    if args.summary {
        return monitor.print_summary();
    }
    monitor.run(
        args.until_done
            .then(|| (args.expect, Duration::from_secs(args.timeout))),
    )
}

struct Monitor {
    endpoint: Endpoint,
    token: Option<String>,
    interval: Duration,
    watched: Vec<(String, u32)>,
    redraw: bool,
}

impl Monitor {
    fn fetch(&self) -> Result<Vec<WorkflowView>, FetchError> {
        fetch_workflows(
            &self.endpoint,
            self.token.as_deref(),
            Duration::from_secs(5),
        )
    }

    fn print_summary(&self) -> ExitCode {
        match self.fetch() {
            Ok(views) => {
                print!("{}", board::summary(&views, &GoTime::now()));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{PROGRAM}: error: {e}");
                ExitCode::FAILURE
            }
        }
    }

    /// Polls until interrupted, or with `until` = (expected, timeout) until done.
    fn run(&self, until: Option<(usize, Duration)>) -> ExitCode {
        let start = Instant::now();
        let mut board = Board::new();
        let mut events: VecDeque<String> = VecDeque::new();
        let mut last: Vec<WorkflowView> = Vec::new();
        let mut problem: Option<String> = None;
        let mut reached_api = false;
        let mut announced_done = false;
        loop {
            let tick = Instant::now();
            let stamp = format!("{:>6.1}s", start.elapsed().as_secs_f64());
            match self.fetch() {
                Ok(views) => {
                    if !reached_api && !self.redraw {
                        println!("{stamp}  API reachable at {}", self.endpoint);
                    }
                    reached_api = true;
                    problem = None;
                    for e in board.update(&views) {
                        let line = format!("{stamp}  {e}");
                        if !self.redraw {
                            println!("{line}");
                        }
                        events.push_back(line);
                        if events.len() > EVENTS_SHOWN {
                            events.pop_front();
                        }
                    }
                    last = views;
                }
                Err(e) => {
                    let text = if reached_api {
                        format!("API unreachable: {e}")
                    } else {
                        format!("waiting for the API: {e}")
                    };
                    if !self.redraw && problem.as_deref() != Some(text.as_str()) {
                        println!("{stamp}  {text}");
                    }
                    problem = Some(text);
                }
            }
            if self.redraw {
                self.draw(&last, &events, problem.as_deref(), start, until.is_some());
            }
            if let Some(gone) = self.watched.iter().find(|(_, pid)| !process_alive(*pid)) {
                println!("\n{PROGRAM}: {} (pid {}) exited; stopping", gone.0, gone.1);
                print!("{}", board::summary(&last, &GoTime::now()));
                let _ = std::io::stdout().flush();
                return ExitCode::from(WATCHED_EXITED);
            }
            match until {
                Some((expect, timeout)) => match board::verdict(&last, expect) {
                    Verdict::AllCompleted => {
                        println!(
                            "\nall {} workflow(s) completed in {:.1}s\n",
                            last.len(),
                            start.elapsed().as_secs_f64()
                        );
                        print!("{}", board::summary(&last, &GoTime::now()));
                        return ExitCode::SUCCESS;
                    }
                    Verdict::Failed(bad) => {
                        println!(
                            "\nworkflow(s) that can no longer complete: {}\n",
                            bad.join("; ")
                        );
                        print!("{}", board::summary(&last, &GoTime::now()));
                        return ExitCode::FAILURE;
                    }
                    Verdict::Waiting if start.elapsed() >= timeout => {
                        let completed = last
                            .iter()
                            .filter(|v| v.status == model8::WorkflowStatus::Completed)
                            .count();
                        println!(
                            "\ntimed out after {}s: {completed} of {} expected workflow(s) completed{}\n",
                            timeout.as_secs(),
                            expect.max(last.len()),
                            problem.map(|p| format!(" ({p})")).unwrap_or_default()
                        );
                        print!("{}", board::summary(&last, &GoTime::now()));
                        return ExitCode::FAILURE;
                    }
                    Verdict::Waiting => {}
                },
                None => {
                    if !announced_done && board::verdict(&last, 1) == Verdict::AllCompleted {
                        announced_done = true;
                        let line = format!(
                            "all {} workflow(s) completed in {:.1}s; still watching (Ctrl-C stops the demo)",
                            last.len(),
                            start.elapsed().as_secs_f64()
                        );
                        if !self.redraw {
                            println!("{line}");
                            print!("{}", board::summary(&last, &GoTime::now()));
                        }
                        events.push_back(line);
                    }
                }
            }
            let _ = std::io::stdout().flush();
            std::thread::sleep(self.interval.saturating_sub(tick.elapsed()));
        }
    }

    /// Clears the terminal and draws the table, the status line and recent events.
    fn draw(
        &self,
        views: &[WorkflowView],
        events: &VecDeque<String>,
        problem: Option<&str>,
        start: Instant,
        until_done: bool,
    ) {
        let mut out = String::from("\x1b[H\x1b[2J");
        out.push_str(&format!(
            "orchestratorm8 demo: {} workflows at {}  ({:.0}s, {})\n\n",
            views.len(),
            self.endpoint,
            start.elapsed().as_secs_f64(),
            if until_done {
                "until every workflow completes"
            } else {
                "Ctrl-C stops"
            }
        ));
        if views.is_empty() {
            out.push_str("(no workflow yet)\n");
        } else {
            out.push_str(&board::table(views, &GoTime::now()));
        }
        if let Some(p) = problem {
            out.push_str(&format!("\n! {p}\n"));
        }
        out.push_str("\nlegend: wait (dependencies) · ready · run #N (attempt N) · retry #N (backoff before attempt N) · done (N attempts)\n\nrecent events:\n");
        for e in events {
            out.push_str(&format!("  {e}\n"));
        }
        print!("{out}");
    }
}
