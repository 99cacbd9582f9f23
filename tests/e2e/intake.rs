//! Intake guarantees: per-patient sequence numbers without gaps or
//! duplicates under concurrency (also across ingest instances), and
//! Idempotency-Key semantics.

use std::collections::HashSet;

use crate::support::checks::Db;
use crate::support::{InProcessIngest, event_body, fresh_database_uri};
use futures_util::future::join_all;
use mongodb::bson::doc;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn post(
    client: &reqwest::Client,
    url: &str,
    body: &Value,
    key: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = client.post(format!("{url}/events")).json(body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

async fn seqs_of(db: &Db, patient: &str) -> Vec<i64> {
    db.find(
        "queued_events",
        doc! { "patientId": patient },
        doc! { "seq": 1 },
    )
    .await
    .iter()
    .map(|d| d.get_i64("seq").unwrap())
    .collect()
}

#[tokio::test]
async fn fifty_concurrent_posts_for_one_patient_get_consecutive_sequence_numbers() {
    let uri = fresh_database_uri();
    let ingest = InProcessIngest::start(&uri, "http://127.0.0.1:9").await;
    let client = crate::support::client();
    let results = join_all((0..50).map(|n| {
        let client = client.clone();
        let url = ingest.url.clone();
        async move { post(&client, &url, &event_body("hot-patient", n), None).await }
    }))
    .await;
    assert!(
        results
            .iter()
            .all(|(status, _)| *status == StatusCode::ACCEPTED)
    );
    let db = Db::connect(&uri).await;
    assert_eq!(
        seqs_of(&db, "hot-patient").await,
        (1..=50).collect::<Vec<i64>>()
    );
}

#[tokio::test]
async fn two_ingest_instances_share_one_gapless_sequence_per_patient() {
    let uri = fresh_database_uri();
    let first = InProcessIngest::start(&uri, "http://127.0.0.1:9").await;
    let second = InProcessIngest::start(&uri, "http://127.0.0.1:9").await;
    let client = crate::support::client();
    let results = join_all((0..40).map(|n| {
        let client = client.clone();
        let url = if n % 2 == 0 {
            first.url.clone()
        } else {
            second.url.clone()
        };
        let patient = if n % 4 < 2 { "shared-a" } else { "shared-b" };
        async move { post(&client, &url, &event_body(patient, n), None).await }
    }))
    .await;
    assert!(
        results
            .iter()
            .all(|(status, _)| *status == StatusCode::ACCEPTED)
    );
    let db = Db::connect(&uri).await;
    assert_eq!(
        seqs_of(&db, "shared-a").await,
        (1..=20).collect::<Vec<i64>>()
    );
    assert_eq!(
        seqs_of(&db, "shared-b").await,
        (1..=20).collect::<Vec<i64>>()
    );
}

#[tokio::test]
async fn sequence_follows_the_order_of_the_202s() {
    let uri = fresh_database_uri();
    let ingest = InProcessIngest::start(&uri, "http://127.0.0.1:9").await;
    let client = crate::support::client();
    let mut ids = Vec::new();
    for n in 0..5 {
        let (_, body) = post(&client, &ingest.url, &event_body("ordered", n), None).await;
        ids.push(body["eventId"].as_str().unwrap().to_owned());
    }
    let db = Db::connect(&uri).await;
    let stored: Vec<String> = db
        .find(
            "queued_events",
            doc! { "patientId": "ordered" },
            doc! { "seq": 1 },
        )
        .await
        .iter()
        .map(|d| d.get_str("eventId").unwrap().to_owned())
        .collect();
    assert_eq!(stored, ids);
}

#[tokio::test]
async fn a_retry_with_the_same_key_and_payload_returns_the_same_event() {
    let uri = fresh_database_uri();
    let ingest = InProcessIngest::start(&uri, "http://127.0.0.1:9").await;
    let client = crate::support::client();
    let body = json!({
        "patientId": "p-1", "type": "vitals", "ts": "2025-10-01T14:00:00+02:00",
        "data": { "hr": 72, "bp": { "sys": 120, "dia": 80 } },
    });
    // Same meaning, different spelling: key order and the offset of ts.
    let respelled = json!({
        "ts": "2025-10-01T12:00:00.000Z", "type": "vitals", "patientId": "p-1",
        "data": { "bp": { "dia": 80, "sys": 120 }, "hr": 72 },
    });
    let (first_status, first) = post(&client, &ingest.url, &body, Some("retry-1")).await;
    let (second_status, second) = post(&client, &ingest.url, &respelled, Some("retry-1")).await;
    assert_eq!(first_status, StatusCode::ACCEPTED);
    assert_eq!(second_status, StatusCode::ACCEPTED);
    assert_eq!(first, second, "a replay must return the same body");
    let db = Db::connect(&uri).await;
    assert_eq!(db.count("queued_events", doc! {}).await, 1);

    // A different key is a different event, even with the same payload.
    let (status, other) = post(&client, &ingest.url, &body, Some("retry-2")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_ne!(other["eventId"], first["eventId"]);
    assert_eq!(db.count("queued_events", doc! {}).await, 2);
}

#[tokio::test]
async fn the_same_key_with_a_different_payload_is_422_and_stores_nothing() {
    let uri = fresh_database_uri();
    let ingest = InProcessIngest::start(&uri, "http://127.0.0.1:9").await;
    let client = crate::support::client();
    let (status, _) = post(&client, &ingest.url, &event_body("p-1", 1), Some("k")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, problem) = post(&client, &ingest.url, &event_body("p-1", 2), Some("k")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key")
    );
    let db = Db::connect(&uri).await;
    assert_eq!(db.count("queued_events", doc! {}).await, 1);
}

#[tokio::test]
async fn concurrent_requests_with_one_key_create_exactly_one_event() {
    let uri = fresh_database_uri();
    let first = InProcessIngest::start(&uri, "http://127.0.0.1:9").await;
    let second = InProcessIngest::start(&uri, "http://127.0.0.1:9").await;
    let client = crate::support::client();
    let body = event_body("p-concurrent", 1);
    let results = join_all((0..20).map(|n| {
        let client = client.clone();
        let url = if n % 2 == 0 {
            first.url.clone()
        } else {
            second.url.clone()
        };
        let body = body.clone();
        async move { post(&client, &url, &body, Some("one-key")).await }
    }))
    .await;
    let ids: HashSet<String> = results
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, StatusCode::ACCEPTED, "{body}");
            body["eventId"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1, "all requests must get the same eventId");
    let db = Db::connect(&uri).await;
    assert_eq!(db.count("queued_events", doc! {}).await, 1);
    assert_eq!(seqs_of(&db, "p-concurrent").await, vec![1]);
}
