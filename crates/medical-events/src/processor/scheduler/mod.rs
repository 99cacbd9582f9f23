//! Per-patient lanes: one task per patient with unfinished events, walking
//! that patient's events in sequence order, one at a time. Lanes of different
//! patients run concurrently; a lane exists only while it has work, and only
//! for patients whose bucket this instance holds a lease on.
//!
//! The lane reads its next event from the store rather than from any
//! notification, so order follows the sequence assigned at intake, and a lost
//! notification only delays work until the next scan.

mod lane;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::{ConfigError, Source, choice};
use crate::processor::fleet::Ownership;
use crate::processor::processing::EventHandler;
use crate::retry::RetryPolicy;
use crate::store::{Store, StoreError, Waiting};

/// At most this many store operations of the lanes at once. Most of them are
/// writes waiting in a batcher (`update_batch.rs`, `group_commit.rs`), which
/// sends them in a few commands at a time: the more lanes can wait there,
/// the larger each command, and the less the database spends per write
/// (32: 614 events/s drained with zero-length work; 128: 720/s; in the
/// soak, 128 processes a third more while intake's latency rises: BENCHMARKS.md).
/// The reads among them queue for the driver's pool (10 connections by default).
const STORE_CONCURRENCY: usize = 128;

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
    /// Patients with a running lane; `true` asks the lane to look once more
    /// before it exits, because new work was announced while it ran.
    lanes: Mutex<HashMap<String, bool>>,
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

    /// Makes sure the patient's lane runs, if this instance owns its bucket;
    /// cheap and safe to call repeatedly. At the lane bound a patient without
    /// a lane is left to a later scan.
    pub fn wake(&self, patient_id: &str) {
        if self.inner.draining.is_cancelled() {
            return;
        }
        let Some(lease) = self.inner.ownership.get(crate::bucket::of(patient_id)) else {
            return;
        };
        if !lease.usable() {
            return;
        }
        let mut lanes = self.inner.lanes.lock().expect("lane map poisoned");
        if let Some(look_again) = lanes.get_mut(patient_id) {
            *look_again = true;
            return;
        }
        if lanes.len() >= self.inner.config.max_lanes {
            return;
        }
        lanes.insert(patient_id.to_owned(), false);
        drop(lanes);
        let inner = Arc::clone(&self.inner);
        let patient = patient_id.to_owned();
        self.inner
            .tracker
            .spawn(async move { inner.run_lane(patient, lease).await });
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
    pub async fn scan(&self, buckets: &[i32]) -> Result<Waiting, StoreError> {
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
            .scan_waiting(&usable, |patient| self.wake(patient))
            .await
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
