//! The fenced lifecycle of an event in the processor: claim, write
//! `processed_events`, close carrying the result (a failure: record it
//! first). Every event write is conditional, and the database evaluates the
//! condition on the document at the moment of the write (ARCHITECTURE.md,
//! "Fencing"):
//!
//! - the claim applies only to the revision of the event the lane read
//!   (`rev`), so nothing changed between the read and the claim, and every
//!   copy of one claim (a retry after a lost reply) but the first is a no-op;
//! - every later write names the claim's epoch and token, so an instance
//!   that lost the event to a newer owner changes nothing;
//! - every write carries its session's expiry as the database set it (the
//!   last renewal the lane heard of): a write arriving after the session
//!   expired by the database's own clock is refused, so no event write of
//!   an instance lands after another one took its buckets over (a
//!   success's outcome document may: it is true whoever stores it first,
//!   and the close takes the one stored; ARCHITECTURE.md, "Exactly one
//!   outcome per event").
//!
//! Per event: find the next event, claim it, write `processed_events`, close
//! it carrying the result (a failure is recorded on the event first): four
//! operations, each a single-document write or an index walk; the writes
//! travel with other lanes' in batched commands (`update_batch.rs`,
//! `group_commit.rs`; the fenced ones merged into multi-document
//! statements, each document still deciding its own write), and one find
//! serves a run of a patient's small events (`claim_prefetched`;
//! ARCHITECTURE.md, "Cost per event").

use std::sync::Arc;
use std::time::{Duration, Instant};

use mongodb::bson::{Bson, DateTime, Document, doc};

use super::claims_in_doubt::InDoubt;
use super::deadline::Bounded;
use super::documents::{EventStatus, ProcessedEvent, ProcessingResult, QueuedEvent};
use super::error::StoreError;
use super::group_commit::Insert;
use super::update_batch::{Guarded, Statement, Updated};
use super::{Store, shapes};

/// What a lane writes under: its bucket's lease epoch, its session, and the
/// database-time bound of that session.
#[derive(Debug, Clone)]
pub struct Fence {
    pub epoch: i64,
    pub owner: Arc<str>,
    /// The session's expiry as the database set it at the last renewal this
    /// processor heard of (database time). The database refuses any write
    /// of ours that reaches it later: by then the session may have been
    /// declared dead and its buckets taken over.
    pub until: DateTime,
}

/// An event this lane holds: its document as the claim left it, and the claim token.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub event: QueuedEvent,
    pub token: String,
    pub epoch: i64,
    /// Whether the patient had, or may have, another unfinished event after
    /// this one and the ones in `ahead` when they were found (else the lane
    /// looks again only if woken meanwhile).
    pub more_waiting: bool,
    /// The events after this one as the same read found them, in order,
    /// kept while small: once this one is closed, the lane claims them one
    /// by one at the revision read, without reading the queue again
    /// ([`Store::claim_prefetched`]).
    pub ahead: Vec<QueuedEvent>,
}

/// What the read that found an event says about the patient's next ones.
struct After {
    /// The ones kept, in order.
    kept: Vec<QueuedEvent>,
    /// Whether there is, or may be, another after them.
    more: bool,
}

impl After {
    /// Nothing kept, and more may wait.
    fn unknown() -> Self {
        Self {
            kept: Vec::new(),
            more: true,
        }
    }

    /// Keeps the events after the first, in order, while they are not parked
    /// and fit in [`KEEP_MAX_BYTES`]; `full`: the read stopped at its limit.
    fn from_read(rest: impl Iterator<Item = QueuedEvent>, full: bool) -> Self {
        let mut kept = Vec::new();
        let mut bytes = 0;
        for next in rest {
            // A parked one is left to a read: it stops the lane there.
            let size = mongodb::bson::to_vec(&next.data).map_or(usize::MAX, |data| data.len());
            if next.parked || next.data_left_out || size > KEEP_MAX_BYTES - bytes {
                return Self { kept, more: true };
            }
            bytes += size;
            kept.push(next);
        }
        Self { kept, more: full }
    }
}

/// How many of a patient's unfinished events one read returns: the one to
/// claim and those after it, kept for the claims that follow. One read then
/// serves a run of a patient's events (the read's cost is mostly per command).
pub const READ_AHEAD: i64 = 8;

/// Payloads above this many bytes are left out of that read (the event is
/// read again by id when its turn comes), so a read holds at most
/// `READ_AHEAD` small payloads, whatever the patient sent.
pub const READ_AHEAD_MAX_PAYLOAD: i32 = 16 * 1024;

/// What a lane keeps of the events it read ahead, in payload bytes: beyond
/// that the next read finds them.
const KEEP_MAX_BYTES: usize = READ_AHEAD_MAX_PAYLOAD as usize;

#[derive(Debug)]
pub enum NextEvent {
    /// The patient has nothing unfinished.
    Idle,
    /// The patient's lowest unfinished event is parked: it waits for an operator.
    Parked(Box<QueuedEvent>),
    /// Claimed for a new attempt (counted in `attempts`).
    Claimed(Box<Claimed>),
    /// Its outcome was recorded by an earlier run that stopped before closing
    /// it (or by an operator's skip): only the bookkeeping is left, the work
    /// is not redone.
    Recorded(Box<Claimed>),
    /// Claimed under a newer epoch: another instance owns the bucket now.
    Fenced,
    /// Refused by the session's time bound: as far as the database can
    /// tell, this instance's session is over.
    Expired,
}

/// Whether a fenced write was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Yes,
    /// The event no longer carries our epoch and token: another owner has it.
    Fenced,
    /// Still ours, but the database's clock is past our session's bound:
    /// the session may be over (others may take the bucket at any moment).
    Expired,
}

/// The fenced writes after a claim; the name is part of `fencedBy`, so a
/// read-back after a lost reply recognises this very write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FencedWrite {
    Record,
    Release,
    HandBack,
    Close,
}

impl FencedWrite {
    fn as_str(self) -> &'static str {
        match self {
            Self::Record => "record",
            Self::Release => "release",
            Self::HandBack => "hand-back",
            Self::Close => "close",
        }
    }
}

/// Pause between two copies of a claim whose answer was lost.
const CLAIM_RETRY_PAUSE: Duration = Duration::from_millis(50);

impl Store {
    /// Claims the patient's lowest-`seq` unfinished event: finds it (an
    /// index walk over this patient's queued events), then marks it with our
    /// epoch and a fresh claim token and counts the attempt, in an update
    /// whose condition the database evaluates on the document: it must still
    /// be queued, not parked, its epoch not newer than ours, at the revision
    /// read, and our session within its bound. A parked event is returned,
    /// not claimed.
    ///
    /// When a claim's answer is lost, the same claim (same token, same
    /// revision) is sent again until an answer is certain: at most one copy
    /// can apply, so the attempt counts once, and a copy arriving late finds
    /// the revision moved on. `give_up_at` bounds that (the lane's lease); a
    /// claim given up on in doubt is adopted by the next read that finds it
    /// applied (`claims_in_doubt.rs`).
    ///
    /// (Not one `findAndModify`: SecantusDB's Python server executes every
    /// `findAndModify` as a collection scan.)
    pub async fn claim_next(
        &self,
        bucket: i32,
        patient: &str,
        fence: &Fence,
        give_up_at: Instant,
    ) -> Result<NextEvent, StoreError> {
        for _ in 0..3 {
            let shape = shapes::next_unfinished(bucket, patient);
            let found = self
                .find_all(&self.queued, shape, "finding a patient's next event")
                .await?;
            let full = found.len() >= READ_AHEAD as usize;
            let mut found = found.into_iter();
            let Some(mut event) = found.next() else {
                return Ok(NextEvent::Idle);
            };
            if event.data_left_out {
                // Too large for the read ahead: this one is read whole.
                match self.find_event(&event.id).await? {
                    Some(whole) if whole.status == EventStatus::Queued => event = whole,
                    // Finished meanwhile (an operator's skip): read again.
                    _ => continue,
                }
            }
            if event.parked {
                return Ok(NextEvent::Parked(Box::new(event)));
            }
            let after = After::from_read(found, full);
            if let Some(next) = self.claim_read(event, after, fence, give_up_at).await? {
                return Ok(next);
            }
        }
        Err(StoreError::Contention {
            operation: "claiming an event",
            attempts: 3,
        })
    }

    /// Claims the next of the events an earlier [`Store::claim_next`] found
    /// after the one it claimed ([`Claimed::ahead`]), without reading the
    /// patient's queue again: the claim applies only to the revision read,
    /// so it lands only if nothing wrote to the event since. `None`: it
    /// changed; read the queue ([`Store::claim_next`]). What may follow it
    /// is for the lane to say (the rest it keeps, and what that read saw
    /// after them): its answer keeps nothing and says more may wait.
    ///
    /// Intake only adds higher numbers and the lane closed the one before,
    /// so this is the patient's lowest unfinished event unless an operator
    /// re-queued a lower, failed one since the read: that one then runs
    /// after this one instead of before it (ARCHITECTURE.md, "Cost per
    /// event").
    pub async fn claim_prefetched(
        &self,
        event: QueuedEvent,
        fence: &Fence,
        give_up_at: Instant,
    ) -> Result<Option<NextEvent>, StoreError> {
        if event.parked || event.data_left_out {
            // Never kept: a parked one's claim would be refused and read as
            // out of time; one read without its payload must be read whole.
            return Ok(None);
        }
        self.claim_read(event, After::unknown(), fence, give_up_at)
            .await
    }

    /// Claims `event` at the revision read; `None` when it changed since.
    async fn claim_read(
        &self,
        mut event: QueuedEvent,
        after: After,
        fence: &Fence,
        give_up_at: Instant,
    ) -> Result<Option<NextEvent>, StoreError> {
        if event.epoch > fence.epoch {
            return Ok(Some(NextEvent::Fenced));
        }
        // Nothing changed between the read and the claim (same revision),
        // or the claim found applied is the one made on that revision: what
        // the read said about a recorded outcome still holds.
        let recorded = event.result.is_some();
        let (token, epoch) =
            if let Some(applied) = self.claims_in_doubt.applied(&event, fence.epoch) {
                // An earlier claim of ours, under this lease, whose fate was
                // unknown when its lane gave up on it applied after all: the
                // event as read is under it, its attempt counted.
                (applied.token, applied.epoch)
            } else {
                let token = uuid::Uuid::new_v4().simple().to_string();
                let at = DateTime::now();
                let claim = claim_update(&event.id, fence, &token, at, event.rev);
                match self
                    .settle_claim(&event, claim, &token, fence.epoch, give_up_at)
                    .await?
                {
                    ClaimFate::Ours => {}
                    ClaimFate::Changed => return Ok(None),
                    ClaimFate::OutOfTime => return Ok(Some(NextEvent::Expired)),
                }
                self.claims_in_doubt.forget(&event.id);
                if !recorded {
                    event.attempts += 1;
                }
                event.rev += 1;
                event.epoch = fence.epoch;
                event.claim = Some(super::documents::Claim {
                    token: token.clone(),
                    owner: fence.owner.to_string(),
                    at,
                });
                (token, fence.epoch)
            };
        let claimed = Box::new(Claimed {
            event,
            token,
            epoch,
            more_waiting: after.more,
            ahead: after.kept,
        });
        Ok(Some(if recorded {
            NextEvent::Recorded(claimed)
        } else {
            NextEvent::Claimed(claimed)
        }))
    }

    /// Sends the claim until its fate is certain. Once one copy's answer is
    /// lost, every later error leaves the fate unknown, even one that says
    /// its own copy did not apply (a refused command, no server selectable):
    /// the lost copy may have, so the same claim goes again, and a lane that
    /// read the queue afresh instead would claim the event a second time.
    async fn settle_claim(
        &self,
        event: &QueuedEvent,
        claim: Guarded,
        token: &str,
        epoch: i64,
        give_up_at: Instant,
    ) -> Result<ClaimFate, StoreError> {
        let mut in_doubt = false;
        loop {
            match self.event_updates.update_guarded(&claim).await {
                Ok(Updated::Modified) => return Ok(ClaimFate::Ours),
                // Refused now (or possibly, in a batch where some statement
                // changed nothing), so no copy of it can apply any more (the
                // revision moved on, or the database's clock passed our
                // bound): the event tells whether this or an earlier copy applied.
                Ok(Updated::Unknown | Updated::Duplicate) => {
                    return self.claim_read_back(event, token, epoch, give_up_at).await;
                }
                Err(error) if in_doubt || error.is_ambiguous() => {
                    if Instant::now() >= give_up_at {
                        self.claims_in_doubt
                            .remember(&event.id, InDoubt::of(event, token, epoch));
                        return Err(error);
                    }
                    in_doubt = true;
                    tokio::time::sleep(CLAIM_RETRY_PAUSE).await;
                }
                // Never sent, or refused unapplied, and no copy before it.
                Err(error) => return Err(error),
            }
        }
    }

    async fn claim_read_back(
        &self,
        event: &QueuedEvent,
        token: &str,
        epoch: i64,
        give_up_at: Instant,
    ) -> Result<ClaimFate, StoreError> {
        loop {
            match self.find_event(&event.id).await {
                Ok(Some(now)) if now.claim.as_ref().is_some_and(|c| c.token == token) => {
                    return Ok(ClaimFate::Ours);
                }
                Ok(Some(now)) if now.rev == event.rev => {
                    // Unchanged, yet refused: only the time bound can say no.
                    return Ok(ClaimFate::OutOfTime);
                }
                Ok(_) => return Ok(ClaimFate::Changed),
                Err(error) if Instant::now() >= give_up_at => {
                    self.claims_in_doubt
                        .remember(&event.id, InDoubt::of(event, token, epoch));
                    return Err(error);
                }
                Err(_) => tokio::time::sleep(CLAIM_RETRY_PAUSE).await,
            }
        }
    }

    /// Records the attempt's outcome on the event (before `processed_events`
    /// is written, so that a crash in between is finished from here).
    pub async fn record(
        &self,
        claimed: &Claimed,
        fence: &Fence,
        result: &ProcessingResult,
        processed_at: DateTime,
        duration_ms: i64,
    ) -> Result<Applied, StoreError> {
        let mut set = recorded(result, processed_at, duration_ms)?;
        set.insert("updatedAt", "$$NOW");
        self.fenced_update(claimed, fence, FencedWrite::Record, set, &[])
            .await
    }

    /// After a failed attempt that will be retried: remembers the error and
    /// gives the claim up, so the next claim counts the next attempt.
    pub async fn release_for_retry(
        &self,
        claimed: &Claimed,
        fence: &Fence,
        error: &str,
    ) -> Result<Applied, StoreError> {
        self.fenced_update(
            claimed,
            fence,
            FencedWrite::Release,
            doc! { "lastError": literal(error), "updatedAt": "$$NOW" },
            &["claim"],
        )
        .await
    }

    /// Puts an interrupted event back without counting the attempt (unless
    /// its outcome is already recorded: then there is nothing to hand back).
    pub async fn hand_back(&self, claimed: &Claimed, fence: &Fence) -> Result<Applied, StoreError> {
        if claimed.event.result.is_some() {
            return Ok(Applied::Yes);
        }
        self.fenced_update(
            claimed,
            fence,
            FencedWrite::HandBack,
            doc! { "attempts": { "$add": ["$attempts", -1] }, "updatedAt": "$$NOW" },
            &["claim"],
        )
        .await
    }

    /// Writes the event's one `processed_events` document of this run:
    /// inserted for the first run, replaced for a later run (an operator's
    /// retry or skip), and left alone if this run's document is already
    /// there, which is then read back: the first one stored is the run's.
    /// After a record its content is a function of that record, so any
    /// instance may write it, any number of times; a success's is written
    /// before any record (the close carries the result), and one written by
    /// an earlier claim of the run that stopped before its close (a crash,
    /// a pause past its lease) may be there first: that delivery succeeded.
    ///
    /// A first run's document is inserted, group-committed with other
    /// lanes' (one journal flush for many, where updates are committed one
    /// by one on some servers); a unique-index refusal means it is there
    /// already, since any document of the event is of this run or a later.
    pub async fn write_outcome(&self, outcome: &ProcessedEvent) -> Result<Stored, StoreError> {
        if outcome.run == 1 {
            // About its size, for the batch's byte bound.
            let bytes = mongodb::bson::to_vec(&outcome.data).map_or(1024, |data| data.len()) + 512;
            return match self
                .outcome_inserts
                .insert(outcome.clone(), bytes, None)
                .await?
            {
                Insert::Stored => Ok(Stored::Written),
                Insert::Duplicate(_) => self.stored_outcome(outcome).await,
            };
        }
        let mut set = mongodb::bson::to_document(outcome)?;
        set.remove("createdAt");
        set.remove("history");
        let statement = Statement {
            filter: doc! { "eventId": &outcome.event_id, "run": { "$lt": outcome.run } },
            update: Bson::Document(
                doc! { "$set": set, "$setOnInsert": { "createdAt": outcome.created_at } },
            ),
            upsert: true,
        };
        // Modified: written. Duplicate: this run's (or a later run's)
        // outcome is already there. Unknown: written, or already there.
        match self.outcome_updates.update(&statement).await? {
            Updated::Modified => Ok(Stored::Written),
            Updated::Duplicate | Updated::Unknown => self.stored_outcome(outcome).await,
        }
    }

    /// The outcome document already there when `outcome` could not be
    /// written (or may not have been): this run's, or a later run's.
    async fn stored_outcome(&self, outcome: &ProcessedEvent) -> Result<Stored, StoreError> {
        match self.find_processed(&outcome.event_id).await? {
            Some(found) if found.run == outcome.run => Ok(Stored::Found(Box::new(found))),
            Some(found) if found.run > outcome.run => Ok(Stored::LaterRun),
            // Refused, yet gone (retention) or still an earlier run's: ours
            // is not there. The caller writes it again.
            _ => Err(StoreError::Contention {
                operation: "writing an outcome document",
                attempts: 1,
            }),
        }
    }

    /// The `processed_events` document of the event's current run, if one
    /// is stored: a claim that is not the run's first looks for it before
    /// running the work, since an earlier claim may have stored a success's
    /// outcome and stopped before its close.
    pub async fn outcome_of_run(
        &self,
        event: &QueuedEvent,
    ) -> Result<Option<ProcessedEvent>, StoreError> {
        Ok(self
            .find_processed(&event.event_id)
            .await?
            .filter(|found| found.run == event.run))
    }

    /// Gives the event its final state for this run, as `close` says.
    pub async fn close(
        &self,
        claimed: &Claimed,
        fence: &Fence,
        close: Close<'_>,
    ) -> Result<Applied, StoreError> {
        let mut set = match close.end {
            RunEnd::Processed => doc! { "status": literal(EventStatus::Processed.as_str()) },
            RunEnd::Failed => doc! { "status": literal(EventStatus::Failed.as_str()) },
            RunEnd::Skipped => doc! { "status": literal(EventStatus::Skipped.as_str()) },
            // Stays queued, so the patient's later events stay behind it.
            RunEnd::Parked => doc! { "parked": true },
        };
        if let Some(outcome) = close.result {
            set.extend(recorded(
                &outcome.result,
                outcome.processed_at,
                outcome.processing_duration_ms,
            )?);
        }
        if close.uncount {
            set.insert("attempts", doc! { "$add": ["$attempts", -1] });
        }
        set.insert("finishedAt", "$$NOW");
        set.insert("updatedAt", "$$NOW");
        self.fenced_update(claimed, fence, FencedWrite::Close, set, &[])
            .await
    }

    /// Applies `set` (field: expression) and removes `unset`, in one update
    /// pipeline whose every change is conditional on the event still being
    /// queued under the claim's epoch and token, and on the database's clock
    /// being within our session's bound: the database decides, on the
    /// document, at the moment of the write. The filter is the primary key
    /// alone. A write that changed nothing is read back: it was ours if the
    /// event names this very write as its last fenced writer (a retry of a
    /// write whose reply was lost).
    async fn fenced_update(
        &self,
        claimed: &Claimed,
        fence: &Fence,
        write: FencedWrite,
        set: Document,
        unset: &[&str],
    ) -> Result<Applied, StoreError> {
        let label = format!("{}/{}", claimed.token, write.as_str());
        let ours = doc! { "$and": [
            { "$eq": ["$status", EventStatus::Queued.as_str()] },
            { "$eq": ["$epoch", claimed.epoch] },
            { "$eq": ["$claim.token", literal(claimed.token.as_str())] },
        ] };
        let condition = doc! { "$and": [ours, within(fence.until)] };
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
            doc! { "$cond": ["$_fenced", literal(label.as_str()), "$fencedBy"] },
        );
        changes.insert("rev", next_rev("$_fenced"));
        let operation = write.operation();
        let filter = shapes::fenced(&claimed.event.id).filter;
        let guarded = Guarded {
            id: claimed.event.id.clone(),
            flag: "_fenced",
            condition,
            changes,
        };
        if self.event_updates.update_guarded(&guarded).await? == Updated::Modified {
            return Ok(Applied::Yes);
        }
        let now = self
            .queued
            .find_one(filter)
            .bounded(operation, self.op_timeout)
            .await?;
        Ok(match now {
            Some(event) if event.fenced_by.as_deref() == Some(label.as_str()) => Applied::Yes,
            Some(event)
                if event.status == EventStatus::Queued
                    && event.epoch == claimed.epoch
                    && event
                        .claim
                        .as_ref()
                        .is_some_and(|c| c.token == claimed.token) =>
            {
                Applied::Expired
            }
            _ => Applied::Fenced,
        })
    }
}

impl FencedWrite {
    fn operation(self) -> &'static str {
        match self {
            Self::Record => "recording an outcome",
            Self::Release => "releasing an event for a retry",
            Self::HandBack => "handing an event back",
            Self::Close => "closing an event",
        }
    }
}

/// What became of a claim once its fate is certain.
enum ClaimFate {
    Ours,
    /// The event changed since it was read: read it again.
    Changed,
    /// The database's clock is past our session's bound.
    OutOfTime,
}

/// The fields of a result on the event (a record, or a close carrying it).
fn recorded(
    result: &ProcessingResult,
    processed_at: DateTime,
    duration_ms: i64,
) -> Result<Document, StoreError> {
    let mut set = doc! {
        "result": literal(mongodb::bson::to_bson(result)?),
        "processedAt": literal(processed_at),
        "processingDurationMs": literal(duration_ms),
    };
    if let Some(error) = &result.error {
        set.insert("lastError", literal(error.as_str()));
    }
    Ok(set)
}

/// What [`Store::write_outcome`] found.
#[derive(Debug)]
pub enum Stored {
    /// Ours is the run's document.
    Written,
    /// The run's document was there already (an earlier claim of the run
    /// stored it, or ours did and its answer was lost): the close writes
    /// its result on the event, so that the two agree.
    Found(Box<ProcessedEvent>),
    /// A later run's document is there: an operator re-ran the event, so
    /// this run is over.
    LaterRun,
}

/// How [`Store::close`] ends a run.
#[derive(Debug, Clone, Copy)]
pub struct Close<'a> {
    pub end: RunEnd,
    /// The result to write on the event with the close (its outcome
    /// document's); `None` when the event's record is that already.
    pub result: Option<&'a ProcessedEvent>,
    /// Uncount the claim's attempt: it found the run's outcome stored and
    /// closes without running the work.
    pub uncount: bool,
}

/// How a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    Processed,
    /// Failed for good; the patient goes on (`ON_FAILURE=continue`).
    Failed,
    /// Failed for good; the patient waits for an operator (`ON_FAILURE=park`).
    Parked,
    /// An operator skipped it; the patient goes on.
    Skipped,
}

impl RunEnd {
    /// How a run with `result` ends under `park` (`ON_FAILURE=park`).
    pub fn of(result: &ProcessingResult, park: bool) -> Self {
        match result.status.as_str() {
            ProcessingResult::SUCCESS => Self::Processed,
            ProcessingResult::SKIPPED => Self::Skipped,
            _ if park => Self::Parked,
            _ => Self::Failed,
        }
    }
}

/// A value an update pipeline must take as is (a string starting with `$`
/// would otherwise be read as a field path).
fn literal(value: impl Into<Bson>) -> Document {
    doc! { "$literal": value.into() }
}

/// `$$NOW` before `until`, compared as milliseconds (one of our servers
/// compares stored dates with `$$NOW` wrongly, but never numbers).
fn within(until: DateTime) -> Document {
    doc! { "$lt": [{ "$toLong": "$$NOW" }, until.timestamp_millis()] }
}

/// The revision after a write that applies when `applies` (a pipeline
/// boolean) holds; documents written before revisions existed count from 0.
fn next_rev(applies: &str) -> Document {
    let rev = doc! { "$ifNull": ["$rev", 0i64] };
    // A refused write leaves even a missing revision missing: adding one
    // would count as a modified document, read as "applied".
    doc! { "$cond": [applies, { "$add": [rev, 1i64] }, "$rev"] }
}

/// The claim as an update pipeline: the conditions are evaluated by the
/// database on the document, at the moment of the write.
fn claim_update(event_id: &str, fence: &Fence, token: &str, at: DateTime, rev: i64) -> Guarded {
    let claimable = doc! {
        "$and": [
            { "$eq": ["$status", EventStatus::Queued.as_str()] },
            { "$ne": ["$parked", true] },
            { "$lte": ["$epoch", fence.epoch] },
            { "$eq": [{ "$ifNull": ["$rev", 0i64] }, rev] },
            within(fence.until),
        ]
    };
    let unrecorded = doc! { "$eq": [{ "$type": "$result" }, "missing"] };
    Guarded {
        id: event_id.to_owned(),
        flag: "_claimable",
        condition: claimable,
        changes: doc! {
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
            "rev": next_rev("$_claimable"),
        },
    }
}

/// `$inc` of the revision, for the plain (non-pipeline) updates of other
/// writers (operators, retention, intake): every write to an event moves it.
pub(crate) fn bump_rev() -> Document {
    doc! { "rev": 1i64 }
}
