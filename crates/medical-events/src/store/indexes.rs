//! The indexes the guarantees and the hot queries rely on, by name (the
//! names appear in duplicate-key errors and in query hints).
//!
//! Few on purpose: every index costs every write, and some servers rewrite
//! all of a document's index entries on any update. `queued_events` has six
//! (with `_id`, the eventId, a sparse one only HL7 messages enter, and a
//! sparse one only events with an unmoved audit entry enter) and each serves several queries
//! (see `shapes.rs` and ARCHITECTURE.md, "Query plans").

use mongodb::IndexModel;
use mongodb::bson::{Document, doc};
use mongodb::options::IndexOptions;

/// `{bucket, patientId, seq}`, unique: one event per sequence number of a
/// patient; the patient's last number; the timeline.
pub const PATIENT_SEQ: &str = "patient_seq";
/// `{status, bucket, patientId, seq}`: a patient's next unfinished event;
/// the waiting work of a set of buckets; failed and parked events. Status
/// leads so that one query serves many buckets on every server.
pub const STATUS_BUCKET: &str = "status_bucket_patient_seq";
/// `{bucket, patientId, intakeKey}`, unique: idempotent retries and
/// duplicate suppression, scoped per client and patient.
pub const INTAKE_KEY: &str = "patient_intake_key";

/// `{source.controlId, source.sendingApplication, source.sendingFacility}`,
/// sparse: HL7 messages by the sender's control id and the sender (reused
/// ids at intake, the operator's search). Sparse: events that came over
/// HTTP have none of these fields, so no entry, and cost it nothing.
pub const CONTROL_ID: &str = "source_control_id";

/// `{pendingAudit}`, sparse: events whose operator action's audit entry is
/// still to be moved to `audit_log` (after a crash between the two writes).
/// Sparse: only such events have an entry, normally none.
pub const PENDING_AUDIT: &str = "pending_audit";

/// `processed_events.eventId`, unique (the original service's index).
pub const OUTCOME_EVENT: &str = "eventId_1";
/// `{bucket, eventId}`, unique: the same guarantee with the shard key as
/// prefix, so the collection can be sharded by bucket without losing it.
pub const OUTCOME_BUCKET_EVENT: &str = "bucket_eventId";
/// `{processedAt, eventId}`: the outcome stream's replay (in this order,
/// which is the stream's) and outcome retention.
pub const OUTCOME_TIME: &str = "processedAt_eventId";
/// `{client, processedAt, eventId}`: a client's replay of the outcome
/// stream, over its own outcomes only.
pub const OUTCOME_CLIENT_TIME: &str = "client_processedAt_eventId";
/// The `processedAt` index of earlier versions, which `OUTCOME_TIME` replaces.
pub const OUTCOME_TIME_BEFORE: &str = "processedAt_1";

fn index(name: &str, keys: Document, unique: bool) -> IndexModel {
    IndexModel::builder()
        .keys(keys)
        .options(
            IndexOptions::builder()
                .name(name.to_owned())
                .unique(unique.then_some(true))
                .build(),
        )
        .build()
}

pub fn queued_events() -> Vec<IndexModel> {
    vec![
        index(
            PATIENT_SEQ,
            doc! { "bucket": 1, "patientId": 1, "seq": 1 },
            true,
        ),
        index(
            STATUS_BUCKET,
            doc! { "status": 1, "bucket": 1, "patientId": 1, "seq": 1 },
            false,
        ),
        index(
            INTAKE_KEY,
            doc! { "bucket": 1, "patientId": 1, "intakeKey": 1 },
            true,
        ),
        IndexModel::builder()
            .keys(doc! {
                "source.controlId": 1,
                "source.sendingApplication": 1,
                "source.sendingFacility": 1,
            })
            .options(
                IndexOptions::builder()
                    .name(CONTROL_ID.to_owned())
                    .sparse(true)
                    .build(),
            )
            .build(),
        IndexModel::builder()
            .keys(doc! { "pendingAudit": 1 })
            .options(
                IndexOptions::builder()
                    .name(PENDING_AUDIT.to_owned())
                    .sparse(true)
                    .build(),
            )
            .build(),
    ]
}

pub fn processed_events() -> Vec<IndexModel> {
    vec![
        index(OUTCOME_EVENT, doc! { "eventId": 1 }, true),
        index(
            OUTCOME_BUCKET_EVENT,
            doc! { "bucket": 1, "eventId": 1 },
            true,
        ),
        // The original service's query indexes, kept for its readers.
        index("patientId_1", doc! { "patientId": 1 }, false),
        index("patientId_1_ts_1", doc! { "patientId": 1, "ts": 1 }, false),
        index(OUTCOME_TIME, doc! { "processedAt": 1, "eventId": 1 }, false),
        index(
            OUTCOME_CLIENT_TIME,
            doc! { "client": 1, "processedAt": 1, "eventId": 1 },
            false,
        ),
    ]
}

/// Which unique index a duplicate-key error names (servers put it in the message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UniqueIndex {
    Id,
    PatientSeq,
    IntakeKey,
    OutcomeEvent,
    Other,
}

impl UniqueIndex {
    pub fn from_message(message: &str) -> Self {
        match index_name(message).unwrap_or("") {
            "_id_" => Self::Id,
            PATIENT_SEQ => Self::PatientSeq,
            INTAKE_KEY => Self::IntakeKey,
            OUTCOME_EVENT | OUTCOME_BUCKET_EVENT => Self::OutcomeEvent,
            _ => Self::Other,
        }
    }
}

/// The index a duplicate-key message names (`... index: NAME dup key: ...`).
pub(crate) fn index_name(message: &str) -> Option<&str> {
    message
        .split("index: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_key_messages_name_their_index() {
        let message = "E11000 duplicate key error collection: db.queued_events index: \
                       patient_seq dup key: { bucket: 3, patientId: \"p\", seq: 4 }";
        assert_eq!(UniqueIndex::from_message(message), UniqueIndex::PatientSeq);
        assert_eq!(
            UniqueIndex::from_message("E11000 duplicate key error index: _id_ dup key"),
            UniqueIndex::Id
        );
        assert_eq!(
            UniqueIndex::from_message("something else"),
            UniqueIndex::Other
        );
    }
}
