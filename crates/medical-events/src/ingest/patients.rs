//! `GET /patients/{patientId}/events`: a patient's events in sequence order
//! with their status and outcome, never their `data`. Scoped like
//! `GET /events/{id}`: a client sees the events it sent, an operator all.

use axum::Json;
use axum::extract::{Extension, Path, State};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::routes::{EventView, IngestState};
use crate::auth::Caller;
use crate::event::{EventId, PatientId};
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
    /// Pass as `after` for the next page (the last event's id); null when
    /// this is the last page.
    #[schema(format = Uuid)]
    next: Option<String>,
}

/// A patient's events in order, a page after the event `after`. A client
/// sees its own events only, and nothing counted from other clients'.
#[utoipa::path(get, path = "/patients/{patientId}/events", tag = "events",
    params(
        ("patientId" = String, Path, description = "The patient"),
        ("after" = Option<String>, Query, description = "The `next` of the previous page (an event id); operators may also give a sequence number"),
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
    let store = state.intake.store();
    let after = match params.after.as_deref() {
        None => 0,
        // A position counts every client's events: operators only.
        Some(raw) if caller.is_admin() && raw.parse::<i64>().is_ok_and(|n| n >= 0) => {
            raw.parse::<i64>().unwrap_or_default()
        }
        Some(raw) => {
            let invalid = || {
                ApiError::field(
                    "after",
                    "must be the `next` of a previous page of this patient's timeline",
                )
            };
            let id = EventId::parse_str(raw).map_err(|_| invalid())?;
            let event = store
                .find_event(&id.to_string())
                .await?
                .ok_or_else(invalid)?;
            // Another client's event is no cursor for this caller.
            if event.patient_id != patient.as_str()
                || caller.scope().is_some_and(|client| client != event.client)
            {
                return Err(invalid());
            }
            event.seq
        }
    };
    let limit = page_limit(params.limit.as_deref())?;
    super::admin::audit_read(
        &state,
        &caller,
        "/patients/{patientId}/events",
        Some(patient.as_str()),
        None,
        Default::default(),
    )
    .await?;
    let (events, more) = store
        .timeline(patient.as_str(), caller.scope(), after, limit)
        .await?;
    let next = more
        .then(|| events.last().map(|e| e.event_id.clone()))
        .flatten();
    Ok(Json(Timeline {
        patient_id: patient.as_str().to_owned(),
        events: events
            .iter()
            .map(|event| EventView::for_caller(event, &caller))
            .collect(),
        next,
    }))
}
