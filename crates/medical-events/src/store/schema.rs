//! The deployment document: which document layout and bucket count the
//! database holds, so that a binary of another layout, or one built with
//! another bucket count, refuses to start instead of misreading it.

use mongodb::bson::{Document, doc};
use mongodb::options::UpdateOptions;

use super::deadline::Bounded;
use super::error::StoreError;
use super::{QUEUED_EVENTS, Store};
use crate::bucket::BUCKETS;

/// The layout of the collections this version reads and writes.
pub const LAYOUT: i32 = 2;
const COLLECTION: &str = "deployment";
const ID: &str = "layout";

pub(super) async fn check(store: &Store) -> Result<(), StoreError> {
    let deployment = store.durable_collection::<Document>(COLLECTION);
    let found = deployment
        .find_one(doc! { "_id": ID })
        .bounded("reading the deployment document", store.op_timeout)
        .await?;
    match found {
        Some(existing) => {
            let layout = existing.get_i32("layout").unwrap_or(0);
            let buckets = existing.get_i64("buckets").unwrap_or(0);
            if layout != LAYOUT || buckets != i64::from(BUCKETS) {
                return Err(StoreError::Incompatible(format!(
                    "database {} holds layout {layout} with {buckets} buckets; this version \
                     reads layout {LAYOUT} with {BUCKETS} buckets",
                    store.database_name()
                )));
            }
            Ok(())
        }
        None => {
            // Events without a deployment document come from the first
            // version, whose documents this one cannot read.
            let older = store
                .database()
                .collection::<Document>(QUEUED_EVENTS)
                .find_one(doc! {})
                .bounded("looking for events of an older layout", store.op_timeout)
                .await?;
            if older.is_some() {
                return Err(StoreError::Incompatible(format!(
                    "database {} holds events of an earlier layout; use a fresh database \
                     (or delete .mongo/data for make run)",
                    store.database_name()
                )));
            }
            deployment
                .update_one(
                    doc! { "_id": ID },
                    doc! { "$setOnInsert": { "layout": LAYOUT, "buckets": i64::from(BUCKETS) } },
                )
                .with_options(UpdateOptions::builder().upsert(true).build())
                .bounded("writing the deployment document", store.op_timeout)
                .await
                .map(|_| ())
        }
    }
}

const LOG_KEY_ID: &str = "log-pseudonym-key";

impl Store {
    /// The deployment's key for patient pseudonyms in logs: random, created
    /// by the first instance that asks, then shared by all.
    pub async fn log_pseudonym_key(&self) -> Result<Vec<u8>, StoreError> {
        let deployment = self.durable_collection::<Document>(COLLECTION);
        let fresh: String = (0..32)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        deployment
            .update_one(
                doc! { "_id": LOG_KEY_ID },
                doc! { "$setOnInsert": { "key": fresh } },
            )
            .with_options(UpdateOptions::builder().upsert(true).build())
            .bounded("creating the log pseudonym key", self.op_timeout)
            .await?;
        let stored = deployment
            .find_one(doc! { "_id": LOG_KEY_ID })
            .bounded("reading the log pseudonym key", self.op_timeout)
            .await?;
        Ok(stored
            .and_then(|d| d.get_str("key").ok().map(|k| k.as_bytes().to_vec()))
            .unwrap_or_default())
    }
}
