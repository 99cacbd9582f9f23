//! The processor's worker (lanes, leases, fencing) against the real store,
//! with handlers that fail on purpose: retries, giving up after
//! MAX_ATTEMPTS, resuming work that a crash left half-done, fenced writes,
//! and the per-attempt deadline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::checks::Db;
use crate::support::fault_proxy::{Command, Fault, FaultProxy, RuleId, mentions};
use crate::support::{event_body, fresh_database_uri, wait_until};
use futures_util::future::join_all;
use medical_events::event::{EventId, NewEvent};
use medical_events::processor::processing::{EventHandler, HandlerError};
use medical_events::processor::scheduler::LaneConfig;
use medical_events::processor::worker::{Worker, WorkerConfig};
use medical_events::retry::RetryPolicy;
use medical_events::store::Action;
use medical_events::store::{
    Applied, Claimed, Close, EnqueueOutcome, EventStatus, Fence, IntakePolicy, NextEvent,
    ProcessedEvent, ProcessingResult, QueuedEvent, READ_AHEAD, RunEnd, Store, Submission,
};
use mongodb::bson::{Bson, DateTime, doc};

/// Fails each event's first `failures[n]` attempts (n = `data.n`), records
/// calls; events listed in `hang` never finish.
#[derive(Clone, Default)]
struct ScriptedHandler {
    failures: Arc<HashMap<i64, u32>>,
    hang: Arc<Vec<i64>>,
    calls: Arc<Mutex<Vec<(i64, u32)>>>,
}

impl ScriptedHandler {
    fn failing(failures: &[(i64, u32)]) -> Self {
        Self {
            failures: Arc::new(failures.iter().copied().collect()),
            ..Self::default()
        }
    }

    fn calls(&self) -> Vec<(i64, u32)> {
        self.calls.lock().unwrap().clone()
    }
}

impl EventHandler for ScriptedHandler {
    async fn handle(&self, event: &QueuedEvent) -> Result<(), HandlerError> {
        let n = event.data.get_i64("n").unwrap_or(-1);
        let attempt = {
            let mut calls = self.calls.lock().unwrap();
            let attempt = calls.iter().filter(|(m, _)| *m == n).count() as u32 + 1;
            calls.push((n, attempt));
            attempt
        };
        if self.hang.contains(&n) && attempt == 1 {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        if attempt <= self.failures.get(&n).copied().unwrap_or(0) {
            Err(HandlerError::Failed(format!(
                "lab system timeout on attempt {attempt}"
            )))
        } else {
            Ok(())
        }
    }
}

fn config(max_attempts: i32) -> WorkerConfig {
    let mut lanes = LaneConfig::new(RetryPolicy {
        max_attempts,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(40),
    });
    lanes.attempt_timeout = Duration::from_millis(500);
    WorkerConfig {
        lanes,
        lease: Duration::from_secs(3),
        sweep_interval: Duration::from_millis(300),
        retention: None,
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
    enqueue_event(store, &NewEvent::parse(&event_body(patient, n)).unwrap()).await
}

async fn enqueue_event(store: &Store, event: &NewEvent) -> String {
    let submission = Submission {
        event,
        event_id: EventId::new_time_ordered(),
        client: crate::support::CLIENT,
        key: None,
        deduplicate: false,
        traceparent: None,
        size_hint: 100,
        origin: None,
    };
    // Always guessing seq 1 also exercises the correction of a stale guess.
    match store
        .enqueue(&submission, 1, &IntakePolicy::default())
        .await
        .unwrap()
    {
        EnqueueOutcome::Accepted { event_id, .. } => event_id.to_string(),
        other => panic!("unexpected {other:?}"),
    }
}

/// The fence of an instance whose session the database believes alive for
/// another hour.
fn fence(epoch: i64, owner: &str) -> Fence {
    Fence {
        epoch,
        owner: owner.into(),
        until: DateTime::from_millis(DateTime::now().timestamp_millis() + 3_600_000),
    }
}

/// A close that ends the run as processed and writes nothing else.
const PROCESSED: Close<'static> = Close {
    end: RunEnd::Processed,
    result: None,
    uncount: false,
};

/// The fence `claimed` was claimed under.
fn fence_of(claimed: &Claimed) -> Fence {
    fence(claimed.epoch, &claimed.event.claim.as_ref().unwrap().owner)
}

/// How long a test's claim may retry a lost answer.
fn soon() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

fn bucket(patient: &str) -> i32 {
    medical_events::bucket::of(patient)
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
    let worker = Worker::start(&store, handler.clone(), config(5))
        .await
        .unwrap();
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
    assert_eq!(first.api_status().as_str(), "processed");
    assert_eq!(
        store.find_processed(&ids[0]).await.unwrap().unwrap().result,
        ProcessingResult::success()
    );
    for id in &ids[1..] {
        assert_eq!(store.find_event(id).await.unwrap().unwrap().attempts, 1);
    }
    worker.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn an_event_failing_max_attempts_times_is_recorded_failed_and_the_patient_goes_on() {
    let uri = fresh_database_uri();
    let store = store(&uri).await;
    let poisoned = enqueue(&store, "p", 0).await;
    let next = enqueue(&store, "p", 1).await;
    let handler = ScriptedHandler::failing(&[(0, u32::MAX)]);
    let worker = Worker::start(&store, handler.clone(), config(3))
        .await
        .unwrap();
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
    assert_eq!(queued.api_status().as_str(), "failed");
    assert_eq!(queued.attempts, 3);
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
    worker.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn an_outcome_recorded_before_a_crash_is_not_redone() {
    let uri = fresh_database_uri();
    let store = store(&uri).await;
    let id = enqueue(&store, "p", 0).await;
    // A run claimed the event and recorded its outcome, then died before
    // writing processed_events and closing it.
    let claimed = claim(&store, "p", &fence(0, "dead-instance")).await;
    assert_eq!(
        store
            .record(
                &claimed,
                &fence_of(&claimed),
                &ProcessingResult::success(),
                DateTime::now(),
                5
            )
            .await
            .unwrap(),
        Applied::Yes
    );
    let handler = ScriptedHandler::default();
    let worker = Worker::start(&store, handler.clone(), config(5))
        .await
        .unwrap();
    let db = Db::connect(&uri).await;
    wait_until(Duration::from_secs(10), "lifecycle closed", || async {
        store
            .find_event(&id)
            .await
            .unwrap()
            .unwrap()
            .api_status()
            .as_str()
            == "processed"
    })
    .await;
    assert!(handler.calls().is_empty(), "the work must not run twice");
    assert_eq!(db.processed_count().await, 1);
    let event = store.find_event(&id).await.unwrap().unwrap();
    assert_eq!(
        event.attempts, 1,
        "finishing the bookkeeping is not an attempt"
    );
    worker.shutdown(Duration::from_secs(1)).await;
}

/// A run whose work succeeded stored its outcome document and died before
/// the close (a success has no record on the event before its close). The
/// next claim is not the run's first: it finds that outcome and closes the
/// event from it, without running the work again or counting an attempt.
#[tokio::test]
async fn a_success_whose_outcome_was_stored_before_a_crash_is_not_run_again() {
    let uri = fresh_database_uri();
    let store = store(&uri).await;
    let id = enqueue(&store, "p", 0).await;
    let claimed = claim(&store, "p", &fence(0, "dead-instance")).await;
    let (earlier, worker, db) = success_stored_then_a_worker(&store, &uri, &claimed, 5).await;
    assert_eq!(db.processed_count().await, 1);
    let event = store.find_event(&id).await.unwrap().unwrap();
    assert_eq!(event.attempts, 1, "closing from the outcome is no attempt");
    assert_eq!(event.result, Some(ProcessingResult::success()));
    assert_eq!(
        event.processed_at,
        Some(earlier),
        "not the stored outcome's"
    );
    worker.shutdown(Duration::from_secs(1)).await;
}

/// An earlier claim's success lands while the event runs again (its lane
/// was paused past its lease after its work succeeded, then its outcome
/// insert went through). The outcome stored first is the run's: the new
/// owner's close writes that one's result on the event, so the two agree.
#[tokio::test]
async fn a_late_success_of_an_earlier_claim_is_the_result_the_close_writes() {
    let uri = fresh_database_uri();
    let store = store(&uri).await;
    let id = enqueue(&store, "p", 0).await;
    let stale = claim(&store, "p", &fence(0, "paused-instance")).await;
    let earlier = DateTime::from_millis(DateTime::now().timestamp_millis() - 60_000);
    let handler = LateOutcome {
        store: store.clone(),
        outcome: succeeded(&stale, earlier),
        calls: Arc::default(),
    };
    let worker = Worker::start(&store, handler.clone(), config(5))
        .await
        .unwrap();
    let db = Db::connect(&uri).await;
    db.wait_closed(1).await;
    assert_eq!(*handler.calls.lock().unwrap(), 1);
    let outcome = store.find_processed(&handler.outcome.event_id).await;
    assert_eq!(outcome.unwrap().unwrap().processed_at, earlier);
    let event = store.find_event(&id).await.unwrap().unwrap();
    assert_eq!(
        event.processed_at,
        Some(earlier),
        "the event disagrees with its outcome"
    );
    assert_eq!(event.attempts, 2, "the second run is an attempt");
    assert_eq!(db.processed_count().await, 1);
    worker.shutdown(Duration::from_secs(1)).await;
}

/// A run gave the event up (its attempts used up by crashes) and recorded it
/// failed, while an earlier claim's success was stored late (that lane was
/// paused past its lease after its delivery succeeded), and then the
/// recording lane stopped too. The lane that finishes the recorded event
/// finds that success stored: the event closes as processed, with that result.
#[tokio::test]
async fn a_recorded_failure_whose_run_has_a_stored_success_closes_as_that_success() {
    let uri = fresh_database_uri();
    let store = store(&uri).await;
    let id = enqueue(&store, "p", 0).await;
    let paused = claim(&store, "p", &fence(0, "paused-instance")).await;
    let giving_up = claim(&store, "p", &fence(1, "next-owner")).await;
    let failed = ProcessingResult::failed(1, "processing was interrupted 1 time(s)".to_owned());
    let recorded = store
        .record(
            &giving_up,
            &fence_of(&giving_up),
            &failed,
            DateTime::now(),
            0,
        )
        .await;
    assert_eq!(recorded.unwrap(), Applied::Yes);
    let (earlier, worker, db) = success_stored_then_a_worker(&store, &uri, &paused, 1).await;
    let event = store.find_event(&id).await.unwrap().unwrap();
    assert_eq!(event.result, Some(ProcessingResult::success()));
    assert_eq!(event.processed_at, Some(earlier));
    let outcome = store
        .find_processed(&event.event_id)
        .await
        .unwrap()
        .unwrap();
    assert!(outcome.result.is_success());
    assert_eq!(db.processed_count().await, 1);
    worker.shutdown(Duration::from_secs(1)).await;
}

/// Stores a success of `claimed` processed a minute ago, starts a worker
/// (`max_attempts` as configured) and waits for the event's close; the work must not
/// have run again. Returns the success's time, the worker and the database.
async fn success_stored_then_a_worker(
    store: &Store,
    uri: &str,
    claimed: &Claimed,
    max_attempts: i32,
) -> (DateTime, Worker<ScriptedHandler>, Db) {
    let earlier = DateTime::from_millis(DateTime::now().timestamp_millis() - 60_000);
    store
        .write_outcome(&succeeded(claimed, earlier))
        .await
        .unwrap();
    let handler = ScriptedHandler::default();
    let worker = Worker::start(store, handler.clone(), config(max_attempts))
        .await
        .unwrap();
    let db = Db::connect(uri).await;
    db.wait_closed(1).await;
    assert!(handler.calls().is_empty(), "the work ran again");
    (earlier, worker, db)
}

/// The outcome document of a success of `claimed`, processed at `at`.
fn succeeded(claimed: &Claimed, at: DateTime) -> ProcessedEvent {
    let mut event = claimed.event.clone();
    event.result = Some(ProcessingResult::success());
    event.processed_at = Some(at);
    event.processing_duration_ms = Some(5_000);
    ProcessedEvent::from_recorded(&event).unwrap()
}

/// Succeeds, after storing `outcome` (another claim's) while it runs.
#[derive(Clone)]
struct LateOutcome {
    store: Store,
    outcome: ProcessedEvent,
    calls: Arc<Mutex<usize>>,
}

impl EventHandler for LateOutcome {
    async fn handle(&self, _event: &QueuedEvent) -> Result<(), HandlerError> {
        *self.calls.lock().unwrap() += 1;
        self.store.write_outcome(&self.outcome).await.unwrap();
        Ok(())
    }
}

#[tokio::test]
async fn an_event_that_keeps_crashing_the_processor_is_given_up() {
    let uri = fresh_database_uri();
    let store = store(&uri).await;
    let id = enqueue(&store, "p", 0).await;
    // Three claims without an outcome: three runs died while processing it.
    for run in 0..3 {
        let next = store
            .claim_next(bucket("p"), "p", &fence(0, &format!("dead-{run}")), soon())
            .await
            .unwrap();
        assert!(matches!(next, NextEvent::Claimed(_)));
    }
    assert_eq!(store.find_event(&id).await.unwrap().unwrap().attempts, 3);
    let handler = ScriptedHandler::default();
    let worker = Worker::start(&store, handler.clone(), config(3))
        .await
        .unwrap();
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
    worker.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn writes_under_a_superseded_epoch_are_refused_by_the_database() {
    let uri = fresh_database_uri();
    let store = store(&uri).await;
    let id = enqueue(&store, "p", 0).await;
    let old = claim(&store, "p", &fence(1, "paused-instance")).await;
    // A new owner took the bucket over (epoch 2) and claimed the event.
    let new = claim(&store, "p", &fence(2, "new-owner")).await;
    // The old owner wakes up: every write it tries is refused.
    let result = ProcessingResult::success();
    assert_eq!(
        store
            .record(&old, &fence_of(&old), &result, DateTime::now(), 1)
            .await
            .unwrap(),
        Applied::Fenced
    );
    assert_eq!(
        store
            .release_for_retry(&old, &fence_of(&old), "x")
            .await
            .unwrap(),
        Applied::Fenced
    );
    assert_eq!(
        store.hand_back(&old, &fence_of(&old)).await.unwrap(),
        Applied::Fenced
    );
    assert_eq!(
        store.close(&old, &fence_of(&old), PROCESSED).await.unwrap(),
        Applied::Fenced
    );
    // It cannot even claim it back.
    assert!(matches!(
        store
            .claim_next(bucket("p"), "p", &fence(1, "paused-instance"), soon())
            .await
            .unwrap(),
        NextEvent::Fenced
    ));
    let stored = store.find_event(&id).await.unwrap().unwrap();
    assert_eq!(stored.epoch, 2);
    assert_eq!(stored.claim.unwrap().owner, "new-owner");
    assert!(
        stored.result.is_none(),
        "nothing of the old owner's was recorded"
    );
    assert_eq!(
        store
            .record(&new, &fence_of(&new), &result, DateTime::now(), 1)
            .await
            .unwrap(),
        Applied::Yes
    );
}

/// Fenced writes of many events sent at once travel merged, many events to
/// one multi-document statement (`store/update_batch.rs`); the database
/// still decides each event alone: a superseded claim's write is refused
/// for its own event only, and each event gets its own changes, a release's
/// removal of the claim included.
#[tokio::test]
async fn fenced_writes_sent_together_are_decided_event_by_event() {
    let uri = fresh_database_uri();
    let direct = store(&uri).await;
    // Through a proxy that lets every command pass and counts the merged
    // ones, and those merging claims with fenced writes.
    let proxy = FaultProxy::start_for_shared().await;
    let store = store_bounded_through(&proxy, &uri, Duration::from_secs(5)).await;
    // The first rule a command matches counts it.
    let mixed = proxy.on(
        "update",
        "queued_events",
        Fault::DelayRequest(Duration::ZERO),
        usize::MAX,
        Some(Arc::new(|command: &Command| {
            let body = format!("{:?}", command.body);
            ["_batchPosition", "_claimable", "_fenced"]
                .iter()
                .all(|field| body.contains(field))
        })),
    );
    let merged = counting_merged_updates(&proxy);
    let patients: Vec<String> = (0..40).map(|i| format!("merged-{i}")).collect();
    let mut ids = Vec::new();
    for patient in &patients {
        ids.push(enqueue(&direct, patient, 0).await);
    }
    let mut late = Vec::new();
    for i in 0..10 {
        let id = enqueue(&direct, &format!("late-{i}"), 0).await;
        late.push(direct.find_event(&id).await.unwrap().unwrap());
    }
    let store = &store;
    let claim_all = |patients: Vec<String>, fence: Fence| {
        join_all(patients.into_iter().map(move |patient| {
            let fence = fence.clone();
            async move {
                match (store.claim_next(bucket(&patient), &patient, &fence, soon()))
                    .await
                    .unwrap()
                {
                    NextEvent::Claimed(claimed) => claimed,
                    other => panic!("{patient}: expected a claim, got {other:?}"),
                }
            }
        }))
    };
    let old = claim_all(patients.clone(), fence(1, "old-owner")).await;
    // A new owner takes every fourth event over.
    let taken = |i: usize| i % 4 == 0;
    let superseded: Vec<String> = (patients.iter().enumerate())
        .filter(|(i, _)| taken(*i))
        .map(|(_, p)| p.clone())
        .collect();
    claim_all(superseded, fence(2, "new-owner")).await;

    let result = ProcessingResult::success();
    let result = &result;
    let before = proxy.hits(merged);
    let recorded =
        join_all(old.iter().map(|c| async move {
            (store.record(c, &fence_of(c), result, DateTime::now(), 1)).await
        }))
        .await;
    for (i, applied) in recorded.into_iter().enumerate() {
        let expected = if taken(i) {
            Applied::Fenced
        } else {
            Applied::Yes
        };
        assert_eq!(applied.unwrap(), expected, "record of event {i}");
    }
    assert!(proxy.hits(merged) > before, "the records went unmerged");
    // Of the old owner's others, half released for a retry, half closed,
    // while other events are claimed (claims and fenced writes merged).
    let ends = join_all(old.iter().enumerate().filter(|(i, _)| !taken(*i)).map(
        |(i, c)| async move {
            if i % 2 == 0 {
                store.release_for_retry(c, &fence_of(c), "lab down").await
            } else {
                (store.close(c, &fence_of(c), PROCESSED)).await
            }
        },
    ));
    let claims = join_all(late.iter().cloned().map(|event| async move {
        (store.claim_prefetched(event, &fence(1, "old-owner"), soon())).await
    }));
    let (ends, claims) = tokio::join!(ends, claims);
    assert!(ends.into_iter().all(|end| end.unwrap() == Applied::Yes));
    for claim in claims {
        let claim = claim.unwrap();
        assert!(
            matches!(claim, Some(NextEvent::Claimed(_))),
            "got {claim:?}"
        );
    }
    assert!(
        proxy.hits(mixed) > 0,
        "no claim travelled with a fenced write"
    );

    for (i, id) in ids.iter().enumerate() {
        let stored = direct.find_event(id).await.unwrap().unwrap();
        let label = |write: &str| Some(format!("{}/{write}", old[i].token));
        if taken(i) {
            assert_eq!(stored.epoch, 2, "event {i}");
            assert_eq!(stored.claim.unwrap().owner, "new-owner", "event {i}");
            assert!(
                stored.result.is_none(),
                "event {i}: old owner's record landed"
            );
            assert_eq!(stored.fenced_by, None, "event {i}");
        } else if i % 2 == 0 {
            assert_eq!(stored.status, EventStatus::Queued, "event {i}");
            assert!(
                stored.claim.is_none(),
                "event {i}: claim kept after release"
            );
            assert_eq!(stored.last_error.as_deref(), Some("lab down"), "event {i}");
            assert!(stored.result.is_some(), "event {i}");
            assert_eq!(stored.fenced_by, label("release"), "event {i}");
        } else {
            assert_eq!(stored.status, EventStatus::Processed, "event {i}");
            assert!(stored.result.is_some(), "event {i}");
            assert_eq!(stored.fenced_by, label("close"), "event {i}");
        }
    }
    for event in &late {
        let stored = direct.find_event(&event.id).await.unwrap().unwrap();
        assert_eq!(stored.claim.unwrap().owner, "old-owner");
        assert_eq!((stored.attempts, stored.rev), (1, event.rev + 1));
        assert_eq!(stored.fenced_by, None);
    }
}

#[tokio::test]
async fn a_handler_that_hangs_is_a_failed_attempt() {
    let uri = fresh_database_uri();
    let store = store(&uri).await;
    let hung = enqueue(&store, "p", 0).await;
    let next = enqueue(&store, "p", 1).await;
    let handler = ScriptedHandler {
        hang: Arc::new(vec![0]),
        ..ScriptedHandler::default()
    };
    let worker = Worker::start(&store, handler.clone(), config(5))
        .await
        .unwrap();
    let db = Db::connect(&uri).await;
    wait_until(Duration::from_secs(20), "2 outcomes", || async {
        db.processed_count().await == 2
    })
    .await;
    let event = store.find_event(&hung).await.unwrap().unwrap();
    assert_eq!(
        event.attempts, 2,
        "the hung attempt counted, the retry succeeded"
    );
    assert!(
        event
            .last_error
            .unwrap()
            .contains("did not finish within 500 ms")
    );
    db.assert_processed_in_order("p", &[hung, next]).await;
    worker.shutdown(Duration::from_secs(1)).await;
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
    let worker = Worker::start(&store, ScriptedHandler::default(), config(5))
        .await
        .unwrap();
    let db = Db::connect(&uri).await;
    wait_until(Duration::from_secs(60), "150 processed events", || async {
        db.processed_count().await == 150
    })
    .await;
    for (patient, ids) in &expected {
        db.assert_processed_in_order(patient, ids).await;
    }
    wait_until(Duration::from_secs(5), "lanes to close", || async {
        worker.scheduler().active_lanes() == 0
    })
    .await;
    assert_eq!(
        db.count("queued_events", doc! { "status": "processed" })
            .await,
        150
    );
    worker.shutdown(Duration::from_secs(1)).await;
}

/// A merged statement the database refuses as a whole (a multi-document
/// update stops at the first document it cannot update) says nothing about
/// its members, some of which may have applied: each is sent again alone and
/// decided by its own fence. When every member had applied before the
/// refusal, a claim's copy is refused by the revision and recognised as
/// ours, a record's applies again with the same values, a close's is
/// refused by the status and recognised; when none had, each copy applies.
/// Either way each event runs once, its attempt counted once, each patient
/// in order.
#[tokio::test]
async fn writes_of_a_merged_statement_the_database_refused_after_applying_are_decided_one_by_one() {
    refused_merged_statements(true).await;
}

#[tokio::test]
async fn writes_of_a_merged_statement_the_database_refused_unapplied_are_sent_again() {
    refused_merged_statements(false).await;
}

async fn refused_merged_statements(applied: bool) {
    let uri = fresh_database_uri();
    let direct = store(&uri).await;
    let proxy = FaultProxy::start_for_shared().await;
    let through_proxy = store_bounded_through(&proxy, &uri, Duration::from_secs(5)).await;
    let refused = proxy.on(
        "update",
        "queued_events",
        Fault::RefuseMergedStatement { applied },
        20,
        Some(mentions("_batchPosition")),
    );
    let handler = ScriptedHandler::default();
    let db = process_all(&uri, &direct, &through_proxy, handler.clone(), "refused", 3).await;

    assert!(proxy.hits(refused) > 0, "no merged statement was sent");
    assert!(proxy.refusals() > 0, "no merged statement was refused");
    each_ran_once(&db, &handler).await;
}

/// A merged statement of claims is refused after applying, and each claim
/// sent again alone fails with a plain error: that error says nothing of the
/// first copy, which applied. The claim stays in doubt and goes again, so the
/// lane does not read the queue afresh and claim its own event a second
/// time: each attempt counted once.
#[tokio::test]
async fn a_claim_of_a_refused_merged_statement_whose_copy_fails_is_still_in_doubt() {
    let uri = fresh_database_uri();
    let direct = store(&uri).await;
    let proxy = FaultProxy::start_for_shared().await;
    let through_proxy = store_bounded_through(&proxy, &uri, Duration::from_secs(5)).await;
    let refused_ids: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = Arc::clone(&refused_ids);
    let refused = proxy.on(
        "update",
        "queued_events",
        Fault::RefuseMergedStatement { applied: true },
        5,
        Some(Arc::new(move |command: &Command| {
            // The statement the proxy refuses: the first naming several ids.
            let Some(merged) = (command.body.get_array("updates").into_iter().flatten())
                .filter_map(Bson::as_document)
                .find(|statement| {
                    statement
                        .get_document("q")
                        .and_then(|q| q.get_document("_id"))
                        .is_ok()
                })
            else {
                return false;
            };
            if !format!("{merged:?}").contains("_claimable") {
                return false;
            }
            let ids = merged
                .get_document("q")
                .unwrap()
                .get_document("_id")
                .unwrap();
            let ids = ids.get_array("$in").cloned().unwrap_or_default();
            let mut record = record.lock().unwrap();
            record.extend(ids.iter().filter_map(|id| id.as_str().map(str::to_owned)));
            true
        })),
    );
    let resent = proxy.on(
        "update",
        "queued_events",
        Fault::FailCommand { code: 2 },
        10,
        Some(Arc::new(move |command: &Command| {
            // The refused statement's claims, sent again one statement each.
            let refused = refused_ids.lock().unwrap();
            statements(command)
                .filter_map(|q| q.get_str("_id").ok())
                .any(|id| refused.iter().any(|refused| refused == id))
        })),
    );
    let handler = ScriptedHandler::default();
    let db = process_all(
        &uri,
        &direct,
        &through_proxy,
        handler.clone(),
        "in-doubt",
        3,
    )
    .await;

    assert!(proxy.hits(refused) > 0, "no merged claim was refused");
    assert!(proxy.hits(resent) > 0, "no refused claim was sent again");
    each_ran_once(&db, &handler).await;
}

/// After [`process_all`] with three events a patient: each of the 90 ran
/// once and counted one attempt.
async fn each_ran_once(db: &Db, handler: &ScriptedHandler) {
    assert_eq!(handler.calls().len(), 90, "an event ran twice");
    assert_eq!(
        db.count(
            "queued_events",
            doc! { "status": "processed", "attempts": 1 }
        )
        .await,
        90,
        "every event processed, each attempt counted once"
    );
}

/// The `q` of each statement of an `update` command.
fn statements(command: &Command) -> impl Iterator<Item = &mongodb::bson::Document> {
    (command.body.get_array("updates").into_iter().flatten())
        .filter_map(|statement| statement.as_document()?.get_document("q").ok())
}

/// `MERGED_WRITES_MAX=1`: every claim and fenced write goes as its own
/// statement (for a server whose expression evaluation costs more than its
/// commits), and processing is the same. The same run with the default
/// merges, so the proxy's rule does see merged statements when they are sent.
#[tokio::test]
async fn with_merging_off_each_write_is_its_own_statement() {
    for (max_merged, merges) in [(64, true), (1, false)] {
        let uri = fresh_database_uri();
        let direct = store(&uri).await;
        let proxy = FaultProxy::start_for_shared().await;
        let through_proxy = store_bounded_through(&proxy, &uri, Duration::from_secs(5)).await;
        through_proxy.set_max_merged(max_merged);
        let merged = counting_merged_updates(&proxy);
        let updates = proxy.on_next(
            "update",
            "queued_events",
            Fault::DelayRequest(Duration::ZERO),
            usize::MAX,
        );
        let prefix = format!("merged-{max_merged}");
        let handler = ScriptedHandler::default();
        process_all(&uri, &direct, &through_proxy, handler, &prefix, 2).await;

        // The proxy applies the first rule a command matches: merged
        // statements count under `merged`, the others under `updates`.
        let sent = proxy.hits(updates) + proxy.hits(merged);
        assert!(sent > 0, "the writes passed the proxy");
        assert_eq!(
            proxy.hits(merged) > 0,
            merges,
            "merged statements sent with MERGED_WRITES_MAX={max_merged}"
        );
    }
}

/// A rule that only counts the `update` commands on events that carry a
/// merged statement (one whose members are told apart by `_batchPosition`).
fn counting_merged_updates(proxy: &FaultProxy) -> RuleId {
    proxy.on(
        "update",
        "queued_events",
        Fault::DelayRequest(Duration::ZERO),
        usize::MAX,
        Some(mentions("_batchPosition")),
    )
}

/// Queues `per_patient` events for each of 30 patients (through `direct`),
/// runs a worker on `store` until all are processed, and checks each
/// patient's order.
async fn process_all(
    uri: &str,
    direct: &Store,
    store: &Store,
    handler: ScriptedHandler,
    prefix: &str,
    per_patient: usize,
) -> Db {
    let mut expected: HashMap<String, Vec<String>> = HashMap::new();
    for n in 0..per_patient {
        for p in 0..30 {
            let patient = format!("{prefix}-{p}");
            let id = enqueue(direct, &patient, n).await;
            expected.entry(patient).or_default().push(id);
        }
    }
    let worker = Worker::start(store, handler, config(5)).await.unwrap();
    let db = Db::connect(uri).await;
    let total = 30 * per_patient as u64;
    wait_until(Duration::from_secs(60), "every event processed", || async {
        db.processed_count().await == total
    })
    .await;
    worker.shutdown(Duration::from_secs(1)).await;
    for (patient, ids) in &expected {
        db.assert_processed_in_order(patient, ids).await;
    }
    db
}

#[tokio::test]
async fn a_claim_whose_reply_was_lost_counts_one_attempt() {
    let uri = fresh_database_uri();
    let store = store(&uri).await;
    let id = enqueue(&store, "p", 0).await;
    // The same database, through a proxy that will swallow the claim's reply.
    let proxy = FaultProxy::start_for_shared().await;
    let through_proxy = store_bounded_through(&proxy, &uri, Duration::from_secs(5)).await;
    let dropped = proxy.on_next("update", "queued_events", Fault::DropReply, 1);
    let next = through_proxy
        .claim_next(bucket("p"), "p", &fence(1, "instance"), soon())
        .await
        .unwrap();
    assert_eq!(proxy.hits(dropped), 1, "the claim's reply was dropped");
    let NextEvent::Claimed(claimed) = next else {
        panic!("the claim committed; its token must be recognised, got {next:?}");
    };
    assert_eq!(claimed.event.attempts, 1);
    let stored = store.find_event(&id).await.unwrap().unwrap();
    assert_eq!(
        stored.attempts, 1,
        "the lost reply must not count a second attempt"
    );
    assert_eq!(stored.claim.unwrap().token, claimed.token);
}

#[tokio::test]
async fn recovery_finds_100000_waiting_patients() {
    let uri = fresh_database_uri();
    let store = store(&uri).await;
    // Straight into the collection, in the stored shape, to set the scene fast.
    let queued = store
        .database()
        .collection::<mongodb::bson::Document>("queued_events");
    let now = DateTime::now();
    for chunk in 0..100 {
        let documents: Vec<_> = (chunk * 1000..(chunk + 1) * 1000)
            .map(|n| {
                let patient = format!("patient-{n}");
                let id = EventId::new_time_ordered().to_string();
                doc! {
                    "_id": &id, "eventId": &id, "client": "c", "patientId": &patient,
                    "bucket": bucket(&patient), "seq": 1i64, "type": "t", "data": {},
                    "ts": "2025-10-01T12:00:00.000Z", "intakeKey": format!("e:{id}"),
                    "status": "queued", "attempts": 0, "epoch": 0i64, "run": 1,
                    "acceptedAt": now, "updatedAt": now,
                }
            })
            .collect();
        queued.insert_many(documents).await.unwrap();
    }
    let started = std::time::Instant::now();
    let mut patients = std::collections::HashSet::new();
    let all: Vec<i32> = medical_events::bucket::all().collect();
    let seen = store
        .scan_waiting(&all, |p, _| {
            patients.insert(p.to_owned());
        })
        .await
        .unwrap();
    eprintln!(
        "recovery scan of 100,000 waiting patients took {:?}",
        started.elapsed()
    );
    assert_eq!(patients.len(), 100_000);
    assert_eq!(seen.events, 100_000);
    assert!(seen.oldest.is_some());
}

/// A store whose every operation passes through `proxy`, with a short
/// operation bound (2 x 500 ms).
async fn store_through(proxy: &FaultProxy, uri: &str) -> Store {
    store_bounded_through(proxy, uri, Duration::from_millis(500)).await
}

/// A store whose every operation passes through `proxy` (the database of
/// `uri`), each operation bounded by 2 x `timeout`.
async fn store_bounded_through(proxy: &FaultProxy, uri: &str, timeout: Duration) -> Store {
    let database = uri.rsplit('/').next().unwrap();
    Store::connect(&proxy.uri(database), timeout, "test")
        .await
        .unwrap()
}

/// Claims patient "p"'s next event as a lane does: on a store error, tries
/// again.
async fn claim_as_a_lane_does(through: &Store) -> Box<Claimed> {
    loop {
        match through
            .claim_next(bucket("p"), "p", &fence(1, "instance"), soon())
            .await
        {
            Ok(NextEvent::Claimed(claimed)) => return claimed,
            Ok(other) => panic!("expected a claim, got {other:?}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A `find` of one event by its id (a read-back), not a queue scan.
fn find_by_id() -> Option<crate::support::fault_proxy::Predicate> {
    filter_where(|filter| filter.contains_key("_id"))
}

/// A command whose `filter` satisfies `holds`.
fn filter_where(
    holds: fn(&mongodb::bson::Document) -> bool,
) -> Option<crate::support::fault_proxy::Predicate> {
    Some(Arc::new(
        move |command: &crate::support::fault_proxy::Command| {
            command.body.get_document("filter").is_ok_and(holds)
        },
    ))
}

/// Issue 13, hole 3: the claim's reply is lost and so is the read-back that
/// would have recognised it; the lane tries again. The attempt is counted
/// once, and the claim the lane works under is the one stored.
#[tokio::test]
async fn a_lost_claim_reply_whose_read_back_fails_still_counts_one_attempt() {
    one_attempt_after_a_lost_claim_reply(|proxy| {
        // The driver retries a read once: both copies of the read-back fail.
        proxy.on("find", "queued_events", Fault::DropRequest, 2, find_by_id())
    })
    .await;
}

/// Found in CI: the claim's reply is lost, and the copy sent again fails
/// with an error that, on its own, would say "not applied" (here a plain
/// command error; in CI, no server selectable within the timeout while the
/// connection was re-made). The first copy may still have applied, so the
/// claim's fate is unknown until the event says: giving up and letting the
/// lane read the queue again would claim it a second time and count a
/// second attempt.
#[tokio::test]
async fn a_lost_claim_reply_then_a_plain_error_still_counts_one_attempt() {
    one_attempt_after_a_lost_claim_reply(|proxy| {
        // BadValue: not a network error, not retryable.
        proxy.on_next("update", "queued_events", Fault::FailCommand { code: 2 }, 1)
    })
    .await;
}

/// The claim's reply is lost and every copy sent again fails until the
/// lane's time to claim runs out: it gives up with the claim's fate
/// unknown. The next claim (the lease renewed) finds the event under that
/// claim and adopts it instead of claiming it anew: one attempt counted.
#[tokio::test]
async fn a_claim_given_up_while_in_doubt_is_adopted_by_the_next_claim() {
    let (store, id, proxy, through) = an_event_whose_first_claim_reply_is_lost().await;
    let refused = proxy.on_next(
        "update",
        "queued_events",
        Fault::FailCommand { code: 2 },
        1_000,
    );
    let gave_up = through
        .claim_next(
            bucket("p"),
            "p",
            &fence(1, "instance"),
            Instant::now() + Duration::from_millis(300),
        )
        .await;
    assert!(gave_up.is_err(), "the claim settled: {gave_up:?}");
    assert!(proxy.hits(refused) >= 1, "no copy was sent again");
    proxy.clear();
    let claimed = claim_as_a_lane_does(&through).await;
    let stored = store.find_event(&id).await.unwrap().unwrap();
    assert_eq!(stored.attempts, 1, "one attempt, counted twice");
    assert_eq!(stored.claim.unwrap().token, claimed.token);
}

/// The claim's first reply is lost, then `then`'s fault strikes; the lane
/// claims until it has the event. One attempt is counted, under the claim
/// the lane holds.
async fn one_attempt_after_a_lost_claim_reply(then: impl FnOnce(&FaultProxy) -> RuleId) {
    let (store, id, proxy, through) = an_event_whose_first_claim_reply_is_lost().await;
    let second = then(&proxy);
    let claimed = claim_as_a_lane_does(&through).await;
    assert!(proxy.hits(second) >= 1, "the second fault never struck");
    let stored = store.find_event(&id).await.unwrap().unwrap();
    assert_eq!(stored.attempts, 1, "one attempt, counted twice");
    assert_eq!(stored.claim.unwrap().token, claimed.token);
}

/// One queued event, and a store reaching the database through a proxy that
/// loses the reply to the next claim: (direct store, event id, proxy, store
/// through the proxy).
async fn an_event_whose_first_claim_reply_is_lost() -> (Store, String, FaultProxy, Store) {
    let uri = fresh_database_uri();
    let store = store(&uri).await;
    let id = enqueue(&store, "p", 0).await;
    let proxy = FaultProxy::start_for_shared().await;
    let through = store_through(&proxy, &uri).await;
    proxy.on_next("update", "queued_events", Fault::DropReply, 1);
    (store, id, proxy, through)
}

/// Issue 13, hole 3: a claim delayed past its time limit must not land
/// after the lane's retry and take the event from under it.
#[tokio::test]
async fn a_claim_delayed_past_its_time_limit_cannot_land_after_the_retry() {
    let uri = fresh_database_uri();
    let store = store(&uri).await;
    let id = enqueue(&store, "p", 0).await;
    let proxy = FaultProxy::start_for_shared().await;
    let through = store_through(&proxy, &uri).await;
    proxy.on_next(
        "update",
        "queued_events",
        Fault::DelayRequest(Duration::from_millis(2500)),
        1,
    );
    let claimed = claim_as_a_lane_does(&through).await;
    // The delayed copy reaches the database now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        store
            .record(
                &claimed,
                &fence_of(&claimed),
                &ProcessingResult::success(),
                DateTime::now(),
                5
            )
            .await
            .unwrap(),
        Applied::Yes,
        "a late copy of the claim fenced the lane off its own event"
    );
    let stored = store.find_event(&id).await.unwrap().unwrap();
    assert_eq!(stored.attempts, 1, "the late copy counted a second attempt");
}

/// Issue 13, hole 4: an old owner's record lands between the new owner's
/// find and its claim. The new owner must see the record (and only finish
/// the bookkeeping), not decide from its earlier read and run the work again.
#[tokio::test]
async fn an_outcome_recorded_between_the_find_and_the_claim_is_not_run_again() {
    let uri = fresh_database_uri();
    let store = store(&uri).await;
    let id = enqueue(&store, "p", 0).await;
    let old = claim(&store, "p", &fence(1, "old-owner")).await;
    let proxy = FaultProxy::start_for_shared().await;
    let through = store_through(&proxy, &uri).await;
    let held = proxy.on_next("update", "queued_events", Fault::HoldRequest, 1);
    let new_owner = tokio::spawn(async move {
        through
            .claim_next(bucket("p"), "p", &fence(2, "new-owner"), soon())
            .await
    });
    proxy.wait_hits(held, 1, Duration::from_secs(10)).await;
    let failed = ProcessingResult::failed(1, "downstream answered 503".to_owned());
    assert_eq!(
        store
            .record(&old, &fence_of(&old), &failed, DateTime::now(), 5)
            .await
            .unwrap(),
        Applied::Yes
    );
    proxy.release();
    let next = new_owner.await.unwrap().unwrap();
    assert!(
        matches!(next, NextEvent::Recorded(_)),
        "the new owner decided from a stale read: {next:?}"
    );
    let stored = store.find_event(&id).await.unwrap().unwrap();
    assert_eq!(stored.result.unwrap(), failed);
}

/// Issue 13, hole 6: nothing lands from an instance whose session the
/// database's clock says is over, not even on an event the new owner has
/// not touched yet: not a claim, not a record of the event it holds.
#[tokio::test]
async fn nothing_lands_from_a_session_the_databases_clock_says_is_over() {
    let uri = fresh_database_uri();
    let store = store(&uri).await;
    let held = enqueue(&store, "p", 0).await;
    let untouched = enqueue(&store, "q", 0).await;
    let claimed = claim(&store, "p", &fence(1, "old-owner")).await;
    // The renewals stopped a while ago: the last one said "until a second ago".
    let over = Fence {
        until: DateTime::from_millis(DateTime::now().timestamp_millis() - 1_000),
        ..fence(1, "old-owner")
    };
    let result = ProcessingResult::success();
    assert_eq!(
        store
            .record(&claimed, &over, &result, DateTime::now(), 1)
            .await
            .unwrap(),
        Applied::Expired
    );
    assert!(matches!(
        store
            .claim_next(bucket("q"), "q", &over, soon())
            .await
            .unwrap(),
        NextEvent::Expired
    ));
    let held = store.find_event(&held).await.unwrap().unwrap();
    assert!(held.result.is_none(), "the record landed");
    let untouched = store.find_event(&untouched).await.unwrap().unwrap();
    assert!(untouched.claim.is_none(), "the claim landed");
    assert_eq!(untouched.attempts, 0);
}

/// An event stored before revisions existed (no `rev`): a claim the
/// database refuses must leave it unchanged, or the refusal would count as
/// a modified document and the lane would take a claim it does not hold.
#[tokio::test]
async fn a_refused_claim_leaves_an_event_without_a_revision_unchanged() {
    let uri = fresh_database_uri();
    let store = store(&uri).await;
    let id = enqueue(&store, "p", 0).await;
    let db = Db::connect(&uri).await;
    db.update_many(
        "queued_events",
        doc! { "_id": &id },
        doc! { "$unset": { "rev": "" } },
    )
    .await;
    let over = Fence {
        until: DateTime::from_millis(DateTime::now().timestamp_millis() - 1_000),
        ..fence(1, "old-owner")
    };
    let next = store
        .claim_next(bucket("p"), "p", &over, soon())
        .await
        .unwrap();
    assert!(matches!(next, NextEvent::Expired), "got {next:?}");
    let stored = db.find("queued_events", doc! { "_id": &id }, doc! {}).await;
    assert!(
        !stored[0].contains_key("rev"),
        "the refused claim wrote {:?}",
        stored[0]
    );
    assert!(!stored[0].contains_key("claim"));
}

/// A read of a patient's queue (an `aggregate` whose `$match` names the
/// patient; not a read-back by id, not the sweep).
fn queue_read() -> Option<crate::support::fault_proxy::Predicate> {
    Some(Arc::new(
        |command: &crate::support::fault_proxy::Command| {
            let matched = command
                .body
                .get_array("pipeline")
                .ok()
                .and_then(|stages| stages.first()?.as_document()?.get_document("$match").ok());
            matched.is_some_and(|filter| filter.contains_key("patientId"))
        },
    ))
}

/// A store reaching the database through a proxy that counts the reads of
/// a patient's queue (the rule's handle for `proxy.hits`).
async fn counting_queue_reads(uri: &str) -> (FaultProxy, Store, RuleId) {
    let proxy = FaultProxy::start_for_shared().await;
    let through = store_through(&proxy, uri).await;
    let reads = proxy.on(
        "aggregate",
        "queued_events",
        Fault::DelayRequest(Duration::ZERO),
        usize::MAX,
        queue_read(),
    );
    (proxy, through, reads)
}

/// Issue 17: a lane's read of its patient's queue returns the next events
/// too (up to `READ_AHEAD` in all), and once one is closed the lane claims
/// the next at the revision read, without reading the queue again. Twenty
/// events of one patient cost three queue reads, and run in order. (Before:
/// one read per event, 20; then one per two, 10.)
#[tokio::test]
async fn a_lane_claims_the_event_its_last_read_found_without_reading_again() {
    const EVENTS: usize = 20;
    let uri = fresh_database_uri();
    let store = store(&uri).await;
    let mut ids = Vec::new();
    for n in 0..EVENTS {
        ids.push(enqueue(&store, "p", n).await);
    }
    let (proxy, through, reads) = counting_queue_reads(&uri).await;
    let handler = ScriptedHandler::default();
    let worker = Worker::start(&through, handler.clone(), config(3))
        .await
        .unwrap();
    let db = Db::connect(&uri).await;
    wait_until(
        Duration::from_secs(60),
        &format!("{EVENTS} processed events"),
        || async { db.processed_count().await == EVENTS as u64 },
    )
    .await;
    worker.shutdown(Duration::from_secs(1)).await;

    db.assert_processed_in_order("p", &ids).await;
    let runs: Vec<i64> = handler.calls().iter().map(|(n, _)| *n).collect();
    assert_eq!(
        runs,
        (0..EVENTS as i64).collect::<Vec<_>>(),
        "each event ran once, in order"
    );
    // Three reads for twenty events (8 + 8 + 4: the last saw the end, so
    // none finds the queue empty), and a few the sweep's wake-ups may add.
    let reads = proxy.hits(reads);
    eprintln!("{reads} queue reads for {EVENTS} events");
    assert!(
        reads >= 1,
        "no queue read seen: the proxy's rule misses them"
    );
    assert!(
        reads <= EVENTS.div_ceil(READ_AHEAD as usize) + 3,
        "{reads} queue reads for {EVENTS} events of one patient"
    );
}

/// A worker whose change stream is open (inserts from now on reach it).
async fn start_with_stream<H: EventHandler>(
    store: &Store,
    handler: H,
    settings: WorkerConfig,
) -> Worker<H> {
    let worker = Worker::start(store, handler, settings).await.unwrap();
    let live = worker.scheduler().stream_live();
    // The scan once it opened is done too: one that runs after a test's
    // first insert would make that patient's lane read again.
    wait_until(
        Duration::from_secs(10),
        "the change stream open and the start-up scans done",
        || async {
            live.load(std::sync::atomic::Ordering::Acquire)
                && worker.scheduler().recovery_scans() >= 2
        },
    )
    .await;
    worker
}

/// Event `n` of `patient` carrying a report of `bytes` characters.
fn with_report(patient: &str, n: usize, bytes: usize) -> NewEvent {
    NewEvent::parse(&serde_json::json!({
        "patientId": patient,
        "type": "lab_result",
        "data": { "n": n, "report": "x".repeat(bytes) },
        "ts": "2025-10-01T12:00:00Z",
    }))
    .unwrap()
}

/// Records the length of each event's report as the handler got it.
#[derive(Clone, Default)]
struct ReportSizes(Arc<Mutex<Vec<usize>>>);

impl EventHandler for ReportSizes {
    async fn handle(&self, event: &QueuedEvent) -> Result<(), HandlerError> {
        let size = event.data.get_str("report").map_or(0, str::len);
        self.0.lock().unwrap().push(size);
        Ok(())
    }
}

/// The change stream carries an event of more than 16 KiB as its patient's
/// name only (the database cuts it, so no large copy crosses the wire or
/// waits in a lane): the lane reads the queue and runs the event whole.
#[tokio::test]
async fn a_large_inserted_event_comes_as_a_wake_and_runs_whole() {
    let uri = fresh_database_uri();
    let store = store(&uri).await;
    let (proxy, through, reads) = counting_queue_reads(&uri).await;
    let handler = ReportSizes::default();
    let mut settings = config(3);
    settings.sweep_interval = Duration::from_secs(60);
    let worker = start_with_stream(&through, handler.clone(), settings).await;
    let db = Db::connect(&uri).await;
    enqueue_event(&store, &with_report("p", 0, 10)).await;
    wait_until(
        Duration::from_secs(10),
        "the small one done, its lane gone",
        || async { db.processed_count().await == 1 && worker.scheduler().active_lanes() == 0 },
    )
    .await;
    enqueue_event(&store, &with_report("p", 1, 100_000)).await;
    wait_until(Duration::from_secs(10), "the large one done", || async {
        db.processed_count().await == 2
    })
    .await;
    worker.shutdown(Duration::from_secs(1)).await;

    assert_eq!(*handler.0.lock().unwrap(), vec![10, 100_000]);
    // The first read, and the one the large event's wake asked for.
    assert_eq!(proxy.hits(reads), 2);
}

/// Issue 17: with real work a patient has one event at a time, so its lane
/// exits after each close and every event used to cost a read of the queue
/// (the soak's 1,000 events/s over 10,000 patients). The change stream
/// carries the inserted event; a lane started by it claims it without
/// reading when it is the number the patient's last lane remembered as
/// next. Ten events, each inserted after the last one's lane exited: one
/// queue read, for the first (before: ten).
#[tokio::test]
async fn an_event_inserted_after_its_patients_lane_exited_is_claimed_without_a_read() {
    const EVENTS: usize = 10;
    let uri = fresh_database_uri();
    let store = store(&uri).await;
    let (proxy, through, reads) = counting_queue_reads(&uri).await;
    let handler = ScriptedHandler::default();
    let mut settings = config(3);
    // Only the change stream brings the lane back.
    settings.sweep_interval = Duration::from_secs(60);
    let worker = start_with_stream(&through, handler.clone(), settings).await;
    let db = Db::connect(&uri).await;
    let mut ids = Vec::new();
    for n in 0..EVENTS {
        ids.push(enqueue(&store, "p", n).await);
        wait_until(
            Duration::from_secs(10),
            &format!("event {n} processed and its lane gone"),
            || async {
                db.processed_count().await == n as u64 + 1 && worker.scheduler().active_lanes() == 0
            },
        )
        .await;
    }
    worker.shutdown(Duration::from_secs(1)).await;

    db.assert_processed_in_order("p", &ids).await;
    let runs: Vec<i64> = handler.calls().iter().map(|(n, _)| *n).collect();
    assert_eq!(runs, (0..EVENTS as i64).collect::<Vec<_>>());
    let reads = proxy.hits(reads);
    assert!(
        reads >= 1,
        "no queue read seen: the proxy's rule misses them"
    );
    assert_eq!(
        reads, 1,
        "{reads} queue reads for {EVENTS} events inserted one at a time"
    );
}

/// Takes 100 ms an event; fails event 0's first attempt; records the runs.
#[derive(Clone, Default)]
struct SlowHandler {
    runs: Arc<Mutex<Vec<i64>>>,
}

impl EventHandler for SlowHandler {
    async fn handle(&self, event: &QueuedEvent) -> Result<(), HandlerError> {
        let n = event.data.get_i64("n").unwrap_or(-1);
        let first = {
            let mut runs = self.runs.lock().unwrap();
            runs.push(n);
            !runs[..runs.len() - 1].contains(&n)
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        if n == 0 && first {
            return Err(HandlerError::Failed("lab system down".into()));
        }
        Ok(())
    }
}

/// An operator's retry is an update, which the change stream does not
/// carry, and a lane fed by the stream's copies of the next events never
/// reads: the periodic sweep sees the retried event below the lane's next
/// number and makes it read, so the retried event runs within a sweep, not
/// after everything the patient receives meanwhile.
#[tokio::test]
async fn a_retried_event_is_not_overtaken_for_long_by_events_claimed_from_the_stream() {
    const LAST: usize = 21;
    let uri = fresh_database_uri();
    let store = store(&uri).await;
    let handler = SlowHandler::default();
    let mut settings = config(1);
    settings.sweep_interval = Duration::from_millis(300);
    let worker = start_with_stream(&store, handler.clone(), settings).await;
    let db = Db::connect(&uri).await;
    let failed = enqueue(&store, "p", 0).await;
    enqueue(&store, "p", 1).await;
    wait_until(
        Duration::from_secs(10),
        "event 0 failed, event 1 processed, the lane gone",
        || async { db.processed_count().await == 2 && worker.scheduler().active_lanes() == 0 },
    )
    .await;
    // No wake: as when the operator's nudge reaches another instance.
    let retried = store.act(&failed, Action::Retry, "operator", "lab back up");
    assert!(matches!(
        retried.await.unwrap(),
        medical_events::store::ActionOutcome::Done(_)
    ));
    // Each next event arrives while the one before runs: the lane claims it
    // from the stream's copy, without reading the queue.
    for n in 2..=LAST {
        enqueue(&store, "p", n).await;
        wait_until(
            Duration::from_secs(10),
            &format!("event {n} running"),
            || async { handler.runs.lock().unwrap().contains(&(n as i64)) },
        )
        .await;
    }
    wait_until(Duration::from_secs(20), "every event done", || async {
        db.count("queued_events", doc! { "status": "queued" }).await == 0
    })
    .await;
    worker.shutdown(Duration::from_secs(1)).await;

    let runs = handler.runs.lock().unwrap().clone();
    let rerun = runs.iter().rposition(|n| *n == 0).unwrap();
    let last = runs.iter().position(|n| *n == LAST as i64).unwrap();
    assert!(
        rerun < last,
        "the retried event ran after all {} later ones: {runs:?}",
        LAST - 1
    );
    assert_eq!(runs.iter().filter(|n| **n == 0).count(), 2, "{runs:?}");
}

/// Holds event 0 until the gate opens; records the events it ran.
#[derive(Clone)]
struct GatedHandler {
    gate: Arc<tokio::sync::Semaphore>,
    runs: Arc<Mutex<Vec<i64>>>,
}

impl EventHandler for GatedHandler {
    async fn handle(&self, event: &QueuedEvent) -> Result<(), HandlerError> {
        let n = event.data.get_i64("n").unwrap_or(-1);
        self.runs.lock().unwrap().push(n);
        if n == 0 {
            let _open = self.gate.acquire().await;
        }
        Ok(())
    }
}

/// A wake that comes while the lane works through the events its read kept
/// is not used up by claiming them (they are no read): after the last kept
/// one, the lane reads again and finds the new event, though its read saw
/// the end of the queue. The sweep is a minute away, so only the wake can
/// bring the lane back.
#[tokio::test]
async fn an_event_arriving_while_the_lane_claims_kept_events_is_not_left_behind() {
    let uri = fresh_database_uri();
    let store = store(&uri).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(enqueue(&store, "p", n).await);
    }
    let handler = GatedHandler {
        gate: Arc::new(tokio::sync::Semaphore::new(0)),
        runs: Arc::default(),
    };
    let mut settings = config(3);
    settings.sweep_interval = Duration::from_secs(60);
    settings.lanes.attempt_timeout = Duration::from_secs(10);
    let worker = Worker::start(&store, handler.clone(), settings)
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "event 0 running", || async {
        handler.runs.lock().unwrap().contains(&0)
    })
    .await;
    // The lane's read found events 0-2 and the end of the queue.
    ids.push(enqueue(&store, "p", 3).await);
    worker.scheduler().wake("p");
    // Any wake from the change stream arrives meanwhile too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    handler.gate.add_permits(1);
    let db = Db::connect(&uri).await;
    wait_until(Duration::from_secs(10), "all four processed", || async {
        db.processed_count().await == 4
    })
    .await;
    worker.shutdown(Duration::from_secs(1)).await;
    db.assert_processed_in_order("p", &ids).await;
    assert_eq!(*handler.runs.lock().unwrap(), vec![0, 1, 2, 3]);
}

/// Claims the patient's next event, which must be there and claimable.
async fn claim(store: &Store, patient: &str, fence: &Fence) -> Box<Claimed> {
    match store
        .claim_next(bucket(patient), patient, fence, soon())
        .await
        .unwrap()
    {
        NextEvent::Claimed(claimed) => claimed,
        other => panic!("expected a claim, got {other:?}"),
    }
}

/// Records a success for `claimed` and closes it, both applied.
async fn finish_processed(store: &Store, claimed: &Claimed, fence: &Fence) {
    let success = ProcessingResult::success();
    let recorded = store.record(claimed, fence, &success, DateTime::now(), 5);
    assert_eq!(recorded.await.unwrap(), Applied::Yes);
    let closed = store.close(claimed, fence, PROCESSED);
    assert_eq!(closed.await.unwrap(), Applied::Yes);
}

/// The event kept from the last read is claimed only at the revision read:
/// once anything wrote to it since, the claim changes nothing and the lane
/// reads the queue again, getting the event as it is now. An event too
/// large to keep is not kept, only known to be there.
#[tokio::test]
async fn a_kept_next_event_that_changed_since_the_read_is_read_again() {
    let uri = fresh_database_uri();
    let store = store(&uri).await;
    let first = enqueue(&store, "p", 0).await;
    let second = enqueue(&store, "p", 1).await;
    let owner = fence(1, "owner");
    let claimed = claim(&store, "p", &owner).await;
    assert_eq!(claimed.event.event_id, first);
    let [kept] = claimed
        .ahead
        .clone()
        .try_into()
        .expect("the next event kept");
    assert_eq!(kept.event_id, second);
    assert!(!claimed.more_waiting, "the read saw the end of the queue");

    // Another writer moves the kept event on (every write moves `rev`).
    let db = Db::connect(&uri).await;
    db.update_many(
        "queued_events",
        doc! { "_id": &second },
        doc! { "$set": { "lastError": "noted by an operator" }, "$inc": { "rev": 1_i64 } },
    )
    .await;
    finish_processed(&store, &claimed, &owner).await;
    assert!(
        store
            .claim_prefetched(kept, &owner, soon())
            .await
            .unwrap()
            .is_none(),
        "a claim at a stale revision applied"
    );
    let stored = store.find_event(&second).await.unwrap().unwrap();
    assert_eq!(stored.attempts, 0, "the stale claim counted an attempt");
    assert!(stored.claim.is_none());
    let again = claim(&store, "p", &owner).await;
    assert_eq!(again.event.event_id, second);
    assert_eq!(
        again.event.last_error.as_deref(),
        Some("noted by an operator")
    );
    assert!(!again.more_waiting);
    assert!(again.ahead.is_empty());

    // Too large to keep: known to be there, read again when its turn comes.
    let big = with_report("q", 1, 20_000);
    enqueue(&store, "q", 0).await;
    enqueue_event(&store, &big).await;
    let first_of_q = claim(&store, "q", &owner).await;
    assert!(first_of_q.more_waiting);
    assert!(first_of_q.ahead.is_empty(), "a 20 KB event was kept ahead");

    // Parked: not kept (a read finds it and stops the lane there).
    enqueue(&store, "s", 0).await;
    let parked = enqueue(&store, "s", 1).await;
    db.update_many(
        "queued_events",
        doc! { "_id": &parked },
        doc! { "$set": { "parked": true }, "$inc": { "rev": 1_i64 } },
    )
    .await;
    let first_of_s = claim(&store, "s", &owner).await;
    assert!(first_of_s.more_waiting);
    assert!(first_of_s.ahead.is_empty(), "a parked event was kept ahead");
}

/// One read keeps a run of the patient's next events, in order, up to
/// `READ_AHEAD` in all and 16 KiB of payload: a full read says more may
/// wait, a short one that it saw the end; the run stops before the first
/// event over the budget, which a later read finds.
#[tokio::test]
async fn one_read_keeps_a_bounded_run_of_the_next_events() {
    let uri = fresh_database_uri();
    let store = store(&uri).await;
    let owner = fence(1, "owner");
    let mut ids = Vec::new();
    for n in 0..READ_AHEAD as usize + 2 {
        ids.push(enqueue(&store, "p", n).await);
    }
    let first = claim(&store, "p", &owner).await;
    let kept: Vec<_> = first.ahead.iter().map(|e| e.event_id.clone()).collect();
    assert_eq!(kept, ids[1..READ_AHEAD as usize], "kept, in order");
    assert!(first.more_waiting, "a full read may have missed more");

    // Payloads of 6 KiB: two fit in 16 KiB, the third does not.
    for n in 0..5 {
        let event = with_report("q", n, 6_000);
        enqueue_event(&store, &event).await;
    }
    let first_of_q = claim(&store, "q", &owner).await;
    assert_eq!(first_of_q.ahead.len(), 2, "kept past 16 KiB");
    assert!(first_of_q.more_waiting, "the rest is for a later read");

    // A payload over 16 KiB is left out of the read (which so holds at most
    // READ_AHEAD small payloads); when it is the one to claim, it is read
    // whole and claimed with its payload.
    let large = with_report("r", 0, 100_000);
    enqueue_event(&store, &large).await;
    enqueue(&store, "r", 1).await;
    let first_of_r = claim(&store, "r", &owner).await;
    assert!(!first_of_r.event.data_left_out);
    assert_eq!(
        first_of_r.event.data.get_str("report").map(str::len),
        Ok(100_000),
        "the claimed event lacks its payload"
    );
    assert_eq!(first_of_r.event.attempts, 1);
    assert_eq!(first_of_r.ahead.len(), 1, "the small one after it kept");
}

/// Unchanged since the read, the kept event is claimed as a fresh read's
/// claim would: one attempt counted, in memory and in the store, under this
/// claim's token; and one whose outcome an earlier run recorded is only
/// finished, with no attempt counted.
#[tokio::test]
async fn a_kept_next_event_unchanged_since_the_read_is_claimed_once() {
    let uri = fresh_database_uri();
    let store = store(&uri).await;
    enqueue(&store, "p", 0).await;
    let second = enqueue(&store, "p", 1).await;
    let third = enqueue(&store, "p", 2).await;
    let owner = fence(1, "owner");
    let success = ProcessingResult::success();
    let first = claim(&store, "p", &owner).await;
    let kept = first.ahead[0].clone();
    finish_processed(&store, &first, &owner).await;
    let Some(NextEvent::Claimed(claimed)) =
        store.claim_prefetched(kept, &owner, soon()).await.unwrap()
    else {
        panic!("the kept event, unchanged, was not claimed");
    };
    assert_eq!(claimed.event.event_id, second);
    assert_eq!(claimed.event.attempts, 1);
    // What follows a kept event is for the lane to say (the rest of its run).
    assert!(claimed.more_waiting);
    assert!(claimed.ahead.is_empty());
    let stored = store.find_event(&second).await.unwrap().unwrap();
    assert_eq!(stored.attempts, 1);
    assert_eq!(stored.claim.unwrap().token, claimed.token);

    // The third, kept by a read while its outcome was recorded by an
    // earlier run that stopped before closing it.
    finish_processed(&store, &claimed, &owner).await;
    let earlier = claim(&store, "p", &fence(1, "earlier-run")).await;
    assert_eq!(earlier.event.event_id, third);
    store
        .record(&earlier, &owner, &success, DateTime::now(), 5)
        .await
        .unwrap();
    let as_read = store.find_event(&third).await.unwrap().unwrap();
    let Some(NextEvent::Recorded(finishing)) = store
        .claim_prefetched(as_read, &owner, soon())
        .await
        .unwrap()
    else {
        panic!("a recorded event was not only finished");
    };
    assert_eq!(finishing.event.attempts, 1, "an attempt counted again");
    assert_eq!(store.find_event(&third).await.unwrap().unwrap().attempts, 1);
}
