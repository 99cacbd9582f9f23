//! The MongoDB store both services share: connection, indexes, the intake
//! transaction and the event lifecycle updates.

mod deadline;
mod documents;
mod enqueue;
mod error;

use std::time::Duration;

pub use documents::{EventStatus, ProcessedEvent, ProcessingResult, QueuedEvent};
pub use enqueue::{EnqueueOutcome, IdempotencyKey, Submission};
pub use error::StoreError;

use mongodb::bson::{DateTime, doc};
use mongodb::options::{
    Acknowledgment, ClientOptions, CollectionOptions, IndexOptions, WriteConcern,
};
use mongodb::{Client, Collection, Database, IndexModel};

use deadline::Bounded;
use error::is_duplicate_key;

/// Database used when `MONGO_URI` names none.
pub const DEFAULT_DATABASE: &str = "medical_events";

#[derive(Clone)]
pub struct Store {
    db: Database,
    /// Upper bound of any one operation: the driver has no socket timeout,
    /// and a request the server never answers must not hold a patient's
    /// lane or intake stripe forever.
    op_timeout: Duration,
    queued: Collection<QueuedEvent>,
    processed: Collection<ProcessedEvent>,
}

impl Store {
    /// Builds a client for `uri`; no I/O happens until the first operation.
    pub async fn connect(uri: &str, timeout: Duration, app_name: &str) -> Result<Self, StoreError> {
        let mut options = ClientOptions::parse(uri)
            .await
            .map_err(StoreError::InvalidUri)?;
        options.server_selection_timeout = Some(timeout);
        options.connect_timeout = Some(timeout);
        options.app_name = Some(app_name.to_owned());
        let database = options
            .default_database
            .clone()
            .unwrap_or_else(|| DEFAULT_DATABASE.to_owned());
        let client = Client::with_options(options).map_err(StoreError::InvalidUri)?;
        let db = client.database(&database);
        // An accepted event must survive the loss of the primary: majority, journaled.
        let durable = CollectionOptions::builder()
            .write_concern(
                WriteConcern::builder()
                    .w(Acknowledgment::Majority)
                    .journal(true)
                    .build(),
            )
            .build();
        Ok(Self {
            // Server selection may take `timeout` by itself; the operation as much again.
            op_timeout: timeout * 2,
            queued: db.collection_with_options("queued_events", durable.clone()),
            processed: db.collection_with_options("processed_events", durable),
            db,
        })
    }

    pub fn database_name(&self) -> &str {
        self.db.name()
    }

    /// Creates the indexes the guarantees rely on; safe to run on every start.
    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        let unique = || IndexOptions::builder().unique(true).build();
        self.processed
            .create_indexes([
                IndexModel::builder()
                    .keys(doc! { "eventId": 1 })
                    .options(unique())
                    .build(),
                IndexModel::builder().keys(doc! { "patientId": 1 }).build(),
                IndexModel::builder()
                    .keys(doc! { "patientId": 1, "ts": 1 })
                    .build(),
            ])
            .await
            .map_err(StoreError::mongo("creating processed_events indexes"))?;
        self.queued
            .create_indexes([
                IndexModel::builder()
                    .keys(doc! { "eventId": 1 })
                    .options(unique())
                    .build(),
                IndexModel::builder()
                    .keys(doc! { "patientId": 1, "seq": 1 })
                    .options(unique())
                    .build(),
                IndexModel::builder()
                    .keys(doc! { "idempotencyKey": 1 })
                    .options(
                        IndexOptions::builder()
                            .unique(true)
                            .partial_filter_expression(
                                doc! { "idempotencyKey": { "$exists": true } },
                            )
                            .build(),
                    )
                    .build(),
                // Lets the recovery sweep find unfinished work without a scan.
                IndexModel::builder()
                    .keys(doc! { "status": 1, "patientId": 1 })
                    .build(),
                // The oldest unfinished event, for the backlog-age gauge.
                IndexModel::builder()
                    .keys(doc! { "status": 1, "acceptedAt": 1 })
                    .build(),
            ])
            .await
            .map_err(StoreError::mongo("creating queued_events indexes"))?;
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.db
            .run_command(doc! { "ping": 1 })
            .bounded("ping", self.op_timeout)
            .await
            .map(|_| ())
    }

    pub async fn find_event(&self, event_id: &str) -> Result<Option<QueuedEvent>, StoreError> {
        self.queued
            .find_one(doc! { "eventId": event_id })
            .bounded("reading a queued event", self.op_timeout)
            .await
    }

    pub async fn find_processed(
        &self,
        event_id: &str,
    ) -> Result<Option<ProcessedEvent>, StoreError> {
        self.processed
            .find_one(doc! { "eventId": event_id })
            .bounded("reading a processed event", self.op_timeout)
            .await
    }

    /// Claims the patient's oldest unfinished event (by sequence number):
    /// marks it `processing` and counts the attempt, durably. An event found
    /// already `processing` was claimed by a run that died; its `attempts`
    /// tells how many runs tried.
    pub async fn claim_next(&self, patient_id: &str) -> Result<Option<QueuedEvent>, StoreError> {
        // A find then an update by eventId rather than one findAndModify: both
        // are single-index operations, which every MongoDB-compatible server
        // we run on executes fast (SecantusDB scans for a sorted findAndModify).
        let next = self
            .queued
            .find_one(doc! {
                "patientId": patient_id,
                "status": { "$in": [EventStatus::Queued.as_str(), EventStatus::Processing.as_str()] },
            })
            .sort(doc! { "seq": 1 })
            .bounded("finding the next event of a patient", self.op_timeout)
            .await?;
        match next {
            Some(event) => self.claim(event).await,
            None => Ok(None),
        }
    }

    /// How many events are unfinished, and when the oldest was accepted.
    pub async fn backlog(&self) -> Result<(u64, Option<DateTime>), StoreError> {
        let unfinished = doc! {
            "status": { "$in": [EventStatus::Queued.as_str(), EventStatus::Processing.as_str()] },
        };
        let count = self
            .queued
            .count_documents(unfinished.clone())
            .bounded("counting unfinished events", self.op_timeout)
            .await?;
        let oldest = self
            .queued
            .find_one(unfinished)
            .sort(doc! { "acceptedAt": 1 })
            .bounded("finding the oldest unfinished event", self.op_timeout)
            .await?;
        Ok((count, oldest.map(|event| event.accepted_at)))
    }

    /// Patients with unfinished events: what recovery must resume.
    pub async fn patients_with_unfinished(&self) -> Result<Vec<String>, StoreError> {
        let patients = self
            .queued
            .distinct(
                "patientId",
                doc! { "status": { "$in": [EventStatus::Queued.as_str(), EventStatus::Processing.as_str()] } },
            )
            .bounded("listing patients with unfinished events", self.op_timeout)
            .await?;
        Ok(patients
            .into_iter()
            .filter_map(|p| p.as_str().map(str::to_owned))
            .collect())
    }

    /// Marks an unfinished event `processing` and counts the attempt.
    /// `None` if it was finished meanwhile. The processor is the only writer
    /// of these fields, so the returned copy is what the store now holds.
    pub async fn claim(&self, mut event: QueuedEvent) -> Result<Option<QueuedEvent>, StoreError> {
        let now = DateTime::now();
        let result = self
            .queued
            .update_one(
                doc! {
                    "eventId": &event.event_id,
                    "status": { "$in": [EventStatus::Queued.as_str(), EventStatus::Processing.as_str()] },
                },
                doc! {
                    "$set": { "status": EventStatus::Processing.as_str(), "updatedAt": now },
                    "$inc": { "attempts": 1 },
                },
            )
            .bounded("claiming an event", self.op_timeout)
            .await?;
        if result.matched_count == 0 {
            return Ok(None);
        }
        event.status = EventStatus::Processing;
        event.attempts += 1;
        event.updated_at = now;
        Ok(Some(event))
    }

    /// Puts an interrupted event back in the queue without counting the attempt.
    pub async fn hand_back(&self, event_id: &str) -> Result<(), StoreError> {
        self.queued
            .update_one(
                doc! { "eventId": event_id, "status": EventStatus::Processing.as_str() },
                doc! {
                    "$set": { "status": EventStatus::Queued.as_str(), "updatedAt": DateTime::now() },
                    "$inc": { "attempts": -1 },
                },
            )
            .bounded("handing an event back", self.op_timeout)
            .await
            .map(|_| ())
    }

    /// Remembers why the last attempt failed (shown by `GET /events/{id}`).
    pub async fn note_error(&self, event_id: &str, error: &str) -> Result<(), StoreError> {
        self.queued
            .update_one(
                doc! { "eventId": event_id },
                doc! { "$set": { "lastError": error, "updatedAt": DateTime::now() } },
            )
            .bounded("recording an attempt's error", self.op_timeout)
            .await
            .map(|_| ())
    }

    /// Writes the one `processed_events` document of the event, then closes its
    /// lifecycle. A duplicate key means an earlier run already wrote it: the
    /// effect happened exactly once, so only the lifecycle is brought up to date.
    pub async fn record_outcome(
        &self,
        outcome: &ProcessedEvent,
        attempts: i32,
    ) -> Result<(), StoreError> {
        match self
            .processed
            .insert_one(outcome)
            .into_future()
            .bounded_raw("inserting a processed event", self.op_timeout)
            .await?
        {
            Ok(_) => {}
            Err(e) if is_duplicate_key(&e) => {}
            Err(e) => return Err(StoreError::mongo("inserting a processed event")(e)),
        }
        self.close_lifecycle(outcome, attempts).await
    }

    /// Sets the terminal status of a queued event from its recorded outcome.
    pub async fn close_lifecycle(
        &self,
        outcome: &ProcessedEvent,
        attempts: i32,
    ) -> Result<(), StoreError> {
        let status = if outcome.result.is_success() {
            EventStatus::Processed
        } else {
            EventStatus::Failed
        };
        self.queued
            .update_one(
                doc! { "eventId": &outcome.event_id },
                doc! { "$set": { "status": status.as_str(), "attempts": attempts, "updatedAt": DateTime::now() } },
            )
            .bounded("closing an event's lifecycle", self.op_timeout)
            .await
            .map(|_| ())
    }
}
