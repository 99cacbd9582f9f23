//! The fenced lifecycle of an event in the processor: claim, record the
//! outcome, write `processed_events`, close. Every write names the fencing
//! epoch and the claim token it was made under, and the database applies it
//! only if the event still carries them: an instance that lost its bucket
//! (paused, partitioned) sees `0 matched` and stops; it can never overwrite
//! what the new owner did (ARCHITECTURE.md, "Fencing").
//!
//! Per event: find the next event, claim it, record the outcome, write
//! `processed_events`, close it: five operations, each a single-document
//! write or an index walk (ARCHITECTURE.md, "Cost per event").

use std::sync::Arc;

use mongodb::bson::{Bson, DateTime, Document, doc};
use mongodb::options::UpdateOptions;

use super::deadline::Bounded;
use super::documents::{EventStatus, ProcessedEvent, ProcessingResult, QueuedEvent};
use super::error::{StoreError, is_duplicate_key};
use super::{Store, shapes};

/// What a lane writes under: its bucket's lease epoch, and its instance.
#[derive(Debug, Clone)]
pub struct Fence {
    pub epoch: i64,
    pub owner: Arc<str>,
}

/// An event this lane holds: its document as the claim left it, and the claim token.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub event: QueuedEvent,
    pub token: String,
    pub epoch: i64,
}

#[derive(Debug)]
pub enum NextEvent {
    /// The patient has nothing unfinished.
    Idle,
    /// The patient's lowest unfinished event is parked: it waits for an operator.
    Parked(Box<QueuedEvent>),
    /// Claimed for a new attempt (counted in `attempts`).
    Claimed(Box<Claimed>),
    /// Its outcome was recorded by an earlier run that stopped before closing
    /// it: only the bookkeeping is left, the work is not redone.
    Recorded(Box<Claimed>),
    /// Claimed under a newer epoch: another instance owns the bucket now.
    Fenced,
}

/// Whether a fenced write was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Yes,
    /// The event no longer carries our epoch and token.
    Fenced,
}

impl Store {
    /// Claims the patient's lowest-`seq` unfinished event: finds it (an
    /// index walk over this patient's queued events), then marks it with our
    /// epoch and a fresh claim token and counts the attempt, in an update
    /// whose condition the database evaluates on the document: it must still
    /// be queued, not parked, and its epoch not newer than ours. A parked
    /// event is returned, not claimed. If the claim's reply is lost, the
    /// token finds it again, so the attempt counts once.
    ///
    /// (Not one `findAndModify`: SecantusDB's Python server executes every
    /// `findAndModify` as a collection scan.)
    pub async fn claim_next(
        &self,
        bucket: i32,
        patient: &str,
        fence: &Fence,
    ) -> Result<NextEvent, StoreError> {
        for _ in 0..3 {
            let shape = shapes::next_unfinished(bucket, patient);
            let Some(mut event) = self
                .find_one(&self.queued, shape, "finding a patient's next event")
                .await?
            else {
                return Ok(NextEvent::Idle);
            };
            if event.parked {
                return Ok(NextEvent::Parked(Box::new(event)));
            }
            if event.epoch > fence.epoch {
                return Ok(NextEvent::Fenced);
            }
            let token = uuid::Uuid::new_v4().simple().to_string();
            let at = DateTime::now();
            let operation = "claiming an event";
            let claimed = match self
                .queued
                .update_one(doc! { "_id": &event.id }, claim_pipeline(fence, &token, at))
                .bounded(operation, self.op_timeout)
                .await
            {
                Ok(result) => result.modified_count > 0,
                Err(error) if error.is_ambiguous() => match self.find_event(&event.id).await {
                    Ok(Some(now)) => now.claim.is_some_and(|c| c.token == token),
                    _ => return Err(error),
                },
                Err(error) => return Err(error),
            };
            if !claimed {
                // It changed between the read and the claim: look again.
                continue;
            }
            let recorded = event.result.is_some();
            if !recorded {
                event.attempts += 1;
            }
            event.epoch = fence.epoch;
            event.claim = Some(super::documents::Claim {
                token: token.clone(),
                owner: fence.owner.to_string(),
                at,
            });
            let claimed = Box::new(Claimed {
                event,
                token,
                epoch: fence.epoch,
            });
            return Ok(if recorded {
                NextEvent::Recorded(claimed)
            } else {
                NextEvent::Claimed(claimed)
            });
        }
        Err(StoreError::Contention {
            operation: "claiming an event",
            attempts: 3,
        })
    }

    /// Records the attempt's outcome on the event (before `processed_events`
    /// is written, so that a crash in between is finished from here).
    pub async fn record(
        &self,
        claimed: &Claimed,
        result: &ProcessingResult,
        processed_at: DateTime,
        duration_ms: i64,
    ) -> Result<Applied, StoreError> {
        let mut set = doc! {
            "result": literal(mongodb::bson::to_bson(result)?),
            "processedAt": literal(processed_at),
            "processingDurationMs": literal(duration_ms),
            "updatedAt": "$$NOW",
        };
        if let Some(error) = &result.error {
            set.insert("lastError", literal(error.as_str()));
        }
        self.fenced_update(claimed, set, &[], "recording an outcome")
            .await
    }

    /// After a failed attempt that will be retried: remembers the error and
    /// gives the claim up, so the next claim counts the next attempt.
    pub async fn release_for_retry(
        &self,
        claimed: &Claimed,
        error: &str,
    ) -> Result<Applied, StoreError> {
        self.fenced_update(
            claimed,
            doc! { "lastError": literal(error), "updatedAt": "$$NOW" },
            &["claim"],
            "releasing an event for a retry",
        )
        .await
    }

    /// Puts an interrupted event back without counting the attempt (unless
    /// its outcome is already recorded: then there is nothing to hand back).
    pub async fn hand_back(&self, claimed: &Claimed) -> Result<Applied, StoreError> {
        if claimed.event.result.is_some() {
            return Ok(Applied::Yes);
        }
        self.fenced_update(
            claimed,
            doc! { "attempts": { "$add": ["$attempts", -1] }, "updatedAt": "$$NOW" },
            &["claim"],
            "handing an event back",
        )
        .await
    }

    /// Writes the event's one `processed_events` document from its record:
    /// inserted for the first run, replaced for a later run (an operator's
    /// retry), and left alone if this run's document is already there.
    pub async fn write_outcome(&self, outcome: &ProcessedEvent) -> Result<(), StoreError> {
        let mut set = mongodb::bson::to_document(outcome)?;
        set.remove("createdAt");
        set.remove("history");
        let result = self
            .processed
            .update_one(
                doc! { "eventId": &outcome.event_id, "run": { "$lt": outcome.run } },
                doc! { "$set": set, "$setOnInsert": { "createdAt": outcome.created_at } },
            )
            .with_options(UpdateOptions::builder().upsert(true).build())
            .into_future()
            .bounded_raw("writing an outcome", self.op_timeout)
            .await?;
        match result {
            Ok(_) => Ok(()),
            // This run's (or a later run's) outcome is already there.
            Err(e) if is_duplicate_key(&e) => Ok(()),
            Err(e) => Err(StoreError::mongo("writing an outcome")(e)),
        }
    }

    /// Gives the event its final state for this run.
    pub async fn close(&self, claimed: &Claimed, end: RunEnd) -> Result<Applied, StoreError> {
        let set = match end {
            RunEnd::Processed => doc! { "status": literal(EventStatus::Processed.as_str()) },
            RunEnd::Failed => doc! { "status": literal(EventStatus::Failed.as_str()) },
            // Stays queued, so the patient's later events stay behind it.
            RunEnd::Parked => doc! { "parked": true },
        };
        let mut set = set;
        set.insert("finishedAt", "$$NOW");
        set.insert("updatedAt", "$$NOW");
        self.fenced_update(claimed, set, &[], "closing an event")
            .await
    }

    /// Applies `set` (field: expression) and removes `unset`, in one update
    /// pipeline whose every change is conditional on the event still
    /// carrying the claim's epoch and token: the database decides, on the
    /// document, at the moment of the write. The filter is the primary key
    /// alone. A write that changed nothing is read back: it was ours if the
    /// event names our token as its last fenced writer (a retry of a write
    /// whose reply was lost), refused otherwise.
    async fn fenced_update(
        &self,
        claimed: &Claimed,
        set: Document,
        unset: &[&str],
        operation: &'static str,
    ) -> Result<Applied, StoreError> {
        let fence = doc! { "$and": [
            { "$eq": ["$epoch", claimed.epoch] },
            { "$eq": ["$claim.token", literal(claimed.token.as_str())] },
        ] };
        let mut changes = Document::new();
        for (field, value) in set {
            changes.insert(
                &field,
                doc! { "$cond": ["$_fenced", value, format!("${field}")] },
            );
        }
        for field in unset {
            changes.insert(
                *field,
                doc! { "$cond": ["$_fenced", "$$REMOVE", format!("${field}")] },
            );
        }
        changes.insert(
            "fencedBy",
            doc! { "$cond": ["$_fenced", literal(claimed.token.as_str()), "$fencedBy"] },
        );
        let pipeline = vec![
            doc! { "$set": { "_fenced": fence } },
            doc! { "$set": changes },
            doc! { "$unset": "_fenced" },
        ];
        let filter = shapes::fenced(&claimed.event.id).filter;
        let result = self
            .queued
            .update_one(filter.clone(), pipeline)
            .bounded(operation, self.op_timeout)
            .await?;
        if result.modified_count > 0 {
            return Ok(Applied::Yes);
        }
        let now = self
            .queued
            .find_one(filter)
            .bounded(operation, self.op_timeout)
            .await?;
        Ok(match now {
            Some(event)
                if event.epoch == claimed.epoch
                    && event.fenced_by.as_deref() == Some(claimed.token.as_str()) =>
            {
                Applied::Yes
            }
            _ => Applied::Fenced,
        })
    }
}

/// How a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    Processed,
    /// Failed for good; the patient goes on (`ON_FAILURE=continue`).
    Failed,
    /// Failed for good; the patient waits for an operator (`ON_FAILURE=park`).
    Parked,
}

/// A value an update pipeline must take as is (a string starting with `$`
/// would otherwise be read as a field path).
fn literal(value: impl Into<Bson>) -> Document {
    doc! { "$literal": value.into() }
}

/// The claim as an update pipeline: the conditions are evaluated by the
/// database on the document, at the moment of the write.
fn claim_pipeline(fence: &Fence, token: &str, at: DateTime) -> Vec<Document> {
    let claimable = doc! {
        "$and": [
            { "$eq": ["$status", EventStatus::Queued.as_str()] },
            { "$ne": ["$parked", true] },
            { "$lte": ["$epoch", fence.epoch] },
        ]
    };
    let unrecorded = doc! { "$eq": [{ "$type": "$result" }, "missing"] };
    vec![
        doc! { "$set": { "_claimable": claimable } },
        doc! { "$set": {
            "attempts": { "$cond": [
                { "$and": ["$_claimable", unrecorded] },
                { "$add": ["$attempts", 1] },
                "$attempts",
            ] },
            "epoch": { "$cond": ["$_claimable", fence.epoch, "$epoch"] },
            "claim": { "$cond": [
                "$_claimable",
                {
                    "token": { "$literal": token },
                    "owner": { "$literal": Bson::String(fence.owner.to_string()) },
                    "at": { "$literal": at },
                },
                "$claim",
            ] },
            "updatedAt": { "$cond": ["$_claimable", { "$literal": at }, "$updatedAt"] },
        } },
        doc! { "$unset": "_claimable" },
    ]
}
