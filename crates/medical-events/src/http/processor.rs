//! Processor's API: `POST /queue` (store if new, wake the patient's lane,
//! answer 202 at once), `/health`, `/ready`.

use std::sync::Arc;

use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router, middleware};
use serde_json::{Value, json};
use tracing::info;

use super::json_body::JsonBody;
use super::limits::RequestDeadline;
use super::problem::ApiError;
use super::{finish, health};
use crate::auth::{Caller, Guard, require_bearer};
use crate::config::HttpLimits;
use crate::event::QueuedEventRequest;
use crate::intake::{Intake, IntakeRequest};
use crate::processing::Handler;
use crate::scheduler::Scheduler;
use crate::store::EnqueueOutcome;
use crate::trace_context::TraceContext;

pub const SERVICE: &str = "processor-service";

#[derive(Clone)]
pub struct ProcessorState {
    pub intake: Arc<Intake>,
    pub scheduler: Scheduler<Handler>,
}

pub fn router(state: ProcessorState, guard: Arc<Guard>, limits: HttpLimits) -> Router {
    // `/queue` may store an event: it keeps its own time limit (see `limits`).
    let queue = Router::new()
        .route("/queue", post(queue_event))
        .route_layer(middleware::from_fn_with_state(guard, require_bearer));
    let public = super::limits::timed(
        Router::new()
            .route("/health", get(|| async { health::live(SERVICE) }))
            .route("/openapi.json", get(super::openapi::processor_document))
            .route(
                "/ready",
                get(|State(state): State<ProcessorState>| async move {
                    let leases = state.scheduler.ownership().count();
                    health::ready_with(state.intake.store(), SERVICE, json!({ "leases": leases }))
                        .await
                }),
            ),
        limits.request_timeout,
    );
    finish(queue.merge(public).with_state(state), limits)
}

/// Wake the processor for an event, storing it first if it is new.
#[utoipa::path(post, path = "/queue", tag = "processing",
    request_body(content = super::openapi::QueueBody, content_type = "application/json"),
    params(
        ("traceparent" = Option<String>, Header, description = "W3C trace context"),
        ("Event-Stored" = Option<String>, Header, description = "`true` (sent by ingest): the event is already stored, so the processor only wakes the patient's lane; it stores and compares nothing. Absent: the event is stored first if it is new"),
    ),
    responses(
        (status = 202, description = "Stored (if new); processing follows in the background", body = super::openapi::Accepted),
        (status = 400, description = "Malformed JSON, wrong types, unknown fields or a broken rule", body = super::openapi::Problem,
            content_type = "application/problem+json"),
        (status = 401, description = "No or invalid PROCESSOR_TOKEN", body = super::openapi::Problem,
            content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 409, description = "This eventId is stored with a different patientId, type or ts", body = super::openapi::Problem,
            content_type = "application/problem+json"),
        super::openapi::JsonBodyRefusals,
        (status = 503, description = "Store unavailable or too many patients in flight: nothing stored (type about:blank). Or the database did not confirm the insert (type /problems/outcome-unknown, with eventId): posting it again is safe", body = super::openapi::Unavailable,
            content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    security(("bearer" = [])))]
pub(crate) async fn queue_event(
    State(state): State<ProcessorState>,
    Extension(trace): Extension<TraceContext>,
    Extension(caller): Extension<Caller>,
    Extension(RequestDeadline(deadline)): Extension<RequestDeadline>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let request = QueuedEventRequest::parse(&body).map_err(ApiError::Validation)?;
    // Ingest's nudge for an event it stored: a wake-up, nothing to store or check.
    if headers
        .get(crate::notify::STORED_HEADER)
        .is_some_and(|v| v.as_bytes() == b"true")
    {
        state.scheduler.wake(request.event.patient_id.as_str());
        return Ok((StatusCode::ACCEPTED, Json(json!({ "status": "accepted" }))));
    }
    let event_id = request.event_id.to_string();
    let event = &request.event;
    let patient = event.patient_id.as_str().to_owned();
    // Lanes live in memory: past the bound, refuse before storing anything.
    // (An event ingest already stored waits for the sweep; none is lost.)
    let owned = state
        .scheduler
        .ownership()
        .get(crate::bucket::of(event.patient_id.as_str()))
        .is_some();
    if owned && !state.scheduler.has_room_for(event.patient_id.as_str()) {
        return Err(ApiError::Overloaded {
            retry_after_secs: 5,
        });
    }
    // The usual case: ingest already stored it and this is only the wake-up.
    if let Some(stored) = state.intake.store().find_event(&event_id).await? {
        if stored.patient_id != event.patient_id.as_str()
            || stored.event_type != event.event_type.as_str()
            || stored.ts != event.ts.as_str()
        {
            return Err(ApiError::Conflict(format!(
                "event {event_id} is already stored with a different patientId, type or ts"
            )));
        }
    } else {
        let submission = IntakeRequest {
            event: request.event,
            event_id: request.event_id,
            client: Arc::clone(&caller.client),
            key: None,
            deduplicate: false,
            traceparent: Some(trace.header_value()),
            size_hint: 1024,
        };
        let (outcome, _) = state.intake.submit(submission, Some(deadline)).await?;
        if let EnqueueOutcome::Accepted { seq, .. } = outcome {
            info!(eventId = %event_id, patient = %crate::privacy::patient(&patient), seq, "event accepted directly");
            metrics::counter!("events_accepted_total").increment(1);
        }
    }
    // The owner of the bucket starts it; if that is another instance, its
    // change stream (or its sweep) tells it.
    state.scheduler.wake(&patient);
    Ok((StatusCode::ACCEPTED, Json(json!({ "status": "accepted" }))))
}
