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

use crate::support::checks::Db;
use crate::support::fault_proxy::{Fault, FaultProxy, field_is};
use crate::support::sink::Sink;
use crate::support::{
    Service, event_body, fresh_database_uri, ingest_env, post_until_accepted, processor_env,
    wait_until,
};
use futures_util::future::join_all;
use mongodb::bson::{Bson, Document, doc};

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
/// just before the signal can still commit after it (the database reads
/// what is already in the socket, on a busy machine a second or more
/// later), but not once another instance has killed its session: from then
/// on the database refuses every write of it. So this collects what is in
/// its hands until its leases have moved.
async fn in_hand_at_fault(db: &Db, session: &str) -> Vec<String> {
    let mut held = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        held.extend(in_hand(db, session).await);
        let dead = db
            .count("processors", doc! { "_id": session, "dead": true })
            .await
            == 1;
        if dead && db.count("leases", doc! { "owner": session }).await == 0 {
            // Claims that landed before the kill are still on the events.
            held.extend(in_hand(db, session).await);
            return held.into_iter().collect();
        }
        assert!(
            Instant::now() < deadline,
            "the session was never taken over"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    let client = crate::support::client();
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
    db.wait_closed(total as u64).await;
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
    // The sink enforces tokens: a pause between the lane's last look at its
    // lease and the request reaching the socket cannot be closed from inside
    // the process, so a delivery sent before the pause may arrive after the
    // wake, while the new owner delivers; the token is what refuses it.
    let sink = Sink::enforcing(Duration::from_millis(800)).await;
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
    // The downstream took each patient's events one at a time and in order,
    // twice only what was in hand; the only deliveries it refused as stale
    // were of that work in hand: nothing new started on waking.
    sink.assert_accepted_in_order(&held);
    for delivery in sink.stale() {
        assert!(
            held.contains(&delivery.event_id),
            "a stale delivery of an event the paused one did not hold: {delivery:?}"
        );
    }
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
        let ended = delivery.ended.expect("an accepted delivery ended");
        if let Some(previous) = last.insert(delivery.patient.clone(), ended) {
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

/// The buckets `session` holds in the database.
async fn buckets_of(db: &Db, session: &str) -> HashSet<i32> {
    bucket_leases_of(db, session)
        .await
        .iter()
        .filter_map(|l| l.get_i32("bucket").ok())
        .collect()
}

/// The bucket lease documents `session` holds.
async fn bucket_leases_of(db: &Db, session: &str) -> Vec<mongodb::bson::Document> {
    db.find(
        "leases",
        doc! { "owner": session, "bucket": { "$exists": true } },
        doc! {},
    )
    .await
}

/// The highest epoch among the bucket leases `session` holds.
async fn highest_epoch_of(db: &Db, session: &str) -> u64 {
    bucket_leases_of(db, session)
        .await
        .iter()
        .filter_map(|l| l.get_i64("epoch").ok())
        .max()
        .map_or(0, |epoch| epoch as u64)
}

/// Events whose delivery the caller abandoned (its answer was lost): the
/// only ones a second delivery is expected for.
fn cut_off(sink: &Sink) -> Vec<String> {
    sink.all()
        .into_iter()
        .filter(|d| d.caller_hung_up)
        .map(|d| d.event_id)
        .collect()
}

/// Issue 13, hole 1: a scale-up while the downstream is slower than
/// `SHUTDOWN_GRACE_MS` must not hand over an event whose delivery is still
/// running: the hand-over waits for the work in hand.
#[tokio::test]
async fn a_scale_up_with_a_downstream_slower_than_the_grace_delivers_each_event_once() {
    let uri = fresh_database_uri();
    let db = Db::connect(&uri).await;
    let sink = Sink::start(Duration::from_secs(3)).await;
    let mut env = fleet_env(&uri, &sink);
    env.push(("SHUTDOWN_GRACE_MS", "1000".to_owned()));
    let mut processors = start_processors(1, &env).await;
    wait_balanced(&db, 1).await;
    let ingest = Service::start("ingest", &ingest_env(&uri, &processors[0].url())).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(send_until(
        vec![ingest.url()],
        "slow",
        20,
        3,
        Duration::ZERO,
        stop,
    ));
    wait_until(Duration::from_secs(30), "deliveries under way", || async {
        sink.open_now().len() >= 10
    })
    .await;
    processors.push(Service::start("processor", &env).await);
    wait_balanced(&db, 2).await;
    let accepted = load.await.unwrap();
    assert_all_done(&db, &accepted).await;
    sink.assert_ordered_one_at_a_time(&[]);
    assert!(
        attempts_above_one(&db).await.is_empty(),
        "a hand-over counted an attempt"
    );
}

/// Issue 13, hole 1 (SIGTERM): what is still in hand when the grace ends is
/// cut, and its bucket is not released early: the lease is left to expire,
/// so the next owner's delivery never overlaps the one the downstream may
/// still be working on.
#[tokio::test]
async fn a_sigterm_past_its_grace_leaves_the_cut_buckets_to_expire() {
    let uri = fresh_database_uri();
    let db = Db::connect(&uri).await;
    let sink = Sink::start(Duration::from_secs(3)).await;
    let mut env = fleet_env(&uri, &sink);
    env.push(("SHUTDOWN_GRACE_MS", "1000".to_owned()));
    let mut processors = start_processors(2, &env).await;
    wait_balanced(&db, 2).await;
    let ingest = Service::start("ingest", &ingest_env(&uri, &processors[1].url())).await;
    let victim = session_of(&db, &processors[0]).await;
    let victim_buckets = buckets_of(&db, &victim).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(send_until(
        vec![ingest.url()],
        "term",
        16,
        2,
        Duration::ZERO,
        stop,
    ));
    wait_until(
        Duration::from_secs(30),
        "deliveries of the victim's patients under way",
        || async {
            sink.open_now()
                .iter()
                .filter(|d| victim_buckets.contains(&medical_events::bucket::of(&d.patient)))
                .count()
                >= 2
        },
    )
    .await;
    assert!(
        processors[0]
            .terminate(Duration::from_secs(20))
            .await
            .success()
    );
    let accepted = load.await.unwrap();
    assert_all_done(&db, &accepted).await;
    let cut = cut_off(&sink);
    assert!(
        !cut.is_empty(),
        "the SIGTERM cut no delivery: the test proves nothing"
    );
    sink.assert_ordered_one_at_a_time(&cut);
}

/// Issue 13, hole 5: a hand-over whose release write fails keeps the bucket
/// (and retries) instead of forgetting it while the database still names it.
#[tokio::test]
async fn a_hand_over_whose_release_write_fails_does_not_orphan_the_bucket() {
    let uri = fresh_database_uri();
    let database = uri.rsplit('/').next().unwrap().to_owned();
    let db = Db::connect(&uri).await;
    let sink = Sink::start(Duration::ZERO).await;
    let proxy = FaultProxy::start_for_shared().await;
    let mut first_env = fleet_env(&proxy.uri(&database), &sink);
    first_env.push(("MONGO_TIMEOUT_MS", "1000".to_owned()));
    let first = Service::start("processor", &first_env).await;
    wait_balanced(&db, 1).await;
    // The first three releases never reach the database (each once more:
    // the driver retries a write once after a network error).
    let releases = proxy.on(
        "update",
        "leases",
        Fault::DropRequest,
        6,
        Some(field_is("updates.u.$set.owner", Bson::Null)),
    );
    let second = Service::start("processor", &fleet_env(&uri, &sink)).await;
    proxy.wait_hits(releases, 6, Duration::from_secs(30)).await;
    wait_balanced(&db, 2).await;
    // One event in every bucket: each must find its owner.
    let ingest = Service::start("ingest", &ingest_env(&uri, &second.url())).await;
    let mut covered = HashSet::new();
    let mut patients = Vec::new();
    for n in 0.. {
        let patient = format!("orphan-{n}");
        if covered.insert(medical_events::bucket::of(&patient)) {
            patients.push(patient);
        }
        if covered.len() == 256 {
            break;
        }
    }
    let client = crate::support::client();
    for patient in &patients {
        post_until_accepted(&client, &ingest.url(), &event_body(patient, 0), patient).await;
    }
    wait_until(
        Duration::from_secs(60),
        "an event in every bucket processed",
        || async { db.processed_count().await == 256 },
    )
    .await;
    drop(first);
}

/// Issue 13, hole 7: a processor whose wall clock runs hours ahead must not
/// end other processors' live sessions when it leaves.
#[tokio::test]
async fn a_processor_whose_clock_is_hours_ahead_leaves_without_ending_live_sessions() {
    let uri = fresh_database_uri();
    let db = Db::connect(&uri).await;
    let sink = Sink::start(Duration::ZERO).await;
    let env = fleet_env(&uri, &sink);
    let steady = Service::start("processor", &env).await;
    let mut ahead_env = env.clone();
    ahead_env.extend(crate::support::faketime("+2h", false));
    let mut ahead = Service::start("processor", &ahead_env).await;
    wait_balanced(&db, 2).await;
    let live = session_of(&db, &steady).await;
    assert!(ahead.terminate(Duration::from_secs(20)).await.success());
    assert_eq!(
        db.count("processors", doc! { "_id": &live }).await,
        1,
        "the leaving processor ended a live session"
    );
    wait_balanced(&db, 1).await;
}

/// Issue 13, hole 8: the documented change of the bucket count deletes the
/// leases; epochs must not restart, or every event claimed under an older,
/// higher epoch is fenced off for good (an operator's retry never runs).
#[tokio::test]
async fn after_the_leases_are_recreated_an_operator_retry_of_an_old_failure_runs() {
    let uri = fresh_database_uri();
    let db = Db::connect(&uri).await;
    let sink = Sink::enforcing(Duration::ZERO).await;
    let mut env = fleet_env(&uri, &sink);
    env.push(("MAX_ATTEMPTS", "1".to_owned()));
    // A deployment that has seen a few takeovers: epochs at 7.
    let mut processor = Service::start("processor", &env).await;
    wait_balanced(&db, 1).await;
    assert!(processor.terminate(Duration::from_secs(20)).await.success());
    db.update_many("leases", doc! {}, doc! { "$set": { "epoch": 7i64 } })
        .await;
    let mut processor = Service::start("processor", &env).await;
    wait_balanced(&db, 1).await;
    let ingest = Service::start("ingest", &ingest_env(&uri, &processor.url())).await;
    sink.refuse(|body| body["patientId"] == "old-p");
    let id = post_until_accepted(
        &crate::support::client(),
        &ingest.url(),
        &event_body("old-p", 0),
        "o-0",
    )
    .await;
    wait_until(Duration::from_secs(30), "the event failed", || async {
        db.count("queued_events", doc! { "_id": &id, "status": "failed" })
            .await
            == 1
    })
    .await;

    // The procedure: stop the processors, recompute the buckets (nothing
    // moves here: the count is compiled in), delete the leases, start again.
    assert!(processor.terminate(Duration::from_secs(20)).await.success());
    db.delete_many("leases", doc! { "bucket": { "$exists": true } })
        .await;
    let _processor = Service::start("processor", &env).await;
    wait_balanced(&db, 1).await;
    sink.accept_all();
    let retried = crate::support::admin_client()
        .post(format!("{}/admin/events/{id}/retry", ingest.url()))
        .json(&serde_json::json!({ "reason": "the lab system is fixed" }))
        .send()
        .await
        .unwrap();
    assert_eq!(retried.status(), reqwest::StatusCode::OK);
    wait_until(
        Duration::from_secs(30),
        "the retried event processed",
        || async {
            db.count("queued_events", doc! { "_id": &id, "status": "processed" })
                .await
                == 1
        },
    )
    .await;
    let tokens: Vec<Option<u64>> = sink
        .all()
        .iter()
        .filter(|d| d.patient == "old-p")
        .map(|d| d.token)
        .collect();
    assert_eq!(
        tokens.len(),
        2,
        "one refused delivery, one accepted: {tokens:?}"
    );
    assert!(
        tokens[0].is_some() && tokens[1] > tokens[0],
        "the token must rise across the new leases: {tokens:?}"
    );
}

/// The deliveries of `sink` whose patient is in `buckets`.
fn deliveries_in(
    deliveries: Vec<crate::support::sink::Delivery>,
    buckets: &HashSet<i32>,
) -> Vec<crate::support::sink::Delivery> {
    deliveries
        .into_iter()
        .filter(|d| buckets.contains(&medical_events::bucket::of(&d.patient)))
        .collect()
}

fn signal(processor: &Service, signal: &str) {
    let pid = processor.pid().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args([signal, &pid])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} failed");
}

/// Issue 13, the test its "done when" names: three processors delivering to
/// a downstream that holds each request 10 s and enforces the fencing token,
/// `SHUTDOWN_GRACE_MS` at its default. A fourth joins and one is SIGTERMed
/// and restarted: no event delivered twice, never two deliveries of one
/// patient open at once. Then one is paused past its lease mid-delivery and
/// resumed: the downstream sees its stale deliveries and refuses them, and
/// accepts nothing out of order.
#[tokio::test]
async fn a_fleet_on_a_slow_token_enforcing_downstream_through_a_join_a_restart_and_a_pause() {
    let uri = fresh_database_uri();
    let db = Db::connect(&uri).await;
    let sink = Sink::enforcing(Duration::from_secs(10)).await;
    let env = fleet_env(&uri, &sink);
    let mut processors = start_processors(3, &env).await;
    wait_balanced(&db, 3).await;
    let ingest = Service::start("ingest", &ingest_env(&uri, &processors[0].url())).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(send_until(
        vec![ingest.url()],
        "tok",
        24,
        4,
        Duration::ZERO,
        stop,
    ));
    wait_until(Duration::from_secs(30), "deliveries under way", || async {
        sink.open_now().len() >= 12
    })
    .await;

    processors.push(Service::start("processor", &env).await);
    wait_balanced(&db, 4).await;
    assert!(
        processors[1]
            .terminate(Duration::from_secs(40))
            .await
            .success()
    );
    processors[1] = Service::start("processor", &env).await;
    wait_balanced(&db, 4).await;
    assert_eq!(
        sink.max_open_per_patient(),
        1,
        "a join or a graceful restart let two deliveries of one patient overlap"
    );

    let paused = session_of(&db, &processors[2]).await;
    let paused_buckets = buckets_of(&db, &paused).await;
    wait_until(
        Duration::from_secs(60),
        "a fresh delivery of the paused one's patients",
        || async {
            deliveries_in(sink.open_now(), &paused_buckets)
                .iter()
                .any(|d| d.started.elapsed() < Duration::from_secs(2))
        },
    )
    .await;
    let paused_epoch = highest_epoch_of(&db, &paused).await;
    let stopped_at = std::time::Instant::now();
    signal(&processors[2], "-STOP");
    let in_hand_at_pause: Vec<String> = deliveries_in(sink.open_now(), &paused_buckets)
        .into_iter()
        .map(|d| d.event_id)
        .collect();
    wait_until(Duration::from_secs(30), "the takeover", || async {
        db.count(
            "leases",
            doc! { "owner": &paused, "bucket": { "$exists": true } },
        )
        .await
            == 0
    })
    .await;
    wait_until(
        Duration::from_secs(30),
        "the downstream refusing a stale delivery",
        || async { !sink.stale().is_empty() },
    )
    .await;
    signal(&processors[2], "-CONT");

    let accepted = load.await.unwrap();
    assert_all_done(&db, &accepted).await;
    let stale = sink.stale();
    for delivery in &stale {
        // A request the paused one sent just before the stop reaches the
        // downstream after the look at what was open (still in the socket,
        // or finished on waking): its own buckets, its token or lower.
        let sent_before_the_pause_arrived_after = delivery.started >= stopped_at
            && paused_buckets.contains(&medical_events::bucket::of(&delivery.patient))
            && delivery.token.is_some_and(|token| token <= paused_epoch);
        assert!(
            in_hand_at_pause.contains(&delivery.event_id) || sent_before_the_pause_arrived_after,
            "a stale delivery of an event the paused one did not hold: {delivery:?}"
        );
    }
    sink.assert_accepted_in_order(&in_hand_at_pause);
    for delivery in sink.all() {
        assert_eq!(
            delivery.idempotency_key, delivery.event_id,
            "every delivery carries its eventId as Idempotency-Key"
        );
        assert!(
            delivery.token.is_some(),
            "every delivery carries a fencing token"
        );
    }
}

/// Issue 13, holes 6 and 7: a processor whose clock runs at half speed and
/// whose renewals are lost keeps believing in its lease after the database
/// expired its session and another instance took its buckets. Nothing it
/// starts after that may reach the store or the downstream.
#[tokio::test]
async fn a_processor_with_a_slow_clock_starts_nothing_after_its_buckets_were_taken_over() {
    let uri = fresh_database_uri();
    let database = uri.rsplit('/').next().unwrap().to_owned();
    let db = Db::connect(&uri).await;
    let sink = Sink::enforcing(Duration::from_millis(300)).await;
    let proxy = FaultProxy::start_for_shared().await;
    let mut slow_env = fleet_env(&proxy.uri(&database), &sink);
    slow_env.extend(crate::support::faketime("+0 x0.5", true));
    let slow = Service::start("processor", &slow_env).await;
    wait_balanced(&db, 1).await;
    let steady = Service::start("processor", &fleet_env(&uri, &sink)).await;
    wait_balanced(&db, 2).await;
    let slow_session = session_of(&db, &slow).await;
    let slow_buckets = buckets_of(&db, &slow_session).await;
    let ingest = Service::start("ingest", &ingest_env(&uri, &steady.url())).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(send_until(
        vec![ingest.url()],
        "slowclock",
        24,
        20,
        Duration::ZERO,
        Arc::clone(&stop),
    ));
    wait_until(Duration::from_secs(30), "deliveries under way", || async {
        deliveries_in(sink.all(), &slow_buckets).len() >= 10
    })
    .await;
    // From now on the slow one's renewals never reach the database.
    proxy.on_next("findAndModify", "processors", Fault::DropRequest, 100_000);
    wait_until(Duration::from_secs(30), "the takeover", || async {
        db.count(
            "leases",
            doc! { "owner": &slow_session, "bucket": { "$exists": true } },
        )
        .await
            == 0
    })
    .await;
    let taken_over_at = Instant::now();
    let started_before: Vec<String> = deliveries_in(sink.all(), &slow_buckets)
        .into_iter()
        .map(|d| d.event_id)
        .collect();
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::SeqCst);
    let accepted = load.await.unwrap();
    assert_all_done(&db, &accepted).await;
    sink.assert_accepted_in_order(&started_before);
    let late: Vec<_> = deliveries_in(sink.all(), &slow_buckets)
        .into_iter()
        .filter(|d| d.started > taken_over_at && d.verdict == crate::support::sink::Verdict::Stale)
        .collect();
    assert!(
        late.is_empty(),
        "the slow one started deliveries after the takeover: {late:?}"
    );
}
