//! `custom` rules for what validator has no built-in for. Fields arrive as
//! raw JSON, so every rule but the type checks passes a value of the wrong
//! type: `is_string` / `is_object` report that once, and the report keeps
//! only a field's first broken rule.

use serde_json::{Map, Value};
use validator::ValidationError;

use super::data::storage_problems;
use super::report::located;
use super::request::AnyJson;
use super::{EventId, EventTime, FieldError};

pub(super) fn is_string(value: &AnyJson) -> Result<(), ValidationError> {
    check(value.0.is_string(), "string")
}

pub(super) fn is_object(value: &AnyJson) -> Result<(), ValidationError> {
    check(value.0.is_object(), "object")
}

/// Whitespace only. The empty string is `length(min = 1)`'s to report.
pub(super) fn not_blank(value: &AnyJson) -> Result<(), ValidationError> {
    let blank = value
        .0
        .as_str()
        .is_some_and(|text| !text.is_empty() && text.trim().is_empty());
    check(!blank, "blank")
}

/// Unicode `Cc`, as `char::is_control`; validator's own rule needs the
/// `unic` feature and its tables for the same answer.
pub(super) fn no_control_characters(value: &AnyJson) -> Result<(), ValidationError> {
    let control = value
        .0
        .as_str()
        .is_some_and(|text| text.chars().any(char::is_control));
    check(!control, "control_characters")
}

/// RFC 3339 with an offset, by the same parse that builds the `EventTime`.
pub(super) fn rfc3339_with_offset(value: &AnyJson) -> Result<(), ValidationError> {
    parses(value, "rfc3339", EventTime::parse_str)
}

/// The plain hyphenated UUID form, by the same parse that builds the `EventId`.
pub(super) fn plain_uuid(value: &AnyJson) -> Result<(), ValidationError> {
    parses(value, "uuid", EventId::parse_str)
}

/// What MongoDB can store: see `data::storage_problems`. Reports every
/// problem at once, each at its own path.
pub(super) fn storable_data(value: &AnyJson) -> Result<(), ValidationError> {
    let Some(object) = value.0.as_object() else {
        return Ok(());
    };
    let problems = storage_problems(object);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(located("storable", &problems))
    }
}

/// Fields the request type does not declare, each named by itself.
pub(super) fn no_unknown_fields(unknown: &Map<String, Value>) -> Result<(), ValidationError> {
    if unknown.is_empty() {
        return Ok(());
    }
    let problems: Vec<FieldError> = unknown
        .keys()
        .map(|key| FieldError::new(key.clone(), "unknown field"))
        .collect();
    Err(located("unknown_field", &problems))
}

fn check(holds: bool, code: &'static str) -> Result<(), ValidationError> {
    if holds {
        Ok(())
    } else {
        Err(ValidationError::new(code))
    }
}

fn parses<T>(
    value: &AnyJson,
    code: &'static str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<(), ValidationError> {
    match value.0.as_str().map(parse) {
        Some(Err(message)) => Err(ValidationError::new(code).with_message(message.into())),
        Some(Ok(_)) | None => Ok(()),
    }
}
