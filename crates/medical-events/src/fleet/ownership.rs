//! What this instance holds right now: its bucket leases, each with its
//! fencing epoch and how long it may be trusted without another renewal.
//!
//! A lease is trusted locally until `renewal sent + LEASE_MS x 0.9` (monotonic
//! clock). The database extends it from the moment it processes the renewal,
//! which is later, so the local view always ends before the database's, and a
//! new owner (who needs the database's expiry) never overlaps a holder that
//! honours its local view. A pause (SIGSTOP, GC, a frozen VM) simply makes the
//! local view expire: on waking, the holder stops before doing anything, and
//! the fencing epoch rejects any write already under way.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Share of the lease period a holder trusts locally (the rest absorbs clock
/// rate drift and scheduling delays).
const LOCAL_SHARE: f64 = 0.9;

pub struct BucketLease {
    pub bucket: i32,
    pub epoch: i64,
    /// The session it was acquired under (the owner name in the database).
    pub session: Arc<str>,
    /// No new work starts under the lease past this instant (local view,
    /// 0.9 of the lease after the last renewal was sent).
    valid_until: Mutex<Instant>,
    /// Work in hand stops past this instant: the earliest the database can
    /// have let the session expire (a whole lease after the last renewal
    /// was sent), unless a renewal comes first.
    hard_until: Mutex<Instant>,
    /// The database no longer names us (taken over, or released).
    lost: CancellationToken,
    /// Being handed over: finish what is in hand, start nothing new.
    releasing: CancellationToken,
    /// The hand-over cannot wait any longer: hand back what is in hand.
    abort: CancellationToken,
    /// Events being executed under this lease right now.
    in_flight: AtomicUsize,
}

impl BucketLease {
    /// A lease valid locally as its session's last renewal says.
    pub fn new(
        bucket: i32,
        epoch: i64,
        session: Arc<str>,
        (valid_until, hard_until): (Instant, Instant),
    ) -> Self {
        Self {
            bucket,
            epoch,
            session,
            valid_until: Mutex::new(valid_until),
            hard_until: Mutex::new(hard_until),
            lost: CancellationToken::new(),
            releasing: CancellationToken::new(),
            abort: CancellationToken::new(),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// Whether a new event may be started under this lease now.
    pub fn usable(&self) -> bool {
        !self.releasing.is_cancelled() && self.valid()
    }

    /// Whether work in hand may go on (also while releasing, and a little
    /// past the local view: up to the earliest the session can have expired).
    pub fn valid(&self) -> bool {
        !self.lost.is_cancelled() && Instant::now() < self.hard_until()
    }

    fn hard_until(&self) -> Instant {
        *self.hard_until.lock().expect("lease clock poisoned")
    }

    pub fn valid_until(&self) -> Instant {
        *self.valid_until.lock().expect("lease clock poisoned")
    }

    pub(crate) fn extend(&self, valid_until: Instant, hard_until: Instant) {
        let mut until = self.valid_until.lock().expect("lease clock poisoned");
        *until = (*until).max(valid_until);
        let mut hard = self.hard_until.lock().expect("lease clock poisoned");
        *hard = (*hard).max(hard_until);
    }

    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    pub fn is_releasing(&self) -> bool {
        self.releasing.is_cancelled()
    }

    /// Marks the lease lost: the database says another instance holds it, or
    /// a fenced write was refused.
    pub fn lose(&self) {
        self.lost.cancel();
    }

    pub(crate) fn start_release(&self) {
        self.releasing.cancel();
    }

    pub(crate) fn abort(&self) {
        self.abort.cancel();
    }

    /// Resolves when work in hand must be handed back at once (the
    /// hand-over's grace is over).
    pub async fn aborted(&self) {
        self.abort.cancelled().await;
    }

    /// Resolves when work in hand must stop: the lease is lost, or the
    /// session may have expired in the database (no renewal for a whole
    /// lease period). A late renewal alone does not stop work in hand: it
    /// only stops new work from starting ([`BucketLease::usable`]).
    pub async fn invalidated(&self) {
        loop {
            let until = self.hard_until();
            tokio::select! {
                () = self.lost.cancelled() => return,
                () = tokio::time::sleep_until(until.into()) => {
                    if Instant::now() >= self.hard_until() {
                        return;
                    }
                }
            }
        }
    }

    /// Counts an event in execution until the guard is dropped.
    pub fn executing(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(Arc::clone(self))
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
}

pub struct InFlight(Arc<BucketLease>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The leases this instance holds, shared by the lease keeper, the lanes and
/// the change-stream watcher.
#[derive(Clone)]
pub struct Ownership {
    /// The processor session the leases hang on (replaced if it expires).
    session: Arc<RwLock<Arc<str>>>,
    held: Arc<RwLock<HashMap<i32, Arc<BucketLease>>>>,
    /// Singleton jobs whose lease this instance holds (the pruner).
    jobs: Arc<RwLock<std::collections::HashSet<String>>>,
    /// The last epoch of each bucket this session gave up: a read of the
    /// leases made just before the release must not bring it back.
    retired: Arc<Mutex<HashMap<i32, i64>>>,
    /// Bumped whenever the set of usable buckets changes.
    version: watch::Sender<u64>,
}

impl Ownership {
    pub fn new(session: impl Into<Arc<str>>) -> Self {
        Self {
            session: Arc::new(RwLock::new(session.into())),
            held: Arc::default(),
            jobs: Arc::default(),
            retired: Arc::default(),
            version: watch::Sender::new(0),
        }
    }

    /// This instance's current session id (the lease owner name).
    pub fn session(&self) -> Arc<str> {
        Arc::clone(&self.session.read().expect("ownership poisoned"))
    }

    pub(crate) fn replace_session(&self, session: Arc<str>) {
        *self.session.write().expect("ownership poisoned") = session;
    }

    /// How long a lease renewed now may be trusted locally: new work may
    /// start until the first instant, work in hand may go on until the second.
    pub fn validity(renewal_sent: Instant, lease: Duration) -> (Instant, Instant) {
        (
            renewal_sent + lease.mul_f64(LOCAL_SHARE),
            renewal_sent + lease,
        )
    }

    pub fn get(&self, bucket: i32) -> Option<Arc<BucketLease>> {
        self.held
            .read()
            .expect("ownership poisoned")
            .get(&bucket)
            .cloned()
    }

    /// Every lease held (including those being released).
    pub fn all(&self) -> Vec<Arc<BucketLease>> {
        self.held
            .read()
            .expect("ownership poisoned")
            .values()
            .cloned()
            .collect()
    }

    /// Buckets new work may start in, sorted.
    pub fn usable_buckets(&self) -> Vec<i32> {
        let mut buckets: Vec<i32> = self
            .held
            .read()
            .expect("ownership poisoned")
            .values()
            .filter(|lease| lease.usable())
            .map(|lease| lease.bucket)
            .collect();
        buckets.sort_unstable();
        buckets
    }

    pub fn count(&self) -> usize {
        self.held.read().expect("ownership poisoned").len()
    }

    pub(crate) fn insert(&self, lease: Arc<BucketLease>) {
        self.held
            .write()
            .expect("ownership poisoned")
            .insert(lease.bucket, lease);
        self.changed();
    }

    /// Remembers that this session gives up `bucket` at `epoch`.
    pub(crate) fn retire(&self, bucket: i32, epoch: i64) {
        self.retired
            .lock()
            .expect("ownership poisoned")
            .insert(bucket, epoch);
    }

    /// Whether a lease at `epoch` is one this session already gave up.
    pub(crate) fn was_retired(&self, bucket: i32, epoch: i64) -> bool {
        self.retired
            .lock()
            .expect("ownership poisoned")
            .get(&bucket)
            .is_some_and(|retired| epoch <= *retired)
    }

    /// Whether this instance runs the singleton job `name` now.
    pub fn runs_job(&self, name: &str) -> bool {
        self.jobs.read().expect("ownership poisoned").contains(name)
    }

    /// Runs the singleton job `name` here from now on (until `lose_all`).
    pub(crate) fn take_job(&self, name: &str) {
        self.jobs
            .write()
            .expect("ownership poisoned")
            .insert(name.to_owned());
    }

    /// Drops every lease (its session expired): nothing may be done under them.
    pub(crate) fn lose_all(&self) {
        self.jobs.write().expect("ownership poisoned").clear();
        let lost: Vec<Arc<BucketLease>> = self
            .held
            .write()
            .expect("ownership poisoned")
            .drain()
            .map(|(_, lease)| lease)
            .collect();
        for lease in &lost {
            lease.lose();
        }
        self.changed();
    }

    pub(crate) fn remove(&self, bucket: i32) -> Option<Arc<BucketLease>> {
        let removed = self
            .held
            .write()
            .expect("ownership poisoned")
            .remove(&bucket);
        if let Some(lease) = &removed {
            lease.lose();
            self.changed();
        }
        removed
    }

    /// Announces a change of the usable set (a release started, a lease lost).
    pub(crate) fn changed(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}
