//! The fast path from an accepted event to its owner: a change stream on
//! `queued_events` inserts, filtered to the buckets this instance owns,
//! wakes the patient's lane within milliseconds of the insert, whichever
//! instance received the HTTP notification (or none).
//!
//! It carries the inserted event itself when it is small, so the lane that
//! knows it is the patient's next can claim it without reading the queue.
//!
//! It is a hint, not the source of truth: when the owned set changes the
//! stream is reopened from its last resume token with the new filter; when
//! the token is lost (`ChangeStreamHistoryLost`), the stream starts again
//! from now, and a stream opened from now (the first one too) is followed
//! by a scan of its buckets; when streams are unavailable (a standalone
//! server), the owned buckets are rescanned and the periodic sweep carries
//! on alone.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mongodb::bson::{RawDocumentBuf, doc};
use mongodb::change_stream::event::ResumeToken;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::ownership::Ownership;
use crate::store::{QUEUED_EVENTS, QueuedEvent, READ_AHEAD_MAX_PAYLOAD, Store};

/// The server's "resume token no longer in the oplog" error.
const HISTORY_LOST: i32 = 286;
const RETRY: Duration = Duration::from_secs(5);
/// How long a getMore may wait for new events before coming back empty.
const MAX_AWAIT: Duration = Duration::from_millis(500);
/// Pause after an empty answer that came back sooner than this.
const IDLE_PAUSE: Duration = Duration::from_millis(20);
/// How often the open stream's buckets are compared with the usable ones: a
/// lease that lapsed (late renewals) and came back is usable again without
/// an ownership change to announce it, and the stream must cover it (ingest
/// does not nudge while the stream is open).
const COVER_CHECK: Duration = Duration::from_secs(1);

/// What the stream says about one insert.
pub enum Inserted {
    /// The event as inserted (at most [`READ_AHEAD_MAX_PAYLOAD`] bytes).
    Event(Box<QueuedEvent>),
    /// Only whose it is: the event is larger, or not readable as an event.
    Patient(String),
}

pub type Wake = Arc<dyn Fn(Inserted) + Send + Sync>;

/// Keeps the flag and the operators' gauge (`processor_change_stream_open`).
fn set_live(live: &AtomicBool, open: bool) {
    live.store(open, Ordering::Release);
    metrics::gauge!("processor_change_stream_open").set(if open { 1.0 } else { 0.0 });
}

/// Watches inserts into the owned buckets, handing each to `wake`; `live`
/// says whether the stream is open on the owned set (else nudges and scans
/// are the only wake-ups).
pub fn spawn(
    store: &Store,
    ownership: Ownership,
    wake: Wake,
    live: Arc<AtomicBool>,
    rescans: mpsc::UnboundedSender<Vec<i32>>,
    stop: CancellationToken,
) {
    let collection = store.database().collection::<RawDocumentBuf>(QUEUED_EVENTS);
    tokio::spawn(async move {
        let mut token: Option<ResumeToken> = None;
        // A stream opened without a token starts from now: what was inserted
        // before it opened is found by a scan made after it opened (a scan
        // at start-up, a takeover or an error may have run before some of
        // those inserts). True until the first stream opens, and again
        // after the token is lost.
        let mut rescan_on_open = true;
        let mut changes = ownership.subscribe();
        let mut warned = false;
        loop {
            set_live(&live, false);
            if stop.is_cancelled() {
                return;
            }
            changes.borrow_and_update();
            let buckets = ownership.usable_buckets();
            if buckets.is_empty() {
                // A lapsed lease comes back unannounced: look again soon.
                tokio::select! {
                    _ = changes.changed() => continue,
                    () = tokio::time::sleep(COVER_CHECK) => continue,
                    () = stop.cancelled() => return,
                }
            }
            let pipeline = [
                doc! { "$match": {
                    "operationType": "insert",
                    "fullDocument.bucket": { "$in": &buckets },
                } },
                // The event whole when it is small; else only whose it is
                // (an HL7 message may be megabytes).
                doc! { "$project": { "operationType": 1, "fullDocument": { "$cond": [
                    { "$lte": [{ "$bsonSize": "$fullDocument" }, READ_AHEAD_MAX_PAYLOAD] },
                    "$fullDocument",
                    { "patientId": "$fullDocument.patientId" },
                ] } } },
            ];
            let mut watch = collection
                .watch()
                .pipeline(pipeline)
                .max_await_time(MAX_AWAIT);
            if let Some(token) = token.clone() {
                watch = watch.start_after(token);
            }
            let mut stream = match watch.await {
                Ok(stream) => {
                    warned = false;
                    set_live(&live, true);
                    if std::mem::take(&mut rescan_on_open) {
                        let _ = rescans.send(buckets.clone());
                    }
                    // The position it opened at (the resume token of its
                    // first answer): a reopen before its first change resumes
                    // from there, not from now.
                    if let Some(opened_at) = stream.resume_token() {
                        token = Some(opened_at);
                    }
                    stream
                }
                Err(e) => {
                    if !warned {
                        warn!(error = %e, "cannot open the change stream; relying on the periodic sweep");
                        warned = true;
                    }
                    if e.code() == Some(HISTORY_LOST) {
                        token = None;
                        rescan_on_open = true;
                    }
                    let _ = rescans.send(buckets);
                    tokio::select! {
                        () = tokio::time::sleep(RETRY) => continue,
                        () = stop.cancelled() => return,
                    }
                }
            };
            debug!(buckets = buckets.len(), "watching for new events");
            // One getMore at a time (never cancelled mid-flight: the driver's
            // stream must not be dropped while a request is out), so the
            // loop notices a new owned set or a stop between requests.
            let mut checked = Instant::now();
            loop {
                if stop.is_cancelled() {
                    return;
                }
                if changes.has_changed().unwrap_or(true) {
                    break;
                }
                if checked.elapsed() >= COVER_CHECK {
                    checked = Instant::now();
                    let uncovered = (ownership.usable_buckets().iter())
                        .any(|bucket| buckets.binary_search(bucket).is_err());
                    if uncovered {
                        // Reopened after the last change seen: nothing is missed.
                        break;
                    }
                }
                let asked = Instant::now();
                match stream.next_if_any().await {
                    Ok(Some(change)) => {
                        if let Some(inserted) = change.full_document.as_ref().and_then(inserted) {
                            wake(inserted);
                        }
                    }
                    Ok(None) => {
                        // Servers that do not wait for maxAwaitTime answer at
                        // once; do not spin on them.
                        if asked.elapsed() < IDLE_PAUSE {
                            tokio::time::sleep(IDLE_PAUSE).await;
                        }
                    }
                    Err(e) => {
                        set_live(&live, false);
                        warn!(error = %e, "change stream failed; rescanning owned buckets");
                        token = if e.code() == Some(HISTORY_LOST) {
                            rescan_on_open = true;
                            None
                        } else {
                            stream.resume_token()
                        };
                        let _ = rescans.send(ownership.usable_buckets());
                        break;
                    }
                }
                token = stream.resume_token();
            }
        }
    });
}

/// The event of an insert, or at least its patient. A large one is not
/// kept: a lane's memory holds small events only.
fn inserted(document: &RawDocumentBuf) -> Option<Inserted> {
    if document.as_bytes().len() <= READ_AHEAD_MAX_PAYLOAD as usize
        && let Ok(event) = mongodb::bson::from_slice::<QueuedEvent>(document.as_bytes())
    {
        return Some(Inserted::Event(Box::new(event)));
    }
    let patient = document.get_str("patientId").ok()?;
    Some(Inserted::Patient(patient.to_owned()))
}

/// Error code of a driver error, when the server sent one.
trait Code {
    fn code(&self) -> Option<i32>;
}

impl Code for mongodb::error::Error {
    fn code(&self) -> Option<i32> {
        match self.kind.as_ref() {
            mongodb::error::ErrorKind::Command(e) => Some(e.code),
            _ => None,
        }
    }
}
