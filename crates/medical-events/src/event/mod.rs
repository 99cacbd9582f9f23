//! The clinical event as clients send it, parsed at the edge so an invalid
//! value cannot travel further ("parse, don't validate"): the request rules
//! are declared with `validator` (`request`, `rules`), broken ones become
//! `FieldError`s (`report`), and only a validated body becomes the domain
//! types (`fields`, `data`).

mod data;
mod fields;
mod report;
mod request;
mod rules;
pub mod schema;
#[cfg(test)]
mod tests;

pub use data::EventData;
pub use fields::{EventId, EventTime, EventType, PatientId};

use serde::Serialize;
use serde_json::Value;

use request::{EventBody, QueueBody, Validated};

/// One reason a request was refused, named by the JSON path of the field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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

impl NewEvent {
    /// Parses a `POST /events` body, reporting every broken rule at once.
    pub fn parse(body: &Value) -> Result<Self, Vec<FieldError>> {
        Validated::<EventBody>::read(body)?.into_event()
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
        let (event_id, event) = Validated::<QueueBody>::read(body)?.into_parts()?;
        Ok(Self { event_id, event })
    }
}
