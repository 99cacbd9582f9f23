//! Accepting an event: one durable, sequenced write per event, serialized per
//! patient inside this process so its own requests never conflict with each
//! other in the database (other instances are ordered by the unique index).
//!
//! The write runs in a task of its own, holding the patient's lock until the
//! write has settled: a request abandoned by its client (or cut by anything
//! else) never leaves an insert in flight while the next request of the
//! patient goes ahead. And it starts a step only while the request's time
//! limit still covers that step and everything that must follow it, so the
//! answer is never "nothing stored" for a write that may yet land.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use crate::event::{EventId, NewEvent, PatientId};
use crate::store::{
    EnqueueOutcome, Hl7Origin, IdempotencyKey, IntakePolicy, Store, StoreError, Submission,
};

/// Lock stripes: bounded memory whatever the number of patients; two
/// patients share a stripe rarely and then only wait a few milliseconds.
const STRIPES: usize = 1024;
/// Patients whose last sequence number a stripe remembers (bounded memory:
/// a forgotten patient costs one extra read on its next event).
const REMEMBERED_PER_STRIPE: usize = 64;
/// How long a remembered number is trusted as a guess. Retention never
/// removes an event younger than an hour, so a guess this recent can only
/// be too low (refused by the unique index), never land in a pruned gap.
const GUESS_HORIZON: Duration = Duration::from_secs(60);

pub struct Intake {
    store: Store,
    policy: IntakePolicy,
    stripes: Vec<Mutex<LastSeqs>>,
}

/// The last sequence number this process stored, per patient of a stripe,
/// and when.
type LastSeqs = HashMap<String, (i64, Instant)>;

/// An event to store and what comes with it, owned: its write may outlive
/// the request that asked for it.
#[derive(Debug, Clone)]
pub struct IntakeRequest {
    pub event: NewEvent,
    pub event_id: EventId,
    /// The API client that sent it.
    pub client: Arc<str>,
    pub key: Option<IdempotencyKey>,
    /// Whether a keyless event is checked for duplicate content.
    pub deduplicate: bool,
    /// The W3C `traceparent` of the accepting request.
    pub traceparent: Option<String>,
    /// About how large the event is (its request body), for batching.
    pub size_hint: usize,
    /// Set for an HL7 message (see [`Hl7Origin`]).
    pub origin: Option<Hl7Origin>,
}

impl IntakeRequest {
    fn submission(&self) -> Submission<'_> {
        Submission {
            event: &self.event,
            event_id: self.event_id,
            client: &self.client,
            key: self.key.as_ref(),
            deduplicate: self.deduplicate,
            traceparent: self.traceparent.as_deref(),
            size_hint: self.size_hint,
            origin: self.origin.as_ref(),
        }
    }
}

impl Intake {
    pub fn new(store: Store, policy: IntakePolicy) -> Self {
        Self {
            store,
            policy,
            stripes: (0..STRIPES).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn policy(&self) -> &IntakePolicy {
        &self.policy
    }

    /// Stores the event before returning (and returns the request, for
    /// what the caller does next). The tokio mutex is fair, so one
    /// patient's requests are sequenced in the order they arrived here.
    ///
    /// `deadline`: when the request's answer is due. Nothing is sent to the
    /// database unless the time left covers the write and the read that
    /// settles it; then the write is waited for, whatever the caller does.
    pub async fn submit(
        self: &Arc<Self>,
        request: IntakeRequest,
        deadline: Option<Instant>,
    ) -> Result<(EnqueueOutcome, IntakeRequest), StoreError> {
        let event_id = request.event_id;
        let intake = Arc::clone(self);
        let write = tokio::spawn(async move {
            let outcome = intake.store_one(&request, deadline).await;
            outcome.map(|outcome| (outcome, request))
        });
        write.await.unwrap_or_else(|failed| {
            Err(StoreError::OutcomeUnknown {
                event_id: event_id.to_string(),
                cause: format!("the write task failed: {failed}"),
            })
        })
    }

    async fn store_one(
        &self,
        request: &IntakeRequest,
        deadline: Option<Instant>,
    ) -> Result<EnqueueOutcome, StoreError> {
        let patient = request.event.patient_id.as_str();
        let stripe = self.stripe(&request.event.patient_id);
        let mut last_seqs = match deadline {
            Some(deadline) => {
                let latest = self.store.latest_intake_start(deadline);
                tokio::time::timeout_at(latest.into(), stripe.lock())
                    .await
                    .map_err(|_| StoreError::NoTimeLeft {
                        operation: "waiting for the patient's earlier requests",
                    })?
            }
            None => stripe.lock().await,
        };
        // Without a recent number of our own, read the last one: a blind
        // guess of 1 could land on a number retention pruned.
        let next_seq = match last_seqs.get(patient) {
            Some((seq, at)) if at.elapsed() < GUESS_HORIZON => seq + 1,
            _ => 0,
        };
        let outcome = self
            .store
            .enqueue_within(&request.submission(), next_seq, &self.policy, deadline)
            .await?;
        if let EnqueueOutcome::Accepted { seq, .. } = outcome {
            if last_seqs.len() >= REMEMBERED_PER_STRIPE && !last_seqs.contains_key(patient) {
                last_seqs.clear();
            }
            last_seqs.insert(patient.to_owned(), (seq, Instant::now()));
        }
        Ok(outcome)
    }

    fn stripe(&self, patient_id: &PatientId) -> &Mutex<LastSeqs> {
        // Any stable spread will do; SHA-256 is already at hand.
        let digest = Sha256::digest(patient_id.as_str().as_bytes());
        let index = u16::from_be_bytes([digest[0], digest[1]]) as usize % STRIPES;
        &self.stripes[index]
    }
}
