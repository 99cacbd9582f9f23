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
use super::limits::{self, KeyedLimiter, RequestDeadline, rate_limit};
use super::problem::ApiError;
use super::{finish, health};
use crate::auth::{Caller, Guard, require_admin, require_bearer};
use crate::config::HttpLimits;
use crate::event::{EventId, NewEvent};
use crate::intake::{Intake, IntakeRequest};
use crate::notify::ProcessorNotifier;
use crate::store::{EnqueueOutcome, EventStatus, IdempotencyKey};

/// Set on a `202` that answers a retry or a duplicate with the stored event.
pub const REPLAYED: &str = "idempotent-replayed";
use crate::trace_context::TraceContext;

pub const SERVICE: &str = "ingest-service";
const IDEMPOTENCY_KEY: &str = "idempotency-key";

#[derive(Clone)]
pub struct IngestState {
    pub intake: Arc<Intake>,
    pub notifier: ProcessorNotifier,
    pub outcomes: super::stream::OutcomeFeed,
}

/// Who may call and how much: API keys, a rate limit per key, HTTP bounds.
pub struct IngestGuards {
    pub guard: Arc<Guard>,
    pub limiter: Arc<KeyedLimiter>,
    pub limits: HttpLimits,
}

pub fn router(state: IngestState, guards: IngestGuards) -> Router {
    let timeout = guards.limits.request_timeout;
    // Route layers run last-added first: authenticate, then count against the key.
    let protected = limits::timed(
        Router::new()
            .route("/events/stream", get(super::stream::outcomes))
            .route("/events/{event_id}", get(event_status))
            .route(
                "/patients/{patient_id}/events",
                get(super::patients::timeline),
            ),
        timeout,
    )
    // Stores an event: it keeps its own time limit (see `limits`).
    .route("/events", post(accept_event))
    .route_layer(middleware::from_fn_with_state(guards.limiter, rate_limit))
    .route_layer(middleware::from_fn_with_state(
        Arc::clone(&guards.guard),
        require_bearer,
    ));
    // Operators: authenticated, then refused unless the key is an operator's.
    let admin = Router::new()
        .route("/admin/events", get(super::admin::list_events))
        .route("/admin/events/{event_id}/retry", post(super::admin::retry))
        .route("/admin/events/{event_id}/skip", post(super::admin::skip))
        .route(
            "/admin/events/{event_id}/acknowledge",
            post(super::admin::acknowledge),
        )
        .route("/admin/stats", get(super::admin::stats))
        .route("/admin/audit", get(super::admin::audit));
    let admin = limits::timed(admin, timeout)
        .route_layer(middleware::from_fn(require_admin))
        .route_layer(middleware::from_fn_with_state(guards.guard, require_bearer));
    let public = limits::timed(
        Router::new()
            .route("/health", get(|| async { health::live(SERVICE) }))
            .route("/openapi.json", get(super::openapi::ingest_document))
            .route(
                "/ready",
                get(|State(state): State<IngestState>| async move {
                    health::ready(state.intake.store(), SERVICE).await
                }),
            ),
        timeout,
    );
    finish(
        protected.merge(admin).merge(public).with_state(state),
        guards.limits,
    )
}

/// Accept one clinical event: stored durably, with the patient's next
/// sequence number, before the 202.
#[utoipa::path(post, path = "/events", tag = "events",
    request_body(content = super::openapi::EventBody, content_type = "application/json"),
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "1-255 visible ASCII characters; a retry with the same key and payload (from the same client, within IDEMPOTENCY_TTL_HOURS) returns the same event. Without one, the same body from the same client within DEDUP_WINDOW_S is the same event"),
        ("traceparent" = Option<String>, Header, description = "W3C trace context"),
    ),
    responses(
        (status = 202, description = "Stored (or, for a retry or a duplicate, stored before: the first eventId); processing follows", body = super::openapi::Queued,
            headers(
                ("Location" = String, description = "/events/{eventId}"),
                ("Idempotent-Replayed" = String, description = "`true` when this answers a retry (same Idempotency-Key and payload) or a duplicate (same body within DEDUP_WINDOW_S) with the event stored first; absent otherwise"),
            )),
        (status = 400, description = "Malformed JSON, wrong types, unknown fields or a broken rule; errors names each field", body = super::openapi::Problem,
            content_type = "application/problem+json"),
        (status = 401, description = "No or invalid API key", body = super::openapi::Problem,
            content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "Bearer"))),
        super::openapi::JsonBodyRefusals,
        (status = 422, description = "Idempotency-Key already used with a different payload", body = super::openapi::Problem,
            content_type = "application/problem+json"),
        (status = 429, description = "Rate limit of this API key exhausted", body = super::openapi::Problem,
            content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 503, description = "Store unavailable, service at capacity or request too slow: nothing stored (type about:blank). Or the database did not confirm the insert (type /problems/outcome-unknown, with eventId): retry with the same Idempotency-Key, or the same body, and it is stored at most once", body = super::openapi::Unavailable,
            content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    security(("bearer" = [])))]
pub(crate) async fn accept_event(
    State(state): State<IngestState>,
    Extension(trace): Extension<TraceContext>,
    Extension(caller): Extension<Caller>,
    Extension(RequestDeadline(deadline)): Extension<RequestDeadline>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let key = headers
        .get(IDEMPOTENCY_KEY)
        .map(|raw| IdempotencyKey::parse(raw.as_bytes()))
        .transpose()
        .map_err(|reason| ApiError::field("Idempotency-Key", reason))?;
    let event = NewEvent::parse(&body).map_err(ApiError::Validation)?;
    let request = IntakeRequest {
        event,
        event_id: EventId::new_time_ordered(),
        client: Arc::clone(&caller.client),
        key,
        deduplicate: true,
        traceparent: Some(trace.header_value()),
        size_hint: body_size(&headers),
    };
    let (outcome, request) = state.intake.submit(request, Some(deadline)).await?;
    let event = request.event;
    let patient = crate::privacy::patient(event.patient_id.as_str());
    let (event_id, replayed) = match outcome {
        EnqueueOutcome::Accepted { event_id, seq } => {
            info!(eventId = %event_id, %patient, seq, client = &*caller.client, "event accepted");
            metrics::counter!("events_accepted_total").increment(1);
            state.notifier.notify(event_id, &event, &trace);
            (event_id.to_string(), false)
        }
        EnqueueOutcome::Replayed { event_id } => {
            info!(eventId = %event_id, %patient, client = &*caller.client, "retry or duplicate answered with the stored event");
            metrics::counter!("events_replayed_total").increment(1);
            (event_id, true)
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
    let mut response = (
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(json!({ "status": "queued", "eventId": event_id })),
    )
        .into_response();
    if replayed {
        response
            .headers_mut()
            .insert(REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// The request body's declared size (for batching writes; 1 KiB if unknown).
fn body_size(headers: &HeaderMap) -> usize {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

/// Where an accepted event is in its life.
#[utoipa::path(get, path = "/events/{eventId}", tag = "events",
    params(("eventId" = String, Path, description = "The id returned by POST /events")),
    responses(
        (status = 200, description = "The event's state (never its data): an event the caller's client sent, or any event for an operator key (ADMIN_API_KEYS)", body = super::openapi::EventState),
        (status = 400, description = "eventId is not a UUID", body = super::openapi::Problem,
            content_type = "application/problem+json"),
        (status = 401, description = "No or invalid API key", body = super::openapi::Problem,
            content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 404, description = "No such event, or another client's event: answered alike, so a client learns nothing about others' events", body = super::openapi::Problem,
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
    Extension(caller): Extension<Caller>,
    Path(raw_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let event_id =
        EventId::parse_str(&raw_id).map_err(|reason| ApiError::field("eventId", reason))?;
    let not_found = || ApiError::NotFound(format!("no event with id {event_id}"));
    let event = state
        .intake
        .store()
        .find_event(&event_id.to_string())
        .await?
        .ok_or_else(not_found)?;
    // Another client's event does not exist, as far as this caller can tell.
    if caller.scope().is_some_and(|client| client != event.client) {
        return Err(not_found());
    }
    Ok(Json(event_view(&event)))
}

/// An event as the API shows it (never its `data`).
pub(crate) fn event_view(event: &crate::store::QueuedEvent) -> Value {
    let mut body = json!({
        "eventId": event.event_id,
        "patientId": event.patient_id,
        "type": event.event_type,
        "ts": event.ts,
        "seq": event.seq,
        "client": event.client,
        "status": event.api_status(),
        "attempts": event.attempts,
        "acceptedAt": rfc3339(event.accepted_at),
        "updatedAt": rfc3339(event.updated_at),
    });
    if let Some(error) = &event.last_error {
        body["lastError"] = json!(error);
    }
    if event.status != EventStatus::Queued
        && let (Some(result), Some(at)) = (&event.result, event.processed_at)
    {
        body["result"] = json!(result);
        body["processedAt"] = json!(rfc3339(at));
        body["processingDurationMs"] = json!(event.processing_duration_ms.unwrap_or(0));
    }
    body
}

fn rfc3339(at: DateTime) -> String {
    at.try_to_rfc3339_string().unwrap_or_default()
}
