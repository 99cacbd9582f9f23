//! Structured logging and optional trace export, set up once per process.
//! `RUST_LOG` filters (default `info`); `LOG_FORMAT` picks JSON lines or
//! human-readable output. With `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans are
//! also exported over OTLP/HTTP (the standard `OTEL_*` variables apply),
//! under the trace ids that `traceparent` carries.

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::trace_context::TraceContext;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Keeps the trace exporter alive; flushes pending spans when dropped.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

pub fn init(format: LogFormat, service: &'static str) -> TelemetryGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (provider, export_error) = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Ok(endpoint) if !endpoint.trim().is_empty() => match exporter(service) {
            Ok(provider) => (Some(provider), None),
            Err(e) => (None, Some(e)),
        },
        _ => (None, None),
    };
    let otel = provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer(service)));
    let logs = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer().boxed(),
    };
    // `try_init` so a second call (tests) is harmless.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(otel)
        .with(logs)
        .try_init();
    if let Some(e) = export_error {
        tracing::error!(error = %e, "OTLP trace export disabled: exporter could not be built");
    }
    TelemetryGuard { provider }
}

fn exporter(
    service: &'static str,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build())
}

/// Makes `span` part of the trace `context` names (for export; logging
/// carries the id as a field). A no-op when export is off.
pub fn continue_trace(span: &tracing::Span, context: &TraceContext) {
    let (Ok(trace_id), Ok(span_id)) = (
        TraceId::from_hex(context.trace_id()),
        SpanId::from_hex(context.span_id()),
    ) else {
        return;
    };
    let remote = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
}
