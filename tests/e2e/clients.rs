//! Each API client is its own scope.
//!
//! Every stored event records the client whose key sent it. An
//! `Idempotency-Key` and keyless duplicate detection are scoped per client
//! (and patient): two clients never replay each other's events, one client's
//! retry always replays its own. `GET /events/{id}` shows a client its own
//! events only (another client's is `404`, as if it did not exist); an
//! operator key (`ADMIN_API_KEYS`) sees every event. Concurrent identical
//! requests store one event, also through two ingest instances.

use std::collections::HashSet;

use crate::support::checks::Db;
use crate::support::{ADMIN_KEY, InProcessIngest, fresh_database_uri, post_event};
use futures_util::future::join_all;
use medical_events::auth::{Access, Credential};
use mongodb::bson::Document;
use reqwest::StatusCode;
use serde_json::{Value, json};

const LAB_A: (&str, &str) = ("lab-a", "lab-a-key-0123456789");
const LAB_B: (&str, &str) = ("lab-b", "lab-b-key-0123456789");

/// Ingest on `uri` accepting the keys of both labs (and the operator's).
async fn ingest_for_two_labs(uri: &str) -> InProcessIngest {
    let mut config = InProcessIngest::config(uri, "http://127.0.0.1:9");
    config.access = Access::Required(vec![
        Credential::named(LAB_A.0, LAB_A.1),
        Credential::named(LAB_B.0, LAB_B.1),
    ]);
    InProcessIngest::start_with(config).await
}

fn as_client(key: &str) -> reqwest::Client {
    crate::support::client_with_token(key).build().unwrap()
}

fn event(patient: &str, value: f64) -> Value {
    json!({
        "patientId": patient,
        "type": "lab_result",
        "ts": "2025-10-01T12:00:00Z",
        "data": { "test": "glucose", "value": value },
    })
}

/// `(eventId, client)` of each stored event, in sequence order.
fn owners(events: &[Document]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|d| {
            (
                d.get_str("eventId").unwrap().to_owned(),
                d.get_str("client").unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn one_idempotency_key_from_two_clients_is_two_events() {
    let uri = fresh_database_uri();
    let ingest = ingest_for_two_labs(&uri).await;
    // The same key, different payloads: each lab's own event, no 422.
    let a = post_event(
        &as_client(LAB_A.1),
        &ingest.url,
        &event("p-1", 5.4),
        Some("order-7"),
    )
    .await;
    let b = post_event(
        &as_client(LAB_B.1),
        &ingest.url,
        &event("p-1", 6.1),
        Some("order-7"),
    )
    .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(b.status, StatusCode::ACCEPTED, "{}", b.body);
    assert!(!b.replayed);
    assert_ne!(a.body["eventId"], b.body["eventId"]);
    let db = Db::connect(&uri).await;
    assert_eq!(
        owners(&db.events_of("p-1").await),
        vec![
            (
                a.body["eventId"].as_str().unwrap().to_owned(),
                LAB_A.0.to_owned()
            ),
            (
                b.body["eventId"].as_str().unwrap().to_owned(),
                LAB_B.0.to_owned()
            ),
        ]
    );
}

#[tokio::test]
async fn one_clients_retry_with_its_key_and_payload_is_replayed() {
    let uri = fresh_database_uri();
    let ingest = ingest_for_two_labs(&uri).await;
    let lab_a = as_client(LAB_A.1);
    let first = post_event(&lab_a, &ingest.url, &event("p-2", 5.4), Some("order-8")).await;
    let retry = post_event(&lab_a, &ingest.url, &event("p-2", 5.4), Some("order-8")).await;
    assert_eq!(retry.status, StatusCode::ACCEPTED);
    assert!(retry.replayed, "Idempotent-Replayed: true");
    assert_eq!(retry.body, first.body);
    // The other lab's request with that key is its own event.
    let other = post_event(
        &as_client(LAB_B.1),
        &ingest.url,
        &event("p-2", 5.4),
        Some("order-8"),
    )
    .await;
    assert!(!other.replayed);
    let db = Db::connect(&uri).await;
    let clients: Vec<String> = owners(&db.events_of("p-2").await)
        .into_iter()
        .map(|(_, client)| client)
        .collect();
    assert_eq!(clients, vec![LAB_A.0, LAB_B.0]);
}

#[tokio::test]
async fn a_client_sees_its_own_events_only_and_an_operator_sees_all() {
    let uri = fresh_database_uri();
    let ingest = ingest_for_two_labs(&uri).await;
    let accepted = post_event(&as_client(LAB_A.1), &ingest.url, &event("p-3", 5.4), None).await;
    let id = accepted.body["eventId"].as_str().unwrap().to_owned();
    let read = |key: &str, id: &str| {
        as_client(key)
            .get(format!("{}/events/{id}", ingest.url))
            .send()
    };

    let own = read(LAB_A.1, &id).await.unwrap();
    assert_eq!(own.status(), StatusCode::OK);
    let view: Value = own.json().await.unwrap();
    assert_eq!(view["client"], LAB_A.0);
    assert_eq!(view["patientId"], "p-3");

    // Another client's event is answered exactly like one that does not exist.
    let foreign = read(LAB_B.1, &id).await.unwrap();
    assert_eq!(foreign.status(), StatusCode::NOT_FOUND);
    let foreign: Value = foreign.json().await.unwrap();
    let unknown_id = uuid::Uuid::new_v4().to_string();
    let unknown: Value = read(LAB_B.1, &unknown_id)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        foreign.to_string().replace(&id, "ID"),
        unknown.to_string().replace(&unknown_id, "ID")
    );
    assert!(foreign.get("patientId").is_none());

    let operator = read(ADMIN_KEY, &id).await.unwrap();
    assert_eq!(operator.status(), StatusCode::OK);
    let view: Value = operator.json().await.unwrap();
    assert_eq!(view["client"], LAB_A.0);
    assert_eq!(view["eventId"], id.as_str());
}

#[tokio::test]
async fn concurrent_identical_keyless_requests_through_two_instances_store_one_event() {
    let uri = fresh_database_uri();
    let first = ingest_for_two_labs(&uri).await;
    let second = ingest_for_two_labs(&uri).await;
    let lab_a = as_client(LAB_A.1);
    let body = event("p-4", 5.4);
    let answers = join_all((0..20).map(|n| {
        let url = if n % 2 == 0 { &first.url } else { &second.url };
        post_event(&lab_a, url, &body, None)
    }))
    .await;
    assert!(answers.iter().all(|a| a.status == StatusCode::ACCEPTED));
    let ids: HashSet<&str> = answers
        .iter()
        .map(|a| a.body["eventId"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "every request answered with the one event");
    assert_eq!(
        answers.iter().filter(|a| !a.replayed).count(),
        1,
        "exactly one of them stored it"
    );
    let db = Db::connect(&uri).await;
    let events = db.events_of("p-4").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].get_i64("seq").unwrap(), 1);
    assert_eq!(events[0].get_str("client").unwrap(), LAB_A.0);
}

/// Issue 16, finding 2: one client cannot fill a patient's lane ahead of
/// another's. With `MAX_UNFINISHED_PER_CLIENT_PATIENT=3` and nothing
/// processed, lab A's fourth event for the patient is refused (`429`,
/// `Retry-After`, the setting named) and not stored, while lab B's event
/// for that patient and A's for another patient are accepted, and A's
/// retry of a stored event still gets its first answer. Once A's events
/// are done, A is accepted again. (On main, A's fourth was stored, and
/// every later event of the patient queued behind all of A's.)
#[tokio::test]
async fn one_client_cannot_queue_more_than_its_share_of_a_patients_lane() {
    let uri = fresh_database_uri();
    let mut config = InProcessIngest::config(&uri, "http://127.0.0.1:9");
    config.access = Access::Required(vec![
        Credential::named(LAB_A.0, LAB_A.1),
        Credential::named(LAB_B.0, LAB_B.1),
    ]);
    config.intake.max_unfinished_per_client_patient = 3;
    let ingest = InProcessIngest::start_with(config).await;
    let (a, b) = (as_client(LAB_A.1), as_client(LAB_B.1));
    let db = Db::connect(&uri).await;

    for n in 1..=3 {
        let key = format!("a-{n}");
        let answer = post_event(&a, &ingest.url, &event("p-share", n as f64), Some(&key)).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    }
    // A retry of a stored event is answered as before, bound or not.
    let retry = post_event(&a, &ingest.url, &event("p-share", 3.0), Some("a-3")).await;
    assert_eq!(retry.status, StatusCode::ACCEPTED, "{}", retry.body);
    assert!(retry.replayed);

    let refused = a
        .post(format!("{}/events", ingest.url))
        .header("Idempotency-Key", "a-4")
        .json(&event("p-share", 4.0))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "5");
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = refused.json().await.unwrap();
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("MAX_UNFINISHED_PER_CLIENT_PATIENT"),
        "{detail}"
    );
    assert!(detail.contains('3'), "{detail}");
    // Refused again at once (remembered: no walk), still not stored; but a
    // retry of a stored event right after a refusal is still answered.
    let again = post_event(&a, &ingest.url, &event("p-share", 4.0), Some("a-4")).await;
    assert_eq!(again.status, StatusCode::TOO_MANY_REQUESTS);
    let retry = post_event(&a, &ingest.url, &event("p-share", 2.0), Some("a-2")).await;
    assert_eq!(retry.status, StatusCode::ACCEPTED, "{}", retry.body);
    assert!(retry.replayed);

    let other = post_event(&b, &ingest.url, &event("p-share", 9.0), Some("b-1")).await;
    assert_eq!(
        other.status,
        StatusCode::ACCEPTED,
        "B is served: {}",
        other.body
    );
    let elsewhere = post_event(&a, &ingest.url, &event("p-else", 1.0), Some("a-else")).await;
    assert_eq!(elsewhere.status, StatusCode::ACCEPTED, "{}", elsewhere.body);

    let stored = owners(&db.events_of("p-share").await);
    let clients: Vec<&str> = stored.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(
        clients,
        ["lab-a", "lab-a", "lab-a", "lab-b"],
        "A's fourth not stored"
    );

    // A's events are done (as the processor would mark them): A has room.
    db.update_many(
        "queued_events",
        mongodb::bson::doc! { "patientId": "p-share", "client": "lab-a" },
        mongodb::bson::doc! { "$set": { "status": "processed" } },
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let later = post_event(&a, &ingest.url, &event("p-share", 4.0), Some("a-4")).await;
    assert_eq!(later.status, StatusCode::ACCEPTED, "{}", later.body);
    assert!(!later.replayed);
    assert_eq!(db.events_of("p-share").await.len(), 5);
}
