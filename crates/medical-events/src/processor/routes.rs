//! Processor's API, every route with its documentation registered in one
//! place: `POST /queue` (store if new, wake the patient's lane, answer 202
//! at once), `/health`, `/ready`, `/openapi.json`.

use std::sync::Arc;

use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode};
use axum::{Json, Router, middleware};
use serde::Serialize;
use tracing::info;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::processing::Routed;
use super::scheduler::Scheduler;
use crate::auth::{Caller, Guard, require_bearer};
use crate::event::QueuedEventRequest;
use crate::http::finish;
use crate::http::health::{self, Health, Ready};
use crate::http::json_body::JsonBody;
use crate::http::limits::{self, HttpLimits, RequestDeadline};
use crate::http::openapi::ProcessorApi;
use crate::http::problem::{ApiError, JsonBodyRefusals, Problem};
use crate::intake::{Intake, IntakeRequest};
use crate::store::EnqueueOutcome;
use crate::trace_context::TraceContext;

pub const SERVICE: &str = "processor-service";

#[derive(Clone)]
pub struct ProcessorState {
    pub intake: Arc<Intake>,
    pub scheduler: Scheduler<Routed>,
}

/// `POST /queue` (it may store an event, so it keeps its own time limit:
/// see `limits`), and the public routes under the request timer.
fn routes() -> (OpenApiRouter<ProcessorState>, OpenApiRouter<ProcessorState>) {
    (
        OpenApiRouter::new().routes(routes!(queue_event)),
        OpenApiRouter::new()
            .routes(routes!(live))
            .routes(routes!(ready)),
    )
}

/// The processor's OpenAPI document (served at `/openapi.json`, printed by
/// `processor openapi`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (queue, public) = routes();
    OpenApiRouter::<ProcessorState>::with_openapi(<ProcessorApi as utoipa::OpenApi>::openapi())
        .merge(queue)
        .merge(public)
        .into_openapi()
}

pub fn router(state: ProcessorState, guard: Arc<Guard>, limits: HttpLimits) -> Router {
    let (queue, public) = routes();
    let queue = queue.route_layer(middleware::from_fn_with_state(guard, require_bearer));
    let (router, api) = OpenApiRouter::with_openapi(<ProcessorApi as utoipa::OpenApi>::openapi())
        .merge(queue)
        .merge(limits::timed(public, limits.request_timeout))
        .split_for_parts();
    let document = Arc::new(api);
    let router = router.route(
        "/openapi.json",
        axum::routing::get(move || {
            let document = Arc::clone(&document);
            async move { Json(document.as_ref().clone()) }
        }),
    );
    finish(router.with_state(state), limits)
}

/// What `POST /queue` answers at once.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    #[schema(example = "accepted")]
    status: &'static str,
}

const ACCEPTED: Accepted = Accepted { status: "accepted" };

/// Liveness: the process answers; checks nothing else.
#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, description = "The process is alive", body = Health)))]
async fn live() -> Json<Health> {
    health::live(SERVICE)
}

/// Readiness: MongoDB answers a ping within 2 s. `leases`: the bucket
/// leases this processor holds (0 until it has joined the fleet).
#[utoipa::path(get, path = "/ready", tag = "health",
    responses(
        (status = 200, description = "Ready to take work", body = Ready),
        (status = 503, description = "MongoDB does not answer", body = Problem,
            content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ))]
async fn ready(State(state): State<ProcessorState>) -> Result<Json<Ready>, ApiError> {
    let leases = state.scheduler.ownership().count() as u64;
    health::ready(state.intake.store(), SERVICE, Some(leases)).await
}

/// Wake the processor for an event, storing it first if it is new.
#[utoipa::path(post, path = "/queue", tag = "processing",
    request_body(content = crate::event::schema::QueueBodySchema, content_type = "application/json"),
    params(
        ("traceparent" = Option<String>, Header, description = "W3C trace context"),
        ("Event-Stored" = Option<String>, Header, description = "`true` (sent by ingest): the event is already stored, so the processor only wakes the patient's lane; it stores and compares nothing. Absent: the event is stored first if it is new"),
    ),
    responses(
        (status = 202, description = "Stored (if new); processing follows in the background", body = Accepted,
            headers(("Change-Stream" = String, description = "`open` while this processor's change stream is open (it hears of inserts from the database; ingest then pauses its nudges for inserts), else `closed`"))),
        (status = 400, description = "Malformed JSON, wrong types, unknown fields or a broken rule", body = Problem,
            content_type = "application/problem+json"),
        (status = 401, description = "No or invalid PROCESSOR_TOKEN", body = Problem,
            content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 409, description = "This eventId is stored with a different patientId, type or ts", body = Problem,
            content_type = "application/problem+json"),
        JsonBodyRefusals,
        (status = 503, description = "Store unavailable or too many patients in flight: nothing stored (type about:blank). Or the database did not confirm the insert (type /problems/outcome-unknown, with eventId): posting it again is safe", body = Problem,
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
    JsonBody(body, _share): JsonBody,
) -> Result<
    (
        StatusCode,
        [(&'static str, &'static str); 1],
        Json<Accepted>,
    ),
    ApiError,
> {
    let stream = [(
        crate::http::CHANGE_STREAM_HEADER,
        if state.scheduler.stream_is_live() {
            "open"
        } else {
            "closed"
        },
    )];
    let request = QueuedEventRequest::parse(&body).map_err(ApiError::Validation)?;
    // Ingest's nudge for an event it stored: a wake-up, nothing to store or check.
    match headers
        .get(crate::http::EVENT_STORED_HEADER)
        .map(|v| v.as_bytes())
    {
        Some(b"true") => {
            state.scheduler.nudge(request.event.patient_id.as_str());
            return Ok((StatusCode::ACCEPTED, stream, Json(ACCEPTED)));
        }
        Some(b"changed") => {
            state.scheduler.wake(request.event.patient_id.as_str());
            return Ok((StatusCode::ACCEPTED, stream, Json(ACCEPTED)));
        }
        _ => {}
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
            origin: None,
            bounded_share: false,
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
    Ok((StatusCode::ACCEPTED, stream, Json(ACCEPTED)))
}
