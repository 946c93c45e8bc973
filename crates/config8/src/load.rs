//! Loading: read, parse, override from the environment, expand `${VAR}`, read typed
//! values, check across values.

use std::path::Path;

use serde_norway::{Mapping, Value};

use crate::env::{Env, apply_overrides};
use crate::error::{ConfigError, Warning};
use crate::expand::expand_tree;
use crate::settings::Settings;
use crate::tree::{Ctx, KeyPath, key_text, show, untag};
use crate::{extract, validate};

/// A valid configuration and the warnings found loading it.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The settings.
    pub settings: Settings,
    /// Unknown keys and other suspicious but accepted things.
    pub warnings: Vec<Warning>,
}

/// Loads the file at `path` with the process environment.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    load_with(path, &Env::from_process())
}

/// Loads the file at `path` with the environment `env`.
pub fn load_with(path: &Path, env: &Env) -> Result<Loaded, ConfigError> {
    let text = read(path)?;
    parse(&text, Some(path), env)
}

/// Loads a configuration from YAML text with the environment `env`.
pub fn from_yaml_str(text: &str, env: &Env) -> Result<Loaded, ConfigError> {
    parse(text, None, env)
}

pub(crate) fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

pub(crate) fn parse(text: &str, origin: Option<&Path>, env: &Env) -> Result<Loaded, ConfigError> {
    let invalid = |problems| ConfigError::Invalid {
        path: origin.map(Path::to_path_buf),
        problems,
    };
    let not_yaml = |e: serde_norway::Error| ConfigError::Parse {
        path: origin.map(Path::to_path_buf),
        message: e.to_string(),
    };
    let mut root: Value = serde_norway::from_str(text).map_err(not_yaml)?;
    root.apply_merge().map_err(not_yaml)?;
    let mut ctx = Ctx::default();
    leftover_merge_keys(&root, &KeyPath::default(), &mut ctx);
    if !ctx.problems.is_empty() {
        return Err(invalid(ctx.problems));
    }
    let mut map = match untag(root) {
        Value::Null => Mapping::new(),
        Value::Mapping(m) => m,
        other => {
            ctx.problem(
                &KeyPath::default(),
                format!(
                    "the file holds {}, expected a mapping of sections (APP_ENV, ORCHESTRATORM8, Database, ...)",
                    show(&other, false)
                ),
            );
            return Err(invalid(ctx.problems));
        }
    };
    apply_overrides(&mut map, env, &mut ctx);
    let mut root = Value::Mapping(map);
    expand_tree(&mut root, &KeyPath::default(), env, &mut ctx);
    let settings = extract::settings(&mut ctx, root);
    validate::check(&mut ctx, &settings);
    if ctx.problems.is_empty() {
        Ok(Loaded {
            settings,
            warnings: ctx.warnings,
        })
    } else {
        Err(invalid(ctx.problems))
    }
}

/// Reports every `<<` key that merging left in place: a merge key inside a merged
/// mapping (`<<: {<<: x}`, `<<: [{<<: x}]`) is copied in as a plain key by serde_norway
/// rather than merged. Accepting it would make a service or queue argument named `<<`,
/// which no file can express (printing it gives a merge key again, so `config check`
/// output would not load back).
fn leftover_merge_keys(value: &Value, path: &KeyPath, ctx: &mut Ctx) {
    match value {
        Value::Mapping(m) => {
            for (k, v) in m {
                let text = key_text(k).unwrap_or_default();
                let child = path.key(&text);
                if matches!(k, Value::String(s) if s == "<<") {
                    ctx.problem(
                        &child,
                        "a merge key (<<) inside merged content is not supported: write the merged keys out, or merge the anchor directly",
                    );
                } else {
                    leftover_merge_keys(v, &child, ctx);
                }
            }
        }
        Value::Sequence(items) => {
            for (i, v) in items.iter().enumerate() {
                leftover_merge_keys(v, &path.index(i), ctx);
            }
        }
        Value::Tagged(t) => leftover_merge_keys(&t.value, path, ctx),
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {}
    }
}
