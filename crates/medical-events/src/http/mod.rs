//! What the HTTP faces of both services share: problem+json errors, the JSON
//! body extractor, limits and time limits, connection hygiene, query
//! parameters and paging, health, the OpenAPI roots, and the layers every
//! router gets. The routes themselves live with their service
//! (`ingest::routes`, `processor::routes`).

pub mod connection;
pub mod health;
mod idle;
pub mod json_body;
mod json_value;
pub mod limits;
pub mod listener;
pub mod openapi;
pub mod paging;
pub mod problem;
pub mod query_params;

/// Sent with ingest's nudge to a processor (`POST /queue`): the event is
/// already stored, so the processor only wakes the patient's lane. `true`:
/// newly inserted (the owner's change stream carries it too); `changed`: an
/// operator's retry or skip, an update the change stream does not carry.
pub const EVENT_STORED_HEADER: &str = "event-stored";

/// The processor's answer to `POST /queue`: `open` while its change stream
/// is open (it hears of every insert in its buckets from the database, so
/// ingest's nudges for inserts only cost both sides CPU), else `closed`.
pub const CHANGE_STREAM_HEADER: &str = "change-stream";

use axum::Router;
use axum::extract::DefaultBodyLimit;
use tower_http::trace::TraceLayer;

use limits::HttpLimits;

/// The request span of tower-http's trace layer, without the URI: paths and
/// queries carry patient ids (medical record numbers) and event ids. It
/// names the route as declared (`/patients/{patientId}/events`) instead.
fn redacted_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("(no route)", |path| path.as_str());
    tracing::debug_span!("http", method = %request.method(), route)
}

/// `Cache-Control: no-store` on every answer: nearly all carry patient data
/// or who may see it, and no cache between a client and us (a proxy, a
/// browser, a shared workstation) may keep a copy.
async fn no_store(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let mut response = next.run(request).await;
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    response
}

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
pub(crate) fn finish(router: Router, limits: HttpLimits) -> Router {
    let router = router
        .fallback(problem::not_found)
        .method_not_allowed_fallback(problem::method_not_allowed)
        .layer(DefaultBodyLimit::max(json_body::BODY_LIMIT_BYTES))
        .layer(axum::middleware::from_fn(crate::metrics::track))
        .layer(axum::middleware::from_fn(crate::trace_context::propagate))
        .layer(axum::middleware::from_fn(no_store))
        .layer(TraceLayer::new_for_http().make_span_with(redacted_span));
    limits::bounded(router, limits).layer(axum::middleware::from_fn(
        connection::close_unless_body_read,
    ))
}
