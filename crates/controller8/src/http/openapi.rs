//! `GET /api/orchestratorm8/openapi.json`: the OpenAPI 3.0 description of every route
//! ([`super::ROUTES`]), written by hand in `assets/openapi.json` and checked against
//! the routes and the serialised views by the tests (`http::tests`, "openapi"): a
//! route, a parameter or a field added without the document fails them.

use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;

/// The document as served.
pub(crate) const DOCUMENT: &str = include_str!("assets/openapi.json");

/// The document, as JSON.
pub(crate) fn response() -> Response {
    let mut res = Response::new(DOCUMENT.into());
    *res.status_mut() = StatusCode::OK;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// A small validator of JSON values against the document's schemas (the subset the
/// document uses: `$ref`, `type`, `nullable`, `enum`, `properties`, `required`,
/// `additionalProperties`, `items`, `minimum`, `format` uuid/date-time), for the
/// tests that check every field the server writes is described.
#[cfg(test)]
pub(crate) mod validate {
    use serde_json::Value;

    /// The errors of `value` against the schema at `pointer` (e.g.
    /// `/components/schemas/Workflow`) of `doc`; empty when it conforms.
    pub(crate) fn check(doc: &Value, pointer: &str, value: &Value) -> Vec<String> {
        let mut errors = Vec::new();
        let schema = doc
            .pointer(pointer)
            .unwrap_or_else(|| panic!("no {pointer}"));
        walk(doc, schema, value, "$", &mut errors);
        errors
    }

    fn walk(doc: &Value, schema: &Value, v: &Value, at: &str, errors: &mut Vec<String>) {
        if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
            let target = doc
                .pointer(r.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("dangling $ref {r}"));
            return walk(doc, target, v, at, errors);
        }
        if v.is_null() {
            if schema.get("nullable") != Some(&Value::Bool(true)) {
                errors.push(format!("{at}: null but not nullable"));
            }
            return;
        }
        if let Some(e) = schema.get("enum").and_then(Value::as_array)
            && !e.contains(v)
        {
            errors.push(format!("{at}: {v} not in {e:?}"));
        }
        let ty = schema.get("type").and_then(Value::as_str);
        let ok = match ty {
            None => true,
            Some("object") => v.is_object(),
            Some("array") => v.is_array(),
            Some("string") => v.is_string(),
            Some("integer") => v.is_i64() || v.is_u64(),
            Some("number") => v.is_number(),
            Some("boolean") => v.is_boolean(),
            Some(other) => panic!("type {other} not supported by the test validator"),
        };
        if !ok {
            errors.push(format!("{at}: {v} is not of type {}", ty.unwrap_or("?")));
            return;
        }
        if let (Some(min), Some(n)) = (schema.get("minimum").and_then(Value::as_i64), v.as_i64())
            && n < min
        {
            errors.push(format!("{at}: {n} < minimum {min}"));
        }
        match (schema.get("format").and_then(Value::as_str), v.as_str()) {
            (Some("uuid"), Some(s)) if uuid::Uuid::parse_str(s).is_err() => {
                errors.push(format!("{at}: {s:?} is not a uuid"))
            }
            (Some("date-time"), Some(s)) if chrono::DateTime::parse_from_rfc3339(s).is_err() => {
                errors.push(format!("{at}: {s:?} is not a date-time"))
            }
            _ => {}
        }
        if let Some(items) = schema.get("items") {
            for (i, item) in v.as_array().into_iter().flatten().enumerate() {
                walk(doc, items, item, &format!("{at}[{i}]"), errors);
            }
        }
        if let Some(obj) = v.as_object() {
            let props = schema.get("properties").and_then(Value::as_object);
            for req in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !obj.contains_key(req) {
                    errors.push(format!("{at}: required field {req:?} missing"));
                }
            }
            for (k, fv) in obj {
                let sub = format!("{at}.{k}");
                match (
                    props.and_then(|p| p.get(k)),
                    schema.get("additionalProperties"),
                ) {
                    (Some(s), _) => walk(doc, s, fv, &sub, errors),
                    (None, Some(Value::Bool(false))) | (None, None) if props.is_some() => {
                        errors.push(format!("{sub}: field not in the schema"))
                    }
                    (None, Some(s)) if s.is_object() => walk(doc, s, fv, &sub, errors),
                    _ => {}
                }
            }
        }
    }
}
