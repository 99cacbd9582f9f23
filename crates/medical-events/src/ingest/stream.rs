//! `GET /events/stream`: live outcomes as Server-Sent Events, one message per
//! recorded outcome, scoped like `GET /events/{id}` (a client sees its own
//! events, an operator all). Fed by one change stream on `processed_events`
//! per ingest process, shared by its connections, opened while anyone
//! listens. A reconnect with `Last-Event-ID` first replays what was recorded
//! since (from the collection, as long as retention keeps it, starting
//! [`REPLAY_OVERLAP`](crate::store::REPLAY_OVERLAP) early: delivery is at least once), then goes on live.
//!
//! Memory is bounded per connection: a connection that does not keep up
//! (its buffer of [`BUFFER`] messages is full, or it fell behind the shared
//! ring) is cut off; it resumes from its last id when it comes back.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{Extension, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use mongodb::bson::{Document, doc};
use mongodb::change_stream::event::ResumeToken;
use mongodb::options::FullDocumentType;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, watch};
use tracing::{debug, warn};
use utoipa::ToSchema;

use super::routes::IngestState;
use crate::auth::Caller;
use crate::config::{ConfigError, Source, positive};
use crate::http::problem::{ApiError, Problem};
use crate::http::query_params::QueryParams;
use crate::slots::{Full, Slot, Slots};
use crate::store::{
    OutcomeCursor, PROCESSED_EVENTS, ProcessedEvent, ProcessingResult, Store, overlap_before,
};

/// Messages waiting for one connection at most.
pub const BUFFER: usize = 256;
/// Outcomes the shared ring holds for connections that are a little behind.
const RING: usize = 1024;
/// Outcomes per replay query.
const REPLAY_PAGE: i64 = 500;
/// How long a replay waits for its reader to take the next message.
const REPLAY_STALL: Duration = Duration::from_secs(30);
const MAX_AWAIT: Duration = Duration::from_millis(500);
/// How long a new connection waits for the change stream to open.
const OPEN_WAIT: Duration = Duration::from_secs(5);

/// Bounds on open outcome streams: each holds a task, a buffer and a
/// connection for as long as the reader likes.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// Per client (one API key's name).
    pub per_client: usize,
    /// Of this ingest process.
    pub total: usize,
}

impl StreamLimits {
    pub fn from_source(source: &impl Source) -> Result<Self, ConfigError> {
        Ok(Self {
            per_client: positive(source, "STREAM_MAX_PER_CLIENT", 8)? as usize,
            total: positive(source, "STREAM_MAX", 1_000)? as usize,
        })
    }
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            per_client: 8,
            total: 1_000,
        }
    }
}

/// The process's shared feed of recorded outcomes.
#[derive(Clone)]
pub struct OutcomeFeed {
    store: Store,
    limits: StreamLimits,
    streams: Slots<Arc<str>>,
    sender: broadcast::Sender<Arc<ProcessedEvent>>,
    watching: Arc<AtomicBool>,
    /// Whether the change stream is open: what commits from then on reaches
    /// the live feed.
    open: Arc<watch::Sender<bool>>,
}

impl OutcomeFeed {
    pub fn new(store: Store, limits: StreamLimits) -> Self {
        Self {
            store,
            limits,
            streams: Slots::new(limits.total, limits.per_client),
            sender: broadcast::channel(RING).0,
            watching: Arc::new(AtomicBool::new(false)),
            open: Arc::new(watch::channel(false).0),
        }
    }

    /// A place for one more stream of `client`, or the limit it is past.
    fn admit(&self, client: &Arc<str>) -> Result<Slot<Arc<str>>, ApiError> {
        self.streams.take(client).map_err(|full| match full {
            Full::Overall => ApiError::TooManyStreams {
                setting: "STREAM_MAX",
                limit: self.limits.total,
            },
            Full::Key => ApiError::TooManyStreams {
                setting: "STREAM_MAX_PER_CLIENT",
                limit: self.limits.per_client,
            },
        })
    }

    /// Live outcomes from now on; opens the change stream if it is not open
    /// and waits (up to [`OPEN_WAIT`]) until it is, so that a replay read
    /// afterwards leaves no gap before the live feed, and a new listener
    /// misses nothing recorded after its response began.
    async fn subscribe(&self) -> broadcast::Receiver<Arc<ProcessedEvent>> {
        let receiver = self.sender.subscribe();
        if !self.watching.swap(true, Ordering::SeqCst) {
            tokio::spawn(watch_outcomes(self.clone()));
        }
        let mut open = self.open.subscribe();
        if tokio::time::timeout(OPEN_WAIT, open.wait_for(|open| *open))
            .await
            .is_err()
        {
            warn!("the outcome change stream is not open yet; live outcomes may come late");
        }
        receiver
    }

    /// Whether the watch should end: nobody listens. Marks it stopped, then
    /// looks again: a connection that subscribed in between saw it running
    /// and started none, so the watch goes on for it.
    fn nobody_listens(&self) -> bool {
        if self.sender.receiver_count() > 0 {
            return false;
        }
        self.open.send_replace(false);
        self.watching.store(false, Ordering::SeqCst);
        let goes_on =
            self.sender.receiver_count() > 0 && !self.watching.swap(true, Ordering::SeqCst);
        if goes_on {
            self.open.send_replace(true);
        }
        !goes_on
    }
}

/// Watches `processed_events` while anyone listens: new outcomes, and
/// outcomes an operator's retry or skip replaced (not history updates).
async fn watch_outcomes(feed: OutcomeFeed) {
    let collection = feed
        .store
        .database()
        .collection::<Document>(PROCESSED_EVENTS);
    let pipeline = [
        doc! { "$match": { "$or": [
            { "operationType": "insert" },
            { "updateDescription.updatedFields.run": { "$exists": true } },
            { "updateDescription.updatedFields.result": { "$exists": true } },
        ] } },
        doc! { "$project": { "fullDocument.data": 0 } },
    ];
    let mut token: Option<ResumeToken> = None;
    loop {
        let mut opening = collection
            .watch()
            .pipeline(pipeline.clone())
            .full_document(FullDocumentType::UpdateLookup)
            .max_await_time(MAX_AWAIT);
        if let Some(token) = token.clone() {
            opening = opening.start_after(token);
        }
        let mut changes = match opening.await {
            Ok(changes) => {
                feed.open.send_replace(true);
                changes
            }
            Err(e) => {
                warn!(error = %e, "cannot watch outcomes; live stream clients wait");
                tokio::time::sleep(Duration::from_secs(2)).await;
                if feed.nobody_listens() {
                    return;
                }
                continue;
            }
        };
        loop {
            if feed.nobody_listens() {
                debug!("nobody listens to outcomes any more; stream closed");
                return;
            }
            let asked = Instant::now();
            match changes.next_if_any().await {
                Ok(Some(change)) => {
                    let outcome = change
                        .full_document
                        .and_then(|d| mongodb::bson::from_document::<ProcessedEvent>(d).ok());
                    if let Some(outcome) = outcome {
                        let _ = feed.sender.send(Arc::new(outcome));
                    }
                }
                Ok(None) => {
                    if asked.elapsed() < Duration::from_millis(20) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "outcome change stream failed; reopening");
                    break;
                }
            }
            token = changes.resume_token();
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct StreamParams {
    /// For clients that cannot set the `Last-Event-ID` header.
    last_event_id: Option<String>,
}

/// Live outcomes (Server-Sent Events), resumable with `Last-Event-ID`.
#[utoipa::path(get, path = "/events/stream", tag = "events",
    params(
        ("Last-Event-ID" = Option<String>, Header, description = "Resume from this outcome (the `id` of the last message received); the replay starts 10 s before it, so deduplicate by id"),
        ("lastEventId" = Option<String>, Query, description = "The same, for clients that cannot set headers"),
    ),
    responses(
        (status = 200, description = "text/event-stream: one `outcome` message per recorded outcome, `id` to resume from",
            content_type = "text/event-stream", body = StreamMessage),
        (status = 400, description = "Last-Event-ID is not an id this stream gave, or a query parameter is unknown", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or invalid API key", body = Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 429, description = "Rate limit of this client exhausted", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    ),
    security(("bearer" = [])))]
pub(crate) async fn outcomes(
    State(state): State<IngestState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    QueryParams(params): QueryParams<StreamParams>,
) -> Result<Response, ApiError> {
    let raw = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(params.last_event_id);
    let resume = raw
        .as_deref()
        .map(|id| {
            OutcomeCursor::parse(id)
                .ok_or_else(|| ApiError::field("Last-Event-ID", "is not an id this stream gave"))
        })
        .transpose()?;
    let mut asked = mongodb::bson::Document::new();
    if let Some(raw) = &raw {
        asked.insert("lastEventId", raw);
    }
    let permit = state.outcomes.admit(&caller.client)?;
    super::admin::audit_read(&state, &caller, "/events/stream", None, None, asked).await?;
    let client = caller.scope().map(str::to_owned);
    // Subscribed before the replay, so nothing recorded meanwhile is missed.
    let live = state.outcomes.subscribe().await;
    let (sender, receiver) = mpsc::channel(BUFFER);
    tokio::spawn(async move {
        let _permit = permit;
        feed_one(state.outcomes.store.clone(), client, resume, live, sender).await;
    });
    metrics::counter!("outcome_stream_connections_total").increment(1);
    let messages = stream::unfold(receiver, |mut receiver| async move {
        receiver
            .recv()
            .await
            .map(|message| (Ok::<Event, Infallible>(message), receiver))
    });
    Ok(Sse::new(messages)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// One message of `GET /events/stream`, as its Server-Sent Events fields
/// (the stream is `text/event-stream`, not JSON: this documents its frames).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // documentation of the SSE frame; `message` writes it
struct StreamMessage {
    /// What `Last-Event-ID` takes to resume: `<processedAt ms>-<eventId>`.
    #[schema(example = "1795830884123-019ac4f1-6f1e-7c3b-9a52-0d4a8b7e2f11")]
    id: String,
    #[schema(example = "outcome")]
    event: String,
    /// The outcome, as the JSON text of the message's `data:` line.
    data: OutcomeMessage,
}

/// An outcome as the stream sends it.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct OutcomeMessage {
    #[schema(format = Uuid)]
    event_id: String,
    patient_id: String,
    /// Operators only (it counts every client's events of the patient).
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<i64>,
    #[serde(rename = "type")]
    event_type: String,
    client: String,
    /// `processed`, `failed` or `skipped`.
    status: String,
    result: ProcessingResult,
    run: i32,
    attempts: i32,
    #[schema(format = DateTime)]
    processed_at: String,
}

/// `for_client`: the stream of a client, who sees neither `seq` nor an
/// operator's or system's text (`ProcessingResult::for_client`).
fn message(outcome: &ProcessedEvent, for_client: bool) -> Event {
    let status = match outcome.result.status.as_str() {
        "success" => "processed",
        other => other,
    };
    let data = OutcomeMessage {
        event_id: outcome.event_id.clone(),
        patient_id: outcome.patient_id.clone(),
        seq: (!for_client).then_some(outcome.seq),
        event_type: outcome.event_type.clone(),
        client: outcome.client.clone(),
        status: status.to_owned(),
        result: if for_client {
            outcome.result.for_client()
        } else {
            outcome.result.clone()
        },
        run: outcome.run,
        attempts: outcome.attempts,
        processed_at: outcome
            .processed_at
            .try_to_rfc3339_string()
            .unwrap_or_default(),
    };
    Event::default()
        .id(OutcomeCursor::of(outcome).to_id())
        .event("outcome")
        .data(serde_json::to_string(&data).unwrap_or_default())
}

/// Why a connection's feed ended.
enum Ended {
    /// The client went away.
    Gone,
    /// The client could not keep up: cut off, to resume later.
    CutOff,
}

fn offer(
    sender: &mpsc::Sender<Event>,
    outcome: &ProcessedEvent,
    for_client: bool,
) -> Result<(), Ended> {
    sender
        .try_send(message(outcome, for_client))
        .map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Ended::CutOff,
            mpsc::error::TrySendError::Closed(_) => Ended::Gone,
        })
}

/// The replay's most recent outcomes (by message id: an operator's skip of
/// a parked event keeps its run but gets a new id), to skip when the live
/// feed repeats them; at most [`REPLAY_OVERLAP`](crate::store::REPLAY_OVERLAP) worth.
#[derive(Default)]
struct Recent {
    order: VecDeque<OutcomeCursor>,
    keys: HashSet<OutcomeCursor>,
}

impl Recent {
    fn remember(&mut self, cursor: OutcomeCursor) {
        let horizon = overlap_before(cursor.processed_at);
        self.keys.insert(cursor.clone());
        self.order.push_back(cursor);
        while let Some(oldest) = self.order.front() {
            if oldest.processed_at >= horizon {
                break;
            }
            self.keys.remove(oldest);
            self.order.pop_front();
        }
    }

    /// Whether a live outcome was replayed already. Once live outcomes are
    /// past the overlap, nothing replayed can come again: forgets them.
    fn repeats(&mut self, cursor: &OutcomeCursor) -> bool {
        let Some(newest) = self.order.back() else {
            return false;
        };
        if overlap_before(cursor.processed_at) > newest.processed_at {
            *self = Self::default();
            return false;
        }
        self.keys.contains(cursor)
    }
}

async fn feed_one(
    store: Store,
    client: Option<String>,
    resume: Option<OutcomeCursor>,
    mut live: broadcast::Receiver<Arc<ProcessedEvent>>,
    sender: mpsc::Sender<Event>,
) {
    let ended: Result<(), Ended> = async {
        // (eventId, run) of the replay's outcomes within the overlap of its
        // newest: the live feed, subscribed before the replay, may bring
        // those again.
        let mut replayed = Recent::default();
        if let Some(resume) = resume {
            let mut from = resume.replay_start();
            loop {
                let page = store
                    .outcomes_after(&from, client.as_deref(), REPLAY_PAGE)
                    .await
                    .map_err(|_| Ended::CutOff)?;
                for outcome in &page {
                    // At the reader's pace: a replay is read from the store,
                    // not held in memory, so it waits for a slow reader (up
                    // to REPLAY_STALL) rather than cutting it off.
                    sender
                        .send_timeout(message(outcome, client.is_some()), REPLAY_STALL)
                        .await
                        .map_err(|e| match e {
                            mpsc::error::SendTimeoutError::Timeout(_) => Ended::CutOff,
                            mpsc::error::SendTimeoutError::Closed(_) => Ended::Gone,
                        })?;
                    from = OutcomeCursor::of(outcome);
                    replayed.remember(from.clone());
                }
                if (page.len() as i64) < REPLAY_PAGE {
                    break;
                }
            }
        }
        loop {
            let received = tokio::select! {
                received = live.recv() => received,
                // A client that went away is noticed at once, not at the
                // next outcome it would be shown (which may never come).
                () = sender.closed() => return Err(Ended::Gone),
            };
            let outcome = match received {
                Ok(outcome) => outcome,
                Err(broadcast::error::RecvError::Lagged(_)) => return Err(Ended::CutOff),
                Err(broadcast::error::RecvError::Closed) => return Err(Ended::Gone),
            };
            if client.as_deref().is_some_and(|c| c != outcome.client) {
                continue;
            }
            if replayed.repeats(&OutcomeCursor::of(&outcome)) {
                continue;
            }
            offer(&sender, &outcome, client.is_some())?;
        }
    }
    .await;
    if let Err(Ended::CutOff) = ended {
        metrics::counter!("outcome_stream_cut_off_total").increment(1);
        debug!("outcome stream client too slow; cut off");
    }
}

#[cfg(test)]
mod tests {
    use mongodb::bson::DateTime;

    use super::*;
    use crate::store::REPLAY_OVERLAP;

    fn cursor(millis: i64, event_id: &str) -> OutcomeCursor {
        OutcomeCursor {
            processed_at: DateTime::from_millis(millis),
            event_id: event_id.to_owned(),
        }
    }

    #[test]
    fn a_live_repeat_of_a_replayed_outcome_is_skipped_but_a_new_outcome_of_its_event_is_not() {
        let mut replayed = Recent::default();
        replayed.remember(cursor(1_000, "a"));
        assert!(replayed.repeats(&cursor(1_000, "a")));
        // An operator's skip of a parked event: same event and run, new time.
        assert!(!replayed.repeats(&cursor(1_500, "a")));
    }

    #[test]
    fn the_replay_is_forgotten_once_live_outcomes_are_past_the_overlap() {
        let mut replayed = Recent::default();
        replayed.remember(cursor(1_000, "a"));
        let later = 1_000 + REPLAY_OVERLAP.as_millis() as i64 + 1;
        assert!(!replayed.repeats(&cursor(later, "b")));
        assert!(!replayed.repeats(&cursor(1_000, "a")));
    }
}
