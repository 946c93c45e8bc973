//! Walking the parsed YAML tree with key paths: key matching, typed scalar reading,
//! and the collection of problems and unknown-key warnings.
//!
//! Key matching (documented in docs/CONFIGURATION.md): a known key matches a file key
//! ignoring ASCII case and treating `-`, `.` and `_` alike, so `Database`, `database`
//! and `DATABASE` are the same key (as in the Go original, whose viper ignores case), and
//! `pool.max_idle_time` can be written `POOL_MAX_IDLE_TIME` in an environment variable.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use serde_norway::{Mapping, Value};

use crate::duration;
use crate::error::{Problem, Warning};

/// The normal form keys are compared in.
pub(crate) fn norm(key: &str) -> String {
    key.chars()
        .map(|c| match c {
            '-' | '.' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect()
}

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// A key path such as `ORCHESTRATORM8.asmm8.Queue[2]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct KeyPath(pub(crate) Vec<Seg>);

impl KeyPath {
    pub(crate) fn key(&self, k: &str) -> KeyPath {
        let mut v = self.0.clone();
        v.push(Seg::Key(k.to_owned()));
        KeyPath(v)
    }

    pub(crate) fn index(&self, i: usize) -> KeyPath {
        let mut v = self.0.clone();
        v.push(Seg::Index(i));
        KeyPath(v)
    }

    /// The path in normal form, for matching against environment overrides.
    pub(crate) fn normalised(&self) -> Vec<Seg> {
        self.0
            .iter()
            .map(|s| match s {
                Seg::Key(k) => Seg::Key(norm(k)),
                i => i.clone(),
            })
            .collect()
    }

    /// Whether the value at this path is a secret (never shown in messages).
    pub(crate) fn is_secret(&self) -> bool {
        self.0.iter().any(|s| match s {
            Seg::Key(k) => {
                let n = norm(k);
                n.contains("PASSWORD") || n.contains("TOKEN") || n.contains("SECRET")
            }
            Seg::Index(_) => false,
        })
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for s in &self.0 {
            match s {
                Seg::Key(k) => {
                    if !first {
                        f.write_str(".")?;
                    }
                    // An empty key (`"": x`) is shown, so that its path is not blank.
                    f.write_str(if k.is_empty() { "\"\"" } else { k })?;
                }
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
            first = false;
        }
        Ok(())
    }
}

/// Collects problems and warnings while the tree is read.
#[derive(Debug, Default)]
pub(crate) struct Ctx {
    pub(crate) problems: Vec<Problem>,
    pub(crate) warnings: Vec<Warning>,
    /// Normalised key path -> the environment variable that set it.
    pub(crate) origins: HashMap<Vec<Seg>, String>,
}

impl Ctx {
    fn origin_note(&self, path: &KeyPath) -> String {
        match self.origins.get(&path.normalised()) {
            Some(var) => format!(" (set by environment variable {var})"),
            None => String::new(),
        }
    }

    /// Whether the value at `path` came from an environment override.
    pub(crate) fn set_by_env(&self, path: &KeyPath) -> bool {
        self.origins.contains_key(&path.normalised())
    }

    /// Records a problem with a free-form message.
    pub(crate) fn problem(&mut self, path: &KeyPath, message: impl Into<String>) {
        let note = self.origin_note(path);
        self.problems.push(Problem {
            path: path.to_string(),
            message: format!("{}{note}", message.into()),
        });
    }

    /// Records "got <value>, expected <expected>", unless `path` already has a problem
    /// (a value whose `${VAR}` failed is read as null: that is not a second problem).
    pub(crate) fn bad(&mut self, path: &KeyPath, value: &Value, expected: &str) {
        let shown_path = path.to_string();
        if self.problems.iter().any(|p| p.path == shown_path) {
            return;
        }
        let shown = show(value, path.is_secret());
        self.problem(path, format!("got {shown}, expected {expected}"));
    }

    /// Records a key of the mapping at `path` that is not text (a list or a mapping);
    /// the file's own mapping is named "the top level".
    pub(crate) fn bad_key(&mut self, path: &KeyPath, key: &Value) {
        let shown = show(key, false);
        let message = if path.to_string().is_empty() {
            format!("the top level has a key that is {shown}, expected text keys")
        } else {
            format!("a key of this mapping is {shown}, expected text keys")
        };
        self.problem(path, message);
    }

    /// Records a warning.
    pub(crate) fn warn(&mut self, path: &KeyPath, message: impl Into<String>) {
        let note = self.origin_note(path);
        self.warnings.push(Warning {
            path: path.to_string(),
            message: format!("{}{note}", message.into()),
        });
    }
}

/// A short rendering of a value for messages; secrets are never shown.
pub(crate) fn show(value: &Value, secret: bool) -> String {
    if secret && !matches!(value, Value::Null) {
        return "<redacted>".to_owned();
    }
    match value {
        Value::Null => "null (empty)".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let mut short: String = s.chars().take(60).collect();
            if short.len() < s.len() {
                short.push_str("...");
            }
            format!("{short:?}")
        }
        Value::Sequence(_) => "a list".to_owned(),
        Value::Mapping(_) => "a mapping".to_owned(),
        Value::Tagged(t) => show(&t.value, secret),
    }
}

/// A key of a mapping as text (YAML allows numbers and booleans as keys).
pub(crate) fn key_text(key: &Value) -> Option<String> {
    match key {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Tagged(t) => key_text(&t.value),
        _ => None,
    }
}

/// Removes YAML tags (`!foo x` is read as `x`).
pub(crate) fn untag(value: Value) -> Value {
    match value {
        Value::Tagged(t) => untag(t.value),
        v => v,
    }
}

/// A list or mapping may be given as a YAML string (from an environment variable or a
/// `${VAR}`): parse it. Other values are returned as they are.
pub(crate) fn structured(value: Value) -> Value {
    match untag(value) {
        Value::String(s) => match serde_norway::from_str::<Value>(&s) {
            Ok(v @ (Value::Sequence(_) | Value::Mapping(_))) => v,
            _ => Value::String(s),
        },
        v => v,
    }
}

/// A mapping being read: known keys are taken out, what is left over is unknown.
pub(crate) struct Section {
    pub(crate) path: KeyPath,
    entries: Vec<(String, Value, bool)>,
    /// Whether the section was present (not absent and not null).
    pub(crate) present: bool,
}

impl Section {
    /// A section from a value: null is an empty section, a mapping its entries; anything
    /// else is a problem (and an empty section).
    pub(crate) fn new(ctx: &mut Ctx, path: KeyPath, value: Option<Value>) -> Section {
        let mut s = Section {
            path,
            entries: Vec::new(),
            present: false,
        };
        let Some(value) = value else { return s };
        match structured(value) {
            Value::Null => {}
            Value::Mapping(m) => {
                s.present = true;
                s.entries = mapping_entries(ctx, &s.path, m);
            }
            other => ctx.bad(&s.path, &other, "a mapping of keys"),
        }
        s
    }

    /// Takes the value of the known key `name` (or one of its `aliases`), with its path
    /// spelled `name`. Absent gives `None`; null gives `Some(Value::Null)`.
    pub(crate) fn take_any(
        &mut self,
        ctx: &mut Ctx,
        name: &str,
        aliases: &[&str],
    ) -> Option<(KeyPath, Value)> {
        let mut names = vec![norm(name)];
        names.extend(aliases.iter().map(|a| norm(a)));
        let mut found: Option<(KeyPath, Value)> = None;
        for (key, value, used) in &mut self.entries {
            if *used || !names.contains(&norm(key)) {
                continue;
            }
            *used = true;
            let path = self.path.key(name);
            if found.is_some() {
                ctx.problem(
                    &path,
                    format!("given twice (also as {key:?}); keep only one of them"),
                );
                continue;
            }
            found = Some((path, untag(std::mem::take(value))));
        }
        found
    }

    /// [`Section::take_any`] without aliases.
    pub(crate) fn take(&mut self, ctx: &mut Ctx, name: &str) -> Option<(KeyPath, Value)> {
        self.take_any(ctx, name, &[])
    }

    /// The sub-section `name`.
    pub(crate) fn section(&mut self, ctx: &mut Ctx, name: &str) -> Section {
        match self.take(ctx, name) {
            Some((path, value)) => Section::new(ctx, path, Some(value)),
            None => Section::new(ctx, self.path.key(name), None),
        }
    }

    /// Reads the sub-section `name` with `read`, then warns about its unknown keys.
    /// `absent`, if given, is warned when the section is absent or null.
    pub(crate) fn read<T>(
        &mut self,
        ctx: &mut Ctx,
        name: &str,
        absent: Option<&str>,
        read: impl FnOnce(&mut Ctx, &mut Section) -> T,
    ) -> T {
        let mut s = self.section(ctx, name);
        if let (false, Some(message)) = (s.present, absent) {
            ctx.warn(&s.path, message);
        }
        let t = read(ctx, &mut s);
        s.finish(ctx);
        t
    }

    /// Reads `name` with `read`, given its path and value (null included); absent gives
    /// `default`.
    pub(crate) fn take_or<T>(
        &mut self,
        ctx: &mut Ctx,
        name: &str,
        default: T,
        read: impl FnOnce(&mut Ctx, &KeyPath, Value) -> T,
    ) -> T {
        match self.take(ctx, name) {
            None => default,
            Some((path, value)) => read(ctx, &path, value),
        }
    }

    /// Reads `name` with `read`; absent or null gives `default`, an error records a
    /// problem and gives `default`.
    pub(crate) fn get<T>(
        &mut self,
        ctx: &mut Ctx,
        name: &str,
        default: T,
        read: impl FnOnce(&Value) -> Result<T, String>,
    ) -> T {
        self.get_any(ctx, name, &[], default, read)
    }

    /// [`Section::get`] with aliases.
    pub(crate) fn get_any<T>(
        &mut self,
        ctx: &mut Ctx,
        name: &str,
        aliases: &[&str],
        default: T,
        read: impl FnOnce(&Value) -> Result<T, String>,
    ) -> T {
        match self.take_any(ctx, name, aliases) {
            None | Some((_, Value::Null)) => default,
            Some((path, value)) => match read(&value) {
                Ok(v) => v,
                Err(expected) => {
                    ctx.bad(&path, &value, &expected);
                    default
                }
            },
        }
    }

    /// The entries not taken yet, in file order (marks them taken).
    pub(crate) fn rest(&mut self) -> Vec<(String, KeyPath, Value)> {
        let mut out = Vec::new();
        for (key, value, used) in &mut self.entries {
            if !*used {
                *used = true;
                out.push((
                    key.clone(),
                    self.path.key(key),
                    untag(std::mem::take(value)),
                ));
            }
        }
        out
    }

    /// Warns about every key not taken.
    pub(crate) fn finish(self, ctx: &mut Ctx) {
        for (key, _, used) in &self.entries {
            if !used {
                ctx.warn(&self.path.key(key), "unknown key, ignored");
            }
        }
    }
}

/// The entries of a mapping with text keys; other keys are problems.
pub(crate) fn mapping_entries(
    ctx: &mut Ctx,
    path: &KeyPath,
    m: Mapping,
) -> Vec<(String, Value, bool)> {
    let mut out = Vec::with_capacity(m.len());
    for (k, v) in m {
        match key_text(&k) {
            Some(key) => out.push((key, v, false)),
            None => ctx.bad_key(path, &k),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Scalar readers: `Ok(value)` or `Err(what was expected)`.
// ---------------------------------------------------------------------------------------

/// A string; numbers and booleans are taken as their text (as viper does).
pub(crate) fn string(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err("a string".into()),
    }
}

/// A non-empty string.
pub(crate) fn non_empty(v: &Value) -> Result<String, String> {
    match string(v) {
        Ok(s) if !s.trim().is_empty() => Ok(s),
        _ => Err("a non-empty string".into()),
    }
}

/// An integer in `min..=max`, written as a number or as text (`"5"`).
pub(crate) fn int(min: i64, max: i64) -> impl Fn(&Value) -> Result<i64, String> {
    move |v: &Value| {
        let expected = || format!("an integer between {min} and {max}");
        let n = match v {
            Value::Number(n) => n.as_i64().ok_or_else(expected)?,
            Value::String(s) => s.trim().parse::<i64>().map_err(|_| expected())?,
            _ => return Err(expected()),
        };
        if (min..=max).contains(&n) {
            Ok(n)
        } else {
            Err(expected())
        }
    }
}

/// An unsigned integer in `min..=max` converted to `T`.
pub(crate) fn uint<T: TryFrom<i64>>(min: i64, max: i64) -> impl Fn(&Value) -> Result<T, String> {
    let read = int(min, max);
    move |v: &Value| {
        let n = read(v)?;
        T::try_from(n).map_err(|_| format!("an integer between {min} and {max}"))
    }
}

/// A boolean: `true`/`false`, or the texts Go's `strconv.ParseBool` accepts
/// (`1 t T TRUE true True 0 f F FALSE false False`).
pub(crate) fn boolean(v: &Value) -> Result<bool, String> {
    let expected = || "true or false".to_owned();
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) => match s.trim() {
            "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
            "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
            _ => Err(expected()),
        },
        Value::Number(n) => match n.as_i64() {
            Some(1) => Ok(true),
            Some(0) => Ok(false),
            _ => Err(expected()),
        },
        _ => Err(expected()),
    }
}

/// A floating-point number, finite.
pub(crate) fn float(v: &Value) -> Result<f64, String> {
    let f = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    f.filter(|f| f.is_finite())
        .ok_or_else(|| "a number".to_owned())
}

/// A Go duration (`"30s"`, `"1h30m"`); a bare `0` is zero.
pub(crate) fn go_duration(v: &Value) -> Result<Duration, String> {
    const EXPECTED: &str = "a Go duration such as \"30s\" or \"1h30m\"";
    match v {
        Value::String(s) => duration::parse(s.trim()).map_err(|e| format!("{EXPECTED}: {e}")),
        Value::Number(n) if n.as_u64() == Some(0) => Ok(Duration::ZERO),
        Value::Number(_) => Err(format!(
            "{EXPECTED}: a bare number has no unit (units ns, us, µs, ms, s, m, h)"
        )),
        _ => Err(EXPECTED.to_owned()),
    }
}

/// A duration of at least `min`.
pub(crate) fn duration_at_least(min: Duration) -> impl Fn(&Value) -> Result<Duration, String> {
    move |v: &Value| {
        let d = go_duration(v)?;
        if d >= min {
            Ok(d)
        } else {
            Err(format!(
                "a Go duration of at least {}",
                duration::format(min)
            ))
        }
    }
}

/// One of the names in `choices` (exact spelling).
pub(crate) fn one_of<T: Copy>(
    choices: &'static [(&'static str, T)],
) -> impl Fn(&Value) -> Result<T, String> {
    move |v: &Value| {
        let expected = || {
            let names: Vec<_> = choices.iter().map(|(n, _)| *n).collect();
            format!("one of {}", names.join(", "))
        };
        let s = match v {
            Value::String(s) => s.trim(),
            _ => return Err(expected()),
        };
        choices
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, t)| *t)
            .ok_or_else(expected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_render_and_normalise() {
        let p = KeyPath::default()
            .key("RabbitMQ")
            .key("pool")
            .key("pool.max_idle_time");
        assert_eq!(p.to_string(), "RabbitMQ.pool.pool.max_idle_time");
        let q = KeyPath::default()
            .key("Workflow")
            .key("stages")
            .index(1)
            .key("name");
        assert_eq!(q.to_string(), "Workflow.stages[1].name");
        assert_eq!(
            p.normalised(),
            vec![
                Seg::Key("RABBITMQ".into()),
                Seg::Key("POOL".into()),
                Seg::Key("POOL_MAX_IDLE_TIME".into())
            ]
        );
        assert!(
            KeyPath::default()
                .key("Database")
                .key("password")
                .is_secret()
        );
        assert!(KeyPath::default().key("HTTP").key("api_token").is_secret());
        assert!(!KeyPath::default().key("Database").key("port").is_secret());
    }

    #[test]
    fn secrets_are_never_shown() {
        assert_eq!(show(&Value::String("hunter2".into()), true), "<redacted>");
        assert_eq!(show(&Value::String("five".into()), false), "\"five\"");
    }

    #[test]
    fn scalar_readers() {
        let s = |t: &str| Value::String(t.into());
        let n = |i: i64| Value::Number(i.into());
        assert_eq!(int(1, 65535)(&n(5432)), Ok(5432));
        assert_eq!(int(1, 65535)(&s("5432")), Ok(5432));
        assert!(int(1, 65535)(&s("five")).is_err());
        assert!(int(1, 65535)(&n(0)).is_err());
        assert_eq!(boolean(&s("false")), Ok(false));
        assert_eq!(boolean(&s("T")), Ok(true));
        assert!(boolean(&s("yes")).is_err());
        assert_eq!(go_duration(&n(0)), Ok(Duration::ZERO));
        assert!(go_duration(&n(5)).is_err());
        assert_eq!(go_duration(&s("1h")), Ok(Duration::from_secs(3600)));
        assert_eq!(float(&s("2.5")), Ok(2.5));
        assert!(float(&s("NaN")).is_err());
    }
}
