//! The environment the configuration is read with: `${VAR}` values, key overrides and
//! the configuration path.
//!
//! The loader takes an [`Env`] instead of reading the process environment itself, so
//! tests describe their environment without mutating the process's (which is unsafe in
//! edition 2024 and racy in parallel tests).
//!
//! # Override naming scheme
//!
//! `ORCHESTRATORM8__` followed by the key path, its segments joined by `__` (two
//! underscores). Segments match keys ignoring case and treating `-`, `.` and `_` alike;
//! a number selects a list element:
//!
//! | variable | key |
//! |---|---|
//! | `ORCHESTRATORM8__DATABASE__PASSWORD` | `Database.password` |
//! | `ORCHESTRATORM8__LOG_LEVEL` | `LOG_LEVEL` |
//! | `ORCHESTRATORM8__RABBITMQ__POOL__POOL_MAX_IDLE_TIME` | `RabbitMQ.pool."pool.max_idle_time"` |
//! | `ORCHESTRATORM8__ORCHESTRATORM8__ASMM8__QUEUE` | `ORCHESTRATORM8.asmm8.Queue` (value `[cptm8, qasmm8, 2]`) |
//! | `ORCHESTRATORM8__ORCHESTRATORM8__ASMM8__QUEUE__2` | `ORCHESTRATORM8.asmm8.Queue[2]` |
//! | `ORCHESTRATORM8__WORKFLOW__STAGES__0__TIMEOUT` | `Workflow.stages[0].timeout` |
//!
//! The value replaces the file's. Lists and mappings are given as YAML flow text
//! (`[a, b]`, `{x-max-length: 5}`). A key the file lacks is created (spelled in lower
//! case when it is not a known key).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde_norway::{Mapping, Value};

use crate::tree::{Ctx, KeyPath, key_text, norm};

/// Prefix of key-override variables.
pub const OVERRIDE_PREFIX: &str = "ORCHESTRATORM8__";

/// Variable naming the configuration file.
pub const CONFIG_PATH_VAR: &str = "ORCHESTRATORM8_CONFIG";

/// The configuration file used when neither `--config` nor [`CONFIG_PATH_VAR`] names one.
pub const DEFAULT_CONFIG_PATH: &str = "configs/configuration.yaml";

/// A set of environment variables. `Debug` shows names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Env {
    vars: BTreeMap<String, String>,
}

impl Env {
    /// The process environment (variables whose name or value is not UTF-8 are skipped).
    pub fn from_process() -> Self {
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect()
    }

    /// No variables.
    pub fn empty() -> Self {
        Env::default()
    }

    /// This environment plus `name=value`.
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.vars.insert(name.into(), value.into());
        self
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// Every `ORCHESTRATORM8__...` override, in name order.
    fn overrides(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars
            .iter()
            .filter(|(k, _)| k.starts_with(OVERRIDE_PREFIX))
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Env {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Env {
            vars: iter
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }
}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Env")
            .field("names", &self.vars.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The configuration file to read: `cli` (`--config`), else the process's
/// `ORCHESTRATORM8_CONFIG`, else `configs/configuration.yaml` (relative to the working
/// directory).
pub fn resolve_path(cli: Option<PathBuf>) -> PathBuf {
    resolve_path_with(cli, &Env::from_process())
}

/// [`resolve_path`] with an explicit environment.
pub fn resolve_path_with(cli: Option<PathBuf>, env: &Env) -> PathBuf {
    cli.or_else(|| {
        env.get(CONFIG_PATH_VAR)
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
    })
    .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH))
}

/// Canonical spellings of the known keys, used when an override creates a key.
const KNOWN_KEYS: &[&str] = &[
    "APP_ENV",
    "LOG_LEVEL",
    "ORCHESTRATORM8",
    "Services",
    "Exchanges",
    "Queue",
    "Routing-keys",
    "Queue-arguments",
    "Consumer",
    "Database",
    "RabbitMQ",
    "pool",
    "pool.max_idle_time",
    "Scheduler",
    "Workflow",
    "HTTP",
    "LeaderElection",
    "Log",
];

fn new_key_name(segment: &str) -> String {
    let n = norm(segment);
    KNOWN_KEYS
        .iter()
        .find(|k| norm(k) == n)
        .map_or_else(|| segment.to_ascii_lowercase(), |k| (*k).to_owned())
}

/// Applies every `ORCHESTRATORM8__...` variable of `env` to `root` (a mapping), and
/// records which key paths they set in `ctx.origins`.
pub(crate) fn apply_overrides(root: &mut Mapping, env: &Env, ctx: &mut Ctx) {
    for (var, value) in env.overrides() {
        let rest = &var[OVERRIDE_PREFIX.len()..];
        let segments: Vec<&str> = rest.split("__").collect();
        if segments.iter().any(|s| s.is_empty()) {
            ctx.warn(
                &KeyPath::default(),
                format!("environment variable {var} ignored: empty key segment (keys are separated by exactly two underscores)"),
            );
            continue;
        }
        match set_path(root, &segments, value) {
            Ok(path) => {
                ctx.origins.insert(path.normalised(), var.to_owned());
            }
            Err(message) => ctx.problem(
                &KeyPath::default(),
                format!("environment variable {var}: {message}"),
            ),
        }
    }
}

/// Sets the value at `segments` below `root` to the string `value`; returns its path.
fn set_path(root: &mut Mapping, segments: &[&str], value: &str) -> Result<KeyPath, String> {
    let mut path = KeyPath::default();
    let mut node: &mut Value = {
        let key = find_or_create(root, segments[0], &mut path)?;
        root.get_mut(&key).expect("just found or created")
    };
    for seg in &segments[1..] {
        if matches!(node, Value::Null) {
            *node = Value::Mapping(Mapping::new());
        }
        node = match node {
            Value::Mapping(m) => {
                let key = find_or_create(m, seg, &mut path)?;
                m.get_mut(&key).expect("just found or created")
            }
            Value::Sequence(items) => {
                let i: usize = seg.parse().map_err(|_| {
                    format!("{path} is a list: expected an element number, got {seg:?}")
                })?;
                let len = items.len();
                path = path.index(i);
                items
                    .get_mut(i)
                    .ok_or_else(|| format!("{path} does not exist (the list has {len} elements)"))?
            }
            _ => return Err(format!("{path} is a single value, it has no key {seg:?}")),
        };
    }
    *node = Value::String(value.to_owned());
    Ok(path)
}

/// The key of `m` matching `segment`, created (with a null value) when absent.
fn find_or_create(m: &mut Mapping, segment: &str, path: &mut KeyPath) -> Result<Value, String> {
    let wanted = norm(segment);
    let matches: Vec<(Value, String)> = m
        .keys()
        .filter_map(|k| {
            let text = key_text(k)?;
            (norm(&text) == wanted).then(|| (k.clone(), text))
        })
        .collect();
    match matches.len() {
        0 => {
            let name = new_key_name(segment);
            *path = path.key(&name);
            let key = Value::String(name);
            m.insert(key.clone(), Value::Null);
            Ok(key)
        }
        1 => {
            let (key, text) = matches.into_iter().next().expect("one");
            *path = path.key(&text);
            Ok(key)
        }
        _ => {
            let names: Vec<_> = matches.iter().map(|(_, t)| t.as_str()).collect();
            Err(format!(
                "ambiguous: {} matches the keys {}",
                segment,
                names.join(", ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(s: &str) -> Mapping {
        serde_norway::from_str(s).unwrap()
    }

    fn apply(doc: &str, env: &Env) -> (Mapping, Ctx) {
        let mut m = yaml(doc);
        let mut ctx = Ctx::default();
        apply_overrides(&mut m, env, &mut ctx);
        (m, ctx)
    }

    #[test]
    fn resolve_path_prefers_flag_then_env_then_default() {
        let env = Env::empty().with(CONFIG_PATH_VAR, "/etc/o.yaml");
        assert_eq!(
            resolve_path_with(Some("x.yaml".into()), &env),
            PathBuf::from("x.yaml")
        );
        assert_eq!(resolve_path_with(None, &env), PathBuf::from("/etc/o.yaml"));
        assert_eq!(
            resolve_path_with(None, &Env::empty()),
            PathBuf::from("configs/configuration.yaml")
        );
    }

    #[test]
    fn overrides_match_keys_ignoring_case_and_punctuation() {
        let doc = "Database: {password: x}\nRabbitMQ: {pool: {pool.max_idle_time: }}\nORCHESTRATORM8: {asmm8: {Queue: [cptm8, qasmm8, 1], Routing-keys: [a]}}";
        let env = Env::empty()
            .with("ORCHESTRATORM8__DATABASE__PASSWORD", "s3cret")
            .with("ORCHESTRATORM8__RABBITMQ__POOL__POOL_MAX_IDLE_TIME", "5m")
            .with("ORCHESTRATORM8__ORCHESTRATORM8__ASMM8__QUEUE__2", "7")
            .with(
                "ORCHESTRATORM8__ORCHESTRATORM8__ASMM8__ROUTING_KEYS",
                "[b, c]",
            )
            .with("ORCHESTRATORM8__LOG_LEVEL", "3");
        let (m, ctx) = apply(doc, &env);
        assert!(ctx.problems.is_empty(), "{:?}", ctx.problems);
        assert_eq!(m["Database"]["password"], Value::from("s3cret"));
        assert_eq!(
            m["RabbitMQ"]["pool"]["pool.max_idle_time"],
            Value::from("5m")
        );
        assert_eq!(m["ORCHESTRATORM8"]["asmm8"]["Queue"][2], Value::from("7"));
        assert_eq!(
            m["ORCHESTRATORM8"]["asmm8"]["Routing-keys"],
            Value::from("[b, c]")
        );
        assert_eq!(m["LOG_LEVEL"], Value::from("3"));
        let origin = KeyPath::default().key("Database").key("password");
        assert_eq!(
            ctx.origins.get(&origin.normalised()).map(String::as_str),
            Some("ORCHESTRATORM8__DATABASE__PASSWORD")
        );
    }

    #[test]
    fn overrides_create_missing_sections_with_canonical_names() {
        let (m, ctx) = apply(
            "APP_ENV: DEV",
            &Env::empty().with("ORCHESTRATORM8__HTTP__API_TOKEN", "t"),
        );
        assert!(ctx.problems.is_empty());
        assert_eq!(m["HTTP"]["api_token"], Value::from("t"));
    }

    #[test]
    fn bad_override_paths_are_problems() {
        let (_, ctx) = apply(
            "ORCHESTRATORM8: {asmm8: {Queue: [a, b, 1]}}\nDatabase: {port: 1}",
            &Env::empty()
                .with("ORCHESTRATORM8__ORCHESTRATORM8__ASMM8__QUEUE__9", "x")
                .with("ORCHESTRATORM8__DATABASE__PORT__X", "x"),
        );
        let text: Vec<_> = ctx.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(text.len(), 2, "{text:?}");
        assert!(
            text[0].contains("ORCHESTRATORM8__DATABASE__PORT__X"),
            "{text:?}"
        );
        assert!(
            text[1].contains("does not exist (the list has 3 elements)"),
            "{text:?}"
        );
    }

    #[test]
    fn an_empty_segment_is_a_warning_and_the_variable_is_ignored() {
        for var in [
            "ORCHESTRATORM8__DATABASE____PORT",
            "ORCHESTRATORM8__DATABASE__PORT__",
            "ORCHESTRATORM8____DATABASE__PORT",
        ] {
            let (m, ctx) = apply("Database: {port: 1}", &Env::empty().with(var, "7"));
            assert!(ctx.problems.is_empty(), "{var}: {:?}", ctx.problems);
            assert_eq!(ctx.warnings.len(), 1, "{var}");
            let w = ctx.warnings[0].to_string();
            assert!(w.contains(var) && w.contains("empty key segment"), "{w}");
            assert_eq!(m, yaml("Database: {port: 1}"), "{var}: nothing set");
        }
    }

    #[test]
    fn ambiguous_keys_are_problems() {
        let (_, ctx) = apply(
            "a.b: 1\na-b: 2",
            &Env::empty().with("ORCHESTRATORM8__A_B", "3"),
        );
        assert!(ctx.problems[0].message.contains("ambiguous"));
    }

    #[test]
    fn debug_shows_no_values() {
        let env = Env::empty().with("PW", "hunter2");
        assert!(!format!("{env:?}").contains("hunter2"));
        assert_eq!(format!("{env:?}"), r#"Env { names: ["PW"] }"#);
    }

    #[test]
    fn built_from_the_process_or_from_pairs() {
        let env: Env = [("A", "1"), ("B", "2")].into_iter().collect();
        assert_eq!(
            (env.get("A"), env.get("B"), env.get("C")),
            (Some("1"), Some("2"), None)
        );
        let process = Env::from_process();
        let (name, value) = std::env::vars()
            .next()
            .expect("a test runs with some variable");
        assert_eq!(process.get(&name), Some(value.as_str()));
        assert_eq!(resolve_path(Some("x.yaml".into())), PathBuf::from("x.yaml"));
    }
}
