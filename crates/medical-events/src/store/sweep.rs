//! The backstop scan of the processor fleet: everything waiting in the
//! buckets an instance owns, streamed (no sort, no `distinct`, no size limit)
//! from the `{status, bucket, patientId, seq}` index. It wakes the patients
//! and yields the backlog figures in the same pass.

use futures_util::TryStreamExt;
use mongodb::bson::{DateTime, Document};
use mongodb::options::FindOptions;

use super::deadline::{Bounded, CursorTiming};
use super::error::StoreError;
use super::{Store, shapes};

/// Buckets per query: a short `$in`.
const BUCKETS_PER_QUERY: usize = 64;
/// Documents per cursor batch: small replies, steady memory.
const BATCH: u32 = 1000;

/// What a scan saw.
#[derive(Debug, Default, Clone, Copy)]
pub struct Waiting {
    /// Events waiting (queued, claimed or not; parked ones not counted).
    pub events: u64,
    /// Of those, claimed (being worked on, or orphaned by a dead instance).
    pub claimed: u64,
    /// Acceptance time of the oldest.
    pub oldest: Option<DateTime>,
    /// Parked events (each holds its patient; their lanes are not woken).
    pub parked: u64,
}

impl Store {
    /// Streams every waiting event of `buckets`, calling `visit(patientId,
    /// seq)` once per patient with waiting events, with the number of the
    /// first one the index walk meets (its lowest: the walk gives a
    /// patient's events in order).
    pub async fn scan_waiting(
        &self,
        buckets: &[i32],
        mut visit: impl FnMut(&str, i64),
    ) -> Result<Waiting, StoreError> {
        let raw = self.queued.clone_with_type::<Document>();
        let operation = "scanning waiting events";
        let mut seen = Waiting::default();
        for chunk in buckets.chunks(BUCKETS_PER_QUERY) {
            let shape = shapes::waiting_in(chunk);
            let mut cursor = raw
                .find(shape.filter)
                .with_options(
                    FindOptions::builder()
                        .projection(shape.projection)
                        .batch_size(BATCH)
                        .build(),
                )
                .bounded(operation, self.op_timeout)
                .await?;
            // The find above is the first round trip; each later batch one more.
            let mut timing = CursorTiming::new(operation, BATCH);
            let mut last_visited: Option<String> = None;
            while let Some(event) = tokio::time::timeout(self.op_timeout, cursor.try_next())
                .await
                .map_err(|_| StoreError::Timeout {
                    operation,
                    limit: self.op_timeout,
                })?
                .map_err(StoreError::mongo(operation))?
            {
                timing.tick();
                if event.get_bool("parked").unwrap_or(false) {
                    seen.parked += 1;
                    continue;
                }
                seen.events += 1;
                if event.contains_key("claim") {
                    seen.claimed += 1;
                }
                if let Ok(at) = event.get_datetime("acceptedAt") {
                    seen.oldest = Some(seen.oldest.map_or(*at, |oldest| oldest.min(*at)));
                }
                // A patient's events are adjacent in the index: one visit
                // each (another would only make its lane read again).
                if let Ok(patient) = event.get_str("patientId") {
                    if last_visited.as_deref() != Some(patient) {
                        visit(patient, event.get_i64("seq").unwrap_or(i64::MAX));
                        last_visited = Some(patient.to_owned());
                    }
                }
            }
        }
        Ok(seen)
    }
}
