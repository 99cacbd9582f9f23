//! One patient's lane: claim the next event, run it, record the outcome,
//! close it; again until the patient has nothing left, its next event is
//! parked, or the bucket lease is gone.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mongodb::bson::DateTime;
use tracing::{Instrument, info, info_span, warn};

use super::{FailurePolicy, Inner};
use crate::processor::fleet::BucketLease;
use crate::processor::processing::{EventHandler, HandlerError};
use crate::store::{
    Applied, Claimed, Close, NextEvent, ProcessedEvent, ProcessingResult, QueuedEvent, RunEnd,
    StoreError, Stored,
};
use crate::trace_context::TraceContext;

/// How a lane begins.
pub(super) enum Start {
    /// Read the patient's queue.
    Read,
    /// Claim this event (the change stream's copy of it) without reading:
    /// its number is the patient's remembered next one.
    Next(Box<QueuedEvent>),
}

/// What a lane does after one step.
enum Step {
    /// Read the patient's queue again (the event is still unfinished).
    Continue,
    /// The event is closed: claim the event kept from the read, or look
    /// again if more was waiting or a wake came.
    Finished,
    Stop,
}

impl<H: EventHandler> Inner<H> {
    pub(super) async fn run_lane(
        self: Arc<Self>,
        patient: String,
        lease: Arc<BucketLease>,
        start: Start,
    ) {
        let mut failures = 0;
        // Whether the queue must be read (or a kept event claimed): at the
        // start, after a failed attempt, and after a close when the read saw
        // more waiting. Else only a wake since the last read (`look_again`)
        // or the change stream's copy of the next event brings it back:
        // every insert after that read does one of them (change stream,
        // nudge, or the sweep as a backstop), so a lane that saw nothing more
        // does not spend a read to learn it again.
        let mut look = true;
        // The events after the one in hand as the last read found them, and
        // whether that read saw (or may have missed) more after them.
        let mut ahead: VecDeque<QueuedEvent> = VecDeque::new();
        let mut beyond = false;
        // The number of the patient's next event, every lower one being
        // finished: known after a close, or remembered from an earlier lane.
        let mut next_seq = None;
        if let Start::Next(event) = start {
            next_seq = Some(event.seq);
            ahead.push_back(*event);
        }
        loop {
            // Counted busy before looking at the lease: a hand-over marks the
            // lease releasing, then waits for the busy count to drop, so it
            // either sees this lane or this lane sees it releasing.
            let _busy = lease.executing();
            if self.draining.is_cancelled() || !lease.usable() {
                break;
            }
            {
                let mut lanes = self.lanes.lock().expect("lane map poisoned");
                let Some(wakes) = lanes.get_mut(&patient) else {
                    return;
                };
                wakes.next_seq = next_seq;
                // A copy of an event this lane already passed says nothing.
                if wakes
                    .offered
                    .as_ref()
                    .zip(next_seq)
                    .is_some_and(|(event, next)| event.seq < next)
                {
                    wakes.offered = None;
                }
                if !ahead.is_empty() {
                    // Claiming a kept event is no read: a wake since the
                    // read stays asked for.
                } else if let Some(event) = wakes.offered.take() {
                    if !look && !wakes.look_again && Some(event.seq) == next_seq {
                        // The next event, as inserted: claimed like a kept one.
                        ahead.push_back(*event);
                    } else {
                        // A wake from now on asks for another read after this one.
                        wakes.look_again = false;
                    }
                } else if look || wakes.look_again {
                    wakes.look_again = false;
                } else {
                    lanes.remove(&patient);
                    if let Some(next) = next_seq {
                        self.known
                            .lock()
                            .expect("known map poisoned")
                            .remember(patient, next);
                    }
                    return;
                }
            }
            // Store futures are large; boxing them keeps a sleeping lane small.
            let mut next = {
                let _slot = self.store_slots.acquire().await.expect("never closed");
                let fence = lease.fence();
                let give_up_at = lease.in_hand_until();
                let kept_failed = !ahead.is_empty();
                let popped = ahead.pop_front();
                if ahead.is_empty() {
                    // Freed, not kept for the next run: with thousands of
                    // lanes at work, the empty buffers add up.
                    ahead.shrink_to_fit();
                }
                let kept = match popped {
                    Some(event) => {
                        Box::pin(self.store.claim_prefetched(event, &fence, give_up_at)).await
                    }
                    None => Ok(None),
                };
                match kept {
                    Ok(Some(next)) => Ok(next),
                    // Nothing kept, or it changed since it was read (and so
                    // may the rest).
                    Ok(None) => {
                        if kept_failed {
                            // A read after all: a wake until now asks for nothing more.
                            self.clear_wake(&patient);
                        }
                        ahead.clear();
                        Box::pin(
                            self.store
                                .claim_next(lease.bucket, &patient, &fence, give_up_at),
                        )
                        .await
                        .inspect(|next| {
                            if let NextEvent::Claimed(claimed) | NextEvent::Recorded(claimed) = next
                            {
                                // A fresh read: what it found after this one.
                                beyond = claimed.more_waiting;
                            }
                        })
                    }
                    Err(e) => Err(e),
                }
            };
            if let Ok(NextEvent::Claimed(claimed) | NextEvent::Recorded(claimed)) = &mut next {
                // Taken, not drained: the emptied vector would stay allocated
                // in the claim for as long as the work runs.
                ahead.extend(std::mem::take(&mut claimed.ahead));
            } else {
                // Idle (nothing more), or the lane stops or reads again.
                ahead.clear();
                beyond = false;
            }
            let step = match next {
                Ok(NextEvent::Idle) => Step::Finished,
                Ok(NextEvent::Parked(event)) => {
                    info!(patient = %crate::privacy::patient(&patient), seq = event.seq, "patient parked behind a failed event");
                    Step::Stop
                }
                Ok(NextEvent::Fenced) => {
                    self.fenced(&lease, Applied::Fenced);
                    Step::Stop
                }
                Ok(NextEvent::Expired) => {
                    self.fenced(&lease, Applied::Expired);
                    Step::Stop
                }
                Ok(NextEvent::Recorded(claimed)) => {
                    failures = 0;
                    let seq = claimed.event.seq;
                    let step = Box::pin(self.finish(&lease, claimed, None)).await;
                    closed(&step, seq, &mut next_seq);
                    step
                }
                Ok(NextEvent::Claimed(claimed)) => {
                    failures = 0;
                    let seq = claimed.event.seq;
                    let step = Box::pin(self.process(&lease, claimed)).await;
                    closed(&step, seq, &mut next_seq);
                    step
                }
                Err(e) => {
                    failures += 1;
                    warn!(patient = %crate::privacy::patient(&patient), error = %e, "cannot read the patient's queue; retrying");
                    if self.pause(&lease, self.config.retry.delay(failures)).await {
                        Step::Continue
                    } else {
                        Step::Stop
                    }
                }
            };
            match step {
                Step::Stop => break,
                Step::Continue => {
                    ahead.clear();
                    look = true;
                }
                Step::Finished => look = !ahead.is_empty() || beyond,
            }
        }
        self.lanes
            .lock()
            .expect("lane map poisoned")
            .remove(&patient);
    }

    /// Clears what was announced to the patient's lane (right before a
    /// read, which finds all of it).
    fn clear_wake(&self, patient: &str) {
        if let Some(wakes) = self
            .lanes
            .lock()
            .expect("lane map poisoned")
            .get_mut(patient)
        {
            wakes.look_again = false;
            wakes.offered = None;
        }
    }

    /// Takes one claimed event to a recorded outcome, in its span.
    async fn process(&self, lease: &Arc<BucketLease>, claimed: Box<Claimed>) -> Step {
        let event = &claimed.event;
        let trace = event.traceparent.as_deref().and_then(TraceContext::parse);
        let span = info_span!(
            "event",
            eventId = %event.event_id,
            patient = %crate::privacy::patient(&event.patient_id),
            seq = event.seq,
            epoch = claimed.epoch,
            traceId = %trace.as_ref().map(TraceContext::trace_id).unwrap_or_default()
        );
        if let Some(trace) = &trace {
            crate::telemetry::continue_trace(&span, trace);
        }
        self.attempt(lease, claimed).instrument(span).await
    }

    async fn attempt(&self, lease: &Arc<BucketLease>, mut claimed: Box<Claimed>) -> Step {
        if claimed.event.attempts >= 2 {
            // An earlier claim of this run may have stored a success's
            // outcome and stopped before its close (a crash, a pause past
            // its lease): that work is done; close from its outcome.
            let event = &claimed.event;
            match self
                .retrying(lease, || self.store.outcome_of_run(event))
                .await
            {
                None => return Step::Stop,
                // (A failure's outcome follows its record, and a recorded
                // event is claimed as recorded, not here.)
                Some(Some(found)) if found.result.is_success() => {
                    info!("the run's outcome is stored already; closing without running it again");
                    return self
                        .close_with(lease, claimed, found, Carry::ResultUnrun, None)
                        .await;
                }
                Some(_) => {}
            }
        }
        let max_attempts = self.config.retry.max_attempts;
        if claimed.event.attempts > max_attempts {
            // Every earlier attempt died with its processor: give it up
            // rather than let it take the fleet down again and again.
            let previous = claimed.event.attempts - 1;
            let error = claimed
                .event
                .last_error
                .clone()
                .unwrap_or_else(|| format!("processing was interrupted {previous} time(s)"));
            return self
                .conclude(
                    lease,
                    claimed,
                    ProcessingResult::failed(previous, error),
                    DateTime::now(),
                    0,
                )
                .await;
        }
        // The claim's reply may have come after our lease ran out locally.
        if !lease.usable() {
            self.hand_back(lease, &claimed).await;
            return Step::Stop;
        }
        info!(attempt = claimed.event.attempts, "processing started");
        let started = Instant::now();
        // The base of `processedAt`: when the work started, by this
        // processor's clock. Not the claim's time: an adopted claim (one
        // given up in doubt, `claims_in_doubt.rs`) was stamped before its
        // lane gave up on it, and the stream's replay looks back only
        // `REPLAY_OVERLAP` from a client's last id.
        let started_at = DateTime::now();
        let timeout = self.config.attempt_timeout;
        let outcome = tokio::select! {
            // Checked first: once the lease cannot be trusted, a result that
            // is ready at the same moment must not be written.
            biased;
            () = lease.invalidated() => {
                // Another instance may own the bucket by now: write nothing;
                // whoever owns it runs the event again.
                warn!("bucket lease lost during processing; the attempt is abandoned");
                return Step::Stop;
            }
            () = self.abort.cancelled() => {
                // Shutdown past its grace: the downstream may still be
                // working on it, so its bucket is left to expire.
                lease.mark_cut();
                self.hand_back(lease, &claimed).await;
                return Step::Stop;
            }
            outcome = tokio::time::timeout(timeout, self.handler.handle(&claimed.event)) => match outcome {
                Ok(outcome) => outcome,
                Err(_) => Err(HandlerError::Failed(format!(
                    "the attempt did not finish within {} ms",
                    timeout.as_millis()
                ))),
            },
        };
        if !lease.valid() {
            warn!("bucket lease ran out during processing; the attempt is abandoned");
            return Step::Stop;
        }
        let duration_ms = started.elapsed().as_millis() as i64;
        let processed_at = DateTime::from_millis(started_at.timestamp_millis() + duration_ms);
        match outcome {
            Ok(()) => {
                self.succeed(lease, claimed, processed_at, duration_ms)
                    .await
            }
            Err(HandlerError::Superseded) => {
                // The downstream heard from a newer owner of this patient:
                // the bucket is someone else's; write nothing more.
                metrics::counter!("deliveries_superseded_total").increment(1);
                self.fenced(lease, Applied::Fenced);
                Step::Stop
            }
            Err(HandlerError::Failed(error)) => {
                warn!(attempt = claimed.event.attempts, error = %error, "processing attempt failed");
                metrics::counter!("event_attempts_failed_total").increment(1);
                if claimed.event.attempts >= max_attempts {
                    let result = ProcessingResult::failed(claimed.event.attempts, error);
                    return self
                        .conclude(lease, claimed, result, processed_at, duration_ms)
                        .await;
                }
                if !self
                    .fenced_write(lease, |fence| {
                        let (claimed, error) = (&claimed, &error);
                        async move { self.store.release_for_retry(claimed, &fence, error).await }
                    })
                    .await
                {
                    return Step::Stop;
                }
                claimed.event.claim = None;
                if self
                    .pause(
                        lease,
                        self.config.retry.delay(claimed.event.attempts as u32),
                    )
                    .await
                {
                    Step::Continue
                } else {
                    Step::Stop
                }
            }
        }
    }

    /// After a success: the outcome document, then the close, which writes
    /// the result on the event. No record first: a success's outcome is
    /// true whoever stores it (the delivery succeeded), so it needs no
    /// fenced write before it (ARCHITECTURE.md, "Exactly one outcome per
    /// event").
    async fn succeed(
        &self,
        lease: &Arc<BucketLease>,
        mut claimed: Box<Claimed>,
        processed_at: DateTime,
        duration_ms: i64,
    ) -> Step {
        claimed.event.result = Some(ProcessingResult::success());
        claimed.event.processed_at = Some(processed_at);
        claimed.event.processing_duration_ms = Some(duration_ms);
        let Some(outcome) = ProcessedEvent::from_recorded(&claimed.event) else {
            return Step::Stop;
        };
        let stored = match self
            .retrying(lease, || self.store.write_outcome(&outcome))
            .await
        {
            None | Some(Stored::LaterRun) => return Step::Stop,
            Some(Stored::Written) => outcome,
            // An earlier claim of this run stored its success first.
            Some(Stored::Found(found)) => *found,
        };
        self.close_with(lease, claimed, stored, Carry::Result, Some(duration_ms))
            .await
    }

    /// Records a failed result on the event, then finishes it.
    async fn conclude(
        &self,
        lease: &Arc<BucketLease>,
        mut claimed: Box<Claimed>,
        result: ProcessingResult,
        processed_at: DateTime,
        duration_ms: i64,
    ) -> Step {
        if !self
            .fenced_write(lease, |fence| {
                let (claimed, result) = (&claimed, &result);
                async move {
                    self.store
                        .record(claimed, &fence, result, processed_at, duration_ms)
                        .await
                }
            })
            .await
        {
            return Step::Stop;
        }
        claimed.event.result = Some(result);
        claimed.event.processed_at = Some(processed_at);
        claimed.event.processing_duration_ms = Some(duration_ms);
        self.finish(lease, claimed, Some(duration_ms)).await
    }

    /// The bookkeeping after a recorded outcome: the `processed_events`
    /// document, then the final status. `duration_ms` is set when the work
    /// ran in this lane (for the metrics).
    async fn finish(
        &self,
        lease: &Arc<BucketLease>,
        claimed: Box<Claimed>,
        duration_ms: Option<i64>,
    ) -> Step {
        let Some(outcome) = ProcessedEvent::from_recorded(&claimed.event) else {
            return Step::Stop;
        };
        match self
            .retrying(lease, || self.store.write_outcome(&outcome))
            .await
        {
            None | Some(Stored::LaterRun) => Step::Stop,
            Some(Stored::Written) => {
                self.close_with(lease, claimed, outcome, Carry::Nothing, duration_ms)
                    .await
            }
            // A success an earlier claim of this run stored late (after
            // this failure was recorded): that delivery succeeded, and the
            // event takes its result.
            Some(Stored::Found(found)) => {
                self.close_with(lease, claimed, *found, Carry::Result, duration_ms)
                    .await
            }
        }
    }

    /// Closes the event as `outcome` (the run's `processed_events`
    /// document) ends it, writing its result on the event as `carry` says.
    async fn close_with(
        &self,
        lease: &Arc<BucketLease>,
        claimed: Box<Claimed>,
        outcome: ProcessedEvent,
        carry: Carry,
        duration_ms: Option<i64>,
    ) -> Step {
        let end = RunEnd::of(
            &outcome.result,
            self.config.on_failure == FailurePolicy::Park,
        );
        let close = Close {
            end,
            result: (carry != Carry::Nothing).then_some(&outcome),
            uncount: carry == Carry::ResultUnrun,
        };
        if !self
            .fenced_write(lease, |fence| {
                let claimed = &claimed;
                async move { self.store.close(claimed, &fence, close).await }
            })
            .await
        {
            return Step::Stop;
        }
        report(&outcome, end, duration_ms, claimed.event.accepted_at);
        if end == RunEnd::Parked {
            Step::Stop
        } else {
            Step::Finished
        }
    }

    /// A write was refused by fencing (another instance holds the bucket
    /// now) or by our session's bound (the database may have declared the
    /// session dead): the bucket is dropped here. If the database still
    /// names this session, the keeper adopts the lease again.
    fn fenced(&self, lease: &BucketLease, why: Applied) {
        metrics::counter!("fenced_writes_total").increment(1);
        let reason = if why == Applied::Expired {
            "write refused: the database's clock is past this session's bound; dropping the bucket"
        } else {
            "write refused by fencing: the bucket has a new owner; dropping it"
        };
        warn!(bucket = lease.bucket, epoch = lease.epoch, "{reason}");
        self.ownership.remove(lease.bucket);
    }

    async fn hand_back(&self, lease: &BucketLease, claimed: &Claimed) {
        match Box::pin(self.store.hand_back(claimed, &lease.fence())).await {
            Ok(Applied::Yes) => info!("event handed back for a later run"),
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, "could not hand the event back; it will be resumed as interrupted")
            }
        }
    }

    /// A fenced store write under the lease's current fence, retried like
    /// any other: `true` once applied; `false` when refused (the bucket is
    /// dropped) or abandoned.
    async fn fenced_write<F, Fut>(&self, lease: &BucketLease, mut operation: F) -> bool
    where
        F: FnMut(crate::store::Fence) -> Fut,
        Fut: Future<Output = Result<Applied, StoreError>>,
    {
        match self.retrying(lease, || operation(lease.fence())).await {
            Some(Applied::Yes) => true,
            Some(refused) => {
                self.fenced(lease, refused);
                false
            }
            None => false,
        }
    }

    /// Runs a store operation until it succeeds, backing off between tries.
    /// `None` when shutdown aborted or the lease became invalid meanwhile.
    async fn retrying<T, F, Fut>(&self, lease: &BucketLease, mut operation: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
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
                    if !lease.valid() || !self.pause(lease, self.config.retry.delay(failures)).await
                    {
                        return None;
                    }
                }
            }
        }
    }

    /// Sleeps unless shutdown aborts or the lease goes first; `false` then.
    async fn pause(&self, lease: &BucketLease, delay: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = self.abort.cancelled() => false,
            () = lease.invalidated() => false,
        }
    }
}

/// After the event numbered `seq` was closed, the patient's next is `seq + 1`
/// (intake numbers each patient's events without gaps, and this lane closed
/// every lower one or learned they were finished).
fn closed(step: &Step, seq: i64, next_seq: &mut Option<i64>) {
    if matches!(step, Step::Finished) {
        *next_seq = Some(seq + 1);
    }
}

/// What a close writes on the event besides its final state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Carry {
    /// Nothing: the event's record is its outcome already.
    Nothing,
    /// The outcome's result.
    Result,
    /// The outcome's result, and the claim's attempt uncounted: the claim
    /// found the run's outcome stored and closes without running the work.
    ResultUnrun,
}

fn report(outcome: &ProcessedEvent, end: RunEnd, duration_ms: Option<i64>, accepted_at: DateTime) {
    if outcome.result.is_success() {
        info!(
            durationMs = outcome.processing_duration_ms,
            "event processed"
        );
    } else {
        warn!(
            error = outcome.result.error.as_deref().unwrap_or(""),
            parked = end == RunEnd::Parked,
            "event failed for good"
        );
    }
    let result = if outcome.result.is_success() {
        "success"
    } else {
        "failed"
    };
    metrics::counter!("events_processed_total", "result" => result).increment(1);
    if let Some(duration_ms) = duration_ms {
        metrics::histogram!("processing_duration_seconds").record(duration_ms as f64 / 1000.0);
        let millis = outcome.processed_at.timestamp_millis() - accepted_at.timestamp_millis();
        metrics::histogram!("event_end_to_end_seconds").record(millis.max(0) as f64 / 1000.0);
    }
}
