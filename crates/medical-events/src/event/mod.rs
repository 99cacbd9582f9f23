//! The clinical event as clients send it, parsed at the edge so an invalid
//! value cannot travel further ("parse, don't validate").

mod data;
mod fields;
#[cfg(test)]
mod tests;

pub use data::EventData;
pub use fields::{EventId, EventTime, EventType, PatientId};

use serde::Serialize;
use serde_json::{Map, Value};

/// One reason a request was refused, named by the JSON path of the field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A valid event as accepted by `POST /events`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub patient_id: PatientId,
    pub event_type: EventType,
    pub data: EventData,
    pub ts: EventTime,
}

/// A valid `POST /queue` body: an event that already has its id.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedEventRequest {
    pub event_id: EventId,
    pub event: NewEvent,
}

const EVENT_FIELDS: [&str; 4] = ["patientId", "type", "data", "ts"];

impl NewEvent {
    /// Parses a `POST /events` body, reporting every broken rule at once.
    pub fn parse(body: &Value) -> Result<Self, Vec<FieldError>> {
        let object = body_object(body)?;
        let mut errors = unknown_fields(object, &EVENT_FIELDS);
        let event = parse_fields(object, &mut errors);
        match event {
            Some(event) if errors.is_empty() => Ok(event),
            _ => Err(errors),
        }
    }

    /// A digest of the normalized payload: equal for requests that mean the
    /// same event (key order in `data` and the spelling of `ts` do not matter).
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let canonical = serde_json::json!({
            "patientId": self.patient_id.as_str(),
            "type": self.event_type.as_str(),
            "ts": self.ts.as_str(),
            "data": data::canonical(&Value::Object(self.data.as_map().clone())),
        });
        format!("{:x}", Sha256::digest(canonical.to_string().as_bytes()))
    }
}

impl QueuedEventRequest {
    /// Parses a `POST /queue` body: the event fields plus its `eventId`.
    pub fn parse(body: &Value) -> Result<Self, Vec<FieldError>> {
        let object = body_object(body)?;
        let mut allowed = EVENT_FIELDS.to_vec();
        allowed.push("eventId");
        let mut errors = unknown_fields(object, &allowed);
        let event_id = required(object, "eventId", &mut errors)
            .and_then(|v| collect(EventId::parse_json(v), "eventId", &mut errors));
        let event = parse_fields(object, &mut errors);
        match (event_id, event) {
            (Some(event_id), Some(event)) if errors.is_empty() => Ok(Self { event_id, event }),
            _ => Err(errors),
        }
    }
}

fn body_object(body: &Value) -> Result<&Map<String, Value>, Vec<FieldError>> {
    body.as_object()
        .ok_or_else(|| vec![FieldError::new("$", "the body must be a JSON object")])
}

fn unknown_fields(object: &Map<String, Value>, allowed: &[&str]) -> Vec<FieldError> {
    object
        .keys()
        .filter(|key| !allowed.contains(&key.as_str()))
        .map(|key| FieldError::new(key.clone(), "unknown field"))
        .collect()
}

fn parse_fields(object: &Map<String, Value>, errors: &mut Vec<FieldError>) -> Option<NewEvent> {
    let patient_id = required(object, "patientId", errors)
        .and_then(|v| collect(PatientId::parse_json(v), "patientId", errors));
    let event_type = required(object, "type", errors)
        .and_then(|v| collect(EventType::parse_json(v), "type", errors));
    let data = required(object, "data", errors).and_then(|v| match EventData::parse_json(v) {
        Ok(data) => Some(data),
        Err(mut data_errors) => {
            errors.append(&mut data_errors);
            None
        }
    });
    let ts = required(object, "ts", errors)
        .and_then(|v| collect(EventTime::parse_json(v), "ts", errors));
    Some(NewEvent {
        patient_id: patient_id?,
        event_type: event_type?,
        data: data?,
        ts: ts?,
    })
}

fn required<'a>(
    object: &'a Map<String, Value>,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Option<&'a Value> {
    let value = object.get(field);
    if value.is_none() {
        errors.push(FieldError::new(field, "is required"));
    }
    value
}

fn collect<T>(result: Result<T, String>, field: &str, errors: &mut Vec<FieldError>) -> Option<T> {
    result
        .map_err(|message| errors.push(FieldError::new(field, message)))
        .ok()
}
