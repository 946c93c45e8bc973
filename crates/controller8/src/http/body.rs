//! Request bodies: content type, size limit (also for chunked bodies without a
//! `Content-Length`) and JSON decoding with a message naming the problem.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use warp::Buf;
use warp::http::HeaderMap;
use warp::http::header::{CONTENT_LENGTH, CONTENT_TYPE};

use super::error::ApiError;

/// A request body as a stream of chunks.
pub(crate) type BodyStream = Pin<Box<dyn Stream<Item = Result<Vec<u8>, warp::Error>> + Send>>;

/// The body stream of a request, not read yet.
pub(crate) fn body_stream()
-> impl warp::Filter<Extract = (BodyStream,), Error = warp::Rejection> + Clone {
    use warp::Filter;
    warp::body::stream().map(boxed)
}

fn boxed<S, B>(s: S) -> BodyStream
where
    S: Stream<Item = Result<B, warp::Error>> + Send + 'static,
    B: Buf,
{
    Box::pin(s.map(|chunk| {
        chunk.map(|mut b| {
            let mut v = vec![0; b.remaining()];
            b.copy_to_slice(&mut v);
            v
        })
    }))
}

/// Reads a JSON body of at most `limit` bytes. The content type, when given, must be
/// `application/json` (415 otherwise); a declared or actual size over `limit` is 413
/// (a declared one is refused before reading); an empty body decodes as `{}`;
/// malformed JSON or unknown fields are 400 with serde's message.
pub(crate) async fn read_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    mut body: BodyStream,
    limit: u64,
) -> Result<T, ApiError> {
    if let Some(ct) = headers.get(CONTENT_TYPE) {
        let text = ct.to_str().unwrap_or("<not text>");
        let essence = text.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("application/json") {
            return Err(ApiError::unsupported_media_type(text));
        }
    }
    if let Some(len) = headers.get(CONTENT_LENGTH) {
        let len: u64 = len
            .to_str()
            .ok()
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| ApiError::bad_request("invalid Content-Length header"))?;
        if len > limit {
            return Err(ApiError::payload_too_large(limit));
        }
    }
    let mut buf = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            tracing::debug!(error = %e, "cannot read request body");
            ApiError::bad_request("cannot read the request body")
        })?;
        if (buf.len() + chunk.len()) as u64 > limit {
            return Err(ApiError::payload_too_large(limit));
        }
        buf.extend_from_slice(&chunk);
    }
    let bytes: &[u8] = if buf.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &buf
    };
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    // Every body of the API is an object: serde would also read a struct from an
    // array of its fields (`[null]` as `{"domain_ids": null}`, "scan everything").
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "invalid JSON body: expected an object, e.g. {}",
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}
