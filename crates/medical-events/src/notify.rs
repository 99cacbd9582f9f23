//! Ingest's fast path to the processor: after an event is stored, a
//! best-effort `POST /queue` so processing starts at once. It is bounded and
//! never blocks intake; if it is dropped or fails, the processor's sweep finds
//! the stored event anyway.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, warn};

use crate::auth::Secret;
use crate::event::{EventId, NewEvent};
use crate::trace_context::TraceContext;

const BACKLOG: usize = 10_000;
const IN_FLIGHT: usize = 32;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone)]
pub struct ProcessorNotifier {
    sender: mpsc::Sender<Notification>,
}

struct Notification {
    traceparent: String,
    event_id: String,
    patient_id: String,
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
        let mut builder = reqwest::Client::builder().timeout(REQUEST_TIMEOUT);
        if let Some(ca) = ca {
            let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
            let certificate = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder = builder.add_root_certificate(certificate);
        }
        let client = builder.build().map_err(|e| e.to_string())?;
        tokio::spawn(deliver(
            client,
            format!("{processor_url}/queue"),
            token,
            receiver,
        ));
        Ok(Self { sender })
    }

    pub fn notify(&self, event_id: EventId, event: &NewEvent, trace: &TraceContext) {
        let notification = Notification {
            traceparent: trace.child().header_value(),
            event_id: event_id.to_string(),
            patient_id: event.patient_id.as_str().to_owned(),
            body: json!({
                "eventId": event_id.to_string(),
                "patientId": event.patient_id.as_str(),
                "type": event.event_type.as_str(),
                "data": event.data.as_map(),
                "ts": event.ts.as_str(),
            })
            .to_string()
            .into_bytes(),
        };
        if self.sender.try_send(notification).is_err() {
            debug!(eventId = %event_id, "notification backlog full; the processor's sweep will pick the event up");
        }
    }
}

async fn deliver(
    client: reqwest::Client,
    url: String,
    token: Option<Secret>,
    mut receiver: mpsc::Receiver<Notification>,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(notification) = receiver.recv().await {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut request = client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(crate::trace_context::HEADER, notification.traceparent)
            .body(notification.body);
        if let Some(token) = &token {
            request = request.bearer_auth(token.expose());
        }
        tokio::spawn(async move {
            let _permit = permit;
            match request.send().await {
                Ok(response) if response.status().is_success() => {}
                Ok(response) => warn!(
                    eventId = %notification.event_id,
                    patientId = %notification.patient_id,
                    status = response.status().as_u16(),
                    "processor refused the notification; the sweep will pick the event up"
                ),
                Err(e) => warn!(
                    eventId = %notification.event_id,
                    patientId = %notification.patient_id,
                    error = %e,
                    "processor unreachable; the sweep will pick the event up"
                ),
            }
        });
    }
}
