//! The operator API on ingest (`/admin/...`, `ADMIN_API_KEYS` only; a
//! client key gets 403): list events by state, re-run or skip them,
//! acknowledge failures, read the figures and the audit log. Every action
//! names its reason and is audited.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Extension, Path, State};
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{Bson, Document, doc};
use serde::{Deserialize, Serialize};
use tracing::info;
use utoipa::ToSchema;

use super::routes::{EventView, IngestState};
use crate::auth::Caller;
use crate::event::{EventId, PatientId};
use crate::http::json_body::JsonBody;
use crate::http::paging::page_limit;
use crate::http::problem::{ApiError, JsonBodyRefusals, OperatorRefusals, Problem};
use crate::http::query_params::QueryParams;
use crate::store::{
    Action, ActionOutcome, AuditedRead, ClientStats, ControlIdQuery, ListCursor, ListQuery,
    ListedState,
};

const MAX_REASON_CHARS: usize = 500;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ListParams {
    status: Option<String>,
    patient_id: Option<String>,
    client: Option<String>,
    cursor: Option<String>,
    limit: Option<String>,
}

/// `<bucket>.<seq>.<patientId as hex>`: URL-safe, opaque to clients.
fn encode_cursor(cursor: &ListCursor) -> String {
    let hex: String = cursor.patient.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{}.{}.{hex}", cursor.bucket, cursor.seq)
}

fn decode_cursor(text: &str) -> Option<ListCursor> {
    let mut parts = text.splitn(3, '.');
    let bucket = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    let hex = parts.next()?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some(ListCursor {
        bucket,
        patient: String::from_utf8(bytes).ok()?,
        seq,
    })
}

/// A page of `GET /admin/events`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    events: Vec<EventView>,
    /// Pass as `cursor` for the next page; null when this is the last.
    next: Option<String>,
}

/// Events in a state, paginated by cursor (index order: bucket, patient, seq).
#[utoipa::path(get, path = "/admin/events", tag = "operations",
    params(
        ("status" = String, Query, description = "queued, processing, parked or failed"),
        ("patientId" = Option<String>, Query, description = "Only this patient's events"),
        ("client" = Option<String>, Query, description = "Only this client's events"),
        ("cursor" = Option<String>, Query, description = "The `next` of the previous page"),
        ("limit" = Option<i64>, Query, description = "1-1000, default 100"),
    ),
    responses(
        (status = 200, description = "A page of events and the cursor of the next", body = EventPage),
        (status = 400, description = "A parameter is invalid", body = Problem, content_type = "application/problem+json"),
        OperatorRefusals,
        (status = 503, description = "Store unavailable", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    security(("bearer" = [])))]
pub(crate) async fn list_events(
    State(state): State<IngestState>,
    Extension(caller): Extension<Caller>,
    QueryParams(params): QueryParams<ListParams>,
) -> Result<Json<EventPage>, ApiError> {
    let status = params.status.as_deref().ok_or_else(|| {
        ApiError::field(
            "status",
            "is required: queued, processing, parked or failed",
        )
    })?;
    let state_wanted: ListedState = serde_json::from_value(serde_json::Value::from(status))
        .map_err(|_| ApiError::field("status", "must be queued, processing, parked or failed"))?;
    let patient = params
        .patient_id
        .as_deref()
        .map(PatientId::parse)
        .transpose()
        .map_err(ApiError::Validation)?;
    let after = params
        .cursor
        .as_deref()
        .map(|c| {
            decode_cursor(c)
                .ok_or_else(|| ApiError::field("cursor", "is not a cursor this API gave"))
        })
        .transpose()?;
    let query = ListQuery {
        state: state_wanted,
        patient: patient.map(|p| p.as_str().to_owned()),
        client: params.client,
        after,
        limit: page_limit(params.limit.as_deref())?,
    };
    let mut asked = doc! { "status": status };
    if let Some(client) = &query.client {
        asked.insert("client", client);
    }
    audit_read(
        &state,
        &caller,
        "/admin/events",
        query.patient.as_deref(),
        None,
        asked,
    )
    .await?;
    let events = state.intake.store().list_events(&query).await?;
    let next = (events.len() as i64 == query.limit)
        .then(|| events.last())
        .flatten()
        .map(|last| {
            encode_cursor(&ListCursor {
                bucket: last.bucket,
                patient: last.patient_id.clone(),
                seq: last.seq,
            })
        });
    Ok(Json(EventPage {
        events: events.iter().map(EventView::of).collect(),
        next,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct MessageParams {
    control_id: Option<String>,
    sending_application: Option<String>,
    sending_facility: Option<String>,
    client: Option<String>,
}

/// HL7 messages found by their control id.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageMatches {
    /// Oldest first; a control id reused with other content gives several.
    events: Vec<EventView>,
}

/// HL7 v2 messages (arrived over MLLP) by the sender's control id (MSH-10),
/// narrowed by sender and client: the id the sending system logs is what an
/// interface analyst has in hand when a message goes missing.
#[utoipa::path(get, path = "/admin/messages", tag = "operations",
    params(
        ("controlId" = String, Query, description = "MSH-10 of the message"),
        ("sendingApplication" = Option<String>, Query, description = "MSH-3, components joined by ^"),
        ("sendingFacility" = Option<String>, Query, description = "MSH-4, components joined by ^"),
        ("client" = Option<String>, Query, description = "Only this client's messages"),
    ),
    responses(
        (status = 200, description = "The stored messages with that control id (without their data)", body = MessageMatches),
        OperatorRefusals,
        (status = 503, description = "Store unavailable", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    security(("bearer" = [])))]
pub(crate) async fn messages_by_control_id(
    State(state): State<IngestState>,
    Extension(caller): Extension<Caller>,
    QueryParams(params): QueryParams<MessageParams>,
) -> Result<Json<MessageMatches>, ApiError> {
    let control_id = params
        .control_id
        .as_deref()
        .filter(|id| !id.is_empty())
        .ok_or_else(|| ApiError::field("controlId", "is required: the message's MSH-10"))?;
    let mut asked = doc! { "controlId": control_id };
    for (name, value) in [
        ("sendingApplication", &params.sending_application),
        ("sendingFacility", &params.sending_facility),
        ("client", &params.client),
    ] {
        if let Some(value) = value {
            asked.insert(name, value);
        }
    }
    audit_read(&state, &caller, "/admin/messages", None, None, asked).await?;
    let found = state
        .intake
        .store()
        .by_control_id(&ControlIdQuery {
            control_id,
            client: params.client.as_deref(),
            sending_application: params.sending_application.as_deref(),
            sending_facility: params.sending_facility.as_deref(),
        })
        .await?;
    Ok(Json(MessageMatches {
        events: found.iter().map(EventView::of).collect(),
    }))
}

/// An operator's read of patient data goes into the audit log before the
/// data is sent (a client's reads are its own data, and not logged).
pub(crate) async fn audit_read(
    state: &IngestState,
    caller: &Caller,
    route: &'static str,
    patient: Option<&str>,
    event: Option<&str>,
    query: Document,
) -> Result<(), ApiError> {
    if !caller.is_admin() {
        return Ok(());
    }
    let read = AuditedRead {
        operator: &caller.client,
        route,
        patient,
        event,
        query,
    };
    Ok(state.intake.store().audit_read(&read).await?)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Reason {
    /// Why (kept in the audit log): 1-500 characters.
    reason: String,
}

async fn act(
    state: &IngestState,
    caller: &Caller,
    raw_id: &str,
    action: Action,
    body: JsonBody,
) -> Result<Json<EventView>, ApiError> {
    let event_id =
        EventId::parse_str(raw_id).map_err(|reason| ApiError::field("eventId", reason))?;
    let JsonBody(body, _share) = body;
    let reason: Reason = serde_json::from_value(body)
        .map_err(|_| ApiError::field("reason", "a JSON body {\"reason\": \"...\"} is required"))?;
    let reason = reason.reason.trim().to_owned();
    if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS {
        return Err(ApiError::field(
            "reason",
            format!("must be 1-{MAX_REASON_CHARS} characters"),
        ));
    }
    let id = event_id.to_string();
    match state
        .intake
        .store()
        .act(&id, action, &caller.client, &reason)
        .await?
    {
        ActionOutcome::Done(event) => {
            info!(eventId = %id, action = action.as_str(), operator = &*caller.client, "operator action");
            metrics::counter!("operator_actions_total", "action" => action.as_str()).increment(1);
            if matches!(action, Action::Retry | Action::Skip) {
                // The owner learns at its next scan anyway; this is sooner.
                state.notifier.wake(&event);
            }
            Ok(Json(EventView::of(&event)))
        }
        ActionOutcome::NotFound => Err(ApiError::NotFound(format!("no event with id {id}"))),
        ActionOutcome::Pruned(_) => Err(ApiError::Conflict(format!(
            "event {id} cannot be run again: retention removed its payload (it is kept only as \
             its patient's sequence high-water mark)"
        ))),
        ActionOutcome::WrongState(event) => Err(ApiError::Conflict(format!(
            "event {id} is {}; {}",
            event.api_status().as_str(),
            match action {
                Action::Retry => "only failed or parked events can be retried",
                Action::Skip => "only parked events can be skipped",
                Action::Acknowledge => "only unacknowledged failed events can be acknowledged",
            }
        ))),
    }
}

/// Re-run a failed or parked event (a new run; the outcome document keeps the earlier ones).
#[utoipa::path(post, path = "/admin/events/{eventId}/retry", tag = "operations",
    params(("eventId" = String, Path, description = "The event")),
    request_body(content = Reason, content_type = "application/json"),
    responses(
        (status = 200, description = "Queued again; its patient's lane will run it", body = EventView),
        (status = 400, description = "No reason, a body that is not JSON, or the id is not a UUID", body = Problem, content_type = "application/problem+json"),
        OperatorRefusals,
        JsonBodyRefusals,
        (status = 404, description = "No such event", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The event is neither failed nor parked", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub(crate) async fn retry(
    State(state): State<IngestState>,
    Extension(caller): Extension<Caller>,
    Path(raw_id): Path<String>,
    body: JsonBody,
) -> Result<Json<EventView>, ApiError> {
    act(&state, &caller, &raw_id, Action::Retry, body).await
}

/// Set a parked event aside (`skipped`); its patient goes on.
#[utoipa::path(post, path = "/admin/events/{eventId}/skip", tag = "operations",
    params(("eventId" = String, Path, description = "The parked event")),
    request_body(content = Reason, content_type = "application/json"),
    responses(
        (status = 200, description = "Skipped", body = EventView),
        (status = 400, description = "No reason, a body that is not JSON, or the id is not a UUID", body = Problem, content_type = "application/problem+json"),
        OperatorRefusals,
        JsonBodyRefusals,
        (status = 404, description = "No such event", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The event is not parked", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub(crate) async fn skip(
    State(state): State<IngestState>,
    Extension(caller): Extension<Caller>,
    Path(raw_id): Path<String>,
    body: JsonBody,
) -> Result<Json<EventView>, ApiError> {
    act(&state, &caller, &raw_id, Action::Skip, body).await
}

/// Acknowledge a failed event: seen and dealt with (retention may then remove it).
#[utoipa::path(post, path = "/admin/events/{eventId}/acknowledge", tag = "operations",
    params(("eventId" = String, Path, description = "The failed event")),
    request_body(content = Reason, content_type = "application/json"),
    responses(
        (status = 200, description = "Acknowledged", body = EventView),
        (status = 400, description = "No reason, a body that is not JSON, or the id is not a UUID", body = Problem, content_type = "application/problem+json"),
        OperatorRefusals,
        JsonBodyRefusals,
        (status = 404, description = "No such event", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The event is not an unacknowledged failure", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub(crate) async fn acknowledge(
    State(state): State<IngestState>,
    Extension(caller): Extension<Caller>,
    Path(raw_id): Path<String>,
    body: JsonBody,
) -> Result<Json<EventView>, ApiError> {
    act(&state, &caller, &raw_id, Action::Acknowledge, body).await
}

/// Backlog, work in hand, parked patients, failures and the oldest
/// unfinished event, per client.
#[utoipa::path(get, path = "/admin/stats", tag = "operations",
    responses(
        (status = 200, description = "Figures per client", body = Stats),
        OperatorRefusals,
        (status = 503, description = "Store unavailable", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    security(("bearer" = [])))]
pub(crate) async fn stats(State(state): State<IngestState>) -> Result<Json<Stats>, ApiError> {
    let clients = state.intake.store().stats().await?.into_iter().collect();
    Ok(Json(Stats { clients }))
}

/// `GET /admin/stats`: figures per client name.
#[derive(Debug, Serialize, ToSchema)]
pub struct Stats {
    clients: BTreeMap<String, ClientStats>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditParams {
    before: Option<String>,
    limit: Option<String>,
}

/// Operator actions and operators' reads of patient data, newest first.
#[utoipa::path(get, path = "/admin/audit", tag = "operations",
    params(
        ("before" = Option<String>, Query, description = "The `next` of the previous page"),
        ("limit" = Option<i64>, Query, description = "1-1000, default 100"),
    ),
    responses(
        (status = 200, description = "Audit entries: who, when, what (an action, or a read), on which event or patient, why, before and after", body = AuditPage),
        (status = 400, description = "A parameter is invalid", body = Problem, content_type = "application/problem+json"),
        OperatorRefusals,
    ),
    security(("bearer" = [])))]
pub(crate) async fn audit(
    State(state): State<IngestState>,
    QueryParams(params): QueryParams<AuditParams>,
) -> Result<Json<AuditPage>, ApiError> {
    let before = params
        .before
        .as_deref()
        .map(|b| {
            ObjectId::parse_str(b)
                .map_err(|_| ApiError::field("before", "is not a cursor this API gave"))
        })
        .transpose()?;
    let limit = page_limit(params.limit.as_deref())?;
    let entries = state.intake.store().audit_log(before, limit).await?;
    let next = (entries.len() as i64 == limit)
        .then(|| entries.last().and_then(|e| e.get_object_id("_id").ok()))
        .flatten()
        .map(|id| id.to_hex());
    let entries = entries.iter().map(AuditEntry::of).collect();
    Ok(Json(AuditPage { entries, next }))
}

/// A page of the audit log, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    entries: Vec<AuditEntry>,
    /// Pass as `before` for the next page; null when this is the last.
    next: Option<String>,
}

/// One operator action (who, when, what, on which event, why, and the
/// event's state before and after) or one operator read of patient data
/// (who, when, which route, which patient or event, what was asked).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    #[schema(format = DateTime)]
    at: String,
    /// The operator key's name (`ADMIN_API_KEYS`).
    who: String,
    /// `retry`, `skip`, `acknowledge`, or `read` (an operator read patient data).
    action: String,
    /// The route an operator read (`read` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    route: Option<String>,
    #[schema(format = Uuid)]
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patient_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<String>,
    /// The reason given for an action.
    #[serde(skip_serializing_if = "Option::is_none")]
    why: Option<String>,
    /// The filters a read gave (status, client, control id...).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    query: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    before: Option<AuditState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    after: Option<AuditState>,
}

/// An event's state in an audit entry.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditState {
    status: String,
    run: i64,
    attempts: i64,
}

impl AuditEntry {
    fn of(entry: &Document) -> Self {
        let text = |field: &str| entry.get_str(field).unwrap_or_default().to_owned();
        let optional = |field: &str| entry.get_str(field).ok().map(str::to_owned);
        let state = |field: &str| {
            let state = entry.get_document(field).ok()?.clone();
            let number = |name: &str| match state.get(name) {
                Some(Bson::Int32(n)) => i64::from(*n),
                Some(Bson::Int64(n)) => *n,
                _ => 0,
            };
            Some(AuditState {
                status: state.get_str("status").unwrap_or_default().to_owned(),
                run: number("run"),
                attempts: number("attempts"),
            })
        };
        Self {
            at: entry
                .get_datetime("at")
                .ok()
                .and_then(|at| at.try_to_rfc3339_string().ok())
                .unwrap_or_default(),
            who: text("who"),
            action: text("action"),
            route: optional("route"),
            event_id: optional("eventId"),
            patient_id: optional("patientId"),
            client: optional("client"),
            why: optional("why"),
            query: entry
                .get_document("query")
                .ok()
                .map(|q| Bson::Document(q.clone()).into_relaxed_extjson()),
            before: state("before"),
            after: state("after"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_any_patient_id() {
        let cursor = ListCursor {
            bucket: 17,
            patient: "MRN 12/ä.b".to_owned(),
            seq: 42,
        };
        assert_eq!(decode_cursor(&encode_cursor(&cursor)), Some(cursor));
        assert_eq!(decode_cursor("nonsense"), None);
        assert_eq!(decode_cursor("1.2.zz"), None);
    }
}
