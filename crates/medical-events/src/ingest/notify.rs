//! Ingest's nudge to the processor: after an event is stored, a best-effort
//! `POST /queue` marked `Event-Stored: true`, so the receiving processor
//! wakes the patient's lane (if it owns the bucket) without touching the
//! store. It is a hint among others (the owners' change stream, their sweep):
//! bounded in count and in bytes, never blocking intake, dropped when over
//! budget, and nothing is lost when it is.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

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

#[derive(Clone)]
pub struct ProcessorNotifier {
    sender: mpsc::Sender<Notification>,
    /// Bytes of bodies queued or in flight.
    held: Arc<AtomicUsize>,
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
        tokio::spawn(deliver(
            client,
            format!("{processor_url}/queue"),
            token,
            receiver,
            Arc::clone(&held),
        ));
        Ok(Self { sender, held })
    }

    pub fn notify(&self, event_id: EventId, event: &NewEvent, trace: &TraceContext) {
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
        tokio::spawn(async move {
            let _permit = permit;
            let sent = request.send().await;
            held.fetch_sub(bytes, Ordering::SeqCst);
            match sent {
                Ok(response) if response.status().is_success() => {}
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
