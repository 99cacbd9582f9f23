//! The request rules as clients see them: every field path and message of a
//! 400, in the order the API reports them.

use serde_json::{Value, json};

use super::{FieldError, NewEvent, QueuedEventRequest};

const EVENT_ID: &str = "6f1c1e4e-6a43-4a38-9a4d-1f0f9e0c2b7a";

fn valid() -> Value {
    json!({
        "patientId": "patient-123",
        "type": "lab_result",
        "data": { "test": "glucose", "value": 5.4 },
        "ts": "2025-10-01T14:00:00.123456+02:00",
    })
}

fn with(field: &str, value: Value) -> Value {
    let mut body = valid();
    body[field] = value;
    body
}

fn errors(body: &Value) -> Vec<(String, String)> {
    NewEvent::parse(body)
        .expect_err("the body should be refused")
        .into_iter()
        .map(|FieldError { field, message }| (field, message))
        .collect()
}

fn queue_errors(body: &Value) -> Vec<(String, String)> {
    QueuedEventRequest::parse(body)
        .expect_err("the body should be refused")
        .into_iter()
        .map(|FieldError { field, message }| (field, message))
        .collect()
}

fn one(field: &str, message: &str) -> Vec<(String, String)> {
    vec![(field.to_owned(), message.to_owned())]
}

fn nested(depth: usize) -> Value {
    let mut value = json!(1);
    for _ in 0..depth {
        value = json!({ "k": value });
    }
    value
}

#[test]
fn a_valid_event_is_parsed_and_normalized() {
    let event = NewEvent::parse(&valid()).unwrap();
    assert_eq!(event.patient_id.as_str(), "patient-123");
    assert_eq!(event.event_type.as_str(), "lab_result");
    assert_eq!(event.ts.as_str(), "2025-10-01T12:00:00.123Z");
    assert_eq!(
        Value::Object(event.data.as_map().clone()),
        json!({ "test": "glucose", "value": 5.4 })
    );
}

#[test]
fn the_fingerprint_ignores_key_order_and_the_spelling_of_ts() {
    let a = NewEvent::parse(&valid()).unwrap();
    let mut other = with("data", json!({ "value": 5.4, "test": "glucose" }));
    other["ts"] = json!("2025-10-01T12:00:00.123Z");
    let b = NewEvent::parse(&other).unwrap();
    assert_eq!(a.fingerprint(), b.fingerprint());
    let c = NewEvent::parse(&with("type", json!("vital"))).unwrap();
    assert_ne!(a.fingerprint(), c.fingerprint());
}

#[test]
fn a_body_that_is_not_an_object_is_named_dollar() {
    for body in [json!([]), json!("event"), json!(null), json!(7)] {
        assert_eq!(
            errors(&body),
            one("$", "the body must be a JSON object"),
            "{body}"
        );
        assert_eq!(
            queue_errors(&body),
            one("$", "the body must be a JSON object"),
            "{body}"
        );
    }
}

#[test]
fn every_missing_field_is_required_in_field_order() {
    let expected: Vec<(String, String)> = ["patientId", "type", "data", "ts"]
        .into_iter()
        .map(|field| (field.to_owned(), "is required".to_owned()))
        .collect();
    assert_eq!(errors(&json!({})), expected);
}

#[test]
fn all_broken_rules_are_reported_at_once_unknown_fields_first() {
    let body = json!({ "patientId": "", "type": 1, "data": [], "extra": true, "more": 1 });
    assert_eq!(
        errors(&body),
        vec![
            ("extra".to_owned(), "unknown field".to_owned()),
            ("more".to_owned(), "unknown field".to_owned()),
            ("patientId".to_owned(), "must not be empty".to_owned()),
            ("type".to_owned(), "must be a string".to_owned()),
            ("data".to_owned(), "must be a JSON object".to_owned()),
            ("ts".to_owned(), "is required".to_owned()),
        ]
    );
}

#[test]
fn a_text_field_reports_the_first_rule_it_breaks() {
    let cases = [
        (json!(null), "must be a string"),
        (json!(42), "must be a string"),
        (json!({ "id": 1 }), "must be a string"),
        (json!(""), "must not be empty"),
        (
            json!("p".repeat(129)),
            "must be at most 128 characters (got 129)",
        ),
        // Too long wins over blank and control characters.
        (
            json!(" ".repeat(200)),
            "must be at most 128 characters (got 200)",
        ),
        (
            json!(format!("{}\n", "p".repeat(128))),
            "must be at most 128 characters (got 129)",
        ),
        (json!("   "), "must not be blank"),
        // A tab is a control character too, but blank is said first.
        (json!("\t "), "must not be blank"),
        (json!("p-1\n"), "must not contain control characters"),
        (json!("p\u{0}1"), "must not contain control characters"),
    ];
    for (value, message) in cases {
        assert_eq!(
            errors(&with("patientId", value.clone())),
            one("patientId", message),
            "{value}"
        );
    }
    assert_eq!(
        errors(&with("type", json!("t".repeat(65)))),
        one("type", "must be at most 64 characters (got 65)")
    );
    assert_eq!(
        errors(&with("type", json!(true))),
        one("type", "must be a string")
    );
}

#[test]
fn lengths_count_characters_not_bytes() {
    assert!(NewEvent::parse(&with("patientId", json!("é".repeat(128)))).is_ok());
    assert!(NewEvent::parse(&with("type", json!("患".repeat(64)))).is_ok());
}

#[test]
fn ts_needs_rfc3339_with_an_offset() {
    let message = "must be an RFC 3339 date-time with a timezone, e.g. 2025-10-01T12:00:00Z";
    for value in [
        "2025-10-01T12:00:00",
        "2025-10-01",
        "yesterday",
        "2025-02-30T12:00:00Z",
    ] {
        assert_eq!(
            errors(&with("ts", json!(value))),
            one("ts", message),
            "{value}"
        );
    }
    assert_eq!(
        errors(&with("ts", json!(1_700_000_000))),
        one("ts", "must be a string")
    );
}

#[test]
fn data_must_be_an_object() {
    for value in [json!(null), json!([1, 2]), json!("text"), json!(7)] {
        assert_eq!(
            errors(&with("data", value.clone())),
            one("data", "must be a JSON object"),
            "{value}"
        );
    }
}

#[test]
fn each_problem_in_data_is_named_by_its_own_path_in_document_order() {
    let body = with(
        "data",
        json!({
            "$where": "1",
            "a": { "$gt": 1, "ok": [1, { "$set": 1 }] },
            "b\u{0}c": 18_446_744_073_709_551_615_u64,
            "d": { "e\u{0}": 1, "f\u{0}": 2 },
        }),
    );
    assert_eq!(
        errors(&body),
        vec![
            (
                "data.$where".to_owned(),
                "keys must not start with '$'".to_owned()
            ),
            (
                "data.a.$gt".to_owned(),
                "keys must not start with '$'".to_owned()
            ),
            (
                "data.a.ok[1].$set".to_owned(),
                "keys must not start with '$'".to_owned()
            ),
            (
                "data".to_owned(),
                "keys must not contain NUL characters".to_owned()
            ),
            (
                "data.b\u{0}c".to_owned(),
                "integers must fit in a signed 64-bit integer".to_owned()
            ),
            (
                "data.d".to_owned(),
                "keys must not contain NUL characters".to_owned()
            ),
            (
                "data.d".to_owned(),
                "keys must not contain NUL characters".to_owned()
            ),
        ]
    );
}

#[test]
fn data_problems_come_with_the_other_fields_problems() {
    let mut body = with("data", json!({ "$x": 1 }));
    body["ts"] = json!("soon");
    body["patientId"] = json!(" ");
    assert_eq!(
        errors(&body),
        vec![
            ("patientId".to_owned(), "must not be blank".to_owned()),
            (
                "data.$x".to_owned(),
                "keys must not start with '$'".to_owned()
            ),
            (
                "ts".to_owned(),
                "must be an RFC 3339 date-time with a timezone, e.g. 2025-10-01T12:00:00Z"
                    .to_owned()
            ),
        ]
    );
}

#[test]
fn data_may_nest_32_levels_and_no_deeper() {
    assert!(NewEvent::parse(&with("data", nested(32))).is_ok());
    let path = format!("data{}", ".k".repeat(32));
    assert_eq!(
        errors(&with("data", nested(33))),
        one(&path, "nesting is deeper than 32 levels")
    );
    // Nothing below the limit is inspected: one error, not one per level.
    let mut deep = json!({ "$deeper": 1 });
    for _ in 0..40 {
        deep = json!({ "k": deep });
    }
    assert_eq!(
        errors(&with("data", deep)),
        one(&path, "nesting is deeper than 32 levels")
    );
    // Arrays count as levels too.
    let mut in_arrays = json!(1);
    for _ in 0..32 {
        in_arrays = json!([in_arrays]);
    }
    assert_eq!(
        errors(&with("data", json!({ "a": in_arrays }))),
        one(
            &format!("data.a{}", "[0]".repeat(31)),
            "nesting is deeper than 32 levels"
        )
    );
}

#[test]
fn data_integers_must_fit_i64_and_floats_are_fine() {
    let accepted = json!({ "min": i64::MIN, "max": i64::MAX, "f": 1.5e300, "neg": -1 });
    assert!(NewEvent::parse(&with("data", accepted)).is_ok());
    assert_eq!(
        errors(&with("data", json!({ "big": u64::MAX }))),
        one("data.big", "integers must fit in a signed 64-bit integer")
    );
}

#[test]
fn a_queued_event_carries_its_event_id() {
    let mut body = valid();
    body["eventId"] = json!(EVENT_ID);
    let request = QueuedEventRequest::parse(&body).unwrap();
    assert_eq!(request.event_id.to_string(), EVENT_ID);
    assert_eq!(request.event, NewEvent::parse(&valid()).unwrap());
}

#[test]
fn event_id_is_an_unknown_field_of_post_events() {
    assert_eq!(
        errors(&with("eventId", json!(EVENT_ID))),
        one("eventId", "unknown field")
    );
}

#[test]
fn a_queued_event_needs_a_plain_uuid() {
    let uuid = "must be a UUID like 123e4567-e89b-12d3-a456-426614174000";
    assert_eq!(queue_errors(&valid()), one("eventId", "is required"));
    let cases = [
        (json!(7), "must be a string"),
        (json!(null), "must be a string"),
        (json!("not-a-uuid"), uuid),
        (json!(format!("{{{EVENT_ID}}}")), uuid),
        (json!(format!("urn:uuid:{EVENT_ID}")), uuid),
        (json!(EVENT_ID.replace('-', "")), uuid),
    ];
    for (value, message) in cases {
        let mut body = valid();
        body["eventId"] = value.clone();
        assert_eq!(queue_errors(&body), one("eventId", message), "{value}");
    }
}

#[test]
fn a_queued_event_reports_unknown_fields_then_event_id_then_the_event() {
    let body = json!({ "extra": 1, "eventId": "x", "patientId": "p", "type": "t", "data": {} });
    assert_eq!(
        queue_errors(&body),
        vec![
            ("extra".to_owned(), "unknown field".to_owned()),
            (
                "eventId".to_owned(),
                "must be a UUID like 123e4567-e89b-12d3-a456-426614174000".to_owned()
            ),
            ("ts".to_owned(), "is required".to_owned()),
        ]
    );
}

#[test]
fn keys_named_like_the_rust_fields_are_unknown_fields() {
    let mut body = valid();
    for key in ["patient_id", "event_type", "unknown", "event", "event_id"] {
        body[key] = json!(1);
    }
    let expected: Vec<(String, String)> =
        ["patient_id", "event_type", "unknown", "event", "event_id"]
            .into_iter()
            .map(|key| (key.to_owned(), "unknown field".to_owned()))
            .collect();
    assert_eq!(errors(&body), expected);
    body["eventId"] = json!(EVENT_ID);
    assert_eq!(queue_errors(&body), expected);
}

/// The digest is written straight into the hasher now (no copy of `data`),
/// and is still the digest of the text earlier versions hashed, so keys
/// and hashes stored by them keep matching.
#[test]
fn the_fingerprint_is_the_digest_earlier_versions_stored() {
    use sha2::{Digest, Sha256};
    let body = with(
        "data",
        json!({"z": [1, {"b": "é\"\\", "a": null}], "a": 1.5, "m": {"y": true, "x": -3}}),
    );
    let event = NewEvent::parse(&body).unwrap();
    let earlier = json!({
        "patientId": event.patient_id.as_str(),
        "type": event.event_type.as_str(),
        "ts": event.ts.as_str(),
        "data": super::data::canonical(&Value::Object(event.data.as_map().clone())),
    });
    let earlier = format!("{:x}", Sha256::digest(earlier.to_string().as_bytes()));
    assert_eq!(event.fingerprint(), earlier);
    assert_eq!(NewEvent::parse_owned(body).unwrap().fingerprint(), earlier);
}
