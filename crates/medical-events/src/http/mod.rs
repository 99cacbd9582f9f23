//! The HTTP faces of the two services.

pub mod admin;
pub mod connection;
pub mod health;
pub mod ingest;
pub mod json_body;
pub mod limits;
pub mod openapi;
pub mod paging;
pub mod patients;
pub mod problem;
pub mod processor;
pub mod query_params;
pub mod stream;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use tower_http::trace::TraceLayer;

use crate::config::HttpLimits;

/// `/metrics` alone, for its own listener (`METRICS_PORT`): counts and
/// timings stay off the public port.
pub fn metrics_router() -> Router {
    Router::new()
        .route("/metrics", axum::routing::get(crate::metrics::render))
        .fallback(problem::not_found)
        .layer(axum::middleware::from_fn(
            connection::close_unless_body_read,
        ))
}

/// Layers both services share: body limit, problem+json fallbacks, request
/// spans, the bounds on requests in flight and their duration, and,
/// outermost, `Connection: close` on answers that leave a body unread.
fn finish(router: Router, limits: HttpLimits) -> Router {
    let router = router
        .fallback(problem::not_found)
        .method_not_allowed_fallback(problem::method_not_allowed)
        .layer(DefaultBodyLimit::max(json_body::BODY_LIMIT_BYTES))
        .layer(axum::middleware::from_fn(crate::metrics::track))
        .layer(axum::middleware::from_fn(crate::trace_context::propagate))
        .layer(TraceLayer::new_for_http());
    limits::bounded(router, limits).layer(axum::middleware::from_fn(
        connection::close_unless_body_read,
    ))
}
