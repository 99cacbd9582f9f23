//! The ingest API's contract at the edge: every bad input is a 4xx
//! problem+json naming what is wrong, and nothing is stored for it.

use crate::support::checks::Db;
use crate::support::{InProcessIngest, fresh_database_uri};
use mongodb::bson::doc;
use reqwest::StatusCode;
use serde_json::{Value, json};

struct Case {
    name: &'static str,
    body: String,
    field: &'static str,
}

fn valid() -> Value {
    json!({
        "patientId": "patient-123",
        "type": "lab_result",
        "data": { "test": "glucose", "value": 5.4 },
        "ts": "2025-10-01T12:00:00Z",
    })
}

fn with(field: &str, value: Value) -> String {
    let mut body = valid();
    body[field] = value;
    body.to_string()
}

fn without(field: &str) -> String {
    let mut body = valid();
    body.as_object_mut().unwrap().remove(field);
    body.to_string()
}

fn nested(depth: usize) -> Value {
    let mut value = json!(1);
    for _ in 0..depth {
        value = json!({ "k": value });
    }
    value
}

fn case(name: &'static str, body: String, field: &'static str) -> Case {
    Case { name, body, field }
}

fn rejected_cases() -> Vec<Case> {
    vec![
        case("patientId missing", without("patientId"), "patientId"),
        case("patientId null", with("patientId", json!(null)), "patientId"),
        case("patientId number", with("patientId", json!(42)), "patientId"),
        case("patientId empty", with("patientId", json!("")), "patientId"),
        case("patientId blank", with("patientId", json!("   ")), "patientId"),
        case("patientId 129 chars", with("patientId", json!("p".repeat(129))), "patientId"),
        case("patientId newline", with("patientId", json!("p-1\n")), "patientId"),
        case("patientId NUL", with("patientId", json!("p\u{0}1")), "patientId"),
        case("patientId object", with("patientId", json!({"id": 1})), "patientId"),
        case("type missing", without("type"), "type"),
        case("type empty", with("type", json!("")), "type"),
        case("type blank", with("type", json!("\t ")), "type"),
        case("type 65 chars", with("type", json!("t".repeat(65))), "type"),
        case("type boolean", with("type", json!(true)), "type"),
        case("data missing", without("data"), "data"),
        case("data null", with("data", json!(null)), "data"),
        case("data array", with("data", json!([1, 2])), "data"),
        case("data string", with("data", json!("text")), "data"),
        case("data number", with("data", json!(7)), "data"),
        case("data $ key", with("data", json!({"$where": "1"})), "data.$where"),
        case("data nested $ key", with("data", json!({"a": {"$gt": 1}})), "data.a.$gt"),
        case("data $ key in array", with("data", json!({"a": [{"$set": 1}]})), "data.a[0].$set"),
        case("data 33 levels", with("data", nested(33)), "data.k.k.k.k.k.k.k.k.k.k.k.k.k.k.k.k.k.k.k.k.k.k.k.k.k.k.k.k.k.k.k.k"),
        case("data NUL in key", with("data", json!({"a\u{0}b": 1})), "data"),
        case("data integer over i64", r#"{"patientId":"p","type":"t","ts":"2025-10-01T12:00:00Z","data":{"big":18446744073709551615}}"#.to_owned(), "data.big"),
        case("ts missing", without("ts"), "ts"),
        case("ts no timezone", with("ts", json!("2025-10-01T12:00:00")), "ts"),
        case("ts date only", with("ts", json!("2025-10-01")), "ts"),
        case("ts not a date", with("ts", json!("yesterday")), "ts"),
        case("ts impossible date", with("ts", json!("2025-02-30T12:00:00Z")), "ts"),
        case("ts epoch number", with("ts", json!(1_700_000_000)), "ts"),
        case("unknown field", with("eventId", json!("6f1c1e4e-6a43-4a38-9a4d-1f0f9e0c2b7a")), "eventId"),
        case("body is an array", "[]".to_owned(), "$"),
        case("body is a string", "\"event\"".to_owned(), "$"),
    ]
}

#[tokio::test]
async fn every_invalid_event_is_a_400_naming_the_field_and_nothing_is_stored() {
    let uri = fresh_database_uri();
    let ingest = InProcessIngest::start(&uri, "http://127.0.0.1:9").await;
    let client = crate::support::client();
    let cases = rejected_cases();
    assert!(cases.len() >= 30);
    for case in &cases {
        let response = client
            .post(format!("{}/events", ingest.url))
            .header("content-type", "application/json")
            .body(case.body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::BAD_REQUEST,
            "case {:?}",
            case.name
        );
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "case {:?}",
            case.name
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["status"], 400, "case {:?}", case.name);
        let fields: Vec<&str> = problem["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("case {:?}: no errors array in {problem}", case.name))
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert!(
            fields.contains(&case.field),
            "case {:?}: expected an error on {:?}, got {problem}",
            case.name,
            case.field
        );
    }
    let db = Db::connect(&uri).await;
    assert_eq!(
        db.count("queued_events", doc! {}).await,
        0,
        "a rejected event was stored"
    );
}

#[tokio::test]
async fn all_broken_rules_are_reported_at_once() {
    let ingest = InProcessIngest::start(&fresh_database_uri(), "http://127.0.0.1:9").await;
    let response = crate::support::client()
        .post(format!("{}/events", ingest.url))
        .json(&json!({ "patientId": "", "type": 1, "data": [], "extra": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let problem: Value = response.json().await.unwrap();
    let mut fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    fields.sort();
    assert_eq!(fields, ["data", "extra", "patientId", "ts", "type"]);
}

#[tokio::test]
async fn edge_values_that_are_valid_are_accepted_and_normalized() {
    let uri = fresh_database_uri();
    let ingest = InProcessIngest::start(&uri, "http://127.0.0.1:9").await;
    let client = crate::support::client();
    let accepted = [
        with("patientId", json!("p".repeat(128))),
        with("patientId", json!("Ünïcødé-患者")),
        with("type", json!("t".repeat(64))),
        with("data", json!({})),
        with("data", nested(32)),
        with(
            "data",
            json!({"list": [1, "two", null, {"x": -9223372036854775808_i64}], "dotted.key": 1.5}),
        ),
        with("ts", json!("2025-10-01T14:00:00.123456+02:00")),
    ];
    for body in accepted {
        let response = client
            .post(format!("{}/events", ingest.url))
            .header("content-type", "application/json; charset=utf-8")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED, "body {body}");
    }
    let db = Db::connect(&uri).await;
    let offset = db
        .find(
            "queued_events",
            doc! { "ts": "2025-10-01T12:00:00.123Z" },
            doc! {},
        )
        .await;
    assert_eq!(
        offset.len(),
        1,
        "ts must be stored in UTC with milliseconds"
    );
}

#[tokio::test]
async fn accepted_event_answers_202_with_its_id_and_location() {
    let uri = fresh_database_uri();
    let ingest = InProcessIngest::start(&uri, "http://127.0.0.1:9").await;
    let response = crate::support::client()
        .post(format!("{}/events", ingest.url))
        .json(&valid())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "queued");
    let event_id = body["eventId"].as_str().unwrap();
    assert_eq!(location, format!("/events/{event_id}"));
    uuid::Uuid::parse_str(event_id).expect("eventId is a UUID");

    // Durable before the 202: the queued document is already there.
    let db = Db::connect(&uri).await;
    let stored = db
        .find("queued_events", doc! { "eventId": event_id }, doc! {})
        .await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].get_str("status").unwrap(), "queued");
    assert_eq!(stored[0].get_i64("seq").unwrap(), 1);
    assert_eq!(stored[0].get_str("ts").unwrap(), "2025-10-01T12:00:00.000Z");

    let status: Value = crate::support::client()
        .get(format!("{}{location}", ingest.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["eventId"], event_id);
    assert_eq!(status["status"], "queued");
    assert_eq!(status["attempts"], 0);
    assert!(
        status.get("data").is_none(),
        "the status view must not echo clinical data"
    );
}

#[tokio::test]
async fn transport_level_errors_are_problem_json_too() {
    let ingest = InProcessIngest::start(&fresh_database_uri(), "http://127.0.0.1:9").await;
    let client = crate::support::client();
    let url = format!("{}/events", ingest.url);

    let cases: Vec<(&str, reqwest::RequestBuilder, StatusCode)> = vec![
        ("malformed JSON", client.post(&url).header("content-type", "application/json").body("{\"patientId\":"), StatusCode::BAD_REQUEST),
        ("empty body", client.post(&url).header("content-type", "application/json"), StatusCode::BAD_REQUEST),
        ("no content type", client.post(&url).body(valid().to_string()), StatusCode::UNSUPPORTED_MEDIA_TYPE),
        ("text/plain", client.post(&url).header("content-type", "text/plain").body(valid().to_string()), StatusCode::UNSUPPORTED_MEDIA_TYPE),
        ("form", client.post(&url).form(&[("patientId", "p")]), StatusCode::UNSUPPORTED_MEDIA_TYPE),
        (
            "body over 1 MiB",
            client.post(&url).header("content-type", "application/json").body(
                json!({"patientId": "p", "type": "t", "ts": "2025-10-01T12:00:00Z", "data": {"blob": "x".repeat(1024 * 1024)}}).to_string(),
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        ("bad idempotency key", client.post(&url).header("idempotency-key", "k".repeat(256)).json(&valid()), StatusCode::BAD_REQUEST),
        ("GET /events/not-a-uuid", client.get(format!("{}/events/not-a-uuid", ingest.url)), StatusCode::BAD_REQUEST),
        ("GET unknown event", client.get(format!("{}/events/{}", ingest.url, uuid::Uuid::new_v4())), StatusCode::NOT_FOUND),
        ("unknown route", client.get(format!("{}/nope", ingest.url)), StatusCode::NOT_FOUND),
        ("wrong method", client.delete(&url), StatusCode::METHOD_NOT_ALLOWED),
    ];
    for (name, request, expected) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), expected, "case {name:?}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "case {name:?}"
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["status"], expected.as_u16(), "case {name:?}");
        assert!(
            problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "case {name:?}"
        );
    }
}

/// A key given twice is ambiguous: a gateway that reads the first value and
/// this service reading the last would disagree about whose event it is.
#[tokio::test]
async fn a_key_given_twice_is_a_400_naming_it_and_nothing_is_stored() {
    let uri = fresh_database_uri();
    let ingest = InProcessIngest::start(&uri, "http://127.0.0.1:9").await;
    let db = Db::connect(&uri).await;
    let client = crate::support::client();
    for (body, key) in [
        (
            r#"{"patientId":"dup-1","patientId":"dup-2","type":"t","ts":"2025-10-01T12:00:00Z","data":{}}"#,
            "patientId",
        ),
        (
            r#"{"patientId":"dup-1","type":"t","ts":"2025-10-01T12:00:00Z","data":{"v":{"x":1,"\u0078":2}}}"#,
            "x",
        ),
    ] {
        let response = client
            .post(format!("{}/events", ingest.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let problem: Value = response.json().await.unwrap();
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains(&format!("duplicate key `{key}`")),
            "{detail}"
        );
    }
    assert_eq!(db.count("queued_events", doc! {}).await, 0);
}

#[tokio::test]
async fn health_and_readiness() {
    let ingest = InProcessIngest::start(&fresh_database_uri(), "http://127.0.0.1:9").await;
    let health: Value = crate::support::client()
        .get(format!("{}/health", ingest.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health, json!({"status": "ok", "service": "ingest-service"}));
    let ready = crate::support::client()
        .get(format!("{}/ready", ingest.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
}

#[tokio::test]
async fn indexes_of_the_original_exist_after_start_up() {
    let uri = fresh_database_uri();
    let _ingest = InProcessIngest::start(&uri, "http://127.0.0.1:9").await;
    let db = Db::connect(&uri).await;
    let processed = db.index_names("processed_events").await;
    for index in ["eventId_1", "patientId_1", "patientId_1_ts_1"] {
        assert!(
            processed.contains(&index.to_owned()),
            "missing {index} in {processed:?}"
        );
    }
    // The shard-ready twin of the eventId guarantee.
    assert!(processed.contains(&"bucket_eventId".to_owned()));
    // A client's replay of the outcome stream.
    assert!(processed.contains(&"client_processedAt_eventId".to_owned()));
    let mut queued = db.index_names("queued_events").await;
    queued.sort();
    assert_eq!(
        queued,
        [
            "_id_",
            "patient_intake_key",
            "patient_seq",
            "pending_audit",
            "source_control_id",
            "status_bucket_patient_seq"
        ],
        "queued_events keeps exactly the indexes its guarantees and hot queries need"
    );
}

#[tokio::test]
async fn the_outcome_time_index_of_earlier_versions_is_replaced_at_start_up() {
    let uri = fresh_database_uri();
    let db = Db::connect(&uri).await;
    let earlier = mongodb::IndexModel::builder()
        .keys(mongodb::bson::doc! { "processedAt": 1 })
        .options(
            mongodb::options::IndexOptions::builder()
                .name("processedAt_1".to_owned())
                .build(),
        )
        .build();
    mongodb::Client::with_uri_str(&uri)
        .await
        .unwrap()
        .default_database()
        .unwrap()
        .collection::<mongodb::bson::Document>("processed_events")
        .create_index(earlier)
        .await
        .unwrap();
    let _ingest = InProcessIngest::start(&uri, "http://127.0.0.1:9").await;
    let processed = db.index_names("processed_events").await;
    assert!(
        processed.contains(&"processedAt_eventId".to_owned()),
        "{processed:?}"
    );
    assert!(
        !processed.contains(&"processedAt_1".to_owned()),
        "{processed:?}"
    );
}

/// A response read off a raw HTTP/1.1 connection.
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
}

impl RawResponse {
    /// Whether the server said it closes the connection after this response.
    fn announces_close(&self) -> bool {
        self.headers.iter().any(|(name, value)| {
            name.eq_ignore_ascii_case("connection")
                && value
                    .split(',')
                    .any(|token| token.trim().eq_ignore_ascii_case("close"))
        })
    }
}

/// Writes one request (head and body at once, as a client does that does
/// not wait for `100 Continue`) while reading the response, on a connection
/// that may be reused afterwards. `None`: the server closed the connection
/// without answering.
async fn exchange(
    stream: &mut tokio::net::TcpStream,
    head: &str,
    body: &[u8],
) -> Option<RawResponse> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut reader, mut writer) = stream.split();
    let write = async {
        // The server may answer early and close: a failed write is its right.
        let _ = writer.write_all(head.as_bytes()).await;
        let _ = writer.write_all(body).await;
    };
    let read = async {
        let mut received = Vec::new();
        let mut chunk = [0u8; 4096];
        let header_end = loop {
            if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        };
        let text = String::from_utf8_lossy(&received[..header_end]).into_owned();
        let mut lines = text.split("\r\n");
        let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, value)| value.parse().ok())
            .expect("responses here carry Content-Length");
        while received.len() < header_end + length {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
        Some(RawResponse { status, headers })
    };
    let ((), response) = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        tokio::join!(write, read)
    })
    .await
    .expect("an answer within 10 s");
    response
}

fn post_head(authorization: Option<&str>, content_type: &str, length: usize) -> String {
    let authorization = authorization
        .map(|key| format!("Authorization: Bearer {key}\r\n"))
        .unwrap_or_default();
    format!(
        "POST /events HTTP/1.1\r\nHost: ingest\r\n{authorization}Content-Type: {content_type}\r\n\
         Content-Length: {length}\r\n\r\n"
    )
}

#[tokio::test]
async fn a_keep_alive_client_is_told_when_an_early_answer_closes_the_connection() {
    let uri = fresh_database_uri();
    let ingest = InProcessIngest::start(&uri, "http://127.0.0.1:9").await;
    let address = ingest.url.trim_start_matches("http://").to_owned();
    let large = json!({"patientId": "p-large", "type": "t", "ts": "2025-10-01T12:00:00Z",
        "data": {"blob": "x".repeat(2 * 1024 * 1024)}})
    .to_string();
    let small = valid().to_string();
    // Answers given before the body was read, or before all of it was.
    let cases: [(&str, Option<&str>, &str, &str, u16); 5] = [
        (
            "a body over 1 MiB",
            Some(crate::support::API_KEY),
            "application/json",
            &large,
            413,
        ),
        (
            "no API key, large body",
            None,
            "application/json",
            &large,
            401,
        ),
        (
            "no API key, small body",
            None,
            "application/json",
            &small,
            401,
        ),
        (
            "text/plain, large body",
            Some(crate::support::API_KEY),
            "text/plain",
            &large,
            415,
        ),
        (
            "text/plain, small body",
            Some(crate::support::API_KEY),
            "text/plain",
            &small,
            415,
        ),
    ];
    for (n, (name, key, content_type, body, expected)) in cases.into_iter().enumerate() {
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        let head = post_head(key, content_type, body.len());
        let refused = exchange(&mut stream, &head, body.as_bytes())
            .await
            .unwrap_or_else(|| panic!("{name}: no answer"));
        assert_eq!(refused.status, expected, "{name}");

        // A keep-alive client reuses the connection unless told otherwise;
        // told, it opens a new one. Either way the next request succeeds.
        if refused.announces_close() {
            use tokio::io::AsyncReadExt;
            let mut rest = Vec::new();
            let closed = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                stream.read_to_end(&mut rest),
            )
            .await;
            assert!(
                closed.is_ok() && rest.is_empty(),
                "{name}: announced Connection: close but kept the connection"
            );
            stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        }
        let event = json!({"patientId": format!("p-next-{n}"), "type": "t",
            "ts": "2025-10-01T12:00:00Z", "data": {}})
        .to_string();
        let head = post_head(
            Some(crate::support::API_KEY),
            "application/json",
            event.len(),
        );
        let next = exchange(&mut stream, &head, event.as_bytes())
            .await
            .unwrap_or_else(|| {
                panic!("{name}: the server closed the connection without saying Connection: close")
            });
        assert_eq!(next.status, 202, "{name}: the request after it");
    }
    // What was stored: the five requests that followed, nothing refused.
    let db = Db::connect(&uri).await;
    assert_eq!(db.count("queued_events", doc! {}).await, 5);
    assert_eq!(
        db.count(
            "queued_events",
            doc! { "patientId": { "$regex": "^p-next-" } }
        )
        .await,
        5
    );
}
