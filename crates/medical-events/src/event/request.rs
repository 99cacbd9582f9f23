//! The request bodies as serde + validator types: the rules of `POST /events`
//! and `POST /queue` are the `#[validate]` attributes below.
//!
//! Every field is read as raw JSON (`AnyJson`) and unknown fields are kept,
//! so that a wrong type or an unknown field is a broken rule reported with
//! all the others instead of a deserialization error that hides them.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use validator::{Validate, ValidateLength};

use super::report::{FieldNames, field_errors};
use super::{EventData, EventId, EventTime, EventType, FieldError, NewEvent, PatientId, rules};

/// A field's value of whatever JSON type the client sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub(super) struct AnyJson(pub(super) Value);

/// `length` counts the characters of a string; other types are left to
/// `is_string`.
impl ValidateLength<usize> for AnyJson {
    fn length(&self) -> Option<usize> {
        self.0.as_str().map(|text| text.chars().count())
    }
}

/// Reads a field that is present, `null` included: serde alone would make
/// `null` a missing field, but the API says "must be a string" for it.
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<AnyJson>, D::Error> {
    AnyJson::deserialize(deserializer).map(Some)
}

/// The rules of a patient id: a path segment on its own, and `patientId`
/// in the event bodies (flattened into them).
#[derive(Debug, Deserialize, Validate)]
#[serde(rename_all = "camelCase")]
pub(super) struct PatientBody {
    #[serde(default, deserialize_with = "present")]
    #[validate(
        required(message = "is required"),
        length(min = 1, max = PatientId::MAX_CHARS),
        custom(function = rules::is_string, message = "must be a string"),
        custom(function = rules::not_blank, message = "must not be blank"),
        custom(
            function = rules::no_control_characters,
            message = "must not contain control characters"
        )
    )]
    patient_id: Option<AnyJson>,
}

/// Checks `text` as a patientId.
pub(super) fn patient_id(text: &str) -> Result<PatientId, Vec<FieldError>> {
    let body = PatientBody {
        patient_id: Some(AnyJson(Value::String(text.to_owned()))),
    };
    body.validate()
        .map_err(|errors| field_errors(&errors, FIELD_NAMES))?;
    Ok(PatientId::from_validated(text.to_owned()))
}

/// The body of `POST /events`.
#[derive(Debug, Deserialize, Validate)]
#[serde(rename_all = "camelCase")]
pub(super) struct EventBody {
    /// `patientId`, under `PatientBody`'s rules. Declared before `unknown`:
    /// a flattened struct takes its keys out before the map sees the rest.
    #[serde(flatten)]
    #[validate(nested)]
    patient: PatientBody,

    #[serde(rename = "type", default, deserialize_with = "present")]
    #[validate(
        required(message = "is required"),
        length(min = 1, max = EventType::MAX_CHARS),
        custom(function = rules::is_string, message = "must be a string"),
        custom(function = rules::not_blank, message = "must not be blank"),
        custom(
            function = rules::no_control_characters,
            message = "must not contain control characters"
        )
    )]
    event_type: Option<AnyJson>,

    #[serde(default, deserialize_with = "present")]
    #[validate(
        required(message = "is required"),
        custom(function = rules::is_object, message = "must be a JSON object"),
        custom(function = rules::storable_data)
    )]
    data: Option<AnyJson>,

    #[serde(default, deserialize_with = "present")]
    #[validate(
        required(message = "is required"),
        custom(function = rules::is_string, message = "must be a string"),
        custom(function = rules::rfc3339_with_offset)
    )]
    ts: Option<AnyJson>,

    #[serde(flatten)]
    #[validate(custom(function = rules::no_unknown_fields))]
    unknown: Map<String, Value>,
}

/// The body of `POST /queue`: the event fields plus the id ingest gave it.
/// Unknown fields are the flattened event's: it gets every key but `eventId`.
#[derive(Debug, Deserialize, Validate)]
pub(super) struct QueueBody {
    #[serde(rename = "eventId", default, deserialize_with = "present")]
    #[validate(
        required(message = "is required"),
        custom(function = rules::is_string, message = "must be a string"),
        custom(function = rules::plain_uuid)
    )]
    event_id: Option<AnyJson>,

    #[serde(flatten)]
    #[validate(nested)]
    event: EventBody,
}

/// JSON names of the fields above, in the order the API has always
/// reported them: unknown fields first, then the declared fields.
const FIELD_NAMES: &FieldNames = &[
    // Its errors name each unknown field themselves; "$" (the body) is only
    // a fallback.
    ("unknown", "$"),
    ("event_id", "eventId"),
    ("patient_id", "patientId"),
    ("event_type", "type"),
    ("data", "data"),
    ("ts", "ts"),
];

/// A request body that passed its rules; only `read` makes one, so the
/// domain types below are built from validated values only.
pub(super) struct Validated<T>(T);

impl<T: Validate + for<'de> Deserialize<'de>> Validated<T> {
    /// Reads and validates a body, reporting every broken rule at once.
    pub(super) fn read(body: &Value) -> Result<Self, Vec<FieldError>> {
        Self::from_json(body.is_object(), body)
    }

    /// [`Validated::read`] of a body it takes over: its values are moved,
    /// not copied.
    pub(super) fn read_owned(body: Value) -> Result<Self, Vec<FieldError>> {
        Self::from_json(body.is_object(), body)
    }

    fn from_json<'de>(
        is_object: bool,
        body: impl serde::Deserializer<'de, Error = serde_json::Error>,
    ) -> Result<Self, Vec<FieldError>> {
        if !is_object {
            return Err(vec![FieldError::new("$", "the body must be a JSON object")]);
        }
        // Every field takes any JSON value, so reading an object cannot fail
        // on its content; say why if it ever does.
        let request = T::deserialize(body).map_err(|error| {
            vec![FieldError::new(
                "$",
                format!("the body could not be read: {error}"),
            )]
        })?;
        request
            .validate()
            .map_err(|errors| field_errors(&errors, FIELD_NAMES))?;
        Ok(Self(request))
    }
}

impl Validated<EventBody> {
    pub(super) fn into_event(self) -> Result<NewEvent, Vec<FieldError>> {
        into_event(self.0).map_err(|error| vec![error])
    }
}

impl Validated<QueueBody> {
    pub(super) fn into_parts(self) -> Result<(EventId, NewEvent), Vec<FieldError>> {
        let QueueBody { event_id, event } = self.0;
        let parts = text(event_id, "eventId")
            .and_then(|id| {
                EventId::parse_str(&id).map_err(|message| FieldError::new("eventId", message))
            })
            .and_then(|event_id| Ok((event_id, into_event(event)?)));
        parts.map_err(|error| vec![error])
    }
}

fn into_event(body: EventBody) -> Result<NewEvent, FieldError> {
    let ts = text(body.ts, "ts")?;
    Ok(NewEvent {
        patient_id: PatientId::from_validated(text(body.patient.patient_id, "patientId")?),
        event_type: EventType::from_validated(text(body.event_type, "type")?),
        data: EventData::from_validated(object(body.data, "data")?),
        ts: EventTime::parse_str(&ts).map_err(|message| FieldError::new("ts", message))?,
    })
}

// The two below cannot fail after `validate()`; should a rule ever be lost
// from the attributes, the request is refused rather than the server panicking.

fn text(value: Option<AnyJson>, field: &str) -> Result<String, FieldError> {
    match value {
        Some(AnyJson(Value::String(text))) => Ok(text),
        _ => Err(FieldError::new(
            field,
            "passed validation but is not a string",
        )),
    }
}

fn object(value: Option<AnyJson>, field: &str) -> Result<Map<String, Value>, FieldError> {
    match value {
        Some(AnyJson(Value::Object(object))) => Ok(object),
        _ => Err(FieldError::new(
            field,
            "passed validation but is not a JSON object",
        )),
    }
}
