//! The OpenAPI 3.1 documents of both services, generated from these
//! declarations and the handlers' `#[utoipa::path]` attributes, served at
//! `GET /openapi.json` and committed under `docs/openapi/` (a test keeps
//! the committed copies in sync).

use axum::Json;
use serde::Serialize;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};

/// A clinical event as sent to `POST /events`. Besides the limits below:
/// `patientId` and `type` must not be blank or contain control characters;
/// `data` must nest at most 32 levels, have no key starting with `$` or
/// containing NUL, and hold integers within signed 64 bits.
#[derive(serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
pub struct EventBody {
    #[schema(min_length = 1, max_length = 128, example = "patient-123")]
    patient_id: String,
    #[serde(rename = "type")]
    #[schema(min_length = 1, max_length = 64, example = "lab_result")]
    event_type: String,
    #[schema(value_type = Object, example = json!({"test": "glucose", "value": 5.4}))]
    data: serde_json::Value,
    /// RFC 3339 with a timezone; stored as UTC with milliseconds.
    #[schema(format = DateTime, example = "2025-10-01T14:00:00+02:00")]
    ts: String,
}

/// `POST /queue`: an event with the id ingest gave it.
#[derive(serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct QueueBody {
    #[serde(rename = "eventId")]
    #[schema(format = Uuid)]
    event_id: String,
    #[serde(rename = "patientId")]
    #[schema(min_length = 1, max_length = 128)]
    patient_id: String,
    #[serde(rename = "type")]
    #[schema(min_length = 1, max_length = 64)]
    event_type: String,
    #[schema(value_type = Object)]
    data: serde_json::Value,
    #[schema(format = DateTime)]
    ts: String,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct Queued {
    #[schema(example = "queued")]
    status: String,
    #[serde(rename = "eventId")]
    #[schema(format = Uuid)]
    event_id: String,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct Accepted {
    #[schema(example = "accepted")]
    status: String,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct ResultView {
    /// `success` or `failed`.
    status: String,
    message: String,
    error: Option<String>,
}

/// Where an event is in its life: `queued` (waiting for its turn: the
/// patient's earlier events come first), `processing` (an attempt is
/// running), `processed` (`result` says how), `failed` (given up after
/// `MAX_ATTEMPTS`; the patient's later events went on), `parked` (given up
/// with `ON_FAILURE=park`: the patient's later events wait for an
/// operator), `skipped` (set aside by an operator).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
#[serde(rename_all = "lowercase")]
pub enum EventStatus {
    Queued,
    Processing,
    Processed,
    Failed,
    Parked,
    Skipped,
}

/// Where an accepted event is; `result`, `processedAt` and
/// `processingDurationMs` appear once it has an outcome.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
#[serde(rename_all = "camelCase")]
pub struct EventState {
    #[schema(format = Uuid)]
    event_id: String,
    patient_id: String,
    #[serde(rename = "type")]
    event_type: String,
    #[schema(format = DateTime)]
    ts: String,
    seq: i64,
    /// The API client whose key sent the event (the name before `:` in
    /// `INGEST_API_KEYS`).
    #[schema(example = "lab-a")]
    client: String,
    status: EventStatus,
    attempts: i32,
    #[schema(format = DateTime)]
    accepted_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
    last_error: Option<String>,
    result: Option<ResultView>,
    #[schema(format = DateTime)]
    processed_at: Option<String>,
    processing_duration_ms: Option<i64>,
}

/// A page of `GET /admin/events`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct EventPage {
    events: Vec<EventState>,
    /// Pass as `cursor` for the next page; null when this is the last.
    next: Option<String>,
}

/// A page of a patient's timeline.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
#[serde(rename_all = "camelCase")]
pub struct Timeline {
    patient_id: String,
    /// In sequence order, without `data`.
    events: Vec<EventState>,
    /// Pass as `after` for the next page; null when this is the last.
    next: Option<i64>,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct FieldProblem {
    field: String,
    message: String,
}

/// One Server-Sent Events message of `GET /events/stream`, as its fields:
/// `event` is `outcome`; `data` is a JSON object (eventId, patientId, seq,
/// type, client, status, result, run, attempts, processedAt); `id` is what
/// `Last-Event-ID` takes to resume.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct StreamMessage {
    #[schema(example = "1795830884123-019ac4f1-6f1e-7c3b-9a52-0d4a8b7e2f11")]
    id: Option<String>,
    #[schema(example = "outcome")]
    event: Option<String>,
    /// The outcome as a JSON object, serialized.
    data: String,
}

/// The refusals of every operator route: no credential, or not an operator's.
#[derive(IntoResponses)]
#[allow(dead_code)]
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
#[allow(dead_code)]
pub enum JsonBodyRefusals {
    /// Body over 1 MiB
    #[response(status = 413, content_type = "application/problem+json")]
    TooLarge(Problem),
    /// Content-Type is not application/json
    #[response(status = 415, content_type = "application/problem+json")]
    NotJson(Problem),
}

/// RFC 9457 problem details (`application/problem+json`).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct Problem {
    #[serde(rename = "type")]
    problem_type: String,
    title: String,
    status: u16,
    detail: String,
    /// One entry per broken rule (validation errors only).
    errors: Option<Vec<FieldProblem>>,
}

/// A `503`: nothing was stored (`type` is `about:blank`: the store is
/// unavailable, the service at capacity or the request too slow), or, with
/// `type` `/problems/outcome-unknown`, the database did not confirm whether
/// the event was stored: `eventId` names it. A retry with the same
/// `Idempotency-Key` (or, without one, the same body within
/// `DEDUP_WINDOW_S`) stores it at most once and answers with its eventId.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct Unavailable {
    #[serde(rename = "type")]
    #[schema(inline)]
    problem_type: UnavailableType,
    #[schema(example = "Service Unavailable")]
    title: String,
    #[schema(example = 503)]
    status: u16,
    detail: String,
    /// Only with `/problems/outcome-unknown`: the event that may or may not
    /// be stored.
    #[serde(rename = "eventId")]
    #[schema(format = Uuid)]
    event_id: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub enum UnavailableType {
    #[serde(rename = "about:blank")]
    NothingStored,
    #[serde(rename = "/problems/outcome-unknown")]
    OutcomeUnknown,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct Health {
    status: String,
    service: String,
}

/// The processor's readiness, with the bucket leases it holds (of 256;
/// the fleet shares them).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct ProcessorReady {
    #[schema(example = "ready")]
    status: String,
    #[schema(example = "processor-service")]
    service: String,
    #[schema(example = 256, minimum = 0)]
    leases: u64,
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Medical events: ingest", description = "Accepts clinical events durably, in order per patient."),
    paths(
        super::ingest::accept_event, super::ingest::event_status, super::stream::outcomes,
        super::patients::timeline, super::admin::list_events, super::admin::retry,
        super::admin::skip, super::admin::acknowledge, super::admin::stats, super::admin::audit,
        super::health::live_doc, super::health::ready_doc
    ),
    components(schemas(
        EventBody, Queued, EventState, EventStatus, EventPage, Timeline, Problem, Unavailable,
        FieldProblem, ResultView, Health, StreamMessage, super::admin::Reason
    )),
    modifiers(&BearerAuth)
)]
pub struct IngestApi;

#[derive(OpenApi)]
#[openapi(
    info(title = "Medical events: processor", description = "Processes each patient's events in order, exactly once."),
    paths(super::processor::queue_event, super::health::live_doc, super::health::processor_ready_doc),
    components(schemas(QueueBody, Accepted, Problem, Unavailable, FieldProblem, Health, ProcessorReady)),
    modifiers(&BearerAuth)
)]
pub struct ProcessorApi;

/// The document as served and committed: pretty JSON with a final newline.
pub fn render(api: &utoipa::openapi::OpenApi) -> String {
    let mut text = api
        .to_pretty_json()
        .expect("an OpenAPI document serializes");
    text.push('\n');
    text
}

pub async fn ingest_document() -> Json<utoipa::openapi::OpenApi> {
    Json(IngestApi::openapi())
}

pub async fn processor_document() -> Json<utoipa::openapi::OpenApi> {
    Json(ProcessorApi::openapi())
}
