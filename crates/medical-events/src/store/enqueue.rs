//! Intake: one single-document insert per event carries its per-patient
//! sequence number and its intake key (the idempotency or duplicate record),
//! so an event is stored whole or not at all without a multi-document
//! transaction. (A transaction would leave locks behind when an ingest
//! process dies mid-way: MongoDB keeps an abandoned transaction open for up
//! to a minute, stalling that patient.)
//!
//! Uniqueness does the coordination: `{bucket, patientId, seq}` is unique, so
//! two writers that pick the same next number cannot both succeed; the loser
//! reads again and takes the following number. Only successful inserts use a
//! number, so the sequence has no gaps. `{bucket, patientId, intakeKey}` is
//! unique too: a retry (same Idempotency-Key) or a duplicate (same content
//! from the same client within the window) collides with the first event.

use std::time::{Duration, Instant};

use mongodb::bson::{DateTime, Document, doc};
use rand::Rng;

use super::Store;
use super::deadline::Bounded;
use super::documents::{EventSource, EventStatus, QueuedEvent};
use super::error::StoreError;
use super::group_commit::Insert;
use super::indexes::UniqueIndex;
use super::shapes::{self, Shape};
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

/// How long retries are recognised (published in the README).
#[derive(Debug, Clone, Copy)]
pub struct IntakePolicy {
    /// An Idempotency-Key is honoured this long after its first use.
    pub idempotency_ttl: Duration,
    /// A keyless event with the same content from the same client within this
    /// window is a duplicate; zero turns content deduplication off.
    pub dedup_window: Duration,
    /// How many of one patient's unfinished events one HTTP client may
    /// have (`MAX_UNFINISHED_PER_CLIENT_PATIENT`), so that one client
    /// cannot queue the patient's lane for hours ahead of another's.
    pub max_unfinished_per_client_patient: usize,
}

impl Default for IntakePolicy {
    fn default() -> Self {
        Self {
            idempotency_ttl: Duration::from_secs(168 * 3600),
            dedup_window: Duration::from_secs(300),
            max_unfinished_per_client_patient: 1_000,
        }
    }
}

/// What is stored for one accepted event besides the event itself.
#[derive(Debug, Clone, Copy)]
pub struct Submission<'a> {
    pub event: &'a NewEvent,
    pub event_id: EventId,
    /// The API client that sent it.
    pub client: &'a str,
    pub key: Option<&'a IdempotencyKey>,
    /// Whether a keyless event is checked for duplicate content (ingest:
    /// yes; the processor's `/queue`, which names its eventId: no).
    pub deduplicate: bool,
    /// The W3C `traceparent` of the accepting request.
    pub traceparent: Option<&'a str>,
    /// About how large the event is (its request body), for batching.
    pub size_hint: usize,
    /// Set for an HL7 message: its source and its content fingerprint, the
    /// idempotency key of a message (a resend is recognised by them).
    pub origin: Option<&'a Hl7Origin>,
}

/// What identifies an HL7 message for intake: where it came from (with the
/// sender's id of it) and a fingerprint of its content apart from MSH-7.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hl7Origin {
    pub source: EventSource,
    pub fingerprint: String,
}

impl Hl7Origin {
    /// The sender's id of the message, one unambiguous string.
    pub fn sender_key(&self) -> String {
        serde_json::json!([
            self.source.sending_application,
            self.source.sending_facility,
            self.source.control_id
        ])
        .to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnqueueOutcome {
    /// Stored now, with this per-patient sequence number.
    Accepted { event_id: EventId, seq: i64 },
    /// A retry or a duplicate of this stored event.
    Replayed { event_id: String },
    /// The Idempotency-Key was used before for a different payload.
    KeyReused,
    /// An event with this id is already stored (a repeated `POST /queue`).
    AlreadyStored,
    /// Not stored: the client has `limit` unfinished events of the patient
    /// already (`MAX_UNFINISHED_PER_CLIENT_PATIENT`; from intake, never
    /// from [`Store::enqueue`]).
    OverShare { limit: usize },
}

/// How the intake key of a submission works.
pub(super) enum KeyKind {
    Idempotency { fingerprint: String },
    Content,
    None,
}

impl Store {
    /// Stores a new event durably (majority, journaled) with the next
    /// sequence number of its patient. Returns only once its fate is known.
    ///
    /// `next_seq` is the caller's guess of that number (what it recently
    /// stored for the patient, plus one), or 0 to read it first. A right
    /// guess costs one round trip; a wrong one is refused by the unique index
    /// and corrected from the store. A guess can only be too low, never skip
    /// a number, because it comes from a number that was stored, and never
    /// falls into a gap retention made, because retention leaves recent
    /// events and each patient's last one alone.
    pub async fn enqueue(
        &self,
        submission: &Submission<'_>,
        next_seq: i64,
        policy: &IntakePolicy,
    ) -> Result<EnqueueOutcome, StoreError> {
        self.enqueue_within(submission, next_seq, policy, None)
            .await
    }

    /// [`Store::enqueue`] within a request's time limit: each step (a read,
    /// the insert) starts only while the time left before `deadline` covers
    /// it and everything that must follow it (an insert is followed by the
    /// read that settles it if its answer is lost). Once the insert is sent,
    /// its fate is waited for. So past the deadline nothing was sent that
    /// could still land, and [`StoreError::NoTimeLeft`] is the truth.
    pub async fn enqueue_within(
        &self,
        submission: &Submission<'_>,
        next_seq: i64,
        policy: &IntakePolicy,
        deadline: Option<Instant>,
    ) -> Result<EnqueueOutcome, StoreError> {
        let room_for =
            |steps: u32, operation: &'static str| self.room_for(deadline, steps, operation);
        let event = submission.event;
        let event_id = submission.event_id.to_string();
        let bucket = crate::bucket::of(event.patient_id.as_str());
        let (intake_key, kind) = intake_key(submission, policy);
        let data: Document = mongodb::bson::to_document(event.data.as_map())?;
        let started = Instant::now();
        let mut seq = if next_seq > 0 {
            next_seq
        } else {
            room_for(3, "the event")?;
            self.last_seq(bucket, event.patient_id.as_str()).await? + 1
        };
        let mut tries = 0u32;
        loop {
            if tries > 0 && started.elapsed() > CONTENTION_BUDGET {
                return Err(StoreError::Contention {
                    operation: "enqueue",
                    attempts: tries,
                });
            }
            tries += 1;
            let now = DateTime::now();
            let queued = QueuedEvent {
                id: event_id.clone(),
                event_id: event_id.clone(),
                client: submission.client.to_owned(),
                patient_id: event.patient_id.as_str().to_owned(),
                bucket,
                seq,
                event_type: event.event_type.as_str().to_owned(),
                data: data.clone(),
                ts: event.ts.as_str().to_owned(),
                intake_key: intake_key.clone(),
                request_hash: match &kind {
                    KeyKind::Idempotency { fingerprint } => Some(fingerprint.clone()),
                    _ => None,
                },
                traceparent: submission.traceparent.map(str::to_owned),
                source: submission.origin.map(|origin| origin.source.clone()),
                status: EventStatus::Queued,
                attempts: 0,
                last_error: None,
                pending_audit: None,
                epoch: 0,
                claim: None,
                result: None,
                processed_at: None,
                processing_duration_ms: None,
                finished_at: None,
                run: 1,
                parked: false,
                fenced_by: None,
                rev: 0,
                pruned: false,
                accepted_at: now,
                updated_at: now,
                data_left_out: false,
            };
            room_for(2, "the event")?;
            // Sent by then, the insert and a settling read end by the deadline.
            let send_by = deadline.map(|deadline| deadline - self.op_timeout * 2);
            let index = match self
                .inserts
                .insert(queued, submission.size_hint, send_by)
                .await
            {
                Ok(Insert::Stored) => {
                    return Ok(EnqueueOutcome::Accepted {
                        event_id: submission.event_id,
                        seq,
                    });
                }
                Ok(Insert::Duplicate(index)) => index,
                Err(error) if error.is_ambiguous() => {
                    return self.settle(submission.event_id, error).await;
                }
                Err(error) => return Err(error),
            };
            // Which unique index refused it? The intake key (a retry or a
            // duplicate: replay it), the eventId (already stored), or the
            // sequence number (a stale guess or another writer: take the next).
            match index {
                UniqueIndex::IntakeKey | UniqueIndex::Other => {
                    let holder = self
                        .settle_intake_key(
                            bucket,
                            event.patient_id.as_str(),
                            &intake_key,
                            &kind,
                            policy,
                        )
                        .await?;
                    match holder {
                        KeyHolder::Replay(outcome) => return Ok(outcome),
                        KeyHolder::Freed => continue,
                        KeyHolder::Absent => {}
                    }
                    if self.find_event(&event_id).await?.is_some() {
                        return Ok(EnqueueOutcome::AlreadyStored);
                    }
                    if index == UniqueIndex::IntakeKey {
                        // Its holder went away meanwhile (pruned): try again.
                        continue;
                    }
                }
                UniqueIndex::Id => return Ok(EnqueueOutcome::AlreadyStored),
                UniqueIndex::PatientSeq | UniqueIndex::OutcomeEvent => {}
            }
            if tries > 2 {
                // Still colliding after a fresh read: another instance is
                // writing the same patient; step aside for a moment.
                let pause = rand::rng().random_range(0..=(2 * tries.min(25)) as u64);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            room_for(3, "the event")?;
            seq = self.last_seq(bucket, event.patient_id.as_str()).await? + 1;
        }
    }

    /// Whether `steps` more bounded operations fit before `deadline`:
    /// [`StoreError::NoTimeLeft`] (nothing sent) if not.
    pub fn room_for(
        &self,
        deadline: Option<Instant>,
        steps: u32,
        operation: &'static str,
    ) -> Result<(), StoreError> {
        match deadline {
            Some(deadline) if Instant::now() + self.op_timeout * steps > deadline => {
                Err(StoreError::NoTimeLeft { operation })
            }
            _ => Ok(()),
        }
    }

    /// The patient's highest stored sequence number (0 if none), read with
    /// majority read concern so a number from a rolled-back write is never used.
    pub(crate) async fn last_seq(&self, bucket: i32, patient_id: &str) -> Result<i64, StoreError> {
        let shape = shapes::last_seq(bucket, patient_id);
        let last = self
            .read_seq(shape, "reading a patient's last sequence number")
            .await?;
        Ok(last.unwrap_or(0))
    }

    /// The `seq` of the one event a sorted, projected shape finds, if any.
    pub(super) async fn read_seq(
        &self,
        shape: Shape,
        operation: &'static str,
    ) -> Result<Option<i64>, StoreError> {
        let found = self
            .queued
            .clone_with_type::<Document>()
            .find_one(shape.filter)
            .sort(shape.sort.unwrap_or_default())
            .projection(shape.projection.unwrap_or_default())
            .max_time(self.op_timeout)
            .bounded(operation, self.op_timeout)
            .await?;
        Ok(found.and_then(|d| d.get_i64("seq").ok()))
    }

    /// After an insert whose fate is unknown: the event is stored if a
    /// majority read finds it; otherwise nobody can tell yet.
    async fn settle(
        &self,
        event_id: EventId,
        cause: StoreError,
    ) -> Result<EnqueueOutcome, StoreError> {
        let id = event_id.to_string();
        tracing::warn!(eventId = %id, error = %cause, "intake insert outcome unknown; settling");
        match self.find_event(&id).await {
            Ok(Some(stored)) => Ok(EnqueueOutcome::Accepted {
                event_id,
                seq: stored.seq,
            }),
            Ok(None) | Err(_) => Err(StoreError::OutcomeUnknown {
                event_id: id,
                cause: cause.to_string(),
            }),
        }
    }

    /// Who holds an intake key that refused an insert.
    async fn settle_intake_key(
        &self,
        bucket: i32,
        patient: &str,
        key: &str,
        kind: &KeyKind,
        policy: &IntakePolicy,
    ) -> Result<KeyHolder, StoreError> {
        let shape = shapes::intake_key(bucket, patient, key);
        let Some(holder) = self
            .queued
            .find_one(shape.filter)
            .max_time(self.op_timeout)
            .bounded("reading an intake key", self.op_timeout)
            .await?
        else {
            return Ok(KeyHolder::Absent);
        };
        let window = match kind {
            KeyKind::Idempotency { .. } => policy.idempotency_ttl,
            KeyKind::Content => policy.dedup_window,
            KeyKind::None => return Ok(KeyHolder::Absent),
        };
        let age = DateTime::now().timestamp_millis() - holder.accepted_at.timestamp_millis();
        if age > window.as_millis() as i64 {
            // Expired: retire the key (only if it is still that event's), then insert.
            self.queued
                .update_one(
                    doc! { "_id": &holder.id, "intakeKey": key },
                    doc! {
                        "$set": { "intakeKey": format!("x:{}", holder.id) },
                        "$inc": super::lifecycle::bump_rev(),
                    },
                )
                .bounded("retiring an expired intake key", self.op_timeout)
                .await?;
            return Ok(KeyHolder::Freed);
        }
        Ok(KeyHolder::Replay(match kind {
            KeyKind::Idempotency { fingerprint }
                if holder.request_hash.as_deref() != Some(fingerprint.as_str()) =>
            {
                EnqueueOutcome::KeyReused
            }
            _ => EnqueueOutcome::Replayed {
                event_id: holder.event_id,
            },
        }))
    }
}

enum KeyHolder {
    Replay(EnqueueOutcome),
    /// Its holder had expired and gave it up.
    Freed,
    Absent,
}

pub(super) fn intake_key(submission: &Submission<'_>, policy: &IntakePolicy) -> (String, KeyKind) {
    let client = submission.client;
    if let Some(origin) = submission.origin {
        // An HL7 message: the sender's id with the content's fingerprint, so
        // a resend replays and a reused control id with other content does
        // not collide (it is stored, marked). Honoured as long as a key.
        use sha2::{Digest, Sha256};
        let sender = format!("{:x}", Sha256::digest(origin.sender_key().as_bytes()));
        return (
            format!("m:{client}:{sender}:{}", origin.fingerprint),
            KeyKind::Idempotency {
                fingerprint: origin.fingerprint.clone(),
            },
        );
    }
    match submission.key {
        Some(key) => (
            format!("k:{client}:{}", key.as_str()),
            KeyKind::Idempotency {
                fingerprint: submission.event.fingerprint(),
            },
        ),
        None if submission.deduplicate && !policy.dedup_window.is_zero() => (
            format!("h:{client}:{}", submission.event.fingerprint()),
            KeyKind::Content,
        ),
        None => (format!("e:{}", submission.event_id), KeyKind::None),
    }
}
