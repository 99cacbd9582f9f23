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
//! Each update keeps its own conditions (the fence is in its pipeline,
//! evaluated on its own document), and the command is unordered, so one
//! write's refusal changes nothing for the others: batching changes the
//! transport, not what the database decides for each event. The `update`
//! command reports how many documents were modified, not which: when every
//! write modified its document, each caller learns "modified";
//! otherwise each learns "not known" and reads its document back, which
//! it does anyway after a write whose reply was lost. A write concern
//! error is, for every statement, what it is for a single write: an
//! ambiguous error, retried.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mongodb::Database;
use mongodb::bson::raw::{self, RawArrayBuf, RawBson, RawBsonRef, RawDocumentBuf};
use mongodb::bson::{Bson, Document, doc};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::deadline::Bounded;
use super::error::{DUPLICATE_KEY, StoreError};
use super::shapes;

/// Statements per command at most (MongoDB takes up to 100,000; a bound
/// keeps a batch's reply time near a single write's).
const MAX_STATEMENTS: usize = 500;
/// Guarded updates per merged statement at most, unless configured
/// (`MERGED_WRITES_MAX`): each document's pipeline looks its position up in
/// the id list, so the cost per document grows with the list (250 a
/// statement was slower than 100 on the compiled server, when choosing by
/// the position was also a walk). 1 merges nothing.
pub const DEFAULT_MAX_MERGED: usize = 64;
/// Commands in flight at once per collection.
const IN_FLIGHT: usize = 4;
/// Updates waiting for a batch at most; past it callers wait (backpressure).
const QUEUE: usize = 8192;
/// Bytes of statements per command at most, well inside MongoDB's 16 MiB
/// command limit (a later run's outcome carries the event's data).
const MAX_BYTES: usize = 8 * 1024 * 1024;
/// The merged pipeline's field holding a document's position in the id list.
const POSITION: &str = "_batchPosition";
/// The same field, as an expression reads it.
const POSITION_VALUE: &str = "$_batchPosition";

/// One update statement: filter, update (document or pipeline), upsert.
#[derive(Debug, Clone)]
pub(crate) struct Statement {
    pub filter: Document,
    pub update: Bson,
    pub upsert: bool,
}

/// An update of one event (by `_id`) decided by one condition the database
/// evaluates on the document at the moment of the write: the pipeline sets
/// `flag` to `condition`, then each field of `changes` (expressions that
/// read `$<flag>` and keep the field as it is when it is false), then drops
/// the flag. The fields of `changes` are top-level names (no dots): merged,
/// they are set side by side with other writes' fields, where a path and
/// its parent would conflict.
#[derive(Debug, Clone)]
pub(crate) struct Guarded {
    pub id: String,
    pub flag: &'static str,
    pub condition: Document,
    pub changes: Document,
}

/// One multi-document statement carrying `members` (distinct ids): each
/// document takes the condition and changes of the member at its position.
fn merged(members: &[&Encoded]) -> Result<RawDocumentBuf, raw::Error> {
    let ids: Vec<String> = members.iter().map(|m| m.id.clone()).collect();
    let distinct_flags = unique(members.iter().map(|m| m.flag));
    let mut flags = RawDocumentBuf::new();
    for &flag in &distinct_flags {
        let leaves: Vec<RawBsonRef> = (members.iter())
            .map(|m| {
                if m.flag == flag {
                    RawBsonRef::Document(&m.condition)
                } else {
                    RawBsonRef::Boolean(false)
                }
            })
            .collect();
        flags.append(flag, by_position(&leaves, 0));
    }
    let member_changes = (members.iter())
        .map(|m| m.changes.iter().collect::<Result<Vec<_>, _>>())
        .collect::<Result<Vec<_>, _>>()?;
    debug_assert!(
        (member_changes.iter().flatten()).all(|(field, _)| !field.contains('.')),
        "guarded updates set top-level fields"
    );
    let mut changes = RawDocumentBuf::new();
    for field in unique(member_changes.iter().flatten().map(|&(field, _)| field)) {
        let keep = format!("${field}");
        let leaves: Vec<RawBsonRef> = (member_changes.iter())
            .map(|fields| {
                (fields.iter())
                    .find(|(name, _)| *name == field)
                    .map_or(RawBsonRef::String(&keep), |&(_, value)| value)
            })
            .collect();
        changes.append(field, by_position(&leaves, 0));
    }
    let mut scratch = raw_array(distinct_flags);
    scratch.push(POSITION);
    let mut position = RawArrayBuf::new();
    position.push(raw_doc(
        "$literal",
        raw_array(ids.iter().map(String::as_str)),
    ));
    position.push("$_id");
    let pipeline = [
        raw_doc(
            "$set",
            raw_doc(POSITION, raw_doc("$indexOfArray", position)),
        ),
        raw_doc("$set", flags),
        raw_doc("$set", changes),
        raw_doc("$unset", scratch),
    ];
    let mut statement = RawDocumentBuf::new();
    statement.append(
        "q",
        RawDocumentBuf::from_document(&shapes::fenced_batch(&ids).filter)?,
    );
    statement.append("u", raw_array(pipeline));
    statement.append("upsert", false);
    statement.append("multi", true);
    Ok(statement)
}

/// The expression of `leaves` (position `first` onwards) at the document's
/// position: halves chosen by `$cond` on it, so a document evaluates about
/// log2(n) comparisons where a `$switch` walked up to n cases (that walk
/// was most of the compiled server's expression work in a merged update).
/// A half whose leaves are all equal is that leaf, not split further (a
/// flag most members lack, a field most of them keep).
fn by_position(leaves: &[RawBsonRef], first: usize) -> RawBson {
    match leaves {
        // Never: a merged statement has two members or more, and a half of
        // two or more is not empty.
        [] => RawBson::Boolean(false),
        [only] => only.to_raw_bson(),
        [head, rest @ ..] if rest.iter().all(|leaf| leaf == head) => head.to_raw_bson(),
        _ => {
            let half = leaves.len() / 2;
            let mut test = RawArrayBuf::new();
            test.push(POSITION_VALUE);
            test.push((first + half) as i32);
            let mut cond = RawArrayBuf::new();
            cond.push(raw_doc("$lt", test));
            cond.push(by_position(&leaves[..half], first));
            cond.push(by_position(&leaves[half..], first + half));
            RawBson::Document(raw_doc("$cond", cond))
        }
    }
}

/// `{ key: value }`.
fn raw_doc(key: &str, value: impl Into<RawBson>) -> RawDocumentBuf {
    let mut document = RawDocumentBuf::new();
    document.append(key, value);
    document
}

fn raw_array<T: Into<RawBson>>(items: impl IntoIterator<Item = T>) -> RawArrayBuf {
    let mut array = RawArrayBuf::new();
    for item in items {
        array.push(item);
    }
    array
}

/// `value` encoded (a scalar is copied; none of the batcher's is large).
fn encode(value: &Bson) -> Result<RawBson, raw::Error> {
    match value {
        Bson::Document(document) => Ok(RawBson::Document(RawDocumentBuf::from_document(document)?)),
        Bson::Array(items) => Ok(RawBson::Array(raw_array(
            items.iter().map(encode).collect::<Result<Vec<_>, _>>()?,
        ))),
        scalar => {
            let wrapped = RawDocumentBuf::from_document(&doc! { "v": scalar.clone() })?;
            Ok(wrapped
                .get("v")?
                .map_or(RawBson::Null, RawBsonRef::to_raw_bson))
        }
    }
}

/// Each distinct item once, in first-seen order.
fn unique<'a>(items: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = HashSet::new();
    items.filter(|item| seen.insert(*item)).collect()
}

/// What a caller hands the batcher, encoded once as it is handed over: the
/// batcher builds statements by copying bytes, not document trees (which
/// was most of a busy processor's CPU), and knows each write's size.
#[derive(Debug)]
enum Write {
    /// A whole statement: `q`, `u`, `upsert`, `multi: false`.
    Plain(RawDocumentBuf),
    Guarded(Encoded),
}

/// A [`Guarded`] update, encoded.
#[derive(Debug)]
struct Encoded {
    id: String,
    flag: &'static str,
    condition: RawDocumentBuf,
    changes: RawDocumentBuf,
}

impl Write {
    fn plain(statement: &Statement) -> Result<Self, raw::Error> {
        let mut encoded = RawDocumentBuf::new();
        encoded.append("q", RawDocumentBuf::from_document(&statement.filter)?);
        encoded.append("u", encode(&statement.update)?);
        encoded.append("upsert", statement.upsert);
        encoded.append("multi", false);
        Ok(Self::Plain(encoded))
    }

    fn guarded(guarded: &Guarded) -> Result<Self, raw::Error> {
        Ok(Self::Guarded(Encoded {
            id: guarded.id.clone(),
            flag: guarded.flag,
            condition: RawDocumentBuf::from_document(&guarded.condition)?,
            changes: RawDocumentBuf::from_document(&guarded.changes)?,
        }))
    }

    /// The write as one statement of its own.
    fn alone(&self) -> Result<RawDocumentBuf, raw::Error> {
        let guarded = match self {
            Self::Plain(statement) => return Ok(statement.clone()),
            Self::Guarded(guarded) => guarded,
        };
        let mut set_flag = RawDocumentBuf::new();
        set_flag.append_ref(guarded.flag, &guarded.condition);
        let pipeline = [
            raw_doc("$set", set_flag),
            raw_doc("$set", guarded.changes.clone()),
            raw_doc("$unset", guarded.flag),
        ];
        let mut statement = RawDocumentBuf::new();
        statement.append(
            "q",
            RawDocumentBuf::from_document(&shapes::fenced(&guarded.id).filter)?,
        );
        statement.append("u", raw_array(pipeline));
        statement.append("upsert", false);
        statement.append("multi", false);
        Ok(statement)
    }

    /// About how large it is on the wire.
    fn bytes(&self) -> usize {
        match self {
            Self::Plain(statement) => statement.as_bytes().len(),
            Self::Guarded(guarded) => {
                guarded.condition.as_bytes().len() + guarded.changes.as_bytes().len() + 256
            }
        }
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
    write: Write,
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
        write_concern: RawDocumentBuf,
        op_timeout: Duration,
        operation: &'static str,
        max_merged: Arc<AtomicUsize>,
    ) -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let target = Target {
            db,
            collection,
            write_concern,
            op_timeout,
            operation,
            max_merged,
        };
        tokio::spawn(run(target, receiver));
        Self { sender, op_timeout }
    }

    /// Sends `statement` with the next batch and waits for its fate. An
    /// error concerns the whole batch (the caller treats it as it would a
    /// single write's: ambiguous if the reply was lost).
    pub(crate) async fn update(&self, statement: &Statement) -> Result<Updated, StoreError> {
        self.submit(Write::plain(statement)?).await
    }

    /// As `update`, for a guarded update, which may travel merged with
    /// other events' guarded updates.
    pub(crate) async fn update_guarded(&self, guarded: &Guarded) -> Result<Updated, StoreError> {
        self.submit(Write::guarded(guarded)?).await
    }

    async fn submit(&self, write: Write) -> Result<Updated, StoreError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || StoreError::Timeout {
            operation: "an update (the batcher stopped)",
            limit: self.op_timeout,
        };
        self.sender
            .send(Pending { write, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

struct Target {
    db: Database,
    collection: &'static str,
    write_concern: RawDocumentBuf,
    op_timeout: Duration,
    operation: &'static str,
    /// Guarded updates per merged statement at most (the store's setting).
    max_merged: Arc<AtomicUsize>,
}

async fn run(target: Target, mut receiver: mpsc::Receiver<Pending>) {
    let target = Arc::new(target);
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = receiver.recv().await {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        // Everything that queued up while the slots were busy joins.
        let mut bytes = first.write.bytes();
        let mut batch = vec![first];
        while batch.len() < MAX_STATEMENTS && bytes < MAX_BYTES {
            match receiver.try_recv() {
                Ok(pending) => {
                    bytes += pending.write.bytes();
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

/// One statement of a command and the writes (by position in the batch) it
/// carries: one, or several merged guarded updates.
struct Wire {
    statement: RawDocumentBuf,
    members: Vec<usize>,
}

/// The statements for `writes`: guarded updates of distinct events merged,
/// up to `max_merged` a statement, everything else one statement each.
fn plan(writes: &[&Write], max_merged: usize) -> Result<Vec<Wire>, raw::Error> {
    let merge = max_merged > 1;
    let mut wires = Vec::new();
    let mut group: Vec<(usize, &Encoded)> = Vec::new();
    let mut ids = HashSet::new();
    for (index, write) in writes.iter().enumerate() {
        match write {
            Write::Guarded(guarded) if merge && ids.insert(guarded.id.as_str()) => {
                group.push((index, guarded));
            }
            // A second write to one event in a batch (rare: a lane has one
            // write in flight) goes alone; the database orders nothing
            // between the statements of an unordered command, as before.
            _ => wires.push(single(write, index)?),
        }
    }
    for chunk in group.chunks(max_merged.max(1)) {
        if let [(index, _)] = chunk {
            wires.push(single(writes[*index], *index)?);
            continue;
        }
        let members: Vec<&Encoded> = chunk.iter().map(|&(_, guarded)| guarded).collect();
        wires.push(Wire {
            statement: merged(&members)?,
            members: chunk.iter().map(|&(index, _)| index).collect(),
        });
    }
    Ok(wires)
}

fn single(write: &Write, index: usize) -> Result<Wire, raw::Error> {
    Ok(Wire {
        statement: write.alone()?,
        members: vec![index],
    })
}

/// Why a command told nothing about its statements.
#[derive(Debug, Clone)]
enum Failure {
    Mongo(mongodb::error::Error),
    Timeout,
    /// Applied on the primary, maybe not durable.
    WriteConcern(String),
    /// Never sent: a statement could not be encoded.
    Encode(raw::Error),
}

impl Failure {
    fn error(&self, target: &Target) -> StoreError {
        match self {
            Self::Mongo(error) => StoreError::mongo(target.operation)(error.clone()),
            Self::Timeout => StoreError::Timeout {
                operation: target.operation,
                limit: target.op_timeout,
            },
            // Each caller retries as after a lost reply (its write is
            // idempotent by its fence).
            Self::WriteConcern(message) => StoreError::WriteConcern {
                operation: target.operation,
                message: message.clone(),
            },
            Self::Encode(error) => StoreError::Raw(error.clone()),
        }
    }
}

/// A write's fate: `None` while unknown (a refused merged statement).
type Fate = Option<Result<Updated, String>>;

async fn send(target: &Target, batch: Vec<Pending>) {
    metrics::histogram!("update_batch_size", "collection" => target.collection)
        .record(batch.len() as f64);
    let writes: Vec<&Write> = batch.iter().map(|p| &p.write).collect();
    let max_merged = target.max_merged.load(Ordering::Relaxed);
    let fates: Vec<Result<Updated, StoreError>> = match execute(target, &writes, max_merged).await {
        Ok(mut fates) => {
            // A merged statement the database refused outright (it stops a
            // multi-document update at the first document it cannot
            // update) says nothing about its members, some of which may
            // have applied: each goes again alone, as after a lost reply.
            // Each is then refused by its own fence (a claim by the
            // revision, a release or hand-back by the claim it removed, a
            // close by the status) or applies once more with the same
            // values (a record, a parked close: the revision moves again).
            let again: Vec<usize> = (0..fates.len()).filter(|&i| fates[i].is_none()).collect();
            let mut failed = None;
            if !again.is_empty() {
                let retry: Vec<&Write> = again.iter().map(|&i| writes[i]).collect();
                match execute(target, &retry, 1).await {
                    Ok(retried) => {
                        for (&i, fate) in again.iter().zip(retried) {
                            fates[i] = fate;
                        }
                    }
                    // Only the writes sent again are in doubt; the others
                    // keep what the first reply said of them.
                    Err(failure) => failed = Some(failure),
                }
            }
            (fates.into_iter().enumerate())
                .map(|(i, fate)| {
                    let fate = match (fate, &failed) {
                        (Some(fate), _) => fate.map_err(StoreError::Incompatible),
                        (None, Some(failure)) => Err(failure.error(target)),
                        (None, None) => Ok(Updated::Unknown),
                    };
                    // The copy sent again failed, but the first, in the
                    // refused statement, may have applied.
                    match fate {
                        Err(error) if again.binary_search(&i).is_ok() && !error.is_ambiguous() => {
                            Err(StoreError::InDoubt {
                                operation: target.operation,
                                source: Box::new(error),
                            })
                        }
                        fate => fate,
                    }
                })
                .collect()
        }
        Err(failure) => (0..batch.len())
            .map(|_| Err(failure.error(target)))
            .collect(),
    };
    for (pending, fate) in batch.into_iter().zip(fates) {
        let _ = pending.reply.send(fate);
    }
}

/// Sends one command for `writes` and returns each write's fate.
async fn execute(
    target: &Target,
    writes: &[&Write],
    max_merged: usize,
) -> Result<Vec<Fate>, Failure> {
    let wires = plan(writes, max_merged).map_err(Failure::Encode)?;
    let mut updates = RawArrayBuf::new();
    let mut carried = Vec::with_capacity(wires.len());
    for wire in wires {
        updates.push(wire.statement);
        carried.push(wire.members);
    }
    let mut command = RawDocumentBuf::new();
    command.append("update", target.collection);
    command.append("updates", updates);
    command.append("ordered", false);
    command.append_ref("writeConcern", &target.write_concern);
    let reply = match (target.db.run_raw_command(command))
        .bounded_raw(target.operation, target.op_timeout)
        .await
    {
        Ok(Ok(reply)) => reply,
        Ok(Err(error)) => return Err(Failure::Mongo(error)),
        Err(_) => return Err(Failure::Timeout),
    };
    if let Ok(concern) = reply.get_document("writeConcernError") {
        let message = concern.get_str("errmsg").unwrap_or("no message");
        return Err(Failure::WriteConcern(message.to_owned()));
    }
    let members: Vec<usize> = carried.iter().map(Vec::len).collect();
    let mut fates = vec![None; writes.len()];
    for (wire, fate) in carried.iter().zip(statement_fates(&reply, &members)) {
        for &member in wire {
            fates[member] = fate.clone();
        }
    }
    Ok(fates)
}

/// Each statement's fate from an `update` reply (without a write concern
/// error), for statements carrying `members[i]` writes each: `Err` with the
/// server's message for a single write it refused other than by a unique
/// index, `None` for a merged statement it refused.
fn statement_fates(reply: &Document, members: &[usize]) -> Vec<Fate> {
    let count = |key: &str| match reply.get(key) {
        Some(Bson::Int32(n)) => *n as usize,
        Some(Bson::Int64(n)) => *n as usize,
        Some(Bson::Double(n)) => *n as usize,
        _ => 0,
    };
    let upserted = reply.get_array("upserted").map_or(0, Vec::len);
    let mut fates = vec![Some(Ok(Updated::Modified)); members.len()];
    let mut refused = 0;
    let mut merged_refused = false;
    if let Ok(errors) = reply.get_array("writeErrors") {
        for error in errors.iter().filter_map(Bson::as_document) {
            let index = match error.get("index") {
                Some(Bson::Int32(i)) => *i as usize,
                Some(Bson::Int64(i)) => *i as usize,
                _ => continue,
            };
            let (Some(fate), Some(&carried)) = (fates.get_mut(index), members.get(index)) else {
                continue;
            };
            if carried > 1 {
                merged_refused = true;
                *fate = None;
                continue;
            }
            refused += 1;
            *fate = Some(match error.get_i32("code") {
                Ok(DUPLICATE_KEY) => Ok(Updated::Duplicate),
                _ => Err(format!(
                    "update refused: {}",
                    error.get_str("errmsg").unwrap_or("no message")
                )),
            });
        }
    }
    // Writes that neither errored nor changed their document exist unless
    // modified + upserted covers every other write (a refused merged
    // statement may have changed some of its documents first: no count
    // can be trusted then).
    let writes: usize = members.iter().sum();
    if merged_refused || count("nModified") + upserted + refused < writes {
        for fate in &mut fates {
            if *fate == Some(Ok(Updated::Modified)) {
                *fate = Some(Ok(Updated::Unknown));
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
        assert_eq!(
            statement_fates(&reply, &[1, 1, 1]),
            vec![Some(Ok(Updated::Modified)); 3]
        );
    }

    #[test]
    fn one_unchanged_statement_makes_every_other_unknown() {
        let reply = doc! { "ok": 1, "n": 3, "nModified": 2 };
        assert_eq!(
            statement_fates(&reply, &[1, 1, 1]),
            vec![Some(Ok(Updated::Unknown)); 3]
        );
    }

    #[test]
    fn upserts_and_duplicates_are_counted_by_index() {
        let reply = doc! {
            "ok": 1, "n": 2, "nModified": 1,
            "upserted": [{ "index": 2, "_id": 1 }],
            "writeErrors": [{ "index": 1, "code": 11000, "errmsg": "dup" }],
        };
        assert_eq!(
            statement_fates(&reply, &[1, 1, 1]),
            vec![
                Some(Ok(Updated::Modified)),
                Some(Ok(Updated::Duplicate)),
                Some(Ok(Updated::Modified))
            ]
        );
    }

    #[test]
    fn a_merged_statement_counts_each_document() {
        let reply = doc! { "ok": 1, "n": 4, "nModified": 4 };
        assert_eq!(
            statement_fates(&reply, &[3, 1]),
            vec![Some(Ok(Updated::Modified)); 2]
        );
        let reply = doc! { "ok": 1, "n": 4, "nModified": 3 };
        assert_eq!(
            statement_fates(&reply, &[3, 1]),
            vec![Some(Ok(Updated::Unknown)); 2]
        );
    }

    #[test]
    fn a_refused_merged_statement_is_sent_again_and_trusts_no_count() {
        let reply = doc! {
            "ok": 1, "n": 3, "nModified": 3,
            "writeErrors": [{ "index": 0, "code": 2, "errmsg": "bad" }],
        };
        assert_eq!(
            statement_fates(&reply, &[2, 1]),
            vec![None, Some(Ok(Updated::Unknown))]
        );
    }

    fn guarded(id: &str, flag: &'static str, field: &str) -> Write {
        Write::guarded(&Guarded {
            id: id.to_owned(),
            flag,
            condition: doc! { "$eq": ["$status", "queued"] },
            changes: doc! { field: { "$cond": [format!("${flag}"), 1, format!("${field}")] } },
        })
        .unwrap()
    }

    fn decoded(wire: &Wire) -> Document {
        wire.statement.to_document().unwrap()
    }

    #[test]
    fn distinct_events_merge_and_a_second_write_to_one_goes_alone() {
        let writes = [
            guarded("a", "_fenced", "x"),
            guarded("b", "_claimable", "y"),
            Write::plain(&Statement {
                filter: doc! { "eventId": "c" },
                update: Bson::Document(doc! { "$set": { "z": 1 } }),
                upsert: true,
            })
            .unwrap(),
            guarded("a", "_fenced", "x"),
        ];
        let refs: Vec<&Write> = writes.iter().collect();
        let wires = plan(&refs, DEFAULT_MAX_MERGED).unwrap();
        let members: Vec<Vec<usize>> = wires.iter().map(|w| w.members.clone()).collect();
        assert_eq!(members, vec![vec![2], vec![3], vec![0, 1]]);
        assert_eq!(
            decoded(&wires[0]),
            doc! {
                "q": { "eventId": "c" }, "u": { "$set": { "z": 1 } },
                "upsert": true, "multi": false,
            }
        );
        let alone = decoded(&wires[1]);
        assert_eq!(alone.get_document("q").unwrap(), &doc! { "_id": "a" });
        assert_eq!(
            alone.get_array("u").unwrap()[0],
            Bson::Document(doc! { "$set": { "_fenced": { "$eq": ["$status", "queued"] } } })
        );
        let merged = &decoded(&wires[2]);
        assert_eq!(merged.get_bool("multi"), Ok(true));
        assert_eq!(
            merged.get_document("q").unwrap(),
            &doc! { "_id": { "$in": ["a", "b"] } }
        );
        let stages = merged.get_array("u").unwrap();
        assert_eq!(stages.len(), 4);
        // Each flag and each field is chosen by the document's position.
        let flags = stages[1]
            .as_document()
            .unwrap()
            .get_document("$set")
            .unwrap();
        assert_eq!(flags.keys().collect::<Vec<_>>(), ["_fenced", "_claimable"]);
        let unset = stages[3]
            .as_document()
            .unwrap()
            .get_array("$unset")
            .unwrap();
        assert_eq!(unset.len(), 3);
        let alone = plan(&refs, 1).unwrap();
        assert_eq!(alone.len(), 4);
        assert!(
            alone
                .iter()
                .all(|w| decoded(w).get_bool("multi") == Ok(false))
        );
    }

    /// `by_position`'s tree of `leaves`, decoded.
    fn tree_of(leaves: &[RawBsonRef]) -> Bson {
        Bson::try_from(by_position(leaves, 0)).unwrap()
    }

    /// Follows a `by_position` tree as the database would for `position`.
    fn pick(tree: &Bson, position: i32) -> &Bson {
        let Some(cond) = tree.as_document().and_then(|d| d.get_array("$cond").ok()) else {
            return tree;
        };
        let test = cond[0].as_document().unwrap().get_array("$lt").unwrap();
        assert_eq!(test[0], Bson::String(POSITION_VALUE.to_owned()));
        let bound = test[1].as_i32().unwrap();
        pick(if position < bound { &cond[1] } else { &cond[2] }, position)
    }

    /// The tree's depth and its count of `$cond` nodes.
    fn shape(tree: &Bson) -> (usize, usize) {
        match tree.as_document().and_then(|d| d.get_array("$cond").ok()) {
            Some(cond) => {
                let ((left_depth, left), (right_depth, right)) = (shape(&cond[1]), shape(&cond[2]));
                (1 + left_depth.max(right_depth), 1 + left + right)
            }
            None => (0, 0),
        }
    }

    #[test]
    fn each_position_gets_its_own_leaf_in_about_log2_comparisons() {
        assert_eq!(POSITION_VALUE, format!("${POSITION}"));
        for n in 1..=70usize {
            let leaves: Vec<RawBsonRef> = (0..n).map(|k| RawBsonRef::Int64(k as i64)).collect();
            let tree = tree_of(&leaves);
            for k in 0..n {
                assert_eq!(
                    pick(&tree, k as i32),
                    &Bson::Int64(k as i64),
                    "position {k} of {n}"
                );
            }
            let bound = (usize::BITS - (n - 1).leading_zeros()) as usize;
            let (depth, _) = shape(&tree);
            assert!(depth <= bound, "{n} leaves, depth {depth}");
        }
    }

    #[test]
    fn only_the_halves_holding_a_different_leaf_are_split() {
        let keep = Bson::String("$x".into());
        let mut leaves = vec![RawBsonRef::String("$x"); 64];
        leaves[40] = RawBsonRef::Int32(1);
        let tree = tree_of(&leaves);
        assert_eq!(pick(&tree, 40), &Bson::Int32(1));
        assert!(
            (0..64)
                .filter(|&k| k != 40)
                .all(|k| pick(&tree, k) == &keep)
        );
        // Only the halves holding position 40 are split: one test a level
        // (a full tree of 64 leaves has 63).
        assert_eq!(shape(&tree).1, 6);
        let unsplit = tree_of(&vec![RawBsonRef::String("$x"); 64]);
        assert_eq!(unsplit, keep);
    }
}
