//! Backpressure and rate limits: bounded requests in flight (past the bound,
//! 503 at once instead of a growing queue), a time limit per request, and a
//! token bucket per API key (429).
//!
//! The time limit is enforced two ways. Most routes are cut off by a timer
//! when it passes (they only read). The routes that store an event bound
//! themselves instead ([`RequestDeadline`]): a timer could cut such a
//! request while its insert is on the way to the database, and its answer,
//! "nothing stored", would then be false. They read their body and start
//! each store step only while the time left covers it, and once a write is
//! sent they wait for its fate.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::BoxError;
use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tower::ServiceBuilder;
use utoipa_axum::router::OpenApiRouter;

use super::listener::ConnectionLimits;
use super::problem::ApiError;
use crate::auth::Caller;
use crate::config::{ConfigError, Source, positive, positive_millis};
use crate::slots::{Slot, Slots};

/// When a request's answer is due (its arrival plus `REQUEST_TIMEOUT_MS`),
/// for the routes that bound themselves.
#[derive(Debug, Clone, Copy)]
pub struct RequestDeadline(pub Instant);

/// Wraps the whole router: every request is stamped with its deadline on
/// arrival, then load shedding over a concurrency limit.
pub fn bounded(router: Router, limits: HttpLimits) -> Router {
    let timeout = limits.request_timeout;
    router
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(overload_response))
                .load_shed()
                .concurrency_limit(limits.max_in_flight),
        )
        .layer(axum::middleware::from_fn(
            move |mut request: Request, next: Next| async move {
                request
                    .extensions_mut()
                    .insert(RequestDeadline(Instant::now() + timeout));
                next.run(request).await
            },
        ))
}

/// The timer for the routes of `router` (those that do not bound
/// themselves): past `timeout`, the handler is dropped and the answer is 503.
pub fn timed<S: Clone + Send + Sync + 'static>(
    router: OpenApiRouter<S>,
    timeout: Duration,
) -> OpenApiRouter<S> {
    router.route_layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(overload_response))
            .timeout(timeout),
    )
}

async fn overload_response(error: BoxError) -> ApiError {
    if error.is::<tower::load_shed::error::Overloaded>() {
        ApiError::Overloaded {
            retry_after_secs: 1,
        }
    } else if error.is::<tower::timeout::error::Elapsed>() {
        ApiError::TimedOut
    } else {
        tracing::error!(error = %error, "unexpected middleware error");
        ApiError::Internal
    }
}

/// One token bucket per client (keys of one client share it), and a count
/// of each client's requests in flight. The maps hold configured client
/// names only, so they stay small.
pub struct KeyedLimiter {
    limiter: DefaultKeyedRateLimiter<Arc<str>>,
    clock: DefaultClock,
    in_flight: Slots<Arc<str>>,
    max_in_flight: usize,
}

impl KeyedLimiter {
    pub fn new(limit: RateLimit) -> Self {
        let per_second = NonZeroU32::new(limit.per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limit.burst).unwrap_or(per_second);
        Self {
            limiter: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            clock: DefaultClock::default(),
            in_flight: Slots::new(usize::MAX, limit.max_in_flight),
            max_in_flight: limit.max_in_flight,
        }
    }

    fn check(&self, client: &Arc<str>) -> Result<Slot<Arc<str>>, ApiError> {
        let in_flight = self
            .in_flight
            .take(client)
            .map_err(|_| ApiError::ClientBusy {
                limit: self.max_in_flight,
            })?;
        self.limiter.check_key(client).map_err(|not_until| {
            let wait: Duration = not_until.wait_time_from(self.clock.now());
            ApiError::RateLimited {
                retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
            }
        })?;
        Ok(in_flight)
    }
}

/// Middleware, after authentication: 429 once a client's bucket is empty
/// or it has `MAX_IN_FLIGHT_PER_CLIENT` requests in hand, so that one
/// client's slow or numerous requests cannot take the capacity every
/// client shares. Operators are not limited (they are few and their
/// actions audited).
pub async fn rate_limit(
    State(limiter): State<Arc<KeyedLimiter>>,
    request: Request,
    next: Next,
) -> Response {
    let checked = match request.extensions().get::<Caller>() {
        Some(caller) if caller.is_admin() => return next.run(request).await,
        Some(caller) => limiter.check(&caller.client),
        None => limiter.check(&Arc::from(crate::auth::ANONYMOUS)),
    };
    match checked {
        Ok(_in_flight) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

/// Per client: a token bucket (`per_second` refill, `burst` capacity) and
/// a bound on requests in flight.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
    pub max_in_flight: usize,
}

impl RateLimit {
    pub fn from_source(source: &impl Source) -> Result<Self, ConfigError> {
        Ok(Self {
            per_second: positive(source, "RATE_LIMIT_PER_SEC", 1_000)?,
            burst: positive(source, "RATE_LIMIT_BURST", 2_000)?,
            max_in_flight: positive(source, "MAX_IN_FLIGHT_PER_CLIENT", 256)? as usize,
        })
    }
}

/// Bounds on HTTP work: requests in flight (beyond: 503), time per
/// request, and the listeners' connections.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub max_in_flight: usize,
    pub request_timeout: Duration,
    pub connections: ConnectionLimits,
}

impl HttpLimits {
    pub fn from_source(source: &impl Source) -> Result<Self, ConfigError> {
        Ok(Self {
            max_in_flight: positive(source, "MAX_IN_FLIGHT", 1_024)? as usize,
            request_timeout: positive_millis(source, "REQUEST_TIMEOUT_MS", 40_000)?,
            connections: ConnectionLimits::from_source(source)?,
        })
    }
}
