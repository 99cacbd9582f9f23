//! Reading the database directly to check what the services did.

use futures_util::TryStreamExt;
use mongodb::bson::{Document, doc};
use mongodb::{Client, Database};

pub struct Db {
    db: Database,
}

impl Db {
    pub async fn connect(uri: &str) -> Self {
        let client = Client::with_uri_str(uri)
            .await
            .expect("connect to test database");
        let name = uri.rsplit('/').next().expect("database in uri").to_owned();
        Self {
            db: client.database(&name),
        }
    }

    pub async fn count(&self, collection: &str, filter: Document) -> u64 {
        self.db
            .collection::<Document>(collection)
            .count_documents(filter)
            .await
            .expect("count")
    }

    pub async fn insert(&self, collection: &str, document: Document) {
        self.db
            .collection::<Document>(collection)
            .insert_one(document)
            .await
            .expect("insert");
    }

    pub async fn update_many(&self, collection: &str, filter: Document, update: Document) {
        self.db
            .collection::<Document>(collection)
            .update_many(filter, update)
            .await
            .expect("update");
    }

    pub async fn delete_many(&self, collection: &str, filter: Document) {
        self.db
            .collection::<Document>(collection)
            .delete_many(filter)
            .await
            .expect("delete");
    }

    pub async fn processed_count(&self) -> u64 {
        self.count("processed_events", doc! {}).await
    }

    /// Waits until `n` queued events are closed as processed. An event's
    /// outcome document is written before its close, so a count of outcomes
    /// can be reached while the last close is still on its way.
    pub async fn wait_closed(&self, n: u64) {
        super::wait_until(
            std::time::Duration::from_secs(10),
            &format!("{n} events closed as processed"),
            || async {
                self.count("queued_events", doc! { "status": "processed" })
                    .await
                    == n
            },
        )
        .await;
    }

    pub async fn find(&self, collection: &str, filter: Document, sort: Document) -> Vec<Document> {
        self.db
            .collection::<Document>(collection)
            .find(filter)
            .sort(sort)
            .await
            .expect("find")
            .try_collect()
            .await
            .expect("cursor")
    }

    /// A patient's stored events (`queued_events`), in sequence order.
    pub async fn events_of(&self, patient: &str) -> Vec<Document> {
        self.find(
            "queued_events",
            doc! { "patientId": patient },
            doc! { "seq": 1 },
        )
        .await
    }

    pub async fn index_names(&self, collection: &str) -> Vec<String> {
        self.db
            .collection::<Document>(collection)
            .list_index_names()
            .await
            .expect("list indexes")
    }

    /// Checks that each event in `expected` (one patient's eventIds in the
    /// order their 202s came back) has exactly one processed document, that
    /// they were processed in that order, and one at a time.
    pub async fn assert_processed_in_order(&self, patient: &str, expected: &[String]) {
        let docs = self
            .find(
                "processed_events",
                doc! { "patientId": patient },
                doc! { "processedAt": 1, "_id": 1 },
            )
            .await;
        let ids: Vec<String> = docs
            .iter()
            .map(|d| d.get_str("eventId").expect("eventId").to_owned())
            .collect();
        assert_eq!(
            ids, expected,
            "patient {patient}: processed order differs from acceptance order"
        );
        for pair in docs.windows(2) {
            let previous_end = pair[0]
                .get_datetime("processedAt")
                .expect("processedAt")
                .timestamp_millis();
            let end = pair[1]
                .get_datetime("processedAt")
                .expect("processedAt")
                .timestamp_millis();
            let duration = pair[1].get_i64("processingDurationMs").expect("duration");
            // Processing of the next event started after the previous one ended
            // (1 ms of slack for millisecond rounding of both figures).
            assert!(
                end - duration >= previous_end - 1,
                "patient {patient}: event {} overlapped the previous one",
                pair[1].get_str("eventId").unwrap_or("?")
            );
        }
    }
}
