//! What operators do to events (`/admin/...` on ingest): list them by state,
//! re-run a failed or parked one, skip a parked one, acknowledge a failure,
//! and read the figures. Every action is a conditional single-document write
//! (it applies only to an event in the state the action is for) and leaves an
//! entry in `audit_log`: who, when, what, why, before and after.
//!
//! A retry and a skip start a new run of the event; a skip's run comes with
//! its outcome already recorded, so the owner of the bucket does not run the
//! work: its lane writes the outcome document and closes the event, exactly
//! as it finishes any recorded run (a crash in between is finished by
//! whoever claims the event next).

use mongodb::bson::{Bson, DateTime, Document, doc, oid::ObjectId};
use serde::{Deserialize, Serialize};

use super::Store;
use super::deadline::{Bounded, BoundedAll};
use super::documents::{EventStatus, ProcessingResult, QueuedEvent};
use super::error::StoreError;

pub const AUDIT_LOG: &str = "audit_log";

/// The states an operator can list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListedState {
    Queued,
    Processing,
    Parked,
    Failed,
}

impl ListedState {
    /// The stored status, and what tells this state apart among those events.
    fn filter(self) -> (EventStatus, Document) {
        match self {
            Self::Queued => (
                EventStatus::Queued,
                doc! { "parked": { "$ne": true }, "claim": { "$exists": false } },
            ),
            Self::Processing => (
                EventStatus::Queued,
                doc! { "parked": { "$ne": true }, "claim": { "$exists": true } },
            ),
            Self::Parked => (EventStatus::Queued, doc! { "parked": true }),
            Self::Failed => (EventStatus::Failed, doc! {}),
        }
    }
}

/// Where a listing stopped: the index position of the last event returned
/// (the `{status, bucket, patientId, seq}` order), opaque to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListCursor {
    pub bucket: i32,
    pub patient: String,
    pub seq: i64,
}

/// What to list.
#[derive(Debug, Clone)]
pub struct ListQuery {
    pub state: ListedState,
    pub patient: Option<String>,
    pub client: Option<String>,
    pub after: Option<ListCursor>,
    pub limit: i64,
}

/// The action an operator takes on an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Retry,
    Skip,
    Acknowledge,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retry => "retry",
            Self::Skip => "skip",
            Self::Acknowledge => "acknowledge",
        }
    }
}

/// What became of an action.
#[derive(Debug)]
pub enum ActionOutcome {
    Done(Box<QueuedEvent>),
    NotFound,
    /// The event is not in a state this action applies to.
    WrongState(Box<QueuedEvent>),
    /// Retention removed the event's payload: there is nothing to run again.
    Pruned(Box<QueuedEvent>),
}

/// Per-client figures for `/admin/stats`.
#[derive(Debug, Default, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientStats {
    pub queued: u64,
    pub processing: u64,
    pub parked_events: u64,
    pub parked_patients: u64,
    pub failed: u64,
    pub failed_unacknowledged: u64,
    /// When the oldest unfinished event was accepted.
    #[schema(format = DateTime)]
    pub oldest_unfinished: Option<String>,
}

impl Store {
    /// Events in `query.state`, in index order, from just after the cursor:
    /// three index range walks (the rest of the cursor's patient, the rest of
    /// its bucket, the later buckets), so no server sorts in memory beyond
    /// what it walks.
    pub async fn list_events(&self, query: &ListQuery) -> Result<Vec<QueuedEvent>, StoreError> {
        let (status, extra) = query.state.filter();
        let mut base = doc! { "status": status.as_str() };
        base.extend(extra);
        if let Some(client) = &query.client {
            base.insert("client", client);
        }
        let patient_bucket = query.patient.as_deref().map(crate::bucket::of);
        let ranges: Vec<(Document, Document)> = match (&query.after, &query.patient) {
            (after, Some(patient)) => {
                let mut filter = base.clone();
                filter.insert("bucket", patient_bucket.unwrap_or_default());
                filter.insert("patientId", patient);
                if let Some(after) = after {
                    filter.insert("seq", doc! { "$gt": after.seq });
                }
                vec![(filter, doc! { "seq": 1 })]
            }
            (Some(after), None) => {
                let mut same_patient = base.clone();
                same_patient.insert("bucket", after.bucket);
                same_patient.insert("patientId", &after.patient);
                same_patient.insert("seq", doc! { "$gt": after.seq });
                let mut same_bucket = base.clone();
                same_bucket.insert("bucket", after.bucket);
                same_bucket.insert("patientId", doc! { "$gt": &after.patient });
                let mut later = base.clone();
                later.insert("bucket", doc! { "$gt": after.bucket });
                vec![
                    (same_patient, doc! { "seq": 1 }),
                    (same_bucket, doc! { "patientId": 1, "seq": 1 }),
                    (later, doc! { "bucket": 1, "patientId": 1, "seq": 1 }),
                ]
            }
            (None, None) => vec![(base, doc! { "bucket": 1, "patientId": 1, "seq": 1 })],
        };
        let mut found = Vec::new();
        for (filter, sort) in ranges {
            let missing = query.limit - found.len() as i64;
            if missing <= 0 {
                break;
            }
            let operation = "listing events";
            let page: Vec<QueuedEvent> = self
                .queued
                .find(filter)
                .sort(sort)
                .limit(missing)
                .projection(doc! { "data": 0 })
                .max_time(self.op_timeout)
                .all(operation, self.op_timeout)
                .await?;
            found.extend(page);
        }
        Ok(found)
    }

    /// Figures per client: backlog, work in hand, parked, failed, oldest.
    pub async fn stats(&self) -> Result<Vec<(String, ClientStats)>, StoreError> {
        let queued = self
            .aggregate(
                doc! { "status": EventStatus::Queued.as_str() },
                doc! {
                    "_id": "$client",
                    "events": { "$sum": 1 },
                    "parked": { "$sum": { "$cond": [{ "$eq": ["$parked", true] }, 1, 0] } },
                    "claimed": { "$sum": { "$cond": [
                        { "$and": [
                            { "$ne": ["$parked", true] },
                            { "$ne": [{ "$type": "$claim" }, "missing"] },
                        ] }, 1, 0,
                    ] } },
                    "oldest": { "$min": "$acceptedAt" },
                },
            )
            .await?;
        let parked_patients = self
            .aggregate(
                doc! { "status": EventStatus::Queued.as_str(), "parked": true },
                doc! { "_id": { "client": "$client", "patient": "$patientId" } },
            )
            .await?;
        let failed = self
            .aggregate(
                doc! { "status": EventStatus::Failed.as_str() },
                doc! {
                    "_id": "$client",
                    "events": { "$sum": 1 },
                    "unacknowledged": { "$sum": { "$cond": [
                        { "$eq": [{ "$type": "$acknowledgedAt" }, "missing"] }, 1, 0,
                    ] } },
                },
            )
            .await?;
        let mut stats: std::collections::BTreeMap<String, ClientStats> = Default::default();
        let count = |d: &Document, field: &str| -> u64 {
            match d.get(field) {
                Some(Bson::Int32(n)) => *n as u64,
                Some(Bson::Int64(n)) => *n as u64,
                Some(Bson::Double(n)) => *n as u64,
                _ => 0,
            }
        };
        for d in &queued {
            let entry = stats
                .entry(d.get_str("_id").unwrap_or("").to_owned())
                .or_default();
            entry.parked_events = count(d, "parked");
            entry.processing = count(d, "claimed");
            entry.queued = count(d, "events") - entry.parked_events - entry.processing;
            entry.oldest_unfinished = d
                .get_datetime("oldest")
                .ok()
                .and_then(|at| at.try_to_rfc3339_string().ok());
        }
        for d in &parked_patients {
            let client = d
                .get_document("_id")
                .ok()
                .and_then(|id| id.get_str("client").ok())
                .unwrap_or("");
            stats.entry(client.to_owned()).or_default().parked_patients += 1;
        }
        for d in &failed {
            let entry = stats
                .entry(d.get_str("_id").unwrap_or("").to_owned())
                .or_default();
            entry.failed = count(d, "events");
            entry.failed_unacknowledged = count(d, "unacknowledged");
        }
        Ok(stats.into_iter().collect())
    }

    async fn aggregate(
        &self,
        matching: Document,
        group: Document,
    ) -> Result<Vec<Document>, StoreError> {
        let operation = "aggregating figures";
        self.queued
            .clone_with_type::<Document>()
            .aggregate([doc! { "$match": matching }, doc! { "$group": group }])
            .max_time(self.op_timeout * 5)
            .all(operation, self.op_timeout * 5)
            .await
    }

    /// Applies an operator's action to an event and audits it.
    pub async fn act(
        &self,
        event_id: &str,
        action: Action,
        operator: &str,
        reason: &str,
    ) -> Result<ActionOutcome, StoreError> {
        let Some(mut before) = self.find_event(event_id).await? else {
            return Ok(ActionOutcome::NotFound);
        };
        // An earlier action's entry still in the outbox goes first, so that
        // the log keeps the actions' order and this one has the slot.
        if let Some(entry) = before.pending_audit.take() {
            self.move_audit_entry(event_id, &entry).await?;
            before = match self.find_event(event_id).await? {
                Some(event) => event,
                None => return Ok(ActionOutcome::NotFound),
            };
        }
        if action == Action::Retry && before.pruned {
            return Ok(ActionOutcome::Pruned(Box::new(before)));
        }
        let now = DateTime::now();
        let failed = EventStatus::Failed.as_str();
        let queued = EventStatus::Queued.as_str();
        // Everything of the run that ends here, removed by a retry or a skip.
        let run_fields = doc! {
            "parked": "", "result": "", "processedAt": "", "processingDurationMs": "",
            "finishedAt": "", "claim": "", "fencedBy": "", "acknowledgedAt": "",
            "acknowledgedBy": "",
        };
        let (condition, update) = match action {
            Action::Retry => (
                doc! { "run": before.run, "pruned": { "$ne": true }, "$or": [
                    { "status": failed },
                    { "status": queued, "parked": true },
                ] },
                doc! {
                    "$set": { "status": queued, "attempts": 0, "updatedAt": now },
                    "$inc": { "run": 1, "rev": 1i64 },
                    "$unset": run_fields,
                },
            ),
            Action::Skip => {
                let mut unset = run_fields;
                for recorded in ["result", "processedAt", "processingDurationMs"] {
                    unset.remove(recorded);
                }
                (
                    doc! { "run": before.run, "status": queued, "parked": true },
                    doc! {
                        "$set": {
                            "result": mongodb::bson::to_bson(&ProcessingResult::skipped(reason))?,
                            "processedAt": now, "processingDurationMs": 0i64,
                            "attempts": 0, "updatedAt": now,
                        },
                        "$inc": { "run": 1, "rev": 1i64 },
                        "$unset": unset,
                    },
                )
            }
            Action::Acknowledge => (
                doc! { "status": failed, "acknowledgedAt": { "$exists": false } },
                doc! {
                    "$set": { "acknowledgedAt": now, "acknowledgedBy": operator, "updatedAt": now },
                    "$inc": super::lifecycle::bump_rev(),
                },
            ),
        };
        if matches!(action, Action::Retry | Action::Skip) {
            // The outcome of the run that ends here goes into its history
            // first, once per run, so the next run's outcome can replace it.
            self.archive_outcome(&before).await?;
        }
        // The audit entry rides in the action's own write (see
        // `QueuedEvent::pending_audit`): no action lands unaudited.
        let entry = audit_entry(action, operator, reason, &before);
        let mut update = update;
        match update.get_document_mut("$set") {
            Ok(set) => {
                set.insert("pendingAudit", entry.clone());
            }
            Err(_) => {
                update.insert("$set", doc! { "pendingAudit": entry.clone() });
            }
        }
        let mut filter = doc! { "_id": event_id, "pendingAudit": { "$exists": false } };
        filter.extend(condition);
        let result = self
            .queued
            .update_one(filter, update)
            .bounded("applying an operator action", self.op_timeout)
            .await?;
        if result.matched_count == 0 {
            let now = self.find_event(event_id).await?;
            return Ok(match now {
                Some(event) if action == Action::Retry && event.pruned => {
                    ActionOutcome::Pruned(Box::new(event))
                }
                Some(event) => ActionOutcome::WrongState(Box::new(event)),
                None => ActionOutcome::NotFound,
            });
        }
        // Done: the entry is durable with the action. If moving it fails,
        // the next read of the log or action on the event moves it.
        if let Err(e) = self.move_audit_entry(event_id, &entry).await {
            tracing::warn!(error = %e, "audit entry left in its event's outbox; moved on the next read of the log");
        }
        let after = self
            .find_event(event_id)
            .await?
            .ok_or(StoreError::Contention {
                operation: "reading an event after an operator action",
                attempts: 1,
            })?;
        Ok(ActionOutcome::Done(Box::new(after)))
    }

    /// Moves an action's audit entry from its event to `audit_log`: an
    /// insert under the entry's own id (so a second move of the same entry
    /// is a duplicate, not a second line), then its removal from the event.
    async fn move_audit_entry(&self, event_id: &str, entry: &Document) -> Result<(), StoreError> {
        match self
            .durable_collection::<Document>(AUDIT_LOG)
            .insert_one(entry.clone())
            .bounded("writing the audit log", self.op_timeout)
            .await
        {
            Ok(_) => {}
            Err(StoreError::Mongo { source, .. }) if super::error::is_duplicate_key(&source) => {}
            Err(e) => return Err(e),
        }
        let id = entry.get("_id").cloned().unwrap_or(Bson::Null);
        self.queued
            .update_one(
                doc! { "_id": event_id, "pendingAudit._id": id },
                doc! { "$unset": { "pendingAudit": "" }, "$inc": super::lifecycle::bump_rev() },
            )
            .bounded("clearing an audit entry moved to the log", self.op_timeout)
            .await
            .map(|_| ())
    }

    /// Records that an operator read patient data (`route`, the patient or
    /// event it named, what it asked for) before the data is sent: a read
    /// that cannot be audited is not answered.
    pub async fn audit_read(&self, read: &AuditedRead<'_>) -> Result<(), StoreError> {
        let mut entry = doc! {
            "_id": ObjectId::new(),
            "at": DateTime::now(),
            "who": read.operator,
            "action": "read",
            "route": read.route,
        };
        if let Some(patient) = read.patient {
            entry.insert("patientId", patient);
        }
        if let Some(event) = read.event {
            entry.insert("eventId", event);
        }
        if !read.query.is_empty() {
            entry.insert("query", read.query.clone());
        }
        self.durable_collection::<Document>(AUDIT_LOG)
            .insert_one(entry)
            .bounded("auditing an operator's read", self.op_timeout)
            .await
            .map(|_| ())
    }

    /// Moves every audit entry still in an event's outbox (left by a crash
    /// between an action and the move), so that the log read next is whole.
    pub async fn move_pending_audit_entries(&self) -> Result<(), StoreError> {
        loop {
            let pending: Vec<QueuedEvent> = self
                .find_all(
                    &self.queued,
                    super::shapes::pending_audits(PENDING_PAGE),
                    "finding audit entries to move",
                )
                .await?;
            for event in &pending {
                if let Some(entry) = &event.pending_audit {
                    self.move_audit_entry(&event.event_id, entry).await?;
                }
            }
            if (pending.len() as i64) < PENDING_PAGE {
                return Ok(());
            }
        }
    }

    async fn archive_outcome(&self, event: &QueuedEvent) -> Result<(), StoreError> {
        self.processed.clone_with_type::<Document>()
            .update_one(
                doc! { "eventId": &event.event_id, "run": event.run, "archivedRuns": { "$ne": event.run } },
                vec![doc! { "$set": {
                    "history": { "$concatArrays": [
                        { "$ifNull": ["$history", []] },
                        [{
                            "run": "$run",
                            "result": "$result",
                            "attempts": "$attempts",
                            "processedAt": "$processedAt",
                            "processingDurationMs": "$processingDurationMs",
                        }],
                    ] },
                    "archivedRuns": { "$concatArrays": [
                        { "$ifNull": ["$archivedRuns", []] }, [event.run],
                    ] },
                } }],
            )
            .bounded("keeping an outcome in its history", self.op_timeout)
            .await
            .map(|_| ())
    }

    /// Audit entries, newest first, before `before` (an entry id) if given.
    pub async fn audit_log(
        &self,
        before: Option<ObjectId>,
        limit: i64,
    ) -> Result<Vec<Document>, StoreError> {
        let filter = match before {
            Some(id) => doc! { "_id": { "$lt": id } },
            None => doc! {},
        };
        self.move_pending_audit_entries().await?;
        let operation = "reading the audit log";
        self.durable_collection::<Document>(AUDIT_LOG)
            .find(filter)
            .sort(doc! { "_id": -1 })
            .limit(limit)
            .max_time(self.op_timeout)
            .all(operation, self.op_timeout)
            .await
    }
}

const PENDING_PAGE: i64 = 100;

/// An operator's read of patient data, as the audit log records it.
pub struct AuditedRead<'a> {
    pub operator: &'a str,
    /// The route template, e.g. `/patients/{patientId}/events`.
    pub route: &'static str,
    pub patient: Option<&'a str>,
    pub event: Option<&'a str>,
    /// The filters it gave (status, client, control id...), as given.
    pub query: Document,
}

/// The audit entry of `action` on `before`: who, when, what, why, and the
/// event's state before and after (the after state is what the action's
/// update sets, which its condition guarantees it starts from).
fn audit_entry(action: Action, operator: &str, reason: &str, before: &QueuedEvent) -> Document {
    let state = |status: &str, run: i32, attempts: i32| {
        doc! { "status": status, "run": run, "attempts": attempts }
    };
    let after = match action {
        Action::Retry => state("queued", before.run + 1, 0),
        Action::Skip => state("skipped", before.run + 1, 0),
        Action::Acknowledge => state(before.api_status().as_str(), before.run, before.attempts),
    };
    doc! {
        "_id": ObjectId::new(),
        "at": DateTime::now(),
        "who": operator,
        "action": action.as_str(),
        "eventId": &before.event_id,
        "patientId": &before.patient_id,
        "client": &before.client,
        "why": reason,
        "before": state(before.api_status().as_str(), before.run, before.attempts),
        "after": after,
    }
}
