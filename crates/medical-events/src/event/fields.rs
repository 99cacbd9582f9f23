//! Newtypes for the scalar fields of an event. Their rules are declared on
//! the request types (`request.rs`); text newtypes are built only from
//! values that passed them, and the others parse what they need to store.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use uuid::Uuid;

/// The patient an event belongs to: 1-128 characters, not blank, printable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PatientId(String);

impl PatientId {
    pub const MAX_CHARS: usize = 128;

    /// Only for text that passed the `patientId` rules.
    pub(super) fn from_validated(text: String) -> Self {
        Self(text)
    }

    /// A patient id given alone (a path segment), under the body's rules.
    pub fn parse(text: &str) -> Result<Self, Vec<super::FieldError>> {
        super::request::patient_id(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The kind of event (admission, lab result...): 1-64 characters, not blank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventType(String);

impl EventType {
    pub const MAX_CHARS: usize = 64;

    /// Only for text that passed the `type` rules.
    pub(super) fn from_validated(text: String) -> Self {
        Self(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// When the event happened, normalized to UTC with millisecond precision
/// (`2025-10-01T12:00:00.000Z`) so that string order equals time order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTime(String);

impl EventTime {
    /// Parses RFC 3339 with an offset; the `ts` rule is this same parse.
    pub fn parse_str(text: &str) -> Result<Self, String> {
        let parsed = DateTime::parse_from_rfc3339(text).map_err(|_| {
            "must be an RFC 3339 date-time with a timezone, e.g. 2025-10-01T12:00:00Z".to_owned()
        })?;
        Ok(Self(
            parsed
                .with_timezone(&Utc)
                .to_rfc3339_opts(SecondsFormat::Millis, true),
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The id the system gives an accepted event (a UUID, lower-case hyphenated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventId(Uuid);

impl EventId {
    pub fn new_random() -> Self {
        Self(Uuid::new_v4())
    }

    /// A UUID v7: random, and in creation order (the millisecond comes
    /// first), so events stored by it are in acceptance order.
    pub fn new_time_ordered() -> Self {
        Self(Uuid::now_v7())
    }

    /// Parses the plain hyphenated form; the `eventId` rule is this same parse.
    pub fn parse_str(text: &str) -> Result<Self, String> {
        // `Uuid::parse_str` also takes braces and URNs; the API promises the plain form.
        if text.len() != 36 {
            return Err("must be a UUID like 123e4567-e89b-12d3-a456-426614174000".to_owned());
        }
        Uuid::try_parse(text)
            .map(Self)
            .map_err(|_| "must be a UUID like 123e4567-e89b-12d3-a456-426614174000".to_owned())
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}
