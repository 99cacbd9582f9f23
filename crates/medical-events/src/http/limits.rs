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

use super::problem::ApiError;
use crate::auth::Caller;
use crate::config::{ConfigError, Source, positive, positive_millis};

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

/// One token bucket per client (keys of one client share it). The map holds
/// configured client names only, so it stays small.
pub struct KeyedLimiter {
    limiter: DefaultKeyedRateLimiter<Arc<str>>,
    clock: DefaultClock,
}

impl KeyedLimiter {
    pub fn new(limit: RateLimit) -> Self {
        let per_second = NonZeroU32::new(limit.per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limit.burst).unwrap_or(per_second);
        Self {
            limiter: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            clock: DefaultClock::default(),
        }
    }

    fn check(&self, client: &Arc<str>) -> Result<(), ApiError> {
        self.limiter.check_key(client).map_err(|not_until| {
            let wait: Duration = not_until.wait_time_from(self.clock.now());
            ApiError::RateLimited {
                retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
            }
        })
    }
}

/// Middleware, after authentication: 429 once a client's bucket is empty.
/// Operators are not limited (they are few and their actions audited).
pub async fn rate_limit(
    State(limiter): State<Arc<KeyedLimiter>>,
    request: Request,
    next: Next,
) -> Response {
    let checked = match request.extensions().get::<Caller>() {
        Some(caller) if caller.is_admin() => Ok(()),
        Some(caller) => limiter.check(&caller.client),
        None => limiter.check(&Arc::from(crate::auth::ANONYMOUS)),
    };
    match checked {
        Ok(()) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

/// Token bucket per API key: `per_second` refill, `burst` capacity.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

impl RateLimit {
    pub fn from_source(source: &impl Source) -> Result<Self, ConfigError> {
        Ok(Self {
            per_second: positive(source, "RATE_LIMIT_PER_SEC", 1_000)?,
            burst: positive(source, "RATE_LIMIT_BURST", 2_000)?,
        })
    }
}

/// Bounds on HTTP work: requests in flight (beyond: 503) and time per request.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub max_in_flight: usize,
    pub request_timeout: Duration,
}

impl HttpLimits {
    pub fn from_source(source: &impl Source) -> Result<Self, ConfigError> {
        Ok(Self {
            max_in_flight: positive(source, "MAX_IN_FLIGHT", 1_024)? as usize,
            request_timeout: positive_millis(source, "REQUEST_TIMEOUT_MS", 40_000)?,
        })
    }
}
