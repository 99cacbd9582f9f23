//! The work done for one event: by default simulated (a non-blocking pause
//! of a random duration within the configured range); with `DELIVERY_URL`,
//! a POST of the event to the downstream system, with a fencing token.

use std::future::Future;
use std::time::Duration;

use mongodb::bson::Bson;
use rand::Rng;
use serde_json::json;

use crate::auth::Secret;
use crate::config::{ConfigError, Source, invalid, mask_uri_password, optional};
use crate::store::QueuedEvent;
use crate::trace_context::TraceContext;

/// Why a handler did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// A failed attempt; the reason is recorded (never the event's data)
    /// and the attempt retried per the retry policy.
    #[error("{0}")]
    Failed(String),
    /// The downstream has heard from a newer owner of this patient (a higher
    /// fencing token): this instance lost the bucket. The run is abandoned,
    /// not counted as a failed attempt.
    #[error("the downstream refused a stale fencing token")]
    Superseded,
}

/// What the processor runs for each event. The event carries the epoch of
/// the claim it runs under (`event.epoch`): the fencing token.
pub trait EventHandler: Send + Sync + 'static {
    fn handle(&self, event: &QueuedEvent) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

#[derive(Debug, Clone, Copy)]
pub struct SimulatedProcessing {
    pub min: Duration,
    pub max: Duration,
}

impl EventHandler for SimulatedProcessing {
    async fn handle(&self, _event: &QueuedEvent) -> Result<(), HandlerError> {
        let millis = rand::rng().random_range(self.min.as_millis()..=self.max.as_millis());
        tokio::time::sleep(Duration::from_millis(millis as u64)).await;
        Ok(())
    }
}

/// Delivery downstream: `POST DELIVERY_URL` with the event as JSON,
/// `Idempotency-Key: <eventId>` (the downstream deduplicates a redelivery
/// with it), `Fencing-Token: <epoch>` (a downstream that keeps the highest
/// per patient refuses a stale owner with `409`) and the event's trace
/// context. 2xx is success; `409` means a newer owner has the patient;
/// anything else, a timeout included, is a failed attempt, retried per the
/// retry policy.
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
        // No redirects: following one would send the event and the
        // downstream's credentials (DELIVERY_AUTH_HEADER) to another host.
        // A 3xx is a failed attempt, logged with its status.
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
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

/// The header naming the fencing token of a delivery.
pub const FENCING_TOKEN: &str = "fencing-token";

impl EventHandler for Delivery {
    async fn handle(&self, event: &QueuedEvent) -> Result<(), HandlerError> {
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
            .header(FENCING_TOKEN, event.epoch.to_string())
            .header(crate::trace_context::HEADER, trace.header_value())
            .json(&body);
        if let Some((name, value)) = &self.auth {
            request = request.header(name, value);
        }
        let response = request.send().await.map_err(|e| {
            HandlerError::Failed(if e.is_timeout() {
                "delivery timed out".to_owned()
            } else {
                format!("delivery failed: {}", without_url(&e))
            })
        })?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else if status == reqwest::StatusCode::CONFLICT {
            Err(HandlerError::Superseded)
        } else {
            Err(HandlerError::Failed(format!(
                "downstream answered {}",
                status.as_u16()
            )))
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

/// Delivery downstream (`DELIVERY_URL`, `DELIVERY_AUTH_HEADER`).
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    pub url: String,
    /// `Name: value`, sent with every delivery; never logged.
    pub auth_header: Option<(String, Secret)>,
}

impl DeliverySettings {
    pub fn from_source(source: &impl Source) -> Result<Option<Self>, ConfigError> {
        let url = optional(source, "DELIVERY_URL").map(|u| u.trim().to_owned());
        let auth = optional(source, "DELIVERY_AUTH_HEADER");
        let Some(url) = url else {
            return Ok(None);
        };
        if !(url.starts_with("http://") || url.starts_with("https://"))
            || reqwest::Url::parse(&url).is_err()
        {
            return Err(invalid(
                "DELIVERY_URL",
                &mask_uri_password(&url),
                "must be an http(s) URL",
            ));
        }
        let auth_header = match auth {
            None => None,
            Some(raw) => {
                let (name, value) = raw.split_once(':').ok_or_else(|| ConfigError::Invalid {
                    name: "DELIVERY_AUTH_HEADER",
                    value: "***".to_owned(),
                    reason: "must be `Header-Name: value`, e.g. `Authorization: Bearer ...`"
                        .to_owned(),
                })?;
                let name = name.trim().to_owned();
                if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err()
                    || reqwest::header::HeaderValue::from_str(value.trim()).is_err()
                {
                    return Err(ConfigError::Invalid {
                        name: "DELIVERY_AUTH_HEADER",
                        value: "***".to_owned(),
                        reason: "is not a valid HTTP header".to_owned(),
                    });
                }
                Some((name, Secret::new(value.trim())))
            }
        };
        Ok(Some(Self { url, auth_header }))
    }
}

/// What an event gets when it did not arrive as HL7 (and every event
/// without `DELIVERY_MLLP`), chosen by configuration.
#[derive(Clone)]
pub enum Handler {
    Simulated(SimulatedProcessing),
    Delivery(Delivery),
}

impl EventHandler for Handler {
    async fn handle(&self, event: &QueuedEvent) -> Result<(), HandlerError> {
        // Boxed: an HTTP request's future is several kilobytes, and inline
        // every lane at work would carry that much, simulated or not.
        match self {
            Self::Simulated(simulated) => simulated.handle(event).await,
            Self::Delivery(delivery) => Box::pin(delivery.handle(event)).await,
        }
    }
}

/// The handler a processor runs: events that arrived over MLLP go out over
/// MLLP when `DELIVERY_MLLP` is set; everything else to `rest`.
#[derive(Clone)]
pub struct Routed {
    pub mllp: Option<super::mllp_delivery::MllpDelivery>,
    pub rest: Handler,
}

impl EventHandler for Routed {
    async fn handle(&self, event: &QueuedEvent) -> Result<(), HandlerError> {
        match &self.mllp {
            Some(mllp) if event.source.as_ref().is_some_and(|s| s.kind == "mllp") => {
                // Boxed for the reason `Handler::handle` gives.
                Box::pin(mllp.handle(event)).await
            }
            _ => self.rest.handle(event).await,
        }
    }
}
