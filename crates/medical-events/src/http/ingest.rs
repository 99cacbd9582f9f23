//! Ingest's API: `POST /events`, `GET /events/{eventId}`, `/health`, `/ready`.

use std::sync::Arc;

use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router, middleware};
use mongodb::bson::DateTime;
use serde_json::{Value, json};
use tracing::{error, info};

use super::json_body::JsonBody;
use super::limits::{KeyedLimiter, rate_limit};
use super::problem::ApiError;
use super::{finish, health};
use crate::auth::{Guard, require_bearer};
use crate::config::HttpLimits;
use crate::event::{EventId, NewEvent};
use crate::intake::Intake;
use crate::notify::ProcessorNotifier;
use crate::store::{EnqueueOutcome, EventStatus, IdempotencyKey, Submission};
use crate::trace_context::TraceContext;

pub const SERVICE: &str = "ingest-service";
const IDEMPOTENCY_KEY: &str = "idempotency-key";

#[derive(Clone)]
pub struct IngestState {
    pub intake: Arc<Intake>,
    pub notifier: ProcessorNotifier,
}

/// Who may call and how much: API keys, a rate limit per key, HTTP bounds.
pub struct IngestGuards {
    pub guard: Arc<Guard>,
    pub limiter: Arc<KeyedLimiter>,
    pub limits: HttpLimits,
}

pub fn router(state: IngestState, guards: IngestGuards) -> Router {
    // Route layers run last-added first: authenticate, then count against the key.
    let protected = Router::new()
        .route("/events", post(accept_event))
        .route("/events/{event_id}", get(event_status))
        .route_layer(middleware::from_fn_with_state(guards.limiter, rate_limit))
        .route_layer(middleware::from_fn_with_state(guards.guard, require_bearer));
    finish(
        protected
            .route("/health", get(|| async { health::live(SERVICE) }))
            .route("/openapi.json", get(super::openapi::ingest_document))
            .route(
                "/ready",
                get(|State(state): State<IngestState>| async move {
                    health::ready(state.intake.store(), SERVICE).await
                }),
            )
            .with_state(state),
        guards.limits,
    )
}

/// Accept one clinical event: stored durably, with the patient's next
/// sequence number, before the 202.
#[utoipa::path(post, path = "/events", tag = "events",
    request_body(content = super::openapi::EventBody, content_type = "application/json"),
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "1-255 visible ASCII characters; a retry with the same key and payload returns the same event"),
        ("traceparent" = Option<String>, Header, description = "W3C trace context"),
    ),
    responses(
        (status = 202, description = "Stored; processing follows", body = super::openapi::Queued,
            headers(("Location" = String, description = "/events/{eventId}"))),
        (status = 400, description = "Malformed JSON, wrong types, unknown fields or a broken rule; errors names each field", body = super::openapi::Problem,
            content_type = "application/problem+json"),
        (status = 401, description = "No or invalid API key", body = super::openapi::Problem,
            content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 413, description = "Body over 1 MiB", body = super::openapi::Problem,
            content_type = "application/problem+json"),
        (status = 415, description = "Content-Type is not application/json", body = super::openapi::Problem,
            content_type = "application/problem+json"),
        (status = 422, description = "Idempotency-Key already used with a different payload", body = super::openapi::Problem,
            content_type = "application/problem+json"),
        (status = 429, description = "Rate limit of this API key exhausted", body = super::openapi::Problem,
            content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 503, description = "Store unavailable, service at capacity or request too slow; nothing stored", body = super::openapi::Problem,
            content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    security(("bearer" = [])))]
pub(crate) async fn accept_event(
    State(state): State<IngestState>,
    Extension(trace): Extension<TraceContext>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let key = headers
        .get(IDEMPOTENCY_KEY)
        .map(|raw| IdempotencyKey::parse(raw.as_bytes()))
        .transpose()
        .map_err(|reason| ApiError::field("Idempotency-Key", reason))?;
    let event = NewEvent::parse(&body).map_err(ApiError::Validation)?;
    let traceparent = trace.header_value();
    let submission = Submission {
        event: &event,
        event_id: EventId::new_random(),
        key: key.as_ref(),
        traceparent: Some(&traceparent),
    };
    let outcome = state.intake.submit(&submission).await?;
    let event_id = match outcome {
        EnqueueOutcome::Accepted { event_id, seq } => {
            info!(eventId = %event_id, patientId = event.patient_id.as_str(), seq, "event accepted");
            metrics::counter!("events_accepted_total").increment(1);
            state.notifier.notify(event_id, &event, &trace);
            event_id.to_string()
        }
        EnqueueOutcome::Replayed { event_id } => {
            info!(eventId = %event_id, patientId = event.patient_id.as_str(), "idempotent retry answered");
            metrics::counter!("events_replayed_total").increment(1);
            event_id
        }
        EnqueueOutcome::KeyReused => {
            return Err(ApiError::Unprocessable(
                "this Idempotency-Key was already used with a different payload".to_owned(),
            ));
        }
        EnqueueOutcome::AlreadyStored => {
            error!("a freshly generated eventId already exists");
            return Err(ApiError::Internal);
        }
    };
    let location =
        HeaderValue::from_str(&format!("/events/{event_id}")).map_err(|_| ApiError::Internal)?;
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(json!({ "status": "queued", "eventId": event_id })),
    )
        .into_response())
}

/// Where an accepted event is in its life.
#[utoipa::path(get, path = "/events/{eventId}", tag = "events",
    params(("eventId" = String, Path, description = "The id returned by POST /events")),
    responses(
        (status = 200, description = "The event's state", body = super::openapi::EventState),
        (status = 400, description = "eventId is not a UUID", body = super::openapi::Problem,
            content_type = "application/problem+json"),
        (status = 401, description = "No or invalid API key", body = super::openapi::Problem,
            content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 404, description = "No such event", body = super::openapi::Problem,
            content_type = "application/problem+json"),
        (status = 429, description = "Rate limit of this API key exhausted", body = super::openapi::Problem,
            content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 503, description = "Store unavailable or service at capacity", body = super::openapi::Problem,
            content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    security(("bearer" = [])))]
pub(crate) async fn event_status(
    State(state): State<IngestState>,
    Path(raw_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let event_id =
        EventId::parse_str(&raw_id).map_err(|reason| ApiError::field("eventId", reason))?;
    let store = state.intake.store();
    let event = store
        .find_event(&event_id.to_string())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no event with id {event_id}")))?;
    let mut body = json!({
        "eventId": event.event_id,
        "patientId": event.patient_id,
        "type": event.event_type,
        "ts": event.ts,
        "seq": event.seq,
        "status": event.status.as_str(),
        "attempts": event.attempts,
        "acceptedAt": rfc3339(event.accepted_at),
        "updatedAt": rfc3339(event.updated_at),
    });
    if let Some(error) = &event.last_error {
        body["lastError"] = json!(error);
    }
    if matches!(event.status, EventStatus::Processed | EventStatus::Failed)
        && let Some(outcome) = store.find_processed(&event.event_id).await?
    {
        body["result"] = json!(outcome.result);
        body["processedAt"] = json!(rfc3339(outcome.processed_at));
        body["processingDurationMs"] = json!(outcome.processing_duration_ms);
    }
    Ok(Json(body))
}

fn rfc3339(at: DateTime) -> String {
    at.try_to_rfc3339_string().unwrap_or_default()
}
