//! `GET /patients/{patientId}/events`: a patient's events in sequence order
//! with their status and outcome, never their `data`. Scoped like
//! `GET /events/{id}`: a client sees the events it sent, an operator all.

use axum::Json;
use axum::extract::{Extension, Path, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ingest::{IngestState, event_view};
use super::paging::page_limit;
use super::problem::ApiError;
use super::query_params::QueryParams;
use crate::auth::Caller;
use crate::event::PatientId;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TimelineParams {
    after: Option<String>,
    limit: Option<String>,
}

/// A patient's events after sequence number `after`, in order.
#[utoipa::path(get, path = "/patients/{patientId}/events", tag = "events",
    params(
        ("patientId" = String, Path, description = "The patient"),
        ("after" = Option<i64>, Query, description = "Only events with a higher sequence number (the `next` of the previous page)"),
        ("limit" = Option<i64>, Query, description = "1-1000, default 100"),
    ),
    responses(
        (status = 200, description = "The patient's events in sequence order, without data", body = super::openapi::Timeline),
        (status = 400, description = "A parameter is invalid", body = super::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or invalid API key", body = super::openapi::Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 429, description = "Rate limit of this client exhausted", body = super::openapi::Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 503, description = "Store unavailable or service at capacity", body = super::openapi::Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    security(("bearer" = [])))]
pub(crate) async fn timeline(
    State(state): State<IngestState>,
    Extension(caller): Extension<Caller>,
    Path(raw_patient): Path<String>,
    QueryParams(params): QueryParams<TimelineParams>,
) -> Result<Json<Value>, ApiError> {
    let patient = PatientId::parse(&raw_patient).map_err(ApiError::Validation)?;
    let after = match params.after.as_deref() {
        None => 0,
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| ApiError::field("after", "must be a sequence number (0 or more)"))?,
    };
    let limit = page_limit(params.limit.as_deref())?;
    let client = caller.scope();
    let (events, scanned_to) = state
        .intake
        .store()
        .timeline(patient.as_str(), client, after, limit)
        .await?;
    Ok(Json(json!({
        "patientId": patient.as_str(),
        "events": events.iter().map(event_view).collect::<Vec<_>>(),
        "next": scanned_to,
    })))
}
