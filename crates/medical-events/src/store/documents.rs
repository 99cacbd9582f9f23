//! The shapes of the documents the services keep in MongoDB.

use mongodb::bson::{DateTime, Document};
use serde::{Deserialize, Serialize};

/// Where an accepted event is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventStatus {
    Queued,
    Processing,
    Processed,
    Failed,
}

impl EventStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Processing => "processing",
            Self::Processed => "processed",
            Self::Failed => "failed",
        }
    }
}

/// `queued_events`: every accepted event, written before the 202, with its
/// per-patient sequence number and lifecycle.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueuedEvent {
    pub event_id: String,
    pub patient_id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub data: Document,
    pub ts: String,
    pub seq: i64,
    pub status: EventStatus,
    pub attempts: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The client's `Idempotency-Key`, unique where present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Fingerprint of the normalized payload sent with that key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_hash: Option<String>,
    /// W3C trace context of the request that accepted it (for log correlation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    pub accepted_at: DateTime,
    pub updated_at: DateTime,
}

/// The outcome recorded for an event, as in the original service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessingResult {
    pub status: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ProcessingResult {
    pub const SUCCESS: &'static str = "success";
    pub const FAILED: &'static str = "failed";

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

    pub fn is_success(&self) -> bool {
        self.status == Self::SUCCESS
    }
}

/// `processed_events`: exactly one per accepted event (unique `eventId`),
/// with the fields of the original service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessedEvent {
    pub event_id: String,
    pub patient_id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub data: Document,
    pub ts: String,
    pub processed_at: DateTime,
    pub processing_duration_ms: i64,
    pub result: ProcessingResult,
    pub created_at: DateTime,
    pub updated_at: DateTime,
}

impl ProcessedEvent {
    pub fn from_queued(event: &QueuedEvent, duration_ms: i64, result: ProcessingResult) -> Self {
        let now = DateTime::now();
        Self {
            event_id: event.event_id.clone(),
            patient_id: event.patient_id.clone(),
            event_type: event.event_type.clone(),
            data: event.data.clone(),
            ts: event.ts.clone(),
            processed_at: now,
            processing_duration_ms: duration_ms,
            result,
            created_at: now,
            updated_at: now,
        }
    }
}
