//! Membership: each processor holds a session, a heartbeat document in
//! `processors` whose `expiresAt` comes from the database's clock and is
//! renewed every `LEASE_MS / 3`. A session that expired can never be renewed
//! (the renewal only extends a live one). Before anyone takes a session's
//! buckets it *kills* it: a write the primary applies only if the session
//! has expired by its own clock, on its latest state (never a read, which
//! may lag), marking it dead for good, so that not even a primary whose
//! clock is behind can renew it again.
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

/// Not killed, and `expiresAt > $$NOW`, compared as milliseconds: some
/// servers we run compare stored dates with `$$NOW` wrongly, but never numbers.
fn alive() -> Document {
    doc! { "$and": [
        { "$ne": ["$dead", true] },
        { "$gt": [{ "$toLong": "$expiresAt" }, { "$toLong": "$$NOW" }] },
    ] }
}

/// How long a session stays in `processors` after it expired (a bucket
/// naming a missing session counts as abandoned).
const FORGET_AFTER_MS: i64 = 3_600_000;

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
    /// Insert-only: a late copy of the write (a retry's first copy) finds
    /// the document and changes nothing, so it can never bring back a
    /// session someone has killed since.
    pub async fn join(&self, session: &str) -> Result<(), StoreError> {
        let unless_set =
            |field: &str, value: Bson| doc! { "$ifNull": [format!("${field}"), value] };
        self.collection
            .update_one(
                doc! { "_id": session },
                vec![doc! { "$set": {
                    "expiresAt": unless_set("expiresAt", self.expiry().into()),
                    "renewed": unless_set("renewed", true.into()),
                    "heartbeatAt": unless_set("heartbeatAt", "$$NOW".into()),
                    "startedAt": unless_set("startedAt", "$$NOW".into()),
                    "pid": unless_set("pid", (std::process::id() as i64).into()),
                } }],
            )
            .with_options(UpdateOptions::builder().upsert(true).build())
            .bounded("opening a session", self.op_timeout)
            .await
            .map(|_| ())
    }

    /// Extends the session if it is still alive, returning its new expiry
    /// (database time). `None`: it had expired or was killed (this process
    /// was paused or cut off past the lease), and everything it held may
    /// belong to others now.
    pub async fn renew(&self, session: &str) -> Result<Option<DateTime>, StoreError> {
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
        Ok(renewed
            .filter(|d| d.get_bool("renewed").unwrap_or(false))
            .and_then(|d| d.get_datetime("expiresAt").ok().copied()))
    }

    /// The expiry the database gave `session` when it opened it.
    pub async fn expires_at(&self, session: &str) -> Result<Option<DateTime>, StoreError> {
        let found = self
            .collection
            .find_one(doc! { "_id": session })
            .bounded("reading a session", self.op_timeout)
            .await?;
        Ok(found.and_then(|d| d.get_datetime("expiresAt").ok().copied()))
    }

    /// Declares `session` dead if it has expired by the primary's clock, on
    /// its latest state. `true`: it is dead (now or before, or it is gone
    /// altogether) and can never be renewed: its buckets may be taken.
    pub async fn kill(&self, session: &str) -> Result<bool, StoreError> {
        let expired = doc! { "$lt": [{ "$toLong": "$expiresAt" }, { "$toLong": "$$NOW" }] };
        let killed = self
            .collection
            .find_one_and_update(
                doc! { "_id": session },
                vec![doc! { "$set": { "dead": { "$or": [{ "$eq": ["$dead", true] }, expired] } } }],
            )
            .with_options(
                FindOneAndUpdateOptions::builder()
                    .return_document(ReturnDocument::After)
                    .build(),
            )
            .bounded("declaring a session dead", self.op_timeout)
            .await?;
        Ok(killed.is_none_or(|d| d.get_bool("dead").unwrap_or(false)))
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

    /// Ends the session (graceful stop) if it holds no lease any more
    /// (`holds_leases`: some were left to expire with it, so it must stay
    /// until it does), and forgets sessions expired for an hour by the
    /// database's clock (never this node's, which may run ahead).
    pub async fn leave(&self, session: &str, holds_leases: bool) -> Result<(), StoreError> {
        let forgotten = doc! { "$lt": [
            { "$toLong": "$expiresAt" },
            { "$subtract": [{ "$toLong": "$$NOW" }, FORGET_AFTER_MS] },
        ] };
        let filter = if holds_leases {
            doc! { "$expr": forgotten }
        } else {
            doc! { "$or": [{ "_id": session }, { "$expr": forgotten }] }
        };
        self.collection
            .delete_many(filter)
            .bounded("ending a session", self.op_timeout)
            .await
            .map(|_| ())
    }
}
