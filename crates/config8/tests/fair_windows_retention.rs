//! `Workflow.fairness`, `company_weights`, `windows` (global and per stage) and
//! `retention`: what loads, what every bad value reports (key path and value), how the
//! printed configuration loads back, and which changes apply live.

use std::time::Duration;

use chrono::{NaiveTime, Weekday};
use config8::*;

fn problems(yaml: &str) -> Vec<String> {
    match from_yaml_str(yaml, &Env::empty()) {
        Ok(l) => panic!("expected an invalid configuration, got {:?}", l.settings),
        Err(e) => e.problems().iter().map(ToString::to_string).collect(),
    }
}

fn load(yaml: &str) -> Loaded {
    from_yaml_str(yaml, &Env::empty()).unwrap_or_else(|e| panic!("{e}"))
}

const GOOD: &str = r#"
Scheduler: {mode: managed}
Workflow:
  fairness: company
  company_weights: {"ACME": 3, "": 2}
  windows:
    - { days: [mon, tue, wed, thu, fri], from: "22:00", to: "06:00", timezone: "Europe/Madrid" }
    - { from: "12:00", to: "13:30:30" }
  retention: "30d"
  stages:
    - {name: asmm8, windows: []}
    - {name: num8, depends_on: [asmm8], windows: [{days: [Saturday], from: "00:00", to: "23:59"}]}
    - {name: naabum8, depends_on: [asmm8]}
"#;

#[test]
fn defaults_are_no_fairness_no_windows_and_thirty_days() {
    let w = load("").settings.workflow;
    assert_eq!(w.fairness, Fairness::None);
    assert!(w.company_weights.is_empty());
    assert!(w.windows.is_empty());
    assert_eq!(w.retention, Duration::from_secs(30 * 86_400));
    assert_eq!(w.retention, DEFAULT_RETENTION);
    assert!(w.stages.iter().all(|s| s.windows.is_none()));
}

#[test]
fn the_contracts_keys_load() {
    let l = load(GOOD);
    // (The warnings are the absent sections' and the stages' unbound routing keys.)
    assert!(
        !l.warnings.iter().any(|w| w.path.contains("windows")
            || w.path.starts_with("Workflow.f")
            || w.path.contains("company")
            || w.path.contains("retention")),
        "{:?}",
        l.warnings
    );
    let w = &l.settings.workflow;
    assert_eq!(w.fairness, Fairness::Company);
    assert_eq!(w.company_weight(Some("ACME")), 3);
    assert_eq!(w.company_weight(None), 2);
    assert_eq!(w.company_weight(Some("other")), 1);
    assert_eq!(w.retention, Duration::from_secs(30 * 86_400));
    assert_eq!(w.windows.len(), 2);
    let night = &w.windows[0];
    assert_eq!(night.days.len(), 5);
    assert_eq!(night.from, NaiveTime::from_hms_opt(22, 0, 0).unwrap());
    assert_eq!(night.to, NaiveTime::from_hms_opt(6, 0, 0).unwrap());
    assert_eq!(night.timezone.name(), "Europe/Madrid");
    assert_eq!(w.windows[1].timezone.name(), "UTC", "the default zone");
    assert!(w.windows[1].days.is_empty(), "absent days: every day");
    // A stage's own list replaces the global one; an empty one means always.
    assert!(w.windows_of("asmm8").is_empty());
    assert_eq!(w.windows_of("num8")[0].days, [Weekday::Sat]);
    assert_eq!(w.windows_of("naabum8").len(), 2);
}

#[test]
fn retention_takes_days_and_go_durations() {
    let r = |v: &str| {
        load(&format!("Workflow: {{retention: {v:?}}}"))
            .settings
            .workflow
            .retention
    };
    assert_eq!(r("0s"), Duration::ZERO);
    assert_eq!(r("720h"), Duration::from_secs(30 * 86_400));
    assert_eq!(r("1d12h"), Duration::from_secs(36 * 3600));
    assert_eq!(r("7d"), Duration::from_secs(7 * 86_400));
    assert_eq!(
        problems("Workflow: {retention: \"30days\"}"),
        [
            "Workflow.retention: got \"30days\", expected a Go duration such as \"720h\", or days such as \"30d\" (\"0s\" keeps everything): invalid number"
        ]
    );
}

#[test]
fn every_bad_window_value_names_its_key_path_and_value() {
    let p = problems(
        r#"
Workflow:
  fairness: round-robin
  company_weights: {ACME: 0}
  windows:
    - { days: [mon, funday], from: "22:00", to: "06:00", timezone: "Europe/Madird" }
    - { from: "25:00", to: "6am" }
    - { from: "08:00", to: "08:00" }
    - { days: [], from: "08:00", to: "09:00" }
    - { to: "09:00" }
  stages:
    - {name: asmm8, windows: [{from: "x", to: "09:00"}]}
"#,
    );
    assert_eq!(
        p,
        [
            "Workflow.stages[0].windows[0].from: got \"x\", expected a local time HH:MM or HH:MM:SS (24-hour clock), e.g. \"22:00\"",
            "Workflow.fairness: got \"round-robin\", expected one of none, company",
            "Workflow.company_weights.ACME: got 0, expected an integer between 1 and 1000",
            "Workflow.windows[0].days[1]: got \"funday\", expected a day: mon, tue, wed, thu, fri, sat or sun",
            "Workflow.windows[0].timezone: got \"Europe/Madird\", expected an IANA time zone name such as \"Europe/Madrid\" or \"UTC\"",
            "Workflow.windows[1].from: got \"25:00\", expected a local time HH:MM or HH:MM:SS (24-hour clock), e.g. \"22:00\"",
            "Workflow.windows[1].to: got \"6am\", expected a local time HH:MM or HH:MM:SS (24-hour clock), e.g. \"22:00\"",
            "Workflow.windows[2].to: got \"08:00\", the same as from: a window needs from and to apart (leave windows out to always allow)",
            "Workflow.windows[3].days: an empty list of days never opens: list days, or leave days out for every day",
            "Workflow.windows[4].from: missing: expected a local time HH:MM or HH:MM:SS (24-hour clock), e.g. \"22:00\"",
        ]
    );
}

#[test]
fn the_printed_configuration_loads_back() {
    let loaded = load(GOOD);
    let text = render_redacted(&loaded.settings);
    assert!(text.contains("retention: 720h0m0s"), "{text}");
    assert!(text.contains("timezone: Europe/Madrid"), "{text}");
    let again = load(&text);
    let mut expected = loaded.settings.clone();
    expected.rabbitmq.password = Secret::new("***");
    expected.rabbitmq.username = "***".into();
    assert_eq!(again.settings, expected, "{text}");
}

#[test]
fn fairness_windows_and_retention_apply_live() {
    let old = load(GOOD).settings;
    let new = load(
        &GOOD
            .replace("fairness: company", "fairness: none")
            .replace("\"ACME\": 3", "\"ACME\": 4")
            .replace("\"22:00\"", "\"21:00\"")
            .replace("\"30d\"", "\"7d\"")
            .replace("windows: []", "windows: [{from: \"01:00\", to: \"02:00\"}]"),
    )
    .settings;
    let r = diff(&old, &new);
    assert_eq!(r.restart_required, Vec::<String>::new());
    assert_eq!(
        r.live,
        [
            "Workflow.fairness",
            "Workflow.company_weights",
            "Workflow.windows",
            "Workflow.retention",
            "Workflow.stages.asmm8.windows",
        ]
    );
}
