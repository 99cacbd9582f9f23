//! Membership: each processor holds a session, a heartbeat document in
//! `processors` whose `expiresAt` comes from the database's clock and is
//! renewed every `LEASE_MS / 3`. A session that expired can never be renewed
//! (the renewal only extends a live one), so once anyone has seen it expired
//! it is dead for good, and the buckets it held may be taken over safely.
//!
//! One renewal per processor per tick keeps every bucket it holds: the cost
//! of a lease does not grow with the number of buckets.

use std::time::Duration;

use mongodb::Collection;
use mongodb::bson::{Bson, DateTime, Document, doc};
use mongodb::options::{FindOneAndUpdateOptions, ReturnDocument, UpdateOptions};

use crate::store::deadline::{Bounded, BoundedAll};
use crate::store::{Store, StoreError};

pub const COLLECTION: &str = "processors";

/// The sessions as the database sees them now.
#[derive(Debug, Default)]
pub struct Sessions {
    pub live: Vec<String>,
    pub dead: Vec<String>,
}

/// `expiresAt > $$NOW`, compared as milliseconds: some servers we run
/// compare stored dates with `$$NOW` wrongly, but never numbers.
fn alive() -> Document {
    doc! { "$gt": [{ "$toLong": "$expiresAt" }, { "$toLong": "$$NOW" }] }
}

#[derive(Clone)]
pub struct Membership {
    collection: Collection<Document>,
    lease: Duration,
    op_timeout: Duration,
}

impl Membership {
    pub fn new(store: &Store, lease: Duration) -> Self {
        Self {
            collection: store.durable_collection(COLLECTION),
            lease,
            op_timeout: store.op_timeout(),
        }
    }

    fn expiry(&self) -> Document {
        doc! { "$toDate": { "$add": [{ "$toLong": "$$NOW" }, self.lease.as_millis() as i64] } }
    }

    /// Opens a session named `session` (new, so alive for one lease period).
    pub async fn join(&self, session: &str) -> Result<(), StoreError> {
        self.collection
            .update_one(
                doc! { "_id": session },
                vec![doc! { "$set": {
                    "expiresAt": self.expiry(),
                    "renewed": true,
                    "heartbeatAt": "$$NOW",
                    "startedAt": "$$NOW",
                    "pid": std::process::id() as i64,
                } }],
            )
            .with_options(UpdateOptions::builder().upsert(true).build())
            .bounded("opening a session", self.op_timeout)
            .await
            .map(|_| ())
    }

    /// Extends the session if it is still alive. `false`: it had expired
    /// (this process was paused or cut off past the lease), and everything
    /// it held may belong to others now.
    pub async fn renew(&self, session: &str) -> Result<bool, StoreError> {
        let pipeline = vec![
            doc! { "$set": { "renewed": alive() } },
            doc! { "$set": {
                "expiresAt": { "$cond": ["$renewed", self.expiry(), "$expiresAt"] },
                "heartbeatAt": { "$cond": ["$renewed", "$$NOW", "$heartbeatAt"] },
            } },
        ];
        let renewed = self
            .collection
            .find_one_and_update(doc! { "_id": session }, pipeline)
            .with_options(
                FindOneAndUpdateOptions::builder()
                    .return_document(ReturnDocument::After)
                    .build(),
            )
            .bounded("renewing a session", self.op_timeout)
            .await?;
        Ok(renewed.is_some_and(|d| d.get_bool("renewed").unwrap_or(false)))
    }

    /// Which sessions are alive and which expired (database time).
    pub async fn sessions(&self) -> Result<Sessions, StoreError> {
        let pipeline = [doc! { "$project": { "live": alive() } }];
        let operation = "reading sessions";
        let documents: Vec<Document> = self
            .collection
            .aggregate(pipeline)
            .all(operation, self.op_timeout)
            .await?;
        let mut sessions = Sessions::default();
        for document in documents {
            let Some(Bson::String(id)) = document.get("_id").cloned() else {
                continue;
            };
            if document.get_bool("live").unwrap_or(false) {
                sessions.live.push(id);
            } else {
                sessions.dead.push(id);
            }
        }
        Ok(sessions)
    }

    /// Which of `ids` exist as sessions now (live or not).
    pub async fn existing(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        let operation = "looking sessions up";
        let documents: Vec<Document> = self
            .collection
            .find(doc! { "_id": { "$in": ids } })
            .projection(doc! { "_id": 1 })
            .all(operation, self.op_timeout)
            .await?;
        Ok(documents
            .iter()
            .filter_map(|d| d.get_str("_id").ok().map(str::to_owned))
            .collect())
    }

    /// Ends the session (graceful stop) and forgets sessions dead for an hour
    /// (a bucket naming a missing session counts as abandoned).
    pub async fn leave(&self, session: &str) -> Result<(), StoreError> {
        let long_ago = DateTime::from_millis(DateTime::now().timestamp_millis() - 3_600_000);
        self.collection
            .delete_many(doc! { "$or": [
                { "_id": session },
                { "expiresAt": { "$lt": long_ago } },
            ] })
            .bounded("ending a session", self.op_timeout)
            .await
            .map(|_| ())
    }
}
