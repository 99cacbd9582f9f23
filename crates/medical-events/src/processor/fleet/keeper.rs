//! The lease keeper: every `LEASE_MS / 3` it renews this processor's session
//! (which keeps every bucket lease it holds), notices leases taken from it,
//! and moves towards its fair share of the buckets: taking free or abandoned
//! ones (abandoned: their session killed first), handing the excess over
//! gracefully (events in hand finish first, however long they take: a
//! hand-over never gives away an event whose handler still runs). If the
//! session itself expired (a pause past the lease), every lease is dropped at
//! once and the processor joins again under a new session.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mongodb::bson::DateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::balance;
use super::leases::{self, LeaseView, Leases};
use super::membership::Membership;
use super::ownership::{BucketLease, Ownership, Validity};
use crate::bucket;
use crate::store::{Store, StoreError};

#[derive(Debug, Clone, Copy)]
pub struct KeeperConfig {
    /// `LEASE_MS`.
    pub lease: Duration,
    /// Singleton jobs to run on one instance of the fleet at a time.
    pub jobs: &'static [&'static str],
}

pub struct Keeper {
    leases: Leases,
    membership: Membership,
    ownership: Ownership,
    config: KeeperConfig,
    /// Buckets just acquired, to be scanned for waiting work.
    rescans: mpsc::UnboundedSender<Vec<i32>>,
    /// Ends the renewals (after the lanes stopped, in `release_all`).
    stop: CancellationToken,
    /// Ends the balancing: no bucket is taken any more (shutdown started).
    no_more_buckets: CancellationToken,
    releases: TaskTracker,
    /// Until when the session's last renewal may be trusted.
    valid_until: std::sync::Mutex<Option<Validity>>,
}

/// Pause between two tries of a release that failed.
const RELEASE_RETRY: Duration = Duration::from_millis(500);

impl Keeper {
    /// Creates the lease documents if needed and opens this processor's session.
    pub async fn start(
        store: &Store,
        ownership: Ownership,
        config: KeeperConfig,
        rescans: mpsc::UnboundedSender<Vec<i32>>,
    ) -> Result<Arc<Self>, StoreError> {
        let leases = Leases::new(store);
        leases
            .seed(
                bucket::all()
                    .map(|b| (leases::bucket_id(b), Some(b)))
                    .chain(config.jobs.iter().map(|job| (leases::job_id(job), None))),
            )
            .await?;
        leases.raise_counter_floor().await?;
        let membership = Membership::new(store, config.lease);
        let validity = join(&membership, &ownership.session(), config.lease).await?;
        Ok(Arc::new(Self {
            leases,
            membership,
            ownership,
            config,
            rescans,
            stop: CancellationToken::new(),
            no_more_buckets: CancellationToken::new(),
            releases: TaskTracker::new(),
            valid_until: std::sync::Mutex::new(Some(validity)),
        }))
    }

    /// Runs the keeper until [`Keeper::stop`]: session renewals on their
    /// own fixed beat (nothing slow may delay them), and the balancing of
    /// buckets on another.
    pub fn spawn(self: &Arc<Self>) {
        let tick = self.config.lease / 3;
        let keeper = Arc::clone(self);
        tokio::spawn(async move {
            let mut beat = tokio::time::interval(tick);
            beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = beat.tick() => {}
                    () = keeper.stop.cancelled() => return,
                }
                if let Err(e) = keeper.renew().await {
                    warn!(error = %e, "session renewal failed; leases are trusted until they run out locally");
                }
            }
        });
        let keeper = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let started = tokio::time::Instant::now();
                if let Err(e) = keeper.balance().await {
                    warn!(error = %e, "balancing buckets failed; will try again");
                }
                tokio::select! {
                    () = tokio::time::sleep_until(started + tick) => {}
                    () = keeper.no_more_buckets.cancelled() => return,
                }
            }
        });
    }

    /// Stops taking leases (shutdown starts); the session stays renewed so
    /// the events in hand can finish, until [`Keeper::release_all`].
    pub fn stop(&self) {
        self.no_more_buckets.cancel();
    }

    /// Renews the session, which keeps every lease held.
    async fn renew(&self) -> Result<(), StoreError> {
        let session = self.ownership.session();
        let sent = Instant::now();
        let renewed = self.membership.renew(&session).await?;
        metrics::histogram!("lease_renewal_seconds").record(sent.elapsed().as_secs_f64());
        let Some(expires) = renewed else {
            // Paused or cut off past the lease: others may hold our buckets.
            warn!(
                session = &*session,
                "session expired; dropping every lease and joining again"
            );
            metrics::counter!("lease_lost_total").increment(self.ownership.count() as u64);
            self.ownership.lose_all();
            let fresh: Arc<str> = super::instance_id().into();
            let validity = join(&self.membership, &fresh, self.config.lease).await?;
            self.ownership.replace_session(fresh);
            *self.valid_until.lock().expect("keeper poisoned") = Some(validity);
            return Ok(());
        };
        let validity = Ownership::validity(sent, self.config.lease, expires);
        // A live session keeps every lease it holds: nobody may take a lease
        // from a live session, so there is nothing to check lease by lease.
        let mut lapsed = Vec::new();
        for lease in self.ownership.all() {
            if lease.extend(validity) && lease.usable() {
                lapsed.push(lease.bucket);
            }
        }
        if !lapsed.is_empty() {
            // While unusable, lanes stopped and wakes were dropped: what
            // waits in these buckets is found by a scan, not left to the
            // sweep.
            info!(
                buckets = lapsed.len(),
                "leases usable again after a late renewal; rescanning them"
            );
            let _ = self.rescans.send(lapsed);
        }
        *self.valid_until.lock().expect("keeper poisoned") = Some(validity);
        Ok(())
    }

    /// Moves towards the fair share: takes free and abandoned buckets, or
    /// hands the excess over.
    async fn balance(&self) -> Result<(), StoreError> {
        if self.no_more_buckets.is_cancelled() {
            return Ok(());
        }
        // Leases taken now are trusted as long as the session's last renewal.
        let Some(validity) = *self.valid_until.lock().expect("keeper poisoned") else {
            return Ok(());
        };
        if Instant::now() >= validity.new_work {
            return Ok(());
        }
        let session = self.ownership.session();
        let sessions = self.membership.sessions().await?;
        let live = sessions.live.len();
        let steady: Vec<Arc<BucketLease>> = self
            .ownership
            .all()
            .into_iter()
            .filter(|l| !l.is_releasing())
            .collect();
        let share = balance::share(live);
        if steady.len() > share {
            let excess = steady.len() - share;
            info!(
                buckets = excess,
                live, "handing buckets over to even out the fleet"
            );
            for lease in steady.iter().take(excess) {
                self.hand_over(Arc::clone(lease));
            }
        } else if steady.len() < share {
            let candidates = self.leases.not_held_by(&sessions.live).await?;
            let takeable = self.takeable_owners(&candidates).await?;
            let plan = balance::plan(&session, live, steady.len(), &candidates, &takeable);
            if !plan.acquire.is_empty() {
                let taken_over = candidates
                    .iter()
                    .filter(|l| plan.acquire.contains(&l.id) && l.owner.is_some())
                    .count();
                self.leases
                    .acquire(&plan.acquire, &takeable, &session, validity.db_until)
                    .await?;
                if taken_over > 0 {
                    metrics::counter!("lease_takeovers_total").increment(taken_over as u64);
                    info!(
                        buckets = taken_over,
                        "taking over buckets of processors whose session ended"
                    );
                }
            }
        }
        self.claim_jobs(&sessions.dead, &session, validity.db_until)
            .await?;
        self.adopt_held(&session, validity).await?;
        metrics::gauge!("processor_owned_buckets").set(self.ownership.count() as f64);
        Ok(())
    }

    /// Takes the lease of each singleton job nobody alive holds.
    async fn claim_jobs(
        &self,
        dead: &[String],
        session: &Arc<str>,
        until: DateTime,
    ) -> Result<(), StoreError> {
        for job in self.config.jobs {
            if self.ownership.runs_job(job) {
                continue;
            }
            let id = leases::job_id(job);
            let Some(lease) = self.leases.read(&id).await? else {
                continue;
            };
            let takeable = match &lease.owner {
                None => Vec::new(),
                Some(owner) if **owner == **session => continue,
                Some(owner)
                    if (dead.contains(owner)
                        || self
                            .membership
                            .existing(std::slice::from_ref(owner))
                            .await?
                            .is_empty())
                        && self.membership.kill(owner).await? =>
                {
                    vec![owner.clone()]
                }
                Some(_) => continue,
            };
            // Adopted by `adopt_held` if it worked.
            self.leases
                .acquire(std::slice::from_ref(&id), &takeable, session, until)
                .await?;
        }
        Ok(())
    }

    /// Owners of `candidates` (leases no session read as live holds) that
    /// are dead: each one killed here, by a write the primary applies only
    /// if the session has expired by its clock on its latest state (a read
    /// may lag: the session may have been renewed since), or gone from
    /// `processors` altogether. Only those may lose their leases.
    async fn takeable_owners(&self, candidates: &[LeaseView]) -> Result<Vec<String>, StoreError> {
        let owners: HashSet<String> = candidates.iter().filter_map(|l| l.owner.clone()).collect();
        let mut takeable = Vec::new();
        for owner in owners {
            if self.membership.kill(&owner).await? {
                takeable.push(owner);
            }
        }
        Ok(takeable)
    }

    /// Makes the leases the database gives this session the ones it works
    /// under: every lease it acquired (also one whose acquisition reply was
    /// lost), and nothing else. Only this session can have given itself a
    /// lease, so adopting one is safe.
    async fn adopt_held(&self, session: &Arc<str>, validity: Validity) -> Result<(), StoreError> {
        let held = self.leases.owned_by(session).await?;
        let mut acquired = Vec::new();
        for lease in &held {
            if let Some(bucket) = lease.bucket {
                if self.ownership.get(bucket).is_none()
                    && !self.ownership.was_retired(bucket, lease.epoch)
                {
                    self.ownership.insert(Arc::new(BucketLease::new(
                        bucket,
                        lease.epoch,
                        Arc::clone(session),
                        validity,
                    )));
                    acquired.push(bucket);
                }
            } else if let Some(job) = lease.id.strip_prefix("job:") {
                if !self.ownership.runs_job(job) {
                    info!(job, "running the fleet's singleton job here");
                    self.ownership.take_job(job);
                }
            }
        }
        if !acquired.is_empty() {
            info!(buckets = acquired.len(), "acquired bucket leases");
            let _ = self.rescans.send(acquired);
        }
        Ok(())
    }

    /// Hands a bucket over: no new events start, those in hand finish
    /// (however long: each is bounded by `ATTEMPT_TIMEOUT_MS`; none is ever
    /// handed to the next owner while its handler runs), then the lease is
    /// released at once so the next owner need not wait for anything to
    /// expire. The lease stays ours until the release is known to be
    /// applied: forgetting it while the database still names this live
    /// session would orphan the bucket (nobody takes a live session's lease).
    fn hand_over(&self, lease: Arc<BucketLease>) {
        self.ownership.retire(lease.bucket, lease.epoch);
        lease.start_release();
        self.ownership.changed();
        let leases = self.leases.clone();
        let ownership = self.ownership.clone();
        self.releases.spawn(async move {
            drain(&lease).await;
            if lease.was_cut() || lease.is_lost() {
                // Cut by a shutdown (left to expire), or gone with the session.
                return;
            }
            let id = leases::bucket_id(lease.bucket);
            loop {
                match leases.release(&id, &lease.session, lease.epoch).await {
                    Ok(_) => break,
                    Err(e) => {
                        warn!(bucket = lease.bucket, error = %e, "could not release a lease; trying again");
                        metrics::counter!("lease_release_failures_total").increment(1);
                    }
                }
                tokio::time::sleep(RELEASE_RETRY).await;
                if lease.is_lost() {
                    return;
                }
            }
            ownership.remove(lease.bucket);
        });
    }

    /// Shutdown, after the lanes stopped: renewals end; every lease under
    /// which nothing was cut is released at once; a lease under which work
    /// was cut off (the downstream may still be working on it) is left to
    /// expire with the session, `LEASE_MS` after its last renewal, and the
    /// session stays until then. The caller bounds it by `done_by`: half of
    /// the time left may go to hand-overs under way, the rest is the
    /// release's.
    pub async fn release_all(&self, done_by: tokio::time::Instant) {
        self.no_more_buckets.cancel();
        self.stop.cancel();
        self.releases.close();
        // Hand-overs under way finish with the lanes (which have stopped);
        // a hand-over not done by then is released by the write below.
        let left = done_by.saturating_duration_since(tokio::time::Instant::now());
        let wait = (left / 2).min(Duration::from_secs(5));
        let _ = tokio::time::timeout(wait, self.releases.wait()).await;
        let session = self.ownership.session();
        // A lane still holding an event (its hand-back or a write still
        // under way) counts as cut: its bucket waits for the session's end.
        let cut: Vec<String> = self
            .ownership
            .all()
            .iter()
            .filter(|lease| lease.was_cut() || lease.in_flight() > 0)
            .map(|lease| leases::bucket_id(lease.bucket))
            .collect();
        let released = match self.leases.release_all_but(&session, &cut).await {
            Ok(_) => true,
            Err(e) => {
                warn!(error = %e, "could not release the leases; they end with the session");
                false
            }
        };
        self.ownership.lose_all();
        let holds_leases = !released || !cut.is_empty();
        if holds_leases {
            info!(
                buckets = cut.len(),
                "leaving buckets whose work was cut off to expire with the session"
            );
        }
        if let Err(e) = self.membership.leave(&session, holds_leases).await {
            warn!(error = %e, "could not end the session; it will expire");
        }
        info!("released the bucket leases");
    }
}

/// Opens `session` and returns how long its first lease period may be trusted.
async fn join(
    membership: &Membership,
    session: &str,
    lease: Duration,
) -> Result<Validity, StoreError> {
    let sent = Instant::now();
    membership.join(session).await?;
    let expires = membership
        .expires_at(session)
        .await?
        .ok_or(StoreError::Contention {
            operation: "reading a session just opened",
            attempts: 1,
        })?;
    Ok(Ownership::validity(sent, lease, expires))
}

/// Waits until no event is in hand under the lease.
async fn drain(lease: &BucketLease) {
    while lease.in_flight() > 0 && !lease.is_lost() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
