//! Lease documents (`leases`): one per bucket, plus named ones for singleton
//! jobs (the pruner): `{owner, epoch}`, where `owner` is a processor session
//! (see `membership.rs`); a lease lasts as long as its owner's session. Every
//! takeover increments `epoch`, the fencing token the holder stamps on each
//! write it makes under the lease.
//!
//! A lease is taken only from no one or from a session the taker killed
//! (see `membership.rs`): a dead session can never come back, so the
//! condition the taker checked cannot become false before its write lands.
//!
//! Epochs come from one counter for the whole deployment (in `deployment`,
//! which outlives the lease documents): every acquisition's epoch is above
//! every epoch issued before, for any bucket. So a patient's fencing token
//! never goes down, even when the leases are deleted and recreated (the
//! procedure for changing the bucket count), and an event claimed under an
//! old epoch is always claimable under a new one.

use std::time::Duration;

use mongodb::Collection;
use mongodb::bson::{Bson, DateTime, Document, doc};
use mongodb::options::{FindOneAndUpdateOptions, InsertManyOptions, ReturnDocument, UpdateOptions};

use crate::store::deadline::{Bounded, BoundedAll};
use crate::store::{Store, StoreError};

pub const COLLECTION: &str = "leases";

/// The lease id of a bucket.
pub fn bucket_id(bucket: i32) -> String {
    format!("bucket:{bucket}")
}

/// The lease id of a singleton job.
pub fn job_id(name: &str) -> String {
    format!("job:{name}")
}

/// The singleton jobs of the fleet.
pub const PRUNER: &str = "pruner";

/// A lease as read.
#[derive(Debug, Clone)]
pub struct LeaseView {
    pub id: String,
    pub bucket: Option<i32>,
    pub owner: Option<String>,
    pub epoch: i64,
}

/// Where the deployment's epoch counter lives (`deployment` survives the
/// lease documents).
const COUNTER_COLLECTION: &str = "deployment";
const COUNTER_ID: &str = "fencing-epoch";

/// Access to the lease documents.
#[derive(Clone)]
pub struct Leases {
    collection: Collection<Document>,
    counter: Collection<Document>,
    op_timeout: Duration,
}

impl Leases {
    pub fn new(store: &Store) -> Self {
        Self {
            collection: store.durable_collection(COLLECTION),
            counter: store.durable_collection(COUNTER_COLLECTION),
            op_timeout: store.op_timeout(),
        }
    }

    /// Makes sure the epoch counter is at least every epoch any lease
    /// carries (a deployment of an earlier version counted per lease).
    pub async fn raise_counter_floor(&self) -> Result<(), StoreError> {
        let highest = self
            .collection
            .find_one(doc! {})
            .sort(doc! { "epoch": -1 })
            .bounded("reading the highest epoch", self.op_timeout)
            .await?
            .as_ref()
            .map_or(0, epoch_of);
        self.counter
            .update_one(
                doc! { "_id": COUNTER_ID },
                doc! { "$max": { "epoch": highest } },
            )
            .with_options(UpdateOptions::builder().upsert(true).build())
            .bounded("raising the epoch counter", self.op_timeout)
            .await
            .map(|_| ())
    }

    /// A fresh epoch, above every epoch issued before. A lost reply only
    /// wastes a number.
    async fn next_epoch(&self) -> Result<i64, StoreError> {
        let counter = self
            .counter
            .find_one_and_update(
                doc! { "_id": COUNTER_ID },
                doc! { "$inc": { "epoch": 1i64 } },
            )
            .with_options(
                FindOneAndUpdateOptions::builder()
                    .upsert(true)
                    .return_document(ReturnDocument::After)
                    .build(),
            )
            .bounded("drawing an epoch", self.op_timeout)
            .await?;
        Ok(counter.as_ref().map_or(1, epoch_of))
    }

    /// Creates the lease documents that do not exist yet (all free).
    pub async fn seed(
        &self,
        ids: impl IntoIterator<Item = (String, Option<i32>)>,
    ) -> Result<(), StoreError> {
        let documents: Vec<Document> = ids
            .into_iter()
            .map(|(id, bucket)| {
                let mut lease = doc! { "_id": id, "owner": Bson::Null, "epoch": 0i64 };
                if let Some(bucket) = bucket {
                    lease.insert("bucket", bucket);
                }
                lease
            })
            .collect();
        let operation = "creating lease documents";
        match self
            .collection
            .insert_many(documents)
            .with_options(InsertManyOptions::builder().ordered(false).build())
            .into_future()
            .bounded_raw(operation, self.op_timeout * 5)
            .await?
        {
            Ok(_) => Ok(()),
            // Those that exist already are refused one by one; that is the point.
            Err(e) if only_duplicates(&e) => Ok(()),
            Err(e) => Err(StoreError::mongo(operation)(e)),
        }
    }

    /// One lease.
    pub async fn read(&self, id: &str) -> Result<Option<LeaseView>, StoreError> {
        let found = self
            .collection
            .find_one(doc! { "_id": id })
            .bounded("reading a lease", self.op_timeout)
            .await?;
        Ok(found.as_ref().map(view))
    }

    /// Bucket leases no live session holds: free, or held by a session that ended
    /// (or that joined after `live` was read; the caller checks).
    pub async fn not_held_by(&self, live: &[String]) -> Result<Vec<LeaseView>, StoreError> {
        let operation = "reading leases";
        let documents: Vec<Document> = self
            .collection
            .find(doc! { "owner": { "$nin": live }, "bucket": { "$exists": true } })
            .all(operation, self.op_timeout)
            .await?;
        Ok(documents.iter().map(view).collect())
    }

    /// Takes those of `ids` that are free or held by one of `dead` sessions
    /// (sessions the caller killed), in one write, all under one fresh epoch
    /// from the counter, while the database's clock is before `until` (the
    /// taker's own session's expiry: a late copy of the write from a
    /// session that has ended meanwhile takes nothing). What was taken is
    /// read back with [`Leases::owned_by`] (so a lost reply loses nothing).
    pub async fn acquire(
        &self,
        ids: &[String],
        dead: &[String],
        session: &str,
        until: DateTime,
    ) -> Result<(), StoreError> {
        let epoch = self.next_epoch().await?;
        let mut takeable: Vec<Bson> = dead.iter().map(|d| Bson::String(d.clone())).collect();
        takeable.push(Bson::Null);
        self.collection
            .update_many(
                doc! {
                    "_id": { "$in": ids },
                    "owner": { "$in": takeable },
                    "epoch": { "$lt": epoch },
                    "$expr": { "$lt": [{ "$toLong": "$$NOW" }, until.timestamp_millis()] },
                },
                vec![doc! { "$set": {
                    "previousOwner": "$owner",
                    "owner": { "$literal": session },
                    "epoch": { "$literal": epoch },
                    "acquiredAt": "$$NOW",
                } }],
            )
            .bounded("acquiring leases", self.op_timeout)
            .await
            .map(|_| ())
    }

    /// Every lease `session` holds, with its epoch.
    pub async fn owned_by(&self, session: &str) -> Result<Vec<LeaseView>, StoreError> {
        let operation = "reading held leases";
        let held: Vec<Document> = self
            .collection
            .find(doc! { "owner": session })
            .all(operation, self.op_timeout)
            .await?;
        Ok(held.iter().map(view).collect())
    }

    /// Gives a lease up at once (only the epoch we hold: a lease someone
    /// else took over meanwhile is left alone).
    pub async fn release(&self, id: &str, session: &str, epoch: i64) -> Result<bool, StoreError> {
        let result = self
            .collection
            .update_one(
                doc! { "_id": id, "owner": session, "epoch": epoch },
                doc! { "$set": { "owner": Bson::Null } },
            )
            .bounded("releasing a lease", self.op_timeout)
            .await?;
        Ok(result.matched_count == 1)
    }
}

impl Leases {
    /// Gives up every lease `session` holds but those in `keep`, in one
    /// write (graceful stop).
    pub async fn release_all_but(&self, session: &str, keep: &[String]) -> Result<u64, StoreError> {
        let result = self
            .collection
            .update_many(
                doc! { "owner": session, "_id": { "$nin": keep } },
                doc! { "$set": { "owner": Bson::Null } },
            )
            .bounded("releasing leases", self.op_timeout)
            .await?;
        Ok(result.modified_count)
    }
}

fn view(document: &Document) -> LeaseView {
    LeaseView {
        id: document.get_str("_id").unwrap_or_default().to_owned(),
        bucket: document.get_i32("bucket").ok(),
        owner: document.get_str("owner").ok().map(str::to_owned),
        epoch: epoch_of(document),
    }
}

fn epoch_of(document: &Document) -> i64 {
    match document.get("epoch") {
        Some(Bson::Int64(n)) => *n,
        Some(Bson::Int32(n)) => i64::from(*n),
        Some(Bson::Double(n)) => *n as i64,
        _ => 0,
    }
}

fn only_duplicates(error: &mongodb::error::Error) -> bool {
    match error.kind.as_ref() {
        mongodb::error::ErrorKind::InsertMany(e) => {
            e.write_concern_error.is_none()
                && e.write_errors
                    .as_ref()
                    .is_some_and(|errors| errors.iter().all(|e| e.code == 11000))
        }
        _ => false,
    }
}
