//! A JSON body extractor whose every rejection is an [`ApiError`], so clients
//! get problem+json for bad media types, oversized and malformed bodies too.
//! On a route that bounds itself ([`RequestDeadline`]) the body must arrive
//! before the request's deadline.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde_json::Value;

use super::limits::RequestDeadline;
use super::problem::ApiError;

/// Largest accepted request body.
pub const BODY_LIMIT_BYTES: usize = 1024 * 1024;

pub struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers().get(header::CONTENT_TYPE)) {
            return Err(ApiError::UnsupportedMediaType);
        }
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
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::MalformedJson(e.to_string()))
    }
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
