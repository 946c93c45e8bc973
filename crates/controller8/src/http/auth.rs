//! Bearer-token check of the workflow API.
//!
//! The token is read from the live settings at every request. The comparison is
//! constant-time in the token's content (`subtle`); only its length can be inferred
//! from timing, which is the usual trade-off and tells an attacker nothing useful
//! about a random token.

use config8::HttpSettings;
use subtle::ConstantTimeEq;
use warp::http::HeaderMap;
use warp::http::header::AUTHORIZATION;

use super::error::ApiError;

/// `Ok` when the API is open (no or empty token configured) or the request carries
/// `Authorization: Bearer <the token>`; 401 otherwise.
pub(crate) fn authorize(settings: &HttpSettings, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = settings.api_token.as_ref().filter(|t| !t.is_empty()) else {
        return Ok(());
    };
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            "missing bearer token (Authorization: Bearer <token>)",
            false,
        ));
    };
    let presented = value
        .to_str()
        .ok()
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim_start())
        })
        .ok_or_else(|| {
            ApiError::unauthorized(
                "malformed Authorization header (expected: Bearer <token>)",
                false,
            )
        })?;
    if bool::from(presented.as_bytes().ct_eq(expected.expose().as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::unauthorized("invalid bearer token", true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use config8::Secret;
    use warp::http::HeaderValue;

    fn settings(token: Option<&str>) -> HttpSettings {
        HttpSettings {
            api_token: token.map(Secret::new),
            body_limit: 1024,
        }
    }

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(AUTHORIZATION, HeaderValue::from_str(a).unwrap());
        }
        h
    }

    #[test]
    fn open_api_accepts_anything() {
        for s in [settings(None), settings(Some(""))] {
            assert!(authorize(&s, &headers(None)).is_ok());
            assert!(authorize(&s, &headers(Some("Bearer whatever"))).is_ok());
        }
    }

    #[test]
    fn token_is_required_and_compared() {
        let s = settings(Some("s3cret-token"));
        assert!(authorize(&s, &headers(Some("Bearer s3cret-token"))).is_ok());
        assert!(authorize(&s, &headers(Some("bearer s3cret-token"))).is_ok());
        for bad in [
            None,
            Some("s3cret-token"),
            Some("Basic s3cret-token"),
            Some("Bearer"),
            Some("Bearer "),
            Some("Bearer s3cret-tokeN"), // same length
            Some("Bearer s3cret-token2"),
            Some("Bearer s3cret"),
        ] {
            let e = authorize(&s, &headers(bad)).unwrap_err();
            assert_eq!(e.status, warp::http::StatusCode::UNAUTHORIZED, "{bad:?}");
            assert!(!e.message.contains("s3cret"), "{bad:?}: {}", e.message);
        }
    }
}
