//! The operator console at `/`: one server-rendered page, a style sheet and a plain
//! script, compiled into the binary (`assets/`). The page never loads anything from
//! another host and the script uses only the public API (docs/HTTP.md, "Console").
//!
//! Without JavaScript the page is still readable: when the API is open (no token
//! configured) the first page of workflows (with the filters of the query string, and
//! a link to the next page) is rendered on the server; when a token is configured the
//! server renders no workflow (the page is open, the data is not) and says that the
//! list needs the script and the token. Every text from the database (domain names,
//! stage names, details) is escaped ([`escape`]); the script sets text with
//! `textContent` only.

use model8::WorkflowView;
use warp::Reply;
use warp::http::header;
use warp::reply::Response;

use super::error::ApiError;
use super::state::{HttpState, api_is_open};
use super::workflows::{encode_cursor, list_page, parse_filter};

const SCRIPT: &str = include_str!("assets/console.js");
const STYLE: &str = include_str!("assets/console.css");
const PAGE: &str = include_str!("assets/console.html");

/// Escapes text for HTML element content and quoted attribute values.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// 200 with `body` of `content_type`, not cached.
fn text(body: String, content_type: &'static str) -> Response {
    let res = warp::reply::with_header(body, header::CONTENT_TYPE, content_type);
    warp::reply::with_header(res, header::CACHE_CONTROL, "no-cache").into_response()
}

/// `GET /console.js`.
pub(crate) fn script() -> Response {
    text(SCRIPT.to_owned(), "text/javascript; charset=utf-8")
}

/// `GET /console.css`.
pub(crate) fn style() -> Response {
    text(STYLE.to_owned(), "text/css; charset=utf-8")
}

/// One stage as the list shows it: `name status ×attempt (window opens T)`, as the
/// script renders it.
fn stage_summary(v: &WorkflowView) -> String {
    v.stages
        .iter()
        .map(|s| {
            let attempt = if s.attempt > 1 {
                format!(" ×{}", s.attempt)
            } else {
                String::new()
            };
            let window = s
                .waiting_for_window_until
                .as_ref()
                .map(|t| format!(" (window opens {})", escape(&t.to_string())))
                .unwrap_or_default();
            format!(
                "<span class=\"stage s-{}\">{} {}{attempt}{window}</span>",
                s.status,
                escape(&s.name),
                s.status,
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn rows(views: &[WorkflowView]) -> String {
    let mut out = String::new();
    for v in views {
        out.push_str(&format!(
            "<tr data-id=\"{id}\"><td class=\"id\">{id}</td><td>{kind}</td>\
             <td class=\"st-{status}\">{status}</td><td>{domains}</td><td>{created}</td>\
             <td>{updated}</td><td>{stages}</td><td class=\"actions\"></td></tr>\n",
            id = v.id,
            kind = v.kind,
            status = v.status,
            domains = escape(&v.domains.join(", ")),
            created = v.created_at,
            updated = v.updated_at,
            stages = stage_summary(v),
        ));
    }
    out
}

/// The query string of the next page: the filters of `query` and `cursor`.
fn next_href(query: &[(String, String)], cursor: &str) -> String {
    let mut parts: Vec<String> = query
        .iter()
        .filter(|(k, _)| k != "cursor")
        .map(|(k, v)| format!("{}={}", url_encode(k), url_encode(v)))
        .collect();
    parts.push(format!("cursor={cursor}"));
    format!("/?{}", parts.join("&"))
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET /[?filters]`: the console page.
pub(crate) async fn page(state: &HttpState, query: &[(String, String)]) -> Response {
    let open = api_is_open(&state.settings.borrow());
    let (body, pager, notice) = if open {
        match async {
            let filter = parse_filter(query)?;
            list_page(state, filter).await
        }
        .await
        {
            Ok((views, next)) => {
                let pager = next
                    .map(|c| {
                        format!(
                            "<a id=\"next-static\" href=\"{}\">Next page</a>",
                            escape(&next_href(query, &encode_cursor(&c)))
                        )
                    })
                    .unwrap_or_default();
                let notice = if views.is_empty() {
                    "<p class=\"notice\">No workflow matches.</p>".to_owned()
                } else {
                    String::new()
                };
                (rows(&views), pager, notice)
            }
            Err(e) => return page_error(e),
        }
    } else {
        (
            String::new(),
            String::new(),
            "<p class=\"notice\" id=\"token-notice\">The API requires a token: the list is \
             loaded by this page's script once you enter it (JavaScript is needed).</p>"
                .to_owned(),
        )
    };
    let html = PAGE
        .replace("{{open}}", if open { "true" } else { "false" })
        .replace("{{rows}}", &body)
        .replace("{{pager}}", &pager)
        .replace("{{notice}}", &notice);
    text(html, "text/html; charset=utf-8")
}

/// A bad filter on the page: the API's error, as a small page.
fn page_error(e: ApiError) -> Response {
    let status = e.status;
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>orchestratorm8</title>\
         <link rel=\"stylesheet\" href=\"/console.css\"></head><body><p class=\"error\">{}</p>\
         <p><a href=\"/\">Back to the console</a></p></body></html>",
        escape(&e.message)
    );
    let mut res = text(html, "text/html; charset=utf-8");
    *res.status_mut() = status;
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape(r#"<script>alert(1)</script>"><img src=x onerror='y'>&"#),
            "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&gt;&lt;img src=x onerror=&#39;y&#39;&gt;&amp;"
        );
        assert_eq!(url_encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }

    /// The page without JavaScript says what the script says: attempts, and when a
    /// stage waiting for its scan window may start.
    #[test]
    fn the_static_list_shows_attempts_and_the_window_wait() {
        let view: WorkflowView = serde_json::from_value(serde_json::json!({
            "id": "6f1c1d1e-0000-4000-8000-000000000001",
            "kind": "managed",
            "status": "running",
            "created_at": "2026-12-02T10:00:00Z",
            "updated_at": "2026-12-02T10:00:00Z",
            "domains": ["a.example"],
            "stages": [
                {"name": "asmm8", "status": "completed", "attempt": 2, "started_at": null,
                 "finished_at": null, "detail": null},
                {"name": "naabum8", "status": "pending", "attempt": 0, "started_at": null,
                 "finished_at": null, "detail": null,
                 "waiting_for_window_until": "2026-12-02T22:00:00Z"}
            ]
        }))
        .unwrap();
        let html = stage_summary(&view);
        assert!(html.contains(">asmm8 completed ×2</span>"), "{html}");
        assert!(
            html.contains(">naabum8 pending (window opens 2026-12-02T22:00:00Z)</span>"),
            "{html}"
        );
    }
}
