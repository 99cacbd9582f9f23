//! The intake transaction: the per-patient sequence number, the queued event
//! and the idempotency record are written together or not at all.

use std::time::{Duration, Instant};

use mongodb::ClientSession;
use mongodb::bson::{DateTime, Document, doc};
use mongodb::error::{TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT};
use mongodb::options::{Acknowledgment, ReturnDocument, WriteConcern};
use rand::Rng;

use super::Store;
use super::documents::{EventStatus, QueuedEvent};
use super::error::{StoreError, is_duplicate_key, is_unreachable};
use crate::event::{EventId, NewEvent};

/// How long intake keeps retrying write conflicts before answering 503.
const CONTENTION_BUDGET: Duration = Duration::from_secs(10);
const COMMIT_RETRIES: u32 = 3;

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

/// Which write of the transaction failed, to tell duplicates apart.
enum Step {
    IdempotencyRecord,
    Sequence,
    Event,
    Commit,
}

enum Attempt {
    Committed(i64),
    Duplicate(Step),
    Retry,
}

impl Store {
    /// Stores a new event durably (majority write concern) with the next
    /// sequence number of its patient. Returns only once it is committed.
    pub async fn enqueue(
        &self,
        event: &NewEvent,
        event_id: EventId,
        key: Option<&IdempotencyKey>,
    ) -> Result<EnqueueOutcome, StoreError> {
        let fingerprint = key.map(|_| event.fingerprint());
        let started = Instant::now();
        let mut tries = 0u32;
        loop {
            tries += 1;
            if let (Some(key), Some(fingerprint)) = (key, &fingerprint)
                && let Some(outcome) = self.replay(key, fingerprint).await?
            {
                return Ok(outcome);
            }
            let attempt = self
                .enqueue_once(event, event_id, key, fingerprint.as_deref())
                .await?;
            match attempt {
                Attempt::Committed(seq) => return Ok(EnqueueOutcome::Accepted { event_id, seq }),
                Attempt::Duplicate(Step::Event) => return Ok(EnqueueOutcome::AlreadyStored),
                // Another request with the same key won; the next loop replays it.
                // A first upsert of a patient's counter can collide the same way.
                Attempt::Duplicate(_) | Attempt::Retry => {}
            }
            if started.elapsed() > CONTENTION_BUDGET {
                return Err(StoreError::Contention {
                    operation: "enqueue",
                    attempts: tries,
                });
            }
            let pause = rand::rng().random_range(1..=(5 * tries.min(20)) as u64);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }

    async fn replay(
        &self,
        key: &IdempotencyKey,
        fingerprint: &str,
    ) -> Result<Option<EnqueueOutcome>, StoreError> {
        let record = self
            .idempotency
            .find_one(doc! { "_id": key.as_str() })
            .await
            .map_err(StoreError::mongo("reading an idempotency key"))?;
        Ok(record.map(|record| {
            if record.get_str("requestHash").ok() == Some(fingerprint) {
                EnqueueOutcome::Replayed {
                    event_id: record.get_str("eventId").unwrap_or_default().to_owned(),
                }
            } else {
                EnqueueOutcome::KeyReused
            }
        }))
    }

    async fn enqueue_once(
        &self,
        event: &NewEvent,
        event_id: EventId,
        key: Option<&IdempotencyKey>,
        fingerprint: Option<&str>,
    ) -> Result<Attempt, StoreError> {
        let mut session = self
            .client
            .start_session()
            .await
            .map_err(StoreError::mongo("starting a session"))?;
        session
            .start_transaction()
            .write_concern(
                WriteConcern::builder()
                    .w(Acknowledgment::Majority)
                    .journal(true)
                    .build(),
            )
            .await
            .map_err(StoreError::mongo("starting a transaction"))?;
        let result = self
            .write_all(&mut session, event, event_id, key, fingerprint)
            .await;
        let failure = match result {
            Ok(seq) => match commit(&mut session).await {
                Ok(()) => return Ok(Attempt::Committed(seq)),
                Err(e) => (Step::Commit, e),
            },
            Err(failure) => failure,
        };
        let _ = session.abort_transaction().await;
        classify(failure)
    }

    async fn write_all(
        &self,
        session: &mut ClientSession,
        event: &NewEvent,
        event_id: EventId,
        key: Option<&IdempotencyKey>,
        fingerprint: Option<&str>,
    ) -> Result<i64, (Step, mongodb::error::Error)> {
        let now = DateTime::now();
        if let (Some(key), Some(fingerprint)) = (key, fingerprint) {
            self.idempotency
                .insert_one(doc! {
                    "_id": key.as_str(),
                    "eventId": event_id.to_string(),
                    "requestHash": fingerprint,
                    "createdAt": now,
                })
                .session(&mut *session)
                .await
                .map_err(|e| (Step::IdempotencyRecord, e))?;
        }
        let counter = self
            .sequences
            .find_one_and_update(
                doc! { "_id": event.patient_id.as_str() },
                doc! { "$inc": { "seq": 1_i64 } },
            )
            .upsert(true)
            .return_document(ReturnDocument::After)
            .session(&mut *session)
            .await
            .map_err(|e| (Step::Sequence, e))?;
        let seq = counter
            .as_ref()
            .and_then(|c| c.get_i64("seq").ok())
            .unwrap_or(1);
        let data: Document = mongodb::bson::to_document(event.data.as_map()).map_err(|e| {
            (
                Step::Event,
                mongodb::error::Error::custom(format!("event data is not storable: {e}")),
            )
        })?;
        let queued = QueuedEvent {
            event_id: event_id.to_string(),
            patient_id: event.patient_id.as_str().to_owned(),
            event_type: event.event_type.as_str().to_owned(),
            data,
            ts: event.ts.as_str().to_owned(),
            seq,
            status: EventStatus::Queued,
            attempts: 0,
            last_error: None,
            accepted_at: now,
            updated_at: now,
        };
        self.queued
            .insert_one(&queued)
            .session(&mut *session)
            .await
            .map_err(|e| (Step::Event, e))?;
        Ok(seq)
    }
}

async fn commit(session: &mut ClientSession) -> Result<(), mongodb::error::Error> {
    let mut tries = 0;
    loop {
        match session.commit_transaction().await {
            Err(e)
                if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT)
                    && tries < COMMIT_RETRIES =>
            {
                tries += 1;
            }
            other => return other,
        }
    }
}

fn classify((step, error): (Step, mongodb::error::Error)) -> Result<Attempt, StoreError> {
    if is_duplicate_key(&error) {
        return Ok(Attempt::Duplicate(step));
    }
    // An unreachable server is labelled transient too, but retrying it here
    // would only delay the 503 the client needs to hear.
    if error.contains_label(TRANSIENT_TRANSACTION_ERROR) && !is_unreachable(&error) {
        return Ok(Attempt::Retry);
    }
    let operation = match step {
        Step::IdempotencyRecord => "storing an idempotency key",
        Step::Sequence => "assigning a sequence number",
        Step::Event => "storing an event",
        Step::Commit => "committing an event",
    };
    Err(StoreError::mongo(operation)(error))
}
