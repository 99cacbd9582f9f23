//! Group commit of single-document updates: the processor's lanes write
//! claims, records, closes and outcomes at the same moments, and each of
//! those updates that queued up while earlier batches were in flight goes
//! to the database in one unordered `update` command, so a busy processor
//! pays one round trip for many events (and on MongoDB one journal flush;
//! SecantusDB's compiled server with `--sync-on-commit` still syncs each
//! statement). As for
//! intake's inserts (`group_commit.rs`), nothing waits for a batch to fill:
//! a lone update is sent at once.
//!
//! Each update keeps its own filter and its own conditions (the fence is in
//! every statement's pipeline), and the command is unordered, so one
//! statement's refusal changes nothing for the others: batching changes
//! the transport, not what the database decides for each event. The
//! `update` command reports how many statements modified their document,
//! not which: when every statement did, each caller learns "modified";
//! otherwise each learns "not known" and reads its document back, which
//! it does anyway after a write whose reply was lost. A write concern
//! error is, for every statement, what it is for a single write: an
//! ambiguous error, retried.

use std::sync::Arc;
use std::time::Duration;

use mongodb::Database;
use mongodb::bson::{Bson, Document, doc};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::deadline::Bounded;
use super::error::{DUPLICATE_KEY, StoreError};

/// Statements per command at most (MongoDB takes up to 100,000; a bound
/// keeps a batch's reply time near a single write's).
const MAX_STATEMENTS: usize = 500;
/// Commands in flight at once per collection.
const IN_FLIGHT: usize = 4;
/// Updates waiting for a batch at most; past it callers wait (backpressure).
const QUEUE: usize = 8192;
/// Bytes of statements per command at most, well inside MongoDB's 16 MiB
/// command limit (a later run's outcome carries the event's data).
const MAX_BYTES: usize = 8 * 1024 * 1024;

/// One update statement: filter, update (document or pipeline), upsert.
#[derive(Debug, Clone)]
pub(crate) struct Statement {
    pub filter: Document,
    pub update: Bson,
    pub upsert: bool,
}

impl Statement {
    /// About how large it is on the wire.
    fn bytes(&self) -> usize {
        let update = doc! { "u": self.update.clone() };
        mongodb::bson::to_vec(&update).map_or(1024, |b| b.len()) + 256
    }
}

/// What became of one statement, as far as the reply tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Updated {
    /// It modified (or inserted) its document.
    Modified,
    /// Some statements of its batch changed nothing; this one may be one of
    /// them. The caller reads its document to know.
    Unknown,
    /// A unique index refused it (an upsert whose document exists).
    Duplicate,
}

struct Pending {
    statement: Statement,
    reply: oneshot::Sender<Result<Updated, StoreError>>,
}

#[derive(Clone)]
pub(crate) struct UpdateBatcher {
    sender: mpsc::Sender<Pending>,
    op_timeout: Duration,
}

impl UpdateBatcher {
    /// Batches updates of `collection`, each batch written with `write_concern`
    /// and bounded by `op_timeout`; `operation` names them in metrics and errors.
    pub(crate) fn spawn(
        db: Database,
        collection: &'static str,
        write_concern: Document,
        op_timeout: Duration,
        operation: &'static str,
    ) -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let target = Target {
            db,
            collection,
            write_concern,
            op_timeout,
            operation,
        };
        tokio::spawn(run(target, receiver));
        Self { sender, op_timeout }
    }

    /// Sends `statement` with the next batch and waits for its fate. An
    /// error concerns the whole batch (the caller treats it as it would a
    /// single write's: ambiguous if the reply was lost).
    pub(crate) async fn update(&self, statement: Statement) -> Result<Updated, StoreError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || StoreError::Timeout {
            operation: "an update (the batcher stopped)",
            limit: self.op_timeout,
        };
        self.sender
            .send(Pending { statement, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

struct Target {
    db: Database,
    collection: &'static str,
    write_concern: Document,
    op_timeout: Duration,
    operation: &'static str,
}

async fn run(target: Target, mut receiver: mpsc::Receiver<Pending>) {
    let target = Arc::new(target);
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = receiver.recv().await {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        // Everything that queued up while the slots were busy joins.
        let mut bytes = first.statement.bytes();
        let mut batch = vec![first];
        while batch.len() < MAX_STATEMENTS && bytes < MAX_BYTES {
            match receiver.try_recv() {
                Ok(pending) => {
                    bytes += pending.statement.bytes();
                    batch.push(pending);
                }
                Err(_) => break,
            }
        }
        let target = Arc::clone(&target);
        tokio::spawn(async move {
            let _permit = permit;
            send(&target, batch).await;
        });
    }
}

async fn send(target: &Target, batch: Vec<Pending>) {
    metrics::histogram!("update_batch_size", "collection" => target.collection)
        .record(batch.len() as f64);
    let updates: Vec<Document> = batch
        .iter()
        .map(|p| {
            doc! {
                "q": p.statement.filter.clone(),
                "u": p.statement.update.clone(),
                "upsert": p.statement.upsert,
                "multi": false,
            }
        })
        .collect();
    let command = doc! {
        "update": target.collection,
        "updates": updates,
        "ordered": false,
        "writeConcern": target.write_concern.clone(),
    };
    let reply = target
        .db
        .run_command(command)
        .bounded_raw(target.operation, target.op_timeout)
        .await;
    let reply = match reply {
        Ok(Ok(reply)) => reply,
        Ok(Err(error)) => {
            for pending in batch {
                let _ = pending
                    .reply
                    .send(Err(StoreError::mongo(target.operation)(error.clone())));
            }
            return;
        }
        Err(_) => {
            for pending in batch {
                let _ = pending.reply.send(Err(StoreError::Timeout {
                    operation: target.operation,
                    limit: target.op_timeout,
                }));
            }
            return;
        }
    };
    if let Ok(concern) = reply.get_document("writeConcernError") {
        // Applied on the primary, maybe not durable: each caller retries
        // as after a lost reply (its write is idempotent by its fence).
        let message = concern.get_str("errmsg").unwrap_or("no message").to_owned();
        for pending in batch {
            let _ = pending.reply.send(Err(StoreError::WriteConcern {
                operation: target.operation,
                message: message.clone(),
            }));
        }
        return;
    }
    let fates = fates(&reply, batch.len());
    for (pending, fate) in batch.into_iter().zip(fates) {
        let _ = pending.reply.send(fate.map_err(StoreError::Incompatible));
    }
}

/// Each statement's fate from an `update` reply (without a write concern
/// error): `Err` with the server's message for a statement it refused
/// other than by a unique index.
fn fates(reply: &Document, statements: usize) -> Vec<Result<Updated, String>> {
    let count = |key: &str| match reply.get(key) {
        Some(Bson::Int32(n)) => *n as usize,
        Some(Bson::Int64(n)) => *n as usize,
        Some(Bson::Double(n)) => *n as usize,
        _ => 0,
    };
    let upserted = reply.get_array("upserted").map_or(0, Vec::len);
    let mut fates = vec![Ok(Updated::Modified); statements];
    let mut refused = 0;
    if let Ok(errors) = reply.get_array("writeErrors") {
        for error in errors.iter().filter_map(Bson::as_document) {
            let index = match error.get("index") {
                Some(Bson::Int32(i)) => *i as usize,
                Some(Bson::Int64(i)) => *i as usize,
                _ => continue,
            };
            let Some(fate) = fates.get_mut(index) else {
                continue;
            };
            refused += 1;
            *fate = match error.get_i32("code") {
                Ok(DUPLICATE_KEY) => Ok(Updated::Duplicate),
                _ => Err(format!(
                    "update refused: {}",
                    error.get_str("errmsg").unwrap_or("no message")
                )),
            };
        }
    }
    // Statements that neither errored nor changed their document exist
    // unless modified + upserted covers every other statement.
    if count("nModified") + upserted + refused < statements {
        for fate in &mut fates {
            if *fate == Ok(Updated::Modified) {
                *fate = Ok(Updated::Unknown);
            }
        }
    }
    fates
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_statement_modified_is_modified() {
        let reply = doc! { "ok": 1, "n": 3, "nModified": 3 };
        assert_eq!(fates(&reply, 3), vec![Ok(Updated::Modified); 3]);
    }

    #[test]
    fn one_unchanged_statement_makes_every_other_unknown() {
        let reply = doc! { "ok": 1, "n": 3, "nModified": 2 };
        assert_eq!(fates(&reply, 3), vec![Ok(Updated::Unknown); 3]);
    }

    #[test]
    fn upserts_and_duplicates_are_counted_by_index() {
        let reply = doc! {
            "ok": 1, "n": 2, "nModified": 1,
            "upserted": [{ "index": 2, "_id": 1 }],
            "writeErrors": [{ "index": 1, "code": 11000, "errmsg": "dup" }],
        };
        assert_eq!(
            fates(&reply, 3),
            vec![
                Ok(Updated::Modified),
                Ok(Updated::Duplicate),
                Ok(Updated::Modified)
            ]
        );
    }
}
