//! The hot queries, as data: each is built here once and used both by the
//! store and by the plan test (`tests/e2e/query_plans.rs`), which runs `explain`
//! on every one against the test server and fails on a collection scan or on
//! an in-memory sort over more than one patient's documents.
//!
//! Shapes are chosen so that every server we run plans them with an index:
//! equality on `bucket` (and `patientId`) first, one status or a short `$in`
//! of statuses, and sorts only within one patient or in an index's order.

use mongodb::bson::{DateTime, Document, doc};

use super::documents::EventStatus;
use super::messages::ControlIdQuery;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collection {
    Queued,
    Processed,
}

impl Collection {
    pub fn name(self) -> &'static str {
        match self {
            Self::Queued => super::QUEUED_EVENTS,
            Self::Processed => super::PROCESSED_EVENTS,
        }
    }
}

/// How much a server may have to sort in memory for this query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortScope {
    /// No sort at all.
    None,
    /// A sort over one patient's documents (bounded by that patient).
    OnePatient,
    /// The order of the hinted index, read in that order by mongo:7 and the
    /// compiled SecantusDB; the Python server re-sorts the range it read.
    IndexOrder,
}

#[derive(Debug, Clone)]
pub struct Shape {
    pub name: &'static str,
    pub collection: Collection,
    pub filter: Document,
    pub sort: Option<Document>,
    pub projection: Option<Document>,
    pub limit: Option<i64>,
    /// The index the shape is designed for, when a server needs telling.
    pub hint: Option<&'static str>,
    pub sort_scope: SortScope,
    /// Payloads (`data`) above this many bytes are left out of what the
    /// shape returns, each such document marked `_dataLeftOut`: it then runs
    /// as an aggregation ([`Shape::pipeline`]).
    pub payload_up_to: Option<i32>,
}

impl Shape {
    fn new(name: &'static str, collection: Collection, filter: Document) -> Self {
        Self {
            name,
            collection,
            filter,
            sort: None,
            projection: None,
            limit: None,
            hint: None,
            sort_scope: SortScope::None,
            payload_up_to: None,
        }
    }

    fn sorted_within_patient(mut self, sort: Document) -> Self {
        self.sort = Some(sort);
        self.sort_scope = SortScope::OnePatient;
        self
    }

    /// A sort the order of index `index` gives, with that index hinted.
    fn sorted_by_index(mut self, sort: Document, index: &'static str) -> Self {
        self.sort = Some(sort);
        self.hint = Some(index);
        self.sort_scope = SortScope::IndexOrder;
        self
    }

    fn limit(mut self, limit: i64) -> Self {
        self.limit = Some(limit);
        self
    }

    fn projection(mut self, projection: Document) -> Self {
        self.projection = Some(projection);
        self
    }

    fn payload_up_to(mut self, bytes: i32) -> Self {
        self.payload_up_to = Some(bytes);
        self
    }

    /// The shape as an aggregation, when it leaves large payloads out: the
    /// match, sort and limit every server plans as the same `find` would
    /// (an index walk that stops at the limit), then the payload's size
    /// decides, per document, whether the payload is sent.
    pub fn pipeline(&self) -> Option<Vec<Document>> {
        let bytes = self.payload_up_to?;
        let mut stages = vec![doc! { "$match": self.filter.clone() }];
        if let Some(sort) = &self.sort {
            stages.push(doc! { "$sort": sort.clone() });
        }
        if let Some(limit) = self.limit {
            stages.push(doc! { "$limit": limit });
        }
        // `$bsonSize` fails on anything but a document or null: measured
        // only when `data` is a document, so no stored value fails the read.
        let size = doc! { "$cond": [
            { "$eq": [{ "$type": "$data" }, "object"] }, { "$bsonSize": "$data" }, 0,
        ] };
        let large = doc! { "$gt": [size, bytes] };
        stages.push(doc! { "$set": {
            "data": { "$cond": [large.clone(), "$$REMOVE", "$data"] },
            "_dataLeftOut": large,
        } });
        if let Some(projection) = &self.projection {
            stages.push(doc! { "$project": projection.clone() });
        }
        Some(stages)
    }
}

/// The patient's highest sequence number (intake, when its guess is stale).
pub fn last_seq(bucket: i32, patient: &str) -> Shape {
    Shape::new(
        "last sequence number of a patient",
        Collection::Queued,
        doc! { "bucket": bucket, "patientId": patient },
    )
    .sorted_within_patient(doc! { "seq": -1 })
    .projection(doc! { "seq": 1, "_id": 0 })
    .limit(1)
}

/// The event holding an intake key (idempotent replay, duplicate suppression).
pub fn intake_key(bucket: i32, patient: &str, key: &str) -> Shape {
    Shape::new(
        "event by intake key",
        Collection::Queued,
        doc! { "bucket": bucket, "patientId": patient, "intakeKey": key },
    )
    .limit(1)
}

/// One event by id (status endpoint, claims, the processor's `/queue`).
pub fn event(event_id: &str) -> Shape {
    Shape::new("event by id", Collection::Queued, doc! { "_id": event_id }).limit(1)
}

/// Several events by id (settling an ambiguous batch insert).
pub fn events(event_ids: &[String]) -> Shape {
    Shape::new(
        "events by id",
        Collection::Queued,
        doc! { "_id": { "$in": event_ids } },
    )
    .projection(doc! { "_id": 1, "seq": 1 })
}

/// The patient's next events to work on: its lowest-`seq` queued event (a
/// parked one is queued too, and stops the lane) and up to
/// [`READ_AHEAD`](super::lifecycle::READ_AHEAD) - 1 after it (so the lane
/// knows whether to look again, and may claim them next without another read).
pub fn next_unfinished(bucket: i32, patient: &str) -> Shape {
    Shape::new(
        "next unfinished event of a patient",
        Collection::Queued,
        doc! {
            "status": EventStatus::Queued.as_str(),
            "bucket": bucket,
            "patientId": patient,
        },
    )
    .sorted_within_patient(doc! { "seq": 1 })
    .limit(super::lifecycle::READ_AHEAD)
    .payload_up_to(super::lifecycle::READ_AHEAD_MAX_PAYLOAD)
}

/// The sequence number of the patient's oldest unfinished event (the
/// per-client bound at intake: how many of its events can be unfinished).
pub fn oldest_unfinished(bucket: i32, patient: &str) -> Shape {
    let mut shape = next_unfinished(bucket, patient)
        .projection(doc! { "seq": 1, "_id": 0 })
        .limit(1);
    shape.payload_up_to = None;
    shape.name = "oldest unfinished event of a patient";
    shape
}

/// Who sent each of the patient's unfinished events (the per-client bound
/// counts one client's; the client stays out of the filter, so that every
/// server plans it on the status index).
pub fn unfinished_senders(bucket: i32, patient: &str) -> Shape {
    Shape::new(
        "senders of a patient's unfinished events",
        Collection::Queued,
        doc! {
            "status": EventStatus::Queued.as_str(),
            "bucket": bucket,
            "patientId": patient,
        },
    )
    .projection(doc! { "client": 1, "_id": 0 })
}

/// Everything waiting in some buckets (start-up, takeover, the backstop
/// sweep, the backlog gauges). No sort: the caller streams it.
pub fn waiting_in(buckets: &[i32]) -> Shape {
    Shape::new(
        "waiting events of owned buckets",
        Collection::Queued,
        doc! { "status": EventStatus::Queued.as_str(), "bucket": { "$in": buckets } },
    )
    .projection(doc! {
        "_id": 0, "patientId": 1, "seq": 1, "acceptedAt": 1, "claim.owner": 1, "parked": 1,
    })
}

/// The event a fenced write is about. The fence itself (epoch and claim
/// token) is checked inside the update pipeline, so the filter stays a
/// primary-key lookup on every server.
pub fn fenced(event_id: &str) -> Shape {
    Shape::new(
        "event of a fenced write",
        Collection::Queued,
        doc! { "_id": event_id },
    )
}

/// The events of fenced writes merged into one statement
/// (`store/update_batch.rs`): a bounded `$in` on the primary key.
pub fn fenced_batch(event_ids: &[String]) -> Shape {
    Shape::new(
        "events of merged fenced writes",
        Collection::Queued,
        doc! { "_id": { "$in": event_ids } },
    )
}

/// The outcome document of an event.
pub fn outcome(event_id: &str) -> Shape {
    Shape::new(
        "outcome of an event",
        Collection::Processed,
        doc! { "eventId": event_id },
    )
    .limit(1)
}

/// A patient's events after `after`, in sequence order (the timeline).
pub fn timeline(bucket: i32, patient: &str, after: i64, limit: i64) -> Shape {
    Shape::new(
        "timeline of a patient",
        Collection::Queued,
        doc! { "bucket": bucket, "patientId": patient, "seq": { "$gt": after } },
    )
    .sorted_within_patient(doc! { "seq": 1 })
    .projection(doc! { "data": 0 })
    .limit(limit)
}

/// A page of the outcome stream's replay is two ranges of the
/// `{processedAt, eventId}` index, each in index order: the rest of the
/// cursor's millisecond, then everything after it. (One `$or` of the two
/// would be a union plan some servers sort in memory or scan.) A client's
/// replay reads `{client, processedAt, eventId}` instead, so that it walks
/// its own outcomes only, not every client's.
fn outcomes(name: &'static str, mut filter: Document, client: Option<&str>, limit: i64) -> Shape {
    // With the client fixed, sorting by it too is the same order, and every
    // server then reads it straight from the index.
    let (sort, index) = match client {
        Some(client) => {
            filter.insert("client", client);
            (
                doc! { "client": 1, "processedAt": 1, "eventId": 1 },
                super::indexes::OUTCOME_CLIENT_TIME,
            )
        }
        None => (
            doc! { "processedAt": 1, "eventId": 1 },
            super::indexes::OUTCOME_TIME,
        ),
    };
    Shape::new(name, Collection::Processed, filter)
        .sorted_by_index(sort, index)
        .projection(doc! { "data": 0 })
        .limit(limit)
}

/// Outcomes recorded in the millisecond `at` with an eventId after `event_id`.
pub fn outcomes_within(at: DateTime, event_id: &str, client: Option<&str>, limit: i64) -> Shape {
    outcomes(
        "outcomes later in a millisecond",
        doc! { "processedAt": at, "eventId": { "$gt": event_id } },
        client,
        limit,
    )
}

/// Outcomes recorded after the millisecond `at`.
pub fn outcomes_since(at: DateTime, client: Option<&str>, limit: i64) -> Shape {
    outcomes(
        "outcomes after a millisecond",
        doc! { "processedAt": { "$gt": at } },
        client,
        limit,
    )
}

/// Most messages one control id lookup returns: a sender reusing one id
/// for every message would otherwise make each lookup read them all.
pub const CONTROL_ID_MATCHES: i64 = 1000;

/// HL7 messages by their MSH-10, narrowed in the query (so the limit
/// counts only matches) to a sender (MSH-3, MSH-4: the index's other
/// keys), when given. The client is left to the caller: outside the index,
/// it would cost the Python server its plan, and a sender belongs to one
/// client.
pub fn by_control_id(query: &ControlIdQuery<'_>) -> Shape {
    let mut filter = doc! { "source.controlId": query.control_id };
    if let Some(app) = query.sending_application {
        filter.insert("source.sendingApplication", app);
    }
    if let Some(facility) = query.sending_facility {
        filter.insert("source.sendingFacility", facility);
    }
    Shape::new("HL7 messages by control id", Collection::Queued, filter)
        .projection(doc! { "data": 0 })
        .limit(CONTROL_ID_MATCHES)
}

/// Events holding an operator action's audit entry not yet in `audit_log`.
pub fn pending_audits(limit: i64) -> Shape {
    Shape::new(
        "audit entries to move",
        Collection::Queued,
        doc! { "pendingAudit": { "$exists": true } },
    )
    .projection(doc! { "data": 0 })
    .limit(limit)
}

/// Every hot shape, with sample arguments, for the plan test.
pub fn hot_for_explain() -> Vec<Shape> {
    let ids = ["00000000-0000-7000-8000-000000000001".to_owned()];
    vec![
        last_seq(3, "patient-1"),
        intake_key(3, "patient-1", "k:client:key"),
        event(&ids[0]),
        events(&ids),
        next_unfinished(3, "patient-1"),
        oldest_unfinished(3, "patient-1"),
        unfinished_senders(3, "patient-1"),
        waiting_in(&[1, 2, 3]),
        fenced(&ids[0]),
        fenced_batch(&[
            ids[0].clone(),
            "00000000-0000-7000-8000-000000000002".to_owned(),
        ]),
        outcome(&ids[0]),
        timeline(3, "patient-1", 10, 50),
        outcomes_within(DateTime::from_millis(1_000), &ids[0], Some("client"), 500),
        outcomes_since(DateTime::from_millis(1_000), None, 500),
        outcomes_since(DateTime::from_millis(1_000), Some("client"), 500),
        pending_audits(100),
        by_control_id(&ControlIdQuery {
            control_id: "MSG00001",
            client: Some("client"),
            sending_application: Some("LAB"),
            sending_facility: Some("HOSP"),
        }),
    ]
}
