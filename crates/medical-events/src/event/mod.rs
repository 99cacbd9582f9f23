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
        // The text of `{"patientId", "type", "ts", "data"}` with `data`'s keys
        // sorted (digests stored by earlier versions stay comparable),
        // written straight into the digest.
        struct Hashing(Sha256);
        impl std::io::Write for Hashing {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.update(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut out = Hashing(Sha256::new());
        let head = serde_json::json!({
            "patientId": self.patient_id.as_str(),
            "type": self.event_type.as_str(),
            "ts": self.ts.as_str(),
        })
        .to_string();
        // Writing into a digest cannot fail.
        let _ = std::io::Write::write_all(&mut out, &head.as_bytes()[..head.len() - 1]);
        let _ = std::io::Write::write_all(&mut out, b",\"data\":");
        let _ = data::write_canonical_map(self.data.as_map(), &mut out);
        let _ = std::io::Write::write_all(&mut out, b"}");
        format!("{:x}", out.0.finalize())
    }

    /// Parses a `POST /events` body it takes over (no copy of `data`).
    pub fn parse_owned(body: Value) -> Result<Self, Vec<FieldError>> {
        Validated::<EventBody>::read_owned(body)?.into_event()
    }
}

impl QueuedEventRequest {
    /// Parses a `POST /queue` body: the event fields plus its `eventId`.
    pub fn parse(body: &Value) -> Result<Self, Vec<FieldError>> {
        let (event_id, event) = Validated::<QueueBody>::read(body)?.into_parts()?;
        Ok(Self { event_id, event })
    }
}
