//! Per-patient lanes: one task per patient with unfinished events, walking
//! that patient's events in sequence order, one at a time. Lanes of different
//! patients run concurrently; a lane exists only while it has work.
//!
//! The lane reads its next event from the store rather than from the HTTP
//! notification, so order follows the sequence assigned at intake and a lost
//! notification only delays work until the next sweep.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use crate::processing::EventHandler;
use crate::retry::RetryPolicy;
use crate::store::{ProcessedEvent, ProcessingResult, QueuedEvent, Store};
use crate::trace_context::TraceContext;

/// At most this many store operations of the lanes at once (the driver's
/// pool has 10 connections by default; a few more keep them busy).
const STORE_CONCURRENCY: usize = 32;

pub struct Scheduler<H> {
    inner: Arc<Inner<H>>,
}

impl<H> Clone for Scheduler<H> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Inner<H> {
    store: Store,
    handler: H,
    policy: RetryPolicy,
    /// Patients with a running lane; `true` asks the lane to look once more
    /// before it exits, because new work was announced while it ran.
    lanes: Mutex<HashMap<String, bool>>,
    max_lanes: usize,
    /// Store operations in flight across all lanes. Thousands of lanes waking
    /// together queue here, cheaply, instead of each holding a prepared
    /// driver request (memory) and piling onto the database (latency).
    store_slots: Semaphore,
    tracker: TaskTracker,
    /// Cancelled first on shutdown: lanes finish the event in hand, start no other.
    draining: CancellationToken,
    /// Cancelled when the grace period is over: in-flight work is handed back.
    abort: CancellationToken,
}

impl<H: EventHandler> Scheduler<H> {
    pub fn new(store: Store, handler: H, policy: RetryPolicy) -> Self {
        Self::with_lane_limit(store, handler, policy, usize::MAX)
    }

    /// As [`Scheduler::new`], with at most `max_lanes` patients in memory.
    pub fn with_lane_limit(
        store: Store,
        handler: H,
        policy: RetryPolicy,
        max_lanes: usize,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                handler,
                policy,
                lanes: Mutex::new(HashMap::new()),
                max_lanes,
                store_slots: Semaphore::new(STORE_CONCURRENCY),
                tracker: TaskTracker::new(),
                draining: CancellationToken::new(),
                abort: CancellationToken::new(),
            }),
        }
    }

    /// Whether `wake(patient_id)` would run a lane now: the patient has one,
    /// or there is room for another.
    pub fn has_room_for(&self, patient_id: &str) -> bool {
        let lanes = self.inner.lanes.lock().expect("lane map poisoned");
        lanes.contains_key(patient_id) || lanes.len() < self.inner.max_lanes
    }

    /// Makes sure the patient's lane runs; cheap and safe to call repeatedly.
    /// At the lane bound a patient without a lane is left to a later sweep.
    pub fn wake(&self, patient_id: &str) {
        if self.inner.draining.is_cancelled() {
            return;
        }
        let mut lanes = self.inner.lanes.lock().expect("lane map poisoned");
        if let Some(look_again) = lanes.get_mut(patient_id) {
            *look_again = true;
            return;
        }
        if lanes.len() >= self.inner.max_lanes {
            return;
        }
        lanes.insert(patient_id.to_owned(), false);
        drop(lanes);
        let inner = Arc::clone(&self.inner);
        let patient = patient_id.to_owned();
        self.inner
            .tracker
            .spawn(async move { inner.run_lane(patient).await });
    }

    pub fn active_lanes(&self) -> usize {
        self.inner.lanes.lock().expect("lane map poisoned").len()
    }

    /// Wakes every patient that has unfinished events in the store.
    pub async fn resume_unfinished(&self) -> Result<usize, crate::store::StoreError> {
        let patients = self.inner.store.patients_with_unfinished().await?;
        for patient in &patients {
            self.wake(patient);
        }
        Ok(patients.len())
    }

    /// Re-scans the store every `interval` until shutdown starts.
    pub fn spawn_sweeper(&self, interval: Duration) {
        let scheduler = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    () = scheduler.inner.draining.cancelled() => return,
                }
                if let Err(e) = scheduler.resume_unfinished().await {
                    warn!(error = %e, "recovery sweep failed; will try again");
                }
                scheduler.report_gauges().await;
            }
        });
    }

    /// Publishes backlog size, age of the oldest unfinished event and lanes.
    pub async fn report_gauges(&self) {
        metrics::gauge!("processor_active_lanes").set(self.active_lanes() as f64);
        match self.inner.store.backlog().await {
            Ok((count, oldest)) => {
                metrics::gauge!("processor_backlog_events").set(count as f64);
                let age = oldest.map_or(0.0, |at| {
                    (mongodb::bson::DateTime::now().timestamp_millis() - at.timestamp_millis())
                        .max(0) as f64
                        / 1000.0
                });
                metrics::gauge!("processor_oldest_unfinished_age_seconds").set(age);
            }
            Err(e) => warn!(error = %e, "cannot measure the backlog"),
        }
    }

    /// Stops starting events, waits up to `grace` for those in hand, then
    /// interrupts the rest and hands them back to the queue.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.draining.cancel();
        self.inner.tracker.close();
        if tokio::time::timeout(grace, self.inner.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                lanes = self.active_lanes(),
                "grace period over; handing back in-flight events"
            );
            self.inner.abort.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), self.inner.tracker.wait()).await;
        }
        info!("scheduler stopped");
    }
}

impl<H: EventHandler> Inner<H> {
    async fn run_lane(self: Arc<Self>, patient: String) {
        let mut failures = 0;
        while !self.draining.is_cancelled() {
            // Store futures are large; boxing them keeps a sleeping lane small.
            let next = {
                let _slot = self.store_slots.acquire().await.expect("never closed");
                Box::pin(self.store.claim_next(&patient)).await
            };
            match next {
                Ok(Some(event)) => {
                    failures = 0;
                    if !self.process(event).await {
                        break;
                    }
                }
                Ok(None) => {
                    let mut lanes = self.lanes.lock().expect("lane map poisoned");
                    match lanes.get_mut(&patient) {
                        Some(look_again) if *look_again => *look_again = false,
                        _ => {
                            lanes.remove(&patient);
                            return;
                        }
                    }
                }
                Err(e) => {
                    failures += 1;
                    warn!(patientId = %patient, error = %e, "cannot read the patient's queue; retrying");
                    if !self.pause(self.policy.delay(failures)).await {
                        break;
                    }
                }
            }
        }
        self.lanes
            .lock()
            .expect("lane map poisoned")
            .remove(&patient);
    }

    /// Takes one claimed event to a recorded outcome. Returns `false` if
    /// interrupted by shutdown (the event then stays unfinished and is resumed later).
    async fn process(&self, event: QueuedEvent) -> bool {
        let trace = event.traceparent.as_deref().and_then(TraceContext::parse);
        let span = info_span!(
            "event",
            eventId = %event.event_id,
            patientId = %event.patient_id,
            seq = event.seq,
            traceId = %trace.as_ref().map(TraceContext::trace_id).unwrap_or_default()
        );
        if let Some(trace) = &trace {
            crate::telemetry::continue_trace(&span, trace);
        }
        self.process_in_span(event).instrument(span).await
    }

    async fn process_in_span(&self, mut event: QueuedEvent) -> bool {
        if event.attempts > 1 {
            match Box::pin(self.after_interruption(&event)).await {
                Some(true) => {}
                Some(false) => return true,
                None => return false,
            }
        }
        loop {
            info!(attempt = event.attempts, "processing started");
            let started = Instant::now();
            let result = tokio::select! {
                result = self.handler.handle(&event) => result,
                () = self.abort.cancelled() => {
                    self.hand_back(&event).await;
                    return false;
                }
            };
            let duration_ms = started.elapsed().as_millis() as i64;
            let result = match result {
                Ok(()) => ProcessingResult::success(),
                Err(error) => {
                    warn!(attempt = event.attempts, error = %error, "processing attempt failed");
                    metrics::counter!("event_attempts_failed_total").increment(1);
                    if event.attempts < self.policy.max_attempts {
                        match self.retry_later(event, &error).await {
                            Some(claimed) => {
                                event = claimed;
                                continue;
                            }
                            None => return !self.abort.is_cancelled(),
                        }
                    }
                    ProcessingResult::failed(event.attempts, error)
                }
            };
            let outcome = ProcessedEvent::from_queued(&event, duration_ms, result);
            return Box::pin(self.persist(
                &outcome,
                event.attempts,
                false,
                Some(event.accepted_at),
            ))
            .await;
        }
    }

    /// After a failed attempt: note the error, back off, claim the event
    /// again. `None` if shutdown interrupted (the event was handed back) or
    /// the event was finished elsewhere meanwhile.
    async fn retry_later(&self, event: QueuedEvent, error: &str) -> Option<QueuedEvent> {
        let _ = Box::pin(self.store.note_error(&event.event_id, error)).await;
        if !self.pause(self.policy.delay(event.attempts as u32)).await {
            self.hand_back(&event).await;
            return None;
        }
        self.retrying(|| self.store.claim(event.clone()))
            .await
            .flatten()
    }

    /// For an event an earlier run claimed and never finished: `Some(true)`
    /// to process it now, `Some(false)` when it is settled here (its outcome
    /// was already written, or it has used up its attempts), `None` if
    /// shutdown interrupted.
    async fn after_interruption(&self, event: &QueuedEvent) -> Option<bool> {
        // The run may have written the outcome and died before closing the
        // lifecycle: finish the bookkeeping, never redo the work.
        let previous = event.attempts - 1;
        if let Some(outcome) = self
            .retrying(|| self.store.find_processed(&event.event_id))
            .await?
        {
            return self
                .persist(&outcome, previous, true, None)
                .await
                .then_some(false);
        }
        if previous >= self.policy.max_attempts {
            let error = event
                .last_error
                .clone()
                .unwrap_or_else(|| format!("processing was interrupted {previous} time(s)"));
            let outcome =
                ProcessedEvent::from_queued(event, 0, ProcessingResult::failed(previous, error));
            return self
                .persist(&outcome, previous, false, Some(event.accepted_at))
                .await
                .then_some(false);
        }
        Some(true)
    }

    /// Writes the outcome, retrying store errors (order is kept: the lane
    /// does not move on until this event is recorded).
    async fn persist(
        &self,
        outcome: &ProcessedEvent,
        attempts: i32,
        already_written: bool,
        accepted_at: Option<mongodb::bson::DateTime>,
    ) -> bool {
        let written = if already_written {
            self.retrying(|| self.store.close_lifecycle(outcome, attempts))
                .await
        } else {
            self.retrying(|| self.store.record_outcome(outcome, attempts))
                .await
        };
        if written.is_none() {
            return false;
        }
        if outcome.result.is_success() {
            info!(
                durationMs = outcome.processing_duration_ms,
                "event processed"
            );
        } else {
            warn!(
                error = outcome.result.error.as_deref().unwrap_or(""),
                "event failed for good"
            );
        }
        let result = if outcome.result.is_success() {
            "success"
        } else {
            "failed"
        };
        metrics::counter!("events_processed_total", "result" => result).increment(1);
        metrics::histogram!("processing_duration_seconds")
            .record(outcome.processing_duration_ms as f64 / 1000.0);
        if let Some(accepted_at) = accepted_at {
            let millis = outcome.processed_at.timestamp_millis() - accepted_at.timestamp_millis();
            metrics::histogram!("event_end_to_end_seconds").record(millis.max(0) as f64 / 1000.0);
        }
        true
    }

    async fn hand_back(&self, event: &QueuedEvent) {
        match Box::pin(self.store.hand_back(&event.event_id)).await {
            Ok(()) => info!("event handed back for a later run"),
            Err(e) => {
                warn!(error = %e, "could not hand the event back; it will be resumed as interrupted")
            }
        }
    }

    /// Runs a store operation until it succeeds, backing off between tries.
    /// `None` means shutdown interrupted the wait.
    async fn retrying<T, F, Fut>(&self, mut operation: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, crate::store::StoreError>>,
    {
        let mut failures = 0;
        loop {
            let result = {
                let _slot = self.store_slots.acquire().await.expect("never closed");
                Box::pin(operation()).await
            };
            match result {
                Ok(value) => return Some(value),
                Err(e) => {
                    failures += 1;
                    warn!(error = %e, failures, "store operation failed; retrying");
                    if !self.pause(self.policy.delay(failures)).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Sleeps unless shutdown aborts first; `false` if aborted.
    async fn pause(&self, delay: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = self.abort.cancelled() => false,
        }
    }
}
