//! A retry stores an event at most once.
//!
//! - When the database does not confirm an insert in time, the answer says
//!   what is known: `202` with the eventId if a majority read finds the
//!   event, otherwise `503` of type `/problems/outcome-unknown` naming the
//!   eventId the insert carried. Either way the answer and the store agree,
//!   and a retry (with the same `Idempotency-Key`, or the same body without
//!   one) leaves exactly one event stored.
//! - Without a key, the same body from the same client within
//!   `DEDUP_WINDOW_S` is the same event: `202` with the first eventId and
//!   `Idempotent-Replayed: true`. After the window, from another client, or
//!   with a window of 0, it is a new event.

use std::time::Duration;

use crate::support::checks::Db;
use crate::support::fault_proxy::{Fault, FaultProxy};
use crate::support::{
    API_KEY, Answer, CLIENT, InProcessIngest, fresh_database_uri, post_event, wait_until,
};
use medical_events::auth::{Access, Credential};
use mongodb::bson::{Document, doc};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The problem type of an answer whose stored state is unknown.
const OUTCOME_UNKNOWN: &str = "/problems/outcome-unknown";
/// `MONGO_TIMEOUT_MS` of the ingest behind the proxy: an operation gets
/// twice that before it is abandoned.
const MONGO_TIMEOUT: Duration = Duration::from_millis(500);

/// Retries through 503s (the driver may take a moment to find the
/// database again), as a client would; the first other answer.
async fn retry(client: &reqwest::Client, url: &str, body: &Value, key: Option<&str>) -> Answer {
    for _ in 0..100 {
        let answer = post_event(client, url, body, key).await;
        if answer.status != StatusCode::SERVICE_UNAVAILABLE {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("still 503 after 20 s of retries");
}

fn event(patient: &str) -> Value {
    json!({
        "patientId": patient,
        "type": "lab_result",
        "ts": "2025-10-01T12:00:00Z",
        "data": { "test": "glucose", "value": 5.4 },
    })
}

fn ids(events: &[Document]) -> Vec<String> {
    events
        .iter()
        .map(|d| d.get_str("eventId").unwrap().to_owned())
        .collect()
}

/// An insert the database receives only after ingest gave up on it: the
/// proxy holds every byte from before the POST until `release_after`.
/// Returns the first answer and, after a retry, what is stored.
async fn insert_held_past_its_deadline(
    key: Option<&str>,
    release_after: Option<Duration>,
) -> (Answer, Answer, Vec<String>) {
    let upstream = crate::support::shared_mongo()
        .trim_start_matches("mongodb://")
        .to_owned();
    let proxy = FaultProxy::start(upstream).await;
    let database = format!("t_{}", uuid::Uuid::new_v4().simple());
    let mut config = InProcessIngest::config(
        &format!(
            "mongodb://127.0.0.1:{}/{database}?directConnection=true",
            proxy.port
        ),
        "http://127.0.0.1:9",
    );
    config.mongo.timeout = MONGO_TIMEOUT;
    let ingest = InProcessIngest::start_with(config).await;
    let db = Db::connect(&format!("{}/{database}", crate::support::shared_mongo())).await;
    let client = crate::support::client_with_token(API_KEY)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let patient = "p-held";
    let body = event(patient);
    // The patient's first event goes through: the connection pool is warm,
    // and ingest knows the patient's next sequence number, so under the
    // freeze the insert is its only operation (for a patient it does not
    // know, it reads the last number first, and that read would time out).
    let mut warm = event(patient);
    warm["data"]["value"] = json!(0.1);
    let first = post_event(&client, &ingest.url, &warm, None).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    let warm_id = first.event_id();
    let held = || async {
        let mut stored = ids(&db.events_of(patient).await);
        stored.retain(|id| *id != warm_id);
        stored
    };

    proxy.freeze(true);
    let answer = match release_after {
        // Let the bytes through while ingest is still settling the outcome.
        Some(after) => {
            let pending = post_event(&client, &ingest.url, &body, key);
            let release = async {
                tokio::time::sleep(after).await;
                proxy.freeze(false);
            };
            tokio::join!(pending, release).0
        }
        // Only once ingest has answered.
        None => {
            let answer = post_event(&client, &ingest.url, &body, key).await;
            proxy.freeze(false);
            answer
        }
    };
    match answer.status {
        StatusCode::ACCEPTED => {
            // Confirmed by the majority read: exactly that event is stored.
            assert!(!answer.replayed);
            assert_eq!(held().await, vec![answer.event_id()]);
        }
        StatusCode::SERVICE_UNAVAILABLE => {
            assert_eq!(answer.body["type"], OUTCOME_UNKNOWN, "{}", answer.body);
            assert_eq!(answer.body["status"], 503);
            uuid::Uuid::parse_str(&answer.event_id()).expect("the eventId is a UUID");
        }
        other => panic!("unexpected {other}: {}", answer.body),
    }
    // The held insert reaches the database now (or already did); then the
    // client retries with the same body (and key, if it sent one). Held past
    // the whole answer, it is stored before the retry: the retry must find
    // it. Released while ingest settled it, it may lose to the retry.
    if release_after.is_none() {
        wait_until(
            Duration::from_secs(10),
            "the held insert stored",
            || async { held().await.contains(&answer.event_id()) },
        )
        .await;
    } else {
        tokio::time::sleep(MONGO_TIMEOUT * 2).await;
    }
    let retried = retry(&client, &ingest.url, &body, key).await;
    assert_eq!(retried.status, StatusCode::ACCEPTED, "{}", retried.body);
    // Late arrivals would land within this.
    tokio::time::sleep(MONGO_TIMEOUT * 2).await;
    let events = held().await;
    (answer, retried, events)
}

/// Whatever the first answer was, the retry's event is the one stored, and
/// it is the first answer's event whenever that one reached the store.
fn assert_one_event(answer: &Answer, retried: &Answer, events: &[String]) {
    assert_eq!(events.len(), 1, "exactly one event stored: {events:?}");
    assert_eq!(
        events[0],
        retried.event_id(),
        "the retry names the stored event"
    );
    if answer.event_id() == events[0] {
        assert!(retried.replayed, "a retry of a stored event is a replay");
    }
}

#[tokio::test]
async fn an_insert_answered_503_outcome_unknown_is_stored_once_by_a_keyless_retry() {
    let (answer, retried, events) = insert_held_past_its_deadline(None, None).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_one_event(&answer, &retried, &events);
    // The held insert did land: the retry found it.
    assert_eq!(events[0], answer.event_id());
}

#[tokio::test]
async fn an_insert_answered_503_outcome_unknown_is_stored_once_by_a_retry_with_its_key() {
    let (answer, retried, events) = insert_held_past_its_deadline(Some("held-key"), None).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_one_event(&answer, &retried, &events);
    assert_eq!(events[0], answer.event_id());
}

#[tokio::test]
async fn an_insert_released_while_ingest_settles_it_is_answered_as_stored_or_unknown() {
    // Released just after the insert's deadline, while the majority read
    // that settles it is under way: 202 if that read sees the event.
    for key in [None, Some("released-key")] {
        let (answer, retried, events) =
            insert_held_past_its_deadline(key, Some(MONGO_TIMEOUT * 2 + MONGO_TIMEOUT / 2)).await;
        assert_one_event(&answer, &retried, &events);
        if answer.status == StatusCode::ACCEPTED {
            assert_eq!(events[0], answer.event_id());
        }
    }
}

#[tokio::test]
async fn the_same_body_again_within_the_window_is_the_same_event() {
    let uri = fresh_database_uri();
    let ingest = InProcessIngest::start(&uri, "http://127.0.0.1:9").await;
    let client = crate::support::client();
    let first = post_event(&client, &ingest.url, &event("p-dup"), None).await;
    let again = post_event(&client, &ingest.url, &event("p-dup"), None).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    assert!(!first.replayed);
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert!(again.replayed, "Idempotent-Replayed: true");
    assert_eq!(again.event_id(), first.event_id());
    let db = Db::connect(&uri).await;
    assert_eq!(ids(&db.events_of("p-dup").await), vec![first.event_id()]);
    // Another body for the same patient is another event.
    let mut other = event("p-dup");
    other["data"]["value"] = json!(6.1);
    let different = post_event(&client, &ingest.url, &other, None).await;
    assert!(!different.replayed);
    assert_eq!(db.events_of("p-dup").await.len(), 2);
}

#[tokio::test]
async fn after_the_window_the_same_body_is_a_new_event() {
    let uri = fresh_database_uri();
    let mut config = InProcessIngest::config(&uri, "http://127.0.0.1:9");
    config.intake.dedup_window = Duration::from_secs(1); // DEDUP_WINDOW_S=1
    let ingest = InProcessIngest::start_with(config).await;
    let client = crate::support::client();
    let first = post_event(&client, &ingest.url, &event("p-window"), None).await;
    let within = post_event(&client, &ingest.url, &event("p-window"), None).await;
    assert!(within.replayed);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = post_event(&client, &ingest.url, &event("p-window"), None).await;
    assert_eq!(after.status, StatusCode::ACCEPTED, "{}", after.body);
    assert!(!after.replayed);
    assert_ne!(after.event_id(), first.event_id());
    let db = Db::connect(&uri).await;
    let events = db.events_of("p-window").await;
    assert_eq!(ids(&events), vec![first.event_id(), after.event_id()]);
    let seqs: Vec<i64> = events.iter().map(|d| d.get_i64("seq").unwrap()).collect();
    assert_eq!(seqs, vec![1, 2]);
    // And the new one is the duplicate-holder for the next window.
    let again = post_event(&client, &ingest.url, &event("p-window"), None).await;
    assert!(again.replayed);
    assert_eq!(again.event_id(), after.event_id());
}

#[tokio::test]
async fn the_same_body_from_two_clients_is_two_events() {
    let uri = fresh_database_uri();
    let mut config = InProcessIngest::config(&uri, "http://127.0.0.1:9");
    let other_key = "other-lab-key-0123456789";
    config.access = Access::Required(vec![
        Credential::named(CLIENT, API_KEY),
        Credential::named("other-lab", other_key),
    ]);
    let ingest = InProcessIngest::start_with(config).await;
    let mine = post_event(
        &crate::support::client(),
        &ingest.url,
        &event("p-shared"),
        None,
    )
    .await;
    let other_client = crate::support::client_with_token(other_key)
        .build()
        .unwrap();
    let theirs = post_event(&other_client, &ingest.url, &event("p-shared"), None).await;
    assert_eq!(mine.status, StatusCode::ACCEPTED);
    assert_eq!(theirs.status, StatusCode::ACCEPTED);
    assert!(!theirs.replayed);
    assert_ne!(mine.event_id(), theirs.event_id());
    let db = Db::connect(&uri).await;
    let events = db.events_of("p-shared").await;
    let clients: Vec<&str> = events
        .iter()
        .map(|d| d.get_str("client").unwrap())
        .collect();
    assert_eq!(clients, vec![CLIENT, "other-lab"]);
}

#[tokio::test]
async fn a_window_of_zero_turns_deduplication_off() {
    let uri = fresh_database_uri();
    let mut config = InProcessIngest::config(&uri, "http://127.0.0.1:9");
    config.intake.dedup_window = Duration::ZERO; // DEDUP_WINDOW_S=0
    let ingest = InProcessIngest::start_with(config).await;
    let client = crate::support::client();
    let first = post_event(&client, &ingest.url, &event("p-nodedup"), None).await;
    let second = post_event(&client, &ingest.url, &event("p-nodedup"), None).await;
    assert!(!second.replayed);
    assert_ne!(first.event_id(), second.event_id());
    let db = Db::connect(&uri).await;
    assert_eq!(
        ids(&db.events_of("p-nodedup").await),
        vec![first.event_id(), second.event_id()]
    );
}

/// Patients whose requests ingest serializes on one lock stripe (it has
/// 1,024, chosen by the first two bytes of SHA-256 of the patient id): a
/// queue of requests whose inserts cannot collide with each other.
fn patients_sharing_a_stripe(count: usize) -> Vec<String> {
    use sha2::{Digest, Sha256};
    let stripe = |patient: &str| {
        let digest = Sha256::digest(patient.as_bytes());
        u16::from_be_bytes([digest[0], digest[1]]) as usize % 1024
    };
    let wanted = stripe("p-slow-0");
    (0..)
        .map(|n| format!("p-slow-{n}"))
        .filter(|p| stripe(p) == wanted)
        .take(count)
        .collect()
}

/// Issue 13, hole 2: under a database that takes longer than the request's
/// time limit to see the inserts, no client is told "nothing stored" for an
/// event that is stored. Requests queue on one lock stripe, so some reach
/// their time limit while their insert is on its way.
#[tokio::test]
async fn a_database_slower_than_the_request_timeout_never_gets_a_false_nothing_stored() {
    let proxy = FaultProxy::start_for_shared().await;
    let database = format!("t_{}", uuid::Uuid::new_v4().simple());
    let mut config = InProcessIngest::config(&proxy.uri(&database), "http://127.0.0.1:9");
    config.mongo.timeout = Duration::from_millis(400);
    config.limits.request_timeout = Duration::from_secs(3);
    let ingest = InProcessIngest::start_with(config).await;
    let db = Db::connect(&format!("{}/{database}", crate::support::shared_mongo())).await;
    let client = crate::support::client_with_token(API_KEY)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let patients = patients_sharing_a_stripe(8);
    // Warm the connection pool.
    let first = post_event(&client, &ingest.url, &event("p-warm"), Some("warm")).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    // From now on every insert reaches the database 5 s after it was sent.
    proxy.on_next(
        "insert",
        "queued_events",
        Fault::DelayRequest(Duration::from_secs(5)),
        1_000,
    );
    let answers = futures_util::future::join_all(patients.iter().map(|patient| {
        let client = client.clone();
        let url = ingest.url.clone();
        async move {
            let key = format!("slow-{patient}");
            let answer = post_event(&client, &url, &event(patient), Some(&key)).await;
            (key, answer)
        }
    }))
    .await;
    // Every delayed insert has landed by now.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let mut false_answers = Vec::new();
    let mut seen = Vec::new();
    for (key, answer) in &answers {
        let stored = db
            .count(
                "queued_events",
                doc! { "intakeKey": format!("k:{}:{key}", crate::support::CLIENT) },
            )
            .await;
        seen.push((answer.status.as_u16(), answer.body["type"].clone(), stored));
        match answer.status {
            StatusCode::ACCEPTED => assert_eq!(stored, 1, "a 202 for an event not stored"),
            StatusCode::SERVICE_UNAVAILABLE if answer.body["type"] == OUTCOME_UNKNOWN => {}
            StatusCode::SERVICE_UNAVAILABLE => {
                if stored > 0 {
                    false_answers.push((key.clone(), answer.body.clone()));
                }
            }
            other => panic!("unexpected {other}: {}", answer.body),
        }
    }
    eprintln!("answers (status, type, stored): {seen:?}");
    assert!(
        false_answers.is_empty(),
        "told 'nothing stored' for stored events: {false_answers:?}"
    );
}

/// An insert whose answer comes back after its time limit (the database
/// applied it, the reply was slow): the read that settles it finds the event,
/// and the client gets its `202`, once.
#[tokio::test]
async fn an_insert_answered_after_its_time_limit_is_settled_by_a_read() {
    let proxy = FaultProxy::start_for_shared().await;
    let database = format!("t_{}", uuid::Uuid::new_v4().simple());
    let mut config = InProcessIngest::config(&proxy.uri(&database), "http://127.0.0.1:9");
    config.mongo.timeout = MONGO_TIMEOUT;
    let ingest = InProcessIngest::start_with(config).await;
    let db = Db::connect(&format!("{}/{database}", crate::support::shared_mongo())).await;
    let client = crate::support::client_with_token(API_KEY)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let first = post_event(&client, &ingest.url, &event("p-late"), Some("late-0")).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    let late = proxy.on_next(
        "insert",
        "queued_events",
        Fault::DelayReply(MONGO_TIMEOUT * 3),
        1,
    );
    let mut body = event("p-late");
    body["data"]["value"] = json!(2);
    let answer = post_event(&client, &ingest.url, &body, Some("late-1")).await;
    assert_eq!(proxy.hits(late), 1, "the insert's reply was delayed");
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    assert_eq!(
        db.count(
            "queued_events",
            doc! { "intakeKey": format!("k:{CLIENT}:late-1") }
        )
        .await,
        1
    );
}
