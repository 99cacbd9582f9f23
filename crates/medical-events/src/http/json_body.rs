//! A JSON body extractor whose every rejection is an [`ApiError`], so clients
//! get problem+json for bad media types, oversized and malformed bodies too
//! (a key given twice in one object is malformed here: `json_value.rs`).
//! On a route that bounds itself ([`RequestDeadline`]) the body must arrive
//! before the request's deadline.
//!
//! Memory per request is bounded two ways. A body holds at most
//! [`MAX_JSON_VALUES`] values, counted on the raw bytes before parsing: a
//! 1 MiB body of `0,` is half a million values, each a parsed value and then
//! a BSON value, some 70 MB. And the bodies being read, parsed and stored at
//! once share a budget of [`BODY_BUDGET_KIB`]: a body waits for its share
//! (up to [`BUDGET_WAIT`]), then is refused with `503`.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde_json::Value;
use tokio::sync::{Semaphore, SemaphorePermit};

use super::limits::RequestDeadline;
use super::problem::ApiError;

/// Largest accepted request body.
pub const BODY_LIMIT_BYTES: usize = 1024 * 1024;

/// Most JSON values (scalars, arrays, objects) a body may hold.
pub const MAX_JSON_VALUES: usize = 100_000;
/// Body bytes, in KiB, read, parsed and stored at once by this process.
pub const BODY_BUDGET_KIB: usize = 8 * 1024;
/// How long a body waits for its share of the budget.
pub const BUDGET_WAIT: Duration = Duration::from_secs(5);

static BODY_BUDGET: Semaphore = Semaphore::const_new(BODY_BUDGET_KIB);

/// The parsed body, and its share of the body budget: keep it until what
/// the body became is stored.
pub struct JsonBody(pub Value, pub BodyShare);

/// A body's share of [`BODY_BUDGET_KIB`], given back on drop.
pub struct BodyShare(#[allow(dead_code)] SemaphorePermit<'static>);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers().get(header::CONTENT_TYPE)) {
            return Err(ApiError::UnsupportedMediaType);
        }
        // Without a length (chunked), the largest share.
        let kib = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .map_or(BODY_LIMIT_BYTES, |len| len.min(BODY_LIMIT_BYTES))
            .div_ceil(1024)
            .max(1);
        let share = tokio::time::timeout(BUDGET_WAIT, BODY_BUDGET.acquire_many(kib as u32))
            .await
            .ok()
            .and_then(Result::ok)
            .map(BodyShare)
            .ok_or(ApiError::Overloaded {
                retry_after_secs: 1,
            })?;
        let deadline = req.extensions().get::<RequestDeadline>().copied();
        let read = Bytes::from_request(req, state);
        let read = match deadline {
            Some(RequestDeadline(deadline)) => tokio::time::timeout_at(deadline.into(), read)
                .await
                .map_err(|_| ApiError::TimedOut)?,
            None => read.await,
        };
        let bytes = read.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge {
                    limit_bytes: BODY_LIMIT_BYTES,
                }
            } else {
                ApiError::MalformedJson(rejection.body_text())
            }
        })?;
        if json_values(&bytes) > MAX_JSON_VALUES {
            return Err(ApiError::TooManyValues {
                limit: MAX_JSON_VALUES,
            });
        }
        super::json_value::from_slice(&bytes)
            .map(|value| JsonBody(value, share))
            .map_err(|e| ApiError::MalformedJson(e.to_string()))
    }
}

/// About how many JSON values `bytes` holds (at least as many as it does):
/// one per array or object opened, one per separating comma, one more;
/// whatever is inside a string does not count.
fn json_values(bytes: &[u8]) -> usize {
    let mut count = 1;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b'[' | b'{' | b',' => count += 1,
                _ => {}
            }
        }
    }
    count
}

fn is_json(content_type: Option<&header::HeaderValue>) -> bool {
    let Some(essence) = content_type
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(|value| value.trim().to_ascii_lowercase())
    else {
        return false;
    };
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::json_values;

    #[test]
    fn values_are_counted_outside_strings_only() {
        assert_eq!(json_values(br#"{"a":1,"b":[0,0,0]}"#), 6);
        assert_eq!(json_values(br#"{"a":"x,[{\",y"}"#), 2);
        assert_eq!(json_values(b"0"), 1);
        let zeros = "0,".repeat(10) + "0";
        assert_eq!(json_values(format!("[{zeros}]").as_bytes()), 12);
    }
}
