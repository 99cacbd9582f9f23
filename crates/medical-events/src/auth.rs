//! Who may call the APIs: API keys for ingest clients (`INGEST_API_KEYS`),
//! one shared token between ingest and the processor (`PROCESSOR_TOKEN`).
//! Secure by default: without them a service refuses to start unless
//! `AUTH_DISABLED=true` says so explicitly.

use std::fmt;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::http::problem::ApiError;

/// Shortest key or token accepted in configuration.
pub const MIN_SECRET_CHARS: usize = 16;

/// A credential from configuration; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The credentials a service accepts, or none when auth is disabled.
#[derive(Debug, Clone)]
pub enum Access {
    Required(Vec<Secret>),
    Disabled,
}

/// Which of the configured credentials a request presented (its index):
/// the identity rate limits are kept per.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientId(pub usize);

/// The check itself, with the credentials digested once.
pub struct Guard {
    digests: Option<Vec<[u8; 32]>>,
}

impl Guard {
    pub fn new(access: &Access) -> Self {
        let digests = match access {
            Access::Required(secrets) => Some(secrets.iter().map(|s| digest(s.expose())).collect()),
            Access::Disabled => None,
        };
        Self { digests }
    }

    /// The matching credential's index. Compares digests in constant time and
    /// always against every credential, so timing says nothing about a key.
    pub fn identify(&self, authorization: Option<&str>) -> Result<ClientId, ApiError> {
        let Some(digests) = &self.digests else {
            return Ok(ClientId(0));
        };
        let presented = authorization
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or(ApiError::Unauthorized("missing bearer token"))?;
        let presented = digest(presented);
        let mut found = None;
        for (index, known) in digests.iter().enumerate() {
            if bool::from(known.ct_eq(&presented)) && found.is_none() {
                found = Some(index);
            }
        }
        found
            .map(ClientId)
            .ok_or(ApiError::Unauthorized("invalid bearer token"))
    }
}

fn digest(value: &str) -> [u8; 32] {
    Sha256::digest(value.as_bytes()).into()
}

/// Middleware: refuses requests without a valid `Authorization: Bearer`
/// credential with 401, and tags accepted ones with their [`ClientId`].
pub async fn require_bearer(
    State(guard): State<Arc<Guard>>,
    mut request: Request,
    next: Next,
) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    match guard.identify(authorization) {
        Ok(client) => {
            request.extensions_mut().insert(client);
            next.run(request).await
        }
        Err(error) => error.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Guard {
        Guard::new(&Access::Required(vec![
            Secret::new("first-key-0123456789"),
            Secret::new("second-key-0123456789"),
        ]))
    }

    #[test]
    fn a_known_key_is_identified() {
        assert_eq!(
            guard()
                .identify(Some("Bearer second-key-0123456789"))
                .unwrap(),
            ClientId(1)
        );
    }

    #[test]
    fn missing_malformed_and_wrong_credentials_are_refused() {
        for header in [
            None,
            Some("second-key-0123456789"),
            Some("Basic abc"),
            Some("Bearer "),
            Some("Bearer nope"),
        ] {
            assert!(
                matches!(guard().identify(header), Err(ApiError::Unauthorized(_))),
                "{header:?}"
            );
        }
    }

    #[test]
    fn secrets_never_print() {
        let text = format!(
            "{:?}",
            Access::Required(vec![Secret::new("first-key-0123456789")])
        );
        assert!(!text.contains("first-key"));
    }
}
