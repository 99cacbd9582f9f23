//! What this instance holds right now: its bucket leases, each with its
//! fencing epoch and how long it may be trusted without another renewal.
//!
//! A lease is trusted locally (monotonic clock) for new work until `renewal
//! sent + LEASE_MS x 0.8`, and for work in hand until `sent + LEASE_MS x
//! 0.9`. The database extends the session from the moment it processes the
//! renewal, which is later, so the local view ends at least a tenth of the
//! lease before anyone can declare the session dead, as long as the clocks'
//! rates differ by less than that: a new owner never overlaps a holder that
//! honours its local view. A pause (SIGSTOP, GC, a frozen VM) simply makes the
//! local view expire: on waking, the holder stops before doing anything, and
//! the database refuses any write already under way (its session's bound,
//! the epoch and the claim token).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use mongodb::bson::DateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::Fence;

/// Share of the lease period after a renewal was sent during which new work
/// may start.
const NEW_WORK_SHARE: f64 = 0.8;
/// Share during which work in hand may go on. The rest (a tenth) absorbs
/// clock rate differences and scheduling delays: nothing of ours runs once
/// the database may consider the session expired.
const IN_HAND_SHARE: f64 = 0.9;

pub struct BucketLease {
    pub bucket: i32,
    pub epoch: i64,
    /// The session it was acquired under (the owner name in the database).
    pub session: Arc<str>,
    /// No new work starts under the lease past this instant (local view,
    /// 0.8 of the lease after the last renewal was sent).
    valid_until: Mutex<Instant>,
    /// Work in hand stops past this instant (0.9 of the lease after the
    /// last renewal was sent), unless a renewal comes first.
    hard_until: Mutex<Instant>,
    /// The session's expiry by the database's clock, as the last renewal
    /// reported it: every write under the lease is bounded by it.
    db_until: Mutex<DateTime>,
    /// The database no longer names us (taken over, or released).
    lost: CancellationToken,
    /// Being handed over: finish what is in hand, start nothing new.
    releasing: CancellationToken,
    /// Work in hand was cut off under it (shutdown past its grace): the
    /// downstream may still be working on it, so the lease is not released
    /// early but left to expire.
    cut: AtomicBool,
    /// Events being executed under this lease right now.
    in_flight: AtomicUsize,
}

impl BucketLease {
    /// A lease valid locally as its session's last renewal says.
    pub fn new(bucket: i32, epoch: i64, session: Arc<str>, validity: Validity) -> Self {
        Self {
            bucket,
            epoch,
            session,
            valid_until: Mutex::new(validity.new_work),
            hard_until: Mutex::new(validity.in_hand),
            db_until: Mutex::new(validity.db_until),
            lost: CancellationToken::new(),
            releasing: CancellationToken::new(),
            cut: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// What a write under this lease names now: epoch, session, and the
    /// session's bound by the database's clock.
    pub fn fence(&self) -> Fence {
        Fence {
            epoch: self.epoch,
            owner: Arc::clone(&self.session),
            until: *self.db_until.lock().expect("lease clock poisoned"),
        }
    }

    /// Until when work in hand may go on (local, monotonic).
    pub fn in_hand_until(&self) -> Instant {
        self.hard_until()
    }

    /// Whether a new event may be started under this lease now.
    /// New work stops a tenth of the lease before work in hand must: a
    /// margin, so that an event is not started only to be abandoned at once
    /// when renewals stop.
    pub fn usable(&self) -> bool {
        !self.releasing.is_cancelled() && self.valid() && Instant::now() < self.valid_until()
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

    /// Extends the lease's clocks; `true` if new work had stopped under it
    /// (its time for new work had run out) and may start again.
    pub(crate) fn extend(&self, validity: Validity) -> bool {
        let mut until = self.valid_until.lock().expect("lease clock poisoned");
        let now = Instant::now();
        let had_lapsed = *until <= now && validity.new_work > now;
        *until = (*until).max(validity.new_work);
        let mut hard = self.hard_until.lock().expect("lease clock poisoned");
        *hard = (*hard).max(validity.in_hand);
        let mut db_until = self.db_until.lock().expect("lease clock poisoned");
        *db_until = (*db_until).max(validity.db_until);
        had_lapsed
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

    /// Work in hand was cut off under this lease (see [`BucketLease::was_cut`]).
    pub fn mark_cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    pub fn was_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
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

/// How long a renewal lets a lease be trusted (see [`Ownership::validity`]).
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub new_work: Instant,
    pub in_hand: Instant,
    pub db_until: DateTime,
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
    /// start until `new_work`, work in hand may go on until `in_hand`; every
    /// write is bounded by `db_until` (the expiry the database reported).
    pub fn validity(renewal_sent: Instant, lease: Duration, db_until: DateTime) -> Validity {
        Validity {
            new_work: renewal_sent + lease.mul_f64(NEW_WORK_SHARE),
            in_hand: renewal_sent + lease.mul_f64(IN_HAND_SHARE),
            db_until,
        }
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

    /// Forgets a lease the database no longer gives us (released, or found
    /// taken over): nothing more may be done under it.
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 13, hole 7: the holder's local view of a lease must end a
    /// margin before the earliest moment the database can let the session
    /// expire (a whole lease after the renewal was sent), for work in hand
    /// as well as for new work.
    #[test]
    fn a_renewal_is_trusted_for_less_than_a_lease_even_for_work_in_hand() {
        let sent = Instant::now();
        let lease = Duration::from_secs(10);
        let validity = Ownership::validity(sent, lease, DateTime::now());
        assert!(validity.new_work <= sent + Duration::from_secs(8));
        assert!(validity.in_hand <= sent + Duration::from_secs(9));
        assert!(validity.new_work < validity.in_hand);
    }

    /// Between the new-work share and the in-hand share, work in hand goes
    /// on but nothing new starts.
    #[test]
    fn no_new_work_starts_past_the_new_work_share() {
        let now = Instant::now();
        let held = BucketLease::new(
            3,
            1,
            Arc::from("s"),
            Validity {
                new_work: now - Duration::from_secs(1),
                in_hand: now + Duration::from_secs(60),
                db_until: DateTime::now(),
            },
        );
        assert!(held.valid(), "work in hand goes on until 0.9");
        assert!(!held.usable(), "new work stops at 0.8");
    }
}
