//! Per-patient lanes: one task per patient with unfinished events, walking
//! that patient's events in sequence order, one at a time. Lanes of different
//! patients run concurrently; a lane exists only while it has work, and only
//! for patients whose bucket this instance holds a lease on.
//!
//! The lane reads its next event from the store rather than from any
//! notification, so order follows the sequence assigned at intake, and a lost
//! notification only delays work until the next scan.

mod known;
mod lane;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::{ConfigError, Source, choice};
use crate::processor::fleet::{BucketLease, Ownership};
use crate::processor::processing::EventHandler;
use crate::retry::RetryPolicy;
use crate::store::{QueuedEvent, Store, StoreError, Waiting};
use known::KnownNext;

/// At most this many store operations of the lanes at once. Most of them are
/// writes waiting in a batcher (`update_batch.rs`, `group_commit.rs`), which
/// sends them in a few commands at a time: the more lanes can wait there,
/// the larger each command, and the less the database spends per write.
/// The reads among them queue for the driver's pool (10 connections by default).
/// The bound caps processing at about bound / (time an event holds a slot),
/// and that time grows with the batches the bound allows: 128 slots held the
/// soak at 530-630 finished/s from its fourth minute (about 200-245 ms an
/// event) and its backlog grew; 512 and 1,024 kept pace with what intake
/// accepted, and 1,024's larger merged statements made intake wait longer on
/// SecantusDB (BENCHMARKS.md, "Store slots", 12-07). An operation in a slot
/// may hold a copy of its event (an outcome insert), as its lane does anyway.
const STORE_CONCURRENCY: usize = 512;

/// Patients whose next sequence number is remembered after their lane
/// exited (a few hundred bytes each, with a patient id of up to 128).
const KNOWN_PATIENTS: usize = 100_000;

/// What happens to a patient whose event failed `MAX_ATTEMPTS` times (`ON_FAILURE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Record it failed and go on with the patient's next events.
    Continue,
    /// Park the patient at that event until an operator retries or skips it.
    Park,
}

impl FailurePolicy {
    pub fn from_source(source: &impl Source) -> Result<Self, ConfigError> {
        Ok(match choice(source, "ON_FAILURE", &["continue", "park"])? {
            "park" => Self::Park,
            _ => Self::Continue,
        })
    }
}

/// Why the owned buckets are scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// Newly owned buckets, or inserts the change stream may have missed:
    /// every patient found reads its queue.
    Recover,
    /// The backstop sweep: starts lanes for patients without one.
    Periodic,
}

/// What was announced to a running lane since its last read.
#[derive(Default)]
struct Wakes {
    /// Read the queue again before exiting.
    look_again: bool,
    /// The change stream's copy of an event inserted since.
    offered: Option<Box<QueuedEvent>>,
    /// The lane's next number (every lower event finished), as of its last
    /// step: a waiting event below it was re-queued by an operator.
    next_seq: Option<i64>,
}

/// How the lanes work.
#[derive(Debug, Clone, Copy)]
pub struct LaneConfig {
    pub retry: RetryPolicy,
    /// Patients with a lane in memory at most.
    pub max_lanes: usize,
    /// A handler running longer than this is a failed attempt.
    pub attempt_timeout: Duration,
    pub on_failure: FailurePolicy,
}

impl LaneConfig {
    pub fn new(retry: RetryPolicy) -> Self {
        Self {
            retry,
            max_lanes: usize::MAX,
            attempt_timeout: Duration::from_secs(60),
            on_failure: FailurePolicy::Continue,
        }
    }
}

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
    config: LaneConfig,
    ownership: Ownership,
    /// Patients with a running lane, and what was announced while it ran.
    lanes: Mutex<HashMap<String, Wakes>>,
    /// Lock order: `lanes`, then `known`.
    known: Mutex<KnownNext>,
    /// The change stream is open on the owned buckets: every insert in them
    /// reaches [`Scheduler::offer`] (or a wake), so a nudge or a sweep that
    /// names a patient the lanes already follow adds nothing.
    stream_live: Arc<AtomicBool>,
    /// Scans of newly owned buckets (or after a stream opened or failed)
    /// finished so far, for whoever must know the start-up ones are done.
    recovery_scans: AtomicU64,
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
    pub fn new(store: Store, handler: H, ownership: Ownership, config: LaneConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                handler,
                config,
                ownership,
                lanes: Mutex::new(HashMap::new()),
                known: Mutex::new(KnownNext::with_capacity(KNOWN_PATIENTS)),
                stream_live: Arc::new(AtomicBool::new(false)),
                recovery_scans: AtomicU64::new(0),
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
        lanes.contains_key(patient_id) || lanes.len() < self.inner.config.max_lanes
    }

    /// Makes sure the patient's lane runs, if this instance owns its bucket,
    /// and reads the patient's queue before it exits; cheap and safe to call
    /// repeatedly. At the lane bound a patient without a lane is left to a
    /// later scan.
    pub fn wake(&self, patient_id: &str) {
        let Some(lease) = self.usable_lease(patient_id) else {
            return;
        };
        let mut lanes = self.inner.lanes.lock().expect("lane map poisoned");
        if let Some(wakes) = lanes.get_mut(patient_id) {
            wakes.look_again = true;
            return;
        }
        self.start_lane(&mut lanes, patient_id, lease, None);
    }

    /// Ingest's nudge for an event it stored. While the change stream is
    /// open, a patient whose lane runs or whose next number is remembered
    /// hears of the insert from the stream, with the event (see
    /// [`Self::offer`]); waking it here too would only cost a read.
    pub fn nudge(&self, patient_id: &str) {
        if self.stream_is_live() {
            let lanes = self.inner.lanes.lock().expect("lane map poisoned");
            if lanes.contains_key(patient_id)
                || self
                    .inner
                    .known
                    .lock()
                    .expect("known map poisoned")
                    .contains(patient_id)
            {
                return;
            }
        }
        self.wake(patient_id);
    }

    /// The change stream's copy of an inserted event. A lane that knows the
    /// patient's next number claims it without reading the queue when it is
    /// that number (and still at the revision inserted); anything else makes
    /// the lane read, as a wake does. At most one such copy waits per lane.
    pub fn offer(&self, event: QueuedEvent) {
        let Some(lease) = self.usable_lease(&event.patient_id) else {
            return;
        };
        let mut lanes = self.inner.lanes.lock().expect("lane map poisoned");
        if let Some(wakes) = lanes.get_mut(&event.patient_id) {
            if wakes.look_again || wakes.offered.is_some() {
                // A read will come anyway, and it finds this event.
                wakes.look_again = true;
                wakes.offered = None;
            } else {
                wakes.offered = Some(Box::new(event));
            }
            return;
        }
        let patient = event.patient_id.clone();
        self.start_lane(&mut lanes, &patient, lease, Some(event));
    }

    /// The periodic sweep's wake for a patient whose lowest waiting event is
    /// numbered `lowest`: a patient without a lane gets one. A running lane
    /// reads again if the stream is not open, or if that event is below the
    /// lane's next number (an operator re-queued it: no insert announces
    /// it); else every insert after its last read reaches it by the stream.
    fn sweep_wake(&self, patient_id: &str, lowest: i64) {
        if self.stream_is_live() {
            let mut lanes = self.inner.lanes.lock().expect("lane map poisoned");
            if let Some(wakes) = lanes.get_mut(patient_id) {
                if wakes.next_seq.is_some_and(|next| lowest < next) {
                    wakes.look_again = true;
                }
                return;
            }
        }
        self.wake(patient_id);
    }

    /// Whether the change stream is open now.
    pub fn stream_is_live(&self) -> bool {
        self.inner.stream_live.load(Ordering::Acquire)
    }

    /// The flag the change stream's watcher keeps: whether it is open.
    pub fn stream_live(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.inner.stream_live)
    }

    fn usable_lease(&self, patient_id: &str) -> Option<Arc<BucketLease>> {
        if self.inner.draining.is_cancelled() {
            return None;
        }
        let lease = self.inner.ownership.get(crate::bucket::of(patient_id))?;
        lease.usable().then_some(lease)
    }

    /// Spawns a lane for a patient without one (under the lane map's lock).
    /// It starts from `offered` only when that is the patient's remembered
    /// next event; else it reads the queue first.
    fn start_lane(
        &self,
        lanes: &mut HashMap<String, Wakes>,
        patient_id: &str,
        lease: Arc<BucketLease>,
        offered: Option<QueuedEvent>,
    ) {
        if lanes.len() >= self.inner.config.max_lanes {
            return;
        }
        let known = self
            .inner
            .known
            .lock()
            .expect("known map poisoned")
            .take(patient_id);
        let start = match offered {
            Some(event) if known == Some(event.seq) => lane::Start::Next(Box::new(event)),
            _ => lane::Start::Read,
        };
        lanes.insert(patient_id.to_owned(), Wakes::default());
        let inner = Arc::clone(&self.inner);
        let patient = patient_id.to_owned();
        self.inner
            .tracker
            .spawn(async move { inner.run_lane(patient, lease, start).await });
    }

    pub fn active_lanes(&self) -> usize {
        self.inner.lanes.lock().expect("lane map poisoned").len()
    }

    pub fn ownership(&self) -> &Ownership {
        &self.inner.ownership
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.is_cancelled()
    }

    /// Wakes every patient with waiting events in `buckets` (those this
    /// instance can work in); returns what the scan saw.
    pub async fn scan(&self, buckets: &[i32], kind: Scan) -> Result<Waiting, StoreError> {
        let seen = self.scan_usable(buckets, kind).await;
        if kind == Scan::Recover {
            self.inner.recovery_scans.fetch_add(1, Ordering::Release);
        }
        seen
    }

    /// How many recovery scans ([`Scan::Recover`]) have finished: after a
    /// start, one at the acquisition and one once the change stream opened.
    pub fn recovery_scans(&self) -> u64 {
        self.inner.recovery_scans.load(Ordering::Acquire)
    }

    async fn scan_usable(&self, buckets: &[i32], kind: Scan) -> Result<Waiting, StoreError> {
        let usable: Vec<i32> = buckets
            .iter()
            .copied()
            .filter(|b| self.inner.ownership.get(*b).is_some_and(|l| l.usable()))
            .collect();
        if usable.is_empty() {
            return Ok(Waiting::default());
        }
        self.inner
            .store
            .scan_waiting(&usable, |patient, lowest| match kind {
                Scan::Recover => self.wake(patient),
                Scan::Periodic => self.sweep_wake(patient, lowest),
            })
            .await
    }

    /// Stops starting events, waits up to `grace` for those in hand, then
    /// interrupts the rest and waits up to `hand_back` while they hand their
    /// events back to the queue.
    pub async fn shutdown(&self, grace: Duration, hand_back: Duration) {
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
            let _ = tokio::time::timeout(hand_back, self.inner.tracker.wait()).await;
        }
        info!("scheduler stopped");
    }
}
