//! Accepting an event: one durable, sequenced write per event, serialized per
//! patient inside this process so its own requests never conflict with each
//! other in the database (other instances are ordered by the unique index).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use crate::event::PatientId;
use crate::store::{EnqueueOutcome, IntakePolicy, Store, StoreError, Submission};

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

    /// Stores the event before returning; the tokio mutex is fair, so one
    /// patient's requests are sequenced in the order they arrived here.
    pub async fn submit(&self, submission: &Submission<'_>) -> Result<EnqueueOutcome, StoreError> {
        let patient = submission.event.patient_id.as_str();
        let mut last_seqs = self.stripe(&submission.event.patient_id).lock().await;
        // Without a recent number of our own, read the last one: a blind
        // guess of 1 could land on a number retention pruned.
        let next_seq = match last_seqs.get(patient) {
            Some((seq, at)) if at.elapsed() < GUESS_HORIZON => seq + 1,
            _ => 0,
        };
        let outcome = self
            .store
            .enqueue(submission, next_seq, &self.policy)
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
