//! The processor fleet: several processors and ingest instances on one
//! database, with real binaries, a real downstream (`DELIVERY_URL` pointing
//! at a recording sink) and real faults: SIGKILL, SIGSTOP past the lease,
//! rolling restarts, scaling up and down. Every test checks what the sink
//! received and what the database holds, not only what was answered:
//! no event lost, one outcome per event, each patient's events delivered in
//! sequence and one at a time, a second delivery only for an event that was
//! in hand where the fault struck.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use e2e::checks::Db;
use e2e::sink::Sink;
use e2e::{
    Service, event_body, fresh_database_uri, ingest_env, post_until_accepted, processor_env,
    wait_until,
};
use futures_util::future::join_all;
use mongodb::bson::{Document, doc};

/// `LEASE_MS` of the test processors (see `processor_env`).
const LEASE: Duration = Duration::from_millis(4000);

fn fleet_env(uri: &str, sink: &Sink) -> Vec<(&'static str, String)> {
    let mut env = processor_env(uri, 0, 0);
    env.push(("DELIVERY_URL", sink.url.clone()));
    env
}

async fn start_processors(n: usize, env: &[(&str, String)]) -> Vec<Service> {
    let mut processors = Vec::new();
    for _ in 0..n {
        processors.push(Service::start("processor", env).await);
    }
    processors
}

/// Waits until the fleet's leases cover every bucket and are spread over
/// `instances` live processors (each with at least 3/4 of a fair share).
async fn wait_balanced(db: &Db, instances: usize) {
    let fair = 256 / instances;
    wait_until(
        Duration::from_secs(60),
        &format!("buckets spread over {instances} processors"),
        || async {
            let leases = db
                .find("leases", doc! { "bucket": { "$exists": true } }, doc! {})
                .await;
            let mut per_owner: HashMap<String, usize> = HashMap::new();
            for lease in &leases {
                if let Ok(owner) = lease.get_str("owner") {
                    *per_owner.entry(owner.to_owned()).or_default() += 1;
                }
            }
            per_owner.values().sum::<usize>() == 256
                && per_owner.len() == instances
                && per_owner.values().all(|n| *n >= fair * 3 / 4)
        },
    )
    .await;
}

/// The session (lease owner name) of the processor with this pid.
async fn session_of(db: &Db, processor: &Service) -> String {
    let pid = i64::from(processor.pid().expect("running"));
    let sessions = db.find("processors", doc! { "pid": pid }, doc! {}).await;
    sessions
        .first()
        .and_then(|s| s.get_str("_id").ok())
        .expect("the processor has a session")
        .to_owned()
}

/// Events of `session`'s claims that are not finished: in its hands.
async fn in_hand(db: &Db, session: &str) -> Vec<String> {
    db.find(
        "queued_events",
        doc! { "status": "queued", "claim.owner": session },
        doc! {},
    )
    .await
    .iter()
    .map(|d| d.get_str("_id").unwrap().to_owned())
    .collect()
}

/// The events `session` held when it was stopped or killed. A claim it sent
/// just before the signal can still commit after it: the database reads what
/// is already in the socket. So this collects what is in its hands for a
/// quarter of the lease, while nobody else can claim its buckets' events yet.
async fn in_hand_at_fault(db: &Db, session: &str) -> Vec<String> {
    let until = Instant::now() + LEASE / 4;
    let mut held = HashSet::new();
    while Instant::now() < until {
        held.extend(in_hand(db, session).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    held.into_iter().collect()
}

/// Sends each patient's events in order, alternating the ingest instances,
/// until `stop` (or `per_patient` events each); returns the eventIds per patient.
async fn send_until(
    ingests: Vec<String>,
    prefix: &str,
    patients: usize,
    per_patient: usize,
    pace: Duration,
    stop: Arc<AtomicBool>,
) -> Vec<(String, Vec<String>)> {
    let client = e2e::client();
    join_all((0..patients).map(|p| {
        let client = client.clone();
        let ingests = ingests.clone();
        let stop = Arc::clone(&stop);
        let patient = format!("{prefix}-{p}");
        async move {
            let mut ids = Vec::new();
            for n in 0..per_patient {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let url = &ingests[(p + n) % ingests.len()];
                let body = event_body(&patient, n);
                ids.push(post_until_accepted(&client, url, &body, &format!("{patient}-{n}")).await);
                tokio::time::sleep(pace).await;
            }
            (patient, ids)
        }
    }))
    .await
}

/// Every accepted event has exactly one outcome, was processed in its
/// patient's order, and is `processed`.
async fn assert_all_done(db: &Db, accepted: &[(String, Vec<String>)]) {
    let total: usize = accepted.iter().map(|(_, ids)| ids.len()).sum();
    wait_until(
        Duration::from_secs(120),
        &format!("{total} outcomes"),
        || async { db.processed_count().await >= total as u64 },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        db.processed_count().await,
        total as u64,
        "an outcome too many"
    );
    assert_eq!(
        db.count("queued_events", doc! { "status": "processed" })
            .await,
        total as u64
    );
    for (patient, ids) in accepted {
        db.assert_processed_in_order(patient, ids).await;
    }
}

async fn attempts_above_one(db: &Db) -> Vec<String> {
    db.find("queued_events", doc! { "attempts": { "$gt": 1 } }, doc! {})
        .await
        .iter()
        .map(|d| d.get_str("_id").unwrap().to_owned())
        .collect()
}

fn patients_of(accepted: &[(String, Vec<String>)]) -> HashSet<String> {
    accepted.iter().map(|(p, _)| p.clone()).collect()
}

#[tokio::test]
async fn a_processor_killed_mid_run_loses_nothing_and_its_patients_resume_within_the_lease() {
    let uri = fresh_database_uri();
    let db = Db::connect(&uri).await;
    let sink = Sink::start(Duration::from_millis(150)).await;
    let mut processors = start_processors(3, &fleet_env(&uri, &sink)).await;
    wait_balanced(&db, 3).await;
    let ingests = [
        Service::start("ingest", &ingest_env(&uri, &processors[0].url())).await,
        Service::start("ingest", &ingest_env(&uri, &processors[2].url())).await,
    ];
    let urls: Vec<String> = ingests.iter().map(Service::url).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(send_until(urls, "kill", 30, 8, Duration::ZERO, stop));
    wait_until(Duration::from_secs(60), "deliveries under way", || async {
        sink.count() >= 40
    })
    .await;

    let victim = session_of(&db, &processors[1]).await;
    let victim_buckets: HashSet<i32> = db
        .find(
            "leases",
            doc! { "owner": &victim, "bucket": { "$exists": true } },
            doc! {},
        )
        .await
        .iter()
        .filter_map(|l| l.get_i32("bucket").ok())
        .collect();
    processors[1].kill9();
    let killed_at = Instant::now();
    let orphaned = in_hand_at_fault(&db, &victim).await;
    eprintln!(
        "killed a processor holding {} buckets and {} events",
        victim_buckets.len(),
        orphaned.len()
    );

    let accepted = load.await.unwrap();
    assert_all_done(&db, &accepted).await;
    sink.assert_ordered_one_at_a_time(&orphaned);
    // Only the events in hand where the crash struck were run twice.
    for id in attempts_above_one(&db).await {
        assert!(
            orphaned.contains(&id),
            "event {id} counted an attempt no crash caused"
        );
    }
    // The killed instance's patients went on within a lease and a scan.
    let resumed = sink
        .deliveries()
        .into_iter()
        .filter(|d| d.started > killed_at)
        .filter(|d| victim_buckets.contains(&medical_events::bucket::of(&d.patient)))
        .map(|d| d.started - killed_at)
        .min();
    if let Some(resumed) = resumed {
        eprintln!("its patients resumed {resumed:?} after the kill");
        // The lease runs out, the next balancing tick (a third of the lease)
        // sees it, the takeover scan wakes the patients.
        assert!(
            resumed < LEASE + LEASE / 3 + Duration::from_secs(3),
            "resumed after {resumed:?}"
        );
    }
    assert!(patients_of(&accepted).len() == 30);
}

#[tokio::test]
async fn a_paused_processor_writes_nothing_after_its_buckets_were_taken_over() {
    let uri = fresh_database_uri();
    let db = Db::connect(&uri).await;
    // Deliveries long enough that the pause strikes while events are in hand.
    let sink = Sink::start(Duration::from_millis(800)).await;
    let processors = start_processors(2, &fleet_env(&uri, &sink)).await;
    wait_balanced(&db, 2).await;
    let ingest = Service::start("ingest", &ingest_env(&uri, &processors[0].url())).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(send_until(
        vec![ingest.url()],
        "pause",
        16,
        5,
        Duration::ZERO,
        stop,
    ));
    let paused = session_of(&db, &processors[1]).await;
    wait_until(
        Duration::from_secs(30),
        "events in the paused one's hands",
        || async { !in_hand(&db, &paused).await.is_empty() },
    )
    .await;

    let pid = processors[1].pid().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap();
    let held = in_hand_at_fault(&db, &paused).await;
    // Past the lease: the other processor takes the buckets over.
    wait_until(Duration::from_secs(30), "the takeover", || async {
        db.count(
            "leases",
            doc! { "owner": &paused, "bucket": { "$exists": true } },
        )
        .await
            == 0
    })
    .await;
    // Writes it sent before the pause may land until here; none may after.
    let taken_over_at = mongodb::bson::DateTime::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap();

    let accepted = load.await.unwrap();
    assert_all_done(&db, &accepted).await;
    tokio::time::sleep(LEASE).await;
    // Nothing the paused instance did after waking reached the documents:
    // every event it held was finished by the new owner, under a newer epoch.
    for id in &held {
        let event: Document = db
            .find("queued_events", doc! { "_id": id }, doc! {})
            .await
            .remove(0);
        let claim = event.get_document("claim").unwrap();
        assert_ne!(
            claim.get_str("owner").unwrap(),
            paused,
            "event {id} finished by the paused instance"
        );
        assert_eq!(event.get_str("status").unwrap(), "processed");
    }
    // No write of its landed after the takeover: every document it last
    // wrote was written before.
    let late = db
        .count(
            "queued_events",
            doc! { "claim.owner": &paused, "updatedAt": { "$gt": taken_over_at } },
        )
        .await;
    assert_eq!(
        late, 0,
        "the paused instance wrote after its buckets were taken over"
    );
    sink.assert_ordered_one_at_a_time(&held);
    let log = processors[1].read_log();
    assert!(
        log.contains("session expired") || log.contains("refused by fencing"),
        "the paused instance did not notice it lost its buckets"
    );
}

#[tokio::test]
async fn a_rolling_restart_under_load_moves_work_in_seconds_without_violations() {
    let uri = fresh_database_uri();
    let db = Db::connect(&uri).await;
    let sink = Sink::start(Duration::from_millis(100)).await;
    let env = fleet_env(&uri, &sink);
    let mut processors = start_processors(3, &env).await;
    wait_balanced(&db, 3).await;
    let ingest = Service::start("ingest", &ingest_env(&uri, &processors[0].url())).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(send_until(
        vec![ingest.url()],
        "roll",
        20,
        1000,
        Duration::from_millis(100),
        Arc::clone(&stop),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    for processor in processors.iter_mut() {
        // SIGTERM: events in hand finish, leases are released at once.
        let status = processor.terminate(Duration::from_secs(20)).await;
        assert!(status.success());
        *processor = Service::start("processor", &env).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let accepted = load.await.unwrap();
    assert_all_done(&db, &accepted).await;
    sink.assert_ordered_one_at_a_time(&[]);
    assert!(
        attempts_above_one(&db).await.is_empty(),
        "a graceful hand-over counted an attempt"
    );
    // No event waited long for its new owner: between one delivery of a
    // patient and the next there is never more than a few seconds.
    let mut last: HashMap<String, Instant> = HashMap::new();
    let mut longest = Duration::ZERO;
    for delivery in sink.deliveries() {
        if let Some(previous) = last.insert(delivery.patient.clone(), delivery.ended) {
            longest = longest.max(delivery.started.saturating_duration_since(previous));
        }
    }
    eprintln!("longest gap between a patient's deliveries: {longest:?}");
    assert!(
        longest < Duration::from_secs(5),
        "a patient waited {longest:?}"
    );
}

#[tokio::test]
async fn scaling_from_one_to_three_and_back_rebalances_without_two_owners() {
    let uri = fresh_database_uri();
    let db = Db::connect(&uri).await;
    let sink = Sink::start(Duration::from_millis(100)).await;
    let env = fleet_env(&uri, &sink);
    let mut processors = start_processors(1, &env).await;
    wait_balanced(&db, 1).await;
    let ingest = Service::start("ingest", &ingest_env(&uri, &processors[0].url())).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(send_until(
        vec![ingest.url()],
        "scale",
        20,
        1000,
        Duration::from_millis(100),
        Arc::clone(&stop),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    processors.extend(start_processors(2, &env).await);
    wait_balanced(&db, 3).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for mut processor in processors.drain(1..) {
        assert!(processor.terminate(Duration::from_secs(20)).await.success());
    }
    wait_balanced(&db, 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    let accepted = load.await.unwrap();
    assert_all_done(&db, &accepted).await;
    sink.assert_ordered_one_at_a_time(&[]);
    assert!(attempts_above_one(&db).await.is_empty());
}
