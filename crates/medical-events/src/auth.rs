//! Who may call the APIs: named API clients for ingest (`INGEST_API_KEYS`,
//! `lab-a:KEY,adt:KEY`), operators (`ADMIN_API_KEYS`), and one shared token
//! between ingest and the processor (`PROCESSOR_TOKEN`). Secure by default:
//! without credentials a service refuses to start unless
//! `AUTH_DISABLED=true` says so explicitly.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::http::problem::ApiError;

/// Shortest key or token accepted in configuration.
pub const MIN_SECRET_CHARS: usize = 16;
/// Longest client name.
pub const MAX_CLIENT_CHARS: usize = 64;
/// The client name of every caller when authentication is disabled.
pub const ANONYMOUS: &str = "anonymous";
/// The caller name of whoever presents `PROCESSOR_TOKEN` to the processor.
pub const PROCESSOR_CALLER: &str = "ingest";

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

/// One configured key and the client (or operator) it identifies.
#[derive(Debug, Clone)]
pub struct Credential {
    pub client: Arc<str>,
    pub secret: Secret,
}

impl Credential {
    /// Parses `name:KEY`, or a bare `KEY` whose client name is derived from
    /// it (`key-` and 8 hex digits of its SHA-256: stable, and reveals nothing).
    pub fn parse(entry: &str) -> Result<Self, String> {
        let (client, key) = match entry.split_once(':') {
            Some((name, key)) if is_client_name(name) && is_key(key) => (name.to_owned(), key),
            // Read as a bare key, `lab:short` would silently become a key
            // of another client name than the one written: a bare key may
            // not hold a `:` after something that reads as a name.
            Some((name, _)) if is_client_name(name) => {
                return Err(format!(
                    "the key after the client name {name:?} must be at least {MIN_SECRET_CHARS} \
                     visible ASCII characters"
                ));
            }
            _ => (derived_name(entry), entry),
        };
        if !is_key(key) {
            return Err(format!(
                "each entry must be a key of at least {MIN_SECRET_CHARS} visible ASCII characters, \
                 optionally preceded by a client name and ':' (letters, digits, '.', '_', '-')"
            ));
        }
        Ok(Self {
            client: client.into(),
            secret: Secret::new(key),
        })
    }

    /// A credential named `client`.
    pub fn named(client: &str, secret: impl Into<String>) -> Self {
        Self {
            client: client.into(),
            secret: Secret::new(secret),
        }
    }
}

fn is_client_name(name: &str) -> bool {
    (1..=MAX_CLIENT_CHARS).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn is_key(key: &str) -> bool {
    key.chars().count() >= MIN_SECRET_CHARS && key.chars().all(|c| c.is_ascii_graphic())
}

fn derived_name(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("key-{hex}")
}

/// The credentials a service accepts, or none when auth is disabled.
#[derive(Debug, Clone)]
pub enum Access {
    Required(Vec<Credential>),
    Disabled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Admin,
}

/// Who made a request: the client name its key belongs to, and whether it
/// is an operator. Attached to the request by [`require_bearer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub client: Arc<str>,
    pub role: Role,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// The client whose events this caller may see: its own, or every
    /// client's (`None`) for an operator.
    pub fn scope(&self) -> Option<&str> {
        (!self.is_admin()).then_some(&*self.client)
    }
}

/// The check itself, with the credentials digested once.
pub struct Guard {
    /// `None`: authentication disabled.
    known: Option<Vec<([u8; 32], Caller)>>,
    failures: FailedAttempts,
}

/// Failed authentications per source address: past [`FAILURE_BURST`] (refilled
/// at [`FAILURES_PER_SECOND`]), the address is refused with `429` for
/// [`BLOCKED_FOR`], whatever it presents, so guessing keys is slow from any
/// one place.
const FAILURE_BURST: u32 = 20;
const FAILURES_PER_SECOND: u32 = 1;
const BLOCKED_FOR: Duration = Duration::from_secs(10);
/// Addresses tracked before the expired ones are forgotten.
const TRACKED_SOURCES: usize = 10_000;

struct FailedAttempts {
    limiter: governor::DefaultKeyedRateLimiter<IpAddr>,
    blocked: std::sync::Mutex<HashMap<IpAddr, Instant>>,
}

impl FailedAttempts {
    fn new() -> Self {
        let quota = governor::Quota::per_second(
            NonZeroU32::new(FAILURES_PER_SECOND).unwrap_or(NonZeroU32::MIN),
        )
        .allow_burst(NonZeroU32::new(FAILURE_BURST).unwrap_or(NonZeroU32::MIN));
        Self {
            limiter: governor::RateLimiter::keyed(quota),
            blocked: std::sync::Mutex::default(),
        }
    }

    fn blocked(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Instant>> {
        self.blocked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long `source` must still wait, if it is refused.
    fn wait(&self, source: IpAddr) -> Option<Duration> {
        let until = *self.blocked().get(&source)?;
        until.checked_duration_since(Instant::now())
    }

    /// Records a failure; whether `source` is now refused for a while.
    fn record(&self, source: IpAddr) {
        use governor::clock::{Clock, DefaultClock};
        if let Err(not_until) = self.limiter.check_key(&source) {
            let wait = not_until
                .wait_time_from(DefaultClock::default().now())
                .max(BLOCKED_FOR);
            let mut blocked = self.blocked();
            let now = Instant::now();
            if blocked.len() >= TRACKED_SOURCES {
                blocked.retain(|_, until| *until > now);
            }
            blocked.insert(source, now + wait);
        }
        if self.limiter.len() >= TRACKED_SOURCES {
            self.limiter.retain_recent();
        }
    }
}

impl Guard {
    /// `admins` may be used whatever `access` says (they are always required).
    pub fn new(access: &Access, admins: &[Credential]) -> Self {
        let known = match access {
            Access::Required(credentials) => {
                let clients = credentials.iter().map(|c| (c, Role::Client));
                let operators = admins.iter().map(|c| (c, Role::Admin));
                Some(
                    clients
                        .chain(operators)
                        .map(|(c, role)| {
                            (
                                digest(c.secret.expose()),
                                Caller {
                                    client: Arc::clone(&c.client),
                                    role,
                                },
                            )
                        })
                        .collect(),
                )
            }
            Access::Disabled => None,
        };
        Self {
            known,
            failures: FailedAttempts::new(),
        }
    }

    /// The caller the credential belongs to. Compares digests in constant
    /// time and always against every credential, so timing says nothing
    /// about a key.
    pub fn identify(&self, authorization: Option<&str>) -> Result<Caller, ApiError> {
        let Some(known) = &self.known else {
            return Ok(Caller {
                client: ANONYMOUS.into(),
                role: Role::Client,
            });
        };
        let presented = authorization
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or(ApiError::Unauthorized("missing bearer token"))?;
        let presented = digest(presented);
        let mut found = None;
        for (known, caller) in known {
            if bool::from(known.ct_eq(&presented)) && found.is_none() {
                found = Some(caller);
            }
        }
        found
            .cloned()
            .ok_or(ApiError::Unauthorized("invalid bearer token"))
    }
}

fn digest(value: &str) -> [u8; 32] {
    Sha256::digest(value.as_bytes()).into()
}

/// Middleware: refuses requests without a valid `Authorization: Bearer`
/// credential with 401, and tags accepted ones with their [`Caller`]. A
/// failure is logged (never what was presented) and counted; a source
/// address with too many failures gets `429` for a while.
pub async fn require_bearer(
    State(guard): State<Arc<Guard>>,
    mut request: Request,
    next: Next,
) -> Response {
    let source = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip());
    if let Some(wait) = source.and_then(|source| guard.failures.wait(source)) {
        metrics::counter!("auth_failures_total", "reason" => "source_blocked").increment(1);
        return ApiError::TooManyFailures {
            retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
        }
        .into_response();
    }
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    match guard.identify(authorization) {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(error) => {
            let reason = match authorization {
                None => "missing",
                Some(_) => "invalid",
            };
            metrics::counter!("auth_failures_total", "reason" => reason).increment(1);
            tracing::warn!(
                source = source.map(|s| s.to_string()).unwrap_or_default(),
                route = request.uri().path().split('/').nth(1).unwrap_or_default(),
                reason,
                "authentication failed"
            );
            if let Some(source) = source {
                guard.failures.record(source);
            }
            error.into_response()
        }
    }
}

/// Middleware for operator routes, after [`require_bearer`]: a client key is
/// 403, logged with the client's name and counted. The source is not held
/// back for it: the key is valid, and its own routes stay open to it.
pub async fn require_admin(request: Request, next: Next) -> Response {
    match request.extensions().get::<Caller>() {
        Some(caller) if caller.is_admin() => next.run(request).await,
        caller => {
            metrics::counter!("auth_failures_total", "reason" => "forbidden").increment(1);
            tracing::warn!(
                client = caller.map(|c| &*c.client).unwrap_or_default(),
                route = request.uri().path().split('/').nth(1).unwrap_or_default(),
                reason = "forbidden",
                "operator route refused to a client credential"
            );
            ApiError::Forbidden("this route needs an operator credential (ADMIN_API_KEYS)")
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Guard {
        Guard::new(
            &Access::Required(vec![
                Credential::parse("lab-a:first-key-0123456789").unwrap(),
                Credential::parse("second-key-0123456789").unwrap(),
            ]),
            &[Credential::parse("alice:admin-key-0123456789").unwrap()],
        )
    }

    #[test]
    fn keys_are_identified_with_their_client() {
        let caller = guard()
            .identify(Some("Bearer first-key-0123456789"))
            .unwrap();
        assert_eq!(&*caller.client, "lab-a");
        assert_eq!(caller.role, Role::Client);
        let bare = guard()
            .identify(Some("Bearer second-key-0123456789"))
            .unwrap();
        assert!(
            bare.client.starts_with("key-") && bare.client.len() == 12,
            "{}",
            bare.client
        );
        let admin = guard()
            .identify(Some("Bearer admin-key-0123456789"))
            .unwrap();
        assert!(admin.is_admin());
        assert_eq!(&*admin.client, "alice");
    }

    #[test]
    fn a_colon_makes_a_name_only_before_a_whole_key() {
        assert!(Credential::parse("ab cd:0123456789abcdef").is_err());
        let named = Credential::parse("x:0123456789abcdef").unwrap();
        assert_eq!(&*named.client, "x");
        assert_eq!(named.secret.expose(), "0123456789abcdef");
        // The tail is too short to be a key: refused, not read as a bare key.
        let short = Credential::parse("abcdefgh:01234567").unwrap_err();
        assert!(short.contains("\"abcdefgh\""), "{short}");
        let long_name = Credential::parse("laboratory-north-1:abc").unwrap_err();
        assert!(long_name.contains("\"laboratory-north-1\""), "{long_name}");
        // A colon after what cannot be a name leaves one bare key.
        let bare = Credential::parse("0123456789+abcdef:xyz0123456789").unwrap();
        assert_eq!(bare.secret.expose(), "0123456789+abcdef:xyz0123456789");
        assert!(bare.client.starts_with("key-"));
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
            Access::Required(vec![Credential::parse("a:first-key-0123456789").unwrap()])
        );
        assert!(!text.contains("first-key"));
    }
}
