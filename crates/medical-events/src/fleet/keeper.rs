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
    stop: CancellationToken,
    releases: TaskTracker,
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
        membership.join(&ownership.session()).await?;
        Ok(Arc::new(Self {
            leases,
            membership,
            ownership,
            config,
            rescans,
            stop: CancellationToken::new(),
            releases: TaskTracker::new(),
        }))
    }

    /// Runs the keeper until [`Keeper::stop`].
    pub fn spawn(self: &Arc<Self>) {
        let keeper = Arc::clone(self);
        tokio::spawn(async move {
            let tick = keeper.config.lease / 3;
            loop {
                let started = tokio::time::Instant::now();
                if let Err(e) = keeper.tick().await {
                    warn!(error = %e, "lease keeper tick failed; leases are trusted until they run out locally");
                }
                tokio::select! {
                    () = tokio::time::sleep_until(started + tick) => {}
                    () = keeper.stop.cancelled() => return,
                }
            }
        });
    }

    /// Stops taking and renewing leases (shutdown); see [`Keeper::release_all`].
    pub fn stop(&self) {
        self.stop.cancel();
    }

    async fn tick(&self) -> Result<(), StoreError> {
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
            self.membership.join(&fresh).await?;
            self.ownership.replace_session(fresh);
            return Ok(());
        }
        let valid_until = Ownership::validity(sent, self.config.lease);
        if self.stop.is_cancelled() {
            for lease in self.ownership.all() {
                lease.extend(valid_until);
            }
            return Ok(());
        }
        // Leases first, then sessions: every owner the leases name joined
        // before the sessions are read, so a session missing from them ended.
        let view = self.leases.read_all().await?;
        let sessions = self.membership.sessions().await?;
        self.check_held(&view, &session, valid_until);
        let live: HashSet<&str> = sessions.live.iter().map(String::as_str).collect();
        let abandoned: Vec<String> = view
            .iter()
            .filter_map(|l| l.owner.as_deref())
            .filter(|owner| !live.contains(owner))
            .map(str::to_owned)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let steady: Vec<Arc<BucketLease>> = self
            .ownership
            .all()
            .into_iter()
            .filter(|l| !l.is_releasing())
            .collect();
        let plan = balance::plan(&session, live.len(), steady.len(), &view, &abandoned);
        for lease in steady.iter().take(plan.release) {
            self.hand_over(Arc::clone(lease));
        }
        let acquired = self
            .acquire(&plan.acquire, &view, &abandoned, &session, valid_until)
            .await?;
        metrics::gauge!("processor_owned_buckets").set(self.ownership.count() as f64);
        if !acquired.is_empty() {
            info!(
                buckets = acquired.len(),
                live = live.len(),
                "acquired bucket leases"
            );
            let _ = self.rescans.send(acquired);
        }
        Ok(())
    }

    /// Extends the leases the database still gives us; drops the others.
    fn check_held(&self, view: &[LeaseView], session: &str, valid_until: Instant) {
        for lease in self.ownership.all() {
            let id = leases::bucket_id(lease.bucket);
            let ours = view.iter().any(|l| {
                l.id == id && l.owner.as_deref() == Some(session) && l.epoch == lease.epoch
            });
            if ours {
                lease.extend(valid_until);
            } else if lease.is_releasing() {
                // Its hand-over released it a moment ago.
                self.ownership.remove(lease.bucket);
            } else {
                warn!(
                    bucket = lease.bucket,
                    epoch = lease.epoch,
                    "bucket lease lost to another processor"
                );
                metrics::counter!("lease_lost_total").increment(1);
                self.ownership.remove(lease.bucket);
            }
        }
    }

    /// Takes the planned leases; returns the buckets now held.
    async fn acquire(
        &self,
        ids: &[String],
        view: &[LeaseView],
        abandoned: &[String],
        session: &Arc<str>,
        valid_until: Instant,
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
                valid_until,
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
