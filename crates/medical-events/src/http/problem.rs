//! The one error type of both HTTP APIs, rendered as RFC 9457
//! `application/problem+json`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::event::FieldError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request is invalid")]
    Validation(Vec<FieldError>),
    #[error("the body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("the body must be sent as application/json")]
    UnsupportedMediaType,
    #[error("the body is larger than the limit of {limit_bytes} bytes")]
    PayloadTooLarge { limit_bytes: usize },
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("the event store is unavailable; retry later")]
    Unavailable { retry_after_secs: u64 },
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    /// The event may or may not be stored: a retry with the same
    /// Idempotency-Key (or the same body, within the duplicate window) is safe.
    #[error(
        "the database did not confirm whether event {event_id} was stored; retrying with the same \
         Idempotency-Key, or the same body within the duplicate window, stores it at most once"
    )]
    OutcomeUnknown { event_id: String },
    #[error("rate limit exceeded for this API key; retry later")]
    RateLimited { retry_after_secs: u64 },
    #[error("the service is at capacity; retry later")]
    Overloaded { retry_after_secs: u64 },
    #[error("the request took too long and was abandoned; retry later")]
    TimedOut,
    #[error("internal error")]
    Internal,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Validation(_) | Self::MalformedJson(_) => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable { .. }
            | Self::Overloaded { .. }
            | Self::TimedOut
            | Self::OutcomeUnknown { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError::new(field, message)])
    }
}

/// Any store failure is the client's 503: logged here with its cause,
/// shown to the client without it.
impl From<crate::store::StoreError> for ApiError {
    fn from(error: crate::store::StoreError) -> Self {
        tracing::error!(error = %error, "event store unavailable");
        match error {
            crate::store::StoreError::OutcomeUnknown { event_id, .. } => {
                Self::OutcomeUnknown { event_id }
            }
            // Nothing was sent: the request ran out of time before its write.
            crate::store::StoreError::NoTimeLeft { .. } => Self::TimedOut,
            _ => Self::Unavailable {
                retry_after_secs: 5,
            },
        }
    }
}

/// The problem type of an answer whose stored state is unknown.
pub const OUTCOME_UNKNOWN_TYPE: &str = "/problems/outcome-unknown";

impl ApiError {
    /// A short label for the `requests_rejected_total` metric.
    fn reason(&self) -> &'static str {
        match self {
            Self::Validation(_) | Self::MalformedJson(_) => "invalid",
            Self::UnsupportedMediaType => "media_type",
            Self::PayloadTooLarge { .. } => "too_large",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed => "method",
            Self::Conflict(_) => "conflict",
            Self::Unprocessable(_) => "idempotency_key_reused",
            Self::Unavailable { .. } => "store_unavailable",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::OutcomeUnknown { .. } => "outcome_unknown",
            Self::RateLimited { .. } => "rate_limited",
            Self::Overloaded { .. } => "overloaded",
            Self::TimedOut => "timed_out",
            Self::Internal => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        metrics::counter!("requests_rejected_total", "reason" => self.reason()).increment(1);
        let status = self.status();
        let problem_type = match &self {
            Self::OutcomeUnknown { .. } => OUTCOME_UNKNOWN_TYPE,
            _ => "about:blank",
        };
        let mut body = json!({
            "type": problem_type,
            "title": status.canonical_reason().unwrap_or("Error"),
            "status": status.as_u16(),
            "detail": self.to_string(),
        });
        if let Self::Validation(errors) = &self {
            body["errors"] = json!(errors);
        }
        if let Self::OutcomeUnknown { event_id } = &self {
            body["eventId"] = json!(event_id);
        }
        let mut response = (status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match self {
            Self::Unavailable { retry_after_secs }
            | Self::Overloaded { retry_after_secs }
            | Self::RateLimited { retry_after_secs } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            Self::TimedOut | Self::OutcomeUnknown { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(1));
            }
            Self::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

/// Unknown routes answer in the same problem format as everything else.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".to_owned())
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
