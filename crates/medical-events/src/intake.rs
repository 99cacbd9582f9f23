//! Accepting an event: one durable, sequenced write per event, serialized per
//! patient inside this process so its own requests never conflict with each
//! other in the database (other instances are still ordered by the transaction).

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use tokio::sync::Mutex;

use crate::event::PatientId;
use crate::store::{EnqueueOutcome, Store, StoreError, Submission};

/// Lock stripes: bounded memory whatever the number of patients; two
/// patients share a stripe rarely and then only wait a few milliseconds.
const STRIPES: usize = 1024;
/// Patients whose last sequence number a stripe remembers (bounded memory:
/// a forgotten patient costs one extra read on its next event).
const REMEMBERED_PER_STRIPE: usize = 64;

pub struct Intake {
    store: Store,
    stripes: Vec<Mutex<LastSeqs>>,
}

/// The last sequence number this process stored, per patient of a stripe.
type LastSeqs = HashMap<String, i64>;

impl Intake {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            stripes: (0..STRIPES).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Stores the event before returning; the tokio mutex is fair, so one
    /// patient's requests are sequenced in the order they arrived here.
    pub async fn submit(&self, submission: &Submission<'_>) -> Result<EnqueueOutcome, StoreError> {
        let event = submission.event;
        let mut last_seqs = self.stripe(&event.patient_id).lock().await;
        let next_seq = last_seqs
            .get(event.patient_id.as_str())
            .map_or(1, |seq| seq + 1);
        let outcome = self.store.enqueue(submission, next_seq).await?;
        if let EnqueueOutcome::Accepted { seq, .. } = outcome {
            if last_seqs.len() >= REMEMBERED_PER_STRIPE
                && !last_seqs.contains_key(event.patient_id.as_str())
            {
                last_seqs.clear();
            }
            last_seqs.insert(event.patient_id.as_str().to_owned(), seq);
        }
        Ok(outcome)
    }

    fn stripe(&self, patient_id: &PatientId) -> &Mutex<LastSeqs> {
        let mut hasher = DefaultHasher::new();
        patient_id.hash(&mut hasher);
        &self.stripes[(hasher.finish() as usize) % STRIPES]
    }
}
