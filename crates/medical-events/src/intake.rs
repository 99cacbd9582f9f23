//! Accepting an event: one durable, sequenced write per event, serialized per
//! patient inside this process so its own requests never conflict with each
//! other in the database (other instances are still ordered by the transaction).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use tokio::sync::Mutex;

use crate::event::{EventId, NewEvent, PatientId};
use crate::store::{EnqueueOutcome, IdempotencyKey, Store, StoreError};

/// Lock stripes: bounded memory whatever the number of patients; two
/// patients share a stripe rarely and then only wait a few milliseconds.
const STRIPES: usize = 1024;

pub struct Intake {
    store: Store,
    stripes: Vec<Mutex<()>>,
}

impl Intake {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Stores the event before returning; the tokio mutex is fair, so one
    /// patient's requests are sequenced in the order they arrived here.
    pub async fn submit(
        &self,
        event: &NewEvent,
        event_id: EventId,
        key: Option<&IdempotencyKey>,
    ) -> Result<EnqueueOutcome, StoreError> {
        let _turn = self.stripe(&event.patient_id).lock().await;
        self.store.enqueue(event, event_id, key).await
    }

    fn stripe(&self, patient_id: &PatientId) -> &Mutex<()> {
        let mut hasher = DefaultHasher::new();
        patient_id.hash(&mut hasher);
        &self.stripes[(hasher.finish() as usize) % STRIPES]
    }
}
