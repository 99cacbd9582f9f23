//! Reading outcomes back in the order they were recorded (the live outcome
//! stream's replay after a reconnect): by `processedAt`, then `eventId`.

use mongodb::bson::{DateTime, doc};

use super::Store;
use super::deadline::BoundedAll;
use super::documents::ProcessedEvent;
use super::error::StoreError;

/// A position in the outcome stream: the last outcome a client saw.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct OutcomeCursor {
    pub processed_at: DateTime,
    pub event_id: String,
}

impl OutcomeCursor {
    pub fn of(outcome: &ProcessedEvent) -> Self {
        Self {
            processed_at: outcome.processed_at,
            event_id: outcome.event_id.clone(),
        }
    }

    /// `<millis>-<eventId>`: the SSE `id` of an outcome.
    pub fn to_id(&self) -> String {
        format!("{}-{}", self.processed_at.timestamp_millis(), self.event_id)
    }

    pub fn parse(id: &str) -> Option<Self> {
        let (millis, event_id) = id.split_once('-')?;
        let millis: i64 = millis.parse().ok()?;
        crate::event::EventId::parse_str(event_id).ok()?;
        Some(Self {
            processed_at: DateTime::from_millis(millis),
            event_id: event_id.to_owned(),
        })
    }
}

impl Store {
    /// Outcomes recorded after `after` (for `client`, or all), oldest first.
    pub async fn outcomes_after(
        &self,
        after: &OutcomeCursor,
        client: Option<&str>,
        limit: i64,
    ) -> Result<Vec<ProcessedEvent>, StoreError> {
        let mut filter = doc! { "processedAt": { "$gte": after.processed_at } };
        if let Some(client) = client {
            filter.insert("client", client);
        }
        let operation = "reading outcomes to replay";
        let found: Vec<ProcessedEvent> = self
            .processed
            .find(filter)
            .sort(doc! { "processedAt": 1, "eventId": 1 })
            .limit(limit)
            .projection(doc! { "data": 0 })
            .all(operation, self.op_timeout)
            .await?;
        Ok(found
            .into_iter()
            .filter(|o| OutcomeCursor::of(o) > *after)
            .collect())
    }
}
