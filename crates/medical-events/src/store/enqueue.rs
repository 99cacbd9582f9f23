//! Intake: one single-document insert per event carries its per-patient
//! sequence number and its idempotency record, so an event is stored whole
//! or not at all without a multi-document transaction. (A transaction would
//! leave locks behind when an ingest process dies mid-way: MongoDB keeps an
//! abandoned transaction open for up to a minute, stalling that patient.)
//!
//! Uniqueness does the coordination: `{patientId, seq}` is unique, so two
//! writers that pick the same next number cannot both succeed; the loser
//! reads again and takes the following number. Only successful inserts use
//! a number, so the sequence has no gaps.

use std::time::{Duration, Instant};

use mongodb::bson::{DateTime, Document, doc};
use rand::Rng;

use super::Store;
use super::deadline::Bounded;
use super::documents::{EventStatus, QueuedEvent};
use super::error::{StoreError, is_duplicate_key};
use crate::event::{EventId, NewEvent};

/// How long intake keeps retrying sequence collisions before answering 503.
const CONTENTION_BUDGET: Duration = Duration::from_secs(10);

/// A client's `Idempotency-Key` header: 1-255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const MAX_CHARS: usize = 255;

    pub fn parse(raw: &[u8]) -> Result<Self, String> {
        if raw.is_empty() || raw.len() > Self::MAX_CHARS {
            return Err(format!("must be 1-{} characters", Self::MAX_CHARS));
        }
        if !raw.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
            return Err("must be visible ASCII characters".to_owned());
        }
        let text = String::from_utf8_lossy(raw).into_owned();
        if text.trim().is_empty() {
            return Err("must not be blank".to_owned());
        }
        Ok(Self(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What is stored for one accepted event besides the event itself.
#[derive(Debug, Clone, Copy)]
pub struct Submission<'a> {
    pub event: &'a NewEvent,
    pub event_id: EventId,
    pub key: Option<&'a IdempotencyKey>,
    /// The W3C `traceparent` of the accepting request.
    pub traceparent: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnqueueOutcome {
    /// Stored now, with this per-patient sequence number.
    Accepted { event_id: EventId, seq: i64 },
    /// The idempotency key was used before for the same payload.
    Replayed { event_id: String },
    /// The idempotency key was used before for a different payload.
    KeyReused,
    /// An event with this id is already stored (a repeated `POST /queue`).
    AlreadyStored,
}

impl Store {
    /// Stores a new event durably (majority, journaled) with the next
    /// sequence number of its patient. Returns only once it is stored.
    ///
    /// `next_seq` is the caller's guess of that number (what it last stored
    /// for the patient, plus one; 1 for a patient it has not seen). A right
    /// guess costs one round trip; a wrong one is refused by the unique index
    /// and corrected from the store. A guess can only be too low, never skip
    /// a number, because it comes from a number that was stored.
    pub async fn enqueue(
        &self,
        submission: &Submission<'_>,
        next_seq: i64,
    ) -> Result<EnqueueOutcome, StoreError> {
        let Submission {
            event,
            event_id,
            key,
            traceparent,
        } = *submission;
        let fingerprint = key.map(|_| event.fingerprint());
        let data: Document = mongodb::bson::to_document(event.data.as_map())?;
        let started = Instant::now();
        let mut seq = next_seq.max(1);
        let mut tries = 0u32;
        loop {
            tries += 1;
            let now = DateTime::now();
            let queued = QueuedEvent {
                event_id: event_id.to_string(),
                patient_id: event.patient_id.as_str().to_owned(),
                event_type: event.event_type.as_str().to_owned(),
                data: data.clone(),
                ts: event.ts.as_str().to_owned(),
                seq,
                status: EventStatus::Queued,
                attempts: 0,
                last_error: None,
                idempotency_key: key.map(|k| k.as_str().to_owned()),
                request_hash: fingerprint.clone(),
                traceparent: traceparent.map(str::to_owned),
                accepted_at: now,
                updated_at: now,
            };
            let inserted = self
                .queued
                .insert_one(&queued)
                .into_future()
                .bounded_raw("storing an event", self.op_timeout)
                .await?;
            match inserted {
                Ok(_) => return Ok(EnqueueOutcome::Accepted { event_id, seq }),
                Err(e) if is_duplicate_key(&e) => {}
                Err(e) => return Err(StoreError::mongo("storing an event")(e)),
            }
            // Which unique index refused it? The idempotency key (a retry:
            // replay it), the eventId (already stored), or the sequence
            // number (a stale guess or another writer: take the next one).
            if let (Some(key), Some(fingerprint)) = (key, &fingerprint) {
                if let Some(outcome) = self.replay(key, fingerprint).await? {
                    return Ok(outcome);
                }
            } else if self.find_event(&queued.event_id).await?.is_some() {
                return Ok(EnqueueOutcome::AlreadyStored);
            }
            if started.elapsed() > CONTENTION_BUDGET {
                return Err(StoreError::Contention {
                    operation: "enqueue",
                    attempts: tries,
                });
            }
            if tries > 2 {
                // Still colliding after a fresh read: another instance is
                // writing the same patient; step aside for a moment.
                let pause = rand::rng().random_range(0..=(2 * tries.min(25)) as u64);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            seq = self.last_seq(event.patient_id.as_str()).await? + 1;
        }
    }

    async fn last_seq(&self, patient_id: &str) -> Result<i64, StoreError> {
        let last = self
            .queued
            .clone_with_type::<Document>()
            .find_one(doc! { "patientId": patient_id })
            .sort(doc! { "seq": -1 })
            .projection(doc! { "seq": 1, "_id": 0 })
            .await
            .map_err(StoreError::mongo(
                "reading a patient's last sequence number",
            ))?;
        Ok(last.and_then(|d| d.get_i64("seq").ok()).unwrap_or(0))
    }

    async fn replay(
        &self,
        key: &IdempotencyKey,
        fingerprint: &str,
    ) -> Result<Option<EnqueueOutcome>, StoreError> {
        let earlier = self
            .queued
            .find_one(doc! { "idempotencyKey": key.as_str() })
            .bounded("reading an idempotency key", self.op_timeout)
            .await?;
        Ok(earlier.map(|earlier| {
            if earlier.request_hash.as_deref() == Some(fingerprint) {
                EnqueueOutcome::Replayed {
                    event_id: earlier.event_id,
                }
            } else {
                EnqueueOutcome::KeyReused
            }
        }))
    }
}
