//! The shapes of the documents the services keep in MongoDB.

use mongodb::bson::{DateTime, Document};
use serde::{Deserialize, Serialize};

/// Where an accepted event is in its life, as stored. An event being worked
/// on stays `queued` and carries a [`Claim`], and a parked one stays `queued`
/// with `parked: true`: neither writes an indexed field, and both keep the
/// patient's later events behind them (see [`QueuedEvent::api_status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventStatus {
    Queued,
    Processed,
    Failed,
    /// Set aside by an operator; the patient went on without it.
    Skipped,
}

impl EventStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Processed => "processed",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }
}

/// Who is working on an event, under which fencing epoch. Written by the
/// claim; every later write about the event is conditional on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// Random per claim: recognises a claim whose reply was lost.
    pub token: String,
    /// The processor instance that claimed it.
    pub owner: String,
    /// When it was claimed, by the claiming processor's clock (the base of
    /// `processedAt`).
    pub at: DateTime,
}

/// `queued_events`: every accepted event, written before the 202, with its
/// per-patient sequence number and lifecycle. `_id` is the eventId (a UUID v7,
/// so the primary key is in acceptance order).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueuedEvent {
    #[serde(rename = "_id")]
    pub id: String,
    pub event_id: String,
    /// The API client that sent it (from its API key).
    pub client: String,
    pub patient_id: String,
    pub bucket: i32,
    pub seq: i64,
    #[serde(rename = "type")]
    pub event_type: String,
    /// Absent once retention pruned the payload of a patient's last event.
    #[serde(default)]
    pub data: Document,
    pub ts: String,
    /// Uniqueness of retries and duplicates, per patient: `k:<client>:<key>`
    /// (Idempotency-Key), `h:<client>:<digest>` (content within the duplicate
    /// window), `m:<client>:<sender digest>:<content digest>` (an HL7
    /// message), `e:<eventId>` (neither), `x:<eventId>` (expired).
    pub intake_key: String,
    /// Fingerprint of the normalized payload sent with an Idempotency-Key
    /// (of an HL7 message: of its content apart from MSH-7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_hash: Option<String>,
    /// W3C trace context of the request that accepted it (for log correlation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Where it came from when not from `POST /events` (an MLLP listener).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<EventSource>,
    pub status: EventStatus,
    /// Attempts that started (each claim that went on to run counts one).
    pub attempts: i32,
    /// Revision: every write to the event after its insert adds one. A claim
    /// applies only to the revision it read, so what it decided from that
    /// read (recorded or not) is still true when it lands.
    #[serde(default)]
    pub rev: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// An operator action's audit entry, written in the same update as the
    /// action and moved to `audit_log` right after (an outbox: a crash
    /// between the two leaves it here, and the next read of the audit log,
    /// or the next action on this event, moves it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_audit: Option<Document>,
    /// Fencing epoch of the bucket lease under which it was last claimed (0: never).
    pub epoch: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<Claim>,
    /// The outcome, recorded before `processed_events` is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ProcessingResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processed_at: Option<DateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processing_duration_ms: Option<i64>,
    /// When it reached a final status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime>,
    /// 1 for the first run; an operator's retry starts the next.
    pub run: i32,
    /// Failed for good under `ON_FAILURE=park`: the patient waits behind it
    /// until an operator retries or skips it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub parked: bool,
    /// `<claim token>/<write>` of the fenced write that last changed it
    /// (recognises a write that was applied although its reply was lost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced_by: Option<String>,
    /// Set when retention removed the payload (the patient's last event is
    /// kept as its sequence high-water mark).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pruned: bool,
    pub accepted_at: DateTime,
    pub updated_at: DateTime,
    /// Set by a read that left the payload out, too large to read ahead
    /// ([`super::shapes::next_unfinished`]); never stored.
    #[serde(rename = "_dataLeftOut", default, skip_serializing)]
    pub data_left_out: bool,
}

/// The origin of an event that arrived as an HL7 v2 message: the listener
/// and the sender's id of the message (MSH-10, MSH-3, MSH-4), so operators
/// can find it by the id the sending system logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventSource {
    /// `mllp`
    #[schema(example = "mllp")]
    pub kind: String,
    /// The listener as configured: `client@host:port`.
    #[schema(example = "lab-a@0.0.0.0:2575")]
    pub listener: String,
    /// MSH-10.
    pub control_id: String,
    /// MSH-3, its components joined by `^`.
    pub sending_application: String,
    /// MSH-4, its components joined by `^`.
    pub sending_facility: String,
    /// Another stored message of this client and sender had the same
    /// control id with different content (a sender whose counter restarted,
    /// or that reuses ids): this one was stored as a new event all the same.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reused_control_id: bool,
}

/// Where an event is in its life, as the API reports it: `queued` (waiting
/// for its turn: the patient's earlier events come first), `processing` (an
/// attempt is running), `processed` (`result` says how), `failed` (given up
/// after `MAX_ATTEMPTS`; the patient's later events went on), `parked` (given
/// up with `ON_FAILURE=park`: the patient's later events wait for an
/// operator), `skipped` (set aside by an operator).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ApiStatus {
    Queued,
    Processing,
    Processed,
    Failed,
    Parked,
    Skipped,
}

impl ApiStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Processing => "processing",
            Self::Processed => "processed",
            Self::Failed => "failed",
            Self::Parked => "parked",
            Self::Skipped => "skipped",
        }
    }
}

impl QueuedEvent {
    /// The status the API reports: `parked`, or `processing` while a claim
    /// is on a queued event.
    pub fn api_status(&self) -> ApiStatus {
        match (self.status, self.parked, &self.claim) {
            // An operator's skip is recorded at once; the owner's lane
            // writes its outcome and closes it moments later.
            (EventStatus::Queued, _, _) if self.is_skip_pending() => ApiStatus::Skipped,
            (EventStatus::Queued, true, _) => ApiStatus::Parked,
            (EventStatus::Queued, false, Some(_)) => ApiStatus::Processing,
            (EventStatus::Queued, false, None) => ApiStatus::Queued,
            (EventStatus::Processed, _, _) => ApiStatus::Processed,
            (EventStatus::Failed, _, _) => ApiStatus::Failed,
            (EventStatus::Skipped, _, _) => ApiStatus::Skipped,
        }
    }

    /// Skipped by an operator, its closing left to the owner's lane.
    pub fn is_skip_pending(&self) -> bool {
        self.status == EventStatus::Queued
            && self
                .result
                .as_ref()
                .is_some_and(|r| r.status == ProcessingResult::SKIPPED)
    }
}

/// The outcome recorded for an event, as in the original service (and as
/// the API shows it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProcessingResult {
    /// `success`, `failed` or `skipped`.
    #[schema(example = "success")]
    pub status: String,
    #[schema(example = "event processed successfully")]
    pub message: String,
    /// Why it failed, for a failed outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ProcessingResult {
    pub const SUCCESS: &'static str = "success";
    pub const FAILED: &'static str = "failed";
    pub const SKIPPED: &'static str = "skipped";

    pub fn success() -> Self {
        Self {
            status: Self::SUCCESS.to_owned(),
            message: "event processed successfully".to_owned(),
            error: None,
        }
    }

    pub fn failed(attempts: i32, error: String) -> Self {
        Self {
            status: Self::FAILED.to_owned(),
            message: format!("event processing failed after {attempts} attempt(s)"),
            error: Some(error),
        }
    }

    pub fn skipped(reason: &str) -> Self {
        Self {
            status: Self::SKIPPED.to_owned(),
            message: format!("skipped by an operator: {reason}"),
            error: None,
        }
    }

    pub fn is_success(&self) -> bool {
        self.status == Self::SUCCESS
    }

    /// As a client sees it: the outcome, without what is for operators (a
    /// downstream's or the database's error text, an operator's reason for
    /// a skip), which can name systems, hosts or other patients.
    pub fn for_client(&self) -> Self {
        Self {
            status: self.status.clone(),
            message: match self.status.as_str() {
                Self::SKIPPED => "skipped by an operator".to_owned(),
                _ => self.message.clone(),
            },
            error: None,
        }
    }
}

/// `processed_events`: exactly one per accepted event (unique `eventId`),
/// with the fields of the original service, plus where the event sits
/// (`bucket`, `seq`, `client`) and which run produced the outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessedEvent {
    pub event_id: String,
    pub patient_id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(default)]
    pub data: Document,
    pub ts: String,
    pub processed_at: DateTime,
    pub processing_duration_ms: i64,
    pub result: ProcessingResult,
    pub bucket: i32,
    pub seq: i64,
    pub client: String,
    pub run: i32,
    pub attempts: i32,
    /// Earlier runs' outcomes, oldest first (kept when an operator retries).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Document>,
    pub created_at: DateTime,
    pub updated_at: DateTime,
}

impl ProcessedEvent {
    /// The outcome document of `event`'s current run, from what its record says.
    pub fn from_recorded(event: &QueuedEvent) -> Option<Self> {
        let result = event.result.clone()?;
        let processed_at = event.processed_at?;
        Some(Self {
            event_id: event.event_id.clone(),
            patient_id: event.patient_id.clone(),
            event_type: event.event_type.clone(),
            data: event.data.clone(),
            ts: event.ts.clone(),
            processed_at,
            processing_duration_ms: event.processing_duration_ms.unwrap_or(0),
            result,
            bucket: event.bucket,
            seq: event.seq,
            client: event.client.clone(),
            run: event.run,
            attempts: event.attempts,
            history: Vec::new(),
            created_at: processed_at,
            updated_at: processed_at,
        })
    }
}
