//! Liveness (`/health`, checks nothing but the process) and readiness
//! (`/ready`, 503 while MongoDB does not answer).

use std::time::Duration;

use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::problem::ApiError;
use crate::store::Store;

const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// The answer of `/health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
    #[schema(example = "ingest-service")]
    pub service: &'static str,
}

/// The answer of `/ready`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    #[schema(example = "ready")]
    pub status: &'static str,
    #[schema(example = "processor-service")]
    pub service: &'static str,
    /// A processor's bucket leases (of 256: the fleet shares them; 0 until
    /// it has joined the fleet). Ingest does not say.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = 256, minimum = 0)]
    pub leases: Option<u64>,
}

/// Liveness: the process answers; checks nothing else.
pub fn live(service: &'static str) -> Json<Health> {
    Json(Health {
        status: "ok",
        service,
    })
}

/// Readiness: MongoDB answers a ping within 2 s (503 otherwise).
pub async fn ready(
    store: &Store,
    service: &'static str,
    leases: Option<u64>,
) -> Result<Json<Ready>, ApiError> {
    match tokio::time::timeout(READY_TIMEOUT, store.ping()).await {
        Ok(Ok(())) => Ok(Json(Ready {
            status: "ready",
            service,
            leases,
        })),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "not ready: MongoDB ping failed");
            Err(ApiError::Unavailable {
                retry_after_secs: 5,
            })
        }
        Err(_) => {
            tracing::warn!("not ready: MongoDB ping timed out");
            Err(ApiError::Unavailable {
                retry_after_secs: 5,
            })
        }
    }
}

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
