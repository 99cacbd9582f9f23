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
//!
//! An HTTP client's share of a patient's lane is bounded: past
//! `MAX_UNFINISHED_PER_CLIENT_PATIENT` unfinished events of the patient
//! from that client, its next one is refused (strict per-patient order puts
//! every client's later events behind them). Checking is nearly free in the
//! common case: the patient's sequence numbers bound how many events can be
//! unfinished at all, and only a patient with that many reads the store.

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
/// How long a client refused for its share of a patient is refused again
/// without reading the store (a client ignoring `Retry-After` costs no scan).
const REFUSAL_MEMORY: Duration = Duration::from_secs(1);

pub struct Intake {
    store: Store,
    policy: IntakePolicy,
    stripes: Vec<Mutex<LastSeqs>>,
}

/// What a stripe remembers per patient.
type LastSeqs = HashMap<String, Memo>;

struct Memo {
    /// The last sequence number this process stored, and when.
    last: Option<(i64, Instant)>,
    /// No unfinished event of the patient has a lower number. It stays
    /// true as events finish; an operator's retry of a failed event is the
    /// exception, and loosens the bound by that event.
    floor: i64,
    /// The client last refused its share of this patient, and until when.
    refused: Option<(Arc<str>, Instant)>,
    /// The client last counted under its bound: its unfinished events of
    /// the patient then, and the next number then. Its count now is at most
    /// that plus the numbers used since, so it need not be walked again
    /// while that stays under the bound.
    counted: Option<(Arc<str>, usize, i64)>,
}

impl Memo {
    fn guess(&self) -> Option<i64> {
        match self.last {
            Some((seq, at)) if at.elapsed() < GUESS_HORIZON => Some(seq + 1),
            _ => None,
        }
    }
}

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
    /// Whether the client's share of the patient's unfinished events is
    /// bounded (`MAX_UNFINISHED_PER_CLIENT_PATIENT`): for HTTP clients. Not
    /// for an MLLP sender (a refusal stalls its whole serial connection)
    /// nor for the processor's `/queue`.
    pub bounded_share: bool,
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
        let bucket = crate::bucket::of(patient);
        // Without a recent number of our own, read the last one: a blind
        // guess of 1 could land on a number retention pruned.
        let guess = last_seqs.get(patient).and_then(Memo::guess);
        let next_seq = match guess {
            Some(next) => next,
            None if request.bounded_share => {
                self.store.room_for(deadline, 3, "the event")?;
                self.store.last_seq(bucket, patient).await? + 1
            }
            None => 0,
        };
        if request.bounded_share {
            let memo = remember(&mut last_seqs, patient);
            if self.over_share(memo, request, next_seq, deadline).await? {
                return Ok(EnqueueOutcome::OverShare {
                    limit: self.policy.max_unfinished_per_client_patient,
                });
            }
        }
        let outcome = self
            .store
            .enqueue_within(&request.submission(), next_seq, &self.policy, deadline)
            .await?;
        if let EnqueueOutcome::Accepted { seq, .. } = outcome {
            remember(&mut last_seqs, patient).last = Some((seq, Instant::now()));
        }
        Ok(outcome)
    }

    /// Whether the client already has its bound of the patient's unfinished
    /// events, `next_seq` being about the number the new one would get.
    /// Reads the store only when the patient may have that many unfinished
    /// events at all: numbers from `floor` to `next_seq - 1` are all there
    /// can be. A retry of a stored event is never refused (it stores nothing).
    async fn over_share(
        &self,
        memo: &mut Memo,
        request: &IntakeRequest,
        next_seq: i64,
        deadline: Option<Instant>,
    ) -> Result<bool, StoreError> {
        let limit = self.policy.max_unfinished_per_client_patient;
        let crowded = |floor: i64| next_seq.saturating_sub(floor) >= limit as i64;
        if !crowded(memo.floor) {
            return Ok(false);
        }
        if let Some((client, own, at)) = &memo.counted {
            let since = usize::try_from(next_seq.saturating_sub(*at)).unwrap_or(usize::MAX);
            if *client == request.client && own.saturating_add(since) < limit {
                return Ok(false);
            }
        }
        let recently_refused = memo
            .refused
            .as_ref()
            .is_some_and(|(client, until)| *client == request.client && Instant::now() < *until);
        let patient = request.event.patient_id.as_str();
        let bucket = crate::bucket::of(patient);
        if recently_refused {
            // Refused a moment ago: no walk again, only the key's holder
            // (a retry of a stored event is answered, not refused).
            self.store.room_for(deadline, 3, "the event")?;
            return Ok(!self
                .store
                .intake_key_held(&request.submission(), &self.policy)
                .await?);
        }
        // Each read leaves room for the insert and the read settling it.
        self.store.room_for(deadline, 3, "the event")?;
        let oldest = self.store.oldest_unfinished_seq(bucket, patient).await?;
        memo.floor = memo.floor.max(oldest.unwrap_or(next_seq));
        if !crowded(memo.floor) {
            return Ok(false);
        }
        self.store.room_for(deadline, 3, "the event")?;
        let own = self
            .store
            .unfinished_of_client(bucket, patient, &request.client, limit)
            .await?;
        if own < limit {
            memo.counted = Some((Arc::clone(&request.client), own, next_seq));
            return Ok(false);
        }
        self.store.room_for(deadline, 3, "the event")?;
        if self
            .store
            .intake_key_held(&request.submission(), &self.policy)
            .await?
        {
            return Ok(false);
        }
        memo.refused = Some((Arc::clone(&request.client), Instant::now() + REFUSAL_MEMORY));
        metrics::counter!("events_over_share_total").increment(1);
        Ok(true)
    }

    fn stripe(&self, patient_id: &PatientId) -> &Mutex<LastSeqs> {
        // Any stable spread will do; SHA-256 is already at hand.
        let digest = Sha256::digest(patient_id.as_str().as_bytes());
        let index = u16::from_be_bytes([digest[0], digest[1]]) as usize % STRIPES;
        &self.stripes[index]
    }
}

/// The patient's memo, made if need be (a full stripe forgets the rest:
/// bounded memory, and a forgotten patient costs a read or two).
fn remember<'a>(memos: &'a mut LastSeqs, patient: &str) -> &'a mut Memo {
    if memos.len() >= REMEMBERED_PER_STRIPE && !memos.contains_key(patient) {
        memos.clear();
    }
    memos.entry(patient.to_owned()).or_insert(Memo {
        last: None,
        floor: 1,
        refused: None,
        counted: None,
    })
}
