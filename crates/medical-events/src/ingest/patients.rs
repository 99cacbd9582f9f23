//! `GET /patients/{patientId}/events`: a patient's events in sequence order
//! with their status and outcome, never their `data`. Scoped like
//! `GET /events/{id}`: a client sees the events it sent, an operator all.

use axum::Json;
use axum::extract::{Extension, Path, State};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::routes::{EventView, IngestState};
use crate::auth::Caller;
use crate::event::PatientId;
use crate::http::paging::page_limit;
use crate::http::problem::{ApiError, Problem};
use crate::http::query_params::QueryParams;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TimelineParams {
    after: Option<String>,
    limit: Option<String>,
}

/// A page of a patient's timeline.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Timeline {
    patient_id: String,
    /// In sequence order, without `data`.
    events: Vec<EventView>,
    /// Pass as `after` for the next page; null when this is the last.
    next: Option<i64>,
}

/// A patient's events after sequence number `after`, in order.
#[utoipa::path(get, path = "/patients/{patientId}/events", tag = "events",
    params(
        ("patientId" = String, Path, description = "The patient"),
        ("after" = Option<i64>, Query, description = "Only events with a higher sequence number (the `next` of the previous page)"),
        ("limit" = Option<i64>, Query, description = "1-1000, default 100"),
    ),
    responses(
        (status = 200, description = "The patient's events in sequence order, without data", body = Timeline),
        (status = 400, description = "A parameter is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or invalid API key", body = Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 429, description = "Rate limit of this client exhausted", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
        (status = 503, description = "Store unavailable or service at capacity", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    security(("bearer" = [])))]
pub(crate) async fn timeline(
    State(state): State<IngestState>,
    Extension(caller): Extension<Caller>,
    Path(raw_patient): Path<String>,
    QueryParams(params): QueryParams<TimelineParams>,
) -> Result<Json<Timeline>, ApiError> {
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
    Ok(Json(Timeline {
        patient_id: patient.as_str().to_owned(),
        events: events.iter().map(EventView::of).collect(),
        next: scanned_to,
    }))
}
