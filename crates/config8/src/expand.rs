//! `${VAR}` expansion in string values.
//!
//! - `${NAME}`: the variable's value; an unset variable is an error naming it and the key.
//! - `${NAME:-default}`: `default` when the variable is unset or empty.
//! - `$${`: a literal `${`.
//! - A `$` not followed by `{` is kept as it is (`pa$$word` stays `pa$$word`).
//!
//! Names are `[A-Za-z_][A-Za-z0-9_]*`. Defaults are not expanded again.

use serde_norway::Value;

use crate::env::Env;
use crate::tree::{Ctx, KeyPath, key_text};

/// Expands every string value below `value` (mapping keys are left alone).
pub(crate) fn expand_tree(value: &mut Value, path: &KeyPath, env: &Env, ctx: &mut Ctx) {
    match value {
        Value::String(s) if s.contains('$') => match expand(s, env) {
            Ok(out) => *s = out,
            Err(e) => {
                ctx.problem(path, e);
                // Read on as if absent, so the one problem is reported once.
                *value = Value::Null;
            }
        },
        Value::String(_) => {}
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_tree(item, &path.index(i), env, ctx);
            }
        }
        Value::Mapping(m) => {
            for (k, v) in m.iter_mut() {
                let key = key_text(k).unwrap_or_default();
                expand_tree(v, &path.key(&key), env, ctx);
            }
        }
        Value::Tagged(t) => expand_tree(&mut t.value, path, env, ctx),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Expands one string. The error never contains the string itself (it may be a secret).
pub(crate) fn expand(s: &str, env: &Env) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix("${") {
            // `$${` -> literal `${`
            out.push_str("${");
            rest = tail;
        } else if let Some(body_on) = after.strip_prefix('{') {
            let end = body_on.find('}').ok_or_else(|| {
                "unterminated \"${\" (write \"$${\" for a literal \"${\")".to_owned()
            })?;
            let body = &body_on[..end];
            let (name, default) = match body.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (body, None),
            };
            if !valid_name(name) {
                // The text is not shown: it may be part of a secret.
                return Err(
                    "invalid variable reference: a name is letters, digits and _ \
                     (write \"$${\" for a literal \"${\")"
                        .to_owned(),
                );
            }
            match (env.get(name), default) {
                (Some(""), Some(d)) => out.push_str(d),
                (Some(v), _) => out.push_str(v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!("environment variable {name} is not set"));
                }
            }
            rest = &body_on[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn env() -> Env {
        Env::empty()
            .with("HOST", "db.local")
            .with("EMPTY", "")
            .with("PW", "p$a}ss")
    }

    #[test]
    fn expands_variables() {
        assert_eq!(expand("${HOST}", &env()).unwrap(), "db.local");
        assert_eq!(
            expand("http://${HOST}:${PORT:-5432}/x", &env()).unwrap(),
            "http://db.local:5432/x"
        );
        assert_eq!(expand("${EMPTY}", &env()).unwrap(), "");
        assert_eq!(expand("${EMPTY:-dflt}", &env()).unwrap(), "dflt");
        assert_eq!(expand("${UNSET:-}", &env()).unwrap(), "");
        assert_eq!(
            expand("${PW}", &env()).unwrap(),
            "p$a}ss",
            "values are not re-expanded"
        );
    }

    #[test]
    fn escapes_and_plain_dollars() {
        assert_eq!(expand("$${HOST}", &env()).unwrap(), "${HOST}");
        assert_eq!(expand("pa$$word$", &env()).unwrap(), "pa$$word$");
        assert_eq!(expand("$HOST", &env()).unwrap(), "$HOST");
    }

    #[test]
    fn errors_name_the_variable_but_never_the_value() {
        let e = expand("${POSTGRESQL_PASSWORD}", &env()).unwrap_err();
        assert_eq!(e, "environment variable POSTGRESQL_PASSWORD is not set");
        let e = expand("secretpart${", &env()).unwrap_err();
        assert!(
            e.contains("unterminated") && !e.contains("secretpart"),
            "{e}"
        );
        let e = expand("${a b}", &env()).unwrap_err();
        assert!(e.contains("invalid variable reference"), "{e}");
    }

    #[test]
    fn tree_errors_name_the_key() {
        let mut v: Value = serde_norway::from_str(
            "Database:\n  password: \"${POSTGRESQL_PASSWORD}\"\n  list: [\"${HOST}\"]",
        )
        .unwrap();
        let mut ctx = Ctx::default();
        expand_tree(&mut v, &KeyPath::default(), &env(), &mut ctx);
        assert_eq!(v["Database"]["list"][0], Value::from("db.local"));
        assert_eq!(ctx.problems.len(), 1);
        assert_eq!(
            ctx.problems[0].to_string(),
            "Database.password: environment variable POSTGRESQL_PASSWORD is not set"
        );
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,40}") {
            let _ = expand(&s, &env());
        }

        #[test]
        fn text_without_dollar_is_unchanged(s in "[^$]{0,40}") {
            prop_assert_eq!(expand(&s, &env()).unwrap(), s);
        }
    }
}
