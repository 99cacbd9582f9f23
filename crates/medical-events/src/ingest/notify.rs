//! Ingest's nudge to the processor: after an event is stored, a best-effort
//! `POST /queue` marked `Event-Stored: true`, so the receiving processor
//! wakes the patient's lane (if it owns the bucket) without touching the
//! store. It is a hint among others (the owners' change stream, their sweep):
//! bounded in count and in bytes, never blocking intake, dropped when over
//! budget, and nothing is lost when it is.
//!
//! A processor whose change stream is open says so (`Change-Stream: open`):
//! it hears of every insert from the database, with the event, so nudges for
//! inserts would only cost both services CPU at the rate events arrive.
//! Ingest then sends none for a few seconds, then one again, which asks anew.
//! Operators' wakes (`changed`) always go: no insert announces them.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, warn};

use crate::auth::Secret;
use crate::event::{EventId, NewEvent};
use crate::trace_context::TraceContext;

const BACKLOG: usize = 10_000;
/// Bytes of notification bodies waiting or in flight at most (a slow
/// processor must not make ingest hold thousands of 1 MiB payloads).
const BYTE_BUDGET: usize = 4 * 1024 * 1024;
const IN_FLIGHT: usize = 32;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How long nudges for inserts pause after a processor said its change
/// stream is open. Should its stream close meanwhile, its sweep finds the
/// events (and it rescans when the stream opens again); this only bounds how
/// long ingest goes on believing it.
const STREAM_QUIET: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct ProcessorNotifier {
    sender: mpsc::Sender<Notification>,
    /// Bytes of bodies queued or in flight.
    held: Arc<AtomicUsize>,
    quiet: Arc<Quiet>,
}

/// Until when nudges for inserts pause (milliseconds since `start`).
struct Quiet {
    start: Instant,
    until_ms: AtomicU64,
}

impl Quiet {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            until_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn active(&self) -> bool {
        self.now_ms() < self.until_ms.load(Ordering::Relaxed)
    }

    /// A processor answered that its change stream is open.
    fn extend(&self) {
        let until = self.now_ms() + STREAM_QUIET.as_millis() as u64;
        self.until_ms.fetch_max(until, Ordering::Relaxed);
    }
}

struct Notification {
    /// `Event-Stored`: `true` for an insert, `changed` for an operator's action.
    stored: &'static str,
    traceparent: String,
    event_id: String,
    body: Vec<u8>,
}

impl ProcessorNotifier {
    /// Starts the background sender towards `processor_url` (no trailing slash).
    /// `token` is sent as `Authorization: Bearer` (the processor's PROCESSOR_TOKEN).
    /// `ca` is an extra PEM certificate to trust for an https processor URL.
    pub fn spawn(
        processor_url: &str,
        token: Option<Secret>,
        ca: Option<&Path>,
    ) -> Result<Self, String> {
        let (sender, receiver) = mpsc::channel(BACKLOG);
        let mut builder = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            // The token goes to PROCESSOR_URL and nowhere else.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = ca {
            let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
            let certificate = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder = builder.add_root_certificate(certificate);
        }
        let client = builder.build().map_err(|e| e.to_string())?;
        let held = Arc::new(AtomicUsize::new(0));
        let quiet = Arc::new(Quiet::new());
        tokio::spawn(deliver(
            client,
            format!("{processor_url}/queue"),
            token,
            receiver,
            Arc::clone(&held),
            Arc::clone(&quiet),
        ));
        Ok(Self {
            sender,
            held,
            quiet,
        })
    }

    pub fn notify(&self, event_id: EventId, event: &NewEvent, trace: &TraceContext) {
        if self.quiet.active() {
            metrics::counter!("notifications_not_needed_total").increment(1);
            return;
        }
        let body = json!({
            "eventId": event_id.to_string(),
            "patientId": event.patient_id.as_str(),
            "type": event.event_type.as_str(),
            "data": event.data.as_map(),
            "ts": event.ts.as_str(),
        });
        self.send(
            "true",
            trace.child().header_value(),
            event_id.to_string(),
            &body,
        );
    }

    /// Wakes the owner of a stored event's patient (after an operator's
    /// retry or skip), within the same budget as every notification.
    pub fn wake(&self, event: &crate::store::QueuedEvent) {
        let body = json!({
            "eventId": &event.event_id,
            "patientId": &event.patient_id,
            "type": &event.event_type,
            "data": mongodb::bson::Bson::Document(event.data.clone()).into_relaxed_extjson(),
            "ts": &event.ts,
        });
        let trace = TraceContext::new_root().header_value();
        self.send("changed", trace, event.event_id.clone(), &body);
    }

    /// Queues the `POST /queue` body of an event for delivery.
    fn send(
        &self,
        stored: &'static str,
        traceparent: String,
        event_id: String,
        body: &serde_json::Value,
    ) {
        let body = body.to_string().into_bytes();
        let notification = Notification {
            stored,
            traceparent,
            event_id,
            body,
        };
        let event_id = notification.event_id.clone();
        let bytes = notification.body.len();
        if self.held.fetch_add(bytes, Ordering::SeqCst) + bytes > BYTE_BUDGET {
            self.held.fetch_sub(bytes, Ordering::SeqCst);
            metrics::counter!("notifications_dropped_total").increment(1);
            debug!(eventId = %event_id, "notification budget spent; the owner's change stream or sweep picks the event up");
            return;
        }
        if self.sender.try_send(notification).is_err() {
            self.held.fetch_sub(bytes, Ordering::SeqCst);
            metrics::counter!("notifications_dropped_total").increment(1);
            debug!(eventId = %event_id, "notification backlog full; the owner's change stream or sweep picks the event up");
        }
    }
}

async fn deliver(
    client: reqwest::Client,
    url: String,
    token: Option<Secret>,
    mut receiver: mpsc::Receiver<Notification>,
    held: Arc<AtomicUsize>,
    quiet: Arc<Quiet>,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(notification) = receiver.recv().await {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let bytes = notification.body.len();
        let mut request = client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(crate::http::EVENT_STORED_HEADER, notification.stored)
            .header(crate::trace_context::HEADER, notification.traceparent)
            .body(notification.body);
        if let Some(token) = &token {
            request = request.bearer_auth(token.expose());
        }
        let held = Arc::clone(&held);
        let quiet = Arc::clone(&quiet);
        tokio::spawn(async move {
            let _permit = permit;
            let sent = request.send().await;
            held.fetch_sub(bytes, Ordering::SeqCst);
            match sent {
                Ok(response) if response.status().is_success() => {
                    if response
                        .headers()
                        .get(crate::http::CHANGE_STREAM_HEADER)
                        .is_some_and(|v| v.as_bytes() == b"open")
                    {
                        quiet.extend();
                    }
                }
                Ok(response) => warn!(
                    eventId = %notification.event_id,
                    status = response.status().as_u16(),
                    "processor refused the notification; the owner's change stream or sweep picks the event up"
                ),
                Err(e) => warn!(
                    eventId = %notification.event_id,
                    error = %e,
                    "processor unreachable; the owner's change stream or sweep picks the event up"
                ),
            }
        });
    }
}
