//! Ingest's API: every route, with its documentation, registered in one
//! place ([`routes`]); `POST /events`, `GET /events/{eventId}`, `/health`,
//! `/ready`, `/openapi.json` here, the rest in their modules.

use std::sync::Arc;

use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router, middleware};
use mongodb::bson::DateTime;
use serde::Serialize;
use tracing::{error, info};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Caller, Guard, require_admin, require_bearer};
use crate::event::{EventId, NewEvent};
use crate::http::finish;
use crate::http::health::{self, Health, Ready};
use crate::http::json_body::JsonBody;
use crate::http::limits::{self, HttpLimits, KeyedLimiter, RequestDeadline, rate_limit};
use crate::http::openapi::IngestApi;
use crate::http::problem::{ApiError, JsonBodyRefusals, Problem};
use crate::ingest::notify::ProcessorNotifier;
use crate::intake::{Intake, IntakeRequest};
use crate::store::{ApiStatus, EnqueueOutcome, EventStatus, IdempotencyKey, ProcessingResult};
use crate::trace_context::TraceContext;

/// Set on a `202` that answers a retry or a duplicate with the stored event.
pub const REPLAYED: &str = "idempotent-replayed";

pub const SERVICE: &str = "ingest-service";
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Cloned for every request (axum's state), so what it holds is shared.
#[derive(Clone)]
pub struct IngestState {
    pub intake: Arc<Intake>,
    pub notifier: ProcessorNotifier,
    pub outcomes: Arc<super::stream::OutcomeFeed>,
}

/// Who may call and how much: API keys, a rate limit per key, HTTP bounds.
pub struct IngestGuards {
    pub guard: Arc<Guard>,
    pub limiter: Arc<KeyedLimiter>,
    pub limits: HttpLimits,
}

/// Every route of ingest with its documentation, by the layers it gets.
struct Routes {
    /// A client's routes under the request timer.
    client: OpenApiRouter<IngestState>,
    /// `POST /events`: stores an event, so it keeps its own time limit (see `limits`).
    intake: OpenApiRouter<IngestState>,
    operator: OpenApiRouter<IngestState>,
    public: OpenApiRouter<IngestState>,
}

fn routes() -> Routes {
    Routes {
        client: OpenApiRouter::new()
            .routes(routes!(super::stream::outcomes))
            .routes(routes!(event_status))
            .routes(routes!(super::patients::timeline)),
        intake: OpenApiRouter::new().routes(routes!(accept_event)),
        operator: OpenApiRouter::new()
            .routes(routes!(super::admin::list_events))
            .routes(routes!(super::admin::messages_by_control_id))
            .routes(routes!(super::admin::retry))
            .routes(routes!(super::admin::skip))
            .routes(routes!(super::admin::acknowledge))
            .routes(routes!(super::admin::stats))
            .routes(routes!(super::admin::audit)),
        public: OpenApiRouter::new()
            .routes(routes!(live))
            .routes(routes!(ready)),
    }
}

/// Ingest's OpenAPI document (served at `/openapi.json`, printed by `ingest openapi`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let routes = routes();
    OpenApiRouter::<IngestState>::with_openapi(<IngestApi as utoipa::OpenApi>::openapi())
        .merge(routes.client)
        .merge(routes.intake)
        .merge(routes.operator)
        .merge(routes.public)
        .into_openapi()
}

pub fn router(state: IngestState, guards: IngestGuards) -> Router {
    let timeout = guards.limits.request_timeout;
    let routes = routes();
    // Route layers run last-added first: authenticate, then count against the key.
    let client = limits::timed(routes.client, timeout)
        .merge(routes.intake)
        .route_layer(middleware::from_fn_with_state(guards.limiter, rate_limit))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&guards.guard),
            require_bearer,
        ));
    // Operators: authenticated, then refused unless the key is an operator's.
    let operator = limits::timed(routes.operator, timeout)
        .route_layer(middleware::from_fn(require_admin))
        .route_layer(middleware::from_fn_with_state(guards.guard, require_bearer));
    let (router, api) = OpenApiRouter::with_openapi(<IngestApi as utoipa::OpenApi>::openapi())
        .merge(client)
        .merge(operator)
        .merge(limits::timed(routes.public, timeout))
        .split_for_parts();
    let document = Arc::new(api);
    let router = router.route(
        "/openapi.json",
        axum::routing::get(move || {
            let document = Arc::clone(&document);
            async move { Json(document.as_ref().clone()) }
        }),
    );
    finish(router.with_state(state), guards.limits)
}

/// What `POST /events` answers with its `202`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Queued {
    #[schema(example = "queued")]
    status: &'static str,
    #[serde(rename = "eventId")]
    #[schema(format = Uuid)]
    event_id: String,
}

/// Accept one clinical event: stored durably, with the patient's next
/// sequence number, before the 202.
#[utoipa::path(post, path = "/events", tag = "events",
    request_body(content = crate::event::schema::EventBodySchema, content_type = "application/json"),
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "1-255 visible ASCII characters; a retry with the same key and payload (from the same client, within IDEMPOTENCY_TTL_HOURS) returns the same event. Without one, the same body from the same client within DEDUP_WINDOW_S is the same event"),
        ("traceparent" = Option<String>, Header, description = "W3C trace context"),
    ),
    responses(
        (status = 202, description = "Stored (or, for a retry or a duplicate, stored before: the first eventId); processing follows", body = Queued,
            headers(
                ("Location" = String, description = "/events/{eventId}"),
                ("Idempotent-Replayed" = String, description = "`true` when this answers a retry (same Idempotency-Key and payload) or a duplicate (same body within DEDUP_WINDOW_S) with the event stored first; absent otherwise"),
            )),
        (status = 400, description = "Malformed JSON, wrong types, unknown fields or a broken rule; errors names each field", body = Problem,
            content_type = "application/problem+json"),
        (status = 401, description = "No or invalid API key", body = Problem,
            content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "Bearer"))),
        JsonBodyRefusals,
        (status = 422, description = "Idempotency-Key already used with a different payload", body = Problem,
            content_type = "application/problem+json"),
        (status = 429, description = "Rate limit of this API key exhausted, MAX_IN_FLIGHT_PER_CLIENT requests of this client in hand, or MAX_UNFINISHED_PER_CLIENT_PATIENT of this client's events for this patient not yet processed: nothing stored", body = Problem,
            content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 503, description = "Store unavailable, service at capacity, or no time left before the write was sent: nothing stored (type about:blank). Or the database did not confirm the insert (type /problems/outcome-unknown, with eventId): retry with the same Idempotency-Key, or the same body, and it is stored at most once", body = Problem,
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
    JsonBody(body, _share): JsonBody,
) -> Result<Response, ApiError> {
    let key = headers
        .get(IDEMPOTENCY_KEY)
        .map(|raw| IdempotencyKey::parse(raw.as_bytes()))
        .transpose()
        .map_err(|reason| ApiError::field("Idempotency-Key", reason))?;
    let event = NewEvent::parse_owned(body).map_err(ApiError::Validation)?;
    let request = IntakeRequest {
        event,
        event_id: EventId::new_time_ordered(),
        client: Arc::clone(&caller.client),
        key,
        deduplicate: true,
        traceparent: Some(trace.header_value()),
        size_hint: body_size(&headers),
        origin: None,
        bounded_share: true,
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
        EnqueueOutcome::OverShare { limit } => {
            info!(%patient, client = &*caller.client, limit, "event refused: the client's share of the patient's unfinished events is full");
            return Err(ApiError::OverShare { limit });
        }
    };
    let location =
        HeaderValue::from_str(&format!("/events/{event_id}")).map_err(|_| ApiError::Internal)?;
    let mut response = (
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(Queued {
            status: "queued",
            event_id,
        }),
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
        (status = 200, description = "The event's state (never its data): an event the caller's client sent, or any event for an operator key (ADMIN_API_KEYS)", body = EventView),
        (status = 400, description = "eventId is not a UUID", body = Problem,
            content_type = "application/problem+json"),
        (status = 401, description = "No or invalid API key", body = Problem,
            content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 404, description = "No such event, or another client's event: answered alike, so a client learns nothing about others' events", body = Problem,
            content_type = "application/problem+json"),
        (status = 429, description = "Rate limit of this API key exhausted", body = Problem,
            content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 503, description = "Store unavailable or service at capacity", body = Problem,
            content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    security(("bearer" = [])))]
pub(crate) async fn event_status(
    State(state): State<IngestState>,
    Extension(caller): Extension<Caller>,
    Path(raw_id): Path<String>,
) -> Result<Json<EventView>, ApiError> {
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
    super::admin::audit_read(
        &state,
        &caller,
        "/events/{eventId}",
        Some(&event.patient_id),
        Some(&event.event_id),
        Default::default(),
    )
    .await?;
    Ok(Json(EventView::for_caller(&event, &caller)))
}

/// An event as the API shows it (never its `data`); `result`, `processedAt`
/// and `processingDurationMs` appear once it has an outcome.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    #[schema(format = Uuid)]
    event_id: String,
    patient_id: String,
    #[serde(rename = "type")]
    event_type: String,
    #[schema(format = DateTime)]
    ts: String,
    /// The event's place in its patient's order, counting every client's
    /// events: shown to operators only.
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<i64>,
    /// The API client whose key sent the event (the name before `:` in
    /// `INGEST_API_KEYS`).
    #[schema(example = "lab-a")]
    client: String,
    status: ApiStatus,
    attempts: i32,
    #[schema(format = DateTime)]
    accepted_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
    /// The last attempt's error: shown to operators only.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<ProcessingResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    processed_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    processing_duration_ms: Option<i64>,
    /// Set for an event that arrived as an HL7 v2 message over MLLP: the
    /// listener and the sender's id of the message.
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<crate::store::EventSource>,
}

impl EventView {
    /// As `caller` may see it: a client sees no position counting other
    /// clients' events (`seq`) and no operator's or system's text.
    pub fn for_caller(event: &crate::store::QueuedEvent, caller: &Caller) -> Self {
        let mut view = Self::of(event);
        if !caller.is_admin() {
            view.seq = None;
            view.last_error = None;
            view.result = view.result.map(|result| result.for_client());
        }
        view
    }

    /// Everything, as an operator sees it.
    pub fn of(event: &crate::store::QueuedEvent) -> Self {
        let outcome = (event.status != EventStatus::Queued)
            .then(|| event.result.clone().zip(event.processed_at))
            .flatten();
        Self {
            event_id: event.event_id.clone(),
            patient_id: event.patient_id.clone(),
            event_type: event.event_type.clone(),
            ts: event.ts.clone(),
            seq: Some(event.seq),
            client: event.client.clone(),
            status: event.api_status(),
            attempts: event.attempts,
            accepted_at: rfc3339(event.accepted_at),
            updated_at: rfc3339(event.updated_at),
            last_error: event.last_error.clone(),
            processing_duration_ms: outcome
                .as_ref()
                .map(|_| event.processing_duration_ms.unwrap_or(0)),
            processed_at: outcome.as_ref().map(|(_, at)| rfc3339(*at)),
            result: outcome.map(|(result, _)| result),
            source: event.source.clone(),
        }
    }
}

/// Liveness: the process answers; checks nothing else.
#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, description = "The process is alive", body = Health)))]
async fn live() -> Json<Health> {
    health::live(SERVICE)
}

/// Readiness: MongoDB answers a ping within 2 s.
#[utoipa::path(get, path = "/ready", tag = "health",
    responses(
        (status = 200, description = "Ready to take work", body = Ready),
        (status = 503, description = "MongoDB does not answer", body = Problem,
            content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ))]
async fn ready(State(state): State<IngestState>) -> Result<Json<Ready>, ApiError> {
    health::ready(state.intake.store(), SERVICE, None).await
}

fn rfc3339(at: DateTime) -> String {
    at.try_to_rfc3339_string().unwrap_or_default()
}
