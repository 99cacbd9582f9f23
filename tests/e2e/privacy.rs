//! No patient identifier and no clinical value reaches a log line.
//!
//! Both services run end to end (ingest, a processor delivering to a
//! downstream that refuses an attempt, replays, refusals, a direct post to
//! `/queue`), and every line either service logged is searched for the
//! patients' ids and the events' data. Log lines carry a keyed pseudonym of
//! the patient instead; `LOG_PATIENT_ID=plain` opts out, and then the raw id
//! is there, which is what shows this search can find one.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::checks::Db;
use crate::support::sink::Sink;
use crate::support::{
    Service, fresh_database_uri, ingest_env, processor_client, processor_env, wait_until,
};
use mongodb::bson::doc;
use reqwest::StatusCode;
use serde_json::{Value, json};

const PATIENTS: [&str; 3] = ["MRN-SECRET-1234", "MRN-SECRET-5678", "MRN-SECRET-9012"];
/// Clinical values, and a clinical word used as a key inside `data`.
const DATA_VALUES: [&str; 3] = [
    "glucose-secret-value",
    "diagnosis-secret-text",
    "secret-key-name",
];

fn clinical_event(patient: &str, n: usize) -> Value {
    json!({
        "patientId": patient,
        "type": "lab_result",
        "ts": "2025-10-01T12:00:00Z",
        "data": {
            "n": n,
            "result": "glucose-secret-value",
            "note": "diagnosis-secret-text",
            "secret-key-name": 1,
        },
    })
}

/// A processor delivering to `sink`, and an ingest in front of it.
async fn start_services(
    uri: &str,
    sink: &Sink,
    extra: &[(&'static str, String)],
) -> (Service, Service) {
    let mut env = processor_env(uri, 0, 0);
    env.push(("DELIVERY_URL", sink.url.clone()));
    env.extend(extra.iter().cloned());
    let processor = Service::start("processor", &env).await;
    crate::support::wait_for_leases(&processor.url(), 256).await;
    let mut env = ingest_env(uri, &processor.url());
    env.extend(extra.iter().cloned());
    let ingest = Service::start("ingest", &env).await;
    (processor, ingest)
}

/// The lines of both services' logs that contain any of `needles`.
fn lines_with(services: &[&Service], needles: &[&str]) -> Vec<String> {
    services
        .iter()
        .flat_map(|service| {
            service
                .read_log()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|line| needles.iter().any(|needle| line.contains(needle)))
        .collect()
}

#[tokio::test]
async fn patient_ids_and_clinical_data_never_reach_the_logs() {
    let uri = fresh_database_uri();
    let sink = Sink::start(Duration::from_millis(5)).await;
    // The downstream refuses the first delivery of each patient's first
    // event: a failed attempt, logged, then retried.
    let refused: Arc<Mutex<HashSet<String>>> = Arc::default();
    let seen = Arc::clone(&refused);
    sink.refuse(move |body| {
        body["seq"] == 1
            && seen
                .lock()
                .unwrap()
                .insert(body["eventId"].as_str().unwrap_or_default().to_owned())
    });
    let (processor, ingest) = start_services(&uri, &sink, &[]).await;
    let client = crate::support::client();
    let events = format!("{}/events", ingest.url());
    let mut accepted = HashSet::new();
    for (p, patient) in PATIENTS.iter().enumerate() {
        for n in 0..3 {
            let response = client
                .post(&events)
                .header("Idempotency-Key", format!("key-{p}-{n}"))
                .json(&clinical_event(patient, n))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::ACCEPTED);
            let body: Value = response.json().await.unwrap();
            accepted.insert(body["eventId"].as_str().unwrap().to_owned());
        }
        // A retry (replayed), a reused key (422), a keyless duplicate (replayed).
        let retry = client
            .post(&events)
            .header("Idempotency-Key", format!("key-{p}-0"))
            .json(&clinical_event(patient, 0))
            .send()
            .await
            .unwrap();
        assert_eq!(retry.headers()["idempotent-replayed"], "true");
        let reused = client
            .post(&events)
            .header("Idempotency-Key", format!("key-{p}-0"))
            .json(&clinical_event(patient, 7))
            .send()
            .await
            .unwrap();
        assert_eq!(reused.status(), StatusCode::UNPROCESSABLE_ENTITY);
        for attempt in 0..2 {
            let response = client
                .post(&events)
                .json(&clinical_event(patient, 9))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::ACCEPTED);
            assert_eq!(
                response.headers().contains_key("idempotent-replayed"),
                attempt == 1
            );
            let body: Value = response.json().await.unwrap();
            accepted.insert(body["eventId"].as_str().unwrap().to_owned());
        }
        // Refused for its content: the problem names fields, the log nothing.
        let invalid = client
            .post(&events)
            .json(&json!({"patientId": patient, "type": "", "ts": "no", "data": {"$bad": "glucose-secret-value"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(invalid.status(), StatusCode::BAD_REQUEST);
    }
    // A direct post to the processor, with an event it has not seen.
    let mut direct = clinical_event(PATIENTS[0], 10);
    let direct_id = uuid::Uuid::new_v4().to_string();
    direct["eventId"] = json!(direct_id);
    let response = processor_client()
        .post(format!("{}/queue", processor.url()))
        .json(&direct)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    accepted.insert(direct_id.clone());
    // Each patient: 3 keyed events, 1 keyless (its duplicate replayed).
    assert_eq!(accepted.len(), PATIENTS.len() * 4 + 1);

    let db = Db::connect(&uri).await;
    wait_until(Duration::from_secs(60), "every event delivered", || async {
        db.processed_count().await == accepted.len() as u64
    })
    .await;
    assert_eq!(
        db.count("processed_events", doc! { "result.status": "success" })
            .await,
        accepted.len() as u64
    );
    assert_eq!(refused.lock().unwrap().len(), PATIENTS.len());
    wait_until(
        Duration::from_secs(10),
        "the refusals in the log",
        || async { !lines_with(&[&processor], &["processing attempt failed"]).is_empty() },
    )
    .await;
    // A status read, and the log lines of a whole run are in. One of this
    // client's events: the direct post is the processor client's, which
    // this client cannot see (a set's order would pick it now and then).
    let id = accepted.iter().find(|id| **id != direct_id).unwrap();
    let status = client.get(format!("{events}/{id}")).send().await.unwrap();
    assert_eq!(status.status(), StatusCode::OK);
    assert_eq!(
        lines_with(&[&ingest], &["event accepted"]).len(),
        PATIENTS.len() * 4
    );

    let mut secrets: Vec<&str> = PATIENTS.to_vec();
    secrets.extend(DATA_VALUES);
    // The patient's number without its prefix, as a formatter might print it.
    secrets.extend(PATIENTS.iter().map(|p| p.trim_start_matches("MRN-")));
    let leaked = lines_with(&[&ingest, &processor], &secrets);
    assert!(
        leaked.is_empty(),
        "patient ids or clinical data in the logs:\n{}",
        leaked.join("\n")
    );
    // What the lines carry instead: a pseudonym per patient.
    let pseudonyms: HashSet<String> = lines_with(&[&ingest], &["event accepted"])
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|line| line["patient"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(pseudonyms.len(), PATIENTS.len(), "{pseudonyms:?}");
    assert!(pseudonyms.iter().all(|p| p.starts_with("p-")));
}

#[tokio::test]
async fn with_log_patient_id_plain_the_raw_id_is_logged() {
    let uri = fresh_database_uri();
    let sink = Sink::start(Duration::from_millis(5)).await;
    let plain = [("LOG_PATIENT_ID", "plain".to_owned())];
    let (processor, ingest) = start_services(&uri, &sink, &plain).await;
    let response = crate::support::client()
        .post(format!("{}/events", ingest.url()))
        .json(&clinical_event(PATIENTS[0], 1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let db = Db::connect(&uri).await;
    wait_until(Duration::from_secs(30), "the event delivered", || async {
        db.processed_count().await == 1
    })
    .await;
    wait_until(Duration::from_secs(10), "the outcome logged", || async {
        !lines_with(&[&processor], &["event processed"]).is_empty()
    })
    .await;
    for (service, what) in [(&ingest, "event accepted"), (&processor, "event processed")] {
        let lines = lines_with(&[service], &[what]);
        assert!(
            lines.iter().all(|line| line.contains(PATIENTS[0])),
            "{lines:?}"
        );
    }
    // Plain ids, still no clinical data.
    assert!(lines_with(&[&ingest, &processor], &DATA_VALUES).is_empty());
}

/// Issue 16, finding 9: a downstream answering `307` gets no redirect
/// followed (the target sees neither the event nor the credentials); the
/// client's view of the failed event carries no internal error text, an
/// operator's does; every answer says `Cache-Control: no-store`; at
/// `RUST_LOG=debug` no URI with the patient id reaches the logs.
#[tokio::test]
async fn no_redirect_is_followed_clients_see_no_internal_text_and_no_uri_is_logged() {
    let uri = fresh_database_uri();
    let target = Sink::start(Duration::from_millis(5)).await;
    // The redirecting downstream.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let redirect_base = format!("http://{}", listener.local_addr().unwrap());
    let redirector = format!("{redirect_base}/deliver");
    let location = target.url.clone();
    tokio::spawn(async move {
        let app = axum::Router::new().fallback(move || {
            let location = location.clone();
            async move { (StatusCode::TEMPORARY_REDIRECT, [("location", location)]) }
        });
        axum::serve(listener, app).await.unwrap();
    });
    let mut env = processor_env(&uri, 0, 0);
    env.extend([
        ("DELIVERY_URL", redirector),
        (
            "DELIVERY_AUTH_HEADER",
            "X-Downstream-Key: downstream-secret-0123".to_owned(),
        ),
        ("MAX_ATTEMPTS", "1".to_owned()),
        ("RUST_LOG", "debug".to_owned()),
    ]);
    let processor = Service::start("processor", &env).await;
    crate::support::wait_for_leases(&processor.url(), 256).await;
    let mut env = ingest_env(&uri, &processor.url());
    env.push(("RUST_LOG", "debug".to_owned()));
    let ingest = Service::start("ingest", &env).await;

    let patient = "MRN-URI-4711";
    let id = crate::support::post_until_accepted(
        &crate::support::client(),
        &ingest.url(),
        &clinical_event(patient, 1),
        "redirect-1",
    )
    .await;
    let event_url = format!("{}/events/{id}", ingest.url());
    wait_until(Duration::from_secs(30), "the delivery fails", || async {
        let view = crate::support::json_of(crate::support::client().get(&event_url)).await;
        view["status"] == "failed"
    })
    .await;
    assert_eq!(target.count(), 0, "the redirect was followed");

    let response = crate::support::client()
        .get(&event_url)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["cache-control"], "no-store");
    let view: Value = response.json().await.unwrap();
    assert!(view.get("lastError").is_none(), "{view}");
    assert!(view["result"].get("error").is_none(), "{view}");
    let operator: Value = crate::support::admin_client()
        .get(&event_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        operator["lastError"]
            .as_str()
            .unwrap_or_default()
            .contains("307"),
        "an operator sees why: {operator}"
    );
    let timeline = crate::support::client()
        .get(format!(
            "{}/patients/{patient}/events?limit=5",
            ingest.url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(timeline.headers()["cache-control"], "no-store");
    // A patient id in the query string stays out of the logs as well.
    let listed = crate::support::admin_client()
        .get(format!(
            "{}/admin/events?status=failed&patientId={patient}",
            ingest.url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), StatusCode::OK);

    // Ingest's nudge to a PROCESSOR_URL that redirects: not followed either
    // (it carries the event and the processor's token).
    let mut env = ingest_env(&uri, &redirect_base);
    env.push(("RUST_LOG", "debug".to_owned()));
    let nudging = Service::start("ingest", &env).await;
    let second = "MRN-URI-4712";
    let id = crate::support::post_until_accepted(
        &crate::support::client(),
        &nudging.url(),
        &clinical_event(second, 1),
        "redirect-2",
    )
    .await;
    let event_url = format!("{}/events/{id}", nudging.url());
    wait_until(
        Duration::from_secs(30),
        "the second event fails",
        || async {
            let view =
                crate::support::json_of(crate::support::admin_client().get(&event_url)).await;
            view["status"] == "failed"
        },
    )
    .await;
    // The nudge was answered (307) and not followed.
    wait_until(Duration::from_secs(30), "the nudge's answer", || async {
        nudging
            .read_log()
            .lines()
            .any(|line| line.contains("processor refused the notification") && line.contains("307"))
    })
    .await;
    assert!(
        target.all().is_empty(),
        "a redirect was followed: {:?}",
        target.all()
    );
    let leaked = lines_with(
        &[&processor, &ingest, &nudging],
        &[patient, second, "downstream-secret"],
    );
    assert!(leaked.is_empty(), "{leaked:#?}");
}
