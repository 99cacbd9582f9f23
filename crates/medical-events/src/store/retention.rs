//! Retention: removing, in batches, the payload and lifecycle records of
//! events finished long ago, without ever breaking a guarantee:
//! - only finished events go (processed, skipped, or failed and acknowledged
//!   by an operator); never a queued, parked or unacknowledged failed one;
//! - an event keeps its intake key (its idempotency or duplicate record) for
//!   at least the published window: it goes only once both the retention
//!   and that window are over;
//! - each patient's highest-numbered event stays, emptied of its payload, as
//!   the patient's sequence high-water mark: intake numbers the next event
//!   from it, so sequence numbers keep rising whatever was pruned;
//! - nothing younger than [`Retention::min_age`] goes, so a sequence number
//!   an ingest instance remembered a moment ago can never point into a gap.
//!
//! Candidates come from the `_id` index: event ids are UUID v7, so `_id`
//! order is acceptance order and "accepted before the cutoff" is a range.

use std::collections::HashMap;
use std::time::Duration;

use mongodb::bson::{DateTime, Document, doc};

use super::Store;
use super::deadline::{Bounded, BoundedAll};
use super::documents::EventStatus;
use super::error::StoreError;

/// Events examined per batch.
const BATCH: i64 = 1000;

/// What a pass may remove.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Finished events older than this lose payload and lifecycle record;
    /// `None` keeps them.
    pub events: Option<Duration>,
    /// Intake keys are honoured this long; their events stay at least as long.
    pub idempotency_ttl: Duration,
    /// `processed_events` older than this are removed (successful and
    /// skipped outcomes only); `None` keeps them.
    pub outcomes: Option<Duration>,
    /// Nothing younger goes, whatever the settings.
    pub min_age: Duration,
}

/// The floor under every retention setting.
pub const MIN_AGE: Duration = Duration::from_secs(3600);

impl Retention {
    /// `RETENTION_DAYS` and `OUTCOME_RETENTION_DAYS` (0: keep forever), with
    /// the idempotency window the events must outlive.
    pub fn from_source(
        source: &impl crate::config::Source,
        idempotency_ttl: Duration,
    ) -> Result<Self, crate::config::ConfigError> {
        Ok(Self {
            events: crate::config::days(source, "RETENTION_DAYS", 30)?,
            outcomes: crate::config::days(source, "OUTCOME_RETENTION_DAYS", 0)?,
            idempotency_ttl,
            min_age: MIN_AGE,
        })
    }

    /// Whether a pass would remove anything at all.
    pub fn removes_anything(&self) -> bool {
        self.events.is_some() || self.outcomes.is_some()
    }
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Pruned {
    pub events_deleted: u64,
    /// Patients' last events kept as high-water marks (payload removed).
    pub high_water_marks: u64,
    pub outcomes_deleted: u64,
}

fn before(age: Duration) -> DateTime {
    DateTime::from_millis(DateTime::now().timestamp_millis() - age.as_millis() as i64)
}

/// The smallest UUID v7 of a millisecond: `_id`s below it were accepted before it.
fn first_id_of(at: DateTime) -> String {
    let millis = at.timestamp_millis().max(0) as u64;
    let hex = format!("{millis:012x}");
    format!("{}-{}-7000-8000-000000000000", &hex[..8], &hex[8..12])
}

impl Store {
    /// One pruning pass, batch after batch, until nothing more qualifies.
    pub async fn prune(&self, retention: &Retention) -> Result<Pruned, StoreError> {
        let mut pruned = Pruned::default();
        if let Some(events) = retention.events {
            let age = events.max(retention.idempotency_ttl).max(retention.min_age);
            let (deleted, marks) = self
                .prune_events(before(age), before(events.max(retention.min_age)))
                .await?;
            pruned.events_deleted = deleted;
            pruned.high_water_marks = marks;
        }
        if let Some(outcomes) = retention.outcomes {
            let cutoff = before(outcomes.max(retention.min_age));
            let result = self
                .processed
                .clone_with_type::<Document>()
                .delete_many(doc! {
                    "processedAt": { "$lt": cutoff },
                    "result.status": { "$in": ["success", "skipped"] },
                })
                .bounded("removing old outcomes", self.op_timeout * 10)
                .await?;
            pruned.outcomes_deleted = result.deleted_count;
        }
        Ok(pruned)
    }

    /// Events accepted before `cutoff` and finished before `finished_before`.
    async fn prune_events(
        &self,
        cutoff: DateTime,
        finished_before: DateTime,
    ) -> Result<(u64, u64), StoreError> {
        let (mut deleted, mut marks) = (0, 0);
        let mut after = String::new();
        loop {
            let batch = self.prune_candidates(&after, &first_id_of(cutoff)).await?;
            let Some(last) = batch.last() else {
                break;
            };
            after = last.get_str("_id").unwrap_or_default().to_owned();
            let (d, m) = self.prune_batch(&batch, finished_before).await?;
            deleted += d;
            marks += m;
            if (batch.len() as i64) < BATCH {
                break;
            }
        }
        Ok((deleted, marks))
    }

    /// Events accepted before `below` (an `_id`), after `after`, oldest first.
    async fn prune_candidates(
        &self,
        after: &str,
        below: &str,
    ) -> Result<Vec<Document>, StoreError> {
        let operation = "finding events to prune";
        self.queued
            .clone_with_type::<Document>()
            .find(doc! { "_id": { "$gt": after, "$lt": below } })
            .sort(doc! { "_id": 1 })
            .limit(BATCH)
            .projection(doc! {
                "_id": 1, "bucket": 1, "patientId": 1, "seq": 1, "status": 1,
                "finishedAt": 1, "acknowledgedAt": 1, "pruned": 1,
            })
            .all(operation, self.op_timeout)
            .await
    }

    /// Removes the finished events of a batch; a patient's last event is
    /// emptied instead. Returns (deleted, kept as high-water marks).
    async fn prune_batch(
        &self,
        batch: &[Document],
        finished_before: DateTime,
    ) -> Result<(u64, u64), StoreError> {
        let prunable = |d: &&Document| {
            let finished = d
                .get_datetime("finishedAt")
                .is_ok_and(|at| *at < finished_before);
            let status = d.get_str("status").unwrap_or_default();
            let done = status == EventStatus::Processed.as_str()
                || status == EventStatus::Skipped.as_str()
                || (status == EventStatus::Failed.as_str() && d.contains_key("acknowledgedAt"));
            finished && done && !d.get_bool("pruned").unwrap_or(false)
        };
        let mut last_seqs: HashMap<(i32, String), i64> = HashMap::new();
        let mut delete = Vec::new();
        let mut empty = Vec::new();
        for event in batch.iter().filter(prunable) {
            let (Ok(bucket), Ok(patient), Ok(seq), Ok(id)) = (
                event.get_i32("bucket"),
                event.get_str("patientId"),
                event.get_i64("seq"),
                event.get_str("_id"),
            ) else {
                continue;
            };
            let key = (bucket, patient.to_owned());
            let last = match last_seqs.get(&key) {
                Some(last) => *last,
                None => {
                    let last = self.last_seq(bucket, patient).await?;
                    last_seqs.insert(key, last);
                    last
                }
            };
            if seq >= last {
                empty.push(id.to_owned());
            } else {
                delete.push(id.to_owned());
            }
        }
        // The conditions again in the writes: an event that changed since it
        // was read (an operator's retry) is left alone, and so is one whose
        // operator action's audit entry is still in it (not yet in the log).
        let still_done = doc! {
            "pendingAudit": { "$exists": false },
            "$or": [
                { "status": { "$in": [EventStatus::Processed.as_str(), EventStatus::Skipped.as_str()] } },
                { "status": EventStatus::Failed.as_str(), "acknowledgedAt": { "$exists": true } },
            ],
        };
        let mut deleted = 0;
        if !delete.is_empty() {
            let mut filter = doc! { "_id": { "$in": &delete } };
            filter.extend(still_done.clone());
            deleted = self
                .queued
                .delete_many(filter)
                .bounded("pruning events", self.op_timeout * 5)
                .await?
                .deleted_count;
        }
        let mut marks = 0;
        if !empty.is_empty() {
            let mut filter = doc! { "_id": { "$in": &empty } };
            filter.extend(still_done);
            marks = self
                .queued
                .update_many(
                    filter,
                    doc! {
                        "$set": { "pruned": true, "data": {}, "updatedAt": DateTime::now() },
                        "$inc": super::lifecycle::bump_rev(),
                        "$unset": { "traceparent": "" },
                    },
                )
                .bounded("emptying patients' last events", self.op_timeout * 5)
                .await?
                .modified_count;
        }
        Ok((deleted, marks))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_id_of_a_millisecond_sorts_before_every_id_of_it() {
        let at = DateTime::from_millis(1_790_000_000_123);
        let first = first_id_of(at);
        let later = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            1_790_000_000,
            123_000_000,
        ))
        .to_string();
        assert!(first.as_str() <= later.as_str(), "{first} {later}");
        let earlier = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            1_790_000_000,
            122_000_000,
        ))
        .to_string();
        assert!(earlier.as_str() < first.as_str());
    }
}
