//! Prometheus metrics, served at `GET /metrics` by both services.
//!
//! One recorder per process, with upkeep every few seconds whether or not
//! anything scrapes it: the recorder keeps histogram samples until upkeep
//! folds them into buckets, so without it memory would grow with traffic.
//! Names: `http_requests_total` and
//! `http_request_duration_seconds` (by route, method, status), `events_*`
//! counters for the event lifecycle, `processing_duration_seconds` and
//! `event_end_to_end_seconds` histograms, and processor gauges for the
//! backlog, active lanes and the oldest unfinished event.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const PROCESSING_BUCKETS: &[f64] = &[
    0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 5.5, 6.0, 7.5, 10.0, 30.0, 60.0,
];
const STORE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
/// How often samples are folded into the histograms.
const UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);
const END_TO_END_BUCKETS: &[f64] = &[0.1, 1.0, 5.0, 6.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

/// The process's recorder, installed on first use.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            // Every histogram gets buckets (bounded size), never a summary.
            .set_buckets(LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("store_operation_seconds".into()),
                    STORE_BUCKETS,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Suffix("batch_size".into()), BATCH_BUCKETS)
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("http_request_duration_seconds".into()),
                    LATENCY_BUCKETS,
                )
            })
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
        let upkeep = handle.clone();
        let _ = std::thread::Builder::new()
            .name("metrics-upkeep".to_owned())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP);
                    upkeep.run_upkeep();
                }
            });
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

/// The method as a label: the standard ones by name, anything else
/// `other` (methods are client input; labels must stay few).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Middleware: counts requests and times them, by matched route (never by
/// raw path, which would put event ids into label values).
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("http_requests_total", "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("http_request_duration_seconds", "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    response
}
