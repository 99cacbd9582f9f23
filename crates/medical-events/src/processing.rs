//! The work done for one event: by default simulated (a non-blocking pause
//! of a random duration within the configured range); with `DELIVERY_URL`,
//! a POST of the event to the downstream system.

use std::future::Future;
use std::time::Duration;

use mongodb::bson::Bson;
use rand::Rng;
use serde_json::json;

use crate::store::QueuedEvent;
use crate::trace_context::TraceContext;

/// What the processor runs for each event; `Err` carries a reason that is
/// recorded (never the event's data) and triggers a retry.
pub trait EventHandler: Send + Sync + 'static {
    fn handle(&self, event: &QueuedEvent) -> impl Future<Output = Result<(), String>> + Send;
}

#[derive(Debug, Clone, Copy)]
pub struct SimulatedProcessing {
    pub min: Duration,
    pub max: Duration,
}

impl EventHandler for SimulatedProcessing {
    async fn handle(&self, _event: &QueuedEvent) -> Result<(), String> {
        let millis = rand::rng().random_range(self.min.as_millis()..=self.max.as_millis());
        tokio::time::sleep(Duration::from_millis(millis as u64)).await;
        Ok(())
    }
}

/// Delivery downstream: `POST DELIVERY_URL` with the event as JSON,
/// `Idempotency-Key: <eventId>` (the downstream deduplicates a redelivery
/// with it) and the event's trace context. 2xx is success; anything else,
/// a timeout included, is a failed attempt, retried per the retry policy.
#[derive(Clone)]
pub struct Delivery {
    client: reqwest::Client,
    url: String,
    /// Extra header with the downstream's credentials (`DELIVERY_AUTH_HEADER`).
    auth: Option<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>,
}

impl Delivery {
    pub fn new(
        url: &str,
        auth: Option<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| format!("cannot build the delivery client: {e}"))?;
        Ok(Self {
            client,
            url: url.to_owned(),
            auth,
        })
    }
}

impl EventHandler for Delivery {
    async fn handle(&self, event: &QueuedEvent) -> Result<(), String> {
        let body = json!({
            "eventId": event.event_id,
            "patientId": event.patient_id,
            "type": event.event_type,
            "data": Bson::Document(event.data.clone()).into_relaxed_extjson(),
            "ts": event.ts,
            "seq": event.seq,
        });
        let trace = event
            .traceparent
            .as_deref()
            .and_then(TraceContext::parse)
            .map(|t| t.child())
            .unwrap_or_else(TraceContext::new_root);
        let mut request = self
            .client
            .post(&self.url)
            .header("Idempotency-Key", &event.event_id)
            .header(crate::trace_context::HEADER, trace.header_value())
            .json(&body);
        if let Some((name, value)) = &self.auth {
            request = request.header(name, value);
        }
        let response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                "delivery timed out".to_owned()
            } else {
                format!("delivery failed: {}", without_url(&e))
            }
        })?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("downstream answered {}", status.as_u16()))
        }
    }
}

/// The error's text without the URL (which may carry credentials).
fn without_url(error: &reqwest::Error) -> String {
    let mut error = std::error::Error::source(error)
        .map(ToString::to_string)
        .unwrap_or_else(|| error.to_string());
    error.truncate(200);
    error
}

/// The handler a processor runs, chosen by configuration.
#[derive(Clone)]
pub enum Handler {
    Simulated(SimulatedProcessing),
    Delivery(Delivery),
}

impl EventHandler for Handler {
    async fn handle(&self, event: &QueuedEvent) -> Result<(), String> {
        match self {
            Self::Simulated(simulated) => simulated.handle(event).await,
            Self::Delivery(delivery) => delivery.handle(event).await,
        }
    }
}
