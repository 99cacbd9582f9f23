//! Group commit of inserts: concurrent requests' events go to the database
//! together in one unordered `insertMany`, so a busy ingest pays one round
//! trip and one journal flush for many events (and a busy processor the
//! same for the outcome documents of events' first runs). Nothing waits for a
//! batch to fill: a batch is whatever queued up while earlier batches were
//! in flight, so a lone request is sent at once.
//!
//! Each event still succeeds or fails on its own (the insert is unordered and
//! every failure is reported with its position), so the guarantees of the
//! single-document insert are unchanged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mongodb::Collection;
use mongodb::error::ErrorKind;
use mongodb::options::InsertManyOptions;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::deadline::Bounded;
use super::error::{DUPLICATE_KEY, StoreError};
use super::indexes::UniqueIndex;

/// Events per batch at most; with the byte bound below it keeps one
/// `insertMany` well inside MongoDB's 48 MB message limit.
const MAX_DOCS: usize = 256;
const MAX_BYTES: usize = 8 * 1024 * 1024;
/// Batches in flight at once: enough to keep a few connections busy.
const IN_FLIGHT: usize = 4;
/// Events waiting for a batch at most; past it intake waits (backpressure).
const QUEUE: usize = 4096;

/// What became of one event's insert.
#[derive(Debug)]
pub(crate) enum Insert {
    Stored,
    /// A unique index refused it.
    Duplicate(UniqueIndex),
}

struct Pending<T> {
    event: T,
    bytes: usize,
    /// Not sent at all after this instant (its request's time would not
    /// cover the insert any more): answered "not sent" instead.
    send_by: Option<Instant>,
    reply: oneshot::Sender<Result<Insert, StoreError>>,
}

/// The answer for an event whose time ran out before its batch was sent.
fn not_sent() -> StoreError {
    StoreError::NoTimeLeft {
        operation: "the event (it waited for a batch too long)",
    }
}

pub(crate) struct InsertBatcher<T> {
    sender: mpsc::Sender<Pending<T>>,
    op_timeout: Duration,
}

impl<T> Clone for InsertBatcher<T> {
    fn clone(&self) -> Self {
        Self {
            sender: self.sender.clone(),
            op_timeout: self.op_timeout,
        }
    }
}

impl<T: serde::Serialize + Send + Sync + 'static> InsertBatcher<T> {
    pub(crate) fn spawn(collection: Collection<T>, op_timeout: Duration) -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(run(collection, op_timeout, receiver));
        Self { sender, op_timeout }
    }

    /// Inserts `event` (about `bytes` large) with the next batch, unless
    /// that batch would leave after `send_by`.
    pub(crate) async fn insert(
        &self,
        event: T,
        bytes: usize,
        send_by: Option<Instant>,
    ) -> Result<Insert, StoreError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || StoreError::Timeout {
            operation: "storing an event (the batcher stopped)",
            limit: self.op_timeout,
        };
        let pending = Pending {
            event,
            bytes,
            send_by,
            reply,
        };
        match send_by {
            Some(send_by) => {
                tokio::time::timeout_at(send_by.into(), self.sender.send(pending))
                    .await
                    .map_err(|_| not_sent())?
                    .map_err(|_| stopped())?;
            }
            None => self.sender.send(pending).await.map_err(|_| stopped())?,
        }
        answer.await.map_err(|_| stopped())?
    }
}

async fn run<T: serde::Serialize + Send + Sync + 'static>(
    collection: Collection<T>,
    op_timeout: Duration,
    mut receiver: mpsc::Receiver<Pending<T>>,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = receiver.recv().await {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        // Everything that queued up while the slot was busy joins this
        // batch, but an event whose time ran out meanwhile is not sent.
        let now = Instant::now();
        let mut bytes = 0;
        let mut batch = Vec::new();
        let mut next = Some(first);
        while let Some(pending) = next.take() {
            if pending.send_by.is_some_and(|by| by < now) {
                let _ = pending.reply.send(Err(not_sent()));
            } else {
                bytes += pending.bytes;
                batch.push(pending);
            }
            if batch.len() < MAX_DOCS && bytes < MAX_BYTES {
                next = receiver.try_recv().ok();
            }
        }
        if batch.is_empty() {
            continue;
        }
        let collection = collection.clone();
        tokio::spawn(async move {
            let _permit = permit;
            insert_batch(&collection, op_timeout, batch).await;
        });
    }
}

async fn insert_batch<T: serde::Serialize + Send + Sync>(
    collection: &Collection<T>,
    op_timeout: Duration,
    batch: Vec<Pending<T>>,
) {
    let metric = if collection.name() == super::QUEUED_EVENTS {
        "intake_batch_size"
    } else {
        "outcome_insert_batch_size"
    };
    metrics::histogram!(metric).record(batch.len() as f64);
    let events: Vec<&T> = batch.iter().map(|p| &p.event).collect();
    let result = collection
        .insert_many(events)
        .with_options(InsertManyOptions::builder().ordered(false).build())
        .bounded_raw("storing events", op_timeout)
        .await;
    let failures: HashMap<usize, Result<Insert, StoreError>> = match result {
        Ok(Ok(_)) => HashMap::new(),
        Ok(Err(error)) => match error.kind.as_ref() {
            // Per-event refusals; the events not named were stored.
            ErrorKind::InsertMany(e) if e.write_concern_error.is_none() => e
                .write_errors
                .iter()
                .flatten()
                .map(|w| {
                    let outcome = if w.code == DUPLICATE_KEY {
                        Ok(Insert::Duplicate(UniqueIndex::from_message(&w.message)))
                    } else {
                        Err(StoreError::mongo("storing an event")(error.clone()))
                    };
                    (w.index, outcome)
                })
                .collect(),
            // Anything else concerns the whole batch.
            _ => {
                answer_all(batch, |_| {
                    Err(StoreError::mongo("storing an event")(error.clone()))
                });
                return;
            }
        },
        Err(timeout) => {
            let (operation, limit) = match timeout {
                StoreError::Timeout { operation, limit } => (operation, limit),
                _ => ("storing events", op_timeout),
            };
            answer_all(batch, |_| Err(StoreError::Timeout { operation, limit }));
            return;
        }
    };
    let mut failures = failures;
    answer_all(batch, |index| {
        failures.remove(&index).unwrap_or(Ok(Insert::Stored))
    });
}

fn answer_all<T>(
    batch: Vec<Pending<T>>,
    mut outcome: impl FnMut(usize) -> Result<Insert, StoreError>,
) {
    for (index, pending) in batch.into_iter().enumerate() {
        // The requester may have given up (request timeout); nothing to do then.
        let _ = pending.reply.send(outcome(index));
    }
}
