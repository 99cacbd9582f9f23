//! The processor's scheduler against the real store, with handlers that fail
//! on purpose: retries, giving up after MAX_ATTEMPTS, and resuming work that
//! a crash left half-done.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::checks::Db;
use e2e::{event_body, fresh_database_uri, wait_until};
use medical_events::config::RetryPolicy;
use medical_events::event::{EventId, NewEvent};
use medical_events::processing::EventHandler;
use medical_events::scheduler::Scheduler;
use medical_events::store::{
    EnqueueOutcome, ProcessedEvent, ProcessingResult, QueuedEvent, Store, Submission,
};
use mongodb::bson::doc;

/// Fails each event's first `failures[n]` attempts (n = `data.n`), records calls.
#[derive(Clone, Default)]
struct ScriptedHandler {
    failures: Arc<HashMap<i64, u32>>,
    calls: Arc<Mutex<Vec<(i64, u32)>>>,
}

impl ScriptedHandler {
    fn failing(failures: &[(i64, u32)]) -> Self {
        Self {
            failures: Arc::new(failures.iter().copied().collect()),
            calls: Arc::default(),
        }
    }

    fn calls(&self) -> Vec<(i64, u32)> {
        self.calls.lock().unwrap().clone()
    }
}

impl EventHandler for ScriptedHandler {
    async fn handle(&self, event: &QueuedEvent) -> Result<(), String> {
        let n = event.data.get_i64("n").unwrap_or(-1);
        let attempt = {
            let mut calls = self.calls.lock().unwrap();
            let attempt = calls.iter().filter(|(m, _)| *m == n).count() as u32 + 1;
            calls.push((n, attempt));
            attempt
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        if attempt <= self.failures.get(&n).copied().unwrap_or(0) {
            Err(format!("lab system timeout on attempt {attempt}"))
        } else {
            Ok(())
        }
    }
}

fn policy(max_attempts: i32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(40),
    }
}

async fn store(uri: &str) -> Store {
    let store = Store::connect(uri, Duration::from_secs(5), "test")
        .await
        .unwrap();
    store.ensure_indexes().await.unwrap();
    store
}

async fn enqueue(store: &Store, patient: &str, n: usize) -> String {
    let event = NewEvent::parse(&event_body(patient, n)).unwrap();
    let submission = Submission {
        event: &event,
        event_id: EventId::new_random(),
        key: None,
        traceparent: None,
    };
    // Always guessing seq 1 also exercises the correction of a stale guess.
    match store.enqueue(&submission, 1).await.unwrap() {
        EnqueueOutcome::Accepted { event_id, .. } => event_id.to_string(),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn a_failing_attempt_is_retried_and_order_is_kept() {
    let uri = fresh_database_uri();
    let store = store(&uri).await;
    let ids = [
        enqueue(&store, "p", 0).await,
        enqueue(&store, "p", 1).await,
        enqueue(&store, "p", 2).await,
    ];
    let handler = ScriptedHandler::failing(&[(0, 2)]);
    let scheduler = Scheduler::new(store.clone(), handler.clone(), policy(5));
    scheduler.wake("p");
    let db = Db::connect(&uri).await;
    wait_until(Duration::from_secs(20), "3 processed events", || async {
        db.processed_count().await == 3
    })
    .await;

    assert_eq!(
        handler.calls(),
        vec![(0, 1), (0, 2), (0, 3), (1, 1), (2, 1)]
    );
    db.assert_processed_in_order("p", &ids).await;
    let first = store.find_event(&ids[0]).await.unwrap().unwrap();
    assert_eq!(first.attempts, 3);
    assert_eq!(
        store.find_processed(&ids[0]).await.unwrap().unwrap().result,
        ProcessingResult::success()
    );
}

#[tokio::test]
async fn an_event_failing_max_attempts_times_is_recorded_failed_and_the_patient_goes_on() {
    let uri = fresh_database_uri();
    let store = store(&uri).await;
    let poisoned = enqueue(&store, "p", 0).await;
    let next = enqueue(&store, "p", 1).await;
    let handler = ScriptedHandler::failing(&[(0, u32::MAX)]);
    let scheduler = Scheduler::new(store.clone(), handler.clone(), policy(3));
    scheduler.wake("p");
    let db = Db::connect(&uri).await;
    wait_until(Duration::from_secs(20), "2 outcomes", || async {
        db.processed_count().await == 2
    })
    .await;

    let failed = store.find_processed(&poisoned).await.unwrap().unwrap();
    assert_eq!(failed.result.status, "failed");
    assert_eq!(
        failed.result.error.as_deref(),
        Some("lab system timeout on attempt 3")
    );
    assert_eq!(handler.calls().iter().filter(|(n, _)| *n == 0).count(), 3);
    let queued = store.find_event(&poisoned).await.unwrap().unwrap();
    assert_eq!(queued.status.as_str(), "failed");
    assert_eq!(
        store
            .find_processed(&next)
            .await
            .unwrap()
            .unwrap()
            .result
            .status,
        "success"
    );
    db.assert_processed_in_order("p", &[poisoned, next]).await;
}

#[tokio::test]
async fn an_outcome_written_before_a_crash_is_not_redone() {
    let uri = fresh_database_uri();
    let store = store(&uri).await;
    let id = enqueue(&store, "p", 0).await;
    // Simulate a crash after the processed document was inserted but before
    // the queued event was marked processed.
    let queued = store.find_event(&id).await.unwrap().unwrap();
    let event = store.claim(queued).await.unwrap().unwrap();
    let outcome = ProcessedEvent::from_queued(&event, 5, ProcessingResult::success());
    let db = Db::connect(&uri).await;
    mongodb::Client::with_uri_str(&uri)
        .await
        .unwrap()
        .database(store.database_name())
        .collection::<ProcessedEvent>("processed_events")
        .insert_one(&outcome)
        .await
        .unwrap();
    let handler = ScriptedHandler::default();
    let scheduler = Scheduler::new(store.clone(), handler.clone(), policy(5));
    assert_eq!(scheduler.resume_unfinished().await.unwrap(), 1);
    wait_until(Duration::from_secs(10), "lifecycle closed", || async {
        store
            .find_event(&id)
            .await
            .unwrap()
            .unwrap()
            .status
            .as_str()
            == "processed"
    })
    .await;
    assert!(handler.calls().is_empty(), "the work must not run twice");
    assert_eq!(db.processed_count().await, 1);
}

#[tokio::test]
async fn an_event_that_keeps_crashing_the_processor_is_given_up() {
    let uri = fresh_database_uri();
    let store = store(&uri).await;
    let id = enqueue(&store, "p", 0).await;
    // Three claims without an outcome: three runs died while processing it.
    for _ in 0..3 {
        let queued = store.find_event(&id).await.unwrap().unwrap();
        store.claim(queued).await.unwrap().unwrap();
    }
    let handler = ScriptedHandler::default();
    let scheduler = Scheduler::new(store.clone(), handler.clone(), policy(3));
    scheduler.resume_unfinished().await.unwrap();
    let db = Db::connect(&uri).await;
    wait_until(Duration::from_secs(10), "a failed outcome", || async {
        db.processed_count().await == 1
    })
    .await;
    let outcome = store.find_processed(&id).await.unwrap().unwrap();
    assert_eq!(outcome.result.status, "failed");
    assert!(
        outcome
            .result
            .error
            .unwrap()
            .contains("interrupted 3 time(s)")
    );
    assert!(handler.calls().is_empty());
}

#[tokio::test]
async fn many_patients_run_in_parallel_each_in_order() {
    let uri = fresh_database_uri();
    let store = store(&uri).await;
    let mut expected: HashMap<String, Vec<String>> = HashMap::new();
    for n in 0..5 {
        for p in 0..30 {
            let patient = format!("patient-{p}");
            let id = enqueue(&store, &patient, n).await;
            expected.entry(patient).or_default().push(id);
        }
    }
    let scheduler = Scheduler::new(store.clone(), ScriptedHandler::default(), policy(5));
    let started = std::time::Instant::now();
    assert_eq!(scheduler.resume_unfinished().await.unwrap(), 30);
    let db = Db::connect(&uri).await;
    wait_until(Duration::from_secs(60), "150 processed events", || async {
        db.processed_count().await == 150
    })
    .await;
    for (patient, ids) in &expected {
        db.assert_processed_in_order(patient, ids).await;
    }
    wait_until(Duration::from_secs(5), "lanes to close", || async {
        scheduler.active_lanes() == 0
    })
    .await;
    // 150 events of 5 ms each would take 750 ms one after the other; lanes overlap.
    eprintln!("150 events over 30 patients took {:?}", started.elapsed());
    let db_queued = db
        .count("queued_events", doc! { "status": "processed" })
        .await;
    assert_eq!(db_queued, 150);
}
