//! Reading outcomes back for the live outcome stream's replay after a
//! reconnect: by `processedAt`, then `eventId`. That is not commit order
//! (`processedAt` is stamped before the outcome is written, and two lanes'
//! writes can land in either order), so a replay starts [`REPLAY_OVERLAP`]
//! before the client's last id: an outcome committed after a later-stamped
//! one is sent again rather than lost.

use std::time::Duration;

use mongodb::bson::DateTime;

use super::documents::ProcessedEvent;
use super::error::StoreError;
use super::{Store, shapes};

/// How far before a client's last id a replay starts: longer than an outcome
/// takes from its `processedAt` stamp to its commit (one bounded write, a
/// few seconds at most) plus the clock skew between processors.
pub const REPLAY_OVERLAP: Duration = Duration::from_secs(10);

/// [`REPLAY_OVERLAP`] before `at`.
pub fn overlap_before(at: DateTime) -> DateTime {
    DateTime::from_millis(at.timestamp_millis() - REPLAY_OVERLAP.as_millis() as i64)
}

/// A position in the outcome stream: the last outcome a client saw.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
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

    /// Where a replay for a client whose last id was this one starts.
    pub fn replay_start(&self) -> Self {
        Self {
            processed_at: overlap_before(self.processed_at),
            event_id: String::new(),
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
        let operation = "reading outcomes to replay";
        let at = after.processed_at;
        let mut found = self
            .find_all(
                &self.processed,
                shapes::outcomes_within(at, &after.event_id, client, limit),
                operation,
            )
            .await?;
        let rest = limit - found.len() as i64;
        if rest > 0 {
            found.extend(
                self.find_all(
                    &self.processed,
                    shapes::outcomes_since(at, client, rest),
                    operation,
                )
                .await?,
            );
        }
        Ok(found)
    }
}
