//! The request bodies as the OpenAPI documents describe them. `request.rs`
//! parses them field by field as raw JSON (so that every broken rule is
//! reported at once, wrong types and unknown fields included), which no
//! schema can be derived from; these types only describe them, and a test
//! below keeps their fields and limits equal to what the parser enforces.

use serde::Deserialize;
use utoipa::ToSchema;

/// A clinical event as sent to `POST /events`. Besides the limits below:
/// `patientId` and `type` must not be blank or contain control characters;
/// `data` must nest at most 32 levels, have no key starting with `$` or
/// containing NUL, and hold integers within signed 64 bits.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schema(as = EventBody)]
#[allow(dead_code)] // documentation only: see the module comment
pub struct EventBodySchema {
    #[schema(min_length = 1, max_length = 128, example = "patient-123")]
    patient_id: String,
    #[serde(rename = "type")]
    #[schema(min_length = 1, max_length = 64, example = "lab_result")]
    event_type: String,
    #[schema(value_type = Object, example = json!({"test": "glucose", "value": 5.4}))]
    data: serde_json::Value,
    /// RFC 3339 with a timezone; stored as UTC with milliseconds.
    #[schema(format = DateTime, example = "2025-10-01T14:00:00+02:00")]
    ts: String,
}

/// `POST /queue`: an event with the id ingest gave it.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = QueueBody)]
#[allow(dead_code)] // documentation only: see the module comment
pub struct QueueBodySchema {
    #[serde(rename = "eventId")]
    #[schema(format = Uuid)]
    event_id: String,
    #[serde(rename = "patientId")]
    #[schema(min_length = 1, max_length = 128)]
    patient_id: String,
    #[serde(rename = "type")]
    #[schema(min_length = 1, max_length = 64)]
    event_type: String,
    #[schema(value_type = Object)]
    data: serde_json::Value,
    #[schema(format = DateTime)]
    ts: String,
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use utoipa::PartialSchema;

    use super::*;
    use crate::event::{EventType, NewEvent, PatientId, QueuedEventRequest};

    /// The properties a schema declares, with their `maxLength` if any.
    fn properties(schema: &utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>) -> Value {
        let schema = serde_json::to_value(schema).unwrap();
        let mut fields = serde_json::Map::new();
        for (name, property) in schema["properties"].as_object().unwrap() {
            fields.insert(name.clone(), property["maxLength"].clone());
        }
        Value::Object(fields)
    }

    #[test]
    fn the_documented_event_body_is_the_one_the_parser_takes() {
        assert_eq!(
            properties(&EventBodySchema::schema()),
            json!({
                "patientId": PatientId::MAX_CHARS,
                "type": EventType::MAX_CHARS,
                "data": null,
                "ts": null,
            })
        );
        let body = json!({"patientId": "p", "type": "t", "data": {}, "ts": "2025-10-01T12:00:00Z"});
        assert!(NewEvent::parse(&body).is_ok());
        let mut extra = body.clone();
        extra["more"] = json!(1);
        assert!(
            NewEvent::parse(&extra).is_err(),
            "unknown fields are refused"
        );
    }

    #[test]
    fn the_documented_queue_body_is_the_one_the_parser_takes() {
        assert_eq!(
            properties(&QueueBodySchema::schema()),
            json!({
                "eventId": null,
                "patientId": PatientId::MAX_CHARS,
                "type": EventType::MAX_CHARS,
                "data": null,
                "ts": null,
            })
        );
        let body = json!({
            "eventId": "6f1c1e4e-6a43-4a38-9a4d-1f0f9e0c2b7a",
            "patientId": "p", "type": "t", "data": {}, "ts": "2025-10-01T12:00:00Z",
        });
        assert!(QueuedEventRequest::parse(&body).is_ok());
    }
}
