//! Operating the system: failures an operator can see, replay and skip
//! (with an audit trail), the strict-order mode that parks a patient,
//! retention that keeps sequence numbers rising, idempotency records that
//! expire when published, and a patient's timeline.

use std::time::Duration;

use crate::support::checks::Db;
use crate::support::fault_proxy::{Fault, FaultProxy, mentions};
use crate::support::sink::Sink;
use crate::support::{
    InProcessIngest, Service, event_body, fresh_database_uri, ingest_env, post_until_accepted,
    processor_env, wait_until,
};
use medical_events::store::{IntakePolicy, Retention, Store};
use mongodb::bson::{Document, doc};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn admin() -> reqwest::Client {
    crate::support::client_with_token(crate::support::ADMIN_KEY)
        .build()
        .unwrap()
}

/// A processor delivering to `sink` with the failure policy `on_failure`,
/// two attempts per run, and an ingest in front of it.
async fn stack(uri: &str, sink: &Sink, on_failure: &str) -> (Service, Service) {
    let mut env = processor_env(uri, 0, 0);
    env.push(("DELIVERY_URL", sink.url.clone()));
    env.push(("ON_FAILURE", on_failure.to_owned()));
    env.push(("MAX_ATTEMPTS", "2".to_owned()));
    let processor = Service::start("processor", &env).await;
    crate::support::wait_for_leases(&processor.url(), 256).await;
    let ingest = Service::start("ingest", &ingest_env(uri, &processor.url())).await;
    (processor, ingest)
}

async fn admin_get(url: String) -> Value {
    admin().get(url).send().await.unwrap().json().await.unwrap()
}

/// Waits until `count` of `patient`'s events are `processed`.
async fn wait_processed(db: &Db, patient: &str, count: u64, what: &str) {
    wait_until(Duration::from_secs(60), what, || async {
        db.count(
            "queued_events",
            doc! { "patientId": patient, "status": "processed" },
        )
        .await
            == count
    })
    .await;
}

/// `result.status` of an outcome document (or of a run in its history).
fn result_status(outcome: &Document) -> &str {
    outcome
        .get_document("result")
        .unwrap()
        .get_str("status")
        .unwrap()
}

async fn send(url: &str, patient: &str, count: usize) -> Vec<String> {
    let client = crate::support::client();
    let mut ids = Vec::new();
    for n in 0..count {
        ids.push(
            post_until_accepted(
                &client,
                url,
                &event_body(patient, n),
                &format!("{patient}-{n}"),
            )
            .await,
        );
    }
    ids
}

async fn status_of(url: &str, id: &str) -> String {
    let body = admin_get(format!("{url}/events/{id}")).await;
    body["status"].as_str().unwrap_or("?").to_owned()
}

async fn act(url: &str, id: &str, action: &str, reason: &str) -> reqwest::Response {
    admin()
        .post(format!("{url}/admin/events/{id}/{action}"))
        .json(&json!({ "reason": reason }))
        .send()
        .await
        .unwrap()
}

fn refuses(patient: &'static str, seq: i64) -> impl Fn(&Value) -> bool + Send + Sync {
    move |body| body["patientId"] == patient && body["seq"] == seq
}

#[tokio::test]
async fn a_parked_patient_waits_until_its_failed_event_is_retried_then_goes_on_in_order() {
    let uri = fresh_database_uri();
    let db = Db::connect(&uri).await;
    let sink = Sink::start(Duration::from_millis(20)).await;
    sink.refuse(refuses("parked-a", 3));
    let (_processor, ingest) = stack(&uri, &sink, "park").await;
    let url = ingest.url();
    let a = send(&url, "parked-a", 5).await;
    let b = send(&url, "other-b", 3).await;

    wait_until(Duration::from_secs(60), "event 3 parked", || async {
        status_of(&url, &a[2]).await == "parked"
    })
    .await;
    wait_processed(&db, "other-b", 3, "the other patient done").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    // Events 4 and 5 wait, stored and untouched; 1 and 2 are done.
    assert_eq!(status_of(&url, &a[0]).await, "processed");
    assert_eq!(status_of(&url, &a[1]).await, "processed");
    assert_eq!(status_of(&url, &a[3]).await, "queued");
    assert_eq!(status_of(&url, &a[4]).await, "queued");
    assert_eq!(
        sink.seqs_of("parked-a"),
        vec![1, 2],
        "nothing after the parked event was delivered"
    );
    // The operator finds it.
    let parked = admin_get(format!("{url}/admin/events?status=parked")).await;
    let listed: Vec<&str> = parked["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["eventId"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec![a[2].as_str()]);
    let stats = admin_get(format!("{url}/admin/stats")).await;
    assert_eq!(
        stats["clients"][crate::support::CLIENT]["parkedPatients"],
        1,
        "{stats}"
    );

    // Fixed downstream, retried: 3, 4, 5 in order.
    sink.accept_all();
    let response = act(&url, &a[2], "retry", "lab system fixed").await;
    assert_eq!(response.status(), StatusCode::OK);
    wait_processed(&db, "parked-a", 5, "the patient to finish").await;
    db.assert_processed_in_order("parked-a", &a).await;
    db.assert_processed_in_order("other-b", &b).await;
    assert_eq!(sink.seqs_of("parked-a"), vec![1, 2, 3, 4, 5]);
    // One outcome document for the event, its failed run kept in its history.
    let outcomes = db
        .find("processed_events", doc! { "eventId": &a[2] }, doc! {})
        .await;
    assert_eq!(outcomes.len(), 1);
    let outcome = &outcomes[0];
    assert_eq!(result_status(outcome), "success");
    assert_eq!(outcome.get_i32("run").unwrap(), 2);
    let history = outcome.get_array("history").unwrap();
    assert_eq!(history.len(), 1);
    // The audit log says who, what and why.
    let audit = db
        .find(
            "audit_log",
            doc! { "eventId": &a[2], "action": { "$ne": "read" } },
            doc! {},
        )
        .await;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].get_str("who").unwrap(), "test-operator");
    assert_eq!(audit[0].get_str("action").unwrap(), "retry");
    assert_eq!(audit[0].get_str("why").unwrap(), "lab system fixed");
}

#[tokio::test]
async fn skipping_a_parked_event_lets_the_patient_go_on_without_it() {
    let uri = fresh_database_uri();
    let db = Db::connect(&uri).await;
    let sink = Sink::start(Duration::from_millis(20)).await;
    sink.refuse(refuses("skip-c", 2));
    let (_processor, ingest) = stack(&uri, &sink, "park").await;
    let url = ingest.url();
    let c = send(&url, "skip-c", 4).await;
    wait_until(Duration::from_secs(60), "event 2 parked", || async {
        status_of(&url, &c[1]).await == "parked"
    })
    .await;
    // Only parked events can be skipped; a processed one is a 409.
    assert_eq!(
        act(&url, &c[0], "skip", "no").await.status(),
        StatusCode::CONFLICT
    );
    assert_eq!(
        act(&url, &c[1], "skip", "duplicate sent by the lab")
            .await
            .status(),
        StatusCode::OK
    );
    wait_processed(&db, "skip-c", 3, "the rest processed").await;
    assert_eq!(status_of(&url, &c[1]).await, "skipped");
    assert_eq!(sink.seqs_of("skip-c"), vec![1, 3, 4]);
    let outcome = db
        .find("processed_events", doc! { "eventId": &c[1] }, doc! {})
        .await
        .remove(0);
    assert_eq!(result_status(&outcome), "skipped");
    assert_eq!(
        outcome.get_array("history").unwrap().len(),
        1,
        "the failed run is kept"
    );
}

#[tokio::test]
async fn retrying_a_failed_event_keeps_one_outcome_with_its_history_and_an_audit_entry() {
    let uri = fresh_database_uri();
    let db = Db::connect(&uri).await;
    let sink = Sink::start(Duration::from_millis(20)).await;
    sink.refuse(refuses("failing-d", 1));
    let (_processor, ingest) = stack(&uri, &sink, "continue").await;
    let url = ingest.url();
    let d = send(&url, "failing-d", 2).await;
    wait_until(
        Duration::from_secs(60),
        "a failure and the next event",
        || async {
            db.count(
                "queued_events",
                doc! { "patientId": "failing-d", "status": { "$in": ["failed", "processed"] } },
            )
            .await
                == 2
        },
    )
    .await;
    assert_eq!(status_of(&url, &d[0]).await, "failed");
    // The patient went on (continue policy).
    assert_eq!(status_of(&url, &d[1]).await, "processed");
    let failed = admin_get(format!(
        "{url}/admin/events?status=failed&client={}",
        crate::support::CLIENT
    ))
    .await;
    assert_eq!(failed["events"].as_array().unwrap().len(), 1);

    sink.accept_all();
    assert_eq!(
        act(&url, &d[0], "retry", "").await.status(),
        StatusCode::BAD_REQUEST,
        "a reason is required"
    );
    assert_eq!(
        act(&url, &d[0], "retry", "downstream back").await.status(),
        StatusCode::OK
    );
    wait_until(Duration::from_secs(60), "the retry processed", || async {
        status_of(&url, &d[0]).await == "processed"
    })
    .await;
    let outcomes = db
        .find("processed_events", doc! { "eventId": &d[0] }, doc! {})
        .await;
    assert_eq!(outcomes.len(), 1, "one outcome document per event");
    let history = outcomes[0].get_array("history").unwrap();
    assert_eq!(history.len(), 1);
    let earlier = history[0].as_document().unwrap();
    assert_eq!(result_status(earlier), "failed");
    assert_eq!(earlier.get_i32("attempts").unwrap(), 2);
    let audit = admin_get(format!("{url}/admin/audit")).await;
    let entry = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] != "read")
        .unwrap();
    assert_eq!(entry["action"], "retry");
    assert_eq!(entry["who"], "test-operator");
    assert_eq!(entry["why"], "downstream back");
    assert_eq!(entry["before"]["status"], "failed");
    assert_eq!(entry["after"]["status"], "queued");
}

#[tokio::test]
async fn operator_routes_refuse_client_keys_and_anonymous_callers() {
    let ingest = InProcessIngest::start(&fresh_database_uri(), "http://127.0.0.1:9").await;
    for path in [
        "/admin/events?status=failed",
        "/admin/stats",
        "/admin/audit",
    ] {
        let anonymous = reqwest::get(format!("{}{path}", ingest.url)).await.unwrap();
        assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED, "{path}");
        let client = crate::support::client()
            .get(format!("{}{path}", ingest.url))
            .send()
            .await
            .unwrap();
        assert_eq!(client.status(), StatusCode::FORBIDDEN, "{path}");
        assert_eq!(client.headers()["content-type"], "application/problem+json");
        let operator = admin()
            .get(format!("{}{path}", ingest.url))
            .send()
            .await
            .unwrap();
        assert_eq!(operator.status(), StatusCode::OK, "{path}");
    }
    let id = uuid::Uuid::now_v7();
    let client = crate::support::client()
        .post(format!("{}/admin/events/{id}/retry", ingest.url))
        .json(&json!({ "reason": "x" }))
        .send()
        .await
        .unwrap();
    assert_eq!(client.status(), StatusCode::FORBIDDEN);
    // A body that is not JSON is a problem too, not a framework's text.
    for (content_type, body, status) in [
        ("application/json", "{", StatusCode::BAD_REQUEST),
        (
            "text/plain",
            "lab fixed",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
    ] {
        let response = admin()
            .post(format!("{}/admin/events/{id}/retry", ingest.url))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{content_type}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{content_type}"
        );
    }
    assert_eq!(
        act(&ingest.url, &id.to_string(), "retry", "x")
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn an_unknown_or_malformed_query_parameter_is_a_problem_naming_it() {
    let ingest = InProcessIngest::start(&fresh_database_uri(), "http://127.0.0.1:9").await;
    for (path, named) in [
        ("/patients/p-1/events?bogus=1", "bogus"),
        ("/patients/p-1/events?after=soon", "after"),
        ("/events/stream?bogus=1", "bogus"),
        ("/admin/events?status=failed&bogus=1", "bogus"),
        ("/admin/audit?bogus=1", "bogus"),
    ] {
        let answer = admin()
            .get(format!("{}{path}", ingest.url))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(
            answer.headers()["content-type"],
            "application/problem+json",
            "{path}"
        );
        let body: Value = answer.json().await.unwrap();
        let problem = body.to_string();
        assert!(problem.contains(named), "{path}: {problem}");
    }
}

#[tokio::test]
async fn pruning_a_patients_latest_events_keeps_its_sequence_rising() {
    let uri = fresh_database_uri();
    let db = Db::connect(&uri).await;
    let sink = Sink::start(Duration::from_millis(5)).await;
    let (_processor, ingest) = stack(&uri, &sink, "continue").await;
    send(&ingest.url(), "pruned-p", 3).await;
    wait_processed(&db, "pruned-p", 3, "3 processed").await;
    let store = Store::connect(&uri, Duration::from_secs(5), "test")
        .await
        .unwrap();
    let pruned = store
        .prune(&Retention {
            events: Some(Duration::ZERO),
            idempotency_ttl: Duration::ZERO,
            outcomes: None,
            min_age: Duration::ZERO,
        })
        .await
        .unwrap();
    assert_eq!(pruned.events_deleted, 2);
    assert_eq!(pruned.high_water_marks, 1);
    let left = db
        .find("queued_events", doc! { "patientId": "pruned-p" }, doc! {})
        .await;
    assert_eq!(left.len(), 1, "only the high-water mark is left");
    assert_eq!(left[0].get_i64("seq").unwrap(), 3);
    assert!(
        left[0].get_document("data").unwrap().is_empty(),
        "its payload is gone"
    );
    assert_eq!(db.processed_count().await, 3, "outcomes are kept");

    // A new event, through a fresh ingest that remembers nothing.
    let fresh = InProcessIngest::start(&uri, "http://127.0.0.1:9").await;
    let new = post_until_accepted(
        &crate::support::client(),
        &fresh.url,
        &event_body("pruned-p", 9),
        "after-prune",
    )
    .await;
    let stored = db
        .find("queued_events", doc! { "_id": &new }, doc! {})
        .await
        .remove(0);
    assert_eq!(stored.get_i64("seq").unwrap(), 4, "above every earlier one");
    wait_until(
        Duration::from_secs(30),
        "the new event processed",
        || async {
            db.count("queued_events", doc! { "_id": &new, "status": "processed" })
                .await
                == 1
        },
    )
    .await;
    assert_eq!(sink.seqs_of("pruned-p"), vec![1, 2, 3, 4]);
}

#[tokio::test]
async fn an_idempotency_record_is_honoured_within_its_window_and_not_after() {
    let uri = fresh_database_uri();
    let mut config = InProcessIngest::config(&uri, "http://127.0.0.1:9");
    config.intake = IntakePolicy {
        idempotency_ttl: Duration::from_secs(1),
        dedup_window: Duration::from_secs(300),
        ..IntakePolicy::default()
    };
    let ingest = InProcessIngest::start_with(config).await;
    let client = crate::support::client();
    let post = || {
        client
            .post(format!("{}/events", ingest.url))
            .header("Idempotency-Key", "hl7-1001")
            .json(&event_body("ttl-p", 1))
            .send()
    };
    let first = post().await.unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await.unwrap();
    let replay = post().await.unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let replay: Value = replay.json().await.unwrap();
    assert_eq!(replay["eventId"], first["eventId"]);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let later = post().await.unwrap();
    assert!(later.headers().get("idempotent-replayed").is_none());
    let later: Value = later.json().await.unwrap();
    assert_ne!(
        later["eventId"], first["eventId"],
        "an expired key is a new event"
    );
    let db = Db::connect(&uri).await;
    assert_eq!(
        db.count("queued_events", doc! { "patientId": "ttl-p" })
            .await,
        2
    );
}

/// A page of timeline-p's timeline, as the first client sees it.
async fn timeline_page(url: &str, query: &str) -> Value {
    timeline_page_of("timeline-p", url, query).await
}

/// A page of `patient`'s timeline as the test client sees it.
async fn timeline_page_of(patient: &str, url: &str, query: &str) -> Value {
    crate::support::client()
        .get(format!("{url}/patients/{patient}/events?{query}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The eventIds of a timeline page, in its order.
fn page_ids(page: &Value) -> Vec<String> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["eventId"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_patients_timeline_lists_its_events_in_order_without_data_and_only_to_their_sender() {
    let uri = fresh_database_uri();
    let mut config = InProcessIngest::config(&uri, "http://127.0.0.1:9");
    if let medical_events::auth::Access::Required(keys) = &mut config.access {
        keys.push(medical_events::auth::Credential::named(
            "other-lab",
            "other-lab-key-0123456789",
        ));
    }
    let ingest = InProcessIngest::start_with(config).await;
    let mine = send(&ingest.url, "timeline-p", 5).await;
    let other = crate::support::client_with_token("other-lab-key-0123456789")
        .build()
        .unwrap();
    post_until_accepted(&other, &ingest.url, &event_body("timeline-p", 7), "other-1").await;

    let page = timeline_page(&ingest.url, "limit=3").await;
    assert_eq!(page_ids(&page), mine[..3].to_vec());
    assert!(page["events"][0].get("data").is_none(), "never the payload");
    let next = page["next"].as_str().unwrap();
    let rest = timeline_page(&ingest.url, &format!("after={next}&limit=2")).await;
    assert_eq!(
        page_ids(&rest),
        mine[3..].to_vec(),
        "the other lab's event is not shown"
    );
    assert!(
        rest["next"].is_null(),
        "the client's last page, though another lab's event follows: {rest}"
    );
    let all = admin_get(format!("{}/patients/timeline-p/events", ingest.url)).await;
    assert_eq!(
        all["events"].as_array().unwrap().len(),
        6,
        "an operator sees every client's"
    );
    // An operator pages with the cursor too, or with a sequence number.
    let first = admin_get(format!("{}/patients/timeline-p/events?limit=4", ingest.url)).await;
    let cursor = first["next"].as_str().unwrap();
    let second = admin_get(format!(
        "{}/patients/timeline-p/events?after={cursor}",
        ingest.url
    ))
    .await;
    assert_eq!(second["events"].as_array().unwrap().len(), 2);
    let by_seq = admin_get(format!("{}/patients/timeline-p/events?after=4", ingest.url)).await;
    assert_eq!(second["events"], by_seq["events"]);
    // A client gives no position (it would count others' events), nor
    // another client's event as a cursor.
    let other_event = second["events"][1]["eventId"].as_str().unwrap().to_owned();
    assert_eq!(other_event, all["events"][5]["eventId"].as_str().unwrap());
    for after in ["-1", "2", other_event.as_str()] {
        let bad = crate::support::client()
            .get(format!(
                "{}/patients/timeline-p/events?after={after}",
                ingest.url
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST, "after={after}");
    }
}

/// Issue 16, finding 3: a client learns nothing about other clients'
/// events for a patient: not that they exist (an empty timeline has no
/// cursor), nor how many (no `seq` in its views, its stream or its timeline).
#[tokio::test]
async fn a_client_infers_nothing_about_other_clients_events_for_a_patient() {
    let uri = fresh_database_uri();
    let mut config = InProcessIngest::config(&uri, "http://127.0.0.1:9");
    if let medical_events::auth::Access::Required(keys) = &mut config.access {
        keys.push(medical_events::auth::Credential::named(
            "other-lab",
            "other-lab-key-0123456789",
        ));
    }
    let ingest = InProcessIngest::start_with(config).await;
    let other = crate::support::client_with_token("other-lab-key-0123456789")
        .build()
        .unwrap();
    for n in 0..3 {
        let key = format!("other-{n}");
        post_until_accepted(&other, &ingest.url, &event_body("infer-p", n), &key).await;
    }
    let page = timeline_page_of("infer-p", &ingest.url, "limit=1").await;
    assert_eq!(page["events"], serde_json::json!([]));
    assert!(
        page["next"].is_null(),
        "no cursor past others' events: {page}"
    );
    let never = timeline_page_of("infer-nobody", &ingest.url, "limit=1").await;
    assert_eq!(
        page["next"], never["next"],
        "a patient only others fed looks like one nobody fed"
    );

    let mine = send(&ingest.url, "infer-p", 1).await;
    let view: Value = crate::support::client()
        .get(format!("{}/events/{}", ingest.url, mine[0]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(view.get("seq").is_none(), "no seq for a client: {view}");
    let page = timeline_page_of("infer-p", &ingest.url, "").await;
    assert_eq!(page_ids(&page), mine);
    assert!(page["events"][0].get("seq").is_none());
    let all = admin_get(format!("{}/patients/infer-p/events", ingest.url)).await;
    assert_eq!(all["events"][3]["seq"], 4, "an operator sees the position");
}

/// Issue 13, hole 9: retention empties the payload of a patient's last
/// event when it is failed and acknowledged; retrying it would deliver
/// `data: {}`. The retry is refused (409, saying why) and nothing is sent.
#[tokio::test]
async fn a_pruned_event_cannot_be_retried() {
    let uri = fresh_database_uri();
    let db = Db::connect(&uri).await;
    let sink = Sink::start(Duration::from_millis(5)).await;
    sink.refuse(refuses("pruned-f", 1));
    let (_processor, ingest) = stack(&uri, &sink, "continue").await;
    let url = ingest.url();
    let ids = send(&url, "pruned-f", 1).await;
    wait_until(Duration::from_secs(60), "the event failed", || async {
        status_of(&url, &ids[0]).await == "failed"
    })
    .await;
    assert_eq!(
        act(&url, &ids[0], "acknowledge", "handled by phone")
            .await
            .status(),
        StatusCode::OK
    );
    let store = Store::connect(&uri, Duration::from_secs(5), "test")
        .await
        .unwrap();
    let pruned = store
        .prune(&Retention {
            events: Some(Duration::ZERO),
            idempotency_ttl: Duration::ZERO,
            outcomes: None,
            min_age: Duration::ZERO,
        })
        .await
        .unwrap();
    assert_eq!(pruned.high_water_marks, 1, "the failed event is the anchor");
    sink.accept_all();
    let answer = act(&url, &ids[0], "retry", "try again").await;
    assert_eq!(answer.status(), StatusCode::CONFLICT);
    let problem: Value = answer.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or("")
            .contains("retention"),
        "{problem}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sink.count(), 0, "an emptied event was delivered");
    let event = db
        .find("queued_events", doc! { "_id": &ids[0] }, doc! {})
        .await
        .remove(0);
    assert_eq!(event.get_str("status").unwrap(), "failed");
}

/// Issue 13, hole 10: skipping a parked event is one write; its outcome
/// document follows it even when the write of the outcome fails the first
/// time (here: never reaches the database). The event and its outcome agree.
#[tokio::test]
async fn a_skip_whose_outcome_write_fails_still_ends_with_event_and_outcome_agreeing() {
    let uri = fresh_database_uri();
    let database = uri.rsplit('/').next().unwrap().to_owned();
    let db = Db::connect(&uri).await;
    let sink = Sink::start(Duration::from_millis(5)).await;
    sink.refuse(refuses("skip-f", 1));
    let (_processor, ingest) = stack(&uri, &sink, "park").await;
    let ids = send(&ingest.url(), "skip-f", 2).await;
    wait_until(Duration::from_secs(60), "event 1 parked", || async {
        status_of(&ingest.url(), &ids[0]).await == "parked"
    })
    .await;
    // An operator's ingest whose writes to processed_events never arrive.
    let proxy = FaultProxy::start_for_shared().await;
    let operator_ingest = InProcessIngest::start(&proxy.uri(&database), "http://127.0.0.1:9").await;
    proxy.on(
        "update",
        "processed_events",
        Fault::DropRequest,
        1_000,
        Some(mentions("skipped by an operator")),
    );
    let _ = act(
        &operator_ingest.url,
        &ids[0],
        "skip",
        "sent twice by the lab",
    )
    .await;
    proxy.clear();
    wait_until(
        Duration::from_secs(30),
        "the event skipped and its outcome saying so",
        || async {
            let event = db
                .find("queued_events", doc! { "_id": &ids[0] }, doc! {})
                .await
                .remove(0);
            let outcome = db
                .find("processed_events", doc! { "eventId": &ids[0] }, doc! {})
                .await;
            event.get_str("status").unwrap_or("") == "skipped"
                && outcome.len() == 1
                && result_status(&outcome[0]) == "skipped"
        },
    )
    .await;
    wait_processed(&db, "skip-f", 1, "the patient goes on").await;
}

/// Issue 16, finding 8: an operator action and its audit entry are one
/// write. Here every write to `audit_log` is lost on its way for a while:
/// the skip still lands, its entry waits in the event, and the next read
/// of the log shows it, once. (On main the skip landed unaudited.)
#[tokio::test]
async fn an_action_whose_audit_write_is_lost_is_still_audited_once() {
    let uri = fresh_database_uri();
    let database = uri.rsplit('/').next().unwrap().to_owned();
    let db = Db::connect(&uri).await;
    let sink = Sink::start(Duration::from_millis(5)).await;
    sink.refuse(refuses("audit-f", 1));
    let (_processor, ingest) = stack(&uri, &sink, "park").await;
    let ids = send(&ingest.url(), "audit-f", 2).await;
    wait_until(Duration::from_secs(60), "event 1 parked", || async {
        status_of(&ingest.url(), &ids[0]).await == "parked"
    })
    .await;
    let proxy = FaultProxy::start_for_shared().await;
    let operator_ingest = InProcessIngest::start(&proxy.uri(&database), "http://127.0.0.1:9").await;
    proxy.on("insert", "audit_log", Fault::DropRequest, 1_000, None);
    let _ = act(
        &operator_ingest.url,
        &ids[0],
        "skip",
        "sent twice by the lab",
    )
    .await;
    let actions = doc! { "action": { "$ne": "read" } };
    assert_eq!(
        db.count("audit_log", actions.clone()).await,
        0,
        "the log write was lost"
    );
    let event = db
        .find("queued_events", doc! { "_id": &ids[0] }, doc! {})
        .await
        .remove(0);
    assert!(
        event.get_document("pendingAudit").is_ok(),
        "the entry waits in the event: {event}"
    );
    proxy.clear();

    let log = admin_get(format!("{}/admin/audit", operator_ingest.url)).await;
    let entries: Vec<&Value> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] != "read")
        .collect();
    assert_eq!(entries.len(), 1, "{log}");
    assert_eq!(entries[0]["action"], "skip");
    assert_eq!(entries[0]["eventId"], ids[0].as_str());
    assert_eq!(entries[0]["why"], "sent twice by the lab");
    assert_eq!(entries[0]["after"]["status"], "skipped");
    assert_eq!(db.count("audit_log", actions).await, 1, "moved once");
    assert_eq!(
        db.count(
            "queued_events",
            doc! { "pendingAudit": { "$exists": true } }
        )
        .await,
        0
    );
    wait_processed(&db, "audit-f", 1, "the patient goes on").await;
}

/// Issue 16, finding 8: an operator's reads of patient data are in the
/// audit log (who, which route, which patient or event, what was asked);
/// a client's reads of its own events are not.
#[tokio::test]
async fn operator_reads_of_patient_data_are_audited() {
    let uri = fresh_database_uri();
    let ingest = InProcessIngest::start(&uri, "http://127.0.0.1:9").await;
    let ids = send(&ingest.url, "read-audit-p", 1).await;
    let url = &ingest.url;
    let client = crate::support::client();
    client
        .get(format!("{url}/events/{}", ids[0]))
        .send()
        .await
        .unwrap();
    client
        .get(format!("{url}/patients/read-audit-p/events"))
        .send()
        .await
        .unwrap();
    admin_get(format!("{url}/events/{}", ids[0])).await;
    admin_get(format!("{url}/patients/read-audit-p/events")).await;
    admin_get(format!(
        "{url}/admin/events?status=queued&patientId=read-audit-p"
    ))
    .await;
    admin_get(format!("{url}/admin/messages?controlId=MSG-1")).await;

    let log = admin_get(format!("{url}/admin/audit")).await;
    let reads: Vec<&Value> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "read")
        .collect();
    assert_eq!(reads.len(), 4, "the operator's four reads only: {log}");
    // Newest first.
    assert_eq!(reads[0]["route"], "/admin/messages");
    assert_eq!(reads[0]["query"]["controlId"], "MSG-1");
    assert_eq!(reads[1]["route"], "/admin/events");
    assert_eq!(reads[1]["patientId"], "read-audit-p");
    assert_eq!(reads[1]["query"]["status"], "queued");
    assert_eq!(reads[2]["route"], "/patients/{patientId}/events");
    assert_eq!(reads[3]["route"], "/events/{eventId}");
    assert_eq!(reads[3]["eventId"], ids[0].as_str());
    assert!(reads.iter().all(|e| e["who"] == "test-operator"));
}
