//! The processor's background machinery, started next to its HTTP server:
//! the lease keeper (membership, buckets, fencing epochs), the lanes, the
//! change-stream watcher and the backstop sweep with the backlog gauges.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::processor::fleet::watch::Inserted;
use crate::processor::fleet::{self, Keeper, KeeperConfig, Ownership};
use crate::processor::processing::EventHandler;
use crate::processor::scheduler::{LaneConfig, Scan, Scheduler};
use crate::store::{Retention, Store, StoreError, Waiting};

#[derive(Debug, Clone, Copy)]
pub struct WorkerConfig {
    pub lanes: LaneConfig,
    /// `LEASE_MS`.
    pub lease: Duration,
    /// `SWEEP_INTERVAL_MS`: the backstop scan of every owned bucket.
    pub sweep_interval: Duration,
    /// What the fleet's pruner removes; `None`: nothing (it does not run).
    pub retention: Option<Retention>,
}

/// How long a shutdown may take past its grace period: interrupting the
/// lanes and handing their events back, then releasing the leases. Past it
/// the process exits anyway (the README's bound for orchestrators): what
/// was not written then is what a crash leaves, claims in doubt and leases
/// that end with the session, and the fleet recovers from both.
pub const AFTER_GRACE: Duration = Duration::from_secs(4);

/// How often the fleet's pruner runs a pass (on one instance at a time).
const PRUNE_EVERY: Duration = Duration::from_secs(600);

pub struct Worker<H> {
    scheduler: Scheduler<H>,
    keeper: Arc<Keeper>,
    stop: CancellationToken,
}

impl<H: EventHandler> Worker<H> {
    pub async fn start(
        store: &Store,
        handler: H,
        config: WorkerConfig,
    ) -> Result<Self, StoreError> {
        let ownership = Ownership::new(fleet::instance_id());
        info!(
            session = &*ownership.session(),
            "processor instance starting"
        );
        let (rescans, rescan_requests) = mpsc::unbounded_channel();
        let control = store.separate_pool("processor-leases").await?;
        let keeper = Keeper::start(
            &control,
            ownership.clone(),
            KeeperConfig {
                lease: config.lease,
                jobs: if config.retention.is_some() {
                    &[fleet::leases::PRUNER]
                } else {
                    &[]
                },
            },
            rescans.clone(),
        )
        .await?;
        let scheduler = Scheduler::new(store.clone(), handler, ownership.clone(), config.lanes);
        let stop = CancellationToken::new();
        keeper.spawn();
        let waker = scheduler.clone();
        fleet::watch::spawn(
            store,
            ownership,
            Arc::new(move |inserted| match inserted {
                Inserted::Event(event) => waker.offer(*event),
                Inserted::Patient(patient) => waker.wake(&patient),
            }),
            scheduler.stream_live(),
            rescans,
            stop.clone(),
        );
        spawn_sweeper(
            scheduler.clone(),
            rescan_requests,
            config.sweep_interval,
            stop.clone(),
        );
        if let Some(retention) = config.retention {
            spawn_pruner(
                store.clone(),
                scheduler.ownership().clone(),
                retention,
                stop.clone(),
            );
        }
        Ok(Self {
            scheduler,
            keeper,
            stop,
        })
    }

    pub fn scheduler(&self) -> &Scheduler<H> {
        &self.scheduler
    }

    pub fn ownership(&self) -> &Ownership {
        self.scheduler.ownership()
    }

    /// Graceful stop: lanes finish (or hand back after `grace`) the events in
    /// hand, then every lease is released at once for the rest of the fleet.
    /// Returns at most [`AFTER_GRACE`] after `grace`, whether or not the
    /// database answers.
    pub async fn shutdown(&self, grace: Duration) {
        let done_by = tokio::time::Instant::now() + grace + AFTER_GRACE;
        self.stop.cancel();
        self.keeper.stop();
        self.scheduler.shutdown(grace, AFTER_GRACE / 2).await;
        if tokio::time::timeout_at(done_by, self.keeper.release_all(done_by))
            .await
            .is_err()
        {
            warn!(
                "the database did not take the lease release in time; the leases end with the session"
            );
        }
    }
}

/// Scans buckets as they are acquired (takeover), whatever the change
/// stream asks for, and every owned bucket every `interval`, publishing the
/// backlog gauges from the periodic scan.
fn spawn_sweeper<H: EventHandler>(
    scheduler: Scheduler<H>,
    mut requests: mpsc::UnboundedReceiver<Vec<i32>>,
    interval: Duration,
    stop: CancellationToken,
) {
    let live = scheduler.stream_live();
    tokio::spawn(async move {
        let mut next_full = tokio::time::Instant::now() + interval;
        loop {
            tokio::select! {
                Some(buckets) = requests.recv() => {
                    let started = Instant::now();
                    match scheduler.scan(&buckets, Scan::Recover).await {
                        Ok(seen) => {
                            metrics::histogram!("takeover_scan_seconds").record(started.elapsed().as_secs_f64());
                            info!(buckets = buckets.len(), waiting = seen.events, "scanned newly owned buckets");
                        }
                        Err(e) => warn!(error = %e, "scan of newly owned buckets failed; the sweep will retry"),
                    }
                }
                () = tokio::time::sleep_until(next_full) => {
                    let started = tokio::time::Instant::now();
                    let buckets = scheduler.ownership().usable_buckets();
                    match scheduler.scan(&buckets, Scan::Periodic).await {
                        Ok(seen) => publish(&seen, scheduler.active_lanes()),
                        Err(e) => warn!(error = %e, "sweep failed; will try again"),
                    }
                    // A huge backlog makes a scan long, and it reads every
                    // waiting event: keep sweeping at most a third of the
                    // time, whatever the interval says, and a tenth while the
                    // change stream is open (then the sweep only backs up a
                    // lost wake of a patient without a lane, and its reads
                    // would take the database from the lanes: issue 17's soak).
                    let took = started.elapsed();
                    metrics::histogram!("sweep_seconds").record(took.as_secs_f64());
                    let spacing = if live.load(Ordering::Acquire) { 9 } else { 2 };
                    next_full = tokio::time::Instant::now() + interval.max(took * spacing);
                }
                () = stop.cancelled() => return,
            }
        }
    });
}

/// Runs a pruning pass every [`PRUNE_EVERY`] while this instance holds the
/// fleet's pruner lease (one instance at a time does it).
fn spawn_pruner(store: Store, ownership: Ownership, retention: Retention, stop: CancellationToken) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(PRUNE_EVERY) => {}
                () = stop.cancelled() => return,
            }
            if !ownership.runs_job(fleet::leases::PRUNER) {
                continue;
            }
            let started = Instant::now();
            match store.prune(&retention).await {
                Ok(pruned) => {
                    metrics::counter!("pruned_events_total").increment(pruned.events_deleted);
                    metrics::counter!("pruned_outcomes_total").increment(pruned.outcomes_deleted);
                    info!(
                        events = pruned.events_deleted,
                        highWaterMarks = pruned.high_water_marks,
                        outcomes = pruned.outcomes_deleted,
                        seconds = started.elapsed().as_secs_f64(),
                        "retention pass done"
                    );
                }
                Err(e) => warn!(error = %e, "retention pass failed; will try again"),
            }
        }
    });
}

/// Backlog of the buckets this instance owns (sum them over the fleet).
fn publish(seen: &Waiting, lanes: usize) {
    metrics::gauge!("processor_active_lanes").set(lanes as f64);
    metrics::gauge!("processor_backlog_events").set(seen.events as f64);
    metrics::gauge!("processor_claimed_events").set(seen.claimed as f64);
    metrics::gauge!("processor_parked_events").set(seen.parked as f64);
    let age = seen.oldest.map_or(0.0, |at| {
        (mongodb::bson::DateTime::now().timestamp_millis() - at.timestamp_millis()).max(0) as f64
            / 1000.0
    });
    metrics::gauge!("processor_oldest_unfinished_age_seconds").set(age);
}
