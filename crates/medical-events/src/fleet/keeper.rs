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
            .seed(bucket::all().map(|b| (leases::bucket_id(b), Some(b))))
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
            for lease in steady.iter().take(steady.len() - share) {
                self.hand_over(Arc::clone(lease));
            }
        } else if steady.len() < share {
            let candidates = self.leases.not_held_by(&sessions.live).await?;
            let takeable = self.takeable_owners(&candidates, &sessions.dead).await?;
            let plan = balance::plan(&session, live, steady.len(), &candidates, &takeable);
            let acquired = self
                .acquire(&plan.acquire, &candidates, &takeable, &session, validity)
                .await?;
            if !acquired.is_empty() {
                info!(buckets = acquired.len(), live, "acquired bucket leases");
                let _ = self.rescans.send(acquired);
            }
        }
        metrics::gauge!("processor_owned_buckets").set(self.ownership.count() as f64);
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

    /// Takes the planned leases; returns the buckets now held.
    async fn acquire(
        &self,
        ids: &[String],
        view: &[LeaseView],
        abandoned: &[String],
        session: &Arc<str>,
        validity: (Instant, Instant),
    ) -> Result<Vec<i32>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let taken = self.leases.acquire(ids, abandoned, session).await?;
        let mut buckets = Vec::with_capacity(taken.len());
        let mut taken_over = 0;
        for (id, epoch) in taken {
            let Some(before) = view.iter().find(|l| l.id == id) else {
                continue;
            };
            let Some(bucket) = before.bucket else {
                continue;
            };
            if self.ownership.get(bucket).is_some() {
                continue;
            }
            if let Some(previous) = &before.owner {
                // Taken from a processor whose session ended: it died or is paused.
                taken_over += 1;
                tracing::debug!(
                    bucket,
                    epoch,
                    previous = previous.as_str(),
                    "took over an abandoned bucket"
                );
            }
            self.ownership.insert(Arc::new(BucketLease::new(
                bucket,
                epoch,
                Arc::clone(session),
                validity,
            )));
            buckets.push(bucket);
        }
        if taken_over > 0 {
            metrics::counter!("lease_takeovers_total").increment(taken_over);
            info!(
                buckets = taken_over,
                "took over buckets of processors whose session ended"
            );
        }
        Ok(buckets)
    }

    /// Hands a bucket over: no new events start, those in hand finish (or
    /// are handed back after the grace period), then the lease is released
    /// at once so the next owner need not wait for anything to expire.
    fn hand_over(&self, lease: Arc<BucketLease>) {
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
