//! The one error type of both HTTP APIs, rendered as RFC 9457
//! `application/problem+json`, with the body type the documents describe and
//! the refusals several routes share.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::{IntoResponses, ToSchema};

use crate::event::FieldError;

/// RFC 9457 problem details (`application/problem+json`): the body of every
/// error of both services.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// `about:blank`, or `/problems/outcome-unknown` for a `503` whose write
    /// may or may not have been stored.
    #[serde(rename = "type")]
    #[schema(example = "about:blank")]
    pub problem_type: String,
    #[schema(example = "Bad Request")]
    pub title: String,
    #[schema(example = 400)]
    pub status: u16,
    pub detail: String,
    /// One entry per broken rule (validation errors only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
    /// Only with `/problems/outcome-unknown`: the event that may or may not
    /// be stored. A retry with the same `Idempotency-Key` (or, without one,
    /// the same body within `DEDUP_WINDOW_S`) stores it at most once.
    #[serde(rename = "eventId", skip_serializing_if = "Option::is_none")]
    #[schema(format = Uuid)]
    pub event_id: Option<String>,
}

/// The refusals of every operator route: no credential, or not an operator's.
#[derive(IntoResponses)]
#[allow(dead_code)] // documentation: the refusals are `ApiError`s
pub enum OperatorRefusals {
    /// No or invalid credential
    #[response(status = 401, content_type = "application/problem+json",
        headers(("WWW-Authenticate" = String, description = "Bearer")))]
    Unauthenticated(Problem),
    /// Not an operator credential
    #[response(status = 403, content_type = "application/problem+json")]
    Forbidden(Problem),
}

/// The refusals of a JSON body before it is read (`JsonBody`).
#[derive(IntoResponses)]
#[allow(dead_code)] // documentation: the refusals are `ApiError`s
pub enum JsonBodyRefusals {
    /// Body over 1 MiB
    #[response(status = 413, content_type = "application/problem+json")]
    TooLarge(Problem),
    /// Content-Type is not application/json
    #[response(status = 415, content_type = "application/problem+json")]
    NotJson(Problem),
}

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
    #[error("the body holds more than {limit} JSON values (scalars, arrays and objects)")]
    TooManyValues { limit: usize },
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
    #[error("{limit} outcome streams are open already ({setting}); close one, or retry later")]
    TooManyStreams { setting: &'static str, limit: usize },
    #[error("too many failed authentications from this address; retry later")]
    TooManyFailures { retry_after_secs: u64 },
    #[error(
        "this client already has {limit} requests in progress (MAX_IN_FLIGHT_PER_CLIENT); \
         retry when one has been answered"
    )]
    ClientBusy { limit: usize },
    #[error(
        "this client has {limit} events for this patient not yet processed \
         (MAX_UNFINISHED_PER_CLIENT_PATIENT); nothing was stored: retry once some are processed"
    )]
    OverShare { limit: usize },
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
            Self::PayloadTooLarge { .. } | Self::TooManyValues { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
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
            Self::RateLimited { .. }
            | Self::ClientBusy { .. }
            | Self::OverShare { .. }
            | Self::TooManyFailures { .. }
            | Self::TooManyStreams { .. } => StatusCode::TOO_MANY_REQUESTS,
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
            Self::TooManyValues { .. } => "too_many_values",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed => "method",
            Self::Conflict(_) => "conflict",
            Self::Unprocessable(_) => "idempotency_key_reused",
            Self::Unavailable { .. } => "store_unavailable",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::OutcomeUnknown { .. } => "outcome_unknown",
            Self::RateLimited { .. } => "rate_limited",
            Self::ClientBusy { .. } => "client_busy",
            Self::OverShare { .. } => "over_share",
            Self::TooManyFailures { .. } => "auth_failures",
            Self::TooManyStreams { .. } => "too_many_streams",
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
        let body = Problem {
            problem_type: problem_type.to_owned(),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: self.to_string(),
            errors: match &self {
                Self::Validation(errors) => Some(errors.clone()),
                _ => None,
            },
            event_id: match &self {
                Self::OutcomeUnknown { event_id } => Some(event_id.clone()),
                _ => None,
            },
        };
        let body = serde_json::to_string(&body).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match self {
            Self::Unavailable { retry_after_secs }
            | Self::Overloaded { retry_after_secs }
            | Self::RateLimited { retry_after_secs }
            | Self::TooManyFailures { retry_after_secs } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            Self::TimedOut | Self::OutcomeUnknown { .. } | Self::ClientBusy { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(1));
            }
            Self::TooManyStreams { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(1));
            }
            // About one event's processing: a place frees up when one is done.
            Self::OverShare { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(5));
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
