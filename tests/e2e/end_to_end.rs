//! The whole system as deployed: both binaries spawned, real HTTP between
//! them, a real MongoDB-compatible server.

use std::time::{Duration, Instant, SystemTime};

use crate::support::checks::Db;
use crate::support::fault_proxy::{Fault, FaultProxy, mentions};
use crate::support::sink::Sink;
use crate::support::{
    Service, event_body, fresh_database_uri, ingest_env, metric_sum, post_until_accepted,
    processor_env, wait_until,
};
use futures_util::future::join_all;
use mongodb::bson::doc;
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn twenty_patients_by_ten_events_are_all_processed_once_and_in_order() {
    let uri = fresh_database_uri();
    let processor = Service::start("processor", &processor_env(&uri, 20, 40)).await;
    let ingest = Service::start("ingest", &ingest_env(&uri, &processor.url())).await;
    let client = crate::support::client();

    // Patients in parallel; each patient's events one after another, as a
    // hospital system sends them.
    let accepted: Vec<(String, Vec<String>)> = join_all((0..20).map(|p| {
        let client = client.clone();
        let url = ingest.url();
        async move {
            let patient = format!("patient-{p}");
            let mut ids = Vec::new();
            for n in 0..10 {
                ids.push(
                    post_until_accepted(
                        &client,
                        &url,
                        &event_body(&patient, n),
                        &format!("{patient}-{n}"),
                    )
                    .await,
                );
            }
            (patient, ids)
        }
    }))
    .await;

    let db = Db::connect(&uri).await;
    wait_until(Duration::from_secs(90), "200 processed events", || async {
        db.processed_count().await >= 200
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        db.processed_count().await,
        200,
        "an event was processed twice"
    );
    for (patient, ids) in &accepted {
        db.assert_processed_in_order(patient, ids).await;
    }
    db.wait_closed(200).await;

    // The status endpoint reports the outcome.
    let status: Value = crate::support::client()
        .get(format!("{}/events/{}", ingest.url(), accepted[0].1[0]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"], "processed");
    assert_eq!(status["attempts"], 1);
    assert_eq!(status["result"]["status"], "success");
}

/// A processor whose change stream is open hears of every insert from the
/// database, with the event; a nudge per event from ingest would only cost
/// both services CPU at the rate events arrive. Ingest stops nudging once
/// told so, and every event is still processed, once.
#[tokio::test]
async fn ingest_stops_nudging_a_processor_whose_change_stream_is_open() {
    let uri = fresh_database_uri();
    let processor = Service::start("processor", &processor_env(&uri, 0, 0)).await;
    let metrics = processor.metrics_url();
    wait_stream_open(&metrics).await;
    // One event for each of 30 patients: none has a lane when its event
    // arrives, the case where a nudge would start one.
    let ingest = Service::start("ingest", &ingest_env(&uri, &processor.url())).await;
    send_one_event_each(&uri, &ingest, &metrics, "streamed", 30).await;
    // Each event's nudge is sent, or counted as not needed, after its `202`
    // (from a task of its own): one may still be on its way.
    let nudges = || async { metric_sum(&metrics, "http_requests_total{route=\"/queue\"").await };
    let not_needed =
        || async { metric_sum(&ingest.metrics_url(), "notifications_not_needed_total").await };
    wait_until(
        Duration::from_secs(10),
        "every event's nudge sent or counted as not needed",
        || async { nudges().await + not_needed().await == 30.0 },
    )
    .await;
    // The first nudge asks; a few more may leave before its answer is back.
    let nudges = nudges().await;
    assert!(nudges <= 5.0, "{nudges} nudges sent of 30 events");
}

/// Sends one event for each of `patients` patients through `ingest`, waits
/// until all are processed, checks each was processed once, and returns how
/// many nudges the processor (`metrics`) received.
async fn send_one_event_each(
    uri: &str,
    ingest: &Service,
    metrics: &str,
    prefix: &str,
    patients: usize,
) -> f64 {
    let client = crate::support::client();
    for p in 0..patients {
        let patient = format!("{prefix}-{p}");
        post_until_accepted(&client, &ingest.url(), &event_body(&patient, 0), &patient).await;
    }
    let db = Db::connect(uri).await;
    wait_until(Duration::from_secs(60), "every event processed", || async {
        db.processed_count().await >= patients as u64
    })
    .await;
    let nudges = metric_sum(metrics, "http_requests_total{route=\"/queue\"").await;
    assert_eq!(
        db.processed_count().await,
        patients as u64,
        "an event was processed twice"
    );
    db.wait_closed(patients as u64).await;
    nudges
}

#[tokio::test]
async fn processed_documents_carry_the_original_fields() {
    let uri = fresh_database_uri();
    let processor = Service::start("processor", &processor_env(&uri, 10, 10)).await;
    let ingest = Service::start("ingest", &ingest_env(&uri, &processor.url())).await;
    let client = crate::support::client();
    let id = post_until_accepted(&client, &ingest.url(), &event_body("p-fields", 1), "k").await;
    let db = Db::connect(&uri).await;
    wait_until(Duration::from_secs(30), "one processed event", || async {
        db.processed_count().await == 1
    })
    .await;
    let doc = db
        .find("processed_events", doc! {}, doc! {})
        .await
        .remove(0);
    // The original service's fields, plus where the event sits and which
    // run produced the outcome.
    let mut keys: Vec<&str> = doc.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "_id",
            "attempts",
            "bucket",
            "client",
            "createdAt",
            "data",
            "eventId",
            "patientId",
            "processedAt",
            "processingDurationMs",
            "result",
            "run",
            "seq",
            "ts",
            "type",
            "updatedAt"
        ]
    );
    assert_eq!(doc.get_str("eventId").unwrap(), id);
    assert_eq!(
        doc.get_document("data").unwrap().get_str("test").unwrap(),
        "glucose"
    );
    assert_eq!(doc.get_str("ts").unwrap(), "2025-10-01T12:00:00.000Z");
    assert!(doc.get_datetime("processedAt").is_ok());
    assert_eq!(
        doc.get_document("result")
            .unwrap()
            .get_str("status")
            .unwrap(),
        "success"
    );
}

#[tokio::test]
async fn a_direct_post_to_the_processor_is_stored_and_processed_once() {
    let uri = fresh_database_uri();
    let processor = Service::start("processor", &processor_env(&uri, 10, 20)).await;
    let client = crate::support::processor_client();
    let event_id = uuid::Uuid::new_v4().to_string();
    let mut body = event_body("p-direct", 1);
    body["eventId"] = event_id.clone().into();
    for _ in 0..3 {
        let response = client
            .post(format!("{}/queue", processor.url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        assert_eq!(
            response.json::<Value>().await.unwrap(),
            serde_json::json!({"status": "accepted"})
        );
    }
    // Same id, different patient: refused, not silently merged.
    let mut conflicting = body.clone();
    conflicting["patientId"] = "someone-else".into();
    let response = client
        .post(format!("{}/queue", processor.url()))
        .json(&conflicting)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CONFLICT);
    // Invalid bodies are refused like on ingest.
    let mut invalid = body.clone();
    invalid["eventId"] = "nope".into();
    let response = client
        .post(format!("{}/queue", processor.url()))
        .json(&invalid)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    let db = Db::connect(&uri).await;
    wait_until(Duration::from_secs(30), "one processed event", || async {
        db.processed_count().await == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(db.processed_count().await, 1);
    assert_eq!(
        db.count("queued_events", doc! { "eventId": &event_id })
            .await,
        1
    );
}

#[tokio::test]
async fn the_real_default_timing_takes_five_to_six_seconds() {
    let uri = fresh_database_uri();
    // No PROCESSING_* settings: the production defaults.
    let processor = Service::start(
        "processor",
        &[
            ("MONGO_URI", uri.clone()),
            (
                "PROCESSOR_TOKEN",
                crate::support::PROCESSOR_TOKEN.to_owned(),
            ),
        ],
    )
    .await;
    let ingest = Service::start("ingest", &ingest_env(&uri, &processor.url())).await;
    let client = crate::support::client();
    let started = Instant::now();
    let id = post_until_accepted(&client, &ingest.url(), &event_body("p-real", 1), "real").await;
    let accepted_after = started.elapsed();
    let db = Db::connect(&uri).await;
    wait_until(
        Duration::from_secs(20),
        "the event to be processed",
        || async { db.processed_count().await == 1 },
    )
    .await;
    let doc = db
        .find("processed_events", doc! { "eventId": &id }, doc! {})
        .await
        .remove(0);
    let duration = doc.get_i64("processingDurationMs").unwrap();
    assert!(
        (5000..=6100).contains(&duration),
        "simulated processing took {duration} ms"
    );
    assert!(
        accepted_after < Duration::from_secs(5),
        "the 202 must not wait for processing"
    );
}

#[tokio::test]
async fn a_missing_setting_stops_start_up_with_one_clear_line() {
    let binary_dir = crate::support::binary_path("ingest")
        .parent()
        .unwrap()
        .to_path_buf();
    type Env = &'static [(&'static str, &'static str)];
    let cases: [(&str, Env, &str); 2] = [
        (
            "ingest",
            &[("MONGO_URI", "mongodb://127.0.0.1:1")],
            "PROCESSOR_URL is required",
        ),
        ("processor", &[], "MONGO_URI is required"),
    ];
    for (binary, env, message) in cases {
        let output = std::process::Command::new(binary_dir.join(binary))
            .env_clear()
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{binary}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{binary}: {stderr}");
        assert!(stderr.contains(message), "{binary}: {stderr}");
    }
    let output = std::process::Command::new(binary_dir.join("processor"))
        .env_clear()
        .env("MONGO_URI", "mongodb://127.0.0.1:1")
        .env("PROCESSING_MIN_MS", "fast")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("PROCESSING_MIN_MS"));
}

/// A lease whose renewal answers late is not usable for new work until the
/// answer is back, yet it comes back without a change of ownership to
/// announce it. A change stream that fails in that gap (here: its getMore
/// and the driver's one resume are cut) finds no usable bucket to open on;
/// it must open again once the lease is usable, or inserts wait for the
/// periodic sweep (never, within this test): ingest pauses its nudges for a
/// few seconds each time a processor answers that its stream is open.
#[tokio::test]
async fn the_change_stream_covers_a_lease_that_lapsed_and_came_back() {
    let uri = fresh_database_uri();
    let proxy = FaultProxy::start_for_shared().await;
    // (The timings: see `answer_next_renewal_late`.)
    let processor = Service::start("processor", &proxied_env(&proxy, &uri, "12000")).await;
    let metrics = processor.metrics_url();
    let stream_open =
        || async { metric_sum(&metrics, "processor_change_stream_open").await == 1.0 };
    wait_stream_open(&metrics).await;

    let sent = answer_next_renewal_late(&proxy).await;
    // 0.4 s into the gap (a renewal may leave a little after its tick): the
    // stream's next getMore fails, and so does the driver's resume, so the
    // watcher finds no usable lease to open it on. Not later: the getMore
    // comes only when the one in flight returns, and on a busy machine the
    // three faults took until 8.02 s when the rules went in at 6.5 s.
    tokio::time::sleep(Duration::from_millis(6_000)).await;
    let cut = proxy.on_next("getMore", "queued_events", Fault::DropRequest, 1);
    // (The driver resumes a stream once, and retries that read once.)
    let resume = proxy.on(
        "aggregate",
        "queued_events",
        Fault::DropRequest,
        2,
        Some(mentions("$changeStream")),
    );
    proxy.wait_hits(cut, 1, Duration::from_secs(5)).await;
    proxy.wait_hits(resume, 2, Duration::from_secs(5)).await;
    assert!(
        sent.elapsed() < Duration::from_millis(8_000),
        "the stream failed {:?} after the late renewal was sent, maybe after its answer",
        sent.elapsed()
    );
    wait_until(
        Duration::from_secs(10),
        "the change stream closed by the cut",
        || async { metric_sum(&metrics, "processor_change_stream_open").await == 0.0 },
    )
    .await;

    // The answer arrives at 8.5 s: the lease is usable again, unannounced.
    wait_until(
        Duration::from_secs(20),
        "the change stream open again, covering the lease",
        stream_open,
    )
    .await;

    // Inserts reach the processor through the stream: ingest learns it is
    // open from the first nudge's answer and stops nudging.
    let ingest = Service::start("ingest", &ingest_env(&uri, &processor.url())).await;
    let nudges = send_one_event_each(&uri, &ingest, &metrics, "lapsed", 10).await;
    assert!(
        nudges <= 5.0,
        "{nudges} nudges: the stream did not carry the inserts"
    );
    // Had the session expired, the change of ownership would have reopened
    // the stream without the check under test.
    assert_no_lease_changed_hands(&metrics).await;
}

/// A stream whose resume token is lost (`ChangeStreamHistoryLost`) starts
/// again from now: an event inserted after the watcher's scan at the error
/// and before the new stream opened is in neither. A scan once the stream is
/// open finds it; without one it waits for the periodic sweep (never, within
/// this test). Ingest here cannot nudge: the processor hears of inserts from
/// its stream and its scans alone.
#[tokio::test]
async fn an_insert_while_a_lost_stream_reopens_is_found() {
    let t = StreamOnly::start("4000", "lost").await;

    let scans = || async { metric_sum(&t.metrics, "takeover_scan_seconds_count").await };
    let scans_before = scans().await;
    let lost = t.proxy.on_next(
        "getMore",
        "queued_events",
        Fault::FailCommand { code: 286 },
        1,
    );
    // The new stream reaches the database only when released.
    let reopen = t.proxy.on(
        "aggregate",
        "queued_events",
        Fault::HoldRequest,
        1,
        Some(mentions("$changeStream")),
    );
    t.proxy.wait_hits(lost, 1, Duration::from_secs(5)).await;
    t.proxy.wait_hits(reopen, 1, Duration::from_secs(5)).await;
    wait_until(
        Duration::from_secs(10),
        "the scan at the error done (of an empty queue)",
        || async { scans().await > scans_before },
    )
    .await;
    post_until_accepted(
        &t.client,
        &t.ingest.url(),
        &event_body("lost-1", 0),
        "lost-1",
    )
    .await;
    t.proxy.release();
    wait_both_processed(
        &t.db,
        "the event inserted while the stream reopened processed",
    )
    .await;
}

/// A claim whose answer is lost, and whose copies fail until its lane gives
/// up, is adopted by the lane's next read (`claims_in_doubt.rs`): the work
/// starts then, long after the claim was stamped. `processedAt` must still
/// say when the work ended, not the claim's time plus the work's duration:
/// the outcome stream's replay looks back `REPLAY_OVERLAP` (10 s) from a
/// client's last id, and an outcome stamped further back than that is
/// missed by a client that reconnects.
#[tokio::test]
async fn an_adopted_claim_stamps_its_outcome_with_when_the_work_ran() {
    let uri = fresh_database_uri();
    let proxy = FaultProxy::start_for_shared().await;
    let sink = Sink::start(Duration::from_millis(300)).await;
    let mut env = proxied_env(&proxy, &uri, "4000");
    env.push(("DELIVERY_URL", sink.url.clone()));
    let processor = Service::start("processor", &env).await;
    wait_stream_open(&processor.metrics_url()).await;
    let ingest = Service::start("ingest", &ingest_env(&uri, &processor.url())).await;
    let db = Db::connect(&uri).await;

    // The claim applies but its answer is lost; every copy sent again fails,
    // so its fate stays unknown until the lane's lease time runs out.
    let lost = proxy.on_next("update", "queued_events", Fault::DropReply, 1);
    let copies = proxy.on_next(
        "update",
        "queued_events",
        Fault::FailCommand { code: 2 },
        1_000_000,
    );
    let client = crate::support::client();
    post_until_accepted(&client, &ingest.url(), &event_body("adopted", 0), "adopted").await;
    proxy.wait_hits(lost, 1, Duration::from_secs(15)).await;
    let claimed = SystemTime::now();
    // Only an adopted claim reaches the downstream: no copy ever applied.
    wait_until(
        Duration::from_secs(20),
        "the adopted claim's delivery",
        || async { !sink.all().is_empty() },
    )
    .await;
    assert!(proxy.hits(copies) >= 1, "the claim was never sent again");
    proxy.clear();
    db.wait_closed(1).await;

    let delivered = sink.all();
    assert_eq!(delivered.len(), 1, "delivered more than once");
    let wall = |at: Instant| SystemTime::now() - at.elapsed();
    let started = wall(delivered[0].started);
    let ended = wall(delivered[0].ended.expect("the delivery was answered"));
    let event = &db.events_of("adopted").await[0];
    assert_eq!(event.get_i32("attempts").unwrap(), 1, "{event:?}");
    let outcome = &db.find("processed_events", doc! {}, doc! {}).await[0];
    let processed_at = outcome
        .get_datetime("processedAt")
        .unwrap()
        .to_system_time();
    assert!(
        started.duration_since(claimed).unwrap_or_default() > Duration::from_millis(500),
        "the work started {:?} after the claim: the lane did not give up and adopt it",
        started.duration_since(claimed)
    );
    // The work's end by the processor's clock, so not before the downstream
    // answered (give or take the milliseconds the stamp rounds away).
    assert!(
        processed_at + Duration::from_millis(5) >= ended,
        "processedAt {processed_at:?} is before the work ended ({ended:?})"
    );
}

/// A zero-work processor's environment through `proxy`, with `LEASE_MS`
/// `lease_ms` and no periodic sweep within a test's time (what it finds is
/// then found by the change stream, a nudge or a takeover scan).
fn proxied_env(proxy: &FaultProxy, uri: &str, lease_ms: &str) -> Vec<(&'static str, String)> {
    let database = uri.rsplit('/').next().unwrap();
    let mut env = processor_env(&proxy.uri(database), 0, 0);
    env.retain(|(name, _)| !matches!(*name, "LEASE_MS" | "SWEEP_INTERVAL_MS"));
    env.push(("LEASE_MS", lease_ms.to_owned()));
    env.push(("SWEEP_INTERVAL_MS", "600000".to_owned()));
    env
}

async fn wait_stream_open(metrics: &str) {
    wait_until(
        Duration::from_secs(30),
        "the processor's change stream open",
        || async { metric_sum(metrics, "processor_change_stream_open").await == 1.0 },
    )
    .await;
}

/// While a lease is lapsed (a late renewal), nothing new starts in its
/// bucket: lanes stop, and the change stream's copies of inserts are
/// dropped. When the renewal's answer lands the bucket is scanned, so an
/// event that arrived in the gap is processed then, not left to the periodic
/// sweep (never, within this test). Ingest here cannot nudge: the processor
/// hears of inserts from its stream alone.
#[tokio::test]
async fn an_event_that_arrived_while_its_lease_was_lapsed_is_processed_when_it_returns() {
    let t = StreamOnly::start("12000", "gap").await;

    let scans = || async { metric_sum(&t.metrics, "takeover_scan_seconds_count").await };
    let scans_before = scans().await;
    let sent = answer_next_renewal_late(&t.proxy).await;
    tokio::time::sleep(Duration::from_millis(6_500)).await;
    post_until_accepted(&t.client, &t.ingest.url(), &event_body("gap-1", 0), "gap-1").await;
    assert!(
        sent.elapsed() < Duration::from_millis(8_000),
        "posted {:?} after the late renewal was sent, maybe after its answer",
        sent.elapsed()
    );
    wait_both_processed(&t.db, "the event that arrived in the gap processed").await;
    assert_no_lease_changed_hands(&t.metrics).await;
    assert!(
        scans().await > scans_before,
        "no scan when the lease came back: the event was found some other way"
    );
}

/// Holds the answer to the next session renewal 8.5 s (with `LEASE_MS`
/// 12000: renewals every 4 s, new work trusted 9.6 s after a renewal was
/// sent, the session 12 s after the database applied it). The renewal is
/// applied at once, so the session lives on in the database, but from 5.6 s
/// after it was sent the last answered renewal is too old for new work: the
/// leases lapse until the answer lands. Returns when it was sent.
async fn answer_next_renewal_late(proxy: &FaultProxy) -> Instant {
    // (`renewed`: a session renewal, not the declaration of a dead session.)
    let late = proxy.on(
        "findAndModify",
        "processors",
        Fault::DelayReply(Duration::from_millis(8_500)),
        1,
        Some(mentions("renewed")),
    );
    proxy.wait_hits(late, 1, Duration::from_secs(10)).await;
    Instant::now()
}

/// No session expired and no bucket was taken over: a change of ownership
/// would have restarted the stream and rescanned, whatever the test checks.
async fn assert_no_lease_changed_hands(metrics: &str) {
    for counter in ["lease_lost_total", "lease_takeovers_total"] {
        assert_eq!(metric_sum(metrics, counter).await, 0.0, "{counter}");
    }
}

/// A processor through a fault proxy, with no periodic sweep within a test,
/// and an ingest that cannot nudge it: it hears of inserts from its change
/// stream and its scans alone. One event already went that way.
struct StreamOnly {
    proxy: FaultProxy,
    /// Kept so that it runs until the test ends.
    _processor: Service,
    metrics: String,
    ingest: Service,
    client: reqwest::Client,
    db: Db,
}

impl StreamOnly {
    async fn start(lease_ms: &str, patient_prefix: &str) -> Self {
        let uri = fresh_database_uri();
        let proxy = FaultProxy::start_for_shared().await;
        let processor = Service::start("processor", &proxied_env(&proxy, &uri, lease_ms)).await;
        let metrics = processor.metrics_url();
        wait_stream_open(&metrics).await;
        // The start-up scans (at the acquisition and once the stream opened)
        // are done: the next one counted is the test's.
        wait_until(Duration::from_secs(10), "the start-up scans", || async {
            metric_sum(&metrics, "takeover_scan_seconds_count").await >= 2.0
        })
        .await;
        let ingest = Service::start("ingest", &ingest_env(&uri, "http://127.0.0.1:9")).await;
        let client = crate::support::client();
        let db = Db::connect(&uri).await;
        let first = format!("{patient_prefix}-0");
        post_until_accepted(&client, &ingest.url(), &event_body(&first, 0), &first).await;
        wait_until(
            Duration::from_secs(15),
            "the first event processed, heard of from the stream",
            || async { db.processed_count().await == 1 },
        )
        .await;
        Self {
            proxy,
            _processor: processor,
            metrics,
            ingest,
            client,
            db,
        }
    }
}

/// Waits until both events of a `StreamOnly` test are processed, once each.
async fn wait_both_processed(db: &Db, what: &str) {
    wait_until(Duration::from_secs(20), what, || async {
        db.processed_count().await == 2
    })
    .await;
    db.wait_closed(2).await;
}
