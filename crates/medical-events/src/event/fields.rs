//! Newtypes for the scalar fields of an event.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;
use uuid::Uuid;

fn as_string(value: &Value) -> Result<&str, String> {
    value.as_str().ok_or_else(|| "must be a string".to_owned())
}

fn bounded_text(value: &Value, max_chars: usize) -> Result<String, String> {
    let text = as_string(value)?;
    let chars = text.chars().count();
    if chars == 0 {
        return Err("must not be empty".to_owned());
    }
    if chars > max_chars {
        return Err(format!(
            "must be at most {max_chars} characters (got {chars})"
        ));
    }
    if text.trim().is_empty() {
        return Err("must not be blank".to_owned());
    }
    if text.chars().any(char::is_control) {
        return Err("must not contain control characters".to_owned());
    }
    Ok(text.to_owned())
}

/// The patient an event belongs to: 1-128 characters, not blank, printable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PatientId(String);

impl PatientId {
    pub const MAX_CHARS: usize = 128;

    pub fn parse_json(value: &Value) -> Result<Self, String> {
        bounded_text(value, Self::MAX_CHARS).map(Self)
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

    pub fn parse_json(value: &Value) -> Result<Self, String> {
        bounded_text(value, Self::MAX_CHARS).map(Self)
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
    pub fn parse_json(value: &Value) -> Result<Self, String> {
        let text = as_string(value)?;
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

    pub fn parse_str(text: &str) -> Result<Self, String> {
        // `Uuid::parse_str` also takes braces and URNs; the API promises the plain form.
        if text.len() != 36 {
            return Err("must be a UUID like 123e4567-e89b-12d3-a456-426614174000".to_owned());
        }
        Uuid::try_parse(text)
            .map(Self)
            .map_err(|_| "must be a UUID like 123e4567-e89b-12d3-a456-426614174000".to_owned())
    }

    pub fn parse_json(value: &Value) -> Result<Self, String> {
        Self::parse_str(as_string(value)?)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}
