//! Prometheus metrics, served at `GET /metrics` by both services.
//!
//! One recorder per process. Names: `http_requests_total` and
//! `http_request_duration_seconds` (by route, method, status), `events_*`
//! counters for the event lifecycle, `processing_duration_seconds` and
//! `event_end_to_end_seconds` histograms, and processor gauges for the
//! backlog, active lanes and the oldest unfinished event.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const PROCESSING_BUCKETS: &[f64] = &[
    0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 5.5, 6.0, 7.5, 10.0, 30.0, 60.0,
];
const END_TO_END_BUCKETS: &[f64] = &[0.1, 1.0, 5.0, 6.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

/// The process's recorder, installed on first use.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("http_request_duration_seconds".into()),
                LATENCY_BUCKETS,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("processing_duration_seconds".into()),
                    PROCESSING_BUCKETS,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("event_end_to_end_seconds".into()),
                    END_TO_END_BUCKETS,
                )
            })
            .expect("bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may exist when several apps share a test process; then
        // this handle renders nothing, which only that test would notice.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

pub async fn render() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle().render(),
    )
        .into_response()
}

/// Middleware: counts requests and times them, by matched route (never by
/// raw path, which would put event ids into label values).
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("http_requests_total", "route" => route.clone(), "method" => method.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("http_request_duration_seconds", "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    response
}
