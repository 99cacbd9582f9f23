//! The lease keeper: every `LEASE_MS / 3` it renews this processor's session
//! (which keeps every bucket lease it holds), notices leases taken from it,
//! and moves towards its fair share of the buckets: taking free or abandoned
//! ones, handing the excess over gracefully (events in hand finish first).
//! If the session itself expired (a pause past the lease), every lease is
//! dropped at once and the processor joins again under a new session.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::balance;
use super::leases::{self, LeaseView, Leases};
use super::membership::Membership;
use super::ownership::{BucketLease, Ownership};
use crate::bucket;
use crate::store::{Store, StoreError};

#[derive(Debug, Clone, Copy)]
pub struct KeeperConfig {
    /// `LEASE_MS`.
    pub lease: Duration,
    /// How long a hand-over waits for events in hand before handing them back.
    pub release_grace: Duration,
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
    /// Until when the session's last renewal may be trusted (new work, work in hand).
    valid_until: std::sync::Mutex<Option<(Instant, Instant)>>,
}

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
        let membership = Membership::new(store, config.lease);
        let joined = Instant::now();
        membership.join(&ownership.session()).await?;
        Ok(Arc::new(Self {
            leases,
            membership,
            ownership,
            config,
            rescans,
            stop: CancellationToken::new(),
            no_more_buckets: CancellationToken::new(),
            releases: TaskTracker::new(),
            valid_until: std::sync::Mutex::new(Some(Ownership::validity(joined, config.lease))),
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
        let alive = self.membership.renew(&session).await?;
        metrics::histogram!("lease_renewal_seconds").record(sent.elapsed().as_secs_f64());
        if !alive {
            // Paused or cut off past the lease: others may hold our buckets.
            warn!(
                session = &*session,
                "session expired; dropping every lease and joining again"
            );
            metrics::counter!("lease_lost_total").increment(self.ownership.count() as u64);
            self.ownership.lose_all();
            let fresh: Arc<str> = super::instance_id().into();
            let joined = Instant::now();
            self.membership.join(&fresh).await?;
            self.ownership.replace_session(fresh);
            *self.valid_until.lock().expect("keeper poisoned") =
                Some(Ownership::validity(joined, self.config.lease));
            return Ok(());
        }
        let validity = Ownership::validity(sent, self.config.lease);
        // A live session keeps every lease it holds: nobody may take a lease
        // from a live session, so there is nothing to check lease by lease.
        for lease in self.ownership.all() {
            lease.extend(validity.0, validity.1);
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
        if Instant::now() >= validity.0 {
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
            let takeable = self.takeable_owners(&candidates, &sessions.dead).await?;
            let plan = balance::plan(&session, live, steady.len(), &candidates, &takeable);
            if !plan.acquire.is_empty() {
                let taken_over = candidates
                    .iter()
                    .filter(|l| plan.acquire.contains(&l.id) && l.owner.is_some())
                    .count();
                self.leases
                    .acquire(&plan.acquire, &takeable, &session)
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
        self.claim_jobs(&sessions.dead, &session).await?;
        self.adopt_held(&session, validity).await?;
        metrics::gauge!("processor_owned_buckets").set(self.ownership.count() as f64);
        Ok(())
    }

    /// Takes the lease of each singleton job nobody alive holds.
    async fn claim_jobs(&self, dead: &[String], session: &Arc<str>) -> Result<(), StoreError> {
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
                Some(owner) if dead.contains(owner) => vec![owner.clone()],
                Some(owner)
                    if self
                        .membership
                        .existing(std::slice::from_ref(owner))
                        .await?
                        .is_empty() =>
                {
                    vec![owner.clone()]
                }
                Some(_) => continue,
            };
            // Adopted by `adopt_held` if it worked.
            self.leases
                .acquire(std::slice::from_ref(&id), &takeable, session)
                .await?;
        }
        Ok(())
    }

    /// Owners of `candidates` whose sessions ended: expired (`dead`), or gone
    /// from `processors` altogether. An owner that is neither was read as a
    /// session that joined after `sessions` was read: not takeable.
    async fn takeable_owners(
        &self,
        candidates: &[LeaseView],
        dead: &[String],
    ) -> Result<Vec<String>, StoreError> {
        let mut takeable: Vec<String> = dead.to_vec();
        let unknown: Vec<String> = candidates
            .iter()
            .filter_map(|l| l.owner.clone())
            .filter(|owner| !dead.contains(owner))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if !unknown.is_empty() {
            let existing = self.membership.existing(&unknown).await?;
            takeable.extend(unknown.into_iter().filter(|o| !existing.contains(o)));
        }
        Ok(takeable)
    }

    /// Makes the leases the database gives this session the ones it works
    /// under: every lease it acquired (also one whose acquisition reply was
    /// lost), and nothing else. Only this session can have given itself a
    /// lease, so adopting one is safe.
    async fn adopt_held(
        &self,
        session: &Arc<str>,
        validity: (Instant, Instant),
    ) -> Result<(), StoreError> {
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

    /// Hands a bucket over: no new events start, those in hand finish (or
    /// are handed back after the grace period), then the lease is released
    /// at once so the next owner need not wait for anything to expire.
    fn hand_over(&self, lease: Arc<BucketLease>) {
        self.ownership.retire(lease.bucket, lease.epoch);
        lease.start_release();
        self.ownership.changed();
        let leases = self.leases.clone();
        let ownership = self.ownership.clone();
        let grace = self.config.release_grace;
        self.releases.spawn(async move {
            drain(&lease, grace).await;
            let id = leases::bucket_id(lease.bucket);
            if let Err(e) = leases.release(&id, &lease.session, lease.epoch).await {
                warn!(bucket = lease.bucket, error = %e, "could not release a lease; it ends with the session");
            }
            ownership.remove(lease.bucket);
        });
    }

    /// Shutdown, after the lanes stopped: releases every lease at once and
    /// ends the session.
    pub async fn release_all(&self) {
        self.no_more_buckets.cancel();
        self.stop.cancel();
        self.releases.close();
        let _ = tokio::time::timeout(self.config.release_grace, self.releases.wait()).await;
        let session = self.ownership.session();
        if let Err(e) = self.leases.release_all(&session).await {
            warn!(error = %e, "could not release the leases; they end with the session");
        }
        self.ownership.lose_all();
        if let Err(e) = self.membership.leave(&session).await {
            warn!(error = %e, "could not end the session; it will expire");
        }
        info!("released all bucket leases");
    }
}

/// Waits for the lease's events in hand, up to `grace`; then asks for them
/// to be handed back and waits a little more.
async fn drain(lease: &BucketLease, grace: Duration) {
    let deadline = Instant::now() + grace;
    while lease.in_flight() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if lease.in_flight() > 0 {
        lease.abort();
        let deadline = Instant::now() + Duration::from_secs(5);
        while lease.in_flight() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
