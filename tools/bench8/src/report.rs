//! The report: one row per measured quantity, its floor, the ratio convention, and
//! rendering as JSON (`target/bench/report.json`) and as the Markdown table of
//! `docs/BENCHMARKS.md`.
//!
//! Ratio convention: **the ratio is always "higher is better"**, so that every goal
//! reads `ratio >= g`.
//! - rates (higher is better): `ratio = value / floor`;
//! - costs (seconds, MiB, CPU; lower is better): `ratio = floor / value`.
//!
//! A cost measured as zero (e.g. idle CPU below one clock tick) is divided by the
//! measurement's resolution instead, so the ratio stays finite and conservative.

use std::fmt::Write as _;

use serde::Serialize;

/// Which way a quantity is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// A rate: more is better; `ratio = value / floor`.
    Higher,
    /// A cost: less is better; `ratio = floor / value`.
    Lower,
}

/// The static description of one report row.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Row name, `<benchmark>.<quantity>`.
    pub name: &'static str,
    /// Unit of `value` and `floor`.
    pub unit: &'static str,
    /// Direction.
    pub better: Better,
    /// The goal: `ratio >= goal`.
    pub goal: f64,
    /// Smallest non-zero value the measurement can resolve (for [`Better::Lower`] rows
    /// whose value can be 0).
    pub resolution: f64,
}

/// One measurement of a row.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Our measurement.
    pub value: f64,
    /// The floor measured in the same run (or the absolute budget, for budgets).
    pub floor: f64,
    /// What exactly was compared (sizes, repetitions, the individual samples).
    pub detail: String,
}

/// Why a row has no number.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The benchmark cannot run yet (e.g. the implementation it measures is missing).
    NotRun(String),
    /// The benchmark tried and failed (service down, timeout, wrong result).
    Error(String),
}

impl<E: std::error::Error> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Error(error_chain(&e))
    }
}

/// `e: source: source...` on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        src = cause.source();
    }
    s
}

/// A row's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Goal met.
    Pass,
    /// Goal missed.
    Miss,
    /// Not run (implementation missing or benchmark not selected for a reason).
    NotRun,
    /// The benchmark failed to run.
    Error,
}

impl Status {
    /// Upper-case label for the console and the table.
    pub fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Miss => "MISS",
            Status::NotRun => "NOT RUN",
            Status::Error => "ERROR",
        }
    }
}

/// One row of `report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// `<benchmark>.<quantity>`.
    pub name: String,
    /// Our measurement (`null` when not run).
    pub value: Option<f64>,
    /// Unit of `value` and `floor`.
    pub unit: String,
    /// The floor measured in the same run, or the absolute budget.
    pub floor: Option<f64>,
    /// Higher is better: `value/floor` for rates, `floor/value` for costs.
    pub ratio: Option<f64>,
    /// `ratio >= g`.
    pub goal: String,
    /// `pass`, `miss`, `not_run` or `error`.
    pub status: Status,
    /// What was compared, or why there is no number.
    pub detail: String,
}

impl Row {
    /// The row for `spec` from its outcome.
    pub fn new(spec: &Spec, outcome: Result<Measured, Failure>) -> Row {
        let (value, floor, ratio, status, detail) = match outcome {
            Ok(m) => {
                let ratio = match spec.better {
                    Better::Higher => m.value / m.floor,
                    Better::Lower => m.floor / m.value.max(spec.resolution),
                };
                let ratio = ratio.is_finite().then_some(ratio);
                let status = match ratio {
                    Some(r) if r >= spec.goal => Status::Pass,
                    Some(_) => Status::Miss,
                    None => Status::Error,
                };
                let detail = if ratio.is_none() {
                    format!("ratio undefined (floor {}): {}", m.floor, m.detail)
                } else {
                    m.detail
                };
                let ratio = ratio.map(|r| (r * 1000.0).round() / 1000.0);
                let (value, floor) = (Some(round_sig(m.value)), Some(round_sig(m.floor)));
                (value, floor, ratio, status, detail)
            }
            Err(Failure::NotRun(why)) => {
                (None, None, None, Status::NotRun, format!("not run: {why}"))
            }
            Err(Failure::Error(why)) => (None, None, None, Status::Error, format!("failed: {why}")),
        };
        Row {
            name: spec.name.into(),
            value,
            unit: spec.unit.into(),
            floor,
            ratio,
            goal: format!("ratio >= {}", trim_float(spec.goal)),
            status,
            detail,
        }
    }
}

/// Rounds to 4 significant digits (the measurements are not more precise).
fn round_sig(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let digits = 4 - 1 - x.abs().log10().floor() as i32;
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

fn trim_float(x: f64) -> String {
    let s = format!("{x:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// A number for humans: thousands separated, few decimals.
pub fn human(x: f64) -> String {
    if x.abs() >= 1000.0 {
        let n = x.round() as i64;
        let digits = n.abs().to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        if n < 0 { format!("-{out}") } else { out }
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}

/// The Markdown table of the rows.
pub fn markdown_table(rows: &[Row]) -> String {
    let mut s = String::new();
    s.push_str("| benchmark | value | floor | ratio | goal | result |\n");
    s.push_str("|---|---:|---:|---:|---|---|\n");
    let dash = |cell: Option<String>| cell.unwrap_or_else(|| "—".into());
    for r in rows {
        let value = dash(r.value.map(|v| format!("{} {}", human(v), r.unit)));
        let floor = dash(r.floor.map(|v| format!("{} {}", human(v), r.unit)));
        let ratio = dash(r.ratio.map(|v| format!("{v:.3}")));
        let _ = writeln!(
            s,
            "| `{}` | {} | {} | {} | {} | **{}** |",
            r.name,
            value,
            floor,
            ratio,
            r.goal,
            r.status.label()
        );
    }
    s
}

/// The detail lines under the table (one bullet per row).
pub fn markdown_details(rows: &[Row]) -> String {
    let mut s = String::new();
    for r in rows {
        let _ = writeln!(s, "- `{}`: {}", r.name, r.detail.replace('\n', " "));
    }
    s
}

/// One console line per row.
pub fn console_line(r: &Row) -> String {
    match (r.value, r.floor, r.ratio) {
        (Some(v), Some(f), Some(ratio)) => format!(
            "{:<7} {:<28} value {} {} | floor {} {} | ratio {:.3} (goal {})",
            r.status.label(),
            r.name,
            human(v),
            r.unit,
            human(f),
            r.unit,
            ratio,
            r.goal
        ),
        _ => format!("{:<7} {:<28} {}", r.status.label(), r.name, r.detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: Spec = Spec {
        name: "x.rate",
        unit: "msg/s",
        better: Better::Higher,
        goal: 0.9,
        resolution: 0.0,
    };
    const COST: Spec = Spec {
        name: "x.cost",
        unit: "s",
        better: Better::Lower,
        goal: 1.0,
        resolution: 0.01,
    };

    fn m(value: f64, floor: f64) -> Result<Measured, Failure> {
        Ok(Measured {
            value,
            floor,
            detail: String::new(),
        })
    }

    #[test]
    fn rates_divide_value_by_floor() {
        let r = Row::new(&RATE, m(95.0, 100.0));
        assert_eq!(r.ratio, Some(0.95));
        assert_eq!(r.status, Status::Pass);
        let r = Row::new(&RATE, m(80.0, 100.0));
        assert_eq!(r.ratio, Some(0.8));
        assert_eq!(r.status, Status::Miss);
        assert_eq!(r.goal, "ratio >= 0.9");
    }

    #[test]
    fn costs_divide_floor_by_value_and_zero_uses_the_resolution() {
        let r = Row::new(&COST, m(4.0, 2.0));
        assert_eq!(r.ratio, Some(0.5));
        assert_eq!(r.status, Status::Miss);
        let r = Row::new(&COST, m(0.0, 2.0));
        assert_eq!(r.ratio, Some(200.0));
        assert_eq!(r.status, Status::Pass);
        assert_eq!(r.goal, "ratio >= 1");
    }

    #[test]
    fn a_zero_floor_is_an_error_not_a_pass() {
        let r = Row::new(&RATE, m(5.0, 0.0));
        assert_eq!(r.status, Status::Error);
        assert_eq!(r.ratio, None);
    }

    #[test]
    fn failures_have_no_numbers() {
        let r = Row::new(&RATE, Err(Failure::NotRun("no PgStore".into())));
        assert_eq!(r.status, Status::NotRun);
        assert_eq!(r.value, None);
        assert_eq!(r.detail, "not run: no PgStore");
        let json = serde_json::to_value(&r).unwrap();
        for key in ["name", "value", "unit", "floor", "ratio", "goal"] {
            assert!(json.get(key).is_some(), "{key} missing");
        }
        assert!(json["value"].is_null());
    }

    #[test]
    fn humans_read_thousands() {
        assert_eq!(human(1_234_567.4), "1,234,567");
        assert_eq!(human(12.345), "12.3");
        assert_eq!(human(1.5), "1.500");
        assert_eq!(round_sig(123_456.0), 123_500.0);
    }
}
