//! The demo's view of the workflows: what changed between two polls (events), the
//! progress table, the verdict for `--until-done` and the final summary.

use std::collections::BTreeMap;
use std::fmt::Write;

use model8::{GoTime, StageStatus, StageView, WorkflowId, WorkflowStatus, WorkflowView};

/// Where the workflows stand, for `--until-done`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Fewer workflows than expected, or some not finished yet.
    Waiting,
    /// At least the expected number of workflows, every one completed.
    AllCompleted,
    /// These workflows ended failed or cancelled: they can never complete.
    Failed(Vec<String>),
}

/// The verdict over `views` when `expect` workflows are expected (at least one).
pub fn verdict(views: &[WorkflowView], expect: usize) -> Verdict {
    let bad: Vec<String> = views
        .iter()
        .filter(|v| matches!(v.status, WorkflowStatus::Failed | WorkflowStatus::Cancelled))
        .map(|v| format!("{} ({}): {}", label(v), short(v.id), v.status))
        .collect();
    if !bad.is_empty() {
        return Verdict::Failed(bad);
    }
    let done = views.iter().all(|v| v.status == WorkflowStatus::Completed);
    if views.len() >= expect.max(1) && done {
        Verdict::AllCompleted
    } else {
        Verdict::Waiting
    }
}

/// The workflows seen at the last poll, to tell what changed.
#[derive(Debug, Default)]
pub struct Board {
    seen: BTreeMap<WorkflowId, WorkflowView>,
}

impl Board {
    /// An empty board.
    pub fn new() -> Self {
        Board::default()
    }

    /// Records a poll's workflows and returns one line per change since the last poll.
    pub fn update(&mut self, views: &[WorkflowView]) -> Vec<String> {
        let mut events = Vec::new();
        for v in views {
            let name = label(v);
            match self.seen.get(&v.id) {
                None => {
                    events.push(format!(
                        "{name}: workflow {} created ({})",
                        short(v.id),
                        v.status
                    ));
                    for s in &v.stages {
                        if let Some(e) = stage_event(&name, None, s) {
                            events.push(e);
                        }
                    }
                }
                Some(old) => {
                    for s in &v.stages {
                        let before = old.stages.iter().find(|o| o.name == s.name);
                        if before != Some(s)
                            && let Some(e) = stage_event(&name, before, s)
                        {
                            events.push(e);
                        }
                    }
                    if old.status != v.status {
                        let mut e = format!("{name}: workflow {}", v.status);
                        if v.status.is_terminal() {
                            let _ = write!(e, " after {}", secs(age(v, None)));
                        }
                        events.push(e);
                    }
                }
            }
            self.seen.insert(v.id, v.clone());
        }
        events
    }
}

fn stage_event(name: &str, before: Option<&StageView>, s: &StageView) -> Option<String> {
    let prev_attempt = before.map_or(0, |b| b.attempt);
    let retry = s.attempt > 1 && s.attempt > prev_attempt;
    let text = match s.status {
        StageStatus::Waiting => return None,
        StageStatus::Pending if s.attempt == 0 => "ready".to_owned(),
        StageStatus::Pending => format!(
            "attempt {} failed or timed out; retry {} after backoff",
            s.attempt,
            s.attempt + 1
        ),
        StageStatus::Dispatched => format!("attempt {} published", s.attempt),
        StageStatus::Running if retry => format!("running attempt {} (retry)", s.attempt),
        StageStatus::Running => format!("running attempt {}", s.attempt),
        StageStatus::Stalled => format!("STALLED (attempt {}, silent past its timeout)", s.attempt),
        StageStatus::Completed => format!("completed (attempt {})", s.attempt),
        StageStatus::Failed => format!("FAILED after {} attempts", s.attempt),
        StageStatus::Cancelled => "cancelled".to_owned(),
    };
    Some(format!("{name}: {} {text}", s.name))
}

/// The workflow's domains as one label: the first name, `+N` for the others.
pub fn label(v: &WorkflowView) -> String {
    match v.domains.as_slice() {
        [] => "(no domain)".to_owned(),
        [one] => one.clone(),
        [first, rest @ ..] => format!("{first} +{}", rest.len()),
    }
}

/// The first 8 characters of an id.
pub fn short(id: WorkflowId) -> String {
    id.to_string().chars().take(8).collect()
}

/// A stage cell: `wait`, `ready`, `sent #1` (published, not yet confirmed), `run #2`, `retry #3` (backoff before attempt 3),
/// `STALL #1` (an observed ring stage silent past its timeout), `done` or `done (2)`,
/// `FAILED (3)`, `cancel`.
pub fn cell(s: &StageView) -> String {
    match s.status {
        StageStatus::Waiting => "wait".into(),
        StageStatus::Pending if s.attempt == 0 => "ready".into(),
        StageStatus::Pending => format!("retry #{}", s.attempt + 1),
        StageStatus::Dispatched => format!("sent #{}", s.attempt),
        StageStatus::Running => format!("run #{}", s.attempt),
        StageStatus::Stalled => format!("STALL #{}", s.attempt),
        StageStatus::Completed if s.attempt <= 1 => "done".into(),
        StageStatus::Completed => format!("done ({})", s.attempt),
        StageStatus::Failed => format!("FAILED ({})", s.attempt),
        StageStatus::Cancelled => "cancel".into(),
    }
}

/// Seconds between creation and the last change (terminal workflows) or `now`.
fn age(v: &WorkflowView, now: Option<&GoTime>) -> f64 {
    let end = match now {
        Some(now) if !v.status.is_terminal() => now.0,
        _ => v.updated_at.0,
    };
    let ms = (end - v.created_at.0).num_milliseconds();
    ms.max(0) as f64 / 1000.0
}

fn secs(s: f64) -> String {
    format!("{s:.1}s")
}

/// Stage names in pipeline order, over every workflow.
fn stage_names(views: &[WorkflowView]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for v in views {
        for s in &v.stages {
            if !names.contains(&s.name) {
                names.push(s.name.clone());
            }
        }
    }
    names
}

/// The progress table: one line per workflow (oldest first), a column per stage.
pub fn table(views: &[WorkflowView], now: &GoTime) -> String {
    let stages = stage_names(views);
    let mut rows: Vec<Vec<String>> = vec![
        ["WORKFLOW", "DOMAIN", "STATUS"]
            .iter()
            .map(|s| (*s).to_owned())
            .chain(stages.iter().cloned())
            .chain(["AGE".to_owned()])
            .collect(),
    ];
    let mut sorted: Vec<&WorkflowView> = views.iter().collect();
    sorted.sort_by_key(|v| (v.created_at.0, label(v)));
    for v in sorted {
        let mut row = vec![short(v.id), label(v), v.status.to_string()];
        for name in &stages {
            row.push(
                v.stages
                    .iter()
                    .find(|s| &s.name == name)
                    .map_or_else(|| "-".to_owned(), cell),
            );
        }
        row.push(secs(age(v, Some(now))));
        rows.push(row);
    }
    columns(&rows)
}

/// The final summary: per workflow its attempts, retries and duration (up to `now` for
/// a workflow still going), then totals.
pub fn summary(views: &[WorkflowView], now: &GoTime) -> String {
    let mut rows = vec![
        ["DOMAIN", "STATUS", "ATTEMPTS", "RETRIES", "DURATION"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect::<Vec<_>>(),
    ];
    let mut sorted: Vec<&WorkflowView> = views.iter().collect();
    sorted.sort_by_key(|v| (v.created_at.0, label(v)));
    let (mut attempts_total, mut retries_total) = (0u32, 0u32);
    let mut by_status: BTreeMap<&'static str, usize> = BTreeMap::new();
    for v in &sorted {
        let attempts: u32 = v.stages.iter().map(|s| s.attempt).sum();
        let retries: u32 = v.stages.iter().map(|s| s.attempt.saturating_sub(1)).sum();
        attempts_total += attempts;
        retries_total += retries;
        *by_status.entry(v.status.as_str()).or_default() += 1;
        rows.push(vec![
            label(v),
            v.status.to_string(),
            attempts.to_string(),
            retries.to_string(),
            secs(age(v, Some(now))),
        ]);
    }
    let mut out = columns(&rows);
    let counts: Vec<String> = by_status.iter().map(|(s, n)| format!("{n} {s}")).collect();
    let _ = writeln!(
        out,
        "{} workflow(s): {}; {attempts_total} stage attempts, {retries_total} retries",
        views.len(),
        if counts.is_empty() {
            "none".to_owned()
        } else {
            counts.join(", ")
        }
    );
    out
}

/// Left-aligned columns separated by two spaces.
fn columns(rows: &[Vec<String>]) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(id: u128, status: WorkflowStatus, stages: &[(&str, StageStatus, u32)]) -> WorkflowView {
        WorkflowView {
            kind: model8::WorkflowKind::Managed,
            id: WorkflowId::from_u128(id),
            status,
            created_at: "2025-11-19T10:00:00Z".parse().unwrap(),
            updated_at: "2025-11-19T10:00:12.5Z".parse().unwrap(),
            domains: vec![format!("d{id}.example")],
            stages: stages
                .iter()
                .map(|(n, s, a)| StageView {
                    name: (*n).into(),
                    status: *s,
                    attempt: *a,
                    started_at: None,
                    finished_at: None,
                    detail: None,
                    waiting_for_window_until: None,
                })
                .collect(),
        }
    }

    use StageStatus::*;

    #[test]
    fn events_tell_retries_and_endings() {
        let mut b = Board::new();
        let v1 = view(
            1,
            WorkflowStatus::Running,
            &[("asmm8", Running, 1), ("naabum8", Waiting, 0)],
        );
        let e = b.update(std::slice::from_ref(&v1));
        assert_eq!(
            e,
            [
                "d1.example: workflow 00000000 created (running)",
                "d1.example: asmm8 running attempt 1"
            ]
        );
        assert!(
            b.update(std::slice::from_ref(&v1)).is_empty(),
            "no change, no event"
        );
        let v2 = view(
            1,
            WorkflowStatus::Running,
            &[("asmm8", Pending, 1), ("naabum8", Waiting, 0)],
        );
        assert_eq!(
            b.update(&[v2]),
            ["d1.example: asmm8 attempt 1 failed or timed out; retry 2 after backoff"]
        );
        // A poll may miss the pending state: a higher attempt still says retry.
        let v3 = view(
            1,
            WorkflowStatus::Running,
            &[("asmm8", Running, 3), ("naabum8", Waiting, 0)],
        );
        assert_eq!(
            b.update(&[v3]),
            ["d1.example: asmm8 running attempt 3 (retry)"]
        );
        let v4 = view(
            1,
            WorkflowStatus::Completed,
            &[("asmm8", Completed, 3), ("naabum8", Completed, 1)],
        );
        assert_eq!(
            b.update(&[v4]),
            [
                "d1.example: asmm8 completed (attempt 3)",
                "d1.example: naabum8 completed (attempt 1)",
                "d1.example: workflow completed after 12.5s"
            ]
        );
    }

    #[test]
    fn verdicts() {
        let done = view(1, WorkflowStatus::Completed, &[("asmm8", Completed, 1)]);
        let running = view(2, WorkflowStatus::Running, &[("asmm8", Running, 1)]);
        let failed = view(3, WorkflowStatus::Failed, &[("asmm8", Failed, 3)]);
        assert_eq!(verdict(&[], 0), Verdict::Waiting, "nothing yet is not done");
        assert_eq!(verdict(std::slice::from_ref(&done), 2), Verdict::Waiting);
        assert_eq!(
            verdict(&[done.clone(), running.clone()], 2),
            Verdict::Waiting
        );
        assert_eq!(
            verdict(&[done.clone(), done.clone()], 2),
            Verdict::AllCompleted
        );
        let Verdict::Failed(f) = verdict(&[done, running, failed], 3) else {
            panic!("a failed workflow can never complete");
        };
        assert_eq!(f, ["d3.example (00000000): failed"]);
    }

    #[test]
    fn table_and_summary() {
        let views = [
            view(
                1,
                WorkflowStatus::Completed,
                &[("asmm8", Completed, 2), ("naabum8", Completed, 1)],
            ),
            view(
                2,
                WorkflowStatus::Running,
                &[("asmm8", Pending, 1), ("naabum8", Waiting, 0)],
            ),
        ];
        let now: GoTime = "2025-11-19T10:00:20Z".parse().unwrap();
        let t = table(&views, &now);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "WORKFLOW  DOMAIN      STATUS     asmm8     naabum8  AGE"
        );
        assert_eq!(
            lines[1],
            "00000000  d1.example  completed  done (2)  done     12.5s"
        );
        assert_eq!(
            lines[2],
            "00000000  d2.example  running    retry #2  wait     20.0s"
        );
        let s = summary(&views, &now);
        assert!(
            s.contains("d1.example  completed  3         1        12.5s"),
            "{s}"
        );
        assert!(
            s.ends_with("2 workflow(s): 1 completed, 1 running; 4 stage attempts, 1 retries\n"),
            "{s}"
        );
    }
}
