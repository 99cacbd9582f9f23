//! The MongoDB store both services share: connection, indexes, intake, the
//! fenced event lifecycle and the scans the processor fleet runs.

mod backlog;
mod claims_in_doubt;
pub(crate) mod deadline;
mod documents;
mod enqueue;
mod error;
mod group_commit;
pub mod indexes;
mod lifecycle;
mod messages;
mod operator;
mod outcomes;
mod retention;
mod schema;
pub mod shapes;
mod sweep;
mod update_batch;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub use documents::{
    ApiStatus, Claim, EventSource, EventStatus, ProcessedEvent, ProcessingResult, QueuedEvent,
};
pub use enqueue::{EnqueueOutcome, Hl7Origin, IdempotencyKey, IntakePolicy, Submission};
pub use error::StoreError;
pub use lifecycle::{
    Applied, Claimed, Close, Fence, NextEvent, READ_AHEAD, READ_AHEAD_MAX_PAYLOAD, RunEnd, Stored,
};
pub use messages::ControlIdQuery;
pub use operator::{
    Action, ActionOutcome, AuditedRead, ClientStats, ListCursor, ListQuery, ListedState,
};
pub use outcomes::{OutcomeCursor, REPLAY_OVERLAP, overlap_before};
pub use retention::{MIN_AGE, Pruned, Retention};
pub use sweep::Waiting;

use mongodb::bson::{Document, doc};
use mongodb::options::{
    Acknowledgment, AggregateOptions, ClientOptions, CollectionOptions, FindOneOptions,
    FindOptions, Hint, ReadConcern, WriteConcern,
};
use mongodb::{Client, Collection, Database};

use deadline::{Bounded, BoundedAll};
use group_commit::InsertBatcher;
use shapes::Shape;
pub use update_batch::DEFAULT_MAX_MERGED;
use update_batch::UpdateBatcher;

/// Database used when `MONGO_URI` names none.
pub const DEFAULT_DATABASE: &str = "medical_events";
pub const QUEUED_EVENTS: &str = "queued_events";
pub const PROCESSED_EVENTS: &str = "processed_events";

#[derive(Clone)]
pub struct Store {
    uri: String,
    timeout: Duration,
    client: Client,
    db: Database,
    /// Upper bound of any one operation: the driver has no socket timeout,
    /// and a request the server never answers must not hold a patient's
    /// lane or intake stripe forever.
    op_timeout: Duration,
    queued: Collection<QueuedEvent>,
    processed: Collection<ProcessedEvent>,
    inserts: InsertBatcher<QueuedEvent>,
    /// First runs' outcome documents, group-committed as inserts.
    outcome_inserts: InsertBatcher<ProcessedEvent>,
    /// The processor's single-event writes to `queued_events` (claims and
    /// fenced writes) and `processed_events` (outcomes), group-committed.
    event_updates: UpdateBatcher,
    outcome_updates: UpdateBatcher,
    /// Guarded updates per merged statement at most, for both batchers.
    max_merged: Arc<AtomicUsize>,
    /// Claims given up on while their fate was unknown (lifecycle.rs).
    claims_in_doubt: Arc<claims_in_doubt::ClaimsInDoubt>,
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
        // An accepted event must survive the loss of the primary: majority,
        // journaled; reads that decide an answer see only such writes.
        let durable = CollectionOptions::builder()
            .write_concern(durable())
            .read_concern(ReadConcern::majority())
            .build();
        let queued: Collection<QueuedEvent> =
            db.collection_with_options(QUEUED_EVENTS, durable.clone());
        let processed: Collection<ProcessedEvent> =
            db.collection_with_options(PROCESSED_EVENTS, durable);
        let op_timeout = operation_bound(timeout);
        let max_merged = Arc::new(AtomicUsize::new(update_batch::DEFAULT_MAX_MERGED));
        Ok(Self {
            uri: uri.to_owned(),
            timeout,
            inserts: InsertBatcher::spawn(queued.clone(), op_timeout),
            event_updates: UpdateBatcher::spawn(
                db.clone(),
                QUEUED_EVENTS,
                durable_command(),
                op_timeout,
                "updating events",
                Arc::clone(&max_merged),
            ),
            outcome_updates: UpdateBatcher::spawn(
                db.clone(),
                PROCESSED_EVENTS,
                durable_command(),
                op_timeout,
                "writing outcomes",
                Arc::clone(&max_merged),
            ),
            max_merged,
            claims_in_doubt: Arc::default(),
            op_timeout,
            outcome_inserts: InsertBatcher::spawn(processed.clone(), op_timeout),
            processed,
            queued,
            client,
            db,
        })
    }

    /// The same database through a client of its own (its own connection
    /// pool), so that its few operations never wait behind the many of the
    /// lanes: the fleet's session renewals use it.
    pub async fn separate_pool(&self, app_name: &str) -> Result<Self, StoreError> {
        let store = Self::connect(&self.uri, self.timeout, app_name).await?;
        store.set_max_merged(self.max_merged.load(Ordering::Relaxed));
        Ok(store)
    }

    pub fn database_name(&self) -> &str {
        self.db.name()
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn op_timeout(&self) -> Duration {
        self.op_timeout
    }

    /// How many events' claims and fenced writes may travel in one merged
    /// statement (`MERGED_WRITES_MAX`; 1 sends each alone), for every clone
    /// of this store. Default [`DEFAULT_MAX_MERGED`].
    pub fn set_max_merged(&self, max: usize) {
        self.max_merged.store(max.max(1), Ordering::Relaxed);
    }

    /// The longest an intake write can take once started: a read of the
    /// patient's last sequence number, the insert, and the read that
    /// settles an insert whose answer was lost, each bounded by
    /// [`Store::op_timeout`].
    pub fn intake_budget(&self) -> Duration {
        intake_budget(self.timeout)
    }

    /// The latest moment an intake write may start and still be settled
    /// by `deadline`.
    pub fn latest_intake_start(&self, deadline: std::time::Instant) -> std::time::Instant {
        deadline
            .checked_sub(self.intake_budget())
            .unwrap_or(deadline)
    }

    /// A collection of this database with the durable write concern.
    pub fn durable_collection<T: Send + Sync>(&self, name: &str) -> Collection<T> {
        self.db.collection_with_options(
            name,
            CollectionOptions::builder()
                .write_concern(durable())
                .read_concern(ReadConcern::majority())
                .build(),
        )
    }

    /// Creates the indexes the guarantees rely on and checks that the
    /// database holds this version's documents; safe to run on every start.
    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        schema::check(self).await?;
        self.processed
            .create_indexes(indexes::processed_events())
            .bounded("creating processed_events indexes", self.op_timeout * 5)
            .await?;
        // Replaced by a compound index: two would cost every outcome write.
        let names = self
            .processed
            .list_index_names()
            .bounded("listing processed_events indexes", self.op_timeout)
            .await?;
        if names.iter().any(|n| n == indexes::OUTCOME_TIME_BEFORE) {
            self.processed
                .drop_index(indexes::OUTCOME_TIME_BEFORE)
                .bounded("dropping a replaced index", self.op_timeout * 5)
                .await?;
        }
        self.queued
            .create_indexes(indexes::queued_events())
            .bounded("creating queued_events indexes", self.op_timeout * 5)
            .await?;
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
        self.find_one(&self.queued, shapes::event(event_id), "reading an event")
            .await
    }

    pub async fn find_processed(
        &self,
        event_id: &str,
    ) -> Result<Option<ProcessedEvent>, StoreError> {
        self.find_one(
            &self.processed,
            shapes::outcome(event_id),
            "reading an outcome",
        )
        .await
    }

    /// A patient's events after sequence number `after`, in order, only
    /// those `client` sent if given. Returns them and, when more may follow,
    /// the sequence number to continue after.
    /// A page of a patient's timeline after sequence number `after`: up to
    /// `limit` events and whether more follow. For a client (`Some`), its
    /// own events only: the patient's events are read in index order and
    /// filtered here, page after page until the client's page is full, so
    /// that neither the events nor how many others there are leave the
    /// server (a page that stopped at the scan's end would tell).
    pub async fn timeline(
        &self,
        patient: &str,
        client: Option<&str>,
        after: i64,
        limit: i64,
    ) -> Result<(Vec<QueuedEvent>, bool), StoreError> {
        let bucket = crate::bucket::of(patient);
        let mut from = after;
        let mut visible = Vec::new();
        // One more than the page, to know whether another page follows.
        let wanted = limit as usize + 1;
        let scan = if client.is_some() {
            (limit + 1).max(500)
        } else {
            limit + 1
        };
        loop {
            let shape = shapes::timeline(bucket, patient, from, scan);
            let page: Vec<QueuedEvent> = self
                .find_all(&self.queued, shape, "reading a patient's timeline")
                .await?;
            let scanned_all = (page.len() as i64) < scan;
            if let Some(last) = page.last() {
                from = last.seq;
            }
            visible.extend(
                page.into_iter()
                    .filter(|e| client.is_none_or(|c| e.client == c)),
            );
            if visible.len() >= wanted || scanned_all {
                break;
            }
        }
        let more = visible.len() >= wanted;
        visible.truncate(limit as usize);
        Ok((visible, more))
    }

    async fn find_one<T>(
        &self,
        collection: &Collection<T>,
        shape: Shape,
        operation: &'static str,
    ) -> Result<Option<T>, StoreError>
    where
        T: serde::de::DeserializeOwned + Send + Sync,
    {
        let options = FindOneOptions::builder()
            .sort(shape.sort)
            .projection(shape.projection)
            .hint(shape.hint.map(|name| Hint::Name(name.to_owned())))
            .max_time(self.op_timeout)
            .build();
        collection
            .find_one(shape.filter)
            .with_options(options)
            .bounded(operation, self.op_timeout)
            .await
    }

    async fn find_all<T>(
        &self,
        collection: &Collection<T>,
        shape: Shape,
        operation: &'static str,
    ) -> Result<Vec<T>, StoreError>
    where
        T: serde::de::DeserializeOwned + Send + Sync + Unpin,
    {
        // The server stops too, not only our wait: a query a client set off
        // cannot keep the database busy after its answer is given up.
        if let Some(pipeline) = shape.pipeline() {
            let options = AggregateOptions::builder()
                .max_time(self.op_timeout)
                .hint(shape.hint.map(|name| Hint::Name(name.to_owned())))
                .build();
            return collection
                .aggregate(pipeline)
                .with_options(options)
                .with_type::<T>()
                .all(operation, self.op_timeout)
                .await;
        }
        let mut options = find_options(shape.sort, shape.projection, shape.limit, shape.hint);
        options.max_time = Some(self.op_timeout);
        collection
            .find(shape.filter)
            .with_options(options)
            .all(operation, self.op_timeout)
            .await
    }
}

/// [`Store::intake_budget`] for a server selection timeout of `timeout`
/// (`MONGO_TIMEOUT_MS`); a request's time limit must be above it.
pub fn intake_budget(timeout: Duration) -> Duration {
    operation_bound(timeout) * 3
}

/// The bound of one store operation: server selection may take `timeout`
/// by itself, the operation as much again.
fn operation_bound(timeout: Duration) -> Duration {
    timeout * 2
}

fn durable() -> WriteConcern {
    WriteConcern::builder()
        .w(Acknowledgment::Majority)
        .journal(true)
        .build()
}

/// [`durable`] as a command's `writeConcern` field, encoded (the update
/// batchers append it to every command they send).
fn durable_command() -> mongodb::bson::RawDocumentBuf {
    mongodb::bson::rawdoc! { "w": "majority", "j": true }
}

fn find_options(
    sort: Option<Document>,
    projection: Option<Document>,
    limit: Option<i64>,
    hint: Option<&str>,
) -> FindOptions {
    FindOptions::builder()
        .sort(sort)
        .projection(projection)
        .limit(limit)
        .hint(hint.map(|name| Hint::Name(name.to_owned())))
        .build()
}
