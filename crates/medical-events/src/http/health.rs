//! Liveness (`/health`, checks nothing but the process) and readiness
//! (`/ready`, 503 while MongoDB does not answer).

use std::time::Duration;

use axum::Json;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::problem::ApiError;
use crate::store::Store;

const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub fn live(service: &'static str) -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "service": service }))
}

pub async fn ready(store: &Store, service: &'static str) -> Response {
    ready_with(store, service, json!({})).await
}

/// Readiness with extra fields in the body (the processor's leases).
pub async fn ready_with(
    store: &Store,
    service: &'static str,
    extra: serde_json::Value,
) -> Response {
    match tokio::time::timeout(READY_TIMEOUT, store.ping()).await {
        Ok(Ok(())) => {
            let mut body = json!({ "status": "ready", "service": service });
            if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
                body.extend(extra.clone());
            }
            Json(body).into_response()
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "not ready: MongoDB ping failed");
            ApiError::Unavailable {
                retry_after_secs: 5,
            }
            .into_response()
        }
        Err(_) => {
            tracing::warn!("not ready: MongoDB ping timed out");
            ApiError::Unavailable {
                retry_after_secs: 5,
            }
            .into_response()
        }
    }
}

/// Liveness: the process answers; checks nothing else.
#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, description = "The process is alive", body = super::openapi::Health)))]
#[allow(dead_code)] // documentation of the route; the handler is `live`
pub(crate) async fn live_doc() {}

/// Readiness: MongoDB answers a ping within 2 s.
#[utoipa::path(get, path = "/ready", tag = "health",
    responses(
        (status = 200, description = "Ready to take work", body = super::openapi::Health),
        (status = 503, description = "MongoDB does not answer", body = super::openapi::Problem,
            content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ))]
#[allow(dead_code)] // documentation of the route; the handler is `ready`
pub(crate) async fn ready_doc() {}

/// Readiness: MongoDB answers a ping within 2 s. `leases`: the bucket
/// leases this processor holds (0 until it has joined the fleet).
#[utoipa::path(get, path = "/ready", tag = "health",
    responses(
        (status = 200, description = "Ready to take work", body = super::openapi::ProcessorReady),
        (status = 503, description = "MongoDB does not answer", body = super::openapi::Problem,
            content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ))]
#[allow(dead_code)] // documentation of the route; the handler is `ready_with`
pub(crate) async fn processor_ready_doc() {}

/// The `healthcheck` subcommand of both binaries (for container HEALTHCHECKs
/// in images without curl): exit 0 if `GET /health` on `port` answers 200.
pub async fn probe(port: u16, https: bool) -> bool {
    // The probe talks to its own process on loopback, where the certificate's
    // name need not match: it checks liveness, not identity.
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .danger_accept_invalid_certs(https)
        .build()
    {
        Ok(client) => client,
        Err(_) => return false,
    };
    let scheme = if https { "https" } else { "http" };
    client
        .get(format!("{scheme}://127.0.0.1:{port}/health"))
        .send()
        .await
        .is_ok_and(|response| response.status().is_success())
}
